// The results store: round trips, journal and resume bookkeeping, merge and
// its refusals, bad outputs. Results here come from a deterministic fake, not
// a backend (tests/python/test_results.py runs the real engine end to end).
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include <gtest/gtest.h>

#include "store.hpp"
#include "scratch.hpp"
#include "store_fakes.hpp"

namespace fs = std::filesystem;
using namespace stsweep;
using namespace stsweep::fakes;

namespace {

std::string tmpdir() { return stsweep::testing::scratch("store").string(); }
std::string path(const std::string& name) { return tmpdir() + "/" + name; }

const char* kSweep = R"({"name": "store-test", "seed": 5,
  "defaults": {"d": 8, "k": 4, "m": 4, "hidden": [8], "n_train": 8, "steps": 20, "checkpoints": 4},
  "grid": {"lambda": [0, 1], "seed": {"range": [0, 10]}}})";

// Every column of a block, with extreme values of its type.
RowBlock extreme_block(const std::vector<int64_t>& ids, int C, int salt) {
  const auto& cs = store_columns();
  RowBlock b = RowBlock::empty(C);
  b.trial = ids;
  const size_t n = ids.size();
  const double specials[] = {std::numeric_limits<double>::quiet_NaN(), -0.0, std::numeric_limits<double>::infinity(),
                             -std::numeric_limits<double>::infinity(), std::numeric_limits<double>::denorm_min(),
                             1.0 / 3.0, -1e308};
  const int64_t ispecial[] = {std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(), 0, -1, 42};
  const std::string sspecial[] = {"", "balanced", "α-β ünïcode ✓", "with,comma \"quoted\"", std::string(300, 'x')};
  for (size_t k = 0; k < cs.size(); ++k) {
    auto& d = b.cols[k];
    size_t len = cs[k].curve ? n * C : n;
    for (size_t i = 0; i < len; ++i) {
      size_t v = i + k + salt;
      switch (cs[k].type) {
        case ColType::f64: d.f.push_back(specials[v % 7]); break;
        case ColType::i64: d.i.push_back(ispecial[v % 5]); break;
        case ColType::i8: d.i.push_back(static_cast<int64_t>(v % 4) - 1 + (cs[k].name == "status" ? 1 : 0)); break;
        case ColType::str: d.s.push_back(sspecial[v % 5]); break;
      }
    }
  }
  return b;
}

FileHeader test_header(std::vector<IdRange> ranges) {
  FileHeader h;
  h.schema = store_schema_digest();
  h.sweep_json = "{\"name\": \"x\"}";
  h.sweep_hash = "abc";
  h.sweep_name = "x";
  h.sweep_seed = 77;
  h.sweep_trials = 100;
  h.shard = "1/4";
  h.ranges = std::move(ranges);
  h.file_id = "id1";
  Session s;
  s.start_time = "2025-01-01T00:00:00Z";
  s.backend = "cpu";
  s.device = "dev ✓";
  s.precision = "f64";
  s.wall_seconds = 1.5;
  s.compute_seconds = 0.25;
  s.trials = 3;
  h.sessions = {s, s};
  h.sessions[1].backend = "cuda";
  return h;
}

}  // namespace

TEST(Store, ColumnsCoverEveryParameterMetricAndCurve) {
  const auto& cs = store_columns();
  size_t params = 0;
  for (const auto& c : cs) params += !c.key.empty();
  EXPECT_EQ(params, param_specs().size());
  for (const auto& m : scalar_metric_names()) EXPECT_GE(store_column_index(m), 0) << m;
  for (const auto& m : curve_names()) EXPECT_GE(store_column_index("curve_" + m), 0) << m;
  EXPECT_GE(store_column_index("step"), 0);
  EXPECT_EQ(cs[store_column_index("status")].type, ColType::i8);
  EXPECT_EQ(store_column_index("trial"), -1);  // the coordinate, not a column
}

