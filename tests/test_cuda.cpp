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
#include <map>
#include <random>
#include <string>
#include <vector>

#include "backend.hpp"
#include "params.hpp"
#include "result.hpp"

#if STSWEEP_HAVE_CUDA
#include <cuda_runtime.h>

#include "cuda_backend.cuh"
#endif

namespace stsweep {
namespace {

#if STSWEEP_HAVE_CUDA
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

// ---------------------------------------------------------------- helpers --
bool close(double a, double b, double rtol, double atol) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return std::abs(a - b) <= atol + rtol * std::abs(b);
}

// Every metric and curve of `got` within tolerance of `ref` (status, steps and
// flags exactly). `what` names the case in failure messages.
void expect_close(const TrialResult& got, const TrialResult& ref, double rtol, double atol,
                  const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_EQ(got.trial, ref.trial);
  ASSERT_EQ(got.status, ref.status) << got.message << " | cpu: " << ref.message;
  if (ref.status == Status::failed) {
    EXPECT_EQ(got.message, ref.message);
    return;
  }
  EXPECT_EQ(got.steps_run, ref.steps_run);
  EXPECT_EQ(got.zero_loss, ref.zero_loss);
  const std::pair<const char*, std::pair<double, double>> scalars[] = {
      {"test_risk", {got.test_risk, ref.test_risk}},
      {"baseline_test_risk", {got.baseline_test_risk, ref.baseline_test_risk}},
      {"bayes_risk", {got.bayes_risk, ref.bayes_risk}},
      {"excess_risk", {got.excess_risk, ref.excess_risk}},
      {"interp_risk", {got.interp_risk, ref.interp_risk}},
      {"teacher_clean_risk", {got.teacher_clean_risk, ref.teacher_clean_risk}},
      {"train_loss", {got.train_loss, ref.train_loss}},
      {"label_loss", {got.label_loss, ref.label_loss}},
      {"feature_loss", {got.feature_loss, ref.feature_loss}},
      {"best_test_risk", {got.best_test_risk, ref.best_test_risk}},
  };
  for (const auto& [name, v] : scalars)
    EXPECT_TRUE(close(v.first, v.second, rtol, atol)) << name << ": cuda " << v.first << " cpu " << v.second;
  EXPECT_EQ(got.checkpoint_steps, ref.checkpoint_steps);
  const std::pair<const char*, std::pair<const std::vector<double>*, const std::vector<double>*>> curves[] = {
      {"curve_test_risk", {&got.curve_test_risk, &ref.curve_test_risk}},
      {"curve_label_loss", {&got.curve_label_loss, &ref.curve_label_loss}},
      {"curve_feature_loss", {&got.curve_feature_loss, &ref.curve_feature_loss}},
      {"curve_baseline_test_risk", {&got.curve_baseline_test_risk, &ref.curve_baseline_test_risk}},
      {"curve_baseline_label_loss", {&got.curve_baseline_label_loss, &ref.curve_baseline_label_loss}},
      {"curve_baseline_feature_loss", {&got.curve_baseline_feature_loss, &ref.curve_baseline_feature_loss}},
  };
  for (const auto& [name, v] : curves) {
    ASSERT_EQ(v.first->size(), v.second->size()) << name;
    for (size_t c = 0; c < v.first->size(); ++c)
      EXPECT_TRUE(close((*v.first)[c], (*v.second)[c], rtol, atol))
          << name << "[" << c << "]: cuda " << (*v.first)[c] << " cpu " << (*v.second)[c];
  }
}

// Bit-for-bit equality of two results (NaN equals NaN).
void expect_same(const TrialResult& a, const TrialResult& b, const std::string& what) {
  expect_close(a, b, 0.0, 0.0, what);
}

Batch make_batch(const std::vector<TrialParams>& ps, int64_t first_id = 100) {
  Batch b;
  for (size_t i = 0; i < ps.size(); ++i) {
    b.ids.push_back(first_id + static_cast<int64_t>(i));
    b.trials.push_back(ps[i]);
  }
  return b;
}

// Batches of equal shape from a list of trials (what the batcher does).
std::vector<Batch> by_shape(const std::vector<TrialParams>& ps) {
  std::map<ShapeKey, std::vector<TrialParams>> m;
  for (const auto& p : ps) m[shape_key(p)].push_back(p);
  std::vector<Batch> out;
  int64_t id = 0;
  for (auto& [k, v] : m) {
    out.push_back(make_batch(v, id));
    id += static_cast<int64_t>(v.size());
  }
  return out;
}

std::vector<TrialResult> run_cpu(const Batch& b, Precision prec) {
  RunOptions o;
  o.sweep_seed = 7;
  o.precision = prec;
  return make_cpu_backend(o)->run(b, o);
}

#if STSWEEP_HAVE_CUDA
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

TrialParams base_params() {
  TrialParams p;
  p.d = 12;
  p.k = 6;
  p.m = 3;
  p.hidden = {10};
  p.n_train = 20;
  p.noise = 0.5;
  p.lambda = 0.5;
  p.steps = 200;
  p.lr = 0.05;
  p.init_scale = 0.3;
  p.checkpoints = 8;
  p.n_test = 200;
  p.teacher.kind = TeacherKind::perturbed;
  p.teacher.delta = 0.2;
  return p;
}

// ------------------------------------------------------------------ tests --

TEST(CudaBackend, WithoutGpuSaysWhy) {
#if STSWEEP_HAVE_CUDA
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

#if STSWEEP_HAVE_CUDA
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
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(g); };
  for (int shape = 0; shape < 6; ++shape) {
    TrialParams p = base_params();
    p.d = uni(4, 24);
    p.k = uni(1, p.d);
    p.m = uni(1, 6);
    p.hidden.assign(uni(1, 2), 0);
    for (int& h : p.hidden) h = uni(std::max(p.m, 3), 20);
    p.n_train = uni(4, 40);
    p.n_test = uni(50, 200);
    p.activation = std::array<Activation, 3>{Activation::linear, Activation::relu, Activation::tanh}[uni(0, 2)];
    std::vector<TrialParams> ps;
    for (int j = 0; j < 4; ++j) {
      TrialParams q = p;
      q.lambda = std::array<double, 3>{0.0, 0.3, 1.0}[uni(0, 2)];
      q.lr = 0.02 + 0.01 * uni(0, 6);
      q.steps = uni(20, 150);
      q.checkpoints = uni(2, 10);
      q.baseline = uni(0, 3) != 0;
      q.seed = uni(0, 1000);
      q.teacher.kind = uni(0, 1) ? TeacherKind::oracle : TeacherKind::perturbed;
      q.path = q.activation == Activation::linear
                   ? std::array<TrainPath, 3>{TrainPath::automatic, TrainPath::data, TrainPath::moment}[uni(0, 2)]
                   : TrainPath::data;
      ps.push_back(q);
    }
    const Batch b = make_batch(ps);
    const auto ref = run_cpu(b, Precision::f32);
    std::string paths;
    const auto got = run_gpu(b, Precision::f32, cuda::Path::fused, &paths);
    ASSERT_EQ(got.size(), ref.size());
    for (size_t i = 0; i < ref.size(); ++i)
      expect_close(got[i], ref[i], 2e-3, 1e-6,
                   "shape " + std::to_string(shape) + " trial " + std::to_string(i) + " (" + paths +
                       ", " + name(ps[i].activation) + ", " + name(ps[i].path) + ")");
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
  for (cuda::Path path : {cuda::Path::fused, cuda::Path::general, cuda::Path::cublas}) {
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
  for (cuda::Path path : {cuda::Path::fused, cuda::Path::general, cuda::Path::cublas}) {
    const auto got = run_gpu(b, Precision::f32, path);
    for (size_t i = 0; i < ref.size(); ++i)
      expect_close(got[i], ref[i], 2e-3, 1e-6, std::string(cuda::name(path)) + " " + std::to_string(i));
  }
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
