// The CUDA backend (kernels/cuda_*.cu) against the CPU backend, the reference.
// Every test but the first needs a GPU and skips with the reason when there is
// none; the first checks that a machine without one gets a clear reason.
// Names: CudaSmall.* are the small cases that tools/device-check also runs under
// compute-sanitizer (memcheck, racecheck).
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "backend.hpp"
#include "params.hpp"
#include "problem.hpp"
#include "result.hpp"
#include "trial_compare.hpp"

// The GPU tests are built with the CUDA build, and also, as test_cuda_fake, in
// every build against tests/fake_cuda's fake runtime (one-thread teams,
// no cuBLAS of its own): there they run the backend's host code and check the
// tests themselves before a GPU session depends on them.
#if STSWEEP_HAVE_CUDA || defined(STSWEEP_FAKE_CUDA)
#define STS_TEST_CUDA 1
#else
#define STS_TEST_CUDA 0
#endif

#if STS_TEST_CUDA
#include <cuda_runtime.h>

#include "cuda_backend.cuh"
#include "device_emu.hpp"
#endif
#include "multi_backend.hpp"

namespace stsweep {
namespace {

#if STS_TEST_CUDA
// The reason there is no usable GPU, or "".
std::string no_gpu() { return cuda::probe(); }
#define NEED_GPU()                                               \
  do {                                                           \
    const std::string why_ = no_gpu();                           \
    if (!why_.empty()) GTEST_SKIP() << "no usable GPU: " << why_; \
  } while (0)
#else
#define NEED_GPU() GTEST_SKIP() << "built without CUDA"
#endif

using namespace stsweep::testing;

#if STS_TEST_CUDA
struct Poisoned {  // NaN-filled device and staging buffers for the test's runs
  Poisoned() { setenv("STSWEEP_CUDA_POISON", "1", 1); }
  ~Poisoned() { unsetenv("STSWEEP_CUDA_POISON"); }
};

std::vector<TrialResult> run_gpu(const Batch& b, Precision prec, cuda::Path path,
                                 std::string* paths = nullptr) {
  RunOptions o;
  o.sweep_seed = 7;
  o.precision = prec;
  std::string why;
  auto be = cuda::make_backend(o, path, &why);
  if (!be) throw std::runtime_error("no CUDA backend: " + why);
  auto r = be->run(b, o);
  if (paths) *paths = cuda::last_stats(*be).paths;
  return r;
}
#endif

// ------------------------------------------------------------------ tests --

// The overlap of set-up with training needs every device and pinned-host
// allocation and free to happen while no wave is in flight: cudaMalloc and
// cudaMallocHost keep commands of different streams from running concurrently
// and cudaFree waits for the device (the programming guide's implicit
// synchronisation). So the CUDA sources allocate, free and synchronise the
// device only in class Pool (sized before a run's waves) and in
// fma_peak_gflops (a measurement run on its own). A source check: no GPU needed.
TEST(CudaSource, AllocatesAndFreesOnlyInPools) {
  const std::string dir = std::string(STSWEEP_SOURCE_DIR) + "/kernels/";
  // tools/device-check runs this binary on another machine, without the tree
  // it was built from; everywhere else (CI) the sources are there.
  if (FILE* probe = std::fopen((dir + "cuda_backend.cu").c_str(), "r")) std::fclose(probe);
  else GTEST_SKIP() << "the sources are not at " << dir << " (a binary carried to another machine)";
  const char* calls[] = {"cudaMalloc", "cudaFree", "cudaHostAlloc", "cudaDeviceSynchronize", "cudaMemset("};
  int files = 0;
  for (const char* name : {"cuda_backend.cu", "cuda_fused.cu", "cuda_cublas.cu", "cuda_select.cu", "cuda_common.cuh"}) {
    FILE* f = std::fopen((dir + name).c_str(), "r");
    ASSERT_NE(f, nullptr) << dir + name;
    ++files;
    std::string allowed;  // the block being read: "Pool", "fma_peak_gflops" or ""
    char buf[4096];
    for (int line = 1; std::fgets(buf, sizeof buf, f); ++line) {
      const std::string text = buf;
      if (text.rfind("class Pool {", 0) == 0) allowed = "Pool";
      if (text.rfind("double fma_peak_gflops()", 0) == 0) allowed = "fma_peak_gflops";
      if (text.rfind("};", 0) == 0 || text.rfind("}\n", 0) == 0) allowed.clear();
      const std::string code = text.substr(0, text.find("//"));
      for (const char* c : calls)
        if (code.find(c) != std::string::npos)
          EXPECT_FALSE(allowed.empty()) << name << ":" << line << ": " << c << " outside Pool: " << text;
    }
    std::fclose(f);
  }
  EXPECT_EQ(files, 5);
}

TEST(CudaBackend, WithoutGpuSaysWhy) {
#if STS_TEST_CUDA
  std::string why;
  auto be = make_cuda_backend(RunOptions{}, &why);
  int count = -1;
  const cudaError_t e = cudaGetDeviceCount(&count);
  (void)cudaGetLastError();
  if (e != cudaSuccess || count == 0) {
    EXPECT_EQ(be, nullptr);
    EXPECT_FALSE(why.empty());
    EXPECT_FALSE(cuda::probe().empty());
    std::printf("no GPU, as expected here: %s\n", why.c_str());
  } else {
    ASSERT_NE(be, nullptr) << why;
    EXPECT_EQ(be->name(), "cuda");
    EXPECT_FALSE(be->device().empty());
    std::printf("GPU: %s\n", be->device().c_str());
  }
#else
  std::string why;
  EXPECT_EQ(make_cuda_backend(RunOptions{}, &why), nullptr);
  EXPECT_FALSE(why.empty());
#endif
}

#if STS_TEST_CUDA
// Fresh random shapes and settings on every run (the seed is printed): the
// fused kernel (and the general path where the arena does not fit) against the
// CPU backend in float32, outputs poisoned.
TEST(CudaFused, MatchesCpuOnFreshRandomProblems) {
  NEED_GPU();
  const Poisoned poison;
  const unsigned seed = std::random_device{}();
  std::printf("seed %u\n", seed);
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 g(seed);
  for (int shape = 0; shape < 6; ++shape) {
    const std::vector<TrialParams> ps = random_trials(g, RandomLimits{});
    const Batch b = make_batch(ps);
    const auto ref = run_cpu(b, Precision::f32);
    for (cuda::Path want : {cuda::Path::fused, cuda::Path::warp}) {
      std::string paths;
      const auto got = run_gpu(b, Precision::f32, want, &paths);
      ASSERT_EQ(got.size(), ref.size());
      for (size_t i = 0; i < ref.size(); ++i)
        expect_close(got[i], ref[i], 2e-3, 1e-6,
                     "shape " + std::to_string(shape) + " trial " + std::to_string(i) + " (" + paths +
                         ", " + name(ps[i].activation) + ", " + name(ps[i].path) + ")");
    }
  }
}

// A small sweep (linear students, data and moment paths, depth 2 and 3, and a
// nonlinear one) in float64: the CPU backend's metrics, risks within 1e-5.
TEST(CudaSweep, MetricsMatchCpuF64) {
  NEED_GPU();
  const Poisoned poison;
  std::vector<TrialParams> ps;
  for (std::vector<int> hidden : {std::vector<int>{16}, std::vector<int>{16, 12}})
    for (TrainPath path : {TrainPath::data, TrainPath::moment})
      for (double lambda : {0.0, 1.0})
        for (Decomposition dec : {Decomposition::balanced, Decomposition::latent}) {
          TrialParams p = base_params();
          p.d = 16;
          p.k = 8;
          p.m = 4;
          p.hidden = hidden;
          p.n_train = 24;
          p.path = path;
          p.lambda = lambda;
          p.steps = 300;
          p.teacher.decomposition = dec;
          ps.push_back(p);
        }
  TrialParams nl = base_params();
  nl.activation = Activation::tanh;
  ps.push_back(nl);
  nl.activation = Activation::relu;
  nl.lambda = 0.2;
  ps.push_back(nl);
  for (const Batch& b : by_shape(ps)) {
    const auto ref = run_cpu(b, Precision::f64);
    for (cuda::Path path : {cuda::Path::automatic, cuda::Path::general}) {
      std::string paths;
      const auto got = run_gpu(b, Precision::f64, path, &paths);
      ASSERT_EQ(got.size(), ref.size());
      for (size_t i = 0; i < ref.size(); ++i)
        expect_close(got[i], ref[i], 1e-5, 1e-12, "f64 " + paths + " trial " + std::to_string(i));
    }
  }
}

// One trial with a huge learning rate diverges; its batch-mates are bit-for-bit
// what they are in a batch where it behaves (same batch size) and in a batch
// without it, on every path.
TEST(CudaDivergence, LeavesBatchMatesUntouched) {
  NEED_GPU();
  const Poisoned poison;
  std::vector<TrialParams> ps;
  for (int i = 0; i < 4; ++i) {
    TrialParams p = base_params();
    p.seed = i;
    p.lambda = 0.25 * i;
    ps.push_back(p);
  }
  std::vector<TrialParams> bad = ps, without = ps;
  bad[2].lr = 1e3;
  without.erase(without.begin() + 2);
  for (cuda::Path path : {cuda::Path::fused, cuda::Path::warp, cuda::Path::general, cuda::Path::cublas}) {
    SCOPED_TRACE(cuda::name(path));
    const auto good_r = run_gpu(make_batch(ps), Precision::f32, path);
    const auto bad_r = run_gpu(make_batch(bad), Precision::f32, path);
    ASSERT_EQ(bad_r[2].status, Status::diverged) << bad_r[2].message;
    EXPECT_LT(bad_r[2].steps_run, bad[2].steps);
    EXPECT_FALSE(bad_r[2].message.empty());
    for (int i : {0, 1, 3}) {
      EXPECT_EQ(bad_r[i].status, Status::done);
      expect_same(bad_r[i], good_r[i], "batch-mate " + std::to_string(i));
    }
    if (path != cuda::Path::cublas) {  // cuBLAS may pick another algorithm for another count
      auto wo = make_batch(without);
      wo.ids = {100, 101, 103};
      const auto wo_r = run_gpu(wo, Precision::f32, path);
      expect_same(bad_r[0], wo_r[0], "without, 0");
      expect_same(bad_r[1], wo_r[1], "without, 1");
      expect_same(bad_r[3], wo_r[2], "without, 3");
    }
    // The CPU backend agrees on the diverged trial's status and step.
    const auto cpu = run_cpu(make_batch(bad), Precision::f32);
    EXPECT_EQ(cpu[2].status, Status::diverged);
    EXPECT_EQ(cpu[2].steps_run, bad_r[2].steps_run);
  }
}

// The cuBLAS path (the yardstick) trains what the fused kernel trains, to
// float32 rounding; the general path is the fused kernel on global memory:
// bit-identical to it.
TEST(CudaCublas, MatchesFused) {
  NEED_GPU();
  const Poisoned poison;
  for (Activation act : {Activation::linear, Activation::tanh}) {
    std::vector<TrialParams> ps;
    for (int i = 0; i < 5; ++i) {
      TrialParams p = base_params();
      p.hidden = {10, 8};
      p.activation = act;
      p.path = TrainPath::data;
      p.seed = i;
      p.lambda = 0.3 * i;
      p.lr = 0.03 + 0.01 * i;
      p.steps = 100 + 37 * i;  // different lengths in one launch
      p.baseline = i != 3;
      ps.push_back(p);
    }
    const Batch b = make_batch(ps);
    const auto fused = run_gpu(b, Precision::f32, cuda::Path::fused);
    const auto general = run_gpu(b, Precision::f32, cuda::Path::general);
    const auto cublas = run_gpu(b, Precision::f32, cuda::Path::cublas);
    const auto cublas64 = run_gpu(b, Precision::f64, cuda::Path::cublas);
    const auto cpu64 = run_cpu(b, Precision::f64);
    for (size_t i = 0; i < ps.size(); ++i) {
      const std::string what = std::string(name(act)) + " trial " + std::to_string(i);
      expect_same(general[i], fused[i], "general vs fused, " + what);
      expect_close(cublas[i], fused[i], 2e-3, 1e-6, "cublas vs fused, " + what);
      expect_close(cublas64[i], cpu64[i], 1e-8, 1e-12, "cublas f64 vs cpu f64, " + what);
    }
  }
}

// The cuBLAS trainer's steps in CUDA graphs (STSWEEP_CUDA_GRAPH=7: 256 steps
// of the group, 36 launches of a 7-step graph and one of a 4-step graph; the
// default 64 in MatchesFused above) against the same steps one by one: the same
// kernels with the same arguments, so the same results (to 1e-6: cuBLAS may
// choose another algorithm inside a capture; the test prints whether the bits
// agree, for docs/PERFORMANCE.md).
TEST(CudaCublas, GraphsMatchStepByStep) {
  NEED_GPU();
  const Poisoned poison;
  std::vector<TrialParams> ps;
  for (int i = 0; i < 6; ++i) {
    TrialParams p = base_params();
    p.hidden = {12};
    p.activation = i % 2 ? Activation::tanh : Activation::linear;
    p.path = TrainPath::data;
    p.seed = 20 + i;
    p.lambda = 0.2 * i;
    p.steps = 250 + i;
    ps.push_back(p);
  }
  const Batch b = make_batch(ps);
  std::string paths_graph, paths_steps;
  setenv("STSWEEP_CUDA_GRAPH", "7", 1);
  const auto graph = run_gpu(b, Precision::f32, cuda::Path::cublas, &paths_graph);
  setenv("STSWEEP_CUDA_GRAPH", "0", 1);
  const auto steps = run_gpu(b, Precision::f32, cuda::Path::cublas, &paths_steps);
  unsetenv("STSWEEP_CUDA_GRAPH");
  EXPECT_NE(paths_graph.find("cublas (CUDA graphs)"), std::string::npos) << paths_graph;
  EXPECT_NE(paths_steps.find("cublas (step by step)"), std::string::npos) << paths_steps;
  bool bits = true;
  for (size_t i = 0; i < ps.size(); ++i) {
    ASSERT_EQ(graph[i].status, Status::done) << graph[i].message;
    expect_close(graph[i], steps[i], 1e-6, 1e-9, "graphs vs step by step, trial " + std::to_string(i));
    for (auto m : {&TrialResult::test_risk, &TrialResult::baseline_test_risk, &TrialResult::train_loss})
      bits = bits && std::memcmp(&(graph[i].*m), &(steps[i].*m), sizeof(double)) == 0;
  }
  std::cout << "cuBLAS in CUDA graphs vs step by step: " << (bits ? "the same bits" : "not the same bits") << "\n";
}

// The device equals its host emulation (kernels/device_emu.cpp, which the CPU
// suite checks against the CPU backend) BIT FOR BIT: same teams (256-thread
// blocks, 32-lane warps), same reduction order, every FMA explicit on both
// sides (-ffp-contract=off, --fmad=false). Linear, ReLU and tanh networks
// (tm::tanh_ is the same arithmetic on both sides, not CUDA's or glibc's tanh).
TEST(CudaEmulation, DeviceEqualsEmulationBitForBit) {
  NEED_GPU();
#ifdef STSWEEP_FAKE_CUDA
  GTEST_SKIP() << "the fake device's teams are one thread, the emulation's are the device's";
#endif
  const Poisoned poison;
  std::vector<TrialParams> ps;
  for (Activation act : {Activation::linear, Activation::relu, Activation::tanh})
    for (TrainPath tp : {TrainPath::data, TrainPath::moment}) {
      if (act != Activation::linear && tp == TrainPath::moment) continue;
      for (int i = 0; i < 2; ++i) {
        TrialParams p = base_params();
        p.hidden = {10, 8};
        p.activation = act;
        p.path = tp;
        p.seed = i;
        p.lambda = 0.4 * i;
        p.steps = 20 + 5 * i;
        p.checkpoints = 4;
        p.n_test = 50;
        p.baseline = i == 0;
        ps.push_back(p);
      }
    }
  // Four of the six (path, precision) pairs: emulating 256-thread blocks on the
  // host is slow (a barrier of 256 threads per sync).
  const std::pair<cuda::Path, Precision> cases[] = {{cuda::Path::fused, Precision::f32},
                                                    {cuda::Path::warp, Precision::f32},
                                                    {cuda::Path::general, Precision::f64},
                                                    {cuda::Path::warp, Precision::f64}};
  for (const Batch& b : by_shape(ps))
    for (const auto& [path, prec] : cases) {
      RunOptions o;
      o.sweep_seed = 7;
      o.precision = prec;
      cuda::EmuOptions eo;
      eo.path = path;
      const auto emu = cuda::make_emulated_backend(eo)->run(b, o);
      const auto got = run_gpu(b, prec, path);
      for (size_t i = 0; i < got.size(); ++i)
        expect_same(got[i], emu[i], std::string(cuda::name(path)) + (prec == Precision::f32 ? " f32 " : " f64 ") +
                                        name(b.trials[i].activation) + " trial " + std::to_string(i));
    }
}

// The tiles that load A four k at a time (the default) and v2's scalar-A
// tiles run the same fma chains: the same bits.
TEST(CudaFused, VectorAndScalarALoadsAgree) {
  NEED_GPU();
  const Poisoned poison;
  std::vector<TrialParams> ps;
  for (int i = 0; i < 3; ++i) {
    TrialParams p = base_params();
    p.d = 16;
    p.k = 8;
    p.hidden = {12, 8};  // rows 16, 12 and 8 floats apart: the vector loads apply
    p.path = TrainPath::data;
    p.seed = i;
    p.lambda = 0.5 * i;
    ps.push_back(p);
  }
  const Batch b = make_batch(ps);
  for (cuda::Path path : {cuda::Path::fused, cuda::Path::warp}) {
    const auto vec = run_gpu(b, Precision::f32, path);
    setenv("STSWEEP_CUDA_VECTOR_A", "0", 1);
    std::string paths;
    const auto scalar = run_gpu(b, Precision::f32, path, &paths);
    unsetenv("STSWEEP_CUDA_VECTOR_A");
    EXPECT_NE(paths.find("scalar A"), std::string::npos) << paths;
    for (size_t i = 0; i < ps.size(); ++i) expect_same(scalar[i], vec[i], paths + " " + std::to_string(i));
    setenv("STSWEEP_CUDA_ONE_COLUMN", "0", 1);  // v4's tiles
    const auto v4 = run_gpu(b, Precision::f32, path, &paths);
    unsetenv("STSWEEP_CUDA_ONE_COLUMN");
    EXPECT_NE(paths.find("v4 tiles"), std::string::npos) << paths;
    for (size_t i = 0; i < ps.size(); ++i) expect_same(v4[i], vec[i], paths + " " + std::to_string(i));
  }
}

// --devices: a batch shared by two CUDA backends (here both on device 0, two
// host threads and four streams on one GPU) gives what one backend gives, bit
// for bit, on the fused and warp paths.
TEST(CudaDevices, TwoBackendsEqualOne) {
  NEED_GPU();
  std::vector<TrialParams> ps;
  for (int i = 0; i < 7; ++i) {
    TrialParams p = base_params();
    p.seed = i;
    p.lambda = 0.2 * i;
    p.path = i % 2 ? TrainPath::moment : TrainPath::data;
    ps.push_back(p);
  }
  const Batch b = make_batch(ps);
  RunOptions o;
  o.sweep_seed = 7;
  for (cuda::Path path : {cuda::Path::fused, cuda::Path::warp}) {
    std::string why;
    auto one = cuda::make_backend(o, path, &why);
    ASSERT_NE(one, nullptr) << why;
    const auto ref = one->run(b, o);
    std::vector<std::unique_ptr<Backend>> parts;
    for (int i = 0; i < 2; ++i) {
      parts.push_back(cuda::make_backend(o, path, &why));
      ASSERT_NE(parts.back(), nullptr) << why;
    }
    MultiBackend two(std::move(parts), {"0", "0"});
    const auto got = two.run(b, o);
    ASSERT_EQ(got.size(), ref.size());
    for (size_t i = 0; i < ref.size(); ++i)
      expect_same(got[i], ref[i], std::string(cuda::name(path)) + " trial " + std::to_string(i));
  }
}

// Small and quick: every path once, for compute-sanitizer (memcheck, racecheck).
TEST(CudaSmall, EveryPathOnce) {
  NEED_GPU();
  const Poisoned poison;
  std::vector<TrialParams> ps;
  for (int i = 0; i < 3; ++i) {
    TrialParams p = base_params();
    p.hidden = {6, 5};
    p.d = 8;
    p.k = 4;
    p.n_train = 10;
    p.n_test = 30;
    p.steps = 12;
    p.checkpoints = 4;
    p.seed = i;
    p.path = i == 1 ? TrainPath::moment : TrainPath::data;
    p.baseline = i != 2;
    ps.push_back(p);
  }
  const Batch b = make_batch(ps);
  const auto ref = run_cpu(b, Precision::f32);
  for (cuda::Path path : {cuda::Path::fused, cuda::Path::warp, cuda::Path::general, cuda::Path::cublas}) {
    const auto got = run_gpu(b, Precision::f32, path);
    for (size_t i = 0; i < ref.size(); ++i)
      expect_close(got[i], ref[i], 2e-3, 1e-6, std::string(cuda::name(path)) + " " + std::to_string(i));
  }
}

// Trained teachers trained on the device (float64, one network per block or
// warp, beside the waves) are set-up's teachers bit for bit: a run with them
// equals a run whose teachers set-up trained on the host (STSWEEP_CUDA_TEACHERS
// =host), and the teacher's clean risk, computed on the host from its weights,
// equals the CPU backend's. Linear teachers on both paths (few samples: data;
// many: moments), a diverging one (its trials fail as on the CPU), a tanh one.
// Small, so compute-sanitizer runs it too.
TEST(CudaSmall, TeachersTrainedOnTheDeviceAreTheHosts) {
  NEED_GPU();
  const Poisoned poison;
  std::vector<TrialParams> lin, nonlin;
  int id = 0;
  for (auto [n_train, lr] : {std::pair{4, 0.1}, std::pair{400, 0.1}, std::pair{12, 80.0}})
    for (double noise : {0.1, 0.6}) {
      TrialParams p = base_params();
      p.d = 8;
      p.k = 4;
      p.hidden = {6};
      p.n_train = 12;
      p.n_test = 30;
      p.steps = 12;
      p.checkpoints = 3;
      p.seed = id++ / 2;
      p.noise = noise;
      p.label_noise = 0.1;
      p.teacher.kind = TeacherKind::trained;
      p.teacher.n_train = n_train;
      p.teacher.steps = 40;
      p.teacher.lr = lr;
      lin.push_back(p);
      p.activation = Activation::tanh;
      p.teacher.decomposition = Decomposition::as_trained;
      nonlin.push_back(p);
    }
  for (const auto* v : {&lin, &nonlin}) {
    const Batch b = make_batch(*v);
    reset_teacher_cache(size_t{64} << 20);
    const auto cpu = run_cpu(b, Precision::f32);
    ASSERT_EQ(cpu[4].status, Status::failed) << cpu[4].message;
    for (cuda::Path path : {cuda::Path::fused, cuda::Path::warp, cuda::Path::general}) {
      const std::string what = std::string(cuda::name(path)) + (v == &lin ? " linear" : " tanh");
      setenv("STSWEEP_CUDA_TEACHERS", "host", 1);
      reset_teacher_cache(size_t{64} << 20);
      const auto host = run_gpu(b, Precision::f32, path);
      unsetenv("STSWEEP_CUDA_TEACHERS");
      reset_teacher_cache(0);
      RunOptions o;
      o.sweep_seed = 7;
      std::string why;
      auto be = cuda::make_backend(o, path, &why);
      ASSERT_TRUE(be) << why;
      const auto dev = be->run(b, o);
      EXPECT_EQ(cuda::last_stats(*be).teachers, 3) << what;
      EXPECT_EQ(teacher_cache_stats().trained, 0) << what;
      for (size_t i = 0; i < dev.size(); ++i) {
        SCOPED_TRACE(what + " trial " + std::to_string(i));
        EXPECT_EQ(dev[i].status, cpu[i].status) << dev[i].message;
        EXPECT_EQ(dev[i].message, host[i].message);
        if (cpu[i].status != Status::done) continue;
        EXPECT_EQ(std::memcmp(&dev[i].teacher_clean_risk, &cpu[i].teacher_clean_risk, sizeof(double)), 0)
            << dev[i].teacher_clean_risk << " vs " << cpu[i].teacher_clean_risk;
        expect_same(dev[i], host[i], what);
      }
    }
  }
  reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
}

// A batch cut into several waves (STSWEEP_CUDA_WAVE=2: 4 waves of 7 trials,
// two in flight, the streams and staging buffers taken in turn) gives the
// bits of one wave; trained teachers are trained once per recipe, also when
// trials of another wave share them.
TEST(CudaSmall, SeveralWavesEqualOne) {
  NEED_GPU();
  const Poisoned poison;
  const std::vector<TrialParams> ps = shared_teacher_trials();
  const Batch b = make_batch(ps);
  RunOptions o;
  o.sweep_seed = 7;
  std::string why;
  reset_teacher_cache(size_t{64} << 20);
  auto one = cuda::make_backend(o, cuda::Path::automatic, &why);
  ASSERT_TRUE(one) << why;
  const auto ref = one->run(b, o);
  EXPECT_EQ(cuda::last_stats(*one).chunks, 1);
  EXPECT_EQ(cuda::last_stats(*one).teachers, 3);
  setenv("STSWEEP_CUDA_WAVE", "2", 1);
  reset_teacher_cache(size_t{64} << 20);
  auto several = cuda::make_backend(o, cuda::Path::automatic, &why);
  unsetenv("STSWEEP_CUDA_WAVE");
  ASSERT_TRUE(several) << why;
  const auto got = several->run(b, o);
  EXPECT_EQ(cuda::last_stats(*several).chunks, 4);
  EXPECT_EQ(cuda::last_stats(*several).teachers, 3);
  EXPECT_EQ(teacher_cache_stats().trained, 0);
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_EQ(ref[i].status, Status::done) << ref[i].message;
    expect_same(got[i], ref[i], "trial " + std::to_string(i));
  }
  setenv("STSWEEP_CUDA_WAVE", "0", 1);
  EXPECT_EQ(cuda::make_backend(o, cuda::Path::automatic, &why), nullptr);
  EXPECT_NE(why.find("STSWEEP_CUDA_WAVE=0"), std::string::npos) << why;
  unsetenv("STSWEEP_CUDA_WAVE");
  reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
}

// A trial the set-up rejects fails on the GPU as on the CPU; its batch-mates run.
TEST(CudaSmall, InputErrorFailsOnlyThatTrial) {
  NEED_GPU();
  std::vector<TrialParams> ps(3, base_params());
  ps[1].teacher.decomposition = Decomposition::input;  // needs h >= d: 10 < 12
  ps[1].teacher.kind = TeacherKind::oracle;
  const Batch b = make_batch(ps);
  const auto ref = run_cpu(b, Precision::f32);
  const auto got = run_gpu(b, Precision::f32, cuda::Path::automatic);
  ASSERT_EQ(ref[1].status, Status::failed);
  for (size_t i = 0; i < ref.size(); ++i) expect_close(got[i], ref[i], 2e-3, 1e-6, std::to_string(i));
}
#endif

}  // namespace
}  // namespace stsweep
