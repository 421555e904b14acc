// MODEL.md factor 1: trained to zero loss from small initialisation in the
// over-parameterised regime (N < d), the student and its lambda = 0 twin both
// land on the minimum-norm interpolant Y Xn^+, whatever the (oracle) teacher's
// decomposition and lambda; a teacher whose features conflict with the labels
// (perturbed, balanced) keeps the loss above zero and the student away from it.
// Set-up (host/setup.cpp) + training (host/train.cpp), float64.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "problem.hpp"
#include "train.hpp"

namespace stsweep {
namespace {

TrialParams factor1_params() {
  TrialParams p;
  p.d = 32;
  p.k = 32;
  p.m = 4;
  p.hidden = {32};
  p.n_train = 8;
  p.noise = 0.5;
  p.init_scale = 1e-4;
  p.lr = 0.01;
  p.steps = 40000;
  p.checkpoints = 16;
  p.teacher.kind = TeacherKind::oracle;
  return p;
}

// All 4 decompositions x 3 lambdas: 12 trials plus twins, ~2 s each in float64
// on one core (data path: N = 8 makes it the cheaper one).
TEST(Factor1, OracleTeachersReachTheInterpolant) {
  for (Decomposition dec : {Decomposition::balanced, Decomposition::rotated,
                            Decomposition::latent, Decomposition::input})
    for (double lambda : {0.1, 1.0, 10.0}) {
      TrialParams p = factor1_params();
      p.teacher.decomposition = dec;
      p.lambda = lambda;
      SCOPED_TRACE(std::string(name(dec)) + " lambda " + std::to_string(lambda));
      const TrialProblem pr = setup_trial(p, 2024);
      const TrialResult r = train_trial<double>(pr);
      std::printf("%-9s lambda %5.1f  test/interp-1 %+.2e  twin/interp-1 %+.2e  loss/start %.1e\n",
                  name(dec), lambda, r.test_risk / r.interp_risk - 1,
                  r.baseline_test_risk / r.interp_risk - 1,
                  r.train_loss / (r.curve_label_loss[0] + lambda * r.curve_feature_loss[0]));
      ASSERT_EQ(r.status, Status::done) << r.message;
      EXPECT_EQ(r.zero_loss, 1) << "train_loss " << r.train_loss;
      EXPECT_NEAR(r.test_risk, r.interp_risk, 0.01 * r.interp_risk);
      EXPECT_NEAR(r.baseline_test_risk, r.interp_risk, 0.01 * r.interp_risk);
      // Nothing trained beats the Bayes risk, at any checkpoint.
      for (double v : r.curve_test_risk) EXPECT_GE(v, r.bayes_risk);
      for (double v : r.curve_baseline_test_risk) EXPECT_GE(v, r.bayes_risk);
      EXPECT_GE(r.best_test_risk, r.bayes_risk);
    }
}

// The float32 trainer (the default precision) gets there too.
TEST(Factor1, Float32OracleReachesTheInterpolant) {
  TrialParams p = factor1_params();
  p.teacher.decomposition = Decomposition::rotated;
  p.lambda = 1.0;
  const TrialProblem pr = setup_trial(p, 2024);
  const TrialResult r = train_trial<float>(pr);
  std::printf("float32 rotated lambda 1: test/interp-1 %+.2e  twin/interp-1 %+.2e  loss %.1e\n",
              r.test_risk / r.interp_risk - 1, r.baseline_test_risk / r.interp_risk - 1,
              r.train_loss);
  ASSERT_EQ(r.status, Status::done) << r.message;
  EXPECT_EQ(r.zero_loss, 1) << "train_loss " << r.train_loss;
  EXPECT_NEAR(r.test_risk, r.interp_risk, 0.01 * r.interp_risk);
  EXPECT_NEAR(r.baseline_test_risk, r.interp_risk, 0.01 * r.interp_risk);
}

TEST(Factor1, PerturbedBalancedTeacherStaysAway) {
  TrialParams p = factor1_params();
  p.teacher.kind = TeacherKind::perturbed;
  p.teacher.delta = 0.5;
  p.teacher.decomposition = Decomposition::balanced;
  p.lambda = 1.0;
  const TrialProblem pr = setup_trial(p, 2024);
  const TrialResult r = train_trial<double>(pr);
  const double start = r.curve_label_loss[0] + p.lambda * r.curve_feature_loss[0];
  std::printf("perturbed balanced: test/interp-1 %+.2e  loss/start %.1e\n",
              r.test_risk / r.interp_risk - 1, r.train_loss / start);
  ASSERT_EQ(r.status, Status::done) << r.message;
  EXPECT_EQ(r.zero_loss, 0) << "train_loss " << r.train_loss;
  // The features and labels conflict: the loss stays a visible fraction of its start.
  EXPECT_GT(r.train_loss, 1e-3 * start);
  EXPECT_GT(std::abs(r.test_risk - r.interp_risk), 1e-3 * r.interp_risk);
  // Its twin has no teacher and still interpolates.
  EXPECT_NEAR(r.baseline_test_risk, r.interp_risk, 0.01 * r.interp_risk);
  EXPECT_GE(r.test_risk, r.bayes_risk);
}

}  // namespace
}  // namespace stsweep
