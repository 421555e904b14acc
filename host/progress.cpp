#include "progress.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>

#include <nlohmann/json.hpp>

#include "params.hpp"

namespace stsweep {

ProgressMode progress_mode(const std::string& o) {
  if (o == "none") return ProgressMode::none;
  if (o == "bar") return ProgressMode::bar;
  if (o == "jsonl") return ProgressMode::jsonl;
  return ::isatty(STDERR_FILENO) ? ProgressMode::bar : ProgressMode::jsonl;
}

double progress_interval(double fallback) {
  const char* e = std::getenv("STSWEEP_PROGRESS_INTERVAL");
  if (!e) return fallback;
  // A number of seconds >= 0 (atof made "abc" 0, a line every 100 ms, and "nan" none).
  char* end = nullptr;
  const double v = std::strtod(e, &end);
  if (end == e || *end != '\0' || !std::isfinite(v) || v < 0)
    throw InputError("STSWEEP_PROGRESS_INTERVAL", std::string("expected a number of seconds >= 0, got \"") + e + "\"");
  return v;
}

Progress::Progress(ProgressMode mode, int64_t total, int64_t before, double interval)
    : mode_(mode), total_(total), before_(before), interval_(interval) {
  t0_ = last_ = std::chrono::steady_clock::now();
  if (mode_ == ProgressMode::jsonl) emit(false);
}

double Progress::elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
}

void Progress::update(int64_t done) {
  done_ = done;
  tick();
}

void Progress::tick() {
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_).count();
  double need = mode_ == ProgressMode::bar ? 0.1 : interval_;
  if (since >= need) emit(false);
}

namespace {
std::string hms(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  long t = std::lround(s);
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%ld:%02ld", t / 60, t % 60);
  return buf;
}
}  // namespace

void Progress::emit(bool final) {
  last_ = std::chrono::steady_clock::now();
  double el = elapsed();
  double rate = el > 0 ? done_ / el : 0;
  double eta = rate > 0 ? (total_ - done_) / rate : NAN;
  if (mode_ == ProgressMode::bar) {
    if (stopping_) return;
    const int width = 20;
    double frac = total_ > 0 ? double(done_) / total_ : 1.0;
    int fill = static_cast<int>(frac * width);
    std::string bar(fill, '#');
    bar += std::string(width - fill, '-');
    // While a checkpoint is written the note takes the ETA's place.
    const std::string tail = final ? "ETA 0:00" : note_.empty() ? "ETA " + hms(eta) : note_;
    char line[256];
    std::snprintf(line, sizeof line, "[%s] %lld/%lld %5.1f%%  %.1f trials/s  %s", bar.c_str(), (long long)done_,
                  (long long)total_, 100 * frac, rate, tail.c_str());
    std::string text = line;
    // A line as wide as the terminal wraps, and every redraw then scrolls: cut
    // it to one column less (a million trials at 10^4 a second is 71 columns).
    winsize ws{};
    if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1 && text.size() >= ws.ws_col)
      text.resize(ws.ws_col - 1);
    // Spaces over what a longer line before left (a note that went away).
    const size_t pad = drawn_ && drawn_width_ > text.size() ? drawn_width_ - text.size() : 0;
    std::fprintf(stderr, "\r%s%*s", text.c_str(), static_cast<int>(pad), "");
    if (pad > 0) std::fprintf(stderr, "\r%s", text.c_str());  // the cursor back after the text
    if (final) std::fputc('\n', stderr);
    drawn_ = !final;
    drawn_width_ = text.size();
    std::fflush(stderr);
  } else if (mode_ == ProgressMode::jsonl) {
    nlohmann::json j = {{"event", final ? "finished" : "progress"},
                        {"done", done_},
                        {"total", total_},
                        {"already_done", before_},
                        {"elapsed_s", std::round(el * 1000) / 1000},
                        {"trials_per_s", std::round(rate * 1000) / 1000}};
    j["eta_s"] = std::isfinite(eta) ? nlohmann::json(std::round(eta * 10) / 10) : nlohmann::json(nullptr);
    std::fprintf(stderr, "%s\n", j.dump().c_str());
    std::fflush(stderr);
  }
}

void Progress::finish() {
  note_.clear();
  emit(true);
}

void Progress::clear() {
  if (mode_ == ProgressMode::bar && drawn_) {
    std::fprintf(stderr, "\r%*s\r", static_cast<int>(drawn_width_), "");
    drawn_ = false;
  }
}

void Progress::stopping() {
  clear();
  stopping_ = true;
}

void Progress::checkpoint_begins() {
  if (mode_ != ProgressMode::bar) return;
  // The fold copies the whole file: its time grows with the file, not with
  // the rows it adds, so the bar says only that it is writing.
  note_ = "writing the file";
  emit(false);
}

void Progress::checkpoint_ends(int64_t rows, double seconds) {
  if (mode_ == ProgressMode::bar) {
    note_.clear();
    emit(false);
  } else if (mode_ == ProgressMode::jsonl) {
    nlohmann::json j = {{"event", "checkpoint"},
                        {"rows", rows},
                        {"seconds", std::round(seconds * 1000) / 1000},
                        {"done", done_},
                        {"total", total_},
                        {"elapsed_s", std::round(elapsed() * 1000) / 1000}};
    std::fprintf(stderr, "%s\n", j.dump().c_str());
    std::fflush(stderr);
  }
}

}  // namespace stsweep
