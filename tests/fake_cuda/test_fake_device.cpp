// The CUDA backend's own host code (kernels/cuda_backend.cu: waves, pools,
// streams, the teacher pass, out-of-memory, several devices) on the fake CUDA
// runtime of this folder, where the kernels run on one-thread host teams: its
// results must be the CPU backend's bit for bit, and it must break none of the
// rules the fake counts (an allocation or free while a stream has work pending,
// work for another device's stream, pointers outside the allocations). What
// the fake cannot tell (the kernels' own speed and races) is for the GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "cublas_v2.h"
#include "cuda_backend.cuh"
#include "cuda_common.cuh"
#include "cuda_runtime.h"
#include "device_plan.hpp"
#include "fake_device.hpp"
#include "multi_backend.hpp"
#include "problem.hpp"
#include "train.hpp"
#include "trial_compare.hpp"

namespace stsweep {
namespace {

using namespace stsweep::testing;

struct ScopedEnv {
  std::string name;
  ScopedEnv(const char* n, const char* v) : name(n) { setenv(n, v, 1); }
  ~ScopedEnv() { unsetenv(name.c_str()); }
};

void expect_no_rule_broken(const std::string& what) {
  const fake_cuda::Counters c = fake_cuda::counters();
  EXPECT_EQ(c.stalls, 0) << what;
  EXPECT_EQ(c.wrong_device, 0) << what;
  EXPECT_EQ(c.bad_pointers, 0) << what;
  EXPECT_EQ(c.shared_blas, 0) << what;
  EXPECT_EQ(c.graph_rules, 0) << what;
  EXPECT_EQ(c.graphs_live, 0) << what << ": graphs not destroyed";
  for (const auto& n : c.notes) ADD_FAILURE() << what << ": " << n;
}

RunOptions options(Precision prec) {
  RunOptions o;
  o.sweep_seed = 7;
  o.precision = prec;
  return o;
}

std::unique_ptr<Backend> fake_backend(cuda::Path path, int device = 0) {
  std::string why;
  auto be = cuda::make_backend(options(Precision::f32), path, &why, device);
  if (!be) ADD_FAILURE() << "no backend on the fake device: " << why;
  return be;
}

TEST(FakeDevice, WithoutADeviceSaysWhy) {
  fake_cuda::Config none;
  none.devices = 0;
  fake_cuda::reset(none);
  std::string why;
  EXPECT_EQ(cuda::make_backend(options(Precision::f32), cuda::Path::automatic, &why), nullptr);
  EXPECT_NE(why.find("cudaGetDeviceCount"), std::string::npos) << why;
  fake_cuda::reset();
  EXPECT_EQ(cuda::make_backend(options(Precision::f32), cuda::Path::automatic, &why, 1), nullptr);
  EXPECT_NE(why.find("CUDA device 1 does not exist"), std::string::npos) << why;
}

// Every trainer the fake has (fused, warp, general), float32 and float64, in
// waves of 3 trials (two in flight), with poisoned buffers: the CPU's bits.
TEST(FakeDevice, CudaBackendEqualsTheCpuBitForBit) {
  const ScopedEnv poison("STSWEEP_CUDA_POISON", "1");
  const ScopedEnv wave("STSWEEP_CUDA_WAVE", "3");
  for (const Batch& b : by_shape(variety_trials()))
    for (Precision prec : {Precision::f32, Precision::f64}) {
      const auto ref = run_cpu(b, prec);
      for (cuda::Path path : {cuda::Path::fused, cuda::Path::warp, cuda::Path::general}) {
        const std::string what = std::string(cuda::name(path)) + (prec == Precision::f32 ? " f32" : " f64") +
                                 ", L = " + std::to_string(b.trials[0].hidden.size() + 1);
        fake_cuda::reset();
        {
          auto be = fake_backend(path);
          ASSERT_TRUE(be);
          const auto got = be->run(b, options(prec));
          ASSERT_EQ(got.size(), ref.size());
          for (size_t i = 0; i < ref.size(); ++i) expect_same(got[i], ref[i], what + " trial " + std::to_string(i));
          const cuda::RunStats s = cuda::last_stats(*be);
          EXPECT_EQ(s.chunks, static_cast<int>((b.trials.size() + 2) / 3)) << what;
          EXPECT_NE(s.paths.find(cuda::name(path)), std::string::npos) << what << ": " << s.paths;
          EXPECT_GT(fake_cuda::counters().launches, 0) << what;
        }
        expect_no_rule_broken(what);
        EXPECT_EQ(fake_cuda::counters().live, 0) << what << ": allocations left after the backend";
      }
    }
}

// Seven data-path tanh trials of one shape, 20 to 38 steps: three waves of
// 3 (STSWEEP_CUDA_WAVE=3), two in flight on the two streams.
Batch seven_trials() {
  std::vector<TrialParams> ps;
  for (int i = 0; i < 7; ++i) {
    TrialParams p = small_trial(40 + i);
    p.path = TrainPath::data;
    p.activation = Activation::tanh;
    p.lambda = 0.15 * i;
    p.steps = 20 + 3 * i;
    ps.push_back(p);
  }
  return make_batch(ps, 1000);
}

// The cuBLAS trainer is kernels/cuda_cublas.cu itself on the fake cuBLAS
// (GEMMs summed in an order of their own, as cuBLAS's are): the CPU's results
// to rounding, in waves of 3 with poisoned buffers, every product's matrices
// in the wave's device memory, its output apart from its inputs, and no cuBLAS
// handle shared by the two streams while both have work (until session 8 one
// handle served both waves in flight: the cuBLAS guide then promises no
// bitwise reproducibility). Moment-path trials fall back to the general
// trainer (the cuBLAS path is data only). Each way the steps are queued gives
// the same bits: one by one (STSWEEP_CUDA_GRAPH=0), in CUDA graphs of 5 steps
// (a graph replayed several times, then one of the steps left over: the step
// is each network's own counter, so a replay that repeated a step would
// show), and of 64 (more steps than these trials run: only the second graph,
// launched once). Every graph is destroyed, and only after its stream is
// synchronised (the fake counts a destroy with a launch still queued).
TEST(FakeDevice, CublasTrainerMatchesTheCpu) {
  const ScopedEnv poison("STSWEEP_CUDA_POISON", "1");
  const ScopedEnv wave("STSWEEP_CUDA_WAVE", "3");
  std::vector<Batch> batches = by_shape(variety_trials());
  batches.push_back(seven_trials());
  for (const Batch& b : batches)
    for (Precision prec : {Precision::f32, Precision::f64}) {
      const bool f32 = prec == Precision::f32;
      const bool data = b.trials[0].path == TrainPath::data;
      const auto ref = run_cpu(b, prec);
      std::vector<TrialResult> one_by_one;
      for (const char* graph : {"0", "5", "64"}) {
        const ScopedEnv g("STSWEEP_CUDA_GRAPH", graph);
        const std::string what = std::string(f32 ? "f32" : "f64") + ", L = " +
                                 std::to_string(b.trials[0].hidden.size() + 1) + (data ? ", data" : ", moment") +
                                 ", STSWEEP_CUDA_GRAPH=" + graph;
        fake_cuda::reset();
        {
          auto be = fake_backend(cuda::Path::cublas);
          ASSERT_TRUE(be);
          const auto got = be->run(b, options(prec));
          ASSERT_EQ(got.size(), ref.size());
          for (size_t i = 0; i < ref.size(); ++i) {
            const std::string t = what + " trial " + std::to_string(i);
            expect_close(got[i], ref[i], f32 ? 2e-4 : 1e-11, f32 ? 1e-6 : 1e-14, t);
            if (!one_by_one.empty()) expect_same(got[i], one_by_one[i], t + " vs step by step");
          }
          if (one_by_one.empty()) one_by_one = got;
          const cuda::RunStats s = cuda::last_stats(*be);
          const fake_cuda::Counters c = fake_cuda::counters();
          if (data) {
            EXPECT_NE(s.paths.find(std::string(graph) == "0" ? "cublas (step by step)" : "cublas (CUDA graphs)"),
                      std::string::npos) << what << ": " << s.paths;
            EXPECT_GT(c.gemms, 0) << what;
            // 21 to 39 steps a trial, at most 3 trials a wave: 4 to 7 launches
            // of a 5-step graph per wave and one of the steps left; with 64,
            // one launch per wave.
            if (std::string(graph) == "5") EXPECT_GE(c.graph_launches, 5) << what;
            if (std::string(graph) == "64") EXPECT_GE(c.graph_launches, 1) << what;
          } else {
            EXPECT_EQ(c.gemms, 0) << what << ": " << s.paths;
          }
          if (std::string(graph) == "0" || !data) EXPECT_EQ(c.graph_launches, 0) << what;
        }
        expect_no_rule_broken(what);
        EXPECT_EQ(fake_cuda::counters().live, 0) << what << ": allocations left after the backend";
      }
    }
}

// When CUDA refuses to make the graph (here cudaGraphInstantiate, configured
// to fail), the cuBLAS trainer launches the same steps one by one: the same
// bits, a line saying so in the paths, nothing left behind. A malformed
// STSWEEP_CUDA_GRAPH is an error that names it.
TEST(FakeDevice, CublasLaunchesStepByStepWhenCudaRefusesTheGraph) {
  const ScopedEnv wave("STSWEEP_CUDA_WAVE", "3");
  const Batch b = seven_trials();
  std::vector<TrialResult> one_by_one;
  {
    const ScopedEnv g("STSWEEP_CUDA_GRAPH", "0");
    fake_cuda::reset();
    auto be = fake_backend(cuda::Path::cublas);
    ASSERT_TRUE(be);
    one_by_one = be->run(b, options(Precision::f32));
  }
  const ScopedEnv g("STSWEEP_CUDA_GRAPH", "4");
  fake_cuda::Config refuse;
  refuse.refuse_graphs = true;
  fake_cuda::reset(refuse);
  {
    auto be = fake_backend(cuda::Path::cublas);
    ASSERT_TRUE(be);
    const auto got = be->run(b, options(Precision::f32));
    ASSERT_EQ(got.size(), one_by_one.size());
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i].status, Status::done) << got[i].message;
      expect_same(got[i], one_by_one[i], "trial " + std::to_string(i));
    }
    EXPECT_NE(cuda::last_stats(*be).paths.find("graph refused: step by step"), std::string::npos)
        << cuda::last_stats(*be).paths;
    EXPECT_EQ(fake_cuda::counters().graph_launches, 0);
  }
  expect_no_rule_broken("refused graphs");
  fake_cuda::reset();
  for (const char* bad : {"x", "-1", "5 steps"}) {
    const ScopedEnv e("STSWEEP_CUDA_GRAPH", bad);
    std::string why;
    EXPECT_EQ(cuda::make_backend(options(Precision::f32), cuda::Path::cublas, &why), nullptr) << bad;
    EXPECT_NE(why.find(std::string("STSWEEP_CUDA_GRAPH=") + bad), std::string::npos) << why;
  }
}