TEST(Store, FromBatchPutsEachFieldInItsColumn) {
  Sweep sw = Sweep::from_text(kSweep);
  RowBlock b = fake_rows(sw, {3, 12}, 5);
  ASSERT_EQ(b.rows(), 2u);
  ASSERT_EQ(b.C, 5);
  auto col = [&](const std::string& n) { return b.cols[store_column_index(n)]; };
  TrialResult r = fake_result(12, 5);
  EXPECT_EQ(col("test_risk").f[1], r.test_risk);
  EXPECT_EQ(col("baseline_test_risk").f[1], r.baseline_test_risk);
  EXPECT_EQ(col("bayes_risk").f[1], r.bayes_risk);
  EXPECT_EQ(col("excess_risk").f[1], r.excess_risk);
  EXPECT_EQ(col("interp_risk").f[1], r.interp_risk);
  EXPECT_EQ(col("teacher_clean_risk").f[1], r.teacher_clean_risk);
  EXPECT_EQ(col("train_loss").f[1], r.train_loss);
  EXPECT_EQ(col("label_loss").f[1], r.label_loss);
  EXPECT_EQ(col("feature_loss").f[1], r.feature_loss);
  EXPECT_EQ(col("best_test_risk").f[1], r.best_test_risk);
  EXPECT_EQ(col("best_step").i[1], r.best_step);
  EXPECT_EQ(col("steps_run").i[1], r.steps_run);
  EXPECT_EQ(col("zero_loss").i[1], r.zero_loss);
  EXPECT_EQ(col("status").i[0], static_cast<int64_t>(Status::diverged));  // 3 % 7 == 3
  EXPECT_EQ(col("status").i[1], static_cast<int64_t>(Status::done));
  EXPECT_EQ(col("step").i[5 + 4], 40);
  EXPECT_EQ(col("curve_test_risk").f[5 + 2], r.curve_test_risk[2]);
  EXPECT_EQ(col("curve_baseline_feature_loss").f[5 + 3], r.curve_baseline_feature_loss[3]);
  EXPECT_EQ(col("curve_label_loss").f[5 + 1], r.curve_label_loss[1]);
  // Parameters equal flatten() of the trial.
  auto pv = flatten(sw.trial(12));
  const auto& cs = store_columns();
  for (size_t k = 0, p = 0; k < cs.size(); ++k) {
    if (cs[k].key.empty()) continue;
    const ParamValue& v = pv[p++];
    if (cs[k].type == ColType::str) EXPECT_EQ(b.cols[k].s[1], std::get<std::string>(v)) << cs[k].name;
    else if (cs[k].type == ColType::f64) EXPECT_EQ(b.cols[k].f[1], std::get<double>(v)) << cs[k].name;
    else EXPECT_EQ(b.cols[k].i[1], std::get<int64_t>(v)) << cs[k].name;
  }
  EXPECT_EQ(b.cols[store_column_index("lambda")].f[1], 1.0);  // id 12: lambda axis first
  EXPECT_EQ(b.cols[store_column_index("seed")].i[1], 2);
}

TEST(Store, RoundTripOfEveryTypeWithWideningCurves) {
  const std::string p = path("roundtrip.h5");
  FileHeader h = test_header({{10, 20}, {30, 35}});
  RowBlock a = extreme_block({31, 12, 10, 19}, 3, 0);   // out of order, across ranges
  RowBlock b = extreme_block({34, 11}, 5, 1);           // wider curves
  {
    H5Results f = H5Results::create(p, h, 4);
    f.write(a);
    f.write(b);
    f.recount();
    f.write_header();
    f.close();
  }
  H5Results f = H5Results::open(p, false);
  EXPECT_EQ(f.rows(), 15);
  EXPECT_EQ(f.checkpoints(), 5);
  const FileHeader& g = f.header();
  EXPECT_EQ(g.sweep_json, h.sweep_json);
  EXPECT_EQ(g.sweep_seed, 77u);
  EXPECT_EQ(g.shard, "1/4");
  ASSERT_EQ(g.ranges.size(), 2u);
  EXPECT_EQ(g.ranges[1].begin, 30u);
  EXPECT_EQ(g.ranges[1].end, 35u);
  EXPECT_EQ(g.sessions.size(), 2u);
  EXPECT_EQ(g.backends(), "cpu,cuda");
  EXPECT_EQ(g.devices(), "dev ✓");
  EXPECT_DOUBLE_EQ(g.wall_seconds(), 3.0);
  EXPECT_EQ(g.n_pending + g.n_done + g.n_diverged + g.n_failed, 15);
  RowBlock all = f.read(0, f.rows());
  EXPECT_EQ(all.trial.front(), 10);
  EXPECT_EQ(all.trial.back(), 34);
  for (size_t r = 0; r < a.rows(); ++r) expect_rows_equal(all, f.row_of(a.trial[r]), a, r, "a");
  for (size_t r = 0; r < b.rows(); ++r) expect_rows_equal(all, f.row_of(b.trial[r]), b, r, "b");
  // Rows never written: pending, NaN metrics, -1 steps, empty strings.
  int64_t row = f.row_of(33);
  EXPECT_EQ(all.cols[store_column_index("status")].i[row], 0);
  EXPECT_TRUE(std::isnan(all.cols[store_column_index("test_risk")].f[row]));
  EXPECT_EQ(all.cols[store_column_index("step")].i[row * 5], -1);
  EXPECT_EQ(all.cols[store_column_index("teacher_kind")].s[row], "");
  EXPECT_EQ(f.row_of(25), -1);
  // A block read of a subset of columns.
  RowBlock part = f.read(2, 3, {store_column_index("test_risk")});
  EXPECT_EQ(part.trial[0], 12);
  EXPECT_EQ(bits(part.cols[store_column_index("test_risk")].f[0]),
            bits(a.cols[store_column_index("test_risk")].f[1]));
  EXPECT_TRUE(part.cols[store_column_index("noise")].f.empty());
}

