// What one trial produces (metric names as in the results file, MODEL.md).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace stsweep {

// Stored as int8 in the results; pending rows exist only in partial files.
enum class Status : int8_t { pending = 0, done = 1, diverged = 2, failed = 3 };
const char* name(Status);

struct TrialResult {
  int64_t trial = -1;  // trial id (index in the sweep)
  Status status = Status::pending;
  int64_t steps_run = 0;     // steps actually taken (< steps when diverged)
  double test_risk = 0;      // R(W_e) of the student at the end
  double baseline_test_risk = 0;  // the lambda = 0 twin (NaN when baseline = false)
  double bayes_risk = 0;
  double excess_risk = 0;    // test_risk - bayes_risk
  double interp_risk = 0;    // R(Y Xn^+)
  double teacher_clean_risk = 0;
  double train_loss = 0;     // full loss at the end (label + lambda * feature)
  double label_loss = 0;     // (1/2N)||f(Xn) - Y||^2
  double feature_loss = 0;   // (1/2N) sum_l ||h^l - H_t^l||^2 (unweighted)
  double best_test_risk = 0; // lowest test risk over the checkpoints
  int64_t best_step = 0;
  int8_t zero_loss = 0;      // train_loss reached the zero-loss tolerance
  double baseline_best_test_risk = 0;  // the twin's best_test_risk (NaN when baseline = false)
  int64_t baseline_best_step = 0;      // the twin's best_step (-1 when baseline = false)
  double loss_rise = 1;           // tm::LossRise: largest rise of the training loss over its lowest
  double baseline_loss_rise = 1;  // the twin's (NaN when baseline = false)
  // Which network stopped a diverged trial (status says only that one did):
  // 1 when it diverged, 0 when not; twin_diverged is -1 when baseline = false.
  int8_t student_diverged = 0;
  int8_t twin_diverged = -1;
  // The twin's training loss at the end (its label loss: lambda = 0) and its
  // zero_loss flag (NaN and -1 when baseline = false).
  double baseline_train_loss = 0;
  int8_t baseline_zero_loss = -1;
  std::string message;       // why, when failed or diverged (not stored per row)

  // Curves over checkpoints (length = number of checkpoints; NaN-padded).
  std::vector<int64_t> checkpoint_steps;
  std::vector<double> curve_test_risk, curve_label_loss, curve_feature_loss;
  std::vector<double> curve_baseline_test_risk, curve_baseline_label_loss,
      curve_baseline_feature_loss;
};

// A done trial whose loss_rise (or the twin's) is above this had unstable
// gradient descent that did not diverge: run and info count such rows.
constexpr double kUnstableRise = 1.01;
// Counts such rows (run's closing note, info's stability line): a row's rise
// is its student's or its twin's (NaN twin: none), NaN counting as unstable.
struct RiseTally {
  int64_t count = 0;
  double worst = 1;
  void add(double loss_rise, double baseline_loss_rise) {
    const double rise = std::max(loss_rise, std::isnan(baseline_loss_rise) ? 1.0 : baseline_loss_rise);
    if (rise <= kUnstableRise) return;
    ++count;
    if (!(rise <= worst)) worst = rise;
  }
};

// Names of the scalar metrics and curves, in file order.
const std::vector<std::string>& scalar_metric_names();
const std::vector<std::string>& curve_names();

}  // namespace stsweep
