// Training of one set-up trial on the CPU: the reference trainer. The step math
// is kernels/trial_math.hpp; this file converts the problem to Real, runs the
// student and its twin, and measures the metrics.
//
// Choices MODEL.md leaves to the trainer:
// - Path: `moment` needs activation linear (InputError otherwise); `auto` takes
//   the moment path for linear networks when tm::moment_step_flops (student's
//   matched layers) < tm::data_step_flops, else the data path. Student and twin
//   use the same path.
// - Metrics are measured in float64 from the Real weights (so float32 runs are
//   not measured with float32 round-off, and moment-path runs not with the
//   cancellation of moment-form losses): label and feature losses by a float64
//   forward pass on (Xn, Y); test risk exactly (linear_risk of W_L...W_1) when
//   params.linear(), else (1/n_test) sum_n ||f(x_n) - y_n||^2 on (Xtest, Ytest):
//   per sample, summed over outputs, like R. The twin's feature loss is measured
//   on the student's matched layers (it does not train on them).
// - Divergence: the per-step training loss (Real, at the iterate before its
//   update) is non-finite or above kDivergeFactor x its value at step 0. The
//   network stops there: steps_run = that step t (updates taken), final metrics
//   are those of W_t (possibly inf/NaN), checkpoints after t are NaN. A trial
//   diverges when its student or twin does; steps_run is then the smaller stop.
// - zero_loss: final train_loss <= kZeroLossRtol x train_loss at step 0.
// - best_test_risk / best_step: lowest finite student test risk over the
//   checkpoints (ties: the earliest); NaN and -1 when none is finite. The
//   twin's the same (baseline_best_test_risk / baseline_best_step).
// - loss_rise (and the twin's baseline_loss_rise): tm::LossRise over the
//   per-step training losses the divergence check reads.
#include "train.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

#include "linalg.hpp"
#include "net_buffers.hpp"
#include "trial_math.hpp"

namespace stsweep {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// kDivergeFactor and kZeroLossRtol: train.hpp (shared with the CUDA backend).

}  // namespace

TrialMoments moments_of(const Matrix& Xn, const Matrix& Y, const std::vector<Matrix>& feature, int L,
                        uint32_t mask) {
  using namespace linalg;
  TrialMoments mo;
  const int N = Xn.cols;
  const double inv_n = 1.0 / N;  // C = (A Xn^T) * (1/N): the form set-up used until session 5
  mo.Cxx = scaled(matmul_nt(Xn, Xn), inv_n);
  mo.Cyx = scaled(matmul_nt(Y, Xn), inv_n);
  mo.tr_yy = frob2(Y) / N;
  mo.Chx.resize(L + 1);
  mo.tr_hh.assign(L + 1, 0.0);
  for (int l = 1; l < L; ++l) {
    if (!(mask >> l & 1u)) continue;
    if (static_cast<int>(feature.size()) <= l || feature[l].cols != N)
      throw std::logic_error("trial_moments: teacher features of a matched layer missing");
    mo.Chx[l] = scaled(matmul_nt(feature[l], Xn), inv_n);
    mo.tr_hh[l] = frob2(feature[l]) / N;
  }
  return mo;
}

TrialMoments trial_moments(const TrialProblem& pr, uint32_t mask) {
  if (SharedMoments* sm = pr.shared_moments.get()) {
    bool formed = false;
    std::call_once(sm->once, [&] {
      sm->mo = moments_of(pr.Xn, pr.Y, pr.feature, pr.L, mask);
      sm->mask = mask;
      formed = true;
    });
    if (sm->mask == mask) {
      if (!formed) count_moments_reused();
      return sm->mo;
    }
  }
  return moments_of(pr.Xn, pr.Y, pr.feature, pr.L, mask);
}

namespace {

// Metrics of a network, in float64.
using Metrics = NetMetrics;

class Evaluator {
 public:
  Evaluator(const TrialProblem& pr, const tm::Net& net, uint32_t mask)
      : pr_(pr), net_(net), mask_(mask), train_(net, pr.Xn, pr.Y, &pr.feature, mask) {
    exact_ = pr.params.linear();
    if (exact_) {
      check_shape(pr.Wstar, net.w[net.L], net.w[0], "Wstar");
      check_shape(pr.Mhalf, net.w[0], pr.Mhalf.cols, "Mhalf");
    } else if (pr.Xtest.cols > 0) {
      test_ = std::make_unique<DataPath<double>>(net, pr.Xtest, pr.Ytest, nullptr, 0u);
    }
  }

