// The standard GPU grid of issue 5: 2-layer linear student, d = h = 64, m = 16,
// N = 128, T = 1000, 16384 trials plus their lambda = 0 twins. Prints, for the
// fused kernel's data path, trial-steps/s and GFLOP/s against the FP32 FMA rate
// measured on the same device; the cuBLAS path's time and the ratio; the
// moment path's trial-steps/s; the host's set-up beside each; with trained
// teachers, trained on the device or on the host (one per 16 trials) and one
// per trial. Then a small-width grid (d = h = 16,
// m = 4, N = 64): a block per network (fused) against a warp per network (warp).
// Times are device time of the training launches (events), set-up and
// evaluation reported beside them.
//
//   bench_cuda [--trials N] [--steps T] [--checkpoints C] [--teacher-steps S]
//
// A plain main (not Google Benchmark): one timed run per path is already
// 32768 networks x T steps. Exits 0 with a message when there is no GPU, 1
// when a run failed. Every line is flushed when printed: the FMA peak as soon
// as it is measured, each table row when its run ends (a run that throws is a
// row with its error, and the next runs), so a timeout's SIGTERM leaves every
// finished row in the output (tools/run-on-device.sh copies the '#' and '|'
// lines into its summary as they come).
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend.hpp"
#include "grids.hpp"
#include "params.hpp"
#include "problem.hpp"
#include "trial_math.hpp"

// bench_cuda_fake (every build) is this file on tests/fake_cuda's fake
// runtime: a ctest smoke run of the benchmark's own code before a GPU session
// depends on it. Its figures mean nothing.
#if STSWEEP_HAVE_CUDA || defined(STSWEEP_FAKE_CUDA)
#define STS_BENCH_CUDA 1
#include "cuda_backend.cuh"
#else
#define STS_BENCH_CUDA 0
#endif

namespace {

[[maybe_unused]] int arg_int(int argc, char** argv, const char* name, int dflt) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return std::atoi(argv[i + 1]);
  return dflt;
}