// What the session-11 review found: step by step, the cuBLAS trainer queues
// about 3L + 3 operations a step (here 7 for L = 2 with a matched layer),
// thousands a wave, and a GPU's launch queue holds about a thousand, so the
// host would wait in launch() for most of the wave instead of setting up the
// next one. With graphs (the default, 64 steps) a 300-step group queues a
// handful: 4 launches of one graph, 1 of another, around the set-up and
// evaluation operations. The fake runs nothing until the host synchronises,
// so its deepest queue is what the host queued between synchronisations.
TEST(FakeDevice, CublasQueuesFewOperations) {
  std::vector<TrialParams> ps;
  for (int i = 0; i < 4; ++i) {
    TrialParams p = small_trial(60 + i);
    p.path = TrainPath::data;
    p.lambda = 0.5;
    p.steps = 300;
    ps.push_back(p);
  }
  const Batch b = make_batch(ps);
  std::vector<TrialResult> one_by_one;
  for (const char* graph : {"0", "64"}) {
    const ScopedEnv g("STSWEEP_CUDA_GRAPH", graph);
    fake_cuda::reset();
    {
      auto be = fake_backend(cuda::Path::cublas);
      ASSERT_TRUE(be);
      const auto got = be->run(b, options(Precision::f32));
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(got[i].status, Status::done) << got[i].message;
        ASSERT_EQ(got[i].steps_run, 300);
        if (!one_by_one.empty()) expect_same(got[i], one_by_one[i], "trial " + std::to_string(i));
      }
      if (one_by_one.empty()) one_by_one = got;
    }
    const fake_cuda::Counters c = fake_cuda::counters();
    if (std::string(graph) == "0") {
      EXPECT_GT(c.max_queue, 7 * 300) << "step by step";
      EXPECT_EQ(c.graph_launches, 0);
    } else {
      EXPECT_LT(c.max_queue, 30) << "graphs of 64 steps";
      EXPECT_EQ(c.graph_launches, 5);
    }
    expect_no_rule_broken(std::string("STSWEEP_CUDA_GRAPH=") + graph);
  }
}

