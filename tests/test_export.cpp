// stsweep export: refused inputs (exit 2) and exported weights that reproduce the
// run's risks. The torch replay of exported trials is tests/python/test_replay.py.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "problem.hpp"
#include "store.hpp"
#include "cli_util.hpp"

namespace fs = std::filesystem;
using namespace stsweep;

namespace {

using stsweep::testing::Outcome;
using stsweep::testing::slurp;
fs::path scratch() { return stsweep::testing::scratch("test_export"); }
Outcome run(const std::string& args) { return stsweep::testing::run_stsweep(args, "test_export"); }

// Six small trials: 2- and 3-layer linear students, lambda 0 and > 0, label noise.
const char* kSweep = R"({"name": "export-test", "seed": 3,
  "defaults": {"d": 6, "k": 3, "m": 2, "n_train": 10, "noise": 0.3, "steps": 200, "lr": 0.05,
               "init_scale": 0.3, "checkpoints": 5},
  "grid": {"hidden": [[5], [5, 4]], "lambda": [0, 0.8], "label_noise": [0, 0.2]},
  "exclude": [{"hidden": [5], "label_noise": 0.2}]})";
constexpr int kTrials = 6;

// The sweep run once per test process, in f64 and f32.
std::string results(const std::string& precision) {
  fs::path out = scratch() / ("run_" + precision + ".h5");
  if (!fs::exists(out)) {
    fs::path sweep = scratch() / "sweep.json";
    std::ofstream(sweep) << kSweep;
    Outcome r = run("run '" + sweep.string() + "' -o '" + out.string() + "' --backend cpu --progress none --precision " +
                    precision + " --force");
    EXPECT_EQ(r.rc, 0) << r.err;
  }
  return out.string();
}

// --- reading the exported file (plain HDF5 C API) ----------------------------------
struct H5File {
  hid_t id;
  explicit H5File(const std::string& p) : id(H5Fopen(p.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT)) {}
  ~H5File() {
    if (id >= 0) H5Fclose(id);
  }
  bool has(const std::string& name) const { return H5Lexists(id, name.c_str(), H5P_DEFAULT) > 0; }
  Matrix matrix(const std::string& name) const {
    hid_t ds = H5Dopen2(id, name.c_str(), H5P_DEFAULT);
    EXPECT_GE(ds, 0) << name;
    hid_t sp = H5Dget_space(ds);
    hsize_t dims[2] = {0, 0};
    EXPECT_EQ(H5Sget_simple_extent_ndims(sp), 2) << name;
    H5Sget_simple_extent_dims(sp, dims, nullptr);
    Matrix M(static_cast<int>(dims[0]), static_cast<int>(dims[1]));
    if (!M.a.empty()) H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, M.a.data());
    H5Sclose(sp);
    H5Dclose(ds);
    return M;
  }
  double scalar(const std::string& name) const {
    double v = NAN;
    hid_t ds = H5Dopen2(id, name.c_str(), H5P_DEFAULT);
    EXPECT_GE(ds, 0) << name;
    H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v);
    H5Dclose(ds);
    return v;
  }
  template <typename T>
  T attr(const char* name, hid_t mtype) const {
    T v{};
    hid_t a = H5Aopen(id, name, H5P_DEFAULT);
    EXPECT_GE(a, 0) << name;
    H5Aread(a, mtype, &v);
    H5Aclose(a);
    return v;
  }
};

// Bitwise equality of two doubles (what the risks must satisfy, not a tolerance).
bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// W_L ... W_1 of the exported layers PREFIX1..PREFIXL, by the library's end_to_end
// (the product the trainer measures its risks with: no copy here, whose rounding could
// differ, e.g. by the compiler fusing multiply-adds under other flags).
Matrix product(const H5File& f, const std::string& prefix, int L) {
  std::vector<Matrix> W(L + 1);
  for (int l = 1; l <= L; ++l) W[l] = f.matrix(prefix + std::to_string(l));
  return end_to_end(W);
}

}  // namespace