// A record whose framing and checksum are intact but whose row count asks for
// far more than it holds (n x C = 30 x 2^24 curve values, 4 GB): the
// reader checks lengths against the bytes left before allocating, so the
// record reads as damaged (the journal ends before it) without first
// allocating and zeroing gigabytes (it did: peak memory grew by 4 GB).
// Appends `payload` to a journal as one record with intact framing and
// checksum (what a damaged but checksummed record looks like); returns it.
std::string append_framed_record(const std::string& journal, const std::string& payload) {
  std::string rec;
  auto put_rec = [&](const auto& v) { rec.append(reinterpret_cast<const char*>(&v), sizeof v); };
  put_rec(uint32_t{0x52575354});  // "TSWR"
  put_rec(uint32_t{0});
  put_rec(static_cast<uint64_t>(payload.size()));
  put_rec(journal_record_checksum(payload.data(), payload.size()));
  rec += payload;
  std::ofstream j(journal, std::ios::app | std::ios::binary);
  j << rec;
  return rec;
}

TEST(Store, JournalRecordWithAnImpossibleCountIsDamagedNotAllocated) {
  Sweep sw = Sweep::from_text(kSweep);
  const std::string out = path("huge_count.h5");
  auto opt = writer_options(out, sw);
  {
    auto w = ResultsWriter::start(sw, opt);
    w->append(fake_rows(sw, {0, 1}, 4), 0.5);
  }
  std::string payload;
  auto put = [&](const auto& v) { payload.append(reinterpret_cast<const char*>(&v), sizeof v); };
  put(0.25);              // compute seconds
  put(uint64_t{30});      // rows
  put(int32_t{1 << 24});  // checkpoints per curve
  for (int64_t id = 0; id < 30; ++id) put(id);
  payload.append(65536, '\0');  // zeros: the scalar columns before the first curve read fine
  const std::string rec = append_framed_record(out + ".journal", payload);
  struct rusage before {};
  ::getrusage(RUSAGE_SELF, &before);
  const auto js = inspect_journal(out + ".journal");
  struct rusage after {};
  ::getrusage(RUSAGE_SELF, &after);
  EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 512L * 1024) << "KB of peak memory to read a damaged record";
  EXPECT_TRUE(js.valid_header);
  EXPECT_EQ(js.records, 1);
  EXPECT_EQ(js.rows, 2);
  EXPECT_EQ(js.torn_bytes, static_cast<int64_t>(rec.size()));
  EXPECT_TRUE(js.corrupt) << "a record that checksums but does not decode is not a torn write";
  opt.resume = true;
  auto w = ResultsWriter::start(sw, opt);
  EXPECT_EQ(w->resumed_rows(), 2);
  bool said = false;
  for (const auto& n : w->notes()) said = said || n.find("does not decode") != std::string::npos;
  EXPECT_TRUE(said) << "the resume says a record was dropped as undecodable";
}

