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
// 32768 networks x T steps. Exits 0 with a message when there is no GPU.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

#ifdef STSWEEP_FAKE_CUDA
  const double peak = 1.0;  // the fake device has no FMA rate
#else
  const double peak = cuda::fma_peak_gflops();
#endif
  std::string dev;
  struct Row {
    std::string what;
    cuda::RunStats s;
    int failed = 0;
  };
  std::vector<Row> rows;
  auto run = [&](const char* what, cuda::Path path, TrainPath tp) {
    for (auto& t : batch.trials) t.path = tp;
    std::string w;
    auto be = cuda::make_backend(opt, path, &w);
    if (!be) {
      std::printf("bench_cuda: %s\n", w.c_str());
      std::exit(1);
    }
    dev = be->device();
    const auto res = be->run(batch, opt);
    Row r{what, cuda::last_stats(*be), 0};
    for (const auto& x : res)
      if (x.status != Status::done) ++r.failed;
    std::printf("%-16s paths %-8s set-up %7.2f s  train %8.3f s  eval %7.3f s  total %7.2f s  chunks %d  not done %d\n",
                what, r.s.paths.c_str(), r.s.setup_s, r.s.train_s, r.s.eval_s, r.s.total_s, r.s.chunks,
                r.failed);
    std::fflush(stdout);
    rows.push_back(r);
  };
  run("data fused", cuda::Path::fused, TrainPath::data);
  run("data cublas", cuda::Path::cublas, TrainPath::data);
  run("moment fused", cuda::Path::fused, TrainPath::moment);
  setenv("STSWEEP_CUDA_VECTOR_A", "0", 1);  // v2's tiles: A loaded one k at a time
  run("data fused, scalar A", cuda::Path::fused, TrainPath::data);
  unsetenv("STSWEEP_CUDA_VECTOR_A");
  setenv("STSWEEP_CUDA_ONE_COLUMN", "0", 1);  // v4's tiles: no one-column shapes
  run("data fused, v4", cuda::Path::fused, TrainPath::data);
  unsetenv("STSWEEP_CUDA_ONE_COLUMN");
  // The cuBLAS trainer's steps launched one by one (about 3L + 3 launches a
  // step) instead of in CUDA graphs of 64 steps: what the graphs save, on
  // the device (train s) and for the overlap of set-up with training (total s).
  setenv("STSWEEP_CUDA_GRAPH", "0", 1);
  run("data cublas, step by step", cuda::Path::cublas, TrainPath::data);
  unsetenv("STSWEEP_CUDA_GRAPH");
  const std::vector<TrialParams> standard = batch.trials;
  for (auto& t : batch.trials) {
    t.d = t.hidden[0] = 16;
    t.k = 8;
    t.m = 4;
    t.n_train = 64;
  }
  run("small fused", cuda::Path::fused, TrainPath::data);
  run("small warp", cuda::Path::warp, TrainPath::data);
  run("small moment warp", cuda::Path::warp, TrainPath::moment);
  {  // last: the rows above matter more if the time runs out
    // Trained teachers (1000 steps on 128 clean samples, float64), one per
    // seed shared by a 4 noise x 4 lambda grid, trained on the device (the
    // default) and by set-up on the host (STSWEEP_CUDA_TEACHERS=host); then a
    // teacher per trial, the case the device pass is for (docs/ARCHITECTURE.md).
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
    reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
    run("teachers shared by 16, device", cuda::Path::fused, TrainPath::data);
    setenv("STSWEEP_CUDA_TEACHERS", "host", 1);
    reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
    run("teachers shared by 16, host", cuda::Path::fused, TrainPath::data);
    unsetenv("STSWEEP_CUDA_TEACHERS");
    for (size_t i = 0; i < batch.trials.size(); ++i) batch.trials[i].seed = static_cast<int>(i);
    reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
    run("a teacher per trial, device", cuda::Path::fused, TrainPath::data);
  }

  tm::Net net;
  net.L = 2;
  net.w[0] = 64;
  net.w[1] = 64;
  net.w[2] = 16;
  std::printf("\n# standard GPU grid on %s\n", dev.c_str());
  std::printf("# %d trials + twins, d=h=64, m=16, N=128, T=%d, float32; data step %.3f MFLOP, moment step %.3f MFLOP\n",
              trials, steps, tm::data_step_flops(net, 128) * 1e-6, tm::moment_step_flops(net, 2u) * 1e-6);
  std::printf("# FP32 FMA peak (measured, FMA chains): %.0f GFLOP/s\n", peak);
  std::printf("# host set-up (float64, all cores, overlapped with the other wave's training) beside it\n");
  std::printf("# vs cuBLAS: against the faster of the two cuBLAS rows (graphs, step by step)\n");
  std::printf("| path | train s | trial-steps/s | GFLOP/s | %% of FMA peak | vs cuBLAS | host set-up s | total s |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  auto row = [&](const char* what) -> const Row& {
    for (const Row& r : rows)
      if (r.what == what) return r;
    std::fprintf(stderr, "bench_cuda: no row '%s'\n", what);
    std::exit(1);
  };
  const double cublas_s = std::min(row("data cublas").s.train_s, row("data cublas, step by step").s.train_s);
  for (const Row& r : rows) {
    if (r.what.rfind("small", 0) == 0 || r.what.find("teacher") != std::string::npos) continue;
    const double gf = r.s.flops / r.s.train_s * 1e-9;
    std::printf("| %s | %.3f | %.3e | %.0f | %.1f | %.2fx | %.2f | %.2f |\n", r.what.c_str(), r.s.train_s,
                r.s.net_steps / r.s.train_s, gf, 100.0 * gf / peak, cublas_s / r.s.train_s, r.s.setup_s,
                r.s.total_s);
  }
  net.w[0] = net.w[1] = 16;
  net.w[2] = 4;
  std::printf("\n# small widths: d=h=16, m=4, N=64; data step %.3f MFLOP\n", tm::data_step_flops(net, 64) * 1e-6);
  std::printf("| path | train s | trial-steps/s | GFLOP/s | %% of FMA peak | vs fused |\n");
  std::printf("|---|---|---|---|---|---|\n");
  const double fused_s = row("small fused").s.train_s;
  for (const Row& r : rows) {
    if (r.what.rfind("small", 0) != 0) continue;
    const double gf = r.s.flops / r.s.train_s * 1e-9;
    std::printf("| %s | %.3f | %.3e | %.0f | %.1f | %.2fx |\n", r.what.c_str(), r.s.train_s,
                r.s.net_steps / r.s.train_s, gf, 100.0 * gf / peak, fused_s / r.s.train_s);
  }
  std::printf("\n# trained teachers (float64, %d steps, 128 samples), standard grid; teacher s: the\n"
              "# device's teacher launches (beside the other wave), set-up s: host wall (all cores)\n",
              teacher_steps);
  std::printf("| row | teachers on the device | teacher s | host set-up s | train s | total s | trials/s |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    if (r.what.find("teacher") == std::string::npos) continue;
    std::printf("| %s | %lld | %.3f | %.2f | %.3f | %.2f | %.0f |\n", r.what.c_str(), r.s.teachers, r.s.teacher_s,
                r.s.setup_s, r.s.train_s, r.s.total_s, trials / r.s.total_s);
  }
  return 0;
#endif
}
