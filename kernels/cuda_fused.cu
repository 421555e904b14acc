// The trainers that run the step math of kernels/trial_math.hpp inside one
// launch, all steps, and the float64 evaluation of their snapshots. The
// bodies are kernels/device_body.hpp's (shared with the host emulation in
// kernels/device_emu.cpp); these kernels only pick the team and the memory.
//
//   fused_train: one 256-thread block per network (BlockTeam); the trial's
//     data and the network's work in dynamic shared memory ("fused") or in
//     global memory ("general").
//   warp_train: one warp per network (WarpTeam), `warps` networks per block,
//     each with its own slice of dynamic shared memory (the warp path, for
//     small widths: __syncwarp instead of __syncthreads, bigger tiles per
//     thread).
//   eval_snapshots: one block per (network, snapshot) item, grid-strided over
//     the items the device compacted (cuda_select.cu) or all of them.
//
// Version history: v1 ran tm::gemm's device branch as one output element per
// thread; v2 runs it as a register tile per thread (tm::detail::
// gemm_team_tiled), each element still the same sequential fma chain, so a
// float32 product stays bit-identical to the CPU's; v3 moved the bodies to
// device_body.hpp, added the warp path and loads row-major A four k at a time
// (BlockTeamT<true>; the scalar-A v2 tiles stay compiled for float so that
// bench_cuda can compare them, STSWEEP_CUDA_VECTOR_A=0). See
// docs/PERFORMANCE.md (GPU).
#include "cuda_common.cuh"
#include "device_body.hpp"

namespace stsweep::cuda {
namespace {

// Min 1 block per SM: the fused block owns most of an SM's shared memory, and
// without it ptxas capped float at 128 registers and spilled the GEMM tiles.
// SMEM: launched with a.shared (the trial's data and the network's work in
// dynamic shared memory), which lets the GEMM tiles use shared-space loads.
template <class Real, bool VA, bool SMEM>
__global__ void __launch_bounds__(kThreads, 1) fused_train(const TrainArgs<Real> a) {
  __shared__ double red[32];
  extern __shared__ __align__(16) unsigned char smem[];
  const BlockTeamT<VA, SMEM> team{red, a.one_column != 0};
  train_network(team, a, static_cast<int>(blockIdx.x), reinterpret_cast<Real*>(smem));
}

template <class Real, bool VA>
__global__ void __launch_bounds__(kThreads, 1) warp_train(const TrainArgs<Real> a, int warps,
                                                       int net_shared_reals) {
  extern __shared__ __align__(16) unsigned char smem[];
  const WarpTeamT<VA> team{a.one_column != 0};
  warp_train_body(team, a, static_cast<int>(blockIdx.x), warps, static_cast<int>(threadIdx.x) / kWarp,
                  net_shared_reals, reinterpret_cast<Real*>(smem));
}

__global__ void __launch_bounds__(kThreads) eval_snapshots(const EvalArgs a) {
  __shared__ double red[32];
  const BlockTeam team{red};
  eval_block(team, a, static_cast<int>(blockIdx.x), static_cast<int>(gridDim.x));
}

}  // namespace

size_t fused_static_shared_bytes() {
  size_t b = 0;
  cudaFuncAttributes fa{};
  for (const void* f : {reinterpret_cast<const void*>(fused_train<float, true, true>),
                        reinterpret_cast<const void*>(fused_train<float, true, false>),
                        reinterpret_cast<const void*>(fused_train<float, false, true>),
                        reinterpret_cast<const void*>(fused_train<double, true, true>),
                        reinterpret_cast<const void*>(fused_train<double, true, false>)}) {
    STS_CUDA(cudaFuncGetAttributes(&fa, f));
    b = fa.sharedSizeBytes > b ? fa.sharedSizeBytes : b;
  }
  return b;
}

// Scalar-A variants are compiled for float with shared-memory data only (the
// comparison bench_cuda makes); double, and the general path (data in global
// memory), always load A by four.
template <class Real>
constexpr bool has_scalar_a() {
  return sizeof(Real) == 4;
}

template <class Real>
void fused_prepare(size_t shared_bytes) {
  STS_CUDA(cudaFuncSetAttribute(fused_train<Real, true, true>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(shared_bytes)));
  if constexpr (has_scalar_a<Real>())
    STS_CUDA(cudaFuncSetAttribute(fused_train<Real, false, true>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(shared_bytes)));
}

template <class Real>
void launch_fused(const TrainArgs<Real>& a, size_t shared_bytes, bool vector_a, cudaStream_t s) {
  if (a.nnets == 0) return;
  if (!a.shared) {
    fused_train<Real, true, false><<<a.nnets, kThreads, shared_bytes, s>>>(a);
    STS_CUDA_LAUNCHED("fused_train (general)");
    return;
  }
  if constexpr (has_scalar_a<Real>()) {
    if (!vector_a) {
      fused_train<Real, false, true><<<a.nnets, kThreads, shared_bytes, s>>>(a);
      STS_CUDA_LAUNCHED("fused_train (scalar A)");
      return;
    }
  }
  fused_train<Real, true, true><<<a.nnets, kThreads, shared_bytes, s>>>(a);
  STS_CUDA_LAUNCHED("fused_train");
}

template <class Real>
void warp_prepare(size_t shared_bytes) {
  STS_CUDA(cudaFuncSetAttribute(warp_train<Real, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(shared_bytes)));
  if constexpr (has_scalar_a<Real>())
    STS_CUDA(cudaFuncSetAttribute(warp_train<Real, false>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(shared_bytes)));
}

template <class Real>
void launch_warp(const TrainArgs<Real>& a, int warps, size_t net_shared, bool vector_a,
                 cudaStream_t s) {
  if (a.nnets == 0) return;
  if (warps < 1 || warps > kWarpsPerBlock || net_shared % 16 != 0)
    throw std::logic_error("launch_warp: bad warps or slice size");
  // WarpTeamT promises the GEMM tiles shared-memory operands (kSharedOperands).
  if (!a.shared) throw std::logic_error("launch_warp: the warp path needs the data in shared memory");
  const int blocks = warp_blocks(a.nnets, warps);
  const int reals = static_cast<int>(net_shared / sizeof(Real));
  if constexpr (has_scalar_a<Real>()) {
    if (!vector_a) {
      warp_train<Real, false><<<blocks, warps * kWarp, warps * net_shared, s>>>(a, warps, reals);
      STS_CUDA_LAUNCHED("warp_train (scalar A)");
      return;
    }
  }
  warp_train<Real, true><<<blocks, warps * kWarp, warps * net_shared, s>>>(a, warps, reals);
  STS_CUDA_LAUNCHED("warp_train");
}

void launch_eval(const EvalArgs& a, int blocks, cudaStream_t s) {
  if (a.nnets == 0) return;
  eval_snapshots<<<blocks, kThreads, 0, s>>>(a);
  STS_CUDA_LAUNCHED("eval_snapshots");
}

template void fused_prepare<float>(size_t);
template void fused_prepare<double>(size_t);
template void launch_fused<float>(const TrainArgs<float>&, size_t, bool, cudaStream_t);
template void launch_fused<double>(const TrainArgs<double>&, size_t, bool, cudaStream_t);
template void warp_prepare<float>(size_t);
template void warp_prepare<double>(size_t);
template void launch_warp<float>(const TrainArgs<float>&, int, size_t, bool, cudaStream_t);
template void launch_warp<double>(const TrainArgs<double>&, int, size_t, bool, cudaStream_t);

}  // namespace stsweep::cuda
