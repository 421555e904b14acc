// MultiBackend (host/multi_backend.cpp): one batch over several backends, and
// the --devices list. Several CPU backends stand in for several GPUs: a split
// batch must give results bit-identical to the whole batch on one backend.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "backend.hpp"
#include "multi_backend.hpp"
#include "params.hpp"

namespace stsweep {
namespace {

RunOptions one_thread() {
  RunOptions o;
  o.threads = 1;
  o.sweep_seed = 7;
  return o;
}

// n small linear trials that differ in lambda, seed and noise; trial 3 (when
// present) fails at set-up (an input decomposition needs h >= d).
Batch small_batch(int n, int64_t first_id = 500) {
  Batch b;
  for (int i = 0; i < n; ++i) {
    TrialParams p;
    p.d = 8;
    p.k = 4;
    p.m = 2;
    p.hidden = {6};
    p.n_train = 6;
    p.steps = 40;
    p.checkpoints = 4;
    p.lambda = 0.2 * (i % 4);
    p.noise = 0.25 + 0.1 * i;
    p.seed = i / 2;
    if (i == 3) {
      p.teacher.decomposition = Decomposition::input;
      p.hidden = {4};
    }
    b.ids.push_back(first_id + 3 * i);  // not 0..n-1: ids must travel with their trials
    b.trials.push_back(p);
  }
  return b;
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

void expect_same_curve(const std::vector<double>& a, const std::vector<double>& b, const char* what, int64_t id) {
  ASSERT_EQ(a.size(), b.size()) << what << ", trial " << id;
  for (size_t c = 0; c < a.size(); ++c) EXPECT_TRUE(same_bits(a[c], b[c])) << what << "[" << c << "], trial " << id;
}

void expect_same(const TrialResult& a, const TrialResult& b) {
  EXPECT_EQ(a.trial, b.trial);
  EXPECT_EQ(a.status, b.status) << a.trial;
  EXPECT_EQ(a.message, b.message) << a.trial;
  EXPECT_EQ(a.steps_run, b.steps_run) << a.trial;
  for (auto m : {&TrialResult::test_risk, &TrialResult::baseline_test_risk, &TrialResult::bayes_risk,
                 &TrialResult::excess_risk, &TrialResult::interp_risk, &TrialResult::teacher_clean_risk,
                 &TrialResult::train_loss, &TrialResult::label_loss, &TrialResult::feature_loss,
                 &TrialResult::best_test_risk, &TrialResult::baseline_best_test_risk, &TrialResult::loss_rise,
                 &TrialResult::baseline_loss_rise})
    EXPECT_TRUE(same_bits(a.*m, b.*m)) << "trial " << a.trial << ": " << a.*m << " vs " << b.*m;
  EXPECT_EQ(a.best_step, b.best_step) << a.trial;
  EXPECT_EQ(a.baseline_best_step, b.baseline_best_step) << a.trial;
  EXPECT_EQ(a.zero_loss, b.zero_loss) << a.trial;
  EXPECT_EQ(a.checkpoint_steps, b.checkpoint_steps) << a.trial;
  expect_same_curve(a.curve_test_risk, b.curve_test_risk, "curve_test_risk", a.trial);
  expect_same_curve(a.curve_label_loss, b.curve_label_loss, "curve_label_loss", a.trial);
  expect_same_curve(a.curve_feature_loss, b.curve_feature_loss, "curve_feature_loss", a.trial);
  expect_same_curve(a.curve_baseline_test_risk, b.curve_baseline_test_risk, "curve_baseline_test_risk", a.trial);
  expect_same_curve(a.curve_baseline_label_loss, b.curve_baseline_label_loss, "curve_baseline_label_loss", a.trial);
  expect_same_curve(a.curve_baseline_feature_loss, b.curve_baseline_feature_loss, "curve_baseline_feature_loss",
                    a.trial);
}

// Wraps a backend and records the batches it was given.
struct Recorder final : Backend {
  std::unique_ptr<Backend> inner;
  std::vector<std::vector<int64_t>> calls;  // ids of each call
  explicit Recorder(std::unique_ptr<Backend> b) : inner(std::move(b)) {}
  std::string name() const override { return inner->name(); }
  std::string device() const override { return inner->device(); }
  std::vector<TrialResult> run(const Batch& batch, const RunOptions& opt) override {
    calls.push_back(batch.ids);
    return inner->run(batch, opt);
  }
};

struct Parts {
  std::vector<std::unique_ptr<Backend>> owned;
  std::vector<Recorder*> rec;
};
Parts cpu_parts(int k) {
  Parts p;
  for (int i = 0; i < k; ++i) {
    auto r = std::make_unique<Recorder>(make_cpu_backend(one_thread()));
    p.rec.push_back(r.get());
    p.owned.push_back(std::move(r));
  }
  return p;
}

// The same results as one CPU backend, and each part got its contiguous share.
void check_split_matches_one_backend(int k, const Batch& batch, Precision precision) {
  RunOptions o = one_thread();
  o.precision = precision;
  const auto whole = make_cpu_backend(o)->run(batch, o);
  Parts parts = cpu_parts(k);
  auto recs = parts.rec;
  MultiBackend multi(std::move(parts.owned));
  ASSERT_EQ(multi.size(), static_cast<size_t>(k));
  const auto split = multi.run(batch, o);

  ASSERT_EQ(split.size(), batch.trials.size());
  ASSERT_EQ(whole.size(), batch.trials.size());
  for (size_t i = 0; i < split.size(); ++i) {
    EXPECT_EQ(split[i].trial, batch.ids[i]) << i;
    expect_same(split[i], whole[i]);
  }
  // The parts, in order, are the batch's ids cut into contiguous pieces whose
  // sizes differ by at most one (equal weights); empty parts are not run.
  std::vector<int64_t> seen;
  size_t lo = batch.trials.size(), hi = 0;
  for (auto* r : recs) {
    EXPECT_LE(r->calls.size(), 1u);
    for (const auto& c : r->calls) {
      EXPECT_FALSE(c.empty()) << "an empty part was run";
      lo = std::min(lo, c.size());
      hi = std::max(hi, c.size());
      seen.insert(seen.end(), c.begin(), c.end());
    }
  }
  EXPECT_EQ(seen, batch.ids);
  if (batch.trials.size() >= static_cast<size_t>(k)) EXPECT_LE(hi - lo, 1u);
}

TEST(MultiBackend, TwoCpuBackendsBitIdenticalToOne) {
  const Batch b = small_batch(7);
  check_split_matches_one_backend(2, b, Precision::f32);
}

TEST(MultiBackend, ThreeCpuBackendsBitIdenticalToOne) {
  const Batch b = small_batch(8);
  check_split_matches_one_backend(3, b, Precision::f32);
  check_split_matches_one_backend(3, b, Precision::f64);
}

TEST(MultiBackend, TheFixtureExercisesDoneAndFailedTrials) {
  // Guards the tests above: they compare real trainings and a set-up failure.
  const auto r = make_cpu_backend(one_thread())->run(small_batch(5), one_thread());
  ASSERT_EQ(r.size(), 5u);
  EXPECT_EQ(r[3].status, Status::failed);
  EXPECT_FALSE(r[3].message.empty());
  for (int i : {0, 1, 2, 4}) {
    EXPECT_EQ(r[i].status, Status::done) << r[i].message;
    EXPECT_GT(r[i].test_risk, 0);
    EXPECT_EQ(r[i].curve_test_risk.size(), r[i].checkpoint_steps.size());
  }
  EXPECT_FALSE(same_bits(r[0].test_risk, r[2].test_risk));  // different trials differ
}

TEST(MultiBackend, BatchSmallerThanTheBackends) {
  const Batch b = small_batch(2);
  check_split_matches_one_backend(3, b, Precision::f32);
  Parts parts = cpu_parts(3);
  auto recs = parts.rec;
  MultiBackend multi(std::move(parts.owned));
  ASSERT_EQ(multi.run(b, one_thread()).size(), 2u);
  size_t called = 0;
  for (auto* r : recs) called += r->calls.size();
  EXPECT_EQ(called, 2u);  // one trial each on two backends; the third has nothing to do
}

TEST(MultiBackend, EmptyBatch) {
  Parts parts = cpu_parts(2);
  auto recs = parts.rec;
  MultiBackend multi(std::move(parts.owned));
  EXPECT_TRUE(multi.run(Batch{}, one_thread()).empty());
  for (auto* r : recs) EXPECT_TRUE(r->calls.empty());
}

TEST(MultiBackend, BatchWithoutIdsKeepsIndexIds) {
  Batch b = small_batch(5);
  b.ids.clear();  // backends number such trials by index
  const auto whole = make_cpu_backend(one_thread())->run(b, one_thread());
  MultiBackend multi(std::move(cpu_parts(2).owned));
  const auto split = multi.run(b, one_thread());
  ASSERT_EQ(split.size(), 5u);
  for (size_t i = 0; i < split.size(); ++i) {
    EXPECT_EQ(split[i].trial, static_cast<int64_t>(i));
    expect_same(split[i], whole[i]);
  }
}

// Each part's run() waits until all parts are inside run(): only concurrent
// runs get through; sequential ones time out and report it.
struct Rendezvous {
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
};
struct WaitingBackend final : Backend {
  Rendezvous* rv;
  int parties;
  explicit WaitingBackend(Rendezvous* r, int k) : rv(r), parties(k) {}
  std::string name() const override { return "wait"; }
  std::string device() const override { return "rendezvous"; }
  std::vector<TrialResult> run(const Batch& batch, const RunOptions&) override {
    std::unique_lock<std::mutex> lock(rv->mu);
    ++rv->arrived;
    rv->cv.notify_all();
    if (!rv->cv.wait_for(lock, std::chrono::seconds(10), [&] { return rv->arrived >= parties; }))
      throw std::runtime_error("parts did not run concurrently");
    std::vector<TrialResult> out(batch.trials.size());
    for (size_t i = 0; i < out.size(); ++i) {
      out[i].trial = batch.ids[i];
      out[i].status = Status::done;
    }
    return out;
  }
};

TEST(MultiBackend, PartsRunConcurrently) {
  Rendezvous rv;
  std::vector<std::unique_ptr<Backend>> parts;
  for (int i = 0; i < 3; ++i) parts.push_back(std::make_unique<WaitingBackend>(&rv, 3));
  MultiBackend multi(std::move(parts));
  const auto r = multi.run(small_batch(6), one_thread());
  ASSERT_EQ(r.size(), 6u);
  EXPECT_EQ(rv.arrived, 3);
  for (size_t i = 0; i < r.size(); ++i) EXPECT_EQ(r[i].trial, small_batch(6).ids[i]);
}

struct ThrowingBackend final : Backend {
  std::string what;
  int delay_ms;
  ThrowingBackend(std::string w, int d) : what(std::move(w)), delay_ms(d) {}
  std::string name() const override { return "cpu"; }
  std::string device() const override { return "thrower"; }
  std::vector<TrialResult> run(const Batch&, const RunOptions&) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    throw std::runtime_error(what);
  }
};

// Finishes late and says so: the error must wait for it (all parts joined).
struct SlowBackend final : Backend {
  std::atomic<bool>* finished;
  explicit SlowBackend(std::atomic<bool>* f) : finished(f) {}
  std::string name() const override { return "cpu"; }
  std::string device() const override { return "slow"; }
  std::vector<TrialResult> run(const Batch& batch, const RunOptions& opt) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    auto r = make_cpu_backend(opt)->run(batch, opt);
    finished->store(true);
    return r;
  }
};

TEST(MultiBackend, AnExceptionInOnePartPropagatesAfterAllFinish) {
  std::atomic<bool> slow_done{false};
  std::vector<std::unique_ptr<Backend>> parts;
  parts.push_back(std::make_unique<SlowBackend>(&slow_done));
  parts.push_back(std::make_unique<ThrowingBackend>("device 1 lost", 0));
  parts.push_back(make_cpu_backend(one_thread()));
  MultiBackend multi(std::move(parts));
  try {
    multi.run(small_batch(6), one_thread());
    FAIL() << "the part's exception was swallowed";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "device 1 lost");
  }
  EXPECT_TRUE(slow_done.load()) << "rethrown before the other parts were joined";
}

