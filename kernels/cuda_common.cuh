// What every CUDA file of the backend shares: error checking, the block team
// that drives the shared step math (kernels/trial_math.hpp), the per-trial and
// per-network records the kernels read and write, and the arena layout.
//
// Layout of one batch group (trials of equal shape, path and matched layers):
//   trial arena (Real)   [data part: X, Y, Ht (data path) or Cxx, Cyx, Chx (moment path)]
//                        [initial weights W0 (and WT0 for the data path)]
//   network work (Real)  weights and workspace of one network (student or twin)
//   eval arena (double)  the float64 data the metrics are measured on
//   eval work (double)   workspace of one evaluation block
// Offsets are in elements, identical for every trial of the group.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

// trial_math.hpp's host loops carry "#pragma GCC unroll", which nvcc's front
// end does not know (warning 1675); the device code uses its own unroll pragma.
#pragma nv_diag_suppress 1675
#include "trial_math.hpp"

namespace stsweep::cuda {

// ------------------------------------------------------------------ errors --
struct OutOfMemory : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws std::runtime_error naming the call, file:line and CUDA's message;
// OutOfMemory for cudaErrorMemoryAllocation (the caller shrinks the chunk).
inline void check(cudaError_t e, const char* what, const char* file, int line) {
  if (e == cudaSuccess) return;
  const std::string msg = std::string(file) + ":" + std::to_string(line) + ": " + what + ": " +
                          cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // not sticky: clear it
    throw OutOfMemory(msg);
  }
  throw std::runtime_error(msg);
}
#define STS_CUDA(expr) ::stsweep::cuda::check((expr), #expr, __FILE__, __LINE__)
// After a launch: configuration errors now, execution errors at the next sync.
#define STS_CUDA_LAUNCHED(name) ::stsweep::cuda::check(cudaGetLastError(), name, __FILE__, __LINE__)

constexpr int kThreads = 256;  // threads per block (a multiple of 32)
constexpr int kNone = -1;      // absent offset

// ------------------------------------------------------------------- team --
// One thread block working on one network: sync = __syncthreads, sum = a
// block reduction in a fixed order, returning the total to every thread (so
// every thread takes the same branch on losses).
struct BlockTeam {
  double* red;  // >= 32 doubles of shared memory
  STS_HD int rank() const {
#ifdef __CUDA_ARCH__
    return static_cast<int>(threadIdx.x);
#else
    return 0;
#endif
  }
  STS_HD int size() const {
#ifdef __CUDA_ARCH__
    return static_cast<int>(blockDim.x);
#else
    return 1;
#endif
  }
  STS_HD void sync() const {
#ifdef __CUDA_ARCH__
    __syncthreads();
#endif
  }
  template <class T>
  STS_HD T sum(T x) const {
#ifdef __CUDA_ARCH__
    for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
    T* r = reinterpret_cast<T*>(red);
    const int nw = static_cast<int>(blockDim.x + 31) >> 5;
    if ((threadIdx.x & 31) == 0) r[threadIdx.x >> 5] = x;
    __syncthreads();
    T s = 0;
    for (int i = 0; i < nw; ++i) s += r[i];
    __syncthreads();  // `red` is reused by the next sum
    return s;
#else
    return x;
#endif
  }
};

// ---------------------------------------------------------------- records --
struct TrialScalars {             // per trial, read by the kernels
  double lambda = 0, lr = 0;
  double sigma = 0, sigma_y = 0;  // exact risk
  long long T = 0;                // steps
  int nck = 0;                    // checkpoints of this trial
  int ck_offset = 0;              // into the concatenated checkpoint steps
  double tr_yy = 0;
  double tr_hh[tm::kMaxLayers + 1] = {};
};

struct NetRef {                   // one network of the launch
  int trial;                      // index into the group's trials
  int twin;                       // 1: the lambda = 0 twin (no feature term)
};

struct NetState {                 // written by the trainer, read by eval and the host
  long long steps_run;
  double loss0, diverged_loss;
  int diverged;
  int written;                    // checkpoints snapshotted (0..nck)
};

// Divergence and zero-loss rules: the same as host/train.cpp.
constexpr double kDivergeFactor = 1e6;

