// The standard CPU grid (issue 3): 2-layer linear students, d = h = 32, m = 8,
// N = 64, T = 2000, oracle teacher (balanced), lambda = 1, trials plus their
// twins, float32, on the CPU backend with all cores. Counters:
//   trial_steps/s  networks x steps per second (a student and its twin count as two)
//   GFLOP/s        counted flops of the steps (tm::data_step_flops / moment_step_flops)
// End to end: set-up, training, checkpoint metrics; with glibc malloc's
// thresholds raised as `stsweep` raises them (STSWEEP_MALLOC=system: not).
// The step-only benchmark times the step loop of one network (no set-up, no
// metrics), single thread.
//
// The yardstick: a large sgemm (2048^3, float32) from OpenBLAS, loaded at run
// time (dlopen of libopenblas.so.0; skipped when absent), on all cores.
//
//   build-train/bench/bench_cpu_train --benchmark_filter=Grid
//   build-train/bench/bench_cpu_train --benchmark_filter=Step
//   build-train/bench/bench_cpu_train --benchmark_filter=Sgemm
//   build-train/bench/bench_cpu_train --benchmark_filter=Setup
//
// Setup/gpu_grid: setup_trial alone (data, teacher, closed-form risks) for a
// trial of the standard GPU grid (d = h = 64, k = m = 16, N = 128), one
// thread: the host work the CUDA backend does per trial. Setup/trained_teacher/*:
// the same with a trained teacher, a new one each trial or one per 16 trials.
#include <benchmark/benchmark.h>
#include <dlfcn.h>

#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "backend.hpp"
#include "device_plan.hpp"
#include "grids.hpp"
#include "memory.hpp"
#include "net_buffers.hpp"
#include "problem.hpp"
#include "train.hpp"
#include "trial_math.hpp"