// A checkpoint that cannot read back every row its session journaled (a
// record that checksums but does not decode: before session 12 a trial of
// more than 2^24 checkpoints wrote one, and the run ended with exit 0 and the
// trial pending) fails, and keeps the journal as it is; --resume then
// recovers what reads.
TEST(Store, ACheckpointThatCannotReadItsRowsKeepsTheJournal) {
  Sweep sw = Sweep::from_text(kSweep);
  const std::string out = path("unreadable.h5");
  auto opt = writer_options(out, sw);
  auto w = ResultsWriter::start(sw, opt);
  w->append(fake_rows(sw, {0, 1}, 4), 0.5);
  std::string payload;
  auto put = [&](const auto& v) { payload.append(reinterpret_cast<const char*>(&v), sizeof v); };
  put(0.25);
  put(uint64_t{1});
  put(int32_t{-1});  // no record has a negative curve width
  put(int64_t{2});
  append_framed_record(out + ".journal", payload);
  w->append(fake_rows(sw, {3}, 4), 0.5);  // after the bad record: this session's too
  const auto before = fs::file_size(out + ".journal");
  try {
    w->finish();
    FAIL() << "a checkpoint dropped rows it could not read";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("2 of the 3 rows"), std::string::npos) << e.what();
  }
  EXPECT_EQ(fs::file_size(out + ".journal"), before) << "the journal was emptied";
  EXPECT_FALSE(fs::exists(out + ".tmp"));
  w.reset();
  H5Results::open(out, false);  // the last checkpoint opens
  opt.resume = true;
  auto again = ResultsWriter::start(sw, opt);
  EXPECT_EQ(again->resumed_rows(), 2);
}

TEST(Store, WriterJournalsResumesAndDropsTornRecords) {
  Sweep sw = Sweep::from_text(kSweep);
  const std::string out = path("resume.h5");
  auto opt = writer_options(out, sw);
  {
    auto w = ResultsWriter::start(sw, opt);
    EXPECT_EQ(w->remaining(), 20);
    EXPECT_THROW(ResultsWriter::start(sw, [&] { auto o = opt; o.resume = true; return o; }()),
                 std::runtime_error);  // locked by w
    w->append(fake_rows(sw, {0, 1, 2, 3}, 4), 0.5);
    w->checkpoint();
    w->append(fake_rows(sw, {4, 5, 6}, 4), 0.25);
    // "Crash": the writer goes away without finish(); then a torn record.
  }
  {
    std::ofstream j(out + ".journal", std::ios::app | std::ios::binary);
    j << "TSWR\x01\x02 torn half record";
  }
  {  // the file opens and holds the checkpointed rows only
    H5Results f = H5Results::open(out, false);
    EXPECT_EQ(f.header().n_done + f.header().n_diverged, 4);
    auto js = inspect_journal(out + ".journal");
    EXPECT_EQ(js.rows, 3);
    EXPECT_GT(js.torn_bytes, 0);
  }
  opt.resume = true;
  auto w = ResultsWriter::start(sw, opt);
  EXPECT_EQ(w->resumed_rows(), 3);
  EXPECT_EQ(w->remaining(), 13);
  for (int64_t id = 0; id < 20; ++id) EXPECT_EQ(w->final(id), id < 7) << id;
  bool torn_note = false;
  for (const auto& n : w->notes()) torn_note |= n.find("incomplete journal record") != std::string::npos;
  EXPECT_TRUE(torn_note);
  std::vector<int64_t> rest;
  for (int64_t id = 7; id < 20; ++id) rest.push_back(id);
  w->append(fake_rows(sw, rest, 4), 1.0);
  w->finish();
  EXPECT_FALSE(fs::exists(out + ".journal"));
  H5Results f = H5Results::open(out, false);
  EXPECT_TRUE(f.header().complete());
  EXPECT_EQ(f.header().sessions.size(), 2u);
  EXPECT_DOUBLE_EQ(f.header().compute_seconds(), 1.75);
  RowBlock all = f.read(0, 20);
  RowBlock exp = fake_rows(sw, [] { std::vector<int64_t> v; for (int i = 0; i < 20; ++i) v.push_back(i); return v; }(), 4);
  for (size_t r = 0; r < 20; ++r) expect_rows_equal(all, r, exp, r, "resumed");
}

TEST(Store, StaleJournalOfAnEarlierCheckpointIsIgnored) {
  Sweep sw = Sweep::from_text(kSweep);
  const std::string out = path("stale.h5");
  auto opt = writer_options(out, sw);
  std::string saved;
  {
    auto w = ResultsWriter::start(sw, opt);
    w->append(fake_rows(sw, {0, 1}, 4), 0.1);
    std::ifstream j(out + ".journal", std::ios::binary);
    saved.assign(std::istreambuf_iterator<char>(j), {});
    w->checkpoint();  // folds rows 0, 1; generation + 1
  }
  {  // a journal of the previous generation (crash between rename and reset)
    std::ofstream j(out + ".journal", std::ios::binary | std::ios::trunc);
    j << saved;
  }
  opt.resume = true;
  auto w = ResultsWriter::start(sw, opt);
  EXPECT_EQ(w->resumed_rows(), 0);
  EXPECT_EQ(w->remaining(), 18);
}

