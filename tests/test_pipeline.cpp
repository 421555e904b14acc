// run_pipeline (host/pipeline.hpp): `run`'s loop between the batcher, a
// backend and the results writer. A deterministic fake backend stands in for
// training, so the files can be compared bit for bit.
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>

#include "batching.hpp"
#include "memory.hpp"
#include "pipeline.hpp"
#include "store.hpp"
#include "scratch.hpp"
#include "store_fakes.hpp"

namespace fs = std::filesystem;
using namespace stsweep;
using namespace stsweep::fakes;

namespace {

std::string path(const std::string& name) { return (stsweep::testing::scratch("pipeline") / name).string(); }

const char* kSweep = R"({"name": "pipeline-test", "seed": 9,
  "defaults": {"d": 8, "k": 4, "m": 4, "hidden": [8], "n_train": 8, "steps": 20, "checkpoints": 3},
  "grid": {"lambda": [0, 1, 2], "seed": {"range": [0, 10]}}})";

// fake_result of each trial, after `sleep_ms`; trial `fail_id` fails.
class FakeBackend : public Backend {
 public:
  explicit FakeBackend(int sleep_ms = 0, int64_t fail_id = -1) : sleep_ms_(sleep_ms), fail_id_(fail_id) {}
  std::string name() const override { return "fake"; }
  std::string device() const override { return "test"; }
  std::vector<TrialResult> run(const Batch& b, const RunOptions&) override {
    ++batches;
    if (sleep_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms_));
    std::vector<TrialResult> out;
    for (int64_t id : b.ids) {
      out.push_back(fake_result(id, 3));
      if (id == fail_id_) {
        out.back().status = Status::failed;
        out.back().message = "the fake fails it";
      }
    }
    return out;
  }
  std::atomic<int> batches{0};

 private:
  int sleep_ms_;
  int64_t fail_id_;
};

struct RunResult {
  PipelineStats stats;
  int64_t generation = 0;  // checkpoints written
};

RunResult run_to(const std::string& out, const Sweep& sw, Backend& be, size_t batch, const PipelineOptions& po,
                 const PipelineHooks& hooks = {}) {
  fs::remove(out);
  auto w = ResultsWriter::start(sw, writer_options(out, sw));
  Batcher batcher(sw, {0, sw.count()}, [&](uint64_t id) { return w->final(static_cast<int64_t>(id)); }, batch);
  RunResult r;
  r.stats = run_pipeline(batcher, be, RunOptions{}, *w, hooks, po);
  if (r.stats.stopped) w->checkpoint();
  r.generation = w->header().generation;
  return r;
}

void expect_files_equal(const std::string& a, const std::string& b) {
  H5Results fa = H5Results::open(a, false), fb = H5Results::open(b, false);
  ASSERT_EQ(fa.rows(), fb.rows());
  RowBlock ra = fa.read(0, fa.rows()), rb = fb.read(0, fb.rows());
  for (size_t r = 0; r < ra.rows(); ++r) expect_rows_equal(ra, r, rb, r, a + " row " + std::to_string(r));
}

}  // namespace

TEST(Pipeline, StoresEveryTrialAndCountsByStatus) {
  Sweep sw = Sweep::from_text(kSweep);
  FakeBackend be;
  const RunResult r = run_to(path("all.h5"), sw, be, 4, {});
  EXPECT_EQ(r.stats.total, 30);
  // fake_result: ids with id % 7 == 3 diverge (3, 10, 17, 24).
  EXPECT_EQ(r.stats.diverged, 4);
  EXPECT_EQ(r.stats.done, 26);
  EXPECT_EQ(r.stats.failed, 0);
  EXPECT_EQ(be.batches.load(), 8);  // ceil(30 / 4)
  EXPECT_FALSE(r.stats.stopped);
  EXPECT_GT(r.stats.store, 0);
  EXPECT_LE(r.stats.store_exposed, r.stats.store);
  EXPECT_EQ(r.generation, 1) << "without fold_while_training only finish() checkpoints";

  H5Results f = H5Results::open(path("all.h5"), false);
  EXPECT_EQ(f.header().n_done, 26);
  EXPECT_EQ(f.header().n_diverged, 4);
  EXPECT_EQ(f.header().n_pending, 0);
  RowBlock got = f.read(0, f.rows());
  std::vector<int64_t> ids(30);
  for (int64_t id = 0; id < 30; ++id) ids[static_cast<size_t>(id)] = id;
  const RowBlock want = fake_rows(sw, ids, 3);
  for (size_t r2 = 0; r2 < want.rows(); ++r2) expect_rows_equal(got, r2, want, r2, "row " + std::to_string(r2));
}