// The fake's capture follows CUDA's rules, which the tests above lean on: a
// captured operation runs only when a launch of the graph runs, once per
// launch; an allocation from the capturing thread (thread-local mode) or from
// any thread (global mode) is refused and spoils the capture, one from
// another thread in thread-local mode is not; synchronising the capturing
// stream is refused; destroying an executable graph with a launch still
// queued is counted.
TEST(FakeDevice, CaptureFollowsCudasRules) {
  fake_cuda::reset();
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  unsigned char* d = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&d), 256), cudaSuccess);
  unsigned char* h = nullptr;
  ASSERT_EQ(cudaMallocHost(reinterpret_cast<void**>(&h), 256), cudaSuccess);
  // Captured: a memset and the copy back, which run only when the graph is launched.
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  EXPECT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaErrorIllegalState);
  ASSERT_EQ(cudaMemsetAsync(d, 7, 16, s), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(h, d, 16, cudaMemcpyDeviceToHost, s), cudaSuccess);
  {  // another thread may allocate during a thread-local capture
    cudaError_t other = cudaErrorInvalidValue;
    void* p = nullptr;
    std::thread([&] { other = cudaMalloc(&p, 64); }).join();
    EXPECT_EQ(other, cudaSuccess);
    std::thread([&] { other = cudaFree(p); }).join();
    EXPECT_EQ(other, cudaSuccess);
  }
  cudaGraph_t g = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(s, &g), cudaSuccess);
  ASSERT_NE(g, nullptr);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(h[0], 0xFF) << "a captured operation ran at capture";
  cudaGraphExec_t x = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&x, g, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphDestroy(g), cudaSuccess);  // the executable graph outlives its graph
  ASSERT_EQ(cudaGraphLaunch(x, s), cudaSuccess);
  EXPECT_EQ(h[0], 0xFF) << "a launched graph ran before its stream was synchronised";
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(h[0], 7);
  EXPECT_EQ(h[15], 7);
  EXPECT_EQ(h[16], 0xFF);
  EXPECT_EQ(fake_cuda::counters().graph_launches, 1);
  EXPECT_EQ(fake_cuda::counters().graph_rules, 0);
  // Destroyed with a launch queued: counted (CUDA leaves it undefined).
  ASSERT_EQ(cudaGraphLaunch(x, s), cudaSuccess);
  ASSERT_EQ(cudaGraphExecDestroy(x), cudaSuccess);
  EXPECT_EQ(fake_cuda::counters().graph_rules, 1);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);  // the launch still runs (the fake shares its operations)
  EXPECT_EQ(fake_cuda::counters().graphs_live, 0);
  // Refused: an allocation from the capturing thread, spoiling the capture.
  void* p = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&p, 64), cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(g, nullptr);
  EXPECT_EQ(fake_cuda::counters().graph_rules, 2);
  // Refused in global mode: an allocation from another thread.
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
  cudaError_t other = cudaSuccess;
  std::thread([&] { other = cudaMallocHost(&p, 64); }).join();
  EXPECT_EQ(other, cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(fake_cuda::counters().graph_rules, 3);
  // Refused: synchronising the capturing stream.
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(s), cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(fake_cuda::counters().graph_rules, 4);
  (void)cudaGetLastError();
  EXPECT_EQ(cudaFreeHost(h), cudaSuccess);
  EXPECT_EQ(cudaFree(d), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  EXPECT_EQ(fake_cuda::counters().graphs_live, 0);
  fake_cuda::reset();
}

// The fake cuBLAS product itself against the BLAS definition, worked by hand:
// [1 2 3; 4 5 6] [7 8; 9 10; 11 12] = [58 64; 139 154], column-major, for every
// transposition of the stored operands, with leading dimensions longer than
// the rows, a batch of two (the second A doubled), C's NaN ignored when beta
// is 0 and added when beta is 1; and cuBLAS's argument rules.
TEST(FakeDevice, GemmFollowsTheBlasDefinition) {
  fake_cuda::reset();
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  cublasHandle_t h = nullptr;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSetStream(h, s), CUBLAS_STATUS_SUCCESS);
  const float pad = -100.f;
  // A (2 x 3) stored as itself (lda 3) or as its transpose (3 x 2, lda 4);
  // B (3 x 2) as itself (ldb 3) or as its transpose (2 x 3, ldb 2). Batch
  // stride 12 floats; the second batch's A is doubled.
  const std::vector<float> A_n = {1, 4, pad, 2, 5, pad, 3, 6, pad};
  const std::vector<float> A_t = {1, 2, 3, pad, 4, 5, 6, pad};
  const std::vector<float> B_n = {7, 9, 11, 8, 10, 12};
  const std::vector<float> B_t = {7, 8, 9, 10, 11, 12};
  const std::vector<float> want = {58, 139, 64, 154};
  const int stride = 12;
  float *A = nullptr, *B = nullptr, *C = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&A), 2 * stride * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&B), 2 * stride * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&C), 2 * stride * sizeof(float)), cudaSuccess);
  for (cublasOperation_t ta : {CUBLAS_OP_N, CUBLAS_OP_T})
    for (cublasOperation_t tb : {CUBLAS_OP_N, CUBLAS_OP_T}) {
      const std::string what = std::string(ta == CUBLAS_OP_T ? "T" : "N") + (tb == CUBLAS_OP_T ? "T" : "N");
      std::vector<float> a(2 * stride, pad), b(2 * stride, pad), c(2 * stride, NAN);
      const std::vector<float>& a1 = ta == CUBLAS_OP_T ? A_t : A_n;
      const std::vector<float>& b1 = tb == CUBLAS_OP_T ? B_t : B_n;
      for (size_t i = 0; i < a1.size(); ++i) {
        a[i] = a1[i];
        a[stride + i] = a1[i] == pad ? pad : 2 * a1[i];
      }
      for (size_t i = 0; i < b1.size(); ++i) b[i] = b[stride + i] = b1[i];
      const int lda = ta == CUBLAS_OP_T ? 4 : 3, ldb = tb == CUBLAS_OP_T ? 2 : 3;
      const size_t bytes = a.size() * sizeof(float);
      ASSERT_EQ(cudaMemcpyAsync(A, a.data(), bytes, cudaMemcpyHostToDevice, s), cudaSuccess);
      ASSERT_EQ(cudaMemcpyAsync(B, b.data(), bytes, cudaMemcpyHostToDevice, s), cudaSuccess);
      ASSERT_EQ(cudaMemcpyAsync(C, c.data(), bytes, cudaMemcpyHostToDevice, s), cudaSuccess);
      const float one = 1.f, zero = 0.f;
      ASSERT_EQ(cublasSgemmStridedBatched(h, ta, tb, 2, 2, 3, &one, A, lda, stride, B, ldb, stride, &zero, C, 2,
                                          stride, 2),
                CUBLAS_STATUS_SUCCESS);
      ASSERT_EQ(cudaMemcpyAsync(c.data(), C, bytes, cudaMemcpyDeviceToHost, s), cudaSuccess);
      for (int i = 0; i < 4; ++i) {
        EXPECT_EQ(c[i], want[i]) << what << " element " << i;
        EXPECT_EQ(c[stride + i], 2 * want[i]) << what << " batch 1, element " << i;
      }
      EXPECT_TRUE(std::isnan(c[4])) << what << ": written beyond C";
      // beta = 1: C += A B.
      ASSERT_EQ(cublasSgemmStridedBatched(h, ta, tb, 2, 2, 3, &one, A, lda, stride, B, ldb, stride, &one, C, 2,
                                          stride, 1),
                CUBLAS_STATUS_SUCCESS);
      ASSERT_EQ(cudaMemcpyAsync(c.data(), C, bytes, cudaMemcpyDeviceToHost, s), cudaSuccess);
      for (int i = 0; i < 4; ++i) EXPECT_EQ(c[i], 2 * want[i]) << what << " beta 1, element " << i;
    }
  const float one = 1.f, zero = 0.f;
  EXPECT_EQ(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, A, 1, stride, B, 3, stride, &zero,
                                      C, 2, stride, 1),
            CUBLAS_STATUS_INVALID_VALUE)
      << "lda below the rows of A";
  expect_no_rule_broken("the products");
  // C over A: refused as an aliasing product; A's batch beyond its allocation.
  EXPECT_EQ(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, A, 3, stride, B, 3, stride, &zero,
                                      A + 1, 2, stride, 1),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, A, 3, stride, B, 3, stride, &zero,
                                      C, 2, stride, 3),
            CUBLAS_STATUS_SUCCESS);
  const fake_cuda::Counters k = fake_cuda::counters();
  EXPECT_EQ(k.bad_pointers, 4) << "C over A; the third matrices of A, B and C beyond their allocations";
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  cublasDestroy(h);
  cudaFree(A);
  cudaFree(B);
  cudaFree(C);
  cudaStreamDestroy(s);
  fake_cuda::reset();
}

