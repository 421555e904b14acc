// Trial set-up (host/setup.cpp) against MODEL.md: data law, teachers,
// decompositions, features, moments, closed-form risks, determinism and
// checkpoints. Expected values come from independent formulas, not from the
// code under test.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "linalg.hpp"
#include "problem.hpp"
#include "rng.hpp"
#include "train.hpp"

using namespace stsweep;
using namespace stsweep::linalg;

namespace {

TrialParams base_params() {
  TrialParams p;
  p.d = 16, p.k = 6, p.m = 4;
  p.hidden = {12};
  p.n_train = 10;
  p.noise = 0.5;
  p.steps = 100;
  p.seed = 3;
  return p;
}

// max |A - B| relative to max(1, max |B|).
double rel_diff(const Matrix& A, const Matrix& B) {
  EXPECT_EQ(A.rows, B.rows);
  EXPECT_EQ(A.cols, B.cols);
  if (A.rows != B.rows || A.cols != B.cols) return INFINITY;
  return max_abs(sub(A, B)) / std::max(1.0, max_abs(B));
}

Matrix layer_product(const std::vector<Matrix>& W) {
  Matrix P = W[1];
  for (size_t l = 2; l < W.size(); ++l) P = matmul(W[l], P);
  return P;
}

// Rows [0, r) of A.
Matrix top_rows(const Matrix& A, int r) {
  Matrix B(r, A.cols);
  for (int i = 0; i < r; ++i)
    for (int j = 0; j < A.cols; ++j) B(i, j) = A(i, j);
  return B;
}
double rows_below_max(const Matrix& A, int r) {
  double s = 0;
  for (int i = r; i < A.rows; ++i)
    for (int j = 0; j < A.cols; ++j) s = std::max(s, std::fabs(A(i, j)));
  return s;
}

// The test set's latents z (k x n_test): draws of stream test_z under the data key.
Matrix test_latents(const TrialProblem& pr, const TrialParams& p, uint64_t sweep_seed) {
  const TrialKeys keys = trial_keys(sweep_seed, p);
  Matrix Z(p.k, p.n_test);
  for (int n = 0; n < p.n_test; ++n)
    for (int i = 0; i < p.k; ++i)
      Z(i, n) = std::sqrt(pr.spectrum[i]) * rng::normal(keys.data, rng::Stream::test_z, 0, n * p.k + i);
  return Z;
}

bool same_bits(const Matrix& A, const Matrix& B) {
  return A.rows == B.rows && A.cols == B.cols && A.a == B.a;
}

}  // namespace

TEST(Setup, UOrthonormalAndSpectrum) {
  for (SpectrumKind kind : {SpectrumKind::flat, SpectrumKind::power, SpectrumKind::geometric}) {
    TrialParams p = base_params();
    p.spectrum = kind;
    p.spectrum_p = 1.5;
    p.spectrum_kappa = 20;
    const TrialProblem pr = setup_trial(p, 11);
    ASSERT_EQ(pr.U.rows, p.d);
    ASSERT_EQ(pr.U.cols, p.k);
    EXPECT_LT(rel_diff(matmul_tn(pr.U, pr.U), identity(p.k)), 1e-13);
    ASSERT_EQ(static_cast<int>(pr.spectrum.size()), p.k);
    double sum = 0;
    for (double s : pr.spectrum) sum += s;
    EXPECT_NEAR(sum, p.k, 1e-12);
    for (int j = 1; j < p.k; ++j) {
      const double ratio = pr.spectrum[j] / pr.spectrum[0];
      double want = 1.0;  // flat
      if (kind == SpectrumKind::power) want = std::pow(j + 1.0, -1.5);
      if (kind == SpectrumKind::geometric) want = std::pow(20.0, -double(j) / (p.k - 1));
      EXPECT_NEAR(ratio, want, 1e-14);
    }
    // Mhalf = U diag(s)^1/2
    EXPECT_LT(rel_diff(matmul_nt(pr.Mhalf, pr.Mhalf),
                       matmul_nt(scale_cols(pr.U, pr.spectrum), pr.U)),
              1e-13);
  }
}

TEST(Setup, DataFollowsTheDocumentedDraws) {
  // X = U diag(s)^1/2 Z with Z(i, n) = normal draw n*k + i of stream Z under the
  // data key; Xn = X + sigma E likewise; W* = A U^T with A(i, j) = draw j*m + i / sqrt(k).
  TrialParams p = base_params();
  p.spectrum = SpectrumKind::power;
  p.label_noise = 0.1;
  const TrialProblem pr = setup_trial(p, 5);
  const TrialKeys keys = trial_keys(5, p);
  Matrix Z(p.k, p.n_train), E(p.d, p.n_train), A(p.m, p.k), Xi(p.m, p.n_train);
  for (int n = 0; n < p.n_train; ++n) {
    for (int i = 0; i < p.k; ++i)
      Z(i, n) = std::sqrt(pr.spectrum[i]) * rng::normal(keys.data, rng::Stream::Z, 0, n * p.k + i);
    for (int i = 0; i < p.d; ++i) E(i, n) = rng::normal(keys.data, rng::Stream::E, 0, n * p.d + i);
    for (int i = 0; i < p.m; ++i)
      Xi(i, n) = rng::normal(keys.data, rng::Stream::label_noise, 0, n * p.m + i);
  }
  for (int j = 0; j < p.k; ++j)
    for (int i = 0; i < p.m; ++i)
      A(i, j) = rng::normal(keys.data, rng::Stream::A, 0, j * p.m + i) / std::sqrt(double(p.k));
  EXPECT_LT(rel_diff(pr.X, matmul(pr.U, Z)), 1e-14);
  EXPECT_LT(rel_diff(pr.Xn, add(pr.X, scaled(E, p.noise))), 1e-14);
  EXPECT_LT(rel_diff(pr.Wstar, matmul_nt(A, pr.U)), 1e-14);
  EXPECT_LT(rel_diff(pr.Y, add(matmul(pr.Wstar, pr.X), scaled(Xi, 0.1))), 1e-14);
  // The U stream: U's column span is that of the Gaussian d x k it came from.
  Matrix G(p.d, p.k);
  for (int j = 0; j < p.k; ++j)
    for (int i = 0; i < p.d; ++i) G(i, j) = rng::normal(keys.data, rng::Stream::U, 0, j * p.d + i);
  EXPECT_LT(rel_diff(matmul(pr.U, matmul_tn(pr.U, G)), G), 1e-13);
  // Student init: W_l(i, j) = init_scale / sqrt(fan_in) * draw j*rows + i of (student_init, l).
  const Matrix& W1 = pr.W0[1];
  ASSERT_EQ(W1.rows, 12);
  ASSERT_EQ(W1.cols, 16);
  EXPECT_DOUBLE_EQ(W1(3, 5), p.init_scale / 4.0 * rng::normal(keys.init, rng::Stream::student_init, 1, 5 * 12 + 3));
  ASSERT_EQ(pr.W0[2].rows, 4);
  ASSERT_EQ(pr.W0[2].cols, 12);
  // Empirical std of all init entries is close to init_scale / sqrt(fan_in).
  EXPECT_NEAR(std::sqrt(frob2(W1) / (12 * 16)), p.init_scale / 4.0, 0.2 * p.init_scale / 4.0);
}

TEST(Setup, FeaturesOnCleanInputs) {
  TrialParams p = base_params();
  p.teacher.decomposition = Decomposition::output;
  p.lambda = 0.0;  // features are kept anyway (the twin's feature loss)
  const TrialProblem pr = setup_trial(p, 1);
  ASSERT_EQ(pr.matched, std::vector<int>{1});
  const Matrix& H = pr.feature[1];
  ASSERT_EQ(H.rows, 12);
  ASSERT_EQ(H.cols, p.n_train);
  // output: features are W_t x on the CLEAN inputs (not on Xn).
  EXPECT_LT(rel_diff(top_rows(H, p.m), matmul(pr.Wt, pr.X)), 1e-13);
  EXPECT_EQ(rows_below_max(H, p.m), 0.0);
  EXPECT_GT(max_abs(sub(top_rows(H, p.m), matmul(pr.Wt, pr.Xn))), 0.01);
}

TEST(Setup, MatchedLayersChosenAndChecked) {
  TrialParams p = base_params();
  p.hidden = {12, 12, 12};
  EXPECT_EQ(setup_trial(p, 1).matched, (std::vector<int>{1, 2, 3}));
  p.matched_layers = {3, 1};
  const TrialProblem pr = setup_trial(p, 1);
  EXPECT_EQ(pr.matched, (std::vector<int>{1, 3}));
  EXPECT_EQ(pr.feature[2].rows, 0);
  EXPECT_EQ(pr.feature[3].rows, 12);
  p.matched_layers = {4};
  try {
    setup_trial(p, 1);
    FAIL() << "layer 4 of a 4-layer network is not hidden";
  } catch (const InputError& e) {
    EXPECT_EQ(e.path, "matched_layers");
  }
}