TEST(Export, TrialNotInTheFileIsAnInputErrorNamingTrial) {
  const std::string in = results("f64");
  const fs::path out = scratch() / "missing_trial.h5";
  Outcome r = run("export '" + in + "' --trial 999 -o '" + out.string() + "'");
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_NE(r.err.find("--trial"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("999"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));
  // One past the last id, and a negative id (refused by the option's own check).
  r = run("export '" + in + "' --trial " + std::to_string(kTrials) + " -o '" + out.string() + "'");
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_NE(r.err.find("--trial"), std::string::npos) << r.err;
  r = run("export '" + in + "' --trial -1 -o '" + out.string() + "'");
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_NE(r.err.find("--trial"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
}

TEST(Export, MissingOrUnreadableInputIsAnInputError) {
  const fs::path out = scratch() / "bad_input.h5";
  Outcome r = run("export '" + (scratch() / "no_such.h5").string() + "' --trial 0 -o '" + out.string() + "'");
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_NE(r.err.find("no such file"), std::string::npos) << r.err;

  const fs::path text = scratch() / "text.h5";
  std::ofstream(text) << "not an HDF5 file\n";
  r = run("export '" + text.string() + "' --trial 0 -o '" + out.string() + "'");
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_NE(r.err.find("not an HDF5 file"), std::string::npos) << r.err;

  // An HDF5 file that is not a results file: an exported trial.
  const std::string in = results("f64");
  const fs::path t0 = scratch() / "t0_for_input.h5";
  ASSERT_EQ(run("export '" + in + "' --trial 0 -o '" + t0.string() + "'").rc, 0);
  r = run("export '" + t0.string() + "' --trial 0 -o '" + out.string() + "'");
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_NE(r.err.find("not a stsweep results file"), std::string::npos) << r.err;

  // A directory, and the input named as the output (which must survive).
  r = run("export '" + scratch().string() + "' --trial 0 -o '" + out.string() + "'");
  EXPECT_EQ(r.rc, 2) << r.err;
  const auto size = fs::file_size(in);
  r = run("export '" + in + "' --trial 0 -o '" + in + "'");
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_EQ(fs::file_size(in), size);
  EXPECT_FALSE(fs::exists(out));
}

// The output is checked as run's and merge's are, before any work: a missing
// or non-directory parent, a directory, a FIFO (which --force must not
// replace). Until session 13 export's own checks let the first through to the
// HDF5 create (exit 1, the library's words).
TEST(Export, OutputPathsThatCannotWorkAreInputErrors) {
  const std::string in = results("f64");
  const fs::path dir = scratch() / "export_out_paths";
  fs::remove_all(dir);
  fs::create_directories(dir);
  struct Case {
    std::string out, words;
  };
  const fs::path fifo = dir / "fifo.h5";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  std::ofstream(dir / "plain") << "x";
  for (const Case& c : {Case{(dir / "no_dir" / "t.h5").string(), "does not exist"},
                        Case{(dir / "plain" / "t.h5").string(), "is not a directory"},
                        Case{dir.string(), "is a directory"}, Case{fifo.string(), "not a regular file"}}) {
    for (const char* force : {"", " --force"}) {
      const Outcome r = run("export '" + in + "' --trial 0 -o '" + c.out + "'" + force);
      EXPECT_EQ(r.rc, 2) << c.out << force << ": " << r.err;
      EXPECT_NE(r.err.find("-o"), std::string::npos) << r.err;
      EXPECT_NE(r.err.find(c.words), std::string::npos) << c.out << ": " << r.err;
    }
  }
  struct stat st;
  ASSERT_EQ(::stat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode)) << "the FIFO was replaced";
  EXPECT_FALSE(fs::exists(dir / "no_dir"));
}

// The exported final weights give the run's test_risk and baseline_test_risk through
// linear_risk (host/setup.cpp), with W*, Mhalf and sigma taken from the export: bit for
// bit, since the run's risks come from the same function.
TEST(Export, FinalWeightsReproduceTheRunsRisks) {
  for (const std::string prec : {"f64", "f32"}) {
    const std::string in = results(prec);
    H5Results res = H5Results::open(in, false);
    const RowBlock rows = res.read(0, res.rows());
    const auto& risk = rows.cols.at(store_column_index("test_risk")).f;
    const auto& base = rows.cols.at(store_column_index("baseline_test_risk")).f;
    for (int id = 0; id < kTrials; ++id) {
      SCOPED_TRACE(prec + " trial " + std::to_string(id));
      const fs::path out = scratch() / ("t" + std::to_string(id) + "_" + prec + ".h5");
      Outcome r = run("export '" + in + "' --trial " + std::to_string(id) + " -o '" + out.string() + "'");
      ASSERT_EQ(r.rc, 0) << r.err;
      EXPECT_EQ(r.err.find("warning"), std::string::npos) << r.err;
      H5File f(out.string());
      ASSERT_GE(f.id, 0);
      EXPECT_EQ(f.attr<int64_t>("metrics_reproduced", H5T_NATIVE_INT64), 1);
      EXPECT_EQ(f.attr<int64_t>("trial", H5T_NATIVE_INT64), id);
      const int L = static_cast<int>(f.attr<int64_t>("depth", H5T_NATIVE_INT64));
      TrialProblem pr;
      pr.Wstar = f.matrix("Wstar");
      pr.Mhalf = f.matrix("Mhalf");
      pr.sigma = f.attr<double>("noise", H5T_NATIVE_DOUBLE);
      pr.sigma_y = f.attr<double>("label_noise", H5T_NATIVE_DOUBLE);
      const size_t row = static_cast<size_t>(res.row_of(id));
      const double R = linear_risk(pr, product(f, "student_W", L));
      const double Rb = linear_risk(pr, product(f, "twin_W", L));
      // Bit for bit: linear_risk is the trainer's own formula (tm::linear_risk, one
      // summation order) and product() multiplies the layers in the trainer's order.
      EXPECT_TRUE(same_bits(R, risk[row])) << R << " vs " << risk[row];
      EXPECT_TRUE(same_bits(Rb, base[row])) << Rb << " vs " << base[row];
      EXPECT_TRUE(same_bits(f.scalar("metrics/test_risk"), risk[row]));
      EXPECT_TRUE(same_bits(f.scalar("run_metrics/test_risk"), risk[row]));
      EXPECT_TRUE(same_bits(f.scalar("metrics/baseline_test_risk"), base[row]));
      EXPECT_TRUE(same_bits(f.scalar("run_metrics/baseline_test_risk"), base[row]));
      // Training moved the student: the risks of init and final weights differ.
      EXPECT_GT(std::abs(linear_risk(pr, product(f, "init_W", L)) - R), 1e-3 * R);
    }
  }
}

// An export of a trial whose row differs from what the sweep gives (here: the file's
// test_risk edited) warns that the run is not reproducible and records it.
TEST(Export, MismatchWithTheRunIsAWarning) {
  const std::string in = results("f64");
  const fs::path edited = scratch() / "edited.h5";
  fs::copy_file(in, edited, fs::copy_options::overwrite_existing);
  {
    hid_t f = H5Fopen(edited.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    hid_t ds = H5Dopen2(f, "test_risk", H5P_DEFAULT);
    std::vector<double> v(kTrials);
    H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
    v[2] = std::nextafter(v[2], 1e9);  // one ulp
    H5Dwrite(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
    H5Dclose(ds);
    H5Fclose(f);
  }
  const fs::path out = scratch() / "edited_t2.h5";
  Outcome r = run("export '" + edited.string() + "' --trial 2 -o '" + out.string() + "'");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("warning"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("test_risk"), std::string::npos) << r.err;
  H5File f(out.string());
  EXPECT_EQ(f.attr<int64_t>("metrics_reproduced", H5T_NATIVE_INT64), 0);
  // Trial 3 of the same file is untouched: no warning. The output exists now:
  // without --force it is refused and left as it is.
  r = run("export '" + edited.string() + "' --trial 3 -o '" + out.string() + "'");
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_NE(r.err.find("exists (add --force"), std::string::npos) << r.err;
  EXPECT_EQ(H5File(out.string()).attr<int64_t>("trial", H5T_NATIVE_INT64), 2);
  r = run("export '" + edited.string() + "' --trial 3 -o '" + out.string() + "' --force");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.err.find("warning"), std::string::npos) << r.err;
}