// Trained teachers shared across waves are trained on the device once each,
// beside the waves in flight, with no allocation or free while a wave has work
// pending (until session 7 the teacher pass allocated and freed its memory per
// chunk, which waited for the training wave); the results are the CPU's.
TEST(FakeDevice, TeachersOnTheDeviceDoNotStallTheWaves) {
  const ScopedEnv poison("STSWEEP_CUDA_POISON", "1");
  const std::vector<TrialParams> ps = shared_teacher_trials();
  const Batch b = make_batch(ps);
  reset_teacher_cache(size_t{64} << 20);
  const auto ref = run_cpu(b, Precision::f32);
  for (const char* wave : {"2", "3"}) {
    const ScopedEnv w("STSWEEP_CUDA_WAVE", wave);
    reset_teacher_cache(size_t{64} << 20);
    fake_cuda::reset();
    {
      auto be = fake_backend(cuda::Path::automatic);
      ASSERT_TRUE(be);
      const auto got = be->run(b, options(Precision::f32));
      const cuda::RunStats s = cuda::last_stats(*be);
      EXPECT_EQ(s.teachers, 3) << "waves of " << wave;
      EXPECT_EQ(s.chunks, wave[0] == '2' ? 4 : 3);
      EXPECT_EQ(teacher_cache_stats().trained, 0) << "set-up trained a teacher the device should have";
      for (size_t i = 0; i < ref.size(); ++i) {
        ASSERT_EQ(ref[i].status, Status::done) << ref[i].message;
        expect_same(got[i], ref[i], std::string("waves of ") + wave + ", trial " + std::to_string(i));
      }
    }
    expect_no_rule_broken(std::string("waves of ") + wave);
  }
  reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
}

