// stsweep estimate: how long a sweep (or one shard) will take on this machine,
// from a random sample of its trials trained for real, before a cluster job
// is sized.
//
// Each round draws one trial at random from each of B equal slices of the ids
// (every trial when there are no more than B), trains them on the chosen
// backend as `run` would (batches of one shape) and measures their cost: on
// the CPU the process's CPU time (core-seconds: idle threads of a small batch
// and other processes on the machine do not count, so rounds can be small,
// 4 trials a thread), on a GPU the wall time of rounds of run's batch size
// (a GPU's rate depends on how many trials train at once). Rounds are
// independent, so their per-trial means give a Student's t interval.
// Sampling stops when another round would pass --seconds, or once 5 rounds
// give an interval within 2% of the mean. On a GPU one trial runs first,
// uncounted (the context and allocations of a first batch). Nothing is
// written.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend.hpp"
#include "batching.hpp"
#include "cli.hpp"
#include "params.hpp"
#include "problem.hpp"
#include "sweep.hpp"

namespace stsweep::cli {
namespace {

struct EstimateArgs {
  std::string file, backend = "auto", shard = "0/1", precision = "f32", format = "table";
  int threads = 0;
  size_t round_size = 0;
  double seconds = 20;
};

double process_cpu_seconds() {
  timespec t{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// A duration in words: "42 s", "3.5 min", "2.1 h", "3.2 days".
std::string span(double s) {
  char b[48];
  if (!std::isfinite(s)) return "?";
  if (s < 90) std::snprintf(b, sizeof b, "%.3g s", s);
  else if (s < 5400) std::snprintf(b, sizeof b, "%.3g min", s / 60);
  else if (s < 172800) std::snprintf(b, sizeof b, "%.3g h", s / 3600);
  else std::snprintf(b, sizeof b, "%.3g days", s / 86400);
  return b;
}

int estimate_main(const EstimateArgs& a) {
  const Sweep sweep = Sweep::from_file(a.file);
  const Shard shard = parse_shard(a.shard);
  const IdRange range = shard_range(sweep.count(), shard);
  const uint64_t n = range.end - range.begin;
  if (n == 0) throw InputError("--shard", a.shard + " holds no trial of " + a.file + " (" +
                                              std::to_string(sweep.count()) + " trials)");
  check_trials(sweep, range);

  RunOptions ro;
  ro.sweep_seed = sweep.seed();
  ro.precision = a.precision == "f64" ? Precision::f64 : Precision::f32;
  ro.threads = a.threads;
  reset_teacher_cache(static_cast<size_t>(kTeacherCacheDefaultMb) << 20);
  reset_setup_cache(static_cast<size_t>(kSetupCacheDefaultMb) << 20);
  std::string why;
  std::unique_ptr<Backend> backend = choose_backend(a.backend, ro, &why);
  const bool cpu = backend->name() == "cpu";
  const int threads = thread_count(a.threads);
  const size_t batch = a.round_size > 0 ? a.round_size
                       : cpu           ? static_cast<size_t>(std::max(8, 4 * threads))
                                       : default_batch_size(true, threads, 1);
  const bool table = a.format == "table";
  if (table) {
    std::cerr << "stsweep: backend " << backend->name() << ": " << backend->device();
    if (a.backend == "auto" && cpu && !why.empty()) std::cerr << " (no GPU: " << why << ")";
    std::cerr << "\n";
  }

  // Seeded by the sweep: the same command samples the same trials.
  std::mt19937_64 rng(sweep.seed() ^ 0x9e3779b97f4a7c15ULL);
  bool whole = n <= batch;  // every trial runs once: the cost is measured, not sampled
  auto all_ids = [](IdRange r) {
    std::vector<uint64_t> v;
    for (uint64_t i = r.begin; i < r.end; ++i) v.push_back(i);
    return v;
  };
  std::vector<double> per_trial;  // one per round: cost / trials
  uint64_t sampled = 0;
  double mean = 0, half = NAN;
  auto interval = [&] {  // the mean cost per trial and the half-width of its 95% CI
    const size_t k = per_trial.size();
    mean = 0;
    for (double x : per_trial) mean += x;
    mean /= static_cast<double>(k);
    half = NAN;
    if (k > 1) {
      double ss = 0;
      for (double x : per_trial) ss += (x - mean) * (x - mean);
      half = t975(static_cast<int64_t>(k) - 1) * std::sqrt(ss / static_cast<double>(k - 1)) /
             std::sqrt(static_cast<double>(k));
    }
  };
  if (!cpu) {
    // A GPU's first batch pays for its context, allocations and kernel
    // loading, which a long run pays once: one trial first, not counted.
    Batch warm;
    warm.ids.push_back(static_cast<int64_t>(range.begin));
    warm.trials.push_back(sweep.trial(range.begin));
    backend->run(warm, ro);
    if (table) std::cerr << "stsweep: warm-up: 1 trial (not counted)\n";
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  do {
    const std::vector<uint64_t> ids = whole ? all_ids(range) : stratified_sample(range, batch, rng);
    // Batches of one shape, as run makes them (a round of several shapes runs
    // as several smaller batches: on a GPU that makes the estimate high).
    std::map<ShapeKey, Batch> groups;
    for (uint64_t id : ids) {
      TrialParams p = sweep.trial(id);
      Batch& g = groups[shape_key(p)];
      g.ids.push_back(static_cast<int64_t>(id));
      g.trials.push_back(std::move(p));
    }
    const double c0 = process_cpu_seconds();
    const auto w0 = std::chrono::steady_clock::now();
    for (auto& [key, b] : groups) backend->run(b, ro);
    const double cost = cpu ? process_cpu_seconds() - c0
                            : std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
    per_trial.push_back(cost / static_cast<double>(ids.size()));
    sampled += ids.size();
    if (table)
      std::cerr << "stsweep: " << (whole ? std::string("every trial") : "round " + std::to_string(per_trial.size()))
                << ": " << ids.size() << (ids.size() == 1 ? " trial, " : " trials, ")
                << shortest_text(std::round(cost * 1000) / 1000) << (cpu ? " core-s" : " s") << "\n";
    interval();
    // Another round when it fits in --seconds (judged by the mean round) and
    // the interval is not yet within 2% of the mean.
    if (whole) break;
    const size_t k = per_trial.size();
    if (k >= 5 && half <= 0.02 * mean) break;
    const double per_round = elapsed() / static_cast<double>(k);
    if (sampled + batch >= n) {
      // More rounds would sample more trials than the sweep has: run them all
      // once instead, when that fits in --seconds.
      if (elapsed() + per_round * static_cast<double>(n) / static_cast<double>(batch) > a.seconds) break;
      whole = true;
      per_trial.clear();
      continue;
    }
    if (elapsed() + per_round > a.seconds) break;
  } while (true);

  const size_t rounds = per_trial.size();
  if (whole) half = 0;  // every trial ran: the cost is measured, not sampled
  const double total = mean * static_cast<double>(n);
  const double lo = std::max(0.0, mean - half) * static_cast<double>(n), hi = (mean + half) * static_cast<double>(n);
  // On the CPU the run spreads core-seconds over its threads.
  const double wall = cpu ? total / threads : total;

  if (!table) {
    nlohmann::json j = {{"sweep", sweep.name()},
                        {"shard", std::to_string(shard.index) + "/" + std::to_string(shard.count)},
                        {"trials", n},
                        {"backend", backend->name()},
                        {"device", backend->device()},
                        {"precision", a.precision},
                        {"threads", cpu ? threads : 0},
                        {"round_size", batch},
                        {"rounds", rounds},
                        {"sampled", sampled},
                        {"whole", whole},
                        {"sample_seconds", elapsed()},
                        {"cost_unit", cpu ? "core-seconds" : "seconds"},
                        {"cost_per_trial", mean},
                        {"cost_per_trial_ci95", std::isfinite(half) ? nlohmann::json({std::max(0.0, mean - half), mean + half})
                                                                    : nlohmann::json(nullptr)},
                        {"total_cost", total},
                        {"total_cost_ci95", std::isfinite(half) ? nlohmann::json({lo, hi}) : nlohmann::json(nullptr)},
                        {"wall_seconds", wall}};
    std::cout << j.dump() << "\n";
    return kExitOk;
  }
  const std::string unit = cpu ? " core-s" : " s";
  std::cout << "sweep:     " << sweep.name() << ", shard " << shard.index << "/" << shard.count << ": " << n
            << (n == 1 ? " trial\n" : " trials\n")
            << "backend:   " << backend->name() << " (" << backend->device() << "), " << a.precision << "\n";
  if (whole) {
    std::cout << "sampled:   every trial (" << n << "), in " << shortest_text(std::round(elapsed() * 100) / 100)
              << " s\n";
  } else {
    std::cout << "sampled:   " << rounds << " round" << (rounds == 1 ? "" : "s") << " of " << batch
              << " trials (one at random in each 1/" << batch << " of the ids), " << sampled << " trials in "
              << shortest_text(std::round(elapsed() * 100) / 100) << " s\n";
  }
  char buf[160];
  if (std::isfinite(half) && half > 0)
    std::snprintf(buf, sizeof buf, "%.3g%s (95%% CI %.3g-%.3g)", mean, unit.c_str(), std::max(0.0, mean - half),
                  mean + half);
  else
    std::snprintf(buf, sizeof buf, "%.3g%s", mean, unit.c_str());
  std::cout << "per trial: " << buf << (rounds == 1 && !whole ? " (one round: no interval; --seconds for more)" : "")
            << "\n";
  if (cpu) {
    std::cout << "whole:     " << span(total) << " of CPU time";
    if (std::isfinite(half) && half > 0) std::cout << " (" << span(lo) << " to " << span(hi) << ")";
    std::snprintf(buf, sizeof buf, "%.3g", total / 3600);
    std::cout << " = " << buf << " core-hours; about " << span(wall) << " on " << threads << " thread"
              << (threads == 1 ? "" : "s") << " (--threads)\n";
  } else {
    std::cout << "whole:     about " << span(total);
    if (std::isfinite(half) && half > 0) std::cout << " (" << span(lo) << " to " << span(hi) << ")";
    std::cout << " on this device\n";
  }
  std::cout << "note:      trials that share a trained teacher or a set-up problem share them in a run, not in "
               "the sample (validate counts them), so a sweep with many such trials takes less\n";
  return kExitOk;
}

}  // namespace

void add_estimate_command(CLI::App& app, Registry& r) {
  auto a = std::make_shared<EstimateArgs>();
  CLI::App* sub = app.add_subcommand(
      "estimate", "how long a sweep (or one shard) takes here: trains a random sample of its trials, writes nothing");
  sub->add_option("file", a->file, "sweep file (JSON)")->required();
  sub->add_option("--backend", a->backend, "auto (CUDA when a GPU is usable, else CPU), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  sub->add_option("--shard", a->shard, "estimate shard I of N (0-based), e.g. 2/8 (default: the whole sweep)");
  sub->add_option("--threads", a->threads, "CPU threads, as run's (0: every core this process may run on)")
      ->check(count_check(0, 4096));
  sub->add_option("--precision", a->precision, "f32 or f64")->check(CLI::IsMember({"f32", "f64"}));
  sub->add_option("--round-size", a->round_size,
                  "trials a round samples (default: 4 per CPU thread, at least 8; on a GPU run's batch size, 4096)")
      ->check(kPositiveCount);
  sub->add_option("--seconds", a->seconds,
                  "sample while another round fits in this many seconds (default 20; at least one round; it stops "
                  "sooner once 5 rounds give an interval within 2% of the mean)")
      ->check(kFiniteNonNegative);
  sub->add_option("--format", a->format, "table (default) or json (one line, for scripts)")
      ->check(CLI::IsMember({"table", "json"}));
  r.add(sub, [a] { return estimate_main(*a); });
}

}  // namespace stsweep::cli