  Metrics operator()(const std::vector<Matrix>& W) {
    NetWeights<double> w(net_, W);
    Metrics m;
    const tm::SerialTeam team;
    const auto loss = tm::data_forward(team, net_, w.view, train_.ds, mask_, train_.wk);
    m.label = loss.label;
    m.feature = loss.feature;
    if (exact_) {
      // Both from host/setup.cpp (problem.hpp): anyone holding the layers gets this
      // test_risk bit for bit with linear_risk(pr, end_to_end(W)).
      m.test_risk = linear_risk(pr_, end_to_end(W));
    } else if (test_) {
      // (1/n_test) sum_n ||f(x_n) - y_n||^2: per sample, summed over outputs (as R),
      // plus m sigma_y^2, as the targets are clean (linear_risk's Monte Carlo form).
      const auto t = tm::data_forward(team, net_, w.view, test_->ds, 0u, test_->wk);
      m.test_risk = 2.0 * t.label + pr_.Ytest.rows * pr_.sigma_y * pr_.sigma_y;
    }
    return m;
  }

 private:
  const TrialProblem& pr_;
  tm::Net net_;
  uint32_t mask_;
  DataPath<double> train_;
  std::unique_ptr<DataPath<double>> test_;
  bool exact_ = false;
};

struct NetRun : NetTrace {
  std::vector<Matrix> W;  // final weights
};

template <class Real>
class Trainer {
 public:
  Trainer(const TrialProblem& pr, bool moment, uint32_t mask)
      : pr_(pr), net_(make_net(pr.w, pr.params.activation)), mask_(mask), moment_(moment),
        eval_(pr, net_, mask) {
    if (moment_)
      mp_ = std::make_unique<MomentPath<Real>>(net_, trial_moments(pr, mask), mask);
    else
      dp_ = std::make_unique<DataPath<Real>>(net_, pr.Xn, pr.Y, &pr.feature, mask);
  }

  // Trains one network from W0 with feature weight lambda on the layers of
  // `train_mask` (0 for the twin); metrics always use the trial's mask.
  NetRun run(double lambda, uint32_t train_mask) {
    const tm::SerialTeam team;
    const tm::Net& net = net_;
    NetWeights<Real> w(net, pr_.W0);
    const Real lam = static_cast<Real>(lambda);
    const Real lr = static_cast<Real>(pr_.params.lr);
    const int64_t T = pr_.params.steps;
    const auto& ck = pr_.checkpoints;
    NetRun out;
    out.test.assign(ck.size(), kNaN);
    out.label.assign(ck.size(), kNaN);
    out.feature.assign(ck.size(), kNaN);
    size_t c = 0;
    double loss0 = 0;
    tm::LossRise rise;
    int64_t t = 0;
    bool have_last = false;
    for (;; ++t) {
      const tm::Losses<Real> loss =
          moment_ ? tm::moment_forward(team, net, w.view, mp_->ms, train_mask, mp_->wk)
                  : tm::data_forward(team, net, w.view, dp_->ds, train_mask, dp_->wk);
      const bool at_ck = c < ck.size() && ck[c] == t;
      if (at_ck || t == 0 || t == T) {
        if (!moment_) tm::data_refresh_w1(team, net, w.view);
        const Metrics m = eval_(w.to_matrices(net));
        if (t == 0) out.first = m;
        if (at_ck) {
          out.test[c] = m.test_risk;
          out.label[c] = m.label;
          out.feature[c] = m.feature;
          ++c;
        }
        out.last = m;
        have_last = true;
      } else {
        have_last = false;
      }
      const double total = static_cast<double>(loss.total(lam));
      if (t == 0) loss0 = total;
      rise.add(t, total, loss0, kZeroLossRtol);
      if (!std::isfinite(total) || (loss0 > 0 && total > kDivergeFactor * loss0)) {
        out.diverged = true;
        out.diverged_loss = total;
        break;
      }
      if (t >= T) break;
      if (moment_)
        tm::moment_backward_update(team, net, w.view, mp_->ms, lam, train_mask, lr, mp_->wk);
      else
        tm::data_backward_update(team, net, w.view, dp_->ds, lam, train_mask, lr, dp_->wk);
    }
    out.steps_run = t;
    out.loss_rise = rise.rise;
    if (!moment_) tm::data_refresh_w1(team, net, w.view);
    out.W = w.to_matrices(net);
    if (!have_last) out.last = eval_(out.W);
    return out;
  }

 private:
  const TrialProblem& pr_;
  tm::Net net_;
  uint32_t mask_;
  bool moment_;
  Evaluator eval_;
  std::unique_ptr<DataPath<Real>> dp_;
  std::unique_ptr<MomentPath<Real>> mp_;
};

}  // namespace

namespace {
int act_code(Activation a) {
  switch (a) {
    case Activation::relu: return tm::kRelu;
    case Activation::tanh: return tm::kTanh;
    default: return tm::kLinear;
  }
}
}  // namespace