// A device whose free memory is less than cudaMemGetInfo said (another process
// took it): the first allocation fails, the wave is halved until it fits, and
// the results do not change. With less memory than one trial needs, the run
// fails with the out-of-memory error, and the next run on the same backend works.
TEST(FakeDevice, OutOfMemoryHalvesTheWave) {
  const Batch b = by_shape(variety_trials())[0];
  const auto ref = run_cpu(b, Precision::f32);
  // What the batch takes in waves of all its trials and of one trial (the
  // pools' fixed part is most of it at this size): the device gets half way.
  size_t peak[2];
  for (int one = 0; one < 2; ++one) {
    const ScopedEnv wave("STSWEEP_CUDA_WAVE", one ? "1" : "1000");
    fake_cuda::reset();
    auto be = fake_backend(cuda::Path::fused);
    ASSERT_TRUE(be);
    be->run(b, options(Precision::f32));
    ASSERT_EQ(cuda::last_stats(*be).chunks, one ? static_cast<int>(b.trials.size()) : 1);
    peak[one] = fake_cuda::counters().peak;
  }
  ASSERT_GT(peak[0], peak[1]);
  fake_cuda::Config tight;
  tight.memory = (peak[0] + peak[1]) / 2;
  tight.reported_extra = size_t(1) << 30;
  fake_cuda::reset(tight);
  {
    auto be = fake_backend(cuda::Path::fused);
    ASSERT_TRUE(be);
    const auto got = be->run(b, options(Precision::f32));
    for (size_t i = 0; i < ref.size(); ++i) expect_same(got[i], ref[i], "trial " + std::to_string(i));
    EXPECT_GT(fake_cuda::counters().out_of_memory, 0);
    EXPECT_GT(cuda::last_stats(*be).chunks, 1);
  }
  expect_no_rule_broken("halved waves");
  fake_cuda::Config tiny;
  tiny.memory = size_t(1) << 20;  // less than the pools' slack alone
  fake_cuda::reset(tiny);
  {
    auto be = fake_backend(cuda::Path::fused);
    ASSERT_TRUE(be);
    try {
      be->run(b, options(Precision::f32));
      ADD_FAILURE() << "a run on a device too small for one trial did not fail";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("cudaMalloc"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(fake_cuda::counters().live, 0);
}

// A block may hold 48 KB of shared memory, static and dynamic together,
// without its kernel's opt-in; fused_train's static `red` takes 256 bytes of
// it. Until session 11 the backend opted in only above 48 KB of dynamic
// memory, so a GPU would have refused a fused group whose arena lies within
// 256 bytes under 48 KB (a review found it; the fake then counted only the
// dynamic bytes too). Such shapes are common: widths 48-48 with N = 32 make
// exactly 48 KB in float32.
TEST(FakeDevice, ArenaJustUnder48KbOptsInForTheStaticSharedMemory) {
  const size_t limit = cuda::kSharedWithoutOptIn, fixed = cuda::fused_static_shared_bytes();
  ASSERT_GT(fixed, 0u);
  std::vector<TrialParams> in_window;
  for (int d : {40, 48, 56, 64})
    for (int h : {40, 48, 56, 64})
      for (int n : {16, 24, 32, 40, 48}) {
        TrialParams p = small_trial(static_cast<int>(in_window.size()));
        p.d = d;
        p.k = 6;
        p.m = 8;
        p.hidden = {h};
        p.n_train = n;
        p.path = TrainPath::data;
        p.activation = Activation::linear;
        cuda::Shape s;
        s.net = make_net(p.widths(), p.activation);
        s.N = n;
        s.k = p.k;
        s.mask = 1u << 1;
        s.exact = true;
        const cuda::Layout y = cuda::make_layout(s);
        const size_t bytes = (static_cast<size_t>(y.data) + y.work) * sizeof(float);
        if (bytes > limit - fixed && bytes <= limit) in_window.push_back(p);
      }
  ASSERT_FALSE(in_window.empty()) << "no shape of the search has a fused arena within " << fixed
                                  << " bytes under 48 KB: widen it";
  in_window.resize(std::min<size_t>(in_window.size(), 2));
  for (const TrialParams& p : in_window) {
    const Batch b = make_batch({p});
    const std::string what = "d = " + std::to_string(p.d) + ", h = " + std::to_string(p.hidden[0]) +
                             ", N = " + std::to_string(p.n_train);
    const auto ref = run_cpu(b, Precision::f32);
    fake_cuda::reset();
    {
      auto be = fake_backend(cuda::Path::fused);
      ASSERT_TRUE(be);
      const auto got = be->run(b, options(Precision::f32));
      ASSERT_EQ(got.size(), 1u);
      EXPECT_EQ(got[0].status, Status::done) << what << ": " << got[0].message;
      expect_same(got[0], ref[0], what);
      EXPECT_NE(cuda::last_stats(*be).paths.find("fused"), std::string::npos) << what;
    }
    expect_no_rule_broken(what);
  }
}

// Nine data-path ReLU trials of one shape, each with its twin, of several
// lengths: in one wave a group of 18 networks, so the warp trainer launches
// three blocks of 8 warps (the last with 2) and the evaluation more items
// than blocks (grid-strided).
Batch eighteen_networks() {
  std::vector<TrialParams> ps;
  for (int i = 0; i < 9; ++i) {
    TrialParams p = small_trial(80 + i);
    p.path = TrainPath::data;
    p.activation = Activation::relu;
    p.lambda = 0.1 + 0.1 * i;
    p.baseline = true;
    p.steps = 20 + 2 * i;
    ps.push_back(p);
  }
  return make_batch(ps);
}

// The warp trainer and the evaluation as a GPU launches them: the fake runs
// every block and warp through the kernels' own indexing (warp_train_body,
// eval_block) and checks it (every network and item once, each warp's slice
// of shared memory and each block's workspace apart from the others'). Until
// session 13 it ran one team over all networks with one slice and one
// workspace, so an indexing bug there passed every test off the GPU.
TEST(FakeDevice, WarpAndEvalBlocksAsTheGpuLaunchesThem) {
  const ScopedEnv poison("STSWEEP_CUDA_POISON", "1");
  const Batch b = eighteen_networks();
  for (Precision prec : {Precision::f32, Precision::f64}) {
    const std::string what = prec == Precision::f32 ? "f32" : "f64";
    const auto ref = run_cpu(b, prec);
    fake_cuda::reset();
    {
      auto be = fake_backend(cuda::Path::warp);
      ASSERT_TRUE(be);
      const auto got = be->run(b, options(prec));
      ASSERT_EQ(got.size(), ref.size());
      for (size_t i = 0; i < ref.size(); ++i) expect_same(got[i], ref[i], what + " trial " + std::to_string(i));
      const cuda::RunStats s = cuda::last_stats(*be);
      EXPECT_EQ(s.chunks, 1) << what;
      EXPECT_NE(s.paths.find("warp"), std::string::npos) << what << ": " << s.paths;
    }
    expect_no_rule_broken(what);
  }
}

// STSWEEP_CUDA_POOL=split gives every buffer its own allocation (so that
// compute-sanitizer, and the fake's check of each launch's extents, see a
// kernel run past its buffer, which in one pool lands in the next carve):
// the same bits as one pool on every trainer, float32 and float64, with the
// teacher pass, and no rule of the fake broken (each allocation and free
// waits for the device first). A value other than one or split is an error
// that names it.
TEST(FakeDevice, SplitPoolsGiveTheSameBits) {
  const ScopedEnv poison("STSWEEP_CUDA_POISON", "1");
  const ScopedEnv wave("STSWEEP_CUDA_WAVE", "3");
  const std::vector<Batch> batches = {by_shape(variety_trials())[1], eighteen_networks()};
  const auto run = [](const Batch& b, cuda::Path path, Precision prec, const char* pool, long long* allocations) {
    const ScopedEnv e("STSWEEP_CUDA_POOL", pool);
    fake_cuda::reset();
    std::vector<TrialResult> got;
    {
      auto be = fake_backend(path);
      if (!be) return got;
      got = be->run(b, options(prec));
    }
    *allocations = fake_cuda::counters().allocations;
    expect_no_rule_broken(std::string(cuda::name(path)) + ", STSWEEP_CUDA_POOL=" + pool);
    EXPECT_EQ(fake_cuda::counters().live, 0) << pool << ": allocations left after the backend";
    return got;
  };
  for (const Batch& b : batches)
    for (Precision prec : {Precision::f32, Precision::f64})
      for (cuda::Path path : {cuda::Path::fused, cuda::Path::warp, cuda::Path::general, cuda::Path::cublas}) {
        const std::string what = std::string(cuda::name(path)) + (prec == Precision::f32 ? " f32" : " f64") +
                                 ", " + std::to_string(b.trials.size()) + " trials";
        long long one = 0, split = 0;
        const auto pooled = run(b, path, prec, "one", &one);
        const auto got = run(b, path, prec, "split", &split);
        ASSERT_EQ(pooled.size(), b.trials.size()) << what;
        ASSERT_EQ(got.size(), pooled.size()) << what;
        for (size_t i = 0; i < got.size(); ++i) {
          ASSERT_EQ(pooled[i].status, Status::done) << what << ": " << pooled[i].message;
          expect_same(got[i], pooled[i], what + " trial " + std::to_string(i));
        }
        EXPECT_GT(split, one + 10) << what << ": STSWEEP_CUDA_POOL=split made no allocation per buffer";
      }
  // The teacher pass's pool too.
  const Batch t = make_batch(shared_teacher_trials());
  reset_teacher_cache(size_t{64} << 20);
  const auto ref = run_cpu(t, Precision::f32);
  for (const char* pool : {"one", "split"}) {
    reset_teacher_cache(size_t{64} << 20);
    long long n = 0;
    const auto got = run(t, cuda::Path::automatic, Precision::f32, pool, &n);
    ASSERT_EQ(got.size(), ref.size()) << pool;
    EXPECT_EQ(teacher_cache_stats().trained, 0) << pool << ": set-up trained a teacher the device should have";
    for (size_t i = 0; i < ref.size(); ++i) expect_same(got[i], ref[i], std::string(pool) + " teachers, trial " + std::to_string(i));
  }
  reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
  fake_cuda::reset();
  const ScopedEnv bad("STSWEEP_CUDA_POOL", "splits");
  std::string why;
  EXPECT_EQ(cuda::make_backend(options(Precision::f32), cuda::Path::fused, &why), nullptr);
  EXPECT_NE(why.find("STSWEEP_CUDA_POOL=splits"), std::string::npos) << why;
}

// Two devices, each a backend with its own streams: the same results as one,
// and every stream's work is submitted while its own device is current (session
// 6 found the streams of the second backend made on the first device).
TEST(FakeDevice, TwoDevicesEqualOne) {
  std::vector<TrialParams> ps;
  for (int i = 0; i < 7; ++i) {
    TrialParams p = small_trial(i);
    p.lambda = 0.2 * i;
    p.path = i % 2 ? TrainPath::moment : TrainPath::data;
    ps.push_back(p);
  }
  const Batch b = make_batch(ps);
  fake_cuda::Config two;
  two.devices = 2;
  fake_cuda::reset(two);
  for (cuda::Path path : {cuda::Path::fused, cuda::Path::warp, cuda::Path::cublas}) {
    auto one = fake_backend(path);
    ASSERT_TRUE(one);
    const auto ref = one->run(b, options(Precision::f32));
    std::vector<std::unique_ptr<Backend>> parts;
    for (int d = 0; d < 2; ++d) {
      parts.push_back(fake_backend(path, d));
      ASSERT_TRUE(parts.back());
    }
    MultiBackend both(std::move(parts), {"0", "1"});
    const auto got = both.run(b, options(Precision::f32));
    ASSERT_EQ(got.size(), ref.size());
    for (size_t i = 0; i < ref.size(); ++i)
      expect_same(got[i], ref[i], std::string(cuda::name(path)) + " trial " + std::to_string(i));
  }
  expect_no_rule_broken("two devices");
}

}  // namespace
}  // namespace stsweep
