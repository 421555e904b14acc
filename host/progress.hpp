// Progress of a run: a bar on a terminal, JSON lines elsewhere (batch logs).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace stsweep {

enum class ProgressMode { none, bar, jsonl };
// "auto" picks bar when stderr is a terminal, jsonl otherwise.
ProgressMode progress_mode(const std::string& option);
// Seconds between JSON progress lines: STSWEEP_PROGRESS_INTERVAL (>= 0) when
// set, else `fallback`; a malformed value is an InputError naming the
// variable. run reads it before it opens the results file, for its Progress.
double progress_interval(double fallback);
constexpr double kProgressInterval = 10;  // seconds, without the variable

class Progress {
 public:
  // `total`: trials this run will do; `before`: rows already final in the file.
  // JSON lines come every `interval` seconds (run: progress_interval).
  Progress(ProgressMode mode, int64_t total, int64_t before, double interval = kProgressInterval);
  void update(int64_t done);  // trials finished so far in this run
  void tick();                // redraw / emit if due, without new trials
  void finish();              // last line
  void clear();               // erase the bar before printing something else
  double elapsed() const;
  // A checkpoint (ResultsWriter's hook): while one is written the bar says so
  // (it cannot tick: the thread that draws it writes the file); jsonl gets a
  // {"event":"checkpoint","rows":..,"seconds":..} line after each.
  void checkpoint_begins();
  void checkpoint_ends(int64_t rows, double seconds);
  // A stop or an error is being reported: the bar is cleared and not drawn
  // again (their messages follow); jsonl lines go on (the stop's checkpoint).
  void stopping();

 private:
  void emit(bool final);
  ProgressMode mode_;
  int64_t total_, before_, done_ = 0;
  double interval_;
  std::chrono::steady_clock::time_point t0_, last_;
  bool drawn_ = false, stopping_ = false;
  size_t drawn_width_ = 0;  // characters of the bar now on the line
  std::string note_;        // shown after the bar (a checkpoint being written)
};

}  // namespace stsweep
