// The CUDA backend on the host: its planning and packing (device_plan.hpp) and
// its kernel bodies (device_body.hpp) run on host memory, a thread block or a
// warp emulated by as many std::threads, with __syncthreads()/__syncwarp() as
// a std::barrier and the block and warp reductions summed in the order the
// device sums them. Nothing of it is fast; it exists so that the CPU test
// suite (tests/test_device_emu.cpp) runs the code the GPU runs, and so that a
// GPU test can demand the device's results equal the emulation's bit for bit
// (tests/test_cuda.cpp). Not a user-facing backend.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend.hpp"
#include "device_plan.hpp"

namespace stsweep::cuda {

// What the device GEMM tiles of an emulated team read and wrote, per rank in
// issue order (tm::detail::team_traces): the input of the shared-memory bank
// model (smem_report).
struct SmemAccess {
  enum Kind : int32_t { load, store, barrier, fma };
  uintptr_t addr = 0;  // byte address; for fma: the count
  int32_t bytes = 0;
  Kind kind = load;
};
struct SmemTrace {
  std::vector<std::vector<SmemAccess>> rank;  // sized by the caller: one per thread
};

// A host thread's view of an emulated team (block or warp); see device_emu.cpp.
class EmuGroup;
struct EmuTeam {
  static constexpr bool kDeviceTiles = true;  // tm::gemm runs the device's register tiles
  static constexpr bool kVectorA = true;      // with the device's default A loads (BlockTeam)
  static constexpr bool kTraceShared = true;  // calls trace_* (no-ops while trace is null)
  EmuGroup* g = nullptr;
  int r = 0, n = 1;
  SmemTrace* trace = nullptr;
  bool one_column = true;  // v5 tiles (tm::detail::team_one_column); EmuOptions::one_column
  int rank() const { return r; }
  int size() const { return n; }
  void sync() const;
  float sum(float x) const;
  double sum(double x) const;
  void trace_access(const void* p, int bytes, bool store) const {
    if (trace)
      trace->rank[r].push_back({reinterpret_cast<uintptr_t>(p), bytes, store ? SmemAccess::store : SmemAccess::load});
  }
  void trace_fma(int count) const {
    if (trace) trace->rank[r].push_back({static_cast<uintptr_t>(count), 0, SmemAccess::fma});
  }
};
// The same team with the scalar A loads (STSWEEP_CUDA_VECTOR_A=0 on the device).
struct EmuTeamScalarA : EmuTeam {
  static constexpr bool kVectorA = false;
};

// A model of the shared-memory traffic of a trace, counted per warp
// instruction: the i-th access of each thread of a warp between two barriers
// is one instruction (the GEMM tiles do not diverge inside a warp when every
// thread has the same number of tiles). An access costs, in 128-byte
// wavefronts, the most distinct 4-byte words any one bank must serve (the same
// word is a broadcast); a 32-bit instruction is served for the whole warp at
// once, a 128-bit one per half warp (16 threads). That rule reproduces the
// three LDS.128 patterns measured with Nsight Compute on an H100 that NVIDIA's
// developer forum reports (4 wavefronts for 32 contiguous 16-byte chunks; 8
// for 16 chunks 32 bytes apart read by threads t and t + 16; 2 for threads
// 0-15 on one chunk and 16-31 on the next but one: tests/test_device_emu.cpp).
// `wavefronts_quarter` serves 128-bit loads per quarter warp instead, the
// older documented rule and an upper bound. tools/device-check's Nsight
// Compute run on the H200 checks the model against the real counters.
struct SmemReport {
  long long load_instr = 0, store_instr = 0, vector_instr = 0;  // warp instructions (vector: 128-bit loads)
  long long wavefronts = 0, wavefronts_quarter = 0;             // all loads and stores
  long long fma_instr = 0;  // warp FMA instructions
  // FMA issue clocks per shared-memory clock at one wavefront per clock and
  // 4 warp FMAs per clock (an SM's 4 sub-partitions): the FMA rate's upper
  // bound when shared memory is the limit (capped at 1).
  double fma_bound(bool quarter = false) const;
  SmemReport& operator+=(const SmemReport& o);
  SmemReport& operator-=(const SmemReport& o);
};
// `segments`, when given: the same counts per barrier-delimited segment (the
// s-th segment of every warp summed), e.g. one GEMM each.
SmemReport smem_report(const SmemTrace& t, int warp = 32, std::vector<SmemReport>* segments = nullptr);

// Runs body(team) on n threads, one per rank, sharing a barrier; `warp`: the
// sums are warp butterflies (WarpTeam), else block reductions (BlockTeam).
// n must be 1 or a multiple of 32 (as on the device), else std::logic_error.
// A rank that throws aborts the process (the others would wait at the barrier).
void run_emulated_team(int n, bool warp, const std::function<void(const EmuTeam&)>& body,
                       SmemTrace* trace = nullptr);

struct EmuOptions {
  Path path = Path::fused;         // fused, warp or general (or automatic); no cublas
  int block_threads = kThreads;    // threads of an emulated block (fused, general, eval)
  size_t shared_per_block = 227 * 1024;  // the H200's opt-in maximum less a little
  bool compact_eval = true;        // evaluate only the items eval_needed() keeps
  bool vector_a = true;            // the training kernels' A loads (EmuTeam / EmuTeamScalarA)
  bool one_column = true;          // v5's one-column tiles (STSWEEP_CUDA_ONE_COLUMN on the device)
  SmemTrace* trace = nullptr;      // when set: the training kernel's accesses (one team, sized here)
  bool device_teachers = true;     // train the batch's new trained teachers as the device does
                                   // (prepare_teachers), not in set-up
  size_t wave = 0;                 // most trials per wave (STSWEEP_CUDA_WAVE); 0: one wave
};
std::unique_ptr<Backend> make_emulated_backend(const EmuOptions& eo);
// Stats of the emulated backend's last run (zeros for another backend).
RunStats emulated_stats(const Backend& b);

}  // namespace stsweep::cuda