// Each decomposition reproduces W_t and has the features it claims, depth 2 and 3.
class Decompositions : public ::testing::TestWithParam<int> {};

TEST_P(Decompositions, ReproduceTheMapWithTheClaimedFeatures) {
  const int L = GetParam();
  TrialParams p = base_params();
  p.hidden = std::vector<int>(L - 1, 16);
  p.teacher.kind = TeacherKind::perturbed;  // a generic map of rank min(m, k)
  p.teacher.delta = 0.3;
  for (Decomposition dec : {Decomposition::balanced, Decomposition::rotated, Decomposition::scaled,
                            Decomposition::power, Decomposition::latent, Decomposition::input,
                            Decomposition::output}) {
    SCOPED_TRACE(static_cast<int>(dec));
    p.teacher.decomposition = dec;
    p.teacher.scale = 3.0;
    p.teacher.power = 0.8;
    const TrialProblem pr = setup_trial(p, 9);
    ASSERT_EQ(static_cast<int>(pr.teacher_W.size()), L + 1);
    for (int l = 1; l <= L; ++l) {
      EXPECT_EQ(pr.teacher_W[l].rows, pr.w[l]);
      EXPECT_EQ(pr.teacher_W[l].cols, pr.w[l - 1]);
    }
    EXPECT_LT(rel_diff(layer_product(pr.teacher_W), pr.Wt), 1e-10);
    // W_t itself is W* + the documented perturbation.
    const SVD f = svd(pr.Wt);
    EXPECT_EQ(f.rank(), std::min(p.m, p.k));
    const Matrix& W1 = pr.teacher_W[1];
    const Matrix& H1 = pr.feature[1];
    const int r = f.rank();
    switch (dec) {
      case Decomposition::latent:
        for (int l = 1; l < L; ++l) {
          EXPECT_LT(rel_diff(top_rows(pr.feature[l], p.k), matmul_tn(pr.U, pr.X)), 1e-12);
          EXPECT_EQ(rows_below_max(pr.feature[l], p.k), 0.0);
        }
        break;
      case Decomposition::input:
        EXPECT_LT(rel_diff(top_rows(H1, p.d), pr.X), 1e-14);
        break;
      case Decomposition::output:
        EXPECT_LT(rel_diff(top_rows(H1, p.m), matmul(pr.Wt, pr.X)), 1e-12);
        EXPECT_EQ(rows_below_max(H1, p.m), 0.0);
        break;
      case Decomposition::balanced:
      case Decomposition::scaled:
      case Decomposition::power: {
        // Feature metric W1^T W1 = Q S^(2e) Q^T with e = 1/L (balanced), p (power);
        // check against powers of Wt^T Wt = Q S^2 Q^T computed independently.
        const double c = dec == Decomposition::scaled ? 3.0 : 1.0;
        const double e = dec == Decomposition::power ? 0.8 : 1.0 / L;
        Matrix expect(p.d, p.d);
        for (int i = 0; i < r; ++i)
          for (int a = 0; a < p.d; ++a)
            for (int b = 0; b < p.d; ++b)
              expect(a, b) += c * c * std::pow(f.s[i], 2 * e) * f.Q(a, i) * f.Q(b, i);
        EXPECT_LT(rel_diff(matmul_tn(W1, W1), expect), 1e-10);
        EXPECT_EQ(rows_below_max(H1, r), 0.0);  // features live in the first r units
        // Every layer's nonzero singular values are s^(exponent) (times c at the ends).
        for (int l = 1; l <= L; ++l) {
          const double el = l == 1 ? e : (dec == Decomposition::power ? (1 - 0.8) / (L - 1) : 1.0 / L);
          const double cl = l == 1 ? c : (l == L ? 1 / c : 1.0);
          const SVD fl = svd(pr.teacher_W[l]);
          for (int i = 0; i < r; ++i) EXPECT_NEAR(fl.s[i], cl * std::pow(f.s[i], el), 1e-10);
          EXPECT_EQ(fl.rank(), r);
        }
        break;
      }
      case Decomposition::rotated: {
        // Same map and metric as balanced, features mixed by an orthogonal R_1.
        TrialParams pb = p;
        pb.teacher.decomposition = Decomposition::balanced;
        const TrialProblem bal = setup_trial(pb, 9);
        EXPECT_LT(rel_diff(matmul_tn(W1, W1), matmul_tn(bal.teacher_W[1], bal.teacher_W[1])), 1e-10);
        // R restricted to the balanced features' units: M = W1_rot W1_bal^+ (h x h).
        const Matrix M = matmul(W1, pinv(bal.teacher_W[1]));
        Matrix Ir(16, 16);
        for (int i = 0; i < r; ++i) Ir(i, i) = 1;
        EXPECT_LT(rel_diff(matmul_tn(M, M), Ir), 1e-10);
        EXPECT_LT(rel_diff(H1, matmul(M, bal.feature[1])), 1e-10);
        // Rotated features are dense: the units beyond r are used.
        EXPECT_GT(rows_below_max(H1, r), 1e-3);
        break;
      }
      case Decomposition::as_trained:
        break;
    }
  }
}
INSTANTIATE_TEST_SUITE_P(Depth, Decompositions, ::testing::Values(2, 3));

TEST(Setup, DecompositionTheWidthsCannotHoldIsAnInputError) {
  struct Case {
    Decomposition dec;
    std::vector<int> hidden;
    std::string need;
  };
  // d = 16, k = 6, m = 4, rank = 4 (oracle: rank min(m, k)).
  const std::vector<Case> cases = {
      {Decomposition::latent, {5}, ">= 6"},      {Decomposition::input, {15}, ">= 16"},
      {Decomposition::output, {3}, ">= 4"},      {Decomposition::balanced, {3}, ">= 4"},
      {Decomposition::rotated, {16, 3}, ">= 4"}, {Decomposition::latent, {16, 5, 16}, ">= 6"},
  };
  for (const Case& c : cases) {
    TrialParams p = base_params();
    p.hidden = c.hidden;
    p.teacher.decomposition = c.dec;
    try {
      setup_trial(p, 1);
      ADD_FAILURE() << "no error for decomposition " << static_cast<int>(c.dec);
    } catch (const InputError& e) {
      EXPECT_EQ(e.path, "teacher.decomposition");
      EXPECT_NE(std::string(e.what()).find(c.need), std::string::npos) << e.what();
    }
  }
  // The widths that are just enough work.
  TrialParams p = base_params();
  p.hidden = {4};
  p.teacher.decomposition = Decomposition::balanced;
  EXPECT_NO_THROW(setup_trial(p, 1));
  // as_trained needs a trained teacher.
  p.teacher.decomposition = Decomposition::as_trained;
  EXPECT_THROW(setup_trial(p, 1), InputError);
}

TEST(Setup, BayesRiskIsTheMinimumAtTheClosedForm) {
  for (SpectrumKind kind : {SpectrumKind::flat, SpectrumKind::power}) {
    TrialParams p = base_params();
    p.spectrum = kind;
    p.noise = 0.7;
    p.label_noise = 0.2;
    const TrialProblem pr = setup_trial(p, 21);
    const double s2 = p.noise * p.noise;
    // In the U basis, W_B = A diag(s / (s + sigma^2)) U^T, A = W* U.
    const Matrix A = matmul(pr.Wstar, pr.U);
    std::vector<double> shrink(p.k);
    double expect = p.m * 0.04;  // label noise m sigma_y^2
    for (int j = 0; j < p.k; ++j) {
      const double s = pr.spectrum[j];
      shrink[j] = s / (s + s2);
      for (int i = 0; i < p.m; ++i) expect += A(i, j) * A(i, j) * s * s2 / (s + s2);
    }
    const Matrix WB = matmul_nt(scale_cols(A, shrink), pr.U);
    EXPECT_NEAR(pr.bayes_risk, expect, 1e-12 * expect);
    EXPECT_NEAR(linear_risk(pr, WB), expect, 1e-12 * expect);
    // R(W_B + D) - R(W_B) = tr(D (Sigma_x + sigma^2 I) D^T) > 0 for every D.
    const Matrix K = add(matmul_nt(pr.Mhalf, pr.Mhalf), scaled(identity(p.d), s2));
    for (int t = 0; t < 20; ++t) {
      Matrix D(p.m, p.d);
      for (int i = 0; i < p.m * p.d; ++i) D.a[i] = 1e-2 * rng::normal(99, rng::Stream::G, t, i);
      const double gain = linear_risk(pr, add(WB, D)) - pr.bayes_risk;
      const Matrix DK = matmul(D, K);
      double want = 0;  // tr(D K D^T)
      for (int i = 0; i < p.m; ++i)
        for (int j = 0; j < p.d; ++j) want += DK(i, j) * D(i, j);
      EXPECT_GT(gain, 0.0);
      EXPECT_NEAR(gain, want, 1e-8 * want + 1e-13);
    }
  }
}