TEST(MultiBackend, TheFirstFailingPartWins) {
  std::vector<std::unique_ptr<Backend>> parts;
  parts.push_back(std::make_unique<ThrowingBackend>("part 0", 200));  // throws last in time
  parts.push_back(make_cpu_backend(one_thread()));
  parts.push_back(std::make_unique<ThrowingBackend>("part 2", 0));
  MultiBackend multi(std::move(parts));
  try {
    multi.run(small_batch(3), one_thread());
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "part 0");
  }
}

struct ShortBackend final : Backend {
  std::string name() const override { return "cpu"; }
  std::string device() const override { return "short"; }
  std::vector<TrialResult> run(const Batch&, const RunOptions&) override { return {}; }
};

TEST(MultiBackend, APartReturningTooFewResultsIsAnError) {
  std::vector<std::unique_ptr<Backend>> parts;
  parts.push_back(make_cpu_backend(one_thread()));
  parts.push_back(std::make_unique<ShortBackend>());
  MultiBackend multi(std::move(parts));
  EXPECT_THROW(multi.run(small_batch(4), one_thread()), std::logic_error);
}

TEST(MultiBackend, NameAndDevice) {
  std::vector<std::unique_ptr<Backend>> parts;
  parts.push_back(std::make_unique<ThrowingBackend>("", 0));
  parts.push_back(std::make_unique<ShortBackend>());
  MultiBackend labelled(std::move(parts), {"0", "3"});
  EXPECT_EQ(labelled.name(), "cpu");
  EXPECT_EQ(labelled.device(), "2 devices: 0: thrower; 3: short");

  MultiBackend plain(std::move(cpu_parts(2).owned));
  const std::string one = make_cpu_backend(one_thread())->device();
  EXPECT_EQ(plain.device(), "2 devices: " + one + "; " + one);

  std::vector<std::unique_ptr<Backend>> single;
  single.push_back(std::make_unique<ShortBackend>());
  EXPECT_EQ(MultiBackend(std::move(single)).device(), "short");
}