namespace {

using namespace stsweep;

TrialParams grid_params(TrainPath path, int i, Activation act = Activation::linear) {
  TrialParams p;
  p.activation = act;
  p.d = 32;
  p.k = 32;
  p.m = 8;
  p.hidden = {32};
  p.n_train = 64;
  p.steps = 2000;
  p.lr = 0.01;
  p.lambda = 1.0;
  p.init_scale = 1e-2;
  p.path = path;
  p.seed = i;
  return p;
}

tm::Net grid_net() {
  tm::Net net;
  net.L = 2;
  net.w[0] = 32;
  net.w[1] = 32;
  net.w[2] = 8;
  return net;
}

// Flops of one student step plus one twin step.
double pair_flops(TrainPath path) {
  const tm::Net net = grid_net();
  if (path == TrainPath::moment) return tm::moment_step_flops(net, 2u) + tm::moment_step_flops(net, 0u);
  return 2 * tm::data_step_flops(net, 64);
}

void Grid(benchmark::State& state, TrainPath path, Precision prec, Activation act = Activation::linear) {
  const int trials = static_cast<int>(state.range(0));
  Batch b;
  for (int i = 0; i < trials; ++i) {
    b.ids.push_back(i);
    b.trials.push_back(grid_params(path, i, act));
  }
  RunOptions opt;
  opt.precision = prec;
  opt.threads = 0;
  auto be = make_cpu_backend(opt);
  for (auto _ : state) {
    auto r = be->run(b, opt);
    benchmark::DoNotOptimize(r.data());
    if (r[0].status != Status::done) state.SkipWithError(r[0].message.c_str());
  }
  const double steps = 2.0 * trials * b.trials[0].steps;
  state.counters["trial_steps/s"] = benchmark::Counter(steps, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = benchmark::Counter(steps / 2 * pair_flops(path) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = std::thread::hardware_concurrency();
}

// The step loop alone: one network (the student, lambda = 1), one thread.
template <class Real>
void Step(benchmark::State& state, TrainPath path) {
  const TrialProblem pr = setup_trial(grid_params(path, 0), 1);
  const tm::Net net = grid_net();
  NetWeights<Real> w(net, pr.W0);  // host/net_buffers.hpp, as the CPU trainer's
  const tm::SerialTeam team;
  const Real lr = Real(1e-3), lambda = Real(1);
  if (path == TrainPath::data) {
    DataPath<Real> dp(net, pr.Xn, pr.Y, &pr.feature, 2u);
    for (auto _ : state) {
      auto loss = tm::data_forward(team, net, w.view, dp.ds, 2u, dp.wk);
      benchmark::DoNotOptimize(loss);
      tm::data_backward_update(team, net, w.view, dp.ds, lambda, 2u, lr, dp.wk);
    }
    state.counters["GFLOP/s"] = benchmark::Counter(tm::data_step_flops(net, pr.Xn.cols) * 1e-9,
                                                   benchmark::Counter::kIsIterationInvariantRate);
  } else {
    MomentPath<Real> mp(net, trial_moments(pr, 2u), 2u);
    for (auto _ : state) {
      auto loss = tm::moment_forward(team, net, w.view, mp.ms, 2u, mp.wk);
      benchmark::DoNotOptimize(loss);
      tm::moment_backward_update(team, net, w.view, mp.ms, lambda, 2u, lr, mp.wk);
    }
    state.counters["GFLOP/s"] = benchmark::Counter(tm::moment_step_flops(net, 2u) * 1e-9,
                                                   benchmark::Counter::kIsIterationInvariantRate);
  }
  state.counters["trial_steps/s"] = benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
}

// cblas_sgemm from OpenBLAS, if it can be loaded.
void Sgemm(benchmark::State& state) {
  void* lib = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    state.SkipWithError("libopenblas.so.0 not found");
    for (auto _ : state) {
    }
    return;
  }
  using sgemm_t = void (*)(int, int, int, int, int, int, float, const float*, int, const float*,
                           int, float, float*, int);
  using threads_t = void (*)(int);
  auto sgemm = reinterpret_cast<sgemm_t>(dlsym(lib, "cblas_sgemm"));
  auto set_threads = reinterpret_cast<threads_t>(dlsym(lib, "openblas_set_num_threads"));
  const int n = static_cast<int>(state.range(0));
  if (set_threads) set_threads(static_cast<int>(std::thread::hardware_concurrency()));
  std::vector<float> a(static_cast<size_t>(n) * n), b(a.size()), c(a.size());
  std::mt19937 gen(1);
  std::normal_distribution<float> nd;
  for (auto& x : a) x = nd(gen);
  for (auto& x : b) x = nd(gen);
  constexpr int kRowMajor = 101, kNoTrans = 111;
  sgemm(kRowMajor, kNoTrans, kNoTrans, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
  for (auto _ : state)
    sgemm(kRowMajor, kNoTrans, kNoTrans, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * n * n * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = std::thread::hardware_concurrency();
}

// glibc's malloc returns the top of its heap to the system once more than its
// trim threshold (128 KB at first) is free there, and raises that threshold
// (to twice the size) when a block it had to map is freed. A run frees large
// blocks early (batches, the store's buffers), so its set-up reuses the same
// pages trial after trial; a loop that only sets trials up never raises it,
// and each trial's ~300 KB of fresh pages faulted in again made Setup/gpu_grid
// 2.5x slower than set-up in a run (2026-12-02: 425 against 1,134 trials/s;
// a run measures about 0.75 ms a build: standard_gpu at 8 steps with
// --setup-cache-mb 0 and 512, docs/PERFORMANCE.md). So the set-up benchmarks
// free one 4 MB block first, as a run does.
void prime_allocator() {
  void* v = std::malloc(size_t{4} << 20);
  benchmark::DoNotOptimize(v);
  std::free(v);
}

// Trained teachers (teacher.kind = trained, 1000 steps on 128 clean samples):
// SetupTrained/new draws a new seed every trial, so every teacher is trained;
// SetupTrained/sweep walks a 4 noise x 4 lambda grid per seed, the trials of
// a seed sharing one teacher (trained once, then reused from the cache).
void SetupTrained(benchmark::State& state, bool sweep) {
  prime_allocator();
  TrialParams p = bench::standard_gpu_trial();
  p.teacher.kind = TeacherKind::trained;
  p.teacher.n_train = 128;
  p.teacher.steps = 1000;
  p.teacher.lr = 0.02;
  reset_teacher_cache(size_t{256} << 20);
  int i = 0;
  for (auto _ : state) {
    p.seed = sweep ? i / 16 : i;
    p.noise = sweep ? 0.25 * (1 + i % 4) : 0.5;
    p.lambda = sweep ? 0.1 * (1 + (i / 4) % 4) : 1.0;
    ++i;
    TrialProblem pr = setup_trial(p, 5);
    benchmark::DoNotOptimize(pr.interp_risk);
  }
  const TeacherCacheStats st = teacher_cache_stats();
  state.counters["trials/s"] = benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["teachers_trained"] = static_cast<double>(st.trained);
  state.counters["teachers_reused"] = static_cast<double>(st.reused);
}

// Setup/gpu_grid: set-up of one trial of the standard GPU grid, a new seed
// every trial, so nothing is shared. Setup/gpu_grid_lambda4: four lambdas per
// seed, as in the standard GPU grid, in SetupShares of 64 trials: three
// trials of four take a copy of the first one's problem (--setup-cache-mb).
// Time per 64 trials; trials/s.
void Setup(benchmark::State& state, int lambdas) {
  prime_allocator();
  TrialParams p = bench::standard_gpu_trial();
  reset_setup_cache(size_t{kSetupCacheDefaultMb} << 20);
  constexpr int kChunk = 64;
  std::vector<TrialParams> ps(kChunk, p);
  int64_t next_seed = 0;
  for (auto _ : state) {
    for (int j = 0; j < kChunk; ++j) {
      ps[j].seed = next_seed + j / lambdas;
      ps[j].lambda = 0.1 * (1 + j % lambdas);
    }
    next_seed += kChunk / lambdas;
    SetupShare share(ps, 0, ps.size(), 5);
    for (size_t j = 0; j < ps.size(); ++j) {
      TrialProblem pr = share.setup(j);
      benchmark::DoNotOptimize(pr.interp_risk);
    }
  }
  const SetupCacheStats st = setup_cache_stats();
  state.counters["trials/s"] = benchmark::Counter(kChunk, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["built"] = static_cast<double>(st.built);
  state.counters["copied"] = static_cast<double>(st.reused);
}

// The CUDA backend's packing of a wave's group into the staging buffers
// (device_plan.cpp's pack_group, on the launching thread): per trial of the
// standard GPU grid, the data path (copies) and the moment path (moments
// formed from the data, d^2 N); Arg: host threads.
void Pack(benchmark::State& state, TrainPath path) {
  TrialParams p = bench::standard_gpu_trial();
  p.path = path;
  Batch b;
  for (int i = 0; i < 64; ++i) {
    p.seed = i;
    b.ids.push_back(i);
    b.trials.push_back(p);
  }
  RunOptions o;
  o.sweep_seed = 5;
  std::vector<TrialResult> out(b.trials.size());
  const std::vector<cuda::Prepared> wave =
      cuda::prepare_trials(b, 0, b.trials.size(), o, static_cast<int>(std::thread::hardware_concurrency()), out,
                           nullptr);
  cuda::DeviceLimits lim;
  lim.shared_per_block = 227 * 1024;
  const std::vector<cuda::GroupPlan> g = cuda::plan_groups(wave, cuda::Path::automatic, 4, lim, [](const std::string&) {});
  if (g.size() != 1) state.SkipWithError("expected one group");
  const cuda::GroupPlan& gp = g[0];
  std::vector<float> arena(gp.members.size() * gp.y.arena);
  std::vector<double> eval(gp.members.size() * gp.y.eval);
  std::vector<cuda::TrialScalars> ts(gp.members.size());
  std::vector<long long> ck(std::max(gp.ck_total, 1));
  for (auto _ : state) {
    cuda::pack_group<float>(gp, wave, arena.data(), eval.data(), ts.data(), ck.data(),
                            static_cast<int>(state.range(0)));
    benchmark::DoNotOptimize(arena.data());
  }
  state.counters["trials/s"] = benchmark::Counter(static_cast<double>(gp.members.size()),
                                                  benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK_CAPTURE(Pack, data, TrainPath::data)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(Pack, moment, TrainPath::moment)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

BENCHMARK_CAPTURE(Setup, new, 1)->Name("Setup/gpu_grid")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(Setup, lambda4, 4)->Name("Setup/gpu_grid_lambda4")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(SetupTrained, new, false)->Name("Setup/trained_teacher/new")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(SetupTrained, sweep, true)->Name("Setup/trained_teacher/sweep")->Unit(benchmark::kMillisecond);
BENCHMARK(Sgemm)->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK_CAPTURE(Grid, data_f32, TrainPath::data, Precision::f32)
    ->Arg(512)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();
BENCHMARK_CAPTURE(Grid, moment_f32, TrainPath::moment, Precision::f32)
    ->Arg(512)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();
// The same grid with tanh students (and teachers): the data path, plus the
// Monte Carlo test risk (n_test = 1000, float64) at each of the 32 checkpoints,
// which the linear grid measures in closed form (bench/peer_torch.py
// --activation tanh is its peer, without the checkpoints).
BENCHMARK_CAPTURE(Grid, data_f32_tanh, TrainPath::data, Precision::f32, Activation::tanh)
    ->Arg(512)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();
void StepF32(benchmark::State& s, TrainPath p) { Step<float>(s, p); }
void StepF64(benchmark::State& s, TrainPath p) { Step<double>(s, p); }
BENCHMARK_CAPTURE(StepF32, data, TrainPath::data)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(StepF32, moment, TrainPath::moment)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(StepF64, data, TrainPath::data)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(StepF64, moment, TrainPath::moment)->Unit(benchmark::kMicrosecond);

}  // namespace

// As `stsweep` does (host/main.cpp): glibc's thresholds raised unless
// STSWEEP_MALLOC=system, which is the yardstick for that change
// (docs/PERFORMANCE.md, "Nonlinear students").
int main(int argc, char** argv) {
  benchmark::AddCustomContext("malloc", stsweep::tune_malloc() ? "tuned (host/memory.hpp)" : "system");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
