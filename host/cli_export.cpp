// stsweep export OUT.h5 --trial ID -o trial.h5: one trial, replayable elsewhere.
//
// Rebuilds the trial from the sweep recorded in OUT.h5 (sweep_json, sweep_seed),
// sets it up and trains it again on the CPU, and writes everything a replay
// needs (docs/RESULTS.md, "Exported trials"): parameters, data, teacher, initial
// and final weights, and the metrics of this run next to those in OUT.h5. A
// difference between the two is reported: the run was not reproducible.
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>

#include "backend.hpp"
#include "cli.hpp"
#include "problem.hpp"
#include "store.hpp"
#include "sweep.hpp"
#include "train.hpp"
#include "version.hpp"

namespace stsweep::cli {
namespace {

struct ExportArgs {
  std::string file, out, precision;  // precision "": the one OUT.h5 records
  int64_t trial = -1;
  bool force = false;  // overwrite an existing -o
};

std::vector<uint64_t> dims_of(const Matrix& M) {
  return {static_cast<uint64_t>(M.rows), static_cast<uint64_t>(M.cols)};
}
void put_matrix(H5ArrayFile& f, const std::string& name, const Matrix& M, const std::string& doc) {
  f.f64(name, dims_of(M), M.a.data(), doc);
}
void put_layers(H5ArrayFile& f, const std::string& prefix, const std::vector<Matrix>& W, const std::string& doc) {
  for (size_t l = 1; l < W.size(); ++l)
    put_matrix(f, prefix + std::to_string(l), W[l], doc + ", layer " + std::to_string(l));
}

// Root attributes: every parameter under its results-column name, typed.
void put_params(H5ArrayFile& f, const TrialParams& p) {
  const auto& specs = param_specs();
  const auto values = flatten(p);
  for (size_t i = 0; i < specs.size(); ++i) {
    const ParamValue& v = values.at(i);
    if (auto* s = std::get_if<std::string>(&v)) f.attr(specs[i].column, *s);
    else if (auto* x = std::get_if<double>(&v)) f.attr(specs[i].column, *x);
    else f.attr(specs[i].column, std::get<int64_t>(v));
  }
  f.attr("params_json", to_json(p).dump());
}

// Metric columns (status, scalar metrics, step, curves) of one row as datasets
// in `group`; parameter columns are left out (they are the root attributes).
void put_metrics(H5ArrayFile& f, const std::string& group, const RowBlock& b, const std::string& what) {
  const auto& cs = store_columns();
  const uint64_t C = static_cast<uint64_t>(b.C);
  for (size_t k = 0; k < cs.size(); ++k) {
    const Column& c = cs[k];
    if (!c.key.empty()) continue;
    const auto& d = b.cols[k];
    const std::string name = group + "/" + c.name, doc = c.doc + " (" + what + ")";
    std::vector<uint64_t> dims;
    if (c.curve) dims = {C};
    if (c.type == ColType::f64) f.f64(name, dims, d.f.data(), doc);
    else f.i64(name, dims, d.i.data(), doc);
  }
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0 || (std::isnan(a) && std::isnan(b)); }

// Columns whose values differ between two one-row blocks of equal width (parameters
// included: the file's must be those the sweep decodes to), with the first values.
std::vector<std::string> differences(const RowBlock& a, const RowBlock& b) {
  std::vector<std::string> out;
  const auto& cs = store_columns();
  for (size_t k = 0; k < cs.size(); ++k) {
    const auto &x = a.cols[k], &y = b.cols[k];
    std::ostringstream why;
    why.precision(17);
    if (cs[k].type == ColType::str) {
      if (x.s != y.s) why << (x.s.empty() ? "" : x.s[0]) << " vs " << (y.s.empty() ? "" : y.s[0]);
    } else if (cs[k].type == ColType::f64) {
      bool same = x.f.size() == y.f.size();
      for (size_t j = 0; same && j < x.f.size(); ++j) same = same_bits(x.f[j], y.f[j]);
      if (!same) {
        size_t j = 0;
        while (j < x.f.size() && j < y.f.size() && same_bits(x.f[j], y.f[j])) ++j;
        if (j < x.f.size() && j < y.f.size()) why << x.f[j] << " vs " << y.f[j];
        else why << "lengths " << x.f.size() << " vs " << y.f.size();
      }
    } else if (x.i != y.i) {
      size_t j = 0;
      while (j < x.i.size() && j < y.i.size() && x.i[j] == y.i[j]) ++j;
      if (j < x.i.size() && j < y.i.size()) why << x.i[j] << " vs " << y.i[j];
      else why << "lengths " << x.i.size() << " vs " << y.i.size();
    }
    if (!why.str().empty()) out.push_back(cs[k].name + " (" + why.str() + ")");
  }
  return out;
}

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  return std::filesystem::exists(b, ec) && std::filesystem::equivalent(a, b, ec);
}

int export_main(const ExportArgs& a) {
  H5Results in = H5Results::open(a.file, false);  // InputError: missing, not HDF5, not ours
  const FileHeader& h = in.header();
  const int64_t row = in.row_of(a.trial);
  if (row < 0) {
    throw InputError("--trial", "trial " + std::to_string(a.trial) + " is not in " + a.file + " (it holds ids " +
                                    h.ids_text() + ")");
  }
  if (same_file(a.file, a.out)) throw InputError("-o", a.out + " is the input file");
  check_output_path(a.out);
  std::error_code ec;
  if (std::filesystem::exists(a.out, ec) && !a.force)
    throw InputError("-o", a.out + " exists (add --force to overwrite it)");
  check_force_replaces(a.out, "-o");

  std::string precision = a.precision;
  if (precision.empty()) {
    precision = h.precisions();
    if (precision.find(',') != std::string::npos)
      throw InputError("--precision", a.file + " was written with several precisions (" + precision +
                                          "); choose one with --precision f32|f64");
    if (precision != "f32" && precision != "f64")
      throw InputError("--precision", a.file + " records no precision ('" + precision +
                                          "'); choose one with --precision f32|f64");
  }

  const Sweep sweep = Sweep::from_text(h.sweep_json, a.file + ":sweep_json");
  if (sweep.hash() != h.sweep_hash)
    throw InputError("", a.file + ": sweep_json does not match sweep_hash (" + sweep.hash() + " vs " + h.sweep_hash +
                             "): an engine with another sweep format wrote it");
  if (a.trial >= static_cast<int64_t>(sweep.count()))
    throw InputError("--trial", "trial " + std::to_string(a.trial) + " is beyond the sweep's " +
                                    std::to_string(sweep.count()) + " trials");
  const TrialParams params = sweep.trial(static_cast<uint64_t>(a.trial));

  // The run's row, and this run's, in the same column form.
  RowBlock recorded = in.read(row, 1);
  const int8_t status = static_cast<int8_t>(recorded.cols.at(store_column_index("status")).i.at(0));
  in.close();

  const TrialProblem pr = setup_trial(params, sweep.seed());
  std::vector<Matrix> Ws, Wtw;
  TrialResult res = precision == "f64" ? train_trial<double>(pr, &Ws, &Wtw) : train_trial<float>(pr, &Ws, &Wtw);
  res.trial = a.trial;
  Batch one;
  one.ids = {a.trial};
  one.trials = {params};
  RowBlock redone = RowBlock::from_batch(one, {res});
  const int C = std::max(redone.C, recorded.C);
  redone.widen(C);
  recorded.widen(C);

  // Compare: bit for bit, or nothing to compare when OUT.h5 has no result for it.
  int64_t reproduced = -1;
  std::vector<std::string> diff;
  if (status == static_cast<int8_t>(Status::pending) || status == static_cast<int8_t>(Status::failed)) {
    std::cerr << "stsweep: note: trial " << a.trial << " is " << name(static_cast<Status>(status)) << " in " << a.file
              << ": no recorded metrics to compare with\n";
    const JournalSummary js = inspect_journal(journal_of(a.file));
    if (js.rows_waiting_for(h))
      std::cerr << "stsweep: note: " << a.file << ".journal holds " << js.rows
                << " finished trials not yet in the file (a run is going on, or `stsweep run ... --resume` folds them "
                   "in); export again after that to compare\n";
  } else {
    diff = differences(redone, recorded);
    reproduced = diff.empty() ? 1 : 0;
    if (!diff.empty()) {
      std::cerr << "stsweep: warning: trial " << a.trial << ": the metrics recomputed here (cpu, " << precision
                << ") differ from those in " << a.file << " (" << h.backends() << ", " << h.precisions()
                << "): the run is not reproducible bit for bit";
      if (h.precisions() != precision)
        std::cerr << " (expected: this export trains in " << precision << ", the run was " << h.precisions()
                  << "; they agree to rounding only)";
      else if (h.backends() != "cpu")
        std::cerr << " (expected: the CPU and CUDA backends agree to rounding, not bit for bit)";
      std::cerr << "\n";
      for (const auto& d : diff) std::cerr << "stsweep:   " << d << "\n";
    }
  }

  // Write a temporary next to the output, then rename it over (no half files).
  // Its name is this process's own: a fixed OUT.tmp could be the input file or
  // another file of the user's, which the export would clobber.
  const std::string tmp = a.out + ".tmp." + std::to_string(::getpid());
  if (std::filesystem::exists(tmp, ec) || same_file(a.file, tmp))
    throw InputError("-o", tmp + " (the export's temporary file) exists; remove it or choose another -o");
  try {
    H5ArrayFile f = H5ArrayFile::create(tmp);
    f.attr("format", std::string("stsweep-trial 1"));
    f.attr("trial", a.trial);
    f.attr("precision", precision);
    f.attr("source_file", a.file);
    f.attr("source_backend", h.backends());
    f.attr("source_precision", h.precisions());
    f.attr("source_status", static_cast<int64_t>(status));
    f.attr("sweep_json", h.sweep_json);
    f.attr("sweep_hash", h.sweep_hash);
    f.attr("sweep_name", h.sweep_name);
    f.attr("sweep_seed", static_cast<int64_t>(h.sweep_seed));
    f.attr("engine_version", std::string(STSWEEP_VERSION));
    f.attr("git_commit", std::string(STSWEEP_GIT_COMMIT));
    f.attr("export_time", utc_now_iso());
    f.attr("metrics_reproduced", reproduced);
    std::string dtext;
    for (const auto& d : diff) dtext += (dtext.empty() ? "" : "; ") + d;
    f.attr("metrics_differences", dtext);
    put_params(f, params);
    f.attr("depth", static_cast<int64_t>(pr.L));
    f.attr("widths", std::vector<int64_t>(pr.w.begin(), pr.w.end()));
    f.attr("matched", std::vector<int64_t>(pr.matched.begin(), pr.matched.end()));

    put_matrix(f, "X", pr.X, "clean student inputs (d x N)");
    put_matrix(f, "Xn", pr.Xn, "noisy student inputs X + sigma E (d x N)");
    put_matrix(f, "Y", pr.Y, "student labels (m x N)");
    put_matrix(f, "U", pr.U, "signal basis, orthonormal columns (d x k)");
    f.f64("spectrum", {pr.spectrum.size()}, pr.spectrum.data(), "latent variances s_1..s_k (sum k)");
    put_matrix(f, "Wstar", pr.Wstar, "target map W* (m x d; 0 x 0 for the nonlinear target)");
    put_matrix(f, "Mhalf", pr.Mhalf, "U diag(s)^1/2 (d x k): R = ||(We - W*) Mhalf||^2 + sigma^2 ||We||^2 + m sigma_y^2");
    if (pr.Xtest.cols > 0) {
      put_matrix(f, "Xtest", pr.Xtest, "Monte Carlo test inputs, noisy (d x n_test)");
      put_matrix(f, "Ytest", pr.Ytest, "Monte Carlo test targets, clean (m x n_test)");
    }
    put_matrix(f, "Wt", pr.Wt, "teacher's end-to-end clean map (m x d)");
    put_layers(f, "teacher_W", pr.teacher_W, "teacher");
    const TrialMoments mo = trial_moments(pr, matched_mask(pr));
    for (int l : pr.matched) {
      put_matrix(f, "feature_" + std::to_string(l), pr.feature[l],
                 "teacher features H_t^l on the clean inputs X (w_l x N)");
      put_matrix(f, "Chx_" + std::to_string(l), mo.Chx[l], "moment H_t^l Xn^T / N (w_l x d)");
      f.f64("tr_hh_" + std::to_string(l), {}, &mo.tr_hh[l], "||H_t^l||_F^2 / N");
    }
    put_matrix(f, "Cxx", mo.Cxx, "moment Xn Xn^T / N (d x d)");
    put_matrix(f, "Cyx", mo.Cyx, "moment Y Xn^T / N (m x d)");
    f.f64("tr_yy", {}, &mo.tr_yy, "||Y||_F^2 / N");
    put_layers(f, "init_W", pr.W0, "student and twin initial weights");
    put_layers(f, "student_W", Ws, "student final weights (" + precision + ", widened to float64)");
    put_layers(f, "twin_W", Wtw, "lambda = 0 twin final weights (" + precision + ", widened to float64)");
    f.i64("checkpoint_steps", {pr.checkpoints.size()}, pr.checkpoints.data(), "training steps of the checkpoints");
    put_metrics(f, "metrics", redone, "recomputed by this export, " + precision);
    put_metrics(f, "run_metrics", recorded, "as recorded in " + a.file);
    f.close();
    if (::rename(tmp.c_str(), a.out.c_str()) != 0)
      throw std::runtime_error("cannot rename " + tmp + " to " + a.out + ": " + std::strerror(errno));
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }

  std::printf("exported trial %lld (%s) to %s: test_risk %.10g, baseline_test_risk %.10g; %s\n",
              static_cast<long long>(a.trial), precision.c_str(), a.out.c_str(), res.test_risk, res.baseline_test_risk,
              reproduced == 1   ? "metrics equal to the run's bit for bit"
              : reproduced == 0 ? "metrics DIFFER from the run's (see the warning)"
                                : "no recorded metrics to compare");
  return kExitOk;
}

}  // namespace

void add_export_command(CLI::App& app, Registry& r) {
  auto a = std::make_shared<ExportArgs>();
  CLI::App* sub = app.add_subcommand(
      "export", "re-run one trial of a results file and write its data, teacher and weights (HDF5)");
  sub->add_option("file", a->file, "results file (HDF5) written by `stsweep run`")->required();
  sub->add_option("--trial", a->trial, "trial id (as in the file's `trial` column)")
      ->required()
      ->check(kCount);
  sub->add_option("-o,--output", a->out, "output file (HDF5), e.g. trial42.h5")->required();
  sub->add_option("--precision", a->precision, "f32 or f64 (default: the precision recorded in the file)")
      ->check(CLI::IsMember({"f32", "f64"}));
  sub->add_flag("--force", a->force, "overwrite the output file if it exists");
  r.add(sub, [a] { return export_main(*a); });
}

}  // namespace stsweep::cli