// Each part's time report after its label; parts with nothing to report
// (the CPU backend) are left out, and so is the whole line when none has one.
struct ReportingBackend final : Backend {
  std::string report;
  explicit ReportingBackend(std::string r) : report(std::move(r)) {}
  std::string name() const override { return "cuda"; }
  std::string device() const override { return "reporting"; }
  std::vector<TrialResult> run(const Batch& b, const RunOptions&) override {
    return std::vector<TrialResult>(b.trials.size());
  }
  std::string time_report() const override { return report; }
};

TEST(MultiBackend, TimeReportJoinsThePartsReports) {
  std::vector<std::unique_ptr<Backend>> parts;
  parts.push_back(std::make_unique<ReportingBackend>("1 wave"));
  parts.push_back(std::make_unique<ReportingBackend>(""));
  parts.push_back(std::make_unique<ReportingBackend>("2 waves"));
  EXPECT_EQ(MultiBackend(std::move(parts), {"0", "1", "3"}).time_report(), "0: 1 wave | 3: 2 waves");
  std::vector<std::unique_ptr<Backend>> one;
  one.push_back(std::make_unique<ReportingBackend>("4 waves"));
  EXPECT_EQ(MultiBackend(std::move(one)).time_report(), "4 waves");
  EXPECT_EQ(MultiBackend(std::move(cpu_parts(2).owned)).time_report(), "");
}