// The session in the file carries the store's time as the loop measured it up
// to the file's last update, opening included (PipelineOptions::open_seconds):
// `stsweep info` and h5py read it from there.
TEST(Pipeline, SessionRecordsTheStoreTime) {
  Sweep sw = Sweep::from_text(kSweep);
  FakeBackend be(20);
  PipelineOptions po;
  po.open_seconds = 1.5;
  const RunResult r = run_to(path("store_time.h5"), sw, be, 4, po);
  EXPECT_GE(r.stats.store, 1.5);
  EXPECT_GE(r.stats.store_exposed, 1.5);
  H5Results f = H5Results::open(path("store_time.h5"), false);
  ASSERT_EQ(f.header().sessions.size(), 1u);
  const Session& s = f.header().sessions.back();
  EXPECT_GE(s.store_seconds, 1.5);
  EXPECT_GE(s.store_exposed_seconds, 1.5);
  EXPECT_LE(s.store_exposed_seconds, s.store_seconds);
  EXPECT_LE(s.store_seconds, r.stats.store) << "the final fold is not in its own file";
  EXPECT_GT(s.store_seconds, 1.5) << "seven stored batches before the final fold";
  EXPECT_DOUBLE_EQ(f.header().store_seconds(), s.store_seconds);
}

// Folding while a batch trains checkpoints several times (so finish() has one
// batch left) and gives the same file as folding once at the end.
TEST(Pipeline, FoldingWhileTrainingGivesTheSameFile) {
  Sweep sw = Sweep::from_text(kSweep);
  // The fake sleeps 300 ms a batch: each fold (a few ms here) fits in its shadow.
  FakeBackend slow(300);
  PipelineOptions fold;
  fold.fold_while_training = true;
  const RunResult a = run_to(path("fold.h5"), sw, slow, 8, fold);
  EXPECT_EQ(a.stats.total, 30);
  // 4 batches: folds after storing batches 1..3 (each while the next trains), then finish().
  EXPECT_GE(a.generation, 3) << "folds happened while batches trained";
  EXPECT_LE(a.stats.store_exposed, a.stats.store);

  FakeBackend fast;
  const RunResult b = run_to(path("nofold.h5"), sw, fast, 8, {});
  EXPECT_EQ(b.generation, 1);
  expect_files_equal(path("fold.h5"), path("nofold.h5"));
}

TEST(Pipeline, FailedTrialsReachTheHookAndTheFile) {
  Sweep sw = Sweep::from_text(kSweep);
  FakeBackend be(0, 12);
  std::vector<int64_t> failed;
  int64_t last_progress = -1;
  PipelineHooks h;
  h.on_failed = [&](const TrialResult& r) { failed.push_back(r.trial); };
  h.progress = [&](int64_t n) {
    EXPECT_GT(n, last_progress);
    last_progress = n;
  };
  const RunResult r = run_to(path("failed.h5"), sw, be, 5, {}, h);
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0], 12);
  EXPECT_EQ(r.stats.failed, 1);
  EXPECT_EQ(last_progress, 30);
  H5Results f = H5Results::open(path("failed.h5"), false);
  EXPECT_EQ(f.header().n_failed, 1);
  // The failed row keeps its parameters; its metrics are fill values (NaN, -1),
  // not the backend's numbers (the fake fills them in) or zeros.
  const RowBlock rows = f.read(0, f.rows());
  const auto col = [&](const char* name) { return rows.cols.at(store_column_index(name)); };
  for (size_t r = 0; r < rows.rows(); ++r) {
    const bool bad = rows.trial[r] == 12;
    EXPECT_EQ(std::isnan(col("test_risk").f[r]), bad) << r;
    EXPECT_EQ(col("steps_run").i[r] == -1, bad) << r;
    EXPECT_EQ(col("zero_loss").i[r] == -1, bad) << r;
    EXPECT_FALSE(std::isnan(col("lambda").f[r])) << r;
    for (int c = 0; c < rows.C; ++c) {  // curves too (the fake gives every trial 3 points)
      EXPECT_EQ(std::isnan(col("curve_test_risk").f[r * rows.C + c]), bad) << r << ", " << c;
      EXPECT_EQ(col("step").i[r * rows.C + c] == -1, bad) << r << ", " << c;
    }
  }
}

