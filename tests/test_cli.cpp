// The stsweep binary: validate, list, --version, exit codes.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "backend.hpp"
#include "problem.hpp"
#include "store.hpp"
#include "version.hpp"
#include "cli_util.hpp"

namespace fs = std::filesystem;

namespace {

using stsweep::testing::Outcome;
using stsweep::testing::slurp;
fs::path scratch() { return stsweep::testing::scratch("test_cli"); }
Outcome run(const std::string& args) { return stsweep::testing::run_stsweep(args, "test_cli"); }

std::string sweep_file(const std::string& name) { return std::string(STSWEEP_SOURCE_DIR) + "/sweeps/" + name; }

std::string write_file(const std::string& name, const std::string& text) {
  fs::path p = scratch() / name;
  std::ofstream(p) << text;
  return p.string();
}

using stsweep::testing::lines;

}  // namespace

TEST(Cli, Version) {
  Outcome r = run("--version");
  EXPECT_EQ(r.rc, 0);
  EXPECT_NE(r.out.find(std::string("stsweep ") + STSWEEP_VERSION), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(STSWEEP_GIT_COMMIT), std::string::npos) << r.out;
}

TEST(Cli, ValidateAndListEveryExampleSweep) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(std::string(STSWEEP_SOURCE_DIR) + "/sweeps")) {
    if (e.path().extension() != ".json") continue;
    ++n;
    Outcome v = run("validate '" + e.path().string() + "'");
    EXPECT_EQ(v.rc, 0) << e.path() << "\n" << v.err;
    EXPECT_NE(v.out.find("trials:"), std::string::npos);
    Outcome l = run("list '" + e.path().string() + "' --limit 3");
    EXPECT_EQ(l.rc, 0) << e.path() << "\n" << l.err;
    EXPECT_EQ(lines(l.out).size(), 4u) << l.out;  // header + 3 rows
  }
  EXPECT_GE(n, 4);
}

TEST(Cli, ValidatePrintsCountAndAxes) {
  Outcome v = run("validate " + sweep_file("tiny.json"));
  ASSERT_EQ(v.rc, 0) << v.err;
  EXPECT_NE(v.out.find("trials: 36"), std::string::npos) << v.out;
  EXPECT_NE(v.out.find("teacher.decomposition"), std::string::npos);
  EXPECT_NE(v.out.find("\"balanced\", \"rotated\""), std::string::npos);
}

// An axis over a parameter no trial reads gives trials that differ only in
// its column (a review plotted teacher.delta over oracle teachers as "the
// teacher's error does not matter"): validate says so; one trial that reads
// it silences the warning.
TEST(Cli, ValidateWarnsOfAxesNoTrialReads) {
  const std::string unread = write_file("unread.json", R"({"defaults": {"d": 8, "k": 4, "m": 2, "hidden": [8]},
      "grid": {"teacher.delta": [0, 0.5], "teacher.power": [0, 1], "n_test": [100, 200], "noise": [0.1, 0.2]}})");
  Outcome v = run("validate '" + unread + "'");
  ASSERT_EQ(v.rc, 0) << v.err;
  EXPECT_NE(v.out.find("warning: the axis teacher.delta changes nothing: teacher.delta is read only when "
                       "teacher.kind = perturbed"), std::string::npos) << v.out;
  EXPECT_NE(v.out.find("warning: the axis teacher.power changes nothing"), std::string::npos) << v.out;
  EXPECT_NE(v.out.find("warning: the axis n_test changes nothing"), std::string::npos) << v.out;
  EXPECT_EQ(v.out.find("axis noise changes"), std::string::npos) << v.out;
  const std::string read = write_file("read.json", R"({"defaults": {"d": 8, "k": 4, "m": 2, "hidden": [8]},
      "subgrids": [{"grid": {"teacher.delta": [0, 0.5]}},
                   {"defaults": {"teacher": {"kind": "perturbed"}}, "grid": {"teacher.delta": [0, 0.5]}}]})");
  Outcome r = run("validate '" + read + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out.find("warning"), std::string::npos) << r.out;
}

// An exclude entry that drops nothing is most often a misspelt value: validate
// and run say which entry (run on stderr, and runs anyway).
TEST(Cli, WarnsOfExcludeEntriesThatDropNothing) {
  const std::string f = write_file("noexcl.json", R"({"defaults": {"d": 8, "k": 4, "m": 2, "hidden": [8], "steps": 10},
      "grid": {"noise": [0.1, 0.2], "lambda": [0, 1]},
      "exclude": [{"noise": 0.1, "lambda": 1}, {"noise": 0.15}, {"lambda": 1, "d": 16}]})");
  Outcome v = run("validate '" + f + "'");
  ASSERT_EQ(v.rc, 0) << v.err;
  EXPECT_NE(v.out.find("trials: 3"), std::string::npos) << v.out;
  EXPECT_NE(v.out.find("warning: exclude[1] (noise = 0.15) drops no trial"), std::string::npos) << v.out;
  EXPECT_NE(v.out.find("warning: exclude[2] (lambda = 1, d = 16) drops no trial"), std::string::npos) << v.out;
  EXPECT_EQ(v.out.find("exclude[0]"), std::string::npos) << v.out;
  const std::string out = (scratch() / "noexcl.h5").string();
  Outcome r = run("run '" + f + "' -o '" + out + "' --backend cpu --progress none");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("warning: exclude[1] (noise = 0.15) drops no trial"), std::string::npos) << r.err;
}