// linear_risk is MODEL.md's formula, and it is the trainer's: the test risks a run
// stores equal linear_risk of the returned layers bit for bit (one implementation,
// tm::linear_risk; end_to_end multiplies the layers in the trainer's order).
TEST(Setup, LinearRiskIsTheFormulaAndTheTrainersTestRiskBitForBit) {
  for (const std::vector<int>& hidden : {std::vector<int>{12}, std::vector<int>{12, 7}}) {
    TrialParams p = base_params();
    p.hidden = hidden;
    p.label_noise = 0.2;
    p.lambda = 0.5;
    p.init_scale = 0.3;
    const TrialProblem pr = setup_trial(p, 8);
    for (int prec : {64, 32}) {
      std::vector<Matrix> Ws, Wt;
      const TrialResult r = prec == 64 ? train_trial<double>(pr, &Ws, &Wt) : train_trial<float>(pr, &Ws, &Wt);
      const Matrix We = end_to_end(Ws);
      EXPECT_LT(rel_diff(We, layer_product(Ws)), 1e-13);
      const double R = linear_risk(pr, We), Rb = linear_risk(pr, end_to_end(Wt));
      const double formula = frob2(matmul(sub(We, pr.Wstar), pr.Mhalf)) + p.noise * p.noise * frob2(We) +
                             p.m * p.label_noise * p.label_noise;
      EXPECT_NEAR(R, formula, 1e-13 * formula);
      EXPECT_EQ(std::memcmp(&R, &r.test_risk, sizeof R), 0) << prec << ": " << R << " vs " << r.test_risk;
      EXPECT_EQ(std::memcmp(&Rb, &r.baseline_test_risk, sizeof Rb), 0)
          << prec << ": " << Rb << " vs " << r.baseline_test_risk;
    }
  }
}

TEST(Setup, InterpolationRiskIsTheRiskOfYXnPlus) {
  for (int N : {6, 10, 40}) {  // d = 16: under- and over-determined
    TrialParams p = base_params();
    p.n_train = N;
    const TrialProblem pr = setup_trial(p, 4);
    Matrix We;
    if (N <= p.d) {  // minimum-norm interpolant Y (Xn^T Xn)^-1 Xn^T
      We = matmul(pr.Y, solve_spd(matmul_tn(pr.Xn, pr.Xn), transpose(pr.Xn)));
      EXPECT_LT(rel_diff(matmul(We, pr.Xn), pr.Y), 1e-10);  // it interpolates
    } else {  // least squares Y Xn^T (Xn Xn^T)^-1
      We = transpose(solve_spd(matmul_nt(pr.Xn, pr.Xn), matmul_nt(pr.Xn, pr.Y)));
    }
    const double expect = linear_risk(pr, We);
    EXPECT_NEAR(pr.interp_risk, expect, 1e-9 * expect) << "N = " << N;
    EXPECT_GE(pr.interp_risk, pr.bayes_risk);
  }
}

TEST(Setup, PerturbedTeacherHasRelativeCleanErrorDelta) {
  TrialParams p = base_params();
  p.teacher.kind = TeacherKind::perturbed;
  p.teacher.delta = 0.25;
  const TrialProblem pr = setup_trial(p, 8);
  // Flat spectrum: Mhalf = U, so clean risk = delta^2 ||W* U||_F^2 exactly.
  const double ref = frob2(matmul(pr.Wstar, pr.Mhalf));
  EXPECT_NEAR(std::sqrt(pr.teacher_clean_risk / ref), 0.25, 1e-12);
  // Independently: ||(W_t - W*) U||_F = delta ||W* U||_F, and W_t - W* lies in span U.
  const Matrix Dt = sub(pr.Wt, pr.Wstar);
  EXPECT_NEAR(frob(matmul(Dt, pr.U)), 0.25 * frob(matmul(pr.Wstar, pr.U)), 1e-12);
  EXPECT_LT(rel_diff(matmul(matmul(Dt, pr.U), transpose(pr.U)), Dt), 1e-13);
  // Any spectrum: the clean risk scales as delta^2 (same G from the teacher key).
  p.spectrum = SpectrumKind::power;
  const double r1 = setup_trial(p, 8).teacher_clean_risk;
  p.teacher.delta = 0.5;
  const double r2 = setup_trial(p, 8).teacher_clean_risk;
  EXPECT_NEAR(r2 / r1, 4.0, 1e-10);
  // The oracle has zero clean risk.
  p.teacher.kind = TeacherKind::oracle;
  EXPECT_EQ(setup_trial(p, 8).teacher_clean_risk, 0.0);
}

TEST(Setup, DeterministicAndPairedAcrossLambdaNoiseTeacher) {
  TrialParams p = base_params();
  p.teacher.decomposition = Decomposition::rotated;
  const TrialProblem a = setup_trial(p, 77), b = setup_trial(p, 77);
  EXPECT_TRUE(same_bits(a.X, b.X) && same_bits(a.Xn, b.Xn) && same_bits(a.Y, b.Y));
  EXPECT_TRUE(same_bits(a.feature[1], b.feature[1]));
  EXPECT_TRUE(same_bits(a.W0[1], b.W0[1]) && same_bits(a.W0[2], b.W0[2]));
  EXPECT_TRUE(same_bits(a.teacher_W[1], b.teacher_W[1]));
  EXPECT_EQ(a.bayes_risk, b.bayes_risk);
  EXPECT_EQ(a.interp_risk, b.interp_risk);
  // Another sweep seed: other data.
  EXPECT_FALSE(same_bits(a.X, setup_trial(p, 78).X));

  TrialParams q = p;  // lambda, noise, teacher and optimiser settings changed
  q.lambda = 0.0;
  q.noise = 1.3;
  q.lr = 0.2;
  q.steps = 17;
  q.teacher.kind = TeacherKind::perturbed;
  q.teacher.decomposition = Decomposition::latent;
  const TrialProblem c = setup_trial(q, 77);
  EXPECT_TRUE(same_bits(a.X, c.X));
  EXPECT_TRUE(same_bits(a.U, c.U));
  EXPECT_TRUE(same_bits(a.Wstar, c.Wstar));
  EXPECT_TRUE(same_bits(a.Y, c.Y));
  EXPECT_TRUE(same_bits(a.W0[1], c.W0[1]) && same_bits(a.W0[2], c.W0[2]));
  // The same noise draws E, scaled by each trial's sigma.
  EXPECT_LT(rel_diff(scaled(sub(c.Xn, c.X), 1 / 1.3), scaled(sub(a.Xn, a.X), 1 / 0.5)), 1e-13);
}

TEST(Setup, NonlinearTeacherFeaturesAndTestSet) {
  TrialParams p = base_params();
  p.activation = Activation::tanh;
  p.n_test = 500;
  const TrialProblem pr = setup_trial(p, 2);
  // Layers are the linear decomposition's; features are tanh of them on clean X.
  Matrix H = matmul(pr.teacher_W[1], pr.X);
  for (double& x : H.a) x = std::tanh(x);
  EXPECT_LT(rel_diff(pr.feature[1], H), 1e-14);
  EXPECT_LT(rel_diff(layer_product(pr.teacher_W), pr.Wstar), 1e-10);
  // Monte Carlo test set: noisy inputs, clean linear targets.
  ASSERT_EQ(pr.Xtest.cols, 500);
  ASSERT_EQ(pr.Ytest.cols, 500);
  const Matrix Xc = matmul(pr.U, test_latents(pr, p, 2));  // the documented test_z draws
  EXPECT_LT(rel_diff(pr.Ytest, matmul(pr.Wstar, Xc)), 1e-12);
  // Input noise: variance sigma^2 per coordinate (off the signal subspace, pure noise).
  EXPECT_NEAR(frob2(sub(pr.Xtest, Xc)) / (500.0 * p.d), p.noise * p.noise, 0.1 * p.noise * p.noise);
  const Matrix Xp = matmul(pr.U, matmul_tn(pr.U, pr.Xtest));
  const double off = frob2(sub(pr.Xtest, Xp)) / (500.0 * (p.d - p.k));
  EXPECT_NEAR(off, p.noise * p.noise, 0.1 * p.noise * p.noise);
  // The tanh teacher is not W*: a positive Monte Carlo clean risk, below that of the zero map.
  EXPECT_GT(pr.teacher_clean_risk, 0.0);
  EXPECT_LT(pr.teacher_clean_risk, frob2(pr.Ytest) / 500);
  // The linear problem has no test set.
  EXPECT_EQ(setup_trial(base_params(), 2).Xtest.cols, 0);
}

