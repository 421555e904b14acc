// kernels/cuda_cublas.cu itself (the cuBLAS trainer's launch sequence and its
// element-wise kernels), compiled by the host compiler against the fake CUDA
// runtime and fake cuBLAS of this folder. The launch records' pointers are
// checked by fake_runtime.cpp's kernel_args_on_device (found by
// argument-dependent lookup from fake_cuda::launch).
#include "cuda_common.cuh"

namespace stsweep::cuda {
template <class Real>
void kernel_args_on_device(const TrainArgs<Real>& a, int dev);
}  // namespace stsweep::cuda

#include "../../kernels/cuda_cublas.cu"