// teacher.n_train keys the teacher's random draws (SWEEPS.md, "Seeds"): over a
// perturbed teacher it re-draws G, and the risks change, so validate must not
// call it an axis that changes nothing (a review; until session 15 it did);
// over an oracle balanced teacher the warning holds, and the run agrees.
TEST(Cli, TeacherNTrainIsASeedOfPerturbedTeachers) {
  const std::string per = write_file("ntp.json", R"({"defaults": {"d": 8, "k": 4, "m": 4, "hidden": [8], "steps": 200,
      "teacher": {"kind": "perturbed", "delta": 1}}, "grid": {"teacher.n_train": [4, 8]}})");
  const std::string ora = write_file("nto.json", R"({"defaults": {"d": 8, "k": 4, "m": 4, "hidden": [8], "steps": 200},
      "grid": {"teacher.n_train": [4, 8]}})");
  Outcome vp = run("validate '" + per + "'"), vo = run("validate '" + ora + "'");
  ASSERT_EQ(vp.rc, 0) << vp.err;
  EXPECT_EQ(vp.out.find("changes nothing"), std::string::npos) << vp.out;
  EXPECT_NE(vp.out.find("note: the axis teacher.n_train"), std::string::npos) << vp.out;
  EXPECT_NE(vo.out.find("warning: the axis teacher.n_train changes nothing"), std::string::npos) << vo.out;
  for (const auto& [file, differ] : {std::pair{per, true}, std::pair{ora, false}}) {
    const std::string out = (scratch() / (differ ? "ntp.h5" : "nto.h5")).string();
    Outcome r = run("run '" + file + "' -o '" + out + "' --backend cpu --progress none --force");
    ASSERT_EQ(r.rc, 0) << r.err;
    stsweep::H5Results f = stsweep::H5Results::open(out, false);
    const int k = stsweep::store_column_index("feature_loss");
    stsweep::RowBlock b = f.read(0, 2, {k});
    EXPECT_EQ(b.cols[k].f[0] != b.cols[k].f[1], differ) << file << ": " << b.cols[k].f[0] << " " << b.cols[k].f[1];
  }
}

// Unstable gradient descent ends `done`: run says how many rows had a rising
// loss (a review found 14 of 256 that nothing reported). sweeps/conflict.json's
// m = 4 runs at lr 0.02 rise up to 19x; at its own lr 0.005 none do.
TEST(Cli, RunNotesUnstableTraining) {
  const std::string f = write_file("rise.json", R"({"seed": 3, "defaults": {"d": 32, "k": 8, "m": 4, "hidden": [32],
      "n_train": 16, "steps": 20000, "lr": 0.02, "init_scale": 1e-4, "checkpoints": 8, "noise": 0.3, "lambda": 3,
      "teacher": {"kind": "perturbed", "delta": 1}}, "grid": {"seed": {"range": [0, 3]}}})");
  Outcome r = run("run '" + f + "' -o '" + (scratch() / "rise.h5").string() + "' --backend cpu --progress none --force");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("done trials this run finished had a training loss that rose"), std::string::npos) << r.out;
  Outcome c = run("run '" + sweep_file("conflict.json") + "' -o '" + (scratch() / "conflict.h5").string() +
                  "' --backend cpu --progress none --force");
  ASSERT_EQ(c.rc, 0) << c.err;
  EXPECT_EQ(c.out.find("loss that rose"), std::string::npos) << c.out;
  // info says the same from the file (a [complete] file is not a stable one).
  Outcome ir = run("info '" + (scratch() / "rise.h5").string() + "'");
  EXPECT_NE(ir.out.find("stability: "), std::string::npos) << ir.out;
  EXPECT_EQ(ir.out.find("stability: 0 of"), std::string::npos) << ir.out;
  EXPECT_NE(ir.out.find("unstable gradient descent"), std::string::npos) << ir.out;
  Outcome ic = run("info '" + (scratch() / "conflict.h5").string() + "'");
  EXPECT_NE(ic.out.find("stability: 0 of the 12 done trials"), std::string::npos) << ic.out;
}

// A checkpoint copies the whole file (about 2 s per 10^6 rows) while the bar
// cannot tick: the bar says so, and --progress jsonl logs each one. Every row
// run is folded by exactly one checkpoint (the final one included).
TEST(Cli, ProgressShowsCheckpoints) {
  const std::string out = (scratch() / "ckpt.h5").string();
  const std::string base = "run " + sweep_file("tiny.json") + " -o '" + out + "' --backend cpu --force --batch-size 4 "
                           "--checkpoint-every 0 --progress ";
  Outcome j = run(base + "jsonl");
  ASSERT_EQ(j.rc, 0) << j.err;
  int64_t folded = 0, events = 0, last_done = -1;
  bool finished_last = false;
  for (const auto& line : lines(j.err)) {
    if (line.empty() || line[0] != '{') continue;
    const auto e = nlohmann::json::parse(line);
    finished_last = e["event"] == "finished";
    if (e["event"] == "checkpoint") {
      ++events;
      folded += e["rows"].get<int64_t>();
      EXPECT_GE(e["seconds"].get<double>(), 0) << line;
      // The rows counted before the fold that stores them (a review saw 0/216
      // while 16 rows were being written), so done >= rows folded so far.
      EXPECT_GE(e["done"].get<int64_t>(), folded) << line;
      EXPECT_EQ(e["total"], 36) << line;
    } else {
      last_done = e["done"].get<int64_t>();
    }
  }
  EXPECT_GE(events, 2) << j.err;  // at least one while running, and the last fold
  EXPECT_EQ(folded, 36) << j.err;  // tiny.json: 36 trials, each row folded once
  EXPECT_EQ(last_done, 36);
  EXPECT_TRUE(finished_last) << j.err;  // "finished" after the last checkpoint
  Outcome b = run(base + "bar");
  ASSERT_EQ(b.rc, 0) << b.err;
  EXPECT_NE(b.err.find("trials/s  writing the file"), std::string::npos) << b.err;  // in the ETA's place
  EXPECT_NE(b.err.find("ETA 0:00"), std::string::npos) << b.err;
  // The last drawing is the finished bar, with no note left on the line.
  const std::string tail = b.err.substr(b.err.rfind('\r'));
  EXPECT_EQ(tail.find("writing"), std::string::npos) << tail;
  EXPECT_NE(tail.find("36/36 100.0%"), std::string::npos) << tail;
}

