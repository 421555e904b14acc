// kernels/cuda_backend.cu itself, compiled by the host compiler against the
// fake CUDA runtime of this folder (cuda_runtime.h).
#include "../../kernels/cuda_backend.cu"
