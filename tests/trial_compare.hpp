// Shared by the tests that compare one backend's TrialResults with another's
// (tests/test_cuda.cpp on a GPU, tests/test_device_emu.cpp on the host).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <array>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "backend.hpp"
#include "params.hpp"
#include "result.hpp"

namespace stsweep::testing {

inline bool close(double a, double b, double rtol, double atol) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return std::abs(a - b) <= atol + rtol * std::abs(b);
}

// Every metric and curve of `got` within tolerance of `ref` (status, steps and
// flags exactly). `what` names the case in failure messages.
inline void expect_close(const TrialResult& got, const TrialResult& ref, double rtol, double atol,
                  const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_EQ(got.trial, ref.trial);
  ASSERT_EQ(got.status, ref.status) << got.message << " | ref: " << ref.message;
  if (ref.status == Status::failed) {
    EXPECT_EQ(got.message, ref.message);
    return;
  }
  EXPECT_EQ(got.steps_run, ref.steps_run);
  EXPECT_EQ(got.zero_loss, ref.zero_loss);
  EXPECT_EQ(got.best_step, ref.best_step);
  EXPECT_EQ(got.baseline_best_step, ref.baseline_best_step);
  EXPECT_EQ(got.student_diverged, ref.student_diverged);
  EXPECT_EQ(got.twin_diverged, ref.twin_diverged);
  EXPECT_EQ(got.baseline_zero_loss, ref.baseline_zero_loss);
  const std::pair<const char*, std::pair<double, double>> scalars[] = {
      {"test_risk", {got.test_risk, ref.test_risk}},
      {"baseline_test_risk", {got.baseline_test_risk, ref.baseline_test_risk}},
      {"bayes_risk", {got.bayes_risk, ref.bayes_risk}},
      {"excess_risk", {got.excess_risk, ref.excess_risk}},
      {"interp_risk", {got.interp_risk, ref.interp_risk}},
      {"teacher_clean_risk", {got.teacher_clean_risk, ref.teacher_clean_risk}},
      {"train_loss", {got.train_loss, ref.train_loss}},
      {"label_loss", {got.label_loss, ref.label_loss}},
      {"feature_loss", {got.feature_loss, ref.feature_loss}},
      {"best_test_risk", {got.best_test_risk, ref.best_test_risk}},
      {"baseline_best_test_risk", {got.baseline_best_test_risk, ref.baseline_best_test_risk}},
      {"loss_rise", {got.loss_rise, ref.loss_rise}},
      {"baseline_loss_rise", {got.baseline_loss_rise, ref.baseline_loss_rise}},
      {"baseline_train_loss", {got.baseline_train_loss, ref.baseline_train_loss}},
  };
  for (const auto& [name, v] : scalars)
    EXPECT_TRUE(close(v.first, v.second, rtol, atol)) << name << ": got " << v.first << " ref " << v.second;
  EXPECT_EQ(got.checkpoint_steps, ref.checkpoint_steps);
  const std::pair<const char*, std::pair<const std::vector<double>*, const std::vector<double>*>> curves[] = {
      {"curve_test_risk", {&got.curve_test_risk, &ref.curve_test_risk}},
      {"curve_label_loss", {&got.curve_label_loss, &ref.curve_label_loss}},
      {"curve_feature_loss", {&got.curve_feature_loss, &ref.curve_feature_loss}},
      {"curve_baseline_test_risk", {&got.curve_baseline_test_risk, &ref.curve_baseline_test_risk}},
      {"curve_baseline_label_loss", {&got.curve_baseline_label_loss, &ref.curve_baseline_label_loss}},
      {"curve_baseline_feature_loss", {&got.curve_baseline_feature_loss, &ref.curve_baseline_feature_loss}},
  };
  for (const auto& [name, v] : curves) {
    ASSERT_EQ(v.first->size(), v.second->size()) << name;
    for (size_t c = 0; c < v.first->size(); ++c)
      EXPECT_TRUE(close((*v.first)[c], (*v.second)[c], rtol, atol))
          << name << "[" << c << "]: got " << (*v.first)[c] << " ref " << (*v.second)[c];
  }
}

// Bit-for-bit equality of two results (NaN equals NaN).
inline void expect_same(const TrialResult& a, const TrialResult& b, const std::string& what) {
  expect_close(a, b, 0.0, 0.0, what);
}

inline Batch make_batch(const std::vector<TrialParams>& ps, int64_t first_id = 100) {
  Batch b;
  for (size_t i = 0; i < ps.size(); ++i) {
    b.ids.push_back(first_id + static_cast<int64_t>(i));
    b.trials.push_back(ps[i]);
  }
  return b;
}

// Batches of equal shape from a list of trials (what the batcher does).
inline std::vector<Batch> by_shape(const std::vector<TrialParams>& ps) {
  std::map<ShapeKey, std::vector<TrialParams>> m;
  for (const auto& p : ps) m[shape_key(p)].push_back(p);
  std::vector<Batch> out;
  int64_t id = 0;
  for (auto& [k, v] : m) {
    out.push_back(make_batch(v, id));
    id += static_cast<int64_t>(v.size());
  }
  return out;
}