// estimate trains a sample and writes nothing: its JSON adds up (the total is
// the per-trial cost times the trials, the wall time the total over the
// threads, the interval holds the mean), a sweep no larger than a round runs
// whole (no interval), and bad input is exit 2 naming the option.
TEST(Cli, EstimateAddsUp) {
  const std::string dir = scratch().string();
  Outcome r = run("estimate " + sweep_file("standard_cpu.json") + " --backend cpu --threads 2 --seconds 2 --format json");
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["trials"], 512);
  EXPECT_EQ(j["backend"], "cpu");
  EXPECT_EQ(j["threads"], 2);
  EXPECT_EQ(j["round_size"], 8);  // 4 a thread, at least 8
  EXPECT_FALSE(j["whole"].get<bool>());
  const int64_t rounds = j["rounds"].get<int64_t>();
  EXPECT_GE(rounds, 1);
  EXPECT_EQ(j["sampled"].get<int64_t>(), 8 * rounds);
  const double per = j["cost_per_trial"].get<double>(), total = j["total_cost"].get<double>();
  EXPECT_GT(per, 0);
  EXPECT_NEAR(total, per * 512, 1e-9 * total);
  EXPECT_NEAR(j["wall_seconds"].get<double>(), total / 2, 1e-9 * total);
  if (rounds > 1) {
    const auto ci = j["total_cost_ci95"];
    EXPECT_LE(ci[0].get<double>(), total);
    EXPECT_GE(ci[1].get<double>(), total);
  } else {
    EXPECT_TRUE(j["total_cost_ci95"].is_null());
  }
  // Nothing written where it ran.
  EXPECT_TRUE(fs::is_empty(dir) || !fs::exists(fs::path(dir) / "standard_cpu.h5"));

  Outcome w = run("estimate " + sweep_file("tiny.json") + " --backend cpu --round-size 64 --format json");
  ASSERT_EQ(w.rc, 0) << w.err;
  const auto k = nlohmann::json::parse(w.out);
  EXPECT_TRUE(k["whole"].get<bool>());
  EXPECT_EQ(k["sampled"], 36);
  EXPECT_EQ(k["rounds"], 1);
  EXPECT_EQ(k["total_cost_ci95"][0], k["total_cost"]);  // measured, not sampled

  // Trained teachers are costed per distinct teacher (sweeps/trained_teachers.json:
  // 128 trials, 8 teachers), each round from empty caches (a teacher of one
  // round made the next ones cheap: a review's estimate was 26x too low).
  // --seconds 0: one round (this sweep is quick enough to run whole).
  Outcome tt = run("estimate " + sweep_file("trained_teachers.json") + " --backend cpu --threads 2 --seconds 0 "
                   "--format json");
  ASSERT_EQ(tt.rc, 0) << tt.err;
  const auto q = nlohmann::json::parse(tt.out);
  ASSERT_FALSE(q["whole"].get<bool>()) << tt.out;
  EXPECT_EQ(q["trained_teachers"], 8);
  EXPECT_TRUE(q["trained_teachers_counted"].get<bool>());
  const double per_teacher = q["cost_per_teacher"].get<double>(), tt_total = q["total_cost"].get<double>();
  EXPECT_GT(per_teacher, 0);
  EXPECT_NEAR(tt_total, q["cost_per_trial"].get<double>() * 128 + per_teacher * 8, 1e-9 * tt_total);
  EXPECT_NEAR(q["wall_seconds"].get<double>(), tt_total / 2, 1e-9 * tt_total);
  EXPECT_NEAR(q["wall_seconds_max"].get<double>(), q["cost_per_trial"].get<double>() * 128 / 2 + per_teacher * 8,
              1e-9 * tt_total);

  Outcome t = run("estimate " + sweep_file("tiny.json") + " --backend cpu --shard 1/4");
  ASSERT_EQ(t.rc, 0) << t.err;
  EXPECT_NE(t.out.find("sweep:     tiny, shard 1/4: 9 trials"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("of CPU time"), std::string::npos) << t.out;

  Outcome e = run("estimate " + sweep_file("tiny.json") + " --shard 0/50");  // 36 trials: [0, 0)
  EXPECT_EQ(e.rc, 2);
  EXPECT_NE(e.err.find("--shard: 0/50 holds no trial"), std::string::npos) << e.err;
  Outcome s = run("estimate " + sweep_file("tiny.json") + " --seconds -1");
  EXPECT_EQ(s.rc, 2) << s.err;
  EXPECT_NE(s.err.find("--seconds"), std::string::npos) << s.err;
  const std::string bad = write_file("bad_estimate.json", R"({"defaults": {"d": 8, "k": 4, "m": 2, "hidden": [8], "steps": "many"}})");
  Outcome b = run("estimate '" + bad + "'");
  EXPECT_EQ(b.rc, 2);
  EXPECT_NE(b.err.find("steps"), std::string::npos) << b.err;
}

