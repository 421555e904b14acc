// Shared by the store and pipeline tests: deterministic fake results, the
// writer options of a test run, and a bitwise row comparison.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include <gtest/gtest.h>

#include "result.hpp"
#include "store.hpp"
#include "sweep.hpp"

namespace stsweep::fakes {

inline uint64_t bits(double x) {
  uint64_t b;
  std::memcpy(&b, &x, 8);
  return b;
}

// A deterministic result whose every field differs from every other.
inline TrialResult fake_result(int64_t id, int C) {
  TrialResult r;
  r.trial = id;
  r.status = id % 7 == 3 ? Status::diverged : Status::done;
  r.steps_run = 1000 + id;
  double b = 1.0 + id;
  r.test_risk = b * 1.01;
  r.baseline_test_risk = b * 1.02;
  r.bayes_risk = b * 1.03;
  r.excess_risk = b * 1.04;
  r.interp_risk = b * 1.05;
  r.teacher_clean_risk = b * 1.06;
  r.train_loss = b * 1.07;
  r.label_loss = b * 1.08;
  r.feature_loss = b * 1.09;
  r.best_test_risk = b * 1.10;
  r.best_step = 500 + id;
  r.zero_loss = static_cast<int8_t>(id % 2);
  for (int j = 0; j < C; ++j) {
    r.checkpoint_steps.push_back(j * 10);
    r.curve_test_risk.push_back(b + j * 0.1);
    r.curve_label_loss.push_back(b + j * 0.2);
    r.curve_feature_loss.push_back(b + j * 0.3);
    r.curve_baseline_test_risk.push_back(b + j * 0.4);
    r.curve_baseline_label_loss.push_back(b + j * 0.5);
    r.curve_baseline_feature_loss.push_back(b + j * 0.6);
  }
  return r;
}

// The rows of trials `ids` of `sw` with fake_result's values.
inline RowBlock fake_rows(const Sweep& sw, const std::vector<int64_t>& ids, int C) {
  Batch b;
  std::vector<TrialResult> res;
  for (int64_t id : ids) {
    b.ids.push_back(id);
    b.trials.push_back(sw.trial(static_cast<uint64_t>(id)));
    res.push_back(fake_result(id, C));
  }
  return RowBlock::from_batch(b, res);
}

// A writer for shard `s` of `sw` into `out` that checkpoints only when asked.
inline WriterOptions writer_options(const std::string& out, const Sweep& sw, Shard s = {}) {
  WriterOptions o;
  o.path = out;
  o.shard = std::to_string(s.index) + "/" + std::to_string(s.count);
  o.range = shard_range(sw.count(), s);
  o.backend = "fake";
  o.device = "test";
  o.precision = "f32";
  o.checkpoint_every = 1e9;  // checkpoints only when asked
  return o;
}

inline void expect_rows_equal(const RowBlock& got, size_t gr, const RowBlock& exp, size_t er, const std::string& what) {
  const auto& cs = store_columns();
  ASSERT_EQ(got.trial[gr], exp.trial[er]) << what;
  for (size_t k = 0; k < cs.size(); ++k) {
    const auto &g = got.cols[k], &e = exp.cols[k];
    if (cs[k].curve) {
      for (int j = 0; j < got.C; ++j) {
        bool in = j < exp.C;
        if (cs[k].type == ColType::f64) {
          double ev = in ? e.f[er * exp.C + j] : std::numeric_limits<double>::quiet_NaN();
          EXPECT_EQ(bits(g.f[gr * got.C + j]), bits(ev)) << what << " " << cs[k].name << "[" << j << "]";
        } else {
          int64_t ev = in ? e.i[er * exp.C + j] : -1;
          EXPECT_EQ(g.i[gr * got.C + j], ev) << what << " " << cs[k].name << "[" << j << "]";
        }
      }
      continue;
    }
    switch (cs[k].type) {
      case ColType::f64: EXPECT_EQ(bits(g.f[gr]), bits(e.f[er])) << what << " " << cs[k].name; break;
      case ColType::i8:
      case ColType::i64: EXPECT_EQ(g.i[gr], e.i[er]) << what << " " << cs[k].name; break;
      case ColType::str: EXPECT_EQ(g.s[gr], e.s[er]) << what << " " << cs[k].name; break;
    }
  }
}

}  // namespace stsweep::fakes