// printf, flushed at once: a run cut short keeps every line printed so far.
[[maybe_unused]] __attribute__((format(printf, 1, 2))) void say(const char* fmt, ...) {
  va_list a;
  va_start(a, fmt);
  std::vprintf(fmt, a);
  va_end(a);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
#if !STS_BENCH_CUDA
  (void)argc;
  (void)argv;
  std::printf("bench_cuda: built without CUDA, nothing to measure\n");
  return 0;
#else
  using namespace stsweep;
  const std::string why = cuda::probe();
  if (!why.empty()) {
    std::printf("bench_cuda: no usable GPU (%s), nothing to measure\n", why.c_str());
    return 0;
  }
  const int trials = arg_int(argc, argv, "--trials", 16384);
  const int steps = arg_int(argc, argv, "--steps", 1000);
  const int checkpoints = arg_int(argc, argv, "--checkpoints", 8);
  const int teacher_steps = arg_int(argc, argv, "--teacher-steps", 1000);

  TrialParams p = bench::standard_gpu_trial();
  p.steps = steps;
  p.checkpoints = checkpoints;
  p.baseline = true;
  Batch batch;
  for (int i = 0; i < trials; ++i) {
    TrialParams q = p;
    q.seed = i;
    batch.ids.push_back(i);
    batch.trials.push_back(q);
  }
  RunOptions opt;
  opt.sweep_seed = 1;
  opt.precision = Precision::f32;

  // The device's name for the first line, before any run (which may fail).
  std::string dev = "(device unknown)";
  try {
    std::string w;
    if (auto be = cuda::make_backend(opt, cuda::Path::fused, &w)) dev = be->device();
    else dev += ": " + w;
  } catch (const std::exception& e) {
    dev += std::string(": ") + e.what();
  }
  tm::Net net;
  net.L = 2;
  net.w[0] = 64;
  net.w[1] = 64;
  net.w[2] = 16;
  say("# standard GPU grid on %s\n", dev.c_str());
  say("# %d trials + twins, d=h=64, m=16, N=128, T=%d, float32; data step %.3f MFLOP, moment step %.3f MFLOP\n",
      trials, steps, tm::data_step_flops(net, 128) * 1e-6, tm::moment_step_flops(net, 2u) * 1e-6);
#ifdef STSWEEP_FAKE_CUDA
  const double peak = 1.0;  // the fake device has no FMA rate
#else
  double peak = 0;
  try {
    peak = cuda::fma_peak_gflops();
  } catch (const std::exception& e) {
    say("# FP32 FMA peak: not measured (%s); %% of FMA peak left out\n", e.what());
  }
#endif
  if (peak > 0) say("# FP32 FMA peak (measured, FMA chains): %.0f GFLOP/s\n", peak);

  struct Row {
    std::string what;
    cuda::RunStats s;
    int failed = 0;
    std::string error;  // non-empty: the run threw (or had no backend)
  };
  std::vector<Row> rows;
  // One cell of a markdown row: no '|' or line break inside.
  auto cell = [](std::string x) {
    for (char& c : x)
      if (c == '|' || c == '\n' || c == '\r') c = c == '|' ? '/' : ' ';
    return x;
  };
  auto pct = [&](double gf) {  // % of the FMA peak, "-" when it was not measured
    char b[32] = "-";
    if (peak > 0) std::snprintf(b, sizeof b, "%.1f", 100.0 * gf / peak);
    return std::string(b);
  };
  // Runs one row; the row is returned (also kept in rows) for its table line.
  auto run = [&](const char* what, cuda::Path path, TrainPath tp) -> const Row& {
    say("bench_cuda: running %s\n", what);
    Row r{what, {}, 0, {}};
    try {
#ifdef STSWEEP_FAKE_CUDA
      // ctest's bench_cuda_fake_error_row: a row that throws must not stop the others.
      if (const char* f = std::getenv("STSWEEP_BENCH_FAIL_ROW"); f && r.what == f)
        throw std::runtime_error("failure injected by STSWEEP_BENCH_FAIL_ROW");
#endif
      for (auto& t : batch.trials) t.path = tp;
      std::string w;
      auto be = cuda::make_backend(opt, path, &w);
      if (!be) throw std::runtime_error("no backend: " + w);
      const auto res = be->run(batch, opt);
      r.s = cuda::last_stats(*be);
      for (const auto& x : res)
        if (x.status != Status::done) ++r.failed;
      say("%-16s paths %-8s set-up %7.2f s  train %8.3f s  eval %7.3f s  total %7.2f s  chunks %d  not done %d\n",
          what, r.s.paths.c_str(), r.s.setup_s, r.s.train_s, r.s.eval_s, r.s.total_s, r.s.chunks, r.failed);
    } catch (const std::exception& e) {
      r.error = cell(e.what());
    } catch (...) {
      r.error = "unknown exception";
    }
    if (!r.error.empty()) say("bench_cuda: %s failed: %s\n", what, r.error.c_str());
    rows.push_back(r);
    return rows.back();
  };
  // The path cell: the row's name, and how many trials did not finish.
  auto name = [&](const Row& r) {
    return r.failed ? r.what + " (" + std::to_string(r.failed) + " not done)" : r.what;
  };
  auto error_row = [&](const Row& r, int cells) {
    std::string line = "| " + r.what + " | error: " + r.error + " |";
    for (int i = 2; i < cells; ++i) line += " - |";
    say("%s\n", line.c_str());
  };

  say("# host set-up (float64, all cores, overlapped with the other wave's training) beside it\n");
  say("| path | train s | trial-steps/s | GFLOP/s | %% of FMA peak | host set-up s | total s |\n");
  say("|---|---|---|---|---|---|---|\n");
  auto standard_row = [&](const Row& r) {
    if (!r.error.empty()) return error_row(r, 7);
    const double gf = r.s.flops / r.s.train_s * 1e-9;
    say("| %s | %.3f | %.3e | %.0f | %s | %.2f | %.2f |\n", name(r).c_str(), r.s.train_s, r.s.net_steps / r.s.train_s,
        gf, pct(gf).c_str(), r.s.setup_s, r.s.total_s);
  };
  standard_row(run("data fused", cuda::Path::fused, TrainPath::data));
  standard_row(run("data cublas", cuda::Path::cublas, TrainPath::data));
  standard_row(run("moment fused", cuda::Path::fused, TrainPath::moment));
  setenv("STSWEEP_CUDA_VECTOR_A", "0", 1);  // v2's tiles: A loaded one k at a time
  standard_row(run("data fused, scalar A", cuda::Path::fused, TrainPath::data));
  unsetenv("STSWEEP_CUDA_VECTOR_A");
  setenv("STSWEEP_CUDA_ONE_COLUMN", "0", 1);  // v4's tiles: no one-column shapes
  standard_row(run("data fused, v4", cuda::Path::fused, TrainPath::data));
  unsetenv("STSWEEP_CUDA_ONE_COLUMN");
  // The cuBLAS trainer's steps launched one by one (about 3L + 3 launches a
  // step) instead of in CUDA graphs of 64 steps: what the graphs save, on
  // the device (train s) and for the overlap of set-up with training (total s).
  setenv("STSWEEP_CUDA_GRAPH", "0", 1);
  standard_row(run("data cublas, step by step", cuda::Path::cublas, TrainPath::data));
  unsetenv("STSWEEP_CUDA_GRAPH");
  {  // each row's train time against the faster cuBLAS row: only now are both known
    double cublas_s = 0;
    for (const Row& r : rows)
      if (r.error.empty() && r.what.find("cublas") != std::string::npos && r.s.train_s > 0 &&
          (cublas_s == 0 || r.s.train_s < cublas_s))
        cublas_s = r.s.train_s;
    std::string line = "# vs cuBLAS (train s of the faster cuBLAS row over each row's):";
    if (cublas_s == 0) line += " no cuBLAS row finished";
    for (const Row& r : rows)
      if (cublas_s > 0 && r.error.empty() && r.s.train_s > 0) {
        char b[160];
        std::snprintf(b, sizeof b, " %s %.2fx;", r.what.c_str(), cublas_s / r.s.train_s);
        line += b;
      }
    if (line.back() == ';') line.pop_back();
    say("%s\n", line.c_str());
  }

  const std::vector<TrialParams> standard = batch.trials;
  for (auto& t : batch.trials) {
    t.d = t.hidden[0] = 16;
    t.k = 8;
    t.m = 4;
    t.n_train = 64;
  }
  net.w[0] = net.w[1] = 16;
  net.w[2] = 4;
  say("\n# small widths: d=h=16, m=4, N=64; data step %.3f MFLOP\n", tm::data_step_flops(net, 64) * 1e-6);
  say("| path | train s | trial-steps/s | GFLOP/s | %% of FMA peak | vs fused |\n");
  say("|---|---|---|---|---|---|\n");
  double fused_s = 0;  // the small fused row's train s, the first of the table
  auto small_row = [&](const Row& r) {
    if (!r.error.empty()) return error_row(r, 6);
    if (r.what == "small fused") fused_s = r.s.train_s;
    const double gf = r.s.flops / r.s.train_s * 1e-9;
    char vs[32] = "-";
    if (fused_s > 0) std::snprintf(vs, sizeof vs, "%.2fx", fused_s / r.s.train_s);
    say("| %s | %.3f | %.3e | %.0f | %s | %s |\n", name(r).c_str(), r.s.train_s, r.s.net_steps / r.s.train_s, gf,
        pct(gf).c_str(), vs);
  };
  small_row(run("small fused", cuda::Path::fused, TrainPath::data));
  small_row(run("small warp", cuda::Path::warp, TrainPath::data));
  small_row(run("small moment warp", cuda::Path::warp, TrainPath::moment));

  // Last: the rows above matter more if the time runs out. Trained teachers
  // (1000 steps on 128 clean samples, float64), one per seed shared by a 4
  // noise x 4 lambda grid, trained on the device (the default) and by set-up
  // on the host (STSWEEP_CUDA_TEACHERS=host); then a teacher per trial, the
  // case the device pass is for (docs/ARCHITECTURE.md).
  batch.trials = standard;
  for (size_t i = 0; i < batch.trials.size(); ++i) {
    TrialParams& t = batch.trials[i];
    t.teacher.kind = TeacherKind::trained;
    t.teacher.n_train = 128;
    t.teacher.steps = teacher_steps;
    t.teacher.lr = 0.02;
    t.seed = static_cast<int>(i / 16);
    t.noise = 0.25 * static_cast<double>(1 + i % 4);
    t.lambda = 0.1 * static_cast<double>(1 + (i / 4) % 4);
  }
  say("\n# trained teachers (float64, %d steps, 128 samples), standard grid; teacher s: the\n"
      "# device's teacher launches (beside the other wave), set-up s: host wall (all cores)\n",
      teacher_steps);
  say("| row | teachers on the device | teacher s | host set-up s | train s | total s | trials/s |\n");
  say("|---|---|---|---|---|---|---|\n");
  auto teacher_row = [&](const Row& r) {
    if (!r.error.empty()) return error_row(r, 7);
    say("| %s | %lld | %.3f | %.2f | %.3f | %.2f | %.0f |\n", name(r).c_str(), r.s.teachers, r.s.teacher_s,
        r.s.setup_s, r.s.train_s, r.s.total_s, trials / r.s.total_s);
  };
  reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
  teacher_row(run("teachers shared by 16, device", cuda::Path::fused, TrainPath::data));
  setenv("STSWEEP_CUDA_TEACHERS", "host", 1);
  reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
  teacher_row(run("teachers shared by 16, host", cuda::Path::fused, TrainPath::data));
  unsetenv("STSWEEP_CUDA_TEACHERS");
  for (size_t i = 0; i < batch.trials.size(); ++i) batch.trials[i].seed = static_cast<int>(i);
  reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
  teacher_row(run("a teacher per trial, device", cuda::Path::fused, TrainPath::data));

  int errors = 0;
  for (const Row& r : rows) errors += !r.error.empty();
  if (errors) say("\nbench_cuda: %d of %zu runs failed (error rows above)\n", errors, rows.size());
  return errors ? 1 : 0;
#endif
}