// best_test_risk is an early-stopped risk only where the best checkpoint is not
// the last: summary counts the rows where it is (a review found 81 of 408 in
// findings_teacher), for the student's best and the twin's, and says nothing
// for a metric that is not a best.
TEST(Cli, SummaryNotesBestAtTheLastStep) {
  const std::string f = write_file("bestlast.json", R"({"seed": 5, "defaults": {"d": 16, "k": 4, "m": 4,
      "hidden": [16], "n_train": 12, "lr": 0.02, "init_scale": 1e-4, "checkpoints": 8, "noise": 0.3},
      "grid": {"steps": [40, 20000], "lambda": [0.3], "seed": {"range": [0, 4]}}})");
  const std::string out = (scratch() / "bestlast.h5").string();
  ASSERT_EQ(run("run '" + f + "' -o '" + out + "' --backend cpu --progress none --force").rc, 0);
  stsweep::H5Results h = stsweep::H5Results::open(out, false);
  const int bs = stsweep::store_column_index("best_step"), tb = stsweep::store_column_index("baseline_best_step"),
            sr = stsweep::store_column_index("steps_run");
  const int zl = stsweep::store_column_index("zero_loss"), tz = stsweep::store_column_index("baseline_zero_loss");
  stsweep::RowBlock b = h.read(0, h.rows(), {bs, tb, sr, zl, tz});
  int64_t student = 0, twin = 0, student_open = 0, twin_open = 0;
  for (size_t r = 0; r < b.rows(); ++r) {
    student += b.cols[bs].i[r] == b.cols[sr].i[r];
    twin += b.cols[tb].i[r] == b.cols[sr].i[r];
    student_open += b.cols[bs].i[r] == b.cols[sr].i[r] && b.cols[zl].i[r] == 0;
    twin_open += b.cols[tb].i[r] == b.cols[sr].i[r] && b.cols[tz].i[r] == 0;
  }
  ASSERT_GE(student_open, 4);  // the 40-step runs are still learning at their end
  ASSERT_LT(student, 8);
  ASSERT_GE(twin_open, 1);
  Outcome s = run("summary '" + out + "' --metric best_test_risk --paired baseline_best_test_risk --relative");
  ASSERT_EQ(s.rc, 0) << s.err;
  EXPECT_NE(s.err.find("note: " + std::to_string(student) + " of the 8 rows summarised have the student's best "
                       "checkpoint at the last step (best_step = steps_run), " + std::to_string(student_open) +
                       " of them short of zero training loss"), std::string::npos) << s.err;
  EXPECT_NE(s.err.find("note: " + std::to_string(twin) + " of the 8 rows summarised have the twin's best"),
            std::string::npos) << s.err;
  Outcome w = run("summary '" + out + "' --metric best_step --where steps=20000");
  EXPECT_EQ(w.err.find("the student's best checkpoint at the last step"), std::string::npos) << w.err;
  Outcome t = run("summary '" + out + "' --metric test_risk --paired baseline_test_risk");
  EXPECT_EQ(t.err.find("at the last step"), std::string::npos) << t.err;
}

// summary counts done trials; --include-diverged adds the diverged ones, so that
// student_diverged gives divergence rates (a review got 0 everywhere without it).
// And a mixed pairing (best against the twin's last) is warned of.
TEST(Cli, SummaryDivergenceRatesAndPairingWarning) {
  const std::string f = write_file("div.json", R"({"defaults": {"d": 8, "k": 4, "m": 4, "hidden": [8], "steps": 300,
      "checkpoints": 4}, "grid": {"lr": [0.05, 1000], "seed": {"range": [0, 3]}}})");
  const std::string out = (scratch() / "div.h5").string();
  ASSERT_EQ(run("run '" + f + "' -o '" + out + "' --backend cpu --progress none --force").rc, 0);
  Outcome plain = run("summary '" + out + "' --by lr --metric student_diverged --format csv");
  ASSERT_EQ(plain.rc, 0) << plain.err;
  EXPECT_EQ(plain.out, "lr,count,mean,std,ci95_low,ci95_high\n0.05,3,0,0,0,0\n") << plain.out;
  EXPECT_NE(plain.err.find("--include-diverged counts them"), std::string::npos) << plain.err;
  Outcome all = run("summary '" + out + "' --by lr --metric student_diverged --format csv --include-diverged");
  ASSERT_EQ(all.rc, 0) << all.err;
  EXPECT_EQ(all.out, "lr,count,mean,std,ci95_low,ci95_high\n0.05,3,0,0,0,0\n1000,3,1,0,1,1\n") << all.out;
  // A diverged row's risks are where it blew up: refused with --include-diverged.
  Outcome risky = run("summary '" + out + "' --by lr --metric test_risk --include-diverged");
  EXPECT_EQ(risky.rc, 2) << risky.out;
  EXPECT_NE(risky.err.find("--include-diverged"), std::string::npos) << risky.err;
  Outcome mixed = run("summary '" + out + "' --metric best_test_risk --paired baseline_test_risk");
  EXPECT_EQ(mixed.rc, 0) << mixed.err;
  EXPECT_NE(mixed.err.find("warning: best_test_risk paired with baseline_test_risk"), std::string::npos) << mixed.err;
  Outcome same = run("summary '" + out + "' --metric best_test_risk --paired baseline_best_test_risk");
  EXPECT_EQ(same.err.find("warning"), std::string::npos) << same.err;
}

TEST(Cli, NumbersInMessagesAreAsWritten) {
  const std::string neg = write_file("neg.json", R"({"grid": {"noise": [0.5, -0.1]}})");
  Outcome v = run("validate '" + neg + "'");
  EXPECT_EQ(v.rc, 2);
  EXPECT_NE(v.err.find("must be >= 0, got -0.1"), std::string::npos) << v.err;
  EXPECT_EQ(v.err.find("-0.10000"), std::string::npos) << v.err;
  Outcome c = run("list '" + sweep_file("tiny.json") + "' --columns lamda");
  EXPECT_EQ(c.rc, 2);
  EXPECT_NE(c.err.find("did you mean \"lambda\""), std::string::npos) << c.err;
}

