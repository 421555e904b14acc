// Names of statuses, metrics and curves as the results file spells them.
#include "result.hpp"

namespace stsweep {

const char* name(Status s) {
  switch (s) {
    case Status::pending: return "pending";
    case Status::done: return "done";
    case Status::diverged: return "diverged";
    case Status::failed: return "failed";
  }
  return "unknown";
}

const std::vector<std::string>& scalar_metric_names() {
  static const std::vector<std::string> names{
      "test_risk",  "baseline_test_risk", "bayes_risk",   "excess_risk", "interp_risk",
      "teacher_clean_risk", "train_loss", "label_loss",   "feature_loss", "best_test_risk",
      "best_step",  "zero_loss",          "status",       "steps_run",   "baseline_best_test_risk",
      "baseline_best_step", "loss_rise",  "baseline_loss_rise", "student_diverged", "twin_diverged", "baseline_train_loss", "baseline_zero_loss"};
  return names;
}

// The results file prefixes each with "curve_".
const std::vector<std::string>& curve_names() {
  static const std::vector<std::string> names{"test_risk",          "label_loss",
                                              "feature_loss",       "baseline_test_risk",
                                              "baseline_label_loss", "baseline_feature_loss"};
  return names;
}

}  // namespace stsweep