static_assert(kMaxHiddenLayers + 1 == tm::kMaxLayers, "the sweep check's depth limit is the trainer's");

tm::Net make_net(const std::vector<int>& w, Activation act) {
  tm::Net net;
  net.L = static_cast<int>(w.size()) - 1;
  if (net.L < 1 || net.L > tm::kMaxLayers)
    throw InputError("hidden", "depth " + std::to_string(net.L) + " outside 1.." +
                                   std::to_string(tm::kMaxLayers));
  for (int l = 0; l <= net.L; ++l) net.w[l] = w[l];
  net.act = act_code(act);
  return net;
}

uint32_t matched_mask(const TrialProblem& pr) {
  uint32_t mask = 0;
  for (int l : pr.matched) {
    if (l < 1 || l >= pr.L) throw InputError("matched_layers", "layer " + std::to_string(l) +
                                                                   " is not a hidden layer");
    mask |= 1u << l;
  }
  return mask;
}

bool moments_cheaper(const tm::Net& net, uint32_t mask, int N) {
  return net.act == tm::kLinear && tm::moment_step_flops(net, mask) < tm::data_step_flops(net, N);
}

namespace {

// The path a trial trains on (throws InputError for moment with a nonlinear network).
bool use_moment_path(const TrialProblem& pr, const tm::Net& net, uint32_t mask) {
  const bool linear_net = pr.params.activation == Activation::linear;
  switch (pr.params.path) {
    case TrainPath::moment:
      if (!linear_net)
        throw InputError("path", "the moment path needs a linear network (activation linear)");
      return true;
    case TrainPath::data: return false;
    default:
      return moments_cheaper(net, mask, pr.Xn.cols);
  }
}

}  // namespace

bool trains_on_moments(const TrialProblem& pr) {
  return use_moment_path(pr, make_net(pr.w, pr.params.activation), matched_mask(pr));
}

TrialResult assemble_trial_result(const TrialProblem& pr, const NetTrace& st, const NetTrace* tw) {
  TrialResult r;
  const double lambda = pr.params.lambda;
  r.checkpoint_steps = pr.checkpoints;
  r.bayes_risk = pr.bayes_risk;
  r.interp_risk = pr.interp_risk;
  r.teacher_clean_risk = pr.teacher_clean_risk;
  r.test_risk = st.last.test_risk;
  r.excess_risk = r.test_risk - r.bayes_risk;
  r.label_loss = st.last.label;
  r.feature_loss = st.last.feature;
  r.train_loss = st.last.label + lambda * st.last.feature;
  // zero_loss: the final training loss within kZeroLossRtol of the one at step 0.
  const auto reached_zero = [](double last, double first) -> int8_t {
    return std::isfinite(last) && last <= kZeroLossRtol * first ? 1 : 0;
  };
  r.zero_loss = reached_zero(r.train_loss, st.first.label + lambda * st.first.feature);
  r.curve_test_risk = st.test;
  r.curve_label_loss = st.label;
  r.curve_feature_loss = st.feature;
  // The lowest finite risk of a curve and its step (ties: the earliest); NaN
  // and -1 when none is finite or there is no curve.
  const auto best_of = [&pr](const NetTrace* n, double& risk, int64_t& step) {
    risk = kNaN;
    step = -1;
    if (!n) return;
    for (size_t c = 0; c < n->test.size(); ++c)
      if (std::isfinite(n->test[c]) && !(n->test[c] >= risk)) {
        risk = n->test[c];
        step = pr.checkpoints[c];
      }
  };
  best_of(&st, r.best_test_risk, r.best_step);
  best_of(tw, r.baseline_best_test_risk, r.baseline_best_step);
  r.loss_rise = st.loss_rise;
  const size_t nc = pr.checkpoints.size();
  if (tw) {
    r.baseline_loss_rise = tw->loss_rise;
    r.baseline_train_loss = tw->last.label;  // lambda = 0: the label loss is all of it
    r.baseline_zero_loss = reached_zero(tw->last.label, tw->first.label);
    r.baseline_test_risk = tw->last.test_risk;
    r.curve_baseline_test_risk = tw->test;
    r.curve_baseline_label_loss = tw->label;
    r.curve_baseline_feature_loss = tw->feature;
  } else {
    r.baseline_train_loss = kNaN;
    r.baseline_zero_loss = -1;
    r.baseline_loss_rise = kNaN;
    r.baseline_test_risk = kNaN;
    r.curve_baseline_test_risk.assign(nc, kNaN);
    r.curve_baseline_label_loss.assign(nc, kNaN);
    r.curve_baseline_feature_loss.assign(nc, kNaN);
  }
  r.steps_run = st.steps_run;
  r.status = Status::done;
  std::string msg;
  auto note = [&](const char* who, const NetTrace& n) {
    if (!n.diverged) return;
    if (!msg.empty()) msg += "; ";
    msg += std::string(who) + " diverged at step " + std::to_string(n.steps_run) +
           " (loss " + std::to_string(n.diverged_loss) + ")";
  };
  note("student", st);
  if (tw) {
    note("twin", *tw);
    r.steps_run = std::min(st.steps_run, tw->steps_run);
  }
  r.student_diverged = st.diverged ? 1 : 0;
  r.twin_diverged = tw ? (tw->diverged ? 1 : 0) : -1;
  if (st.diverged || (tw && tw->diverged)) r.status = Status::diverged;
  r.message = msg;
  return r;
}