TEST(MultiBackend, SharesFollowTheWeights) {
  MultiBackend equal(std::move(cpu_parts(3).owned));
  EXPECT_EQ(equal.split(10), (std::vector<size_t>{0, 3, 7, 10}));
  EXPECT_EQ(equal.split(0), (std::vector<size_t>{0, 0, 0, 0}));
  EXPECT_EQ(equal.split(1), (std::vector<size_t>{0, 0, 1, 1}));

  Parts parts = cpu_parts(2);
  auto recs = parts.rec;
  MultiBackend weighted(std::move(parts.owned), {}, {1.0, 3.0});
  EXPECT_EQ(weighted.split(8), (std::vector<size_t>{0, 2, 8}));
  const Batch b = small_batch(8);
  const auto r = weighted.run(b, one_thread());
  ASSERT_EQ(r.size(), 8u);
  ASSERT_EQ(recs[0]->calls.size(), 1u);
  ASSERT_EQ(recs[1]->calls.size(), 1u);
  EXPECT_EQ(recs[0]->calls[0], (std::vector<int64_t>(b.ids.begin(), b.ids.begin() + 2)));
  EXPECT_EQ(recs[1]->calls[0], (std::vector<int64_t>(b.ids.begin() + 2, b.ids.end())));
  const auto whole = make_cpu_backend(one_thread())->run(b, one_thread());
  for (size_t i = 0; i < r.size(); ++i) expect_same(r[i], whole[i]);
}

