// The records the CUDA backend's kernels read and write, and the arena layout:
// plain C++ (no CUDA header), so the same structs drive the kernels on the
// device and their emulation on the host (kernels/device_emu.cpp).
//
// Layout of one batch group (trials of equal shape, path and matched layers):
//   trial arena (Real)   [data part: X, Y, Ht (data path) or Cxx, Cyx, Chx (moment path)]
//                        [initial weights W0 (and WT0 for the data path)]
//   network work (Real)  weights and workspace of one network (student or twin)
//   eval arena (double)  the float64 data the metrics are measured on
//   eval work (double)   workspace of one evaluation block
// Offsets are in elements, identical for every trial of the group.
#pragma once

#include <stdint.h>

#include "hd.hpp"
#include "trial_math.hpp"

namespace stsweep::cuda {

constexpr int kThreads = 256;  // threads per block (a multiple of 32)
constexpr int kWarp = 32;      // threads per warp team
constexpr int kWarpsPerBlock = kThreads / kWarp;  // networks per block on the warp path
constexpr int kNone = -1;      // absent offset

struct TrialScalars {             // per trial, read by the kernels
  double lambda = 0, lr = 0;
  double sigma = 0, sigma_y = 0;  // exact risk; sigma_y also the Monte Carlo risk's m sigma_y^2
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
  tm::LossRise rise;              // over the steps taken (loss_rise)
  int diverged;
  int written;                    // checkpoints snapshotted (0..nck)
  long long step;                 // the step the network is at (its last when stopped): the
                                  // cuBLAS trainer's counter, so that one captured CUDA graph
                                  // serves every step (kernels/cuda_cublas.cu)
};

// Divergence rule: the same as host/train.cpp (static_assert in cuda_backend.cu).
constexpr double kDivergeFactor = 1e6;
// The floor of loss_rise: the zero-loss tolerance (host/train.hpp kZeroLossRtol).
constexpr double kZeroLossRtol = 1e-6;

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

// Launch of the trainers (fused, warp or cuBLAS) and of the evaluation.
template <class Real>
struct TrainArgs {
  tm::Net net;
  uint32_t mask = 0;              // the trial's matched layers (bit l)
  int N = 0;
  int shared = 0;                 // 1 = arena copied to (dynamic) shared memory
  Layout lay;
  const Real* arena = nullptr;    // trials x lay.arena
  Real* work = nullptr;           // nets x lay.work (general) or lay.cwork (cuBLAS)
  const NetRef* nets = nullptr;
  int nnets = 0;
  // The group's trials and checkpoint steps: with nnets and slots, the
  // extents of the buffers above (group_sizes), which the fake device checks
  // each launch against its allocations (tests/fake_cuda).
  int ntrials = 0, ck_total = 0;
  const TrialScalars* trials = nullptr;
  const long long* ck = nullptr;
  double* snap = nullptr;         // nets x slots x wsize: checkpoints, then first, final
  int slots = 0;                  // max nck + 2
  NetState* state = nullptr;
  int one_column = 1;             // GEMM tiles: 1 = v5's one-column shapes where 128-bit A applies, 0 = v4
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
  int ntrials = 0, ck_total = 0;  // as in TrainArgs
  const TrialScalars* trials = nullptr;
  const double* snap = nullptr;
  int slots = 0;
  int maxck = 0;                  // slots = maxck + 2
  const NetState* state = nullptr;
  double* metrics = nullptr;      // nets x slots x 3: test_risk, label, feature
  // The work items to measure (net * slots + slot), compacted on the device
  // (eval_needed); nullptr: all nnets * slots items.
  const long long* items = nullptr;
  const long long* nitems = nullptr;  // device count of `items`
};

// Whether snapshot `slot` of a network needs measuring: every checkpoint it
// wrote, its first and its final weights; not the checkpoints after a stop
// (divergence), whose metrics the host never reads.
STS_HD inline bool eval_needed(const NetState& st, int slot, int maxck) {
  return slot >= maxck || slot < st.written;
}

}  // namespace stsweep::cuda