TEST(Cli, ListFormats) {
  Outcome c = run("list " + sweep_file("tiny.json") + " --count");
  EXPECT_EQ(c.rc, 0);
  EXPECT_EQ(c.out, "36\n");

  Outcome csv = run("list " + sweep_file("tiny.json") + " --format csv");
  ASSERT_EQ(csv.rc, 0) << csv.err;
  auto rows = lines(csv.out);
  ASSERT_EQ(rows.size(), 37u);
  EXPECT_EQ(rows[0].rfind("id,d,k,m,hidden,depth,", 0), 0u) << rows[0];
  EXPECT_EQ(rows[1].rfind("0,16,4,4,16,2,", 0), 0u) << rows[1];

  Outcome js = run("list " + sweep_file("tiny.json") + " --format json --offset 10 --limit 5");
  ASSERT_EQ(js.rc, 0) << js.err;
  auto jl = lines(js.out);
  ASSERT_EQ(jl.size(), 5u);
  for (size_t i = 0; i < jl.size(); ++i) {
    auto row = nlohmann::json::parse(jl[i]);
    EXPECT_EQ(row["id"], 10 + i);
    EXPECT_EQ(row["d"], 16);
    EXPECT_EQ(row["hidden"], "16");
    EXPECT_TRUE(row.contains("teacher_decomposition"));
    EXPECT_EQ(row["seed"], (10 + i) % 2);  // seed is the fastest axis
  }

  Outcome t = run("list " + sweep_file("tiny.json") + " --columns noise,lambda --limit 2");
  ASSERT_EQ(t.rc, 0) << t.err;
  auto tl = lines(t.out);
  ASSERT_EQ(tl.size(), 3u);
  EXPECT_NE(tl[0].find("noise"), std::string::npos);
  EXPECT_EQ(tl[0].find("teacher_kind"), std::string::npos);
  // Aligned: every line has the same length in this all-numeric table.
  EXPECT_EQ(tl[0].size(), tl[1].size());
  EXPECT_EQ(tl[1].size(), tl[2].size());
}

TEST(Cli, ShardsPartitionTheList) {
  std::multiset<long> ids;
  for (int i = 0; i < 5; ++i) {
    Outcome r = run("list " + sweep_file("tiny.json") + " --format csv --columns id --shard " + std::to_string(i) + "/5");
    ASSERT_EQ(r.rc, 0) << r.err;
    auto l = lines(r.out);
    ASSERT_GE(l.size(), 1u);
    EXPECT_EQ(l[0], "id");
    for (size_t j = 1; j < l.size(); ++j) ids.insert(std::stol(l[j]));
  }
  ASSERT_EQ(ids.size(), 36u);
  for (long id = 0; id < 36; ++id) EXPECT_EQ(ids.count(id), 1u) << id;
}