// ----------------------------------------------------------------- layout --
struct Layout {
  int moment = 0;                 // 1: moment path, 0: data path
  int data = 0;                   // elements of the data part (copied to shared memory)
  int arena = 0;                  // elements per trial arena
  int X = kNone, Y = kNone, Ht[tm::kMaxLayers + 1];
  int Cxx = kNone, Cyx = kNone, Chx[tm::kMaxLayers + 1];
  int W0[tm::kMaxLayers + 1], WT0[tm::kMaxLayers + 1];
  int work = 0;                   // elements per network (fused kernel)
  int W[tm::kMaxLayers + 1], WT[tm::kMaxLayers + 1], Z[tm::kMaxLayers + 1],
      H[tm::kMaxLayers + 1], D[2];
  int A[tm::kMaxLayers + 1], E[tm::kMaxLayers + 1], Q[2], AT = kNone;
  int cwork = 0;                  // elements per network (cuBLAS path)
  int cX = kNone, cY = kNone, cHt[tm::kMaxLayers + 1], cW[tm::kMaxLayers + 1],
      cG[tm::kMaxLayers + 1], cZ[tm::kMaxLayers + 1], cH[tm::kMaxLayers + 1], cD[2];
  int wsize = 0;                  // weights of one network (snapshot size)
  int wofs[tm::kMaxLayers + 1];   // offset of W_l in a snapshot
  // Evaluation (double).
  int eval = 0;                   // elements per trial eval arena
  int eX = kNone, eY = kNone, eHt[tm::kMaxLayers + 1], eXt = kNone, eYt = kNone,
      eWstar = kNone, eMhalf = kNone;
  int vwork = 0;                  // elements per eval block
  int vW[tm::kMaxLayers + 1], vWT[tm::kMaxLayers + 1], vZ[tm::kMaxLayers + 1],
      vH[tm::kMaxLayers + 1], vD[2], vA[2];
};

template <class T>
STS_HD inline T* at(T* base, int off) {
  return off == kNone ? nullptr : base + off;
}

// Launch of the trainers (fused or cuBLAS) and of the evaluation.
template <class Real>
struct TrainArgs {
  tm::Net net;
  uint32_t mask = 0;              // the trial's matched layers (bit l)
  int N = 0;
  int shared = 0;                 // fused: 1 = arena copied to dynamic shared memory
  Layout lay;
  const Real* arena = nullptr;    // trials x lay.arena
  Real* work = nullptr;           // nets x lay.work (general) or lay.cwork (cuBLAS)
  const NetRef* nets = nullptr;
  int nnets = 0;
  const TrialScalars* trials = nullptr;
  const long long* ck = nullptr;
  double* snap = nullptr;         // nets x slots x wsize: checkpoints, then first, final
  int slots = 0;                  // max nck + 2
  NetState* state = nullptr;
};

struct EvalArgs {
  tm::Net net;
  uint32_t mask = 0;
  int N = 0, n_test = 0, k = 0;
  int exact = 0;                  // linear student and target: exact risk
  Layout lay;
  const double* arena = nullptr;  // trials x lay.eval
  double* work = nullptr;         // gridDim.x x lay.vwork
  const NetRef* nets = nullptr;
  int nnets = 0;
  const TrialScalars* trials = nullptr;
  const double* snap = nullptr;
  int slots = 0;
  int maxck = 0;                  // slots = maxck + 2
  const NetState* state = nullptr;
  double* metrics = nullptr;      // nets x slots x 3: test_risk, label, feature
};

}  // namespace stsweep::cuda

namespace stsweep::cuda {

// ------------------------------------------------------------- launchers --
// kernels/cuda_fused.cu: the fused trainer (one block per network, all steps)
// and the float64 evaluation of the snapshots.
template <class Real>
void fused_prepare(size_t shared_bytes);  // opt in to > 48 KB of dynamic shared memory
template <class Real>
void launch_fused(const TrainArgs<Real>& a, size_t shared_bytes, cudaStream_t s);
void launch_eval(const EvalArgs& a, int blocks, cudaStream_t s);
size_t fused_static_shared_bytes();

// kernels/cuda_cublas.cu: the data path through strided-batched GEMM, one
// launch sequence per step for every network of the group. `handle` is a
// cublasHandle_t bound to nothing in particular (the stream is set here).
template <class Real>
void train_cublas(void* handle, const TrainArgs<Real>& a, long long maxT, cudaStream_t s);

}  // namespace stsweep::cuda
