// stsweep estimate: how long a sweep (or one shard) will take on this machine,
// from a random sample of its trials trained for real, before a cluster job
// is sized.
//
// Each round draws one trial at random from each of B equal slices of the ids
// (every trial when there are no more than B), trains them on the chosen
// backend as `run` would (batches of one shape) from empty caches, and
// measures their cost: on the CPU the process's CPU time (core-seconds: idle
// threads of a small batch and other processes on the machine do not count,
// so rounds can be small, 4 trials a thread), on a GPU the wall time of
// rounds of run's batch size after one uncounted warm-up trial (a GPU's rate
// depends on how many trials train at once). Trained teachers are costed
// apart on the CPU (the teacher cache's training seconds), per distinct
// teacher of the shard, since a run trains each once. Rounds are independent,
// so their per-trial means give a Student's t interval. Sampling stops when
// another round would pass --seconds, or once 5 rounds give an interval
// within 2% of the mean. Nothing is written.
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
#include <unordered_set>
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

// Trials whose trained teacher is counted exactly (a scan decodes about 10^5
// trials a second); past it the estimate takes every such trial's teacher as
// its own, an upper estimate.
constexpr uint64_t kTeacherScanLimit = 1000000;

struct MeanCi {
  double mean = 0, half = NAN;  // half-width of the 95% CI (Student's t); NaN from one value
};
MeanCi mean_ci(const std::vector<double>& x) {
  MeanCi r;
  if (x.empty()) return r;
  for (double v : x) r.mean += v;
  r.mean /= static_cast<double>(x.size());
  if (x.size() > 1) {
    double ss = 0;
    for (double v : x) ss += (v - r.mean) * (v - r.mean);
    r.half = t975(static_cast<int64_t>(x.size()) - 1) * std::sqrt(ss / static_cast<double>(x.size() - 1)) /
             std::sqrt(static_cast<double>(x.size()));
  }
  return r;
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
  // Every round starts with empty caches: a teacher trained in one round must
  // not make the next one cheap (a review: 26x too low on a sweep of shared
  // teachers). Teachers are costed apart, per distinct teacher (below).
  auto fresh_caches = [] {
    reset_teacher_cache(static_cast<size_t>(kTeacherCacheDefaultMb) << 20);
    reset_setup_cache(static_cast<size_t>(kSetupCacheDefaultMb) << 20);
  };
  fresh_caches();
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
  // Per round: the students' cost per trial (the round's cost less its
  // teachers' training), and, when it trained teachers, their cost per teacher.
  std::vector<double> student, teacher;
  uint64_t sampled = 0, sampled_with_teacher = 0;
  MeanCi st;
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  if (!cpu) {
    // A GPU's first batch pays for its context, allocations and kernel
    // loading, which a long run pays once: one trial first, not counted.
    Batch warm;
    warm.ids.push_back(static_cast<int64_t>(range.begin));
    warm.trials.push_back(sweep.trial(range.begin));
    backend->run(warm, ro);
    if (table) std::cerr << "stsweep: warm-up: 1 trial (not counted)\n";
  }
  do {
    // Asked for n slices, stratified_sample hands back every id (drawing nothing).
    const std::vector<uint64_t> ids = stratified_sample(range, whole ? n : batch, rng);
    // Batches of one shape, as run makes them (a round of several shapes runs
    // as several smaller batches: on a GPU that makes the estimate high).
    std::map<ShapeKey, Batch> groups;
    for (uint64_t id : ids) {
      TrialParams p = sweep.trial(id);
      sampled_with_teacher += p.teacher.kind == TeacherKind::trained;
      Batch& g = groups[shape_key(p)];
      g.ids.push_back(static_cast<int64_t>(id));
      g.trials.push_back(std::move(p));
    }
    fresh_caches();
    const double c0 = process_cpu_seconds();
    const auto w0 = std::chrono::steady_clock::now();
    for (auto& [key, b] : groups) backend->run(b, ro);
    const double cost = cpu ? process_cpu_seconds() - c0
                            : std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
    // On the CPU set-up trains the teachers, in this process's CPU time; on a
    // GPU they train on the device inside the round's wall time.
    const TeacherCacheStats ts = teacher_cache_stats();
    const double t_s = cpu && !whole ? std::min(cost, ts.train_seconds) : 0;
    student.push_back((cost - t_s) / static_cast<double>(ids.size()));
    if (cpu && !whole && ts.trained > 0) teacher.push_back(t_s / static_cast<double>(ts.trained));
    sampled += ids.size();
    if (table) {
      std::cerr << "stsweep: " << (whole ? std::string("every trial") : "round " + std::to_string(student.size()))
                << ": " << ids.size() << (ids.size() == 1 ? " trial, " : " trials, ")
                << shortest_text(std::round(cost * 1000) / 1000) << (cpu ? " core-s" : " s");
      if (t_s > 0)
        std::cerr << " (" << ts.trained << " trained teacher" << (ts.trained == 1 ? "" : "s") << ": "
                  << shortest_text(std::round(t_s * 1000) / 1000) << " of it)";
      std::cerr << "\n";
    }
    st = mean_ci(student);
    // Another round when it fits in --seconds (judged by the mean round) and
    // the interval is not yet within 2% of the mean.
    if (whole) break;
    const size_t k = student.size();
    if (k >= 5 && st.half <= 0.02 * st.mean && (teacher.size() < 2 || teacher.size() >= 5)) break;
    const double per_round = elapsed() / static_cast<double>(k);
    if (sampled + batch >= n) {
      // More rounds would sample more trials than the sweep has: run them all
      // once instead (teachers shared as in a run), when that fits in --seconds.
      if (elapsed() + per_round * static_cast<double>(n) / static_cast<double>(batch) > a.seconds) break;
      whole = true;
      student.clear();
      teacher.clear();
      sampled = sampled_with_teacher = 0;
      continue;
    }
    if (elapsed() + per_round > a.seconds) break;
  } while (true);
  if (whole) sampled = n;

  // The distinct trained teachers of the shard (a run trains each once): the
  // samples' teachers cost per teacher, times how many the shard has.
  uint64_t n_teachers = 0;
  bool counted = true;
  const MeanCi tc = mean_ci(teacher);
  if (!teacher.empty()) {
    if (n <= kTeacherScanLimit) {
      std::unordered_set<std::string> distinct;
      for (uint64_t id = range.begin; id < range.end; ++id) {
        std::string r = trained_teacher_recipe(sweep.trial(id), sweep.seed());
        if (!r.empty()) distinct.insert(std::move(r));
      }
      n_teachers = distinct.size();
    } else {  // one teacher per trial that has one (the sample's share): an upper estimate
      counted = false;
      n_teachers = static_cast<uint64_t>(std::ceil(static_cast<double>(n) * static_cast<double>(sampled_with_teacher) /
                                                   static_cast<double>(std::max<uint64_t>(sampled, 1))));
    }
  }
  const double nd = static_cast<double>(n), td = static_cast<double>(n_teachers);
  const double students = st.mean * nd, teachers = tc.mean * td, total = students + teachers;
  const double sh = whole ? 0 : st.half, th = teacher.size() > 1 ? tc.half : teacher.empty() ? 0 : NAN;
  const bool has_ci = std::isfinite(sh) && std::isfinite(th);
  const double lo = std::max(0.0, st.mean - sh) * nd + std::max(0.0, tc.mean - th) * td;
  const double hi = (st.mean + sh) * nd + (tc.mean + th) * td;
  // On the CPU the run spreads core-seconds over its threads; trials that
  // share a teacher wait while one thread trains it, so with teachers the wall
  // time lies between all of it spread and the teachers one at a time.
  const double wall = cpu ? total / threads : total;
  const double wall_max = cpu ? students / threads + teachers : total;

  if (!table) {
    auto pair = [&](double l, double h) { return has_ci ? nlohmann::json({l, h}) : nlohmann::json(nullptr); };
    nlohmann::json j = {{"sweep", sweep.name()},
                        {"shard", std::to_string(shard.index) + "/" + std::to_string(shard.count)},
                        {"trials", n},
                        {"backend", backend->name()},
                        {"device", backend->device()},
                        {"precision", a.precision},
                        {"threads", cpu ? threads : 0},
                        {"round_size", batch},
                        {"rounds", student.size()},
                        {"sampled", sampled},
                        {"whole", whole},
                        {"sample_seconds", elapsed()},
                        {"cost_unit", cpu ? "core-seconds" : "seconds"},
                        {"cost_per_trial", st.mean},
                        {"cost_per_trial_ci95", pair(std::max(0.0, st.mean - sh), st.mean + sh)},
                        {"trained_teachers", n_teachers},
                        {"trained_teachers_counted", counted},
                        {"cost_per_teacher", teacher.empty() ? nlohmann::json(nullptr) : nlohmann::json(tc.mean)},
                        {"total_cost", total},
                        {"total_cost_ci95", pair(lo, hi)},
                        {"wall_seconds", wall},
                        {"wall_seconds_max", wall_max}};
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
    std::cout << "sampled:   " << student.size() << " round" << (student.size() == 1 ? "" : "s") << " of " << batch
              << " trials (one at random in each 1/" << batch << " of the ids), " << sampled << " trials in "
              << shortest_text(std::round(elapsed() * 100) / 100) << " s\n";
  }
  char buf[200];
  auto with_ci = [&](double m, double h) {
    if (std::isfinite(h) && h > 0)
      std::snprintf(buf, sizeof buf, "%.3g%s (95%% CI %.3g-%.3g)", m, unit.c_str(), std::max(0.0, m - h), m + h);
    else
      std::snprintf(buf, sizeof buf, "%.3g%s", m, unit.c_str());
    return std::string(buf);
  };
  std::cout << "per trial: " << with_ci(st.mean, sh)
            << (student.size() == 1 && !whole ? " (one round: no interval; --seconds for more)" : "")
            << (teacher.empty() ? "" : ", without its trained teacher") << "\n";
  if (!teacher.empty())
    std::cout << "teachers:  " << with_ci(tc.mean, th) << " each, " << n_teachers
              << (counted ? " distinct in the shard (a run trains each once)"
                          : " at most (one per trial with a trained teacher, by the sample's share: more than " +
                                std::to_string(kTeacherScanLimit) + " trials to count; trials that share teachers "
                                "take less)")
              << "\n";
  if (cpu) {
    std::cout << "whole:     " << span(total) << " of CPU time";
    if (has_ci && hi > lo) std::cout << " (" << span(lo) << " to " << span(hi) << ")";
    std::snprintf(buf, sizeof buf, "%.3g", total / 3600);
    std::cout << " = " << buf << " core-hours; about " << span(wall) << " on " << threads << " thread"
              << (threads == 1 ? "" : "s") << " (--threads)";
    if (wall_max > 1.05 * wall) std::cout << ", up to " << span(wall_max) << " if trials wait for shared teachers";
    std::cout << "\n";
  } else {
    std::cout << "whole:     about " << span(total);
    if (has_ci && hi > lo) std::cout << " (" << span(lo) << " to " << span(hi) << ")";
    std::cout << " on this device\n";
  }
  std::cout << "note:      not in it: writing the results file (a few % of a run); on a GPU, trained teachers are "
               "costed per sampled trial, high when trials share them\n";
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
