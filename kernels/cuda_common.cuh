// What every CUDA file of the backend shares: error checking, the block and
// warp teams that drive the shared step math (kernels/trial_math.hpp) and the
// launchers. The records the kernels read and write and the arena layout are
// in device_records.hpp (plain C++, shared with the host emulation).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

// trial_math.hpp's host loops carry "#pragma GCC unroll", which nvcc's front
// end does not know (warning 1675); the device code uses its own unroll pragma.
#ifdef __CUDACC__
#pragma nv_diag_suppress 1675
#endif
#include "device_records.hpp"
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
// A launch, STS_LAUNCH(kernel, grid, block, shared, stream)(args...): CUDA's
// kernel<<<grid, block, shared, stream>>>(args...) for nvcc; for the host
// compiler against the fake runtime (tests/fake_cuda), a launch the fake
// checks, queues and runs block by block, so files that launch their own
// kernels (cuda_cublas.cu) run in the CPU test suite as they are.
#if defined(__CUDACC__)
#define STS_LAUNCH(kernel, grid, block, shared, stream) kernel<<<grid, block, shared, stream>>>
#elif defined(STSWEEP_FAKE_CUDA)
#define STS_LAUNCH(kernel, grid, block, shared, stream) \
  ::fake_cuda::launch(#kernel, grid, block, shared, stream, kernel)
#endif

// ------------------------------------------------------------------- team --
// One thread block working on one network. VA: the GEMM tiles load A four k
// at a time (tm::detail::gemm_team_tile); BlockTeamT<false> is the scalar-A
// variant bench_cuda compares against (STSWEEP_CUDA_VECTOR_A=0). SMEM: every
// GEMM operand is in shared memory (the fused kernel with its data there), so
// the tiles load with shared-space instructions. sync = __syncthreads, sum =
// a block reduction in a fixed order, returning the total to every thread (so
// every thread takes the same branch on losses).
template <bool VA = true, bool SMEM = false>
struct BlockTeamT {
  static constexpr bool kVectorA = VA;
  static constexpr bool kSharedOperands = SMEM;  // tm::detail::team_shared_operands
  double* red;  // >= 32 doubles of shared memory
  bool one_column = true;  // v5 tiles (tm::detail::team_one_column)
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

// One warp working on one network (the warp path: several networks per
// block): sync = __syncwarp, sum = a butterfly of xor shuffles, so every lane
// holds the same total (x + y == y + x exactly).
template <bool VA = true>
struct WarpTeamT {
  static constexpr bool kVectorA = VA;
  static constexpr bool kSharedOperands = true;  // each warp's slice of shared memory
  bool one_column = true;  // v5 tiles (tm::detail::team_one_column)
  STS_HD int rank() const {
#ifdef __CUDA_ARCH__
    return static_cast<int>(threadIdx.x & 31);
#else
    return 0;
#endif
  }
  STS_HD int size() const {
#ifdef __CUDA_ARCH__
    return 32;
#else
    return 1;
#endif
  }
  STS_HD void sync() const {
#ifdef __CUDA_ARCH__
    __syncwarp();
#endif
  }
  template <class T>
  STS_HD T sum(T x) const {
#ifdef __CUDA_ARCH__
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
#endif
    return x;
  }
};
using BlockTeam = BlockTeamT<true>;
using WarpTeam = WarpTeamT<true>;

}  // namespace stsweep::cuda

namespace stsweep::cuda {

// ------------------------------------------------------------- launchers --
// kernels/cuda_fused.cu: the fused trainer (one block per network, all steps)
// and the float64 evaluation of the snapshots.
// Shared memory a block may use, static and dynamic together, without its
// kernel's opt-in (cudaFuncAttributeMaxDynamicSharedMemorySize).
constexpr size_t kSharedWithoutOptIn = 48 * 1024;
// Opt in to `shared_bytes` of dynamic shared memory, needed when they and the
// kernel's static shared memory (fused_static_shared_bytes) exceed kSharedWithoutOptIn.
template <class Real>
void fused_prepare(size_t shared_bytes);
// vector_a: the tiles' A loads (BlockTeamT<VA>); scalar A exists for float only
// (double always loads A by four).
template <class Real>
void launch_fused(const TrainArgs<Real>& a, size_t shared_bytes, bool vector_a, cudaStream_t s);
// The warp path: `warps` networks per block, each `net_shared` bytes of
// dynamic shared memory (a multiple of 16).
template <class Real>
void warp_prepare(size_t shared_bytes);
template <class Real>
void launch_warp(const TrainArgs<Real>& a, int warps, size_t net_shared, bool vector_a, cudaStream_t s);
void launch_eval(const EvalArgs& a, int blocks, cudaStream_t s);
size_t fused_static_shared_bytes();

// kernels/cuda_select.cu: the evaluation's work items compacted on the device
// (cub::DeviceSelect::If over net * slots + slot, keeping eval_needed()), the
// count left in device memory for the eval kernel (no host sync).
size_t eval_select_temp_bytes(long long items);
void launch_eval_select(void* temp, size_t temp_bytes, const NetState* state, int slots, int maxck,
                        long long items, long long* out, long long* nitems, cudaStream_t s);

// An instantiated CUDA graph, destroyed with its holder: the holder lives
// until the graph's stream has been synchronised (the backend keeps it with
// its wave's group), as CUDA leaves destroying a graph still in flight undefined.
struct GraphExec {
  cudaGraphExec_t exec = nullptr;
  GraphExec() = default;
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  ~GraphExec() {
    if (exec) cudaGraphExecDestroy(exec);
  }
};

// How train_cublas queued a group's steps.
struct CublasQueued {
  std::vector<std::unique_ptr<GraphExec>> graphs;  // none: step by step
  std::string fallback;  // why a capture failed (the steps left then went one by one), empty otherwise
};

// kernels/cuda_cublas.cu: the data path through strided-batched GEMM, one
// launch sequence per step for every network of the group. `handle` is a
// cublasHandle_t bound to nothing in particular (the stream is set here).
// With graph_steps > 0, that many steps are captured once as a CUDA graph and
// launched as often as the group's steps fill it, the steps left as a second
// graph launched once (a few launches a group instead of about (3L + 3) a
// step: the host is not held by a full launch queue, so the next wave's set-up
// overlaps this one); a capture CUDA refuses falls back to step-by-step
// launches (reason in CublasQueued::fallback).
template <class Real>
CublasQueued train_cublas(void* handle, const TrainArgs<Real>& a, long long maxT, cudaStream_t s,
                          long long graph_steps);

}  // namespace stsweep::cuda
