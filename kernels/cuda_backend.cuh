// The CUDA backend's C++ interface beyond make_cuda_backend (host/backend.hpp):
// plain C++ (no CUDA types) so tests and benchmarks compiled by the host
// compiler can use it. Defined in kernels/cuda_backend.cu; exists only when
// STSWEEP_HAVE_CUDA.
#pragma once

#include <memory>
#include <string>

#include "backend.hpp"

namespace stsweep::cuda {

// How a group of trials trains on the device.
//   fused:   one thread block per network, data in dynamic shared memory, all
//            steps in one launch (the fast path; needs the arena to fit a block).
//   general: the same kernel on global memory (any shape).
//   cublas:  strided-batched SGEMM/DGEMM per layer and step (data path only; the
//            yardstick). Moment-path groups run `general` instead.
//   automatic: fused when it fits, else cublas (data path) or general (moment).
// The environment variable STSWEEP_CUDA_PATH (auto|fused|general|cublas)
// overrides the default for backends made by make_cuda_backend (read when the
// backend is made). STSWEEP_CUDA_POISON=1 fills every device and staging buffer
// with NaN bytes before each chunk (tests: an unwritten output cannot pass).
enum class Path { automatic, fused, general, cublas };
const char* name(Path);

// "" when a usable GPU is present, else why not (never throws).
std::string probe();

// A backend with a fixed path (tests, benchmarks); nullptr + why without a GPU.
std::unique_ptr<Backend> make_backend(const RunOptions& opt, Path path, std::string* why,
                                      int device = 0);

// Timings and counts of the backend's last run() (all of it, every chunk).
struct RunStats {
  double setup_s = 0;      // host set-up (wall, all threads)
  double train_s = 0;      // device training (events around the trainer launches)
  double eval_s = 0;       // device evaluation
  double total_s = 0;      // the whole run() call
  double net_steps = 0;    // sum over networks of steps run
  double flops = 0;        // counted training flops (tm::*_step_flops)
  std::string paths;       // paths taken, e.g. "fused" or "fused, cublas"
  int chunks = 0;
};
RunStats last_stats(const Backend& b);  // zeros for a backend that is not CUDA's

// FP32 FMA rate of device 0 in GFLOP/s (a chain-of-FMAs kernel), the ceiling
// the fused kernel is measured against.
double fma_peak_gflops();

}  // namespace stsweep::cuda