// A stop request after the first stored batch: on_stop hears of the batch in
// flight, which is dropped; what was stored is in the file after a checkpoint.
TEST(Pipeline, StopDropsTheBatchInFlightAndKeepsTheStoredOnes) {
  Sweep sw = Sweep::from_text(kSweep);
  FakeBackend be(20);
  bool stop = false;
  int64_t heard = -1;
  int stops = 0;
  PipelineHooks h;
  h.stop_requested = [&] { return stop; };
  h.progress = [&](int64_t) { stop = true; };
  h.on_stop = [&](int64_t in_flight) {
    ++stops;
    heard = in_flight;
  };
  const RunResult r = run_to(path("stop.h5"), sw, be, 7, {}, h);
  EXPECT_TRUE(r.stats.stopped);
  EXPECT_EQ(stops, 1);
  EXPECT_EQ(heard, 7);
  EXPECT_EQ(r.stats.dropped, 7);
  EXPECT_EQ(r.stats.total, 7);
  EXPECT_EQ(be.batches.load(), 2) << "no batch starts after the stop";
  H5Results f = H5Results::open(path("stop.h5"), false);
  EXPECT_EQ(f.header().n_done + f.header().n_diverged, 7);
  EXPECT_EQ(f.header().n_pending, 23);
}

// A stop asked for while the last batch is stored changes nothing: the run is
// complete (until session 13: stopped, "interrupted", exit 1, journal kept).
TEST(Pipeline, StopDuringTheLastStoreFinishesTheRun) {
  Sweep sw = Sweep::from_text(kSweep);
  FakeBackend be;
  bool stop = false;
  int stops = 0;
  int64_t stored = 0;
  PipelineHooks h;
  h.stop_requested = [&] { return stop; };
  h.progress = [&](int64_t n) {
    stored = n;
    if (n == 30) stop = true;  // the signal arrives during the last store
  };
  h.on_stop = [&](int64_t) { ++stops; };
  const RunResult r = run_to(path("stop_last.h5"), sw, be, 10, {}, h);
  EXPECT_FALSE(r.stats.stopped);
  EXPECT_EQ(stops, 0);
  EXPECT_EQ(stored, 30);
  H5Results f = H5Results::open(path("stop_last.h5"), false);
  EXPECT_EQ(f.header().n_pending, 0);
  EXPECT_FALSE(fs::exists(path("stop_last.h5") + ".journal"));
}

// A stop seen while the batcher decodes (its stop predicate is the pipeline's)
// ends the run there: nothing more is launched.
TEST(Pipeline, StopWhileDecodingEndsTheRun) {
  Sweep sw = Sweep::from_text(R"({"name": "long", "seed": 1,
    "defaults": {"d": 8, "k": 4, "m": 4, "hidden": [8], "n_train": 8, "steps": 2, "checkpoints": 2},
    "grid": {"seed": {"range": [0, 100000]}}})");
  FakeBackend be;
  int asked = 0;
  PipelineHooks h;
  h.stop_requested = [&] { return ++asked > 2; };
  int stops = 0;
  h.on_stop = [&](int64_t) { ++stops; };
  const RunResult r = run_to(path("stop_decode.h5"), sw, be, 50000, {}, h);
  EXPECT_TRUE(r.stats.stopped);
  EXPECT_EQ(stops, 1);
  EXPECT_EQ(be.batches.load(), 0) << "the first chunk's decoding was stopped";
  EXPECT_EQ(r.stats.total, 0);
}

// An error of the store or the batcher with a batch training goes to on_error
// while that batch is still in flight (run checkpoints, reports and exits from
// there): until session 13 the future's destructor waited for the whole
// batch, whose results were then dropped. Here the batcher's: trials 15..29
// do not combine (k > d), as a trial a big sweep's sampled check missed would.
TEST(Pipeline, ErrorsReachOnErrorWhileTheBatchIsInFlight) {
  Sweep sw = Sweep::from_text(R"({"name": "bad-tail", "seed": 1,
    "defaults": {"d": 8, "m": 4, "hidden": [8], "n_train": 8, "steps": 2, "checkpoints": 2},
    "grid": {"k": [4, 16], "seed": {"range": [0, 15]}}})");
  struct Held : FakeBackend {
    std::atomic<bool> release{false};
    std::atomic<int> returned{0};
    std::vector<TrialResult> run(const Batch& b, const RunOptions& o) override {
      // Each batch waits for the test's release (5 s at most).
      for (int i = 0; i < 5000 && !release; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      auto r = FakeBackend::run(b, o);
      ++returned;
      return r;
    }
  } be;
  const std::string out = path("bad_tail.h5");
  fs::remove(out);
  auto w = ResultsWriter::start(sw, writer_options(out, sw));
  Batcher batcher(sw, {0, 15}, nullptr, 10, 10);  // chunks of 10 ids: 0-9, 10-14
  Batcher bad(sw, {0, sw.count()}, nullptr, 10, 10);
  PipelineHooks h;
  bool heard = false, in_flight = false;
  h.on_error = [&](std::exception_ptr e) {
    heard = true;
    in_flight = be.returned.load() == 0;  // batch 0-9 is held until the release below
    be.release = true;
    try {
      std::rethrow_exception(e);
    } catch (const InputError& x) {
      EXPECT_NE(std::string(x.what()).find("k"), std::string::npos) << x.what();
    }
  };
  be.release = true;
  EXPECT_NO_THROW(run_pipeline(batcher, be, RunOptions{}, *w, h));  // the good ids alone: no error
  EXPECT_FALSE(heard);
  be.release = false;  // now batch 0-9 trains until on_error, which the decoding of id 15 calls
  be.returned = 0;
  const std::string out2 = path("bad_tail_2.h5");
  fs::remove(out2);
  auto w2 = ResultsWriter::start(sw, writer_options(out2, sw));
  EXPECT_THROW(run_pipeline(bad, be, RunOptions{}, *w2, h), InputError);
  EXPECT_TRUE(heard);
  EXPECT_TRUE(in_flight) << "on_error came after the batch in flight had finished";
}