TEST(Setup, NonlinearTarget) {
  TrialParams p = base_params();
  p.target = Target::nonlinear;
  EXPECT_THROW(setup_trial(p, 1), InputError);  // the oracle needs a linear W*
  p.teacher.kind = TeacherKind::trained;
  p.teacher.steps = 300;
  p.teacher.lr = 0.1;
  p.teacher.n_train = 64;
  const TrialProblem pr = setup_trial(p, 1);
  EXPECT_EQ(pr.Wstar.rows, 0);
  EXPECT_TRUE(std::isnan(pr.bayes_risk));
  ASSERT_EQ(pr.Xtest.cols, p.n_test);
  // Targets are A2 tanh(A1 z), A1 (k x k) and A2 (m x k) with entries N(0, 1/k) from
  // the data key's target_a1 / target_a2 streams.
  const TrialKeys keys = trial_keys(1, p);
  Matrix A1(p.k, p.k), A2(p.m, p.k);
  for (int j = 0; j < p.k; ++j) {
    for (int i = 0; i < p.k; ++i)
      A1(i, j) = rng::normal(keys.data, rng::Stream::target_a1, 0, j * p.k + i) / std::sqrt(6.0);
    for (int i = 0; i < p.m; ++i)
      A2(i, j) = rng::normal(keys.data, rng::Stream::target_a2, 0, j * p.m + i) / std::sqrt(6.0);
  }
  const Matrix Z = test_latents(pr, p, 1);
  Matrix T = matmul(A1, Z);
  for (double& x : T.a) x = std::tanh(x);
  EXPECT_LT(rel_diff(pr.Ytest, matmul(A2, T)), 1e-13);
  // Not linear: the best linear fit of the targets on z leaves a residual.
  const Matrix Wls = matmul(pr.Ytest, pinv(Z));
  EXPECT_GT(frob2(sub(matmul(Wls, Z), pr.Ytest)), 1e-3 * frob2(pr.Ytest));
  // interp_risk is the Monte Carlo risk of Y Xn^+ (by QR; the SVD's pinv agrees).
  EXPECT_NEAR(pr.interp_risk, linear_risk(pr, matmul(pr.Y, pinv(pr.Xn))), 1e-12 * pr.interp_risk);
  EXPECT_EQ(pr.interp_risk, linear_risk(pr, times_pinv(pr.Y, pr.Xn)));
  EXPECT_TRUE(std::isfinite(pr.teacher_clean_risk));
}

TEST(Setup, TrainedTeacher) {
  TrialParams p = base_params();
  p.teacher.kind = TeacherKind::trained;
  p.teacher.n_train = 128;
  p.teacher.steps = 3000;
  p.teacher.lr = 0.1;
  p.label_noise = 0.1;  // its labels are noisy too: it cannot be exact
  p.teacher.decomposition = Decomposition::as_trained;
  const TrialProblem pr = setup_trial(p, 6);
  // Least squares on 128 noisy samples in k = 6 dimensions: clean risk about
  // sigma_y^2 m k / N_t = 0.002, far below the zero map's ||W* Mhalf||^2 (about m = 4).
  const double zero_map = frob2(matmul(pr.Wstar, pr.Mhalf));
  EXPECT_GT(pr.teacher_clean_risk, 1e-5);
  EXPECT_LT(pr.teacher_clean_risk, 0.01);
  EXPECT_GT(zero_map, 1.0);
  EXPECT_LT(rel_diff(layer_product(pr.teacher_W), pr.Wt), 1e-14);
  // Re-factorised: the same map (on clean inputs) with the balanced layers.
  p.teacher.decomposition = Decomposition::balanced;
  p.hidden = {16};
  const TrialProblem b = setup_trial(p, 6);
  EXPECT_LT(rel_diff(matmul(layer_product(b.teacher_W), b.U), matmul(b.Wt, b.U)), 1e-10);
  // (Other widths give another teacher key, so other teacher data: only as good.)
  EXPECT_LT(b.teacher_clean_risk, 0.01);
  // A nonlinear trained teacher can only be used as trained.
  p.activation = Activation::relu;
  EXPECT_THROW(setup_trial(p, 6), InputError);
}