inline std::vector<TrialResult> run_cpu(const Batch& b, Precision prec) {
  RunOptions o;
  o.sweep_seed = 7;
  o.precision = prec;
  return make_cpu_backend(o)->run(b, o);
}

// A small linear trial the tests vary.
inline TrialParams base_params() {
  TrialParams p;
  p.d = 12;
  p.k = 6;
  p.m = 3;
  p.hidden = {10};
  p.n_train = 20;
  p.noise = 0.5;
  p.lambda = 0.5;
  p.steps = 200;
  p.lr = 0.05;
  p.init_scale = 0.3;
  p.checkpoints = 8;
  p.n_test = 200;
  p.teacher.kind = TeacherKind::perturbed;
  p.teacher.delta = 0.2;
  return p;
}

// A small linear trial of widths 8-6-3 the device tests vary.
inline TrialParams small_trial(int seed) {
  TrialParams p = base_params();
  p.d = 8;
  p.k = 4;
  p.m = 3;
  p.hidden = {6};
  p.n_train = 12;
  p.n_test = 40;
  p.steps = 30;
  p.checkpoints = 4;
  p.seed = seed;
  return p;
}

// Linear, relu and tanh students, data and moment paths, lambdas, twins,
// teacher kinds, lengths and checkpoint counts, in two shapes (depth 2 and 3):
// the emulator's and the fake device's trials against the CPU.
inline std::vector<TrialParams> variety_trials() {
  std::vector<TrialParams> ps;
  int seed = 0;
  for (std::vector<int> hidden : {std::vector<int>{6}, std::vector<int>{7, 5}})
    for (Activation act : {Activation::linear, Activation::relu, Activation::tanh})
      for (TrainPath path : {TrainPath::data, TrainPath::moment}) {
        if (act != Activation::linear && path == TrainPath::moment) continue;
        for (double lambda : {0.0, 0.7}) {
          TrialParams p = small_trial(seed++);
          p.hidden = hidden;
          p.activation = act;
          p.path = path;
          p.lambda = lambda;
          p.steps = 20 + 7 * (seed % 4);  // several lengths per launch
          p.checkpoints = 2 + seed % 4;
          p.baseline = seed % 3 != 0;
          p.teacher.kind = seed % 2 ? TeacherKind::perturbed : TeacherKind::oracle;
          ps.push_back(p);
        }
      }
  return ps;
}

// Seven small trials with trained teachers, shared by trials 0-2, 3-5 and 6
// alone, of several lengths, lambdas and twins: cut into waves of 2 or 3,
// teachers are shared across waves (the wave tests of the emulator and the GPU).
inline std::vector<TrialParams> shared_teacher_trials() {
  std::vector<TrialParams> ps;
  for (int i = 0; i < 7; ++i) {
    TrialParams p = base_params();
    p.d = 8;
    p.k = 4;
    p.hidden = {6};
    p.n_train = 10;
    p.n_test = 30;
    p.steps = 12 + i;
    p.checkpoints = 3;
    p.seed = i / 3;
    p.lambda = 0.3 * (i % 3);
    p.baseline = i % 2 == 0;
    p.teacher.kind = TeacherKind::trained;
    p.teacher.n_train = 16;
    p.teacher.steps = 30;
    p.teacher.lr = 0.1;
    ps.push_back(p);
  }
  return ps;
}

// One random shape and `trials` trials of it (random lambda, lr, steps,
// checkpoints, twins, seeds, teacher kinds and paths), within `lim`.
struct RandomLimits {
  int max_d = 24, max_m = 6, max_h = 20, min_n = 4, max_n = 40;
  int min_test = 50, max_test = 200, min_steps = 20, max_steps = 150, max_ck = 10, trials = 4;
};
inline std::vector<TrialParams> random_trials(std::mt19937& g, const RandomLimits& lim) {
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(g); };
  TrialParams p = base_params();
  p.d = uni(4, lim.max_d);
  p.k = uni(1, p.d);
  p.m = uni(1, lim.max_m);
  p.hidden.assign(uni(1, 2), 0);
  for (int& h : p.hidden) h = uni(std::max(p.m, 3), lim.max_h);
  p.n_train = uni(lim.min_n, lim.max_n);
  p.n_test = uni(lim.min_test, lim.max_test);
  p.activation = std::array<Activation, 3>{Activation::linear, Activation::relu, Activation::tanh}[uni(0, 2)];
  std::vector<TrialParams> ps;
  for (int j = 0; j < lim.trials; ++j) {
    TrialParams q = p;
    q.lambda = std::array<double, 3>{0.0, 0.3, 1.0}[uni(0, 2)];
    q.lr = 0.02 + 0.01 * uni(0, 6);
    q.steps = uni(lim.min_steps, lim.max_steps);
    q.checkpoints = uni(2, lim.max_ck);
    q.baseline = uni(0, 3) != 0;
    q.seed = uni(0, 1000);
    q.teacher.kind = uni(0, 1) ? TeacherKind::oracle : TeacherKind::perturbed;
    q.path = q.activation == Activation::linear
                 ? std::array<TrainPath, 3>{TrainPath::automatic, TrainPath::data, TrainPath::moment}[uni(0, 2)]
                 : TrainPath::data;
    ps.push_back(q);
  }
  return ps;
}

}  // namespace stsweep::testing