TEST(Cli, BadInputExitsTwoWithThePath) {
  std::string bad = write_file("bad.json", R"({"grid": {"noise": {"logspace": [-2, 0, "five"]}}})");
  for (const char* cmd : {"validate", "list"}) {
    Outcome r = run(std::string(cmd) + " '" + bad + "'");
    EXPECT_EQ(r.rc, 2) << cmd;
    EXPECT_NE(r.err.find("grid.noise.logspace[2]"), std::string::npos) << r.err;
  }
  std::string syntax = write_file("syntax.json", "{\n  \"grid\": {\n    \"d\": [16,, 32]\n  }\n}\n");
  Outcome s = run("validate '" + syntax + "'");
  EXPECT_EQ(s.rc, 2);
  EXPECT_NE(s.err.find("line 3"), std::string::npos) << s.err;

  // A trial whose values combine badly (k = 8 > d = 4) is found by validate.
  std::string combo = write_file("combo.json", R"({"grid": {"d": [4, 32]}})");
  Outcome c = run("validate '" + combo + "'");
  EXPECT_EQ(c.rc, 2);
  EXPECT_NE(c.err.find("trials[0].k"), std::string::npos) << c.err;

  // run refuses it before a results file exists, naming the trial's grid point:
  // trial 3 of d x noise is d = 4 (k = 8 by default), the first 3 are fine.
  std::string mid = write_file("mid.json", R"({"grid": {"d": [32, 4], "noise": [0.1, 0.2, 0.3]}})");
  const std::string out = (scratch() / "mid.h5").string();
  Outcome mr = run("run '" + mid + "' -o '" + out + "' --backend cpu --progress none");
  EXPECT_EQ(mr.rc, 2);
  EXPECT_NE(mr.err.find("trials[3].k"), std::string::npos) << mr.err;
  EXPECT_NE(mr.err.find("(trial 3: d = 4, noise = 0.1)"), std::string::npos) << mr.err;
  EXPECT_FALSE(fs::exists(out)) << "no results file for a sweep that cannot run";
  EXPECT_FALSE(fs::exists(out + ".journal"));

  Outcome m = run("validate /nonexistent/sweep.json");
  EXPECT_EQ(m.rc, 2);
  EXPECT_NE(m.err.find("/nonexistent/sweep.json"), std::string::npos) << m.err;

  Outcome sh = run("list " + sweep_file("tiny.json") + " --shard 5/5");
  EXPECT_EQ(sh.rc, 2);
  EXPECT_NE(sh.err.find("--shard"), std::string::npos) << sh.err;

  Outcome f = run("list " + sweep_file("tiny.json") + " --format xml");
  EXPECT_EQ(f.rc, 2);
  // A number of seconds that is not one (CLI11's own check lets nan through).
  const std::string nan_out = (scratch() / "nan.h5").string();
  Outcome ce = run("run " + sweep_file("tiny.json") + " -o '" + nan_out + "' --checkpoint-every nan");
  EXPECT_EQ(ce.rc, 2);
  EXPECT_NE(ce.err.find("--checkpoint-every: expected a finite number >= 0, got nan"), std::string::npos) << ce.err;
  EXPECT_FALSE(fs::exists(nan_out));
  Outcome none = run("");
  EXPECT_EQ(none.rc, 2);
  // A malformed STSWEEP_PROGRESS_INTERVAL names the variable, before any file.
  for (const char* bad : {"abc", "nan", "-1", "2s"}) {
    setenv("STSWEEP_PROGRESS_INTERVAL", bad, 1);
    Outcome o = run("run " + sweep_file("tiny.json") + " -o '" + nan_out + "'");
    unsetenv("STSWEEP_PROGRESS_INTERVAL");
    EXPECT_EQ(o.rc, 2) << bad;
    EXPECT_NE(o.err.find("STSWEEP_PROGRESS_INTERVAL: expected a number of seconds >= 0"), std::string::npos) << o.err;
    EXPECT_FALSE(fs::exists(nan_out)) << bad;
  }
  // A misspelt command is named, with the commands there are (CLI11 said only
  // "A subcommand is required").
  Outcome typo = run("valdate " + sweep_file("tiny.json"));
  EXPECT_EQ(typo.rc, 2);
  EXPECT_NE(typo.err.find("unknown command 'valdate' (the commands: validate, list, estimate, run"), std::string::npos)
      << typo.err;
  // Counts say what they expect and which option; "-3" does not wrap round
  // into an unsigned limit, and no results file is started.
  const std::string tiny = sweep_file("tiny.json");
  for (const auto& [args, want] : std::vector<std::pair<std::string, std::string>>{
           {"run " + tiny + " -o '" + nan_out + "' --batch-size 0", "--batch-size: expected an integer >= 1, got \"0\""},
           {"run " + tiny + " -o '" + nan_out + "' --batch-size 1.5", "--batch-size: expected an integer >= 1, got \"1.5\""},
           {"run " + tiny + " -o '" + nan_out + "' --threads -1", "--threads: expected an integer >= 0 and <= 4096, got \"-1\""},
           {"run " + tiny + " -o '" + nan_out + "' --threads 99999999999", "--threads: expected an integer >= 0 and <= 4096"},
           {"list " + tiny + " --limit -3", "--limit: expected an integer >= 0, got \"-3\""},
           {"list " + tiny + " --offset x", "--offset: expected an integer >= 0, got \"x\""},
           {"list " + tiny + " --offset 9223372036854775808", "--offset: expected an integer >= 0, got"},
           {"run " + tiny + " --progress none", "--output is required"},
           {"run " + tiny + " -o " + tiny + " --force --progress none", "-o: " + tiny + " is the sweep file"},
           {"list " + tiny + " --columns noise,noise", "--columns: column \"noise\" given twice"}}) {
    Outcome o = run(args);
    EXPECT_EQ(o.rc, 2) << args;
    EXPECT_NE(o.err.find("stsweep: error: " + want), std::string::npos) << args << ": " << o.err;
    EXPECT_TRUE(o.out.empty()) << args << ": " << o.out;
  }
  EXPECT_FALSE(fs::exists(nan_out));
}

// STSWEEP_MALLOC (host/memory.hpp): a bad value stops every command before any
// work, naming the variable; `system` (glibc's own policy) runs as usual.
TEST(Cli, MallocPolicyIsChecked) {
  setenv("STSWEEP_MALLOC", "fast", 1);
  Outcome bad = run("validate '" + sweep_file("tiny.json") + "'");
  setenv("STSWEEP_MALLOC", "system", 1);
  Outcome sys = run("validate '" + sweep_file("tiny.json") + "'");
  unsetenv("STSWEEP_MALLOC");
  EXPECT_EQ(bad.rc, 2);
  EXPECT_NE(bad.err.find("STSWEEP_MALLOC: 'fast' is not a policy"), std::string::npos) << bad.err;
  EXPECT_EQ(sys.rc, 0) << sys.err;
}

// Without a usable GPU (this machine, CI): --backend cuda is a clear run-time
// error that leaves no results file; auto falls back to the CPU and says so.
// On a machine with a GPU, auto must say it ran on cuda.
TEST(Cli, BackendChoiceIsExplicit) {
  const fs::path out = scratch() / "backend.h5";
  fs::remove(out);
  Outcome cuda = run("run " + sweep_file("tiny.json") + " -o '" + out.string() + "' --backend cuda --progress none");
  Outcome probe = run("run " + sweep_file("tiny.json") + " -o '" + out.string() + "' --backend auto --progress none");
  ASSERT_EQ(probe.rc, 0) << probe.err;
  const bool gpu = probe.err.find("stsweep: backend cuda") != std::string::npos;
  if (gpu) {
    EXPECT_EQ(cuda.rc, 0) << cuda.err;
    GTEST_SKIP() << "a GPU is present: the no-GPU error path cannot be checked here";
  }
  EXPECT_EQ(cuda.rc, 1);
  EXPECT_NE(cuda.err.find("--backend cuda: no usable GPU"), std::string::npos) << cuda.err;
  EXPECT_NE(probe.err.find("stsweep: backend cpu"), std::string::npos) << probe.err;
  EXPECT_NE(probe.err.find("no GPU"), std::string::npos) << "auto must say why it is not on the GPU: " << probe.err;
  // The failed cuda run left nothing: the auto run started a fresh file (no --resume needed).
  EXPECT_EQ(probe.err.find("exists"), std::string::npos) << probe.err;
  fs::remove(out);
}