TEST(Checkpoints, LogSpacedWithEnds) {
  EXPECT_EQ(checkpoint_steps(100000, 7), (std::vector<int64_t>{0, 1, 10, 100, 1000, 10000, 100000}));
  EXPECT_EQ(checkpoint_steps(0, 5), (std::vector<int64_t>{0}));
  EXPECT_EQ(checkpoint_steps(3, 10), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(checkpoint_steps(50, 2), (std::vector<int64_t>{0, 50}));
  for (int64_t T : {1, 2, 5, 17, 100, 2000, 40000}) {
    for (int count : {2, 3, 8, 32, 64, 200}) {
      const std::vector<int64_t> s = checkpoint_steps(T, count);
      ASSERT_EQ(static_cast<int64_t>(s.size()), std::min<int64_t>(count, T + 1)) << T << " " << count;
      EXPECT_EQ(s.front(), 0);
      EXPECT_EQ(s.back(), T);
      for (size_t i = 1; i < s.size(); ++i) EXPECT_GT(s[i], s[i - 1]);
    }
  }
  // Log spacing: for T = 2000, 32 points, consecutive ratios above step 10 are near
  // 2000^(1/30) = 1.288.
  const std::vector<int64_t> s = checkpoint_steps(2000, 32);
  for (size_t i = 1; i < s.size(); ++i)
    if (s[i - 1] >= 50) {
      EXPECT_NEAR(double(s[i]) / s[i - 1], std::pow(2000.0, 1.0 / 30), 0.03);
    }
}

// kernels/linalg.hpp on its own: factorisations checked by their defining identities.
// matmul_nt runs eight dot products side by side and mirrors A A^T; each
// element must still be the one chain s += A(i, p) * B(j, p) in order of p
// (set-up's and the moments' bits rest on it). Shapes with every remainder of
// the 2 x 4 blocking, and A A^T of odd sizes.
TEST(Linalg, MatmulNtIsOneChainPerElementInOrder) {
  std::mt19937 g(3);
  std::normal_distribution<double> nd;
  auto random = [&](int r, int c) {
    Matrix M(r, c);
    for (double& x : M.a) x = nd(g);
    return M;
  };
  auto chain = [](const Matrix& A, const Matrix& B) {
    Matrix C(A.rows, B.rows);
    for (int i = 0; i < A.rows; ++i)
      for (int j = 0; j < B.rows; ++j) {
        double s = 0;
        for (int p = 0; p < A.cols; ++p) s += A(i, p) * B(j, p);
        C(i, j) = s;
      }
    return C;
  };
  for (int n : {1, 2, 3, 5, 8})
    for (int m : {1, 3, 4, 6, 9})
      for (int K : {1, 7, 64}) {
        const Matrix A = random(n, K), B = random(m, K);
        EXPECT_TRUE(same_bits(linalg::matmul_nt(A, B), chain(A, B))) << n << "x" << m << "x" << K;
        EXPECT_TRUE(same_bits(linalg::matmul_nt(A, A), chain(A, A))) << n << "x" << K << " A A^T";
        const Matrix A2 = A;  // equal values, another matrix: the general path
        EXPECT_TRUE(same_bits(linalg::matmul_nt(A, A2), chain(A, A))) << n << "x" << K;
      }
}

// The textbook Householder QR, written plainly: v^T M summed row by row into
// a vector, every reflection over all columns of Q, vn recomputed. The
// library's QR (register-blocked sums, zero columns of Q skipped, vn kept)
// must give its bits exactly: every trial's U, interp_risk and rotations
// come from it, so a change of bits would change every results file.
std::pair<Matrix, Matrix> textbook_qr(const Matrix& A) {
  const int n = A.rows, p = A.cols;
  Matrix Rw = A, Q(n, p);
  auto reflect = [](Matrix& M, const std::vector<double>& v, double vn, int j, int c0) {
    std::vector<double> s(M.cols, 0.0);
    for (int i = j; i < M.rows; ++i)
      for (int c = c0; c < M.cols; ++c) s[c] += v[i - j] * M(i, c);
    for (int i = j; i < M.rows; ++i) {
      const double f = 2.0 / vn * v[i - j];
      for (int c = c0; c < M.cols; ++c) M(i, c) -= f * s[c];
    }
  };
  std::vector<std::vector<double>> V;
  for (int j = 0; j < p; ++j) {
    double norm = 0;
    for (int i = j; i < n; ++i) norm += Rw(i, j) * Rw(i, j);
    norm = std::sqrt(norm);
    std::vector<double> v(n - j, 0.0);
    if (norm > 0) {
      const double alpha = Rw(j, j) >= 0 ? -norm : norm;
      for (int i = j; i < n; ++i) v[i - j] = Rw(i, j);
      v[0] -= alpha;
      double vn = 0;
      for (double x : v) vn += x * x;
      if (vn > 0) reflect(Rw, v, vn, j, j);
    }
    V.push_back(v);
  }
  for (int j = 0; j < p; ++j) Q(j, j) = 1.0;
  for (int j = p - 1; j >= 0; --j) {
    double vn = 0;
    for (double x : V[j]) vn += x * x;
    if (vn > 0) reflect(Q, V[j], vn, j, 0);
  }
  Matrix R(p, p);
  for (int j = 0; j < p; ++j) {
    if (Rw(j, j) < 0) {
      for (int i = 0; i < n; ++i) Q(i, j) = -Q(i, j);
      for (int c = 0; c < p; ++c) Rw(j, c) = -Rw(j, c);
    }
    for (int c = j; c < p; ++c) R(j, c) = Rw(j, c);
  }
  return {Q, R};
}

TEST(Linalg, QrIsTheTextbookHouseholderBitForBit) {
  uint32_t sub = 40;
  for (auto [r, c] : {std::pair{128, 64}, {64, 16}, {9, 5}, {13, 13}, {20, 11}, {33, 17}}) {
    Matrix A(r, c);
    for (int i = 0; i < r * c; ++i) A.a[i] = rng::normal(5, rng::Stream::G, sub, i);
    ++sub;
    if (c > 3)
      for (int i = 0; i < r; ++i) A(i, 2) = 0.0;  // a zero column: an identity reflection
    Matrix R;
    const Matrix Q = qr_orthonormal(A, &R);
    const auto [Qt, Rt] = textbook_qr(A);
    EXPECT_TRUE(same_bits(Q, Qt)) << r << "x" << c;
    EXPECT_TRUE(same_bits(R, Rt)) << r << "x" << c;
    EXPECT_LT(rel_diff(matmul(Q, R), A), 1e-13) << r << "x" << c;
  }
}

TEST(Linalg, QrSvdPinvCholesky) {
  auto random = [](int r, int c, uint32_t sub) {
    Matrix M(r, c);
    for (int i = 0; i < r * c; ++i) M.a[i] = rng::normal(5, rng::Stream::G, sub, i);
    return M;
  };
  // QR: Q^T Q = I, Q R = A, R upper triangular with a non-negative diagonal.
  const Matrix A = random(9, 5, 1);
  Matrix R;
  const Matrix Q = qr_orthonormal(A, &R);
  EXPECT_LT(rel_diff(matmul_tn(Q, Q), identity(5)), 1e-14);
  EXPECT_LT(rel_diff(matmul(Q, R), A), 1e-14);
  for (int i = 0; i < 5; ++i) {
    EXPECT_GE(R(i, i), 0.0);
    for (int j = 0; j < i; ++j) EXPECT_EQ(R(i, j), 0.0);
  }
  // SVD of tall, wide and rank-deficient (rank 3) matrices.
  const Matrix low = matmul(random(8, 3, 2), random(3, 6, 3));
  const std::vector<Matrix> cases{A, transpose(A), low};
  for (size_t t = 0; t < cases.size(); ++t) {
    const Matrix& M = cases[t];
    const SVD f = svd(M);
    const int r = f.rank();
    EXPECT_EQ(r, t == 2 ? 3 : 5);
    for (size_t i = 1; i < f.s.size(); ++i) EXPECT_GE(f.s[i - 1], f.s[i]);
    Matrix Pr(M.rows, r), Qr(M.cols, r);
    for (int c = 0; c < r; ++c) {
      for (int i = 0; i < M.rows; ++i) Pr(i, c) = f.P(i, c) * f.s[c];
      for (int i = 0; i < M.cols; ++i) Qr(i, c) = f.Q(i, c);
    }
    EXPECT_LT(rel_diff(matmul_nt(Pr, Qr), M), 1e-13);
    EXPECT_LT(rel_diff(matmul_tn(Qr, Qr), identity(r)), 1e-13);
    // Penrose conditions.
    const Matrix X = pinv(M);
    EXPECT_LT(rel_diff(matmul(M, matmul(X, M)), M), 1e-12);
    EXPECT_LT(rel_diff(matmul(X, matmul(M, X)), X), 1e-12);
    const Matrix MX = matmul(M, X), XM = matmul(X, M);
    EXPECT_LT(rel_diff(MX, transpose(MX)), 1e-12);
    EXPECT_LT(rel_diff(XM, transpose(XM)), 1e-12);
  }
  // Y X^+ by QR (interp_risk's product) equals Y pinv(X) from the SVD, for wide,
  // square and tall X; near rank-deficient X takes pinv itself (the same bits).
  for (const auto& [r, n] : std::vector<std::pair<int, int>>{{64, 128}, {16, 16}, {12, 7}, {7, 12}, {3, 40}}) {
    SCOPED_TRACE(std::to_string(r) + " x " + std::to_string(n));
    const Matrix X = random(r, n, 10 + r), Y = random(4, n, 20 + n);
    const Matrix W = times_pinv(Y, X);
    EXPECT_LT(rel_diff(W, matmul(Y, pinv(X))), 1e-12);
    if (n > r)  // least squares: the residual is orthogonal to the rows of X
      EXPECT_LT(frob2(matmul_nt(sub(matmul(W, X), Y), X)), 1e-20 * frob2(Y) * frob2(X));
    else        // interpolation: W X = Y
      EXPECT_LT(rel_diff(matmul(W, X), Y), 1e-12);
  }
  const Matrix deficient = matmul(random(6, 2, 30), random(2, 9, 31));  // rank 2
  const Matrix Yd = random(3, 9, 32);
  const Matrix Wd = times_pinv(Yd, deficient), Wp = matmul(Yd, pinv(deficient));
  EXPECT_EQ(Wd.a, Wp.a);
  // Cholesky solve of an SPD system.
  const Matrix S = add(matmul_tn(A, A), identity(5));
  const Matrix B = random(5, 2, 4);
  EXPECT_LT(rel_diff(matmul(S, solve_spd(S, B)), B), 1e-13);
  EXPECT_THROW(cholesky(scaled(identity(3), -1.0)), std::runtime_error);
}

// ------------------------------------------------------- teacher reuse --

namespace {

TrialParams trained_teacher_params() {
  TrialParams p = base_params();
  p.teacher.kind = TeacherKind::trained;
  p.teacher.n_train = 32;
  p.teacher.steps = 200;
  p.teacher.lr = 0.1;
  p.teacher.decomposition = Decomposition::as_trained;
  return p;
}

// What a trial takes from its teacher: the layers, the map, the features and
// the teacher's own risk.
void expect_same_teacher(const TrialProblem& a, const TrialProblem& b, const std::string& what) {
  ASSERT_EQ(a.teacher_W.size(), b.teacher_W.size()) << what;
  for (size_t l = 1; l < a.teacher_W.size(); ++l) EXPECT_TRUE(same_bits(a.teacher_W[l], b.teacher_W[l])) << what;
  EXPECT_TRUE(same_bits(a.Wt, b.Wt)) << what;
  for (int l : a.matched) EXPECT_TRUE(same_bits(a.feature[l], b.feature[l])) << what;
  EXPECT_EQ(a.teacher_clean_risk, b.teacher_clean_risk) << what;
}

}  // namespace

TEST(TeacherCache, TrialsThatShareATeacherTrainItOnceAndGetItsBits) {
  const TrialParams base = trained_teacher_params();
  auto variant = [&](auto change) {
    TrialParams p = base;
    change(p);
    return p;
  };
  // Student-side changes: the same teacher training.
  const std::vector<std::pair<std::string, TrialParams>> same{
      {"noise", variant([](TrialParams& p) { p.noise = 1.5; })},
      {"lambda", variant([](TrialParams& p) { p.lambda = 3; })},
      {"lr", variant([](TrialParams& p) { p.lr = 0.01; })},
      {"steps", variant([](TrialParams& p) { p.steps = 7; })},
      {"init_scale", variant([](TrialParams& p) { p.init_scale = 0.5; })},
      {"decomposition", variant([](TrialParams& p) { p.teacher.decomposition = Decomposition::balanced; })},
      {"path", variant([](TrialParams& p) { p.path = TrainPath::moment; })}};
  // Teacher-side changes: another training each.
  const std::vector<std::pair<std::string, TrialParams>> other{
      {"seed", variant([](TrialParams& p) { p.seed = 4; })},
      {"teacher.steps", variant([](TrialParams& p) { p.teacher.steps = 201; })},
      {"teacher.lr", variant([](TrialParams& p) { p.teacher.lr = 0.09; })},
      {"teacher.n_train", variant([](TrialParams& p) { p.teacher.n_train = 33; })},
      {"label_noise", variant([](TrialParams& p) { p.label_noise = 0.1; })},
      {"hidden", variant([](TrialParams& p) { p.hidden = {13}; })},
      {"activation", variant([](TrialParams& p) { p.activation = Activation::tanh; })},
      {"spectrum", variant([](TrialParams& p) { p.spectrum = SpectrumKind::power; })},
      {"k", variant([](TrialParams& p) { p.k = 5; })}};

  // Each trial set up on its own (no reuse) ...
  reset_teacher_cache(0);
  const TrialProblem first_alone = setup_trial(base, 9);
  std::vector<TrialProblem> same_alone, other_alone;
  for (const auto& [what, p] : same) same_alone.push_back(setup_trial(p, 9));
  for (const auto& [what, p] : other) other_alone.push_back(setup_trial(p, 9));
  EXPECT_EQ(teacher_cache_stats().reused, 0);
  EXPECT_EQ(teacher_cache_stats().trained, static_cast<long long>(1 + same.size() + other.size()));
  EXPECT_EQ(teacher_cache_stats().bytes, 0u);
  EXPECT_GT(teacher_cache_stats().train_seconds, 0.0);

  // ... and with reuse: the same bits, one training for the first group.
  reset_teacher_cache(size_t{64} << 20);
  EXPECT_EQ(teacher_cache_stats().train_seconds, 0.0);
  expect_same_teacher(setup_trial(base, 9), first_alone, "first");
  for (size_t i = 0; i < same.size(); ++i) {
    expect_same_teacher(setup_trial(same[i].second, 9), same_alone[i], same[i].first);
    EXPECT_EQ(teacher_cache_stats().trained, 1) << same[i].first;
  }
  EXPECT_EQ(teacher_cache_stats().reused, static_cast<long long>(same.size()));
  for (size_t i = 0; i < other.size(); ++i) {
    const long long before = teacher_cache_stats().trained;
    expect_same_teacher(setup_trial(other[i].second, 9), other_alone[i], other[i].first);
    EXPECT_EQ(teacher_cache_stats().trained, before + 1) << other[i].first << " must not reuse";
  }
  // The sweep seed enters too.
  const long long before = teacher_cache_stats().trained;
  setup_trial(base, 10);
  EXPECT_EQ(teacher_cache_stats().trained, before + 1);
  EXPECT_GT(teacher_cache_stats().bytes, 0u);
  reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
}

TEST(TeacherCache, BudgetDropsTheLeastRecentlyUsed) {
  TrialParams a = trained_teacher_params(), b = a, c = a;
  b.seed = 11;
  c.seed = 12;
  reset_teacher_cache(size_t{64} << 20);
  const TrialProblem a0 = setup_trial(a, 1);
  const size_t one = teacher_cache_stats().bytes;
  ASSERT_GT(one, 0u);
  // Room for two teachers (all three are the same size).
  reset_teacher_cache(2 * one + one / 2);
  setup_trial(a, 1);  // trained
  setup_trial(b, 1);  // trained
  setup_trial(a, 1);  // reused: now a is the most recent
  setup_trial(c, 1);  // trained; b goes
  EXPECT_EQ(teacher_cache_stats().evicted, 1);
  expect_same_teacher(setup_trial(a, 1), a0, "a after an eviction");  // reused
  setup_trial(b, 1);  // trained again
  const TeacherCacheStats st = teacher_cache_stats();
  EXPECT_EQ(st.trained, 4);
  EXPECT_EQ(st.reused, 2);
  EXPECT_EQ(st.evicted, 2);
  EXPECT_LE(st.bytes, 2 * one + one / 2);
  // A budget below one teacher keeps none.
  reset_teacher_cache(one / 2);
  expect_same_teacher(setup_trial(a, 1), a0, "budget below one teacher");
  setup_trial(a, 1);
  EXPECT_EQ(teacher_cache_stats().trained, 2);
  EXPECT_EQ(teacher_cache_stats().bytes, 0u);
  reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
}

TEST(TeacherCache, ThreadsSettingUpTheSameTeacherTrainItOnce) {
  const TrialParams p = trained_teacher_params();
  reset_teacher_cache(0);
  const TrialProblem alone = setup_trial(p, 2);
  reset_teacher_cache(size_t{64} << 20);
  constexpr int kThreads = 8;
  std::vector<TrialProblem> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      TrialParams q = p;
      q.lambda = 0.5 * t;  // other trials, one teacher
      got[t] = setup_trial(q, 2);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(teacher_cache_stats().trained, 1);
  EXPECT_EQ(teacher_cache_stats().reused, kThreads - 1);
  for (int t = 0; t < kThreads; ++t) expect_same_teacher(got[t], alone, "thread " + std::to_string(t));
  reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
}

TEST(TeacherCache, ADivergedTeacherFailsEveryTrialThatSharesIt) {
  TrialParams p = trained_teacher_params();
  p.teacher.lr = 1e3;
  reset_teacher_cache(size_t{64} << 20);
  for (double lambda : {0.0, 1.0}) {
    p.lambda = lambda;
    try {
      setup_trial(p, 3);
      ADD_FAILURE() << "a diverging teacher must fail the trial";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("the trained teacher diverged (teacher.lr = 1000"), std::string::npos)
          << e.what();
    }
  }
  EXPECT_EQ(teacher_cache_stats().trained, 1);
  EXPECT_EQ(teacher_cache_stats().reused, 1);
  reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
}

