// The CUDA backend's C++ interface beyond make_cuda_backend (host/backend.hpp):
// plain C++ (no CUDA types) so tests and benchmarks compiled by the host
// compiler can use it. Defined in kernels/cuda_backend.cu; exists only when
// STSWEEP_HAVE_CUDA.
#pragma once

#include <memory>
#include <string>

#include "backend.hpp"
#include "device_plan.hpp"

namespace stsweep::cuda {

// Path (how a group trains: fused, warp, general, cublas, automatic), RunStats
// and STSWEEP_CUDA_PATH are in device_plan.hpp. STSWEEP_CUDA_POISON=1 fills
// every device and staging buffer with NaN bytes before each chunk (tests: an
// unwritten output cannot pass).

// "" when a usable GPU is present, else why not (never throws).
std::string probe();

// A backend with a fixed path (tests, benchmarks); nullptr + why without a GPU.
std::unique_ptr<Backend> make_backend(const RunOptions& opt, Path path, std::string* why,
                                      int device = 0);

RunStats last_stats(const Backend& b);  // zeros for a backend that is not CUDA's

// FP32 FMA rate of device 0 in GFLOP/s (a chain-of-FMAs kernel), the ceiling
// the fused kernel is measured against.
double fma_peak_gflops();

}  // namespace stsweep::cuda
