// MODEL.md: for a linear student, a decomposition acts only through the
// subspace its features span and their metric W1^T W1. An orthogonal rotation
// of the hidden features (rotated vs balanced) therefore leaves the student's
// risks unchanged up to the small random initialisation, while a different
// metric (latent, scaled, power) changes them. Set-up + CPU trainer, float64.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "problem.hpp"
#include "train.hpp"

namespace stsweep {
namespace {

// A regime where the teacher matters: a perturbed teacher whose features
// conflict with the labels, so the student does not reach the interpolant.
TrialParams conflict_params(Decomposition dec, double init_scale) {
  TrialParams p;
  p.d = 16;
  p.k = 16;
  p.m = 4;
  p.hidden = {16};
  p.n_train = 12;
  p.noise = 0.5;
  p.lambda = 1.0;
  p.teacher.kind = TeacherKind::perturbed;
  p.teacher.delta = 0.5;
  p.teacher.decomposition = dec;
  p.teacher.scale = 2.0;
  p.init_scale = init_scale;
  p.lr = 0.02;
  p.steps = 20000;
  p.checkpoints = 8;
  return p;
}

double risk(Decomposition dec, double init_scale) {
  const TrialProblem pr = setup_trial(conflict_params(dec, init_scale), 99);
  const TrialResult r = train_trial<double>(pr);
  EXPECT_EQ(r.status, Status::done) << r.message;
  return r.test_risk;
}

TEST(DecompositionRisks, RotationLeavesLinearRisksUnchangedUpToInit) {
  const double small = 1e-6;
  const double bal = risk(Decomposition::balanced, small);
  const double rot = risk(Decomposition::rotated, small);
  const double sca = risk(Decomposition::scaled, small);
  const double lat = risk(Decomposition::latent, small);
  std::printf("risks: balanced %.6f rotated %.6f scaled(2) %.6f latent %.6f\n", bal, rot, sca, lat);
  EXPECT_NEAR(rot, bal, 2e-4 * bal) << "a rotation of the features changed the risk";
  // A different feature metric changes the student's end point.
  EXPECT_GT(std::abs(sca - bal), 5e-3 * bal);
  EXPECT_GT(std::abs(lat - bal), 1e-2 * bal);
  // The agreement is an initialisation effect: it degrades at a large init.
  const double bal_big = risk(Decomposition::balanced, 0.3);
  const double rot_big = risk(Decomposition::rotated, 0.3);
  std::printf("init 0.3: balanced %.6f rotated %.6f\n", bal_big, rot_big);
  EXPECT_GT(std::abs(rot_big - bal_big), std::abs(rot - bal));
}

}  // namespace
}  // namespace stsweep