// --devices (several GPUs in one process). Bad lists are input errors (exit 2)
// naming the option, and are refused before any results file is created.
namespace {
// An empty folder for one run's output; what is in it afterwards is what the run left.
fs::path empty_dir(const std::string& name) {
  const fs::path d = scratch() / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}
}  // namespace

TEST(Cli, DevicesRejectsBadLists) {
  struct Case {
    const char* args;
    const char* says;
  };
  for (const Case& c : {Case{"--devices 0,0", "device 0 is listed twice"},
                        Case{"--devices 1,0,1 --backend cuda", "device 1 is listed twice"},
                        Case{"--devices x", "\"x\" is not a device ordinal"},
                        Case{"--devices 0,,1", "is not a device ordinal"},
                        Case{"--devices=-1", "0 or more"},
                        Case{"--devices ''", "empty"},
                        Case{"--devices 1 --backend cpu", "cannot be used with --backend cpu"},
                        Case{"--devices all --backend cpu", "cannot be used with --backend cpu"}}) {
    const fs::path dir = empty_dir("devices_bad");
    Outcome r = run("run " + sweep_file("tiny.json") + " -o '" + (dir / "out.h5").string() + "' --progress none " +
                    c.args);
    EXPECT_EQ(r.rc, 2) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find("--devices"), std::string::npos) << c.args << ": the message must name the option\n"
                                                           << r.err;
    EXPECT_NE(r.err.find(c.says), std::string::npos) << c.args << "\n" << r.err;
    EXPECT_TRUE(fs::is_empty(dir)) << c.args << " left a file behind";
  }
}

// Without a GPU: --backend cuda --devices is a run-time failure (exit 1) with
// the reason and no results file; --backend auto falls back to the CPU and says
// that the list was ignored.
TEST(Cli, DevicesWithoutAGpu) {
  if (stsweep::cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present: the no-GPU paths cannot be checked here";
  for (const char* list : {"0", "0,1", "all"}) {
    const fs::path dir = empty_dir("devices_nogpu");
    Outcome r = run("run " + sweep_file("tiny.json") + " -o '" + (dir / "out.h5").string() +
                    "' --backend cuda --progress none --devices " + list);
    EXPECT_EQ(r.rc, 1) << list << "\n" << r.err;
    EXPECT_NE(r.err.find(std::string("--backend cuda --devices ") + list + ": no usable GPU ("), std::string::npos)
        << r.err;
#if !STSWEEP_HAVE_CUDA
    EXPECT_NE(r.err.find("built without CUDA"), std::string::npos) << "the reason: " << r.err;
#endif
    EXPECT_TRUE(fs::is_empty(dir)) << list << ": a failed run left a file behind";
  }
  const fs::path dir = empty_dir("devices_auto");
  const fs::path out = dir / "out.h5";
  Outcome a = run("run " + sweep_file("tiny.json") + " -o '" + out.string() + "' --progress none --devices 0,1");
  ASSERT_EQ(a.rc, 0) << a.err;
  EXPECT_NE(a.err.find("stsweep: backend cpu"), std::string::npos) << a.err;
  EXPECT_NE(a.err.find("no GPU"), std::string::npos) << a.err;
  EXPECT_NE(a.err.find("--devices 0,1 ignored"), std::string::npos) << a.err;
  EXPECT_TRUE(fs::exists(out));
  EXPECT_NE(a.out.find("36 done"), std::string::npos) << a.out;
}

// validate says how many distinct problems a sweep's trials have and how many
// set-ups batches of the default sizes would copy: in tiny.json the 3 lambdas
// of each (noise, decomposition, seed) share one (12 of 36), in standard_gpu.json
// they are 1024 trials apart (seed is the fastest axis), so a CPU batch of 64
// copies none and a CUDA batch of 4096 three of four; a sweep without such
// siblings gets no line.
TEST(Cli, ValidateCountsSharedSetUps) {
  Outcome t = run("validate '" + sweep_file("tiny.json") + "'");
  ASSERT_EQ(t.rc, 0) << t.err;
  EXPECT_NE(t.out.find("set-up: 36 trials, 12 distinct problems ("), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("batches of 64 would copy 24, batches of 4096 24 "), std::string::npos) << t.out;
  Outcome g = run("validate '" + sweep_file("standard_gpu.json") + "'");
  ASSERT_EQ(g.rc, 0) << g.err;
  EXPECT_NE(g.out.find("set-up: 16384 trials, 4096 distinct problems ("), std::string::npos) << g.out;
  EXPECT_NE(g.out.find("batches of 64 would copy 0, batches of 4096 12288 "), std::string::npos) << g.out;
  const std::string alone = write_file("no_siblings.json", R"({"name": "no-siblings", "seed": 1,
    "defaults": {"d": 8, "k": 4, "m": 2, "hidden": [6], "n_train": 6, "steps": 20},
    "grid": {"noise": [0.1, 0.5], "seed": [0, 1, 2]}})");
  Outcome a = run("validate '" + alone + "'");
  ASSERT_EQ(a.rc, 0) << a.err;
  EXPECT_EQ(a.out.find("set-up:"), std::string::npos) << a.out;
}