// A backend that trains teachers itself (the CUDA backend, on the device)
// gets from teachers_to_train exactly the training set-up would run, and what
// it hands back with put_trained_teacher is what set-up then uses: pinned
// past the budget until unpinned, counted apart, skipped by teachers_to_train
// while held; a diverged one fails the trials as set-up's own would.
TEST(TeacherCache, TeachersTrainedElsewhereAreSetUpsOwn) {
  TrialParams a = trained_teacher_params();
  a.teacher.n_train = 4;  // few samples: the data path is cheaper
  TrialParams a1 = a, b = a, lin = a, tanh_bad = a, bad_k = a;
  a1.noise = 1.1;  // shares a's teacher
  b.seed = 8;
  lin.seed = 9;
  lin.teacher.decomposition = Decomposition::balanced;
  lin.teacher.n_train = 400;  // a moment step is cheaper: moments
  tanh_bad.seed = 10;
  tanh_bad.activation = Activation::tanh;
  tanh_bad.teacher.decomposition = Decomposition::balanced;  // set-up rejects it: not trained
  bad_k.seed = 11;
  bad_k.k = bad_k.d + 1;  // set-up rejects it: not trained
  const std::vector<TrialParams> trials{a, a1, tanh_bad, b, bad_k, lin};

  reset_teacher_cache(0);
  std::vector<TrialProblem> alone;
  for (size_t i : {0u, 3u, 5u}) alone.push_back(setup_trial(trials[i], 9));

  reset_teacher_cache(1);  // a budget of one byte: only the pins keep them
  std::vector<TeacherTraining> tt = teachers_to_train(trials, 0, trials.size(), 9, 2);
  ASSERT_EQ(tt.size(), 3u);
  EXPECT_EQ(tt[0].recipe, trained_teacher_recipe(a, 9));
  EXPECT_EQ(tt[1].recipe, trained_teacher_recipe(b, 9));
  EXPECT_EQ(tt[2].recipe, trained_teacher_recipe(lin, 9));
  EXPECT_FALSE(tt[0].moment);
  EXPECT_TRUE(tt[2].moment);
  std::vector<std::string> pinned;
  for (TeacherTraining& t : tt) {
    std::vector<Matrix> W = t.W0;
    const bool ok = train_plain_f64(W, t.act, t.X, t.Y, t.steps, t.lr, t.moment ? PlainPath::moment : PlainPath::data);
    ASSERT_TRUE(ok);
    put_trained_teacher(t.recipe, std::move(W), ok);
    pinned.push_back(t.recipe);
  }
  EXPECT_TRUE(teachers_to_train(trials, 0, trials.size(), 9, 1).empty()) << "held teachers are not trained again";
  EXPECT_EQ(teacher_cache_stats().elsewhere, 3);
  EXPECT_GT(teacher_cache_stats().bytes, 0u);
  TrialParams c = a;
  c.seed = 12;
  setup_trial(c, 9);  // trained by set-up, then dropped for the budget: the pinned ones stay
  EXPECT_EQ(teacher_cache_stats().trained, 1);
  EXPECT_EQ(teacher_cache_stats().evicted, 1);
  expect_same_teacher(setup_trial(a, 9), alone[0], "a");
  expect_same_teacher(setup_trial(a1, 9), alone[0], "a1");
  expect_same_teacher(setup_trial(b, 9), alone[1], "b");
  expect_same_teacher(setup_trial(lin, 9), alone[2], "lin (moments)");
  EXPECT_EQ(teacher_cache_stats().trained, 1) << "set-up trained a teacher it was handed";
  EXPECT_EQ(teacher_cache_stats().reused, 4);
  unpin_teachers(pinned);
  EXPECT_EQ(teacher_cache_stats().bytes, 0u) << "unpinned teachers stay past the budget";
  setup_trial(a, 9);
  EXPECT_EQ(teacher_cache_stats().trained, 2);

  // A teacher handed back as diverged fails its trials with set-up's message.
  reset_teacher_cache(size_t{64} << 20);
  tt = teachers_to_train(trials, 0, 1, 9, 1);
  ASSERT_EQ(tt.size(), 1u);
  put_trained_teacher(tt[0].recipe, tt[0].W0, false);
  EXPECT_THROW(
      {
        try {
          setup_trial(a1, 9);
        } catch (const std::runtime_error& e) {
          EXPECT_NE(std::string(e.what()).find("the trained teacher diverged"), std::string::npos) << e.what();
          throw;
        }
      },
      std::runtime_error);
  unpin_teachers({tt[0].recipe});
  reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
}

