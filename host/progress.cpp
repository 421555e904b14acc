#include "progress.hpp"

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
    const int width = 30;
    double frac = total_ > 0 ? double(done_) / total_ : 1.0;
    int fill = static_cast<int>(frac * width);
    std::string bar(fill, '#');
    bar += std::string(width - fill, '-');
    // While a checkpoint is written the note takes the ETA's place (the line
    // stays within 80 columns for runs of up to 10^7 trials).
    const std::string tail = final ? "ETA 0:00" : note_.empty() ? "ETA " + hms(eta) : note_;
    char line[256];
    std::snprintf(line, sizeof line, "[%s] %lld/%lld %5.1f%%  %.1f trials/s  %s", bar.c_str(), (long long)done_,
                  (long long)total_, 100 * frac, rate, tail.c_str());
    const std::string text = line;
    // Spaces over what a longer line before left (a note that went away).
    const size_t pad = drawn_ && drawn_width_ > text.size() ? drawn_width_ - text.size() : 0;
    std::fprintf(stderr, "\r%s%*s", text.c_str(), static_cast<int>(pad + 3), "");
    if (final) std::fputc('\n', stderr);
    drawn_ = !final;
    drawn_width_ = text.size() + 3;
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

void Progress::checkpoint_begins(int64_t rows) {
  if (mode_ != ProgressMode::bar) return;
  note_ = rows > 0 ? "checkpoint: " + std::to_string(rows) + " rows" : std::string("writing the file");
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
                        {"elapsed_s", std::round(elapsed() * 1000) / 1000}};
    std::fprintf(stderr, "%s\n", j.dump().c_str());
    std::fflush(stderr);
  }
}

}  // namespace stsweep
