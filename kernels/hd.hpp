// STS_HD marks functions compiled for both host and device (the trial math is
// written once and shared by the CPU and CUDA backends).
#pragma once

#ifdef __CUDACC__
#define STS_HD __host__ __device__
#else
#define STS_HD
#endif
