// Training of one set-up trial on the CPU (the reference trainer). The math of
// a step lives in kernels/trial_math.hpp (__host__ __device__), shared with CUDA.
#pragma once

#include "problem.hpp"
#include "result.hpp"

namespace stsweep {

// Trains the student (and, when params.baseline, its lambda = 0 twin from the
// same initial weights) and fills every metric and curve of the result.
// Real is float or double. Divergence ends the trial with Status::diverged.
template <typename Real>
TrialResult train_trial(const TrialProblem& pr);

// Plain full-batch GD on (X, Y) with no feature matching, float64, data path:
// used to train a `trained` teacher. W holds layers 1..L (index 0 unused) and
// is updated in place. Returns false when the loss diverged.
bool train_plain_f64(std::vector<Matrix>& W, Activation act, const Matrix& X, const Matrix& Y,
                     int steps, double lr);

// Final student weights (and twin), for export and replay tests.
template <typename Real>
TrialResult train_trial(const TrialProblem& pr, std::vector<Matrix>* W_student,
                        std::vector<Matrix>* W_twin);

}  // namespace stsweep