TEST(TeacherCache, SetUpOrderStartsEachTeacherFirst) {
  const TrialParams a = trained_teacher_params();
  TrialParams oracle = base_params(), a1 = a, b = a, b1 = a, a2 = a;
  a1.lambda = 2;       // shares a's teacher
  b.seed = 8;          // another teacher
  b1 = b;
  b1.noise = 0.9;      // shares b's
  a2.teacher.decomposition = Decomposition::balanced;  // shares a's
  const std::vector<TrialParams> trials{oracle, a, a1, b, oracle, b1, a2};
  EXPECT_EQ(setup_order(trials, 0, trials.size(), 1), (std::vector<size_t>{0, 1, 3, 4, 2, 5, 6}));
  // A part of the batch: only its own trials, and a teacher first seen there
  // counts as first.
  EXPECT_EQ(setup_order(trials, 2, 6, 1), (std::vector<size_t>{2, 3, 4, 5}));
  EXPECT_EQ(setup_order(trials, 5, 7, 1), (std::vector<size_t>{5, 6}));
  EXPECT_TRUE(setup_order(trials, 3, 3, 1).empty());
  // Another sweep seed: the same sharing.
  EXPECT_EQ(setup_order(trials, 0, trials.size(), 2), (std::vector<size_t>{0, 1, 3, 4, 2, 5, 6}));
  // Set up through a SetupShare, a trial that copies an earlier one's
  // problem goes later too: the second oracle trial (4) is the first one's.
  // In a part of the batch, a copy of a trial before the part is later too.
  reset_setup_cache(size_t{64} << 20);
  const SetupShare share(trials, 0, trials.size(), 1);
  EXPECT_EQ(setup_order(trials, 0, trials.size(), 1, &share), (std::vector<size_t>{0, 1, 3, 2, 4, 5, 6}));
  EXPECT_EQ(setup_order(trials, 2, 6, 1, &share), (std::vector<size_t>{3, 2, 4, 5}));
  // No trained teacher, lambda the fastest axis: each seed's first lambda
  // (the problem's builder) first, so the threads build distinct problems at
  // once instead of waiting on one; without a share, batch order.
  std::vector<TrialParams> grid;
  for (int s = 0; s < 3; ++s)
    for (double lam : {0.1, 1.0}) {
      TrialParams q = base_params();
      q.seed = s;
      q.lambda = lam;
      grid.push_back(q);
    }
  const SetupShare grid_share(grid, 0, grid.size(), 1);
  EXPECT_EQ(setup_order(grid, 0, grid.size(), 1, &grid_share), (std::vector<size_t>{0, 2, 4, 1, 3, 5}));
  EXPECT_EQ(setup_order(grid, 0, grid.size(), 1), (std::vector<size_t>{0, 1, 2, 3, 4, 5}));
  reset_setup_cache(size_t{kSetupCacheDefaultMb} << 20);
}

// ------------------------------------------------------------ set-up cache --
namespace {

bool same_double(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }
bool same_list(const std::vector<Matrix>& a, const std::vector<Matrix>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!same_bits(a[i], b[i])) return false;
  return true;
}
// Every field set-up builds, bit for bit; `params` and `checkpoints` (what a
// copy takes from its own trial) only when `whole`.
void expect_same_problem(const TrialProblem& a, const TrialProblem& b, bool whole, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_EQ(a.L, b.L);
  EXPECT_EQ(a.w, b.w);
  EXPECT_EQ(a.matched, b.matched);
  EXPECT_TRUE(same_bits(a.X, b.X) && same_bits(a.Xn, b.Xn) && same_bits(a.Y, b.Y)) << "data";
  EXPECT_TRUE(same_list(a.feature, b.feature)) << "teacher features";
  EXPECT_TRUE(same_list(a.W0, b.W0)) << "initial weights";
  EXPECT_TRUE(same_bits(a.Wstar, b.Wstar) && same_bits(a.Mhalf, b.Mhalf)) << "law";
  EXPECT_TRUE(same_double(a.sigma, b.sigma) && same_double(a.sigma_y, b.sigma_y)) << "noise";
  EXPECT_TRUE(same_double(a.bayes_risk, b.bayes_risk)) << "bayes_risk";
  EXPECT_TRUE(same_double(a.interp_risk, b.interp_risk)) << "interp_risk";
  EXPECT_TRUE(same_double(a.teacher_clean_risk, b.teacher_clean_risk)) << "teacher_clean_risk";
  EXPECT_TRUE(same_bits(a.Xtest, b.Xtest) && same_bits(a.Ytest, b.Ytest)) << "test set";
  EXPECT_TRUE(same_list(a.teacher_W, b.teacher_W)) << "teacher layers";
  EXPECT_TRUE(same_bits(a.Wt, b.Wt) && same_bits(a.U, b.U)) << "teacher map, U";
  EXPECT_EQ(a.spectrum, b.spectrum);
  if (whole) {
    EXPECT_EQ(to_json(a.params), to_json(b.params));
    EXPECT_EQ(a.checkpoints, b.checkpoints);
  }
}

// Small trials of every kind set-up treats differently: linear with an oracle
// and a perturbed teacher, a rotated decomposition of a depth-3 network with
// one matched layer, a tanh student with a trained teacher (its test set).
std::vector<TrialParams> setup_variety() {
  std::vector<TrialParams> ps;
  TrialParams p;
  p.d = 8, p.k = 4, p.m = 3, p.hidden = {6}, p.n_train = 12, p.n_test = 40, p.steps = 30, p.checkpoints = 4;
  p.noise = 0.3, p.label_noise = 0.1, p.lambda = 0.7, p.seed = 3;
  ps.push_back(p);
  p.teacher.kind = TeacherKind::perturbed;
  p.teacher.delta = 0.4;
  p.path = TrainPath::moment;
  ps.push_back(p);
  p.hidden = {6, 5};
  p.matched_layers = {2};
  p.teacher.decomposition = Decomposition::rotated;
  p.path = TrainPath::data;
  ps.push_back(p);
  p.hidden = {6};
  p.matched_layers = {};
  p.activation = Activation::tanh;
  p.teacher = TeacherParams{};
  p.teacher.kind = TeacherKind::trained;
  p.teacher.steps = 40;
  p.teacher.n_train = 16;
  p.teacher.decomposition = Decomposition::as_trained;
  p.baseline = false;
  ps.push_back(p);
  return ps;
}

// The same trial with one parameter given another value, through the sweep
// file's own parser (so the value is one a sweep could hold).
TrialParams with(const TrialParams& p, const std::string& key, const nlohmann::json& v) {
  nlohmann::json j = to_json(p);
  j[key] = v;
  return parse_trial_params(j, "test");
}

}  // namespace

// What kSetupIgnores names is read by training only: changing any of them
// leaves every field set-up builds bit for bit the same, and the problem
// recipe too; a parameter set-up does read (noise, init_scale, seed) changes
// the recipe. This is what lets a SetupShare hand one trial's problem to
// another.
TEST(SetupShare, WhatTrainingReadsDoesNotChangeTheProblem) {
  const uint64_t seed = 11;
  for (const TrialParams& p : setup_variety()) {
    const TrialProblem ref = setup_trial(p, seed);
    const std::string what = to_json(p).dump();
    for (const char* key : kSetupIgnores) {
      nlohmann::json v;
      const std::string k = key;
      if (k == "lambda") v = p.lambda + 0.37;
      if (k == "lr") v = p.lr * 0.5;
      if (k == "steps") v = p.steps + 17;
      if (k == "checkpoints") v = p.checkpoints + 3;
      if (k == "baseline") v = !p.baseline;
      if (k == "path") v = p.path == TrainPath::data ? "auto" : "data";
      ASSERT_FALSE(v.is_null()) << "kSetupIgnores names " << k << ", which this test does not vary";
      const TrialParams q = with(p, k, v);
      EXPECT_NE(to_json(q), to_json(p)) << k;
      expect_same_problem(setup_trial(q, seed), ref, false, what + ", " + k);
      EXPECT_EQ(problem_recipe(q, seed), problem_recipe(p, seed)) << k;
    }
    EXPECT_NE(problem_recipe(with(p, "noise", p.noise * 2), seed), problem_recipe(p, seed));
    EXPECT_NE(problem_recipe(with(p, "init_scale", p.init_scale * 2), seed), problem_recipe(p, seed));
    EXPECT_NE(problem_recipe(with(p, "seed", p.seed + 1), seed), problem_recipe(p, seed));
    EXPECT_NE(problem_recipe(p, seed + 1), problem_recipe(p, seed));
  }
}