TEST(Store, ResumeRefusesAnotherSweepShardOrPrecision) {
  Sweep sw = Sweep::from_text(kSweep);
  std::string other_text = kSweep;
  other_text.replace(other_text.find("\"seed\": 5"), 9, "\"seed\": 6");
  Sweep other = Sweep::from_text(other_text);
  const std::string out = path("refuse.h5");
  { auto w = ResultsWriter::start(sw, writer_options(out, sw)); }
  auto o = writer_options(out, sw);
  EXPECT_THROW(ResultsWriter::start(sw, o), InputError);  // exists, no --resume
  o.resume = true;
  try {
    ResultsWriter::start(other, [&] { auto x = o; x.range = shard_range(other.count(), {}); return x; }());
    FAIL() << "another sweep was resumed";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("hash"), std::string::npos) << e.what();
  }
  auto os = o;
  os.shard = "0/2";
  os.range = shard_range(sw.count(), {0, 2});
  EXPECT_THROW(ResultsWriter::start(sw, os), InputError);
  auto op = o;
  op.precision = "f64";
  EXPECT_THROW(ResultsWriter::start(sw, op), InputError);
  op.force = true;
  EXPECT_NO_THROW(ResultsWriter::start(sw, op));
}

TEST(Store, MergeEqualsOneFileAndRefusesMismatches) {
  Sweep sw = Sweep::from_text(kSweep);
  std::vector<std::string> shards;
  for (uint64_t i = 0; i < 3; ++i) {
    std::string p = path("m" + std::to_string(i) + ".h5");
    auto o = writer_options(p, sw, {i, 3});
    auto w = ResultsWriter::start(sw, o);
    std::vector<int64_t> ids;
    for (uint64_t id = o.range.begin; id < o.range.end; ++id) ids.push_back(static_cast<int64_t>(id));
    w->append(fake_rows(sw, ids, 3 + static_cast<int>(i)), 0.1);  // curve widths differ per shard
    w->finish();
    shards.push_back(p);
  }
  const std::string merged = path("merged.h5");
  MergeReport rep = merge_results(merged, {shards[2], shards[0], shards[1]}, false);
  EXPECT_EQ(rep.rows, 20);
  H5Results f = H5Results::open(merged, false);
  EXPECT_EQ(f.header().shard, "0/1");
  EXPECT_TRUE(f.header().complete());
  EXPECT_EQ(f.checkpoints(), 5);
  RowBlock all = f.read(0, 20);
  for (int64_t id = 0; id < 20; ++id) {
    int C = 3 + static_cast<int>(shard_range(20, {0, 3}).end <= static_cast<uint64_t>(id)) +
            static_cast<int>(shard_range(20, {1, 3}).end <= static_cast<uint64_t>(id));
    RowBlock e = fake_rows(sw, {id}, C);
    expect_rows_equal(all, static_cast<size_t>(id), e, 0, "merged");
  }
  // Refusals: overlap, another sweep, existing output.
  EXPECT_THROW(merge_results(path("x1.h5"), {shards[0], shards[0]}, false), InputError);
  EXPECT_THROW(merge_results(path("x2.h5"), {merged, shards[1]}, false), InputError);
  EXPECT_THROW(merge_results(merged, {shards[0]}, false), InputError);
  std::string other_text = kSweep;
  other_text.replace(other_text.find("\"seed\": 5"), 9, "\"seed\": 6");
  Sweep other = Sweep::from_text(other_text);
  std::string po = path("other.h5");
  { auto w = ResultsWriter::start(other, writer_options(po, other, {1, 3})); }
  try {
    merge_results(path("x3.h5"), {shards[0], po}, false);
    FAIL() << "merged two sweeps";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("sweep"), std::string::npos);
  }
  EXPECT_FALSE(fs::exists(path("x3.h5")));
  EXPECT_FALSE(fs::exists(path("x3.h5.tmp")));
  // A shard named like the merge's temporary file (OUT.tmp, removed before
  // the merge writes it): refused, and the shard is still there.
  fs::copy_file(shards[0], path("y.h5.tmp"));
  EXPECT_THROW(merge_results(path("y.h5"), {path("y.h5.tmp"), shards[1]}, false), InputError);
  EXPECT_TRUE(fs::exists(path("y.h5.tmp")));
  // A journal of an earlier checkpoint (a crash between the rename and the
  // journal's reset leaves one; its rows are in the file) does not count as
  // rows waiting: the merge goes on.
  const std::string g = path("gen.h5");
  {
    auto w = ResultsWriter::start(sw, writer_options(g, sw, {0, 3}));
    std::vector<int64_t> ids;
    for (uint64_t id = 0; id < shard_range(20, {0, 3}).end; ++id) ids.push_back(static_cast<int64_t>(id));
    w->append(fake_rows(sw, ids, 3), 0.1);
    fs::copy_file(g + ".journal", path("gen.journal.0"));
    w->finish();
  }
  fs::copy_file(path("gen.journal.0"), g + ".journal", fs::copy_options::overwrite_existing);
  const JournalSummary stale = inspect_journal(g + ".journal");
  EXPECT_GT(stale.rows, 0);
  EXPECT_NE(stale.generation, H5Results::open(g, false).header().generation);
  EXPECT_EQ(merge_results(path("gen_merged.h5"), {g, shards[1], shards[2]}, false).rows, 20);
  // Over a file a run is writing (it holds its journal's lock): refused even
  // with --force, since the run's next checkpoint would overwrite the merge.
  {
    auto live = ResultsWriter::start(sw, writer_options(path("live.h5"), sw));
    const std::string id = H5Results::open(path("live.h5"), false).header().file_id;
    try {
      merge_results(path("live.h5"), {shards[0], shards[1], shards[2]}, true);
      ADD_FAILURE() << "merged over a live run's file";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("is writing"), std::string::npos) << e.what();
    }
    EXPECT_EQ(H5Results::open(path("live.h5"), false).header().file_id, id);
  }
  EXPECT_EQ(merge_results(path("live.h5"), {shards[0], shards[1], shards[2]}, true).rows, 20);
}