template <typename Real>
TrialResult train_trial(const TrialProblem& pr, std::vector<Matrix>* W_student,
                        std::vector<Matrix>* W_twin) {
  if (static_cast<int>(pr.w.size()) != pr.L + 1)
    throw std::logic_error("train: widths do not match the depth");
  const tm::Net net = make_net(pr.w, pr.params.activation);
  if (static_cast<int>(pr.W0.size()) != pr.L + 1) throw std::logic_error("train: W0 has wrong depth");
  if (static_cast<int>(pr.feature.size()) < pr.L && !pr.matched.empty())
    throw std::logic_error("train: teacher features missing");
  const uint32_t mask = matched_mask(pr);
  const bool moment = use_moment_path(pr, net, mask);

  Trainer<Real> trainer(pr, moment, mask);
  const NetRun st = trainer.run(pr.params.lambda, mask);
  NetRun tw;
  const bool twin = pr.params.baseline;
  if (twin) tw = trainer.run(0.0, 0u);

  TrialResult r = assemble_trial_result(pr, st, twin ? &tw : nullptr);
  if (W_student) *W_student = st.W;
  if (W_twin) *W_twin = twin ? tw.W : std::vector<Matrix>{};
  return r;
}

template <typename Real>
TrialResult train_trial(const TrialProblem& pr) {
  return train_trial<Real>(pr, nullptr, nullptr);
}

template TrialResult train_trial<float>(const TrialProblem&);
template TrialResult train_trial<double>(const TrialProblem&);
template TrialResult train_trial<float>(const TrialProblem&, std::vector<Matrix>*, std::vector<Matrix>*);
template TrialResult train_trial<double>(const TrialProblem&, std::vector<Matrix>*, std::vector<Matrix>*);

bool train_plain_f64(std::vector<Matrix>& W, Activation act, const Matrix& X, const Matrix& Y,
                     int steps, double lr, PlainPath path) {
  const int L = static_cast<int>(W.size()) - 1;
  std::vector<int> widths(L + 1);
  widths[0] = X.rows;
  for (int l = 1; l <= L; ++l) widths[l] = W[l].rows;
  const tm::Net net = make_net(widths, act);
  NetWeights<double> w(net, W);
  const tm::SerialTeam team;
  // `auto`'s rule, as for students: the same GD on the same loss.
  const bool moment =
      path == PlainPath::moment || (path == PlainPath::automatic && moments_cheaper(net, 0u, X.cols));
  if (moment && act != Activation::linear)
    throw std::logic_error("train_plain_f64: the moment path needs a linear network");
  std::unique_ptr<DataPath<double>> dp;
  std::unique_ptr<MomentPath<double>> mp;
  if (moment)
    mp = std::make_unique<MomentPath<double>>(net, moments_of(X, Y, {}, L, 0u), 0u);
  else
    dp = std::make_unique<DataPath<double>>(net, X, Y, nullptr, 0u);
  bool ok = true;
  double loss0 = 0;
  // The loss is checked at t = 0..steps, the final weights too (as for
  // students, and as the device's teacher trainer does): a teacher that blows
  // up in its last update is a diverged teacher (until session 13 it was kept).
  for (int t = 0;; ++t) {
    const double loss = moment ? tm::moment_forward(team, net, w.view, mp->ms, 0u, mp->wk).label
                               : tm::data_forward(team, net, w.view, dp->ds, 0u, dp->wk).label;
    if (t == 0) loss0 = loss;
    if (!std::isfinite(loss) || (loss0 > 0 && loss > kDivergeFactor * loss0)) {
      ok = false;
      break;
    }
    if (t >= steps) break;
    if (moment)
      tm::moment_backward_update(team, net, w.view, mp->ms, 0.0, 0u, lr, mp->wk);
    else
      tm::data_backward_update(team, net, w.view, dp->ds, 0.0, 0u, lr, dp->wk);
  }
  if (!moment) tm::data_refresh_w1(team, net, w.view);
  W = w.to_matrices(net);
  return ok;
}

}  // namespace stsweep