// --threads 0 means the cores this process may run on (its CPU affinity, as
// SLURM and taskset set it), not every core of the machine: a run confined to
// one core trains on one thread instead of oversubscribing it.
TEST(Cli, ThreadsFollowTheCpuAffinity) {
  if (std::system("taskset -c 0 true >/dev/null 2>&1") != 0) GTEST_SKIP() << "no taskset on this machine";
  if (stsweep::usable_cores() < 2) GTEST_SKIP() << "this process may use one core: the affinity cannot be narrower";
  const fs::path out = scratch() / "affinity.h5", log = scratch() / "affinity.log";
  const std::string cmd = "taskset -c 0 '" + std::string(STSWEEP_BINARY) + "' run '" + sweep_file("tiny.json") +
                          "' -o '" + out.string() + "' --backend cpu --progress none --force >'" + log.string() +
                          "' 2>&1";
  const int status = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << stsweep::testing::slurp(log);
  const std::string text = stsweep::testing::slurp(log);
  EXPECT_NE(text.find(" (1 threads)), "), std::string::npos) << text;
  // Unconfined, the same run uses every core it may.
  Outcome all = run("run '" + sweep_file("tiny.json") + "' -o '" + out.string() + "' --backend cpu --progress none --force");
  ASSERT_EQ(all.rc, 0) << all.err;
  EXPECT_NE(all.out.find(" (" + std::to_string(stsweep::usable_cores()) + " threads)), "), std::string::npos) << all.out;
}

// Trained teachers are trained once per recipe and reused (--teacher-cache-mb);
// the run says how many, and reuse changes no result.
TEST(Cli, TrainedTeachersAreReusedAndCounted) {
  const std::string sweep = write_file("trained_teachers.json", R"({"name": "trained-teachers", "seed": 5,
    "defaults": {"d": 8, "k": 4, "m": 2, "hidden": [6], "n_train": 6, "steps": 50, "lr": 0.05,
                 "checkpoints": 4, "teacher": {"kind": "trained", "steps": 100, "lr": 0.1, "n_train": 16}},
    "grid": {"seed": [0, 1], "noise": [0.2, 0.6], "lambda": [0, 1], "teacher.decomposition": ["as_trained", "balanced"]}})");
  Outcome v = run("validate '" + sweep + "'");
  ASSERT_EQ(v.rc, 0) << v.err;
  EXPECT_NE(v.out.find("teachers: 16 trials have a trained teacher, 2 distinct"), std::string::npos) << v.out;
  EXPECT_EQ(run("validate '" + sweep_file("tiny.json") + "'").out.find("\nteachers:"), std::string::npos);
  const fs::path kept = scratch() / "teachers_kept.h5", own = scratch() / "teachers_own.h5",
                 shared = scratch() / "teachers_shared.h5";
  // Every trial set up afresh (--setup-cache-mb 0): each asks the teacher cache.
  Outcome a = run("run '" + sweep + "' -o '" + kept.string() + "' --backend cpu --progress none --force --setup-cache-mb 0");
  ASSERT_EQ(a.rc, 0) << a.err;
  // 16 trials, one teacher per seed.
  EXPECT_NE(a.out.find("stsweep: trained teachers: 2 trained ("), std::string::npos) << a.out;
  EXPECT_NE(a.out.find(" s of host core time), 14 reused\n"), std::string::npos) << a.out;
  Outcome b = run("run '" + sweep + "' -o '" + own.string() +
                  "' --backend cpu --progress none --force --teacher-cache-mb 0 --setup-cache-mb 0");
  ASSERT_EQ(b.rc, 0) << b.err;
  EXPECT_NE(b.out.find("stsweep: trained teachers: 16 trained ("), std::string::npos) << b.out;
  EXPECT_NE(b.out.find(" s of host core time), 0 reused\n"), std::string::npos) << b.out;
  EXPECT_EQ(b.out.find("stsweep: set-up:"), std::string::npos) << b.out;
  // Set-up shared too (the default): the lambda pairs share one problem, so 8
  // set-ups, of which 2 train a teacher and 6 reuse one.
  Outcome c = run("run '" + sweep + "' -o '" + shared.string() + "' --backend cpu --progress none --force");
  ASSERT_EQ(c.rc, 0) << c.err;
  EXPECT_NE(c.out.find("stsweep: set-up: 8 problems built, 8 trials copied a batch-mate's"), std::string::npos) << c.out;
  EXPECT_NE(c.out.find("stsweep: trained teachers: 2 trained ("), std::string::npos) << c.out;
  EXPECT_NE(c.out.find(" s of host core time), 6 reused\n"), std::string::npos) << c.out;
  for (const char* metric : {"teacher_clean_risk", "test_risk"}) {
    const std::string by = " --by seed,noise,lambda,teacher.decomposition --format csv --metric ";
    Outcome sa = run("summary '" + kept.string() + "'" + by + metric);
    Outcome sb = run("summary '" + own.string() + "'" + by + metric);
    Outcome sc = run("summary '" + shared.string() + "'" + by + metric);
    ASSERT_EQ(sa.rc, 0) << sa.err;
    EXPECT_EQ(lines(sa.out).size(), 17u) << sa.out;
    EXPECT_EQ(sa.out, sb.out) << metric;
    EXPECT_EQ(sa.out, sc.out) << metric;
  }
  Outcome bad = run("run '" + sweep + "' -o '" + (scratch() / "bad.h5").string() + "' --teacher-cache-mb -3");
  EXPECT_EQ(bad.rc, 2);
  EXPECT_NE(bad.err.find("--teacher-cache-mb"), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(scratch() / "bad.h5"));
  for (const char* v : {"nan", "inf"}) {
    Outcome odd = run("run '" + sweep + "' -o '" + (scratch() / "bad.h5").string() + "' --teacher-cache-mb " + v);
    EXPECT_EQ(odd.rc, 2) << v;
    EXPECT_NE(odd.err.find("--teacher-cache-mb"), std::string::npos) << odd.err;
    EXPECT_FALSE(fs::exists(scratch() / "bad.h5")) << v;
  }
}
