// The CUDA backend on the host: its planning and packing (device_plan.hpp) and
// its kernel bodies (device_body.hpp) run on host memory, a thread block or a
// warp emulated by as many std::threads, with __syncthreads()/__syncwarp() as
// a std::barrier and the block and warp reductions summed in the order the
// device sums them. Nothing of it is fast; it exists so that the CPU test
// suite (tests/test_device_emu.cpp) runs the code the GPU runs, and so that a
// GPU test can demand the device's results equal the emulation's bit for bit
// (tests/test_cuda.cpp). Not a user-facing backend.
#pragma once

#include <memory>

#include "backend.hpp"
#include "device_plan.hpp"

namespace stsweep::cuda {

// A host thread's view of an emulated team (block or warp); see device_emu.cpp.
class EmuGroup;
struct EmuTeam {
  static constexpr bool kDeviceTiles = true;  // tm::gemm runs the device's register tiles
  static constexpr bool kVectorA = true;      // with the device's default A loads (BlockTeam)
  EmuGroup* g = nullptr;
  int r = 0, n = 1;
  int rank() const { return r; }
  int size() const { return n; }
  void sync() const;
  float sum(float x) const;
  double sum(double x) const;
};

// Runs body(team) on n threads, one per rank, sharing a barrier; `warp`: the
// sums are warp butterflies (WarpTeam), else block reductions (BlockTeam).
// n must be 1 or a multiple of 32 (as on the device), else std::logic_error.
// A rank that throws aborts the process (the others would wait at the barrier).
void run_emulated_team(int n, bool warp, const std::function<void(const EmuTeam&)>& body);

struct EmuOptions {
  Path path = Path::fused;         // fused, warp or general (or automatic); no cublas
  int block_threads = kThreads;    // threads of an emulated block (fused, general, eval)
  size_t shared_per_block = 227 * 1024;  // the H200's opt-in maximum less a little
  bool compact_eval = true;        // evaluate only the items eval_needed() keeps
};
std::unique_ptr<Backend> make_emulated_backend(const EmuOptions& eo);
// Stats of the emulated backend's last run (zeros for another backend).
RunStats emulated_stats(const Backend& b);

}  // namespace stsweep::cuda