// A SetupShare over {trial, sibling (other lambda, steps, checkpoints), other
// noise}: the sibling gets a copy of the trial's problem with its own params
// and checkpoints, every field what a new build gives; the other noise level
// is built alone. A budget too small for one problem keeps none: the sibling
// builds its own, with the same bits. Sharing off: every trial builds. The
// totals count every build, shared or not.
TEST(SetupShare, CopiesHaveTheBitsOfANewBuild) {
  const uint64_t seed = 11;
  for (const TrialParams& p : setup_variety()) {
    const std::vector<TrialParams> ps = {p, with(with(with(p, "lambda", 3.0), "steps", 50), "checkpoints", 7),
                                         with(p, "noise", p.noise * 2)};
    std::vector<TrialProblem> fresh;
    for (const TrialParams& q : ps) fresh.push_back(setup_trial(q, seed));
    for (size_t budget : {size_t{64} << 20, size_t{1}, size_t{0}}) {
      const std::string what = to_json(p).dump() + ", budget " + std::to_string(budget);
      reset_setup_cache(budget);
      {
        SetupShare share(ps, 0, ps.size(), seed);
        for (size_t i = 0; i < ps.size(); ++i)
          expect_same_problem(share.setup(i), fresh[i], true, what + ", trial " + std::to_string(i));
      }
      const SetupCacheStats st = setup_cache_stats();
      // Every trial that took no copy built: the shared one and the other
      // noise level, or (nothing kept) all three.
      EXPECT_EQ(st.built, budget > 1 ? 2 : 3) << what;
      EXPECT_EQ(st.reused, budget > 1 ? 1 : 0) << what;
      EXPECT_EQ(st.evicted, budget == 1 ? 1 : 0) << what;
      if (budget > 1) EXPECT_GT(st.bytes, sizeof(TrialProblem)) << what;
    }
  }
  reset_setup_cache(size_t{kSetupCacheDefaultMb} << 20);
}

// Threads setting up the siblings of one problem at once build it once and
// wait for it; each trial gets its own params. A failing build fails every
// sibling with the same message.
TEST(SetupShare, ThreadsSettingUpSiblingsBuildOnce) {
  const uint64_t seed = 11;
  const TrialParams base = setup_variety().back();  // trained teacher: the longest build
  std::vector<TrialParams> ps;
  for (int i = 0; i < 8; ++i) ps.push_back(with(base, "lambda", 0.1 * i));
  std::vector<TrialProblem> fresh;
  for (const TrialParams& p : ps) fresh.push_back(setup_trial(p, seed));
  reset_setup_cache(size_t{64} << 20);
  std::vector<TrialProblem> got(ps.size());
  {
    SetupShare share(ps, 0, ps.size(), seed);
    for_each_in_setup_order(ps, 0, ps.size(), seed, 4, [&](size_t i) { got[i] = share.setup(i); }, &share);
  }
  for (size_t i = 0; i < ps.size(); ++i) expect_same_problem(got[i], fresh[i], true, "trial " + std::to_string(i));
  SetupCacheStats st = setup_cache_stats();
  EXPECT_EQ(st.built, 1);
  EXPECT_EQ(st.reused, 7);
  // A decomposition the widths cannot hold: every sibling fails alike.
  std::vector<TrialParams> bad;
  for (int i = 0; i < 4; ++i) {
    TrialParams q = setup_variety().front();
    q.hidden = {2};  // too narrow for the teacher's rank
    q.lambda = 0.5 * i;
    bad.push_back(q);
  }
  std::string first;
  try {
    (void)setup_trial(bad[0], seed);
  } catch (const InputError& e) {
    first = e.what();
  }
  ASSERT_FALSE(first.empty()) << "the narrow trial should not set up";
  reset_setup_cache(size_t{64} << 20);
  SetupShare share(bad, 0, bad.size(), seed);
  std::vector<std::string> msg(bad.size());
  for_each_in_setup_order(
      bad, 0, bad.size(), seed, 2,
      [&](size_t i) {
        try {
          (void)share.setup(i);
        } catch (const InputError& e) {
          msg[i] = e.what();
        }
      },
      &share);
  for (size_t i = 0; i < bad.size(); ++i) EXPECT_EQ(msg[i], first) << i;
  reset_setup_cache(size_t{kSetupCacheDefaultMb} << 20);
}

// The moment path's moments of a shared problem are formed once, by whichever
// sibling asks first (threads asking at once wait for it), with the bits of
// trial_moments on a fresh set-up; another mask forms its own; a trial alone
// in its range has no shared moments.
TEST(SetupShare, SiblingsFormTheirMomentsOnce) {
  const uint64_t seed = 11;
  const TrialParams base = setup_variety()[2];  // depth 3, layer 2 matched
  std::vector<TrialParams> ps;
  for (int i = 0; i < 6; ++i) ps.push_back(with(with(base, "lambda", 0.3 * i), "path", "moment"));
  ps.push_back(with(ps[0], "noise", base.noise * 2));  // alone
  const size_t n = ps.size();
  reset_setup_cache(size_t{64} << 20);
  std::vector<TrialProblem> got(n);
  std::vector<TrialMoments> mo(n);
  {
    SetupShare share(ps, 0, n, seed);
    for_each_in_setup_order(ps, 0, n, seed, 3, [&](size_t i) { got[i] = share.setup(i); }, &share);
  }
  parallel_for(n, 4, [&](size_t i) { mo[i] = trial_moments(got[i], matched_mask(got[i])); });
  auto same = [](const TrialMoments& a, const TrialMoments& b) {
    return same_bits(a.Cxx, b.Cxx) && same_bits(a.Cyx, b.Cyx) && same_list(a.Chx, b.Chx) &&
           same_double(a.tr_yy, b.tr_yy) && a.tr_hh.size() == b.tr_hh.size() &&
           std::memcmp(a.tr_hh.data(), b.tr_hh.data(), a.tr_hh.size() * sizeof(double)) == 0;
  };
  for (size_t i = 0; i < n; ++i) {
    const TrialProblem fresh = setup_trial(ps[i], seed);
    EXPECT_TRUE(same(mo[i], trial_moments(fresh, matched_mask(fresh)))) << "trial " << i;
  }
  ASSERT_FALSE(mo[0].Chx.at(2).a.empty()) << "the matched layer's moments";
  EXPECT_EQ(setup_cache_stats().moments_reused, 5);
  EXPECT_NE(got[0].shared_moments, nullptr);
  EXPECT_EQ(got[n - 1].shared_moments, nullptr);
  // Another mask (here none matched): the sibling's own moments, not the shared ones.
  const TrialMoments none = trial_moments(got[1], 0u);
  EXPECT_TRUE(none.Chx.size() < 3 || none.Chx[2].a.empty());
  EXPECT_TRUE(same(none, trial_moments(setup_trial(ps[1], seed), 0u)));
  EXPECT_EQ(setup_cache_stats().moments_reused, 5);
  reset_setup_cache(size_t{kSetupCacheDefaultMb} << 20);
}

// parallel_for when the system refuses threads (here: an address space too
// small for a thousand 8 MiB stacks, in a child process): every i is still
// done once, by the threads that did start and the caller. Until session 13
// the refused thread left joinable ones behind and std::terminate ended the
// run (a review's `--threads 1000` under `ulimit -v 3000000`: exit 134, no
// word). An exception of f comes back to the caller.
TEST(ParallelFor, RefusedThreadsAreFewerThreadsAndErrorsComeBack) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "under ASan the address-space limit leaves no room for its shadow mappings, and its "
                  "pthread_create aborts instead of failing (tools/sanitize-suite)";
#endif
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    rlimit lim{};
    lim.rlim_cur = lim.rlim_max = rlim_t{1} << 30;  // 1 GiB: room for about a hundred stacks
    setrlimit(RLIMIT_AS, &lim);
    std::vector<std::atomic<int>> seen(1000);
    parallel_for(seen.size(), 1000, [&](size_t i) { seen[i].fetch_add(1); });
    for (const auto& s : seen)
      if (s.load() != 1) _exit(3);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "an index done other than once";

  // f's exception comes back to the caller after every thread has ended (an
  // exception leaving a std::thread's function was std::terminate).
  std::atomic<int> calls{0};
  EXPECT_THROW(parallel_for(100, 4,
                            [&](size_t i) {
                              ++calls;
                              if (i == 10) throw std::runtime_error("trial 10");
                            }),
               std::runtime_error);
  EXPECT_GE(calls.load(), 11);
}

