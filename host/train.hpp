// Training of one set-up trial on the CPU (the reference trainer). The math of
// a step lives in kernels/trial_math.hpp (__host__ __device__), shared with CUDA.
#pragma once

#include <cstdint>
#include <limits>
#include <mutex>
#include <vector>

#include "problem.hpp"
#include "result.hpp"
#include "trial_math.hpp"

namespace stsweep {

// Trains the student (and, when params.baseline, its lambda = 0 twin from the
// same initial weights) and fills every metric and curve of the result.
// Real is float or double. Divergence ends the trial with Status::diverged.
template <typename Real>
TrialResult train_trial(const TrialProblem& pr);

// Plain full-batch GD on (X, Y) with no feature matching, float64: used to
// train a `trained` teacher. W holds layers 1..L (index 0 unused) and is
// updated in place. Returns false when the loss diverged (non-finite, or above
// kDivergeFactor x its start, checked before each step and after the last). `automatic` takes the
// moment path for a linear network when its step costs fewer flops (1/5.5 of
// the data path's at d = h = 64, m = 16, N = 128), as for students.
enum class PlainPath { automatic, data, moment };
bool train_plain_f64(std::vector<Matrix>& W, Activation act, const Matrix& X, const Matrix& Y,
                     int steps, double lr, PlainPath path = PlainPath::automatic);

// ---- The rules and pieces of train_trial that every backend shares (the CUDA
// backend trains on the device and assembles its results with these).

// Divergence: the training loss is non-finite or above this multiple of its start.
constexpr double kDivergeFactor = 1e6;
// Zero training loss: final train_loss <= kZeroLossRtol * initial train_loss
// (both measured in float64). MODEL.md factor 1: interpolating students reach
// ~1e-10 and below; conflicting teachers stop at 0.4% to 1% of the start.
constexpr double kZeroLossRtol = 1e-6;

// Matched layers as a bitmask (bit l); InputError for a layer that is not hidden.
uint32_t matched_mask(const TrialProblem& pr);

// The step math's view of a network: widths w[0..L] and the activation
// (InputError "hidden" when the depth is outside 1..tm::kMaxLayers).
tm::Net make_net(const std::vector<int>& w, Activation act);
// `auto`'s rule, for students and trained teachers alike: the moment path when
// the network is linear and its step counts fewer flops than the data path's
// on N samples (`mask`: the layers the feature loss matches).
bool moments_cheaper(const tm::Net& net, uint32_t mask, int N);
// Whether the trial trains on the moment path (params.path; `auto` by counted
// flops); InputError for `moment` with a nonlinear network.
bool trains_on_moments(const TrialProblem& pr);

// The moments the moment path trains on (float64), formed from the trial's
// data: Cxx = Xn Xn^T / N, Cyx = Y Xn^T / N, Chx[l] = H_l Xn^T / N for the
// layers in mask (H_l the teacher's features on the clean inputs), and the
// traces tr(Y Y^T) / N, tr(H_l H_l^T) / N. Only trials that train on moments
// need them (set-up does not form them: 0.4 ms of its 1.5 ms at d = h = 64,
// N = 128), so the CPU trainer and the CUDA plan call this, the one
// definition, per trial.
struct TrialMoments {
  Matrix Cxx, Cyx;
  std::vector<Matrix> Chx;  // index 1..L-1, matched layers
  double tr_yy = 0;
  std::vector<double> tr_hh;
};
// The moments of a problem several trials share (TrialProblem::shared_moments):
// formed by the first trial that asks (for its mask; another mask forms its own).
struct SharedMoments {
  std::once_flag once;
  uint32_t mask = 0;
  TrialMoments mo;
};
TrialMoments trial_moments(const TrialProblem& pr, uint32_t mask);
// The same from any data (Xn: d x N, Y: m x N, feature[l]: w_l x N for l in mask).
TrialMoments moments_of(const Matrix& Xn, const Matrix& Y, const std::vector<Matrix>& feature, int L,
                        uint32_t mask);

// Metrics of one network at one iterate, measured in float64.
struct NetMetrics {
  double test_risk = std::numeric_limits<double>::quiet_NaN();
  double label = std::numeric_limits<double>::quiet_NaN();
  double feature = std::numeric_limits<double>::quiet_NaN();
};
// One trained network as the result needs it.
struct NetTrace {
  std::vector<double> test, label, feature;  // per checkpoint, NaN after a stop
  NetMetrics first, last;                    // at step 0 and where training stopped
  bool diverged = false;
  int64_t steps_run = 0;
  double diverged_loss = 0;
  double loss_rise = 1;  // tm::LossRise over the steps taken
};
// The trial's result from its student and (when params.baseline) its twin.
TrialResult assemble_trial_result(const TrialProblem& pr, const NetTrace& student,
                                  const NetTrace* twin);

// Final student weights (and twin), for export and replay tests.
template <typename Real>
TrialResult train_trial(const TrialProblem& pr, std::vector<Matrix>* W_student,
                        std::vector<Matrix>* W_twin);

}  // namespace stsweep