TEST(MultiBackend, RejectsBadConstruction) {
  EXPECT_THROW({ MultiBackend m(std::vector<std::unique_ptr<Backend>>{}); }, std::invalid_argument);
  std::vector<std::unique_ptr<Backend>> with_null;
  with_null.push_back(nullptr);
  EXPECT_THROW({ MultiBackend m(std::move(with_null)); }, std::invalid_argument);
  EXPECT_THROW({ MultiBackend m(std::move(cpu_parts(2).owned), {"0"}); }, std::invalid_argument);
  EXPECT_THROW({ MultiBackend m(std::move(cpu_parts(2).owned), {}, {1.0, 0.0}); }, std::invalid_argument);
}

// ----------------------------------------------------------------- --devices --

TEST(DeviceList, Parses) {
  const DeviceList all = parse_device_list("all");
  EXPECT_TRUE(all.all);
  EXPECT_TRUE(all.ordinals.empty());
  const DeviceList some = parse_device_list("0,1,3");
  EXPECT_FALSE(some.all);
  EXPECT_EQ(some.ordinals, (std::vector<int>{0, 1, 3}));
  EXPECT_EQ(parse_device_list("2").ordinals, (std::vector<int>{2}));
  EXPECT_EQ(parse_device_list("3,0").ordinals, (std::vector<int>{3, 0}));  // given order
}

TEST(DeviceList, RejectsWithTheOptionName) {
  struct Case {
    const char* text;
    const char* says;
  };
  for (const Case& c : {Case{"", "empty"}, Case{"x", "not a device ordinal"}, Case{"0,", "not a device ordinal"},
                        Case{",1", "not a device ordinal"}, Case{"0 1", "not a device ordinal"},
                        Case{"all,1", "not a device ordinal"}, Case{"1.5", "not a device ordinal"},
                        Case{"-1", "0 or more"}, Case{"0,-2", "0 or more"}, Case{"0,0", "listed twice"},
                        Case{"1,2,01", "listed twice"}, Case{"99999999999", "not a device ordinal"}}) {
    try {
      parse_device_list(c.text);
      ADD_FAILURE() << "accepted \"" << c.text << "\"";
    } catch (const InputError& e) {
      EXPECT_EQ(e.path, "--devices") << c.text;
      EXPECT_NE(std::string(e.what()).find(c.says), std::string::npos) << c.text << ": " << e.what();
    }
  }
}

}  // namespace
}  // namespace stsweep