TEST(Pipeline, BackendErrorsPropagateAndStoredBatchesSurvive) {
  Sweep sw = Sweep::from_text(kSweep);
  struct Throwing : FakeBackend {
    std::vector<TrialResult> run(const Batch& b, const RunOptions& o) override {
      if (b.ids.front() >= 10) throw std::runtime_error("device lost");
      return FakeBackend::run(b, o);
    }
  } be;
  const std::string out = path("throw.h5");
  fs::remove(out);
  auto w = ResultsWriter::start(sw, writer_options(out, sw));
  Batcher batcher(sw, {0, sw.count()}, [&](uint64_t id) { return w->final(static_cast<int64_t>(id)); }, 5);
  EXPECT_THROW(
      {
        try {
          run_pipeline(batcher, be, RunOptions{}, *w);
        } catch (const std::runtime_error& e) {
          EXPECT_STREQ(e.what(), "device lost");
          throw;
        }
      },
      std::runtime_error);
  w->checkpoint();
  EXPECT_EQ(w->header().n_done + w->header().n_diverged, 10);
}

// The allocator policy (host/memory.hpp) that `stsweep` and the CPU bench set
// before any work: a block freed by one trial serves the next one's without
// new pages. Untuned, glibc maps a block above 128 KiB afresh (and the dynamic
// threshold it then raises stops below 32 MiB), so at least one of these
// sizes would fault its pages again.
namespace {
long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}
// Minor page faults of allocating n bytes, writing each page and freeing them.
long faults_of_a_block(size_t n) {
  const long before = minor_faults();
  auto* p = static_cast<volatile char*>(std::malloc(n));
  for (size_t i = 0; i < n; i += 4096) p[i] = 1;
  std::free(const_cast<char*>(p));
  return minor_faults() - before;
}
struct EnvVar {  // sets a variable for one scope
  std::string name;
  EnvVar(const char* n, const char* v) : name(n) { setenv(n, v, 1); }
  ~EnvVar() { unsetenv(name.c_str()); }
};
}  // namespace

TEST(Malloc, TunedPolicyServesFreedBlocksWithoutNewPages) {
  if (!tune_malloc())
    GTEST_SKIP() << "glibc malloc is not the allocator here, or GLIBC_TUNABLES or STSWEEP_MALLOC=system "
                    "chose its policy";
  for (size_t mib : {1, 8, 30}) {
    const long first = faults_of_a_block(mib << 20);
    const long again = faults_of_a_block(mib << 20);
    EXPECT_GT(first + again, 0) << "the counter moves (" << mib << " MiB)";
    EXPECT_LT(again, 64) << mib << " MiB freed and allocated again faulted " << again << " pages (of "
                         << (mib << 8) << ")";
  }
}

TEST(Malloc, PolicyComesFromTheEnvironment) {
  {
    EnvVar v("STSWEEP_MALLOC", "system");
    EXPECT_FALSE(tune_malloc());
  }
  {
    EnvVar v("STSWEEP_MALLOC", "fast");
    try {
      tune_malloc();
      FAIL() << "STSWEEP_MALLOC=fast was accepted";
    } catch (const InputError& e) {
      EXPECT_EQ(e.path, "STSWEEP_MALLOC");
      EXPECT_NE(std::string(e.what()).find("'tuned'"), std::string::npos) << e.what();
    }
  }
}