TEST(Store, BadOutputsAreInputErrorsAndLeaveNothing) {
  Sweep sw = Sweep::from_text(kSweep);
  EXPECT_THROW(ResultsWriter::start(sw, writer_options(tmpdir(), sw)), InputError);  // a directory
  EXPECT_THROW(ResultsWriter::start(sw, writer_options("/proc/stsweep.h5", sw)), InputError);
  EXPECT_THROW(ResultsWriter::start(sw, writer_options(path("nodir/x.h5"), sw)), InputError);
  EXPECT_FALSE(fs::exists(path("nodir")));
  // Not a regular file: --force must not rename a results file over a FIFO
  // (or, as root, over a device such as /dev/null).
  const std::string fifo = path("fifo.h5");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto o = writer_options(fifo, sw);
  o.force = true;
  EXPECT_THROW(ResultsWriter::start(sw, o), InputError);
  EXPECT_TRUE(fs::is_fifo(fifo));
  EXPECT_THROW(merge_results(fifo, {path("m0.h5")}, true), InputError);
  EXPECT_TRUE(fs::is_fifo(fifo));
}

TEST(Store, FullDiskFailsClearlyAndLeavesNoCompleteFile) {
  Sweep sw = Sweep::from_text(kSweep);
  for (rlim_t limit : {rlim_t{4096}, rlim_t{120000}}) {
    const std::string out = path("full" + std::to_string(limit) + ".h5");
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {  // child: a small file-size limit is a full disk for us
      std::signal(SIGXFSZ, SIG_IGN);
      struct rlimit rl{limit, limit};
      ::setrlimit(RLIMIT_FSIZE, &rl);
      int code = 10;
      try {
        auto o = writer_options(out, sw);
        auto w = ResultsWriter::start(sw, o);
        for (int64_t id = 0; id < 20; ++id) {
          w->append(fake_rows(sw, {id}, 200), 0.0);  // wide curves: the file outgrows the limit
          w->checkpoint();
        }
        w->finish();
        code = 11;  // no error: the limit was not hit
      } catch (const std::exception& e) {
        std::string m = e.what();
        code = m.find("File too large") != std::string::npos ? 0 : 12;
        if (code) fprintf(stderr, "unexpected message: %s\n", e.what());
      }
      ::_exit(code);
    }
    int st = 0;
    ::waitpid(pid, &st, 0);
    ASSERT_TRUE(WIFEXITED(st)) << "child died with signal " << WTERMSIG(st);
    EXPECT_EQ(WEXITSTATUS(st), 0) << "limit " << limit;
    EXPECT_FALSE(fs::exists(out + ".tmp"));
    if (fs::exists(out)) {  // the last good checkpoint: opens, not complete
      H5Results f = H5Results::open(out, false);
      EXPECT_FALSE(f.header().complete());
      EXPECT_GT(f.header().n_pending, 0);
    }
  }
}
