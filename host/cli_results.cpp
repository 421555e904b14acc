// stsweep merge | info | summary: reading and combining results files.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <sstream>
#include <tuple>

#include "cli.hpp"
#include "store.hpp"

namespace stsweep::cli {
namespace {

std::string fmt(double v) {
  if (std::isnan(v)) return "nan";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

// --- info ------------------------------------------------------------------------
int info_main(const std::string& path) {
  H5Results f = H5Results::open(path, false);
  const FileHeader& h = f.header();
  std::cout << "file:      " << path << "\n"
            << "sweep:     " << h.sweep_name << " (hash " << h.sweep_hash << ", " << h.sweep_trials
            << " trials, seed " << h.sweep_seed << ")\n"
            << "shard:     " << h.shard << ": " << h.rows() << " trials (ids " << h.ids_text() << ")"
            << (h.partial_merge() ? ", " + std::to_string(h.rows()) + " of the sweep's " +
                                        std::to_string(h.sweep_trials) + ": a merge of some of its shards"
                                  : "")
            << "\n"
            << "status:    " << h.n_done << " done, " << h.n_diverged << " diverged, " << h.n_failed << " failed, "
            << h.n_pending << " pending" << (h.complete() ? "  [complete]" : "") << "\n";
  auto js = inspect_journal(journal_of(path));
  if (js.rows_waiting_for(h))
    std::cout << "journal:   " << js.rows << " finished trials not yet in the file (a run is going on, or "
              << "`stsweep run ... --resume` folds them in)\n";
  if (h.n_done > 0) {
    // Done rows whose training loss rose: [complete] does not mean a monotone
    // optimiser (a review read such a file as clean). run's closing note, kept.
    const int sk = store_column_index("status"), lk = store_column_index("loss_rise"),
              bk = store_column_index("baseline_loss_rise");
    RiseTally unstable;
    const int64_t N = f.rows(), block = 1 << 16;
    for (int64_t r0 = 0; r0 < N; r0 += block) {
      const RowBlock b = f.read(r0, std::min(block, N - r0), {sk, lk, bk});
      for (size_t r = 0; r < b.rows(); ++r)
        if (b.cols[sk].i[r] == static_cast<int64_t>(Status::done)) unstable.add(b.cols[lk].f[r], b.cols[bk].f[r]);
    }
    std::cout << "stability: " << unstable.count << " of the " << h.n_done
              << " done trials had a training loss that rose (loss_rise or baseline_loss_rise above "
              << fmt(kUnstableRise) << (unstable.count ? ", up to " + fmt(unstable.worst) : "") << ")"
              << (unstable.count ? ": unstable gradient descent; filter on those columns" : "") << "\n";
  }
  std::cout << "backend:   " << h.backends() << " (" << h.devices() << ")\n"
            << "precision: " << h.precisions() << "\n"
            << "host:      " << h.hosts() << "\n"
            << "time:      " << h.start_time() << " .. " << h.end_time() << ", wall " << fmt(h.wall_seconds())
            << " s, compute " << fmt(h.compute_seconds()) << " s, store " << fmt(h.store_seconds()) << " s ("
            << fmt(h.store_exposed_seconds()) << " s not overlapped with training), " << h.sessions.size()
            << " session(s)\n";
  if (!h.sessions.empty())
    std::cout << "engine:    " << h.sessions.back().engine_version << " (git " << h.sessions.back().git_commit
              << ")\n";
  return kExitOk;
}

// --- summary -----------------------------------------------------------------------
struct KeyPart {
  bool is_num;
  double num;
  std::string text;
  bool operator<(const KeyPart& o) const {
    if (is_num != o.is_num) return is_num;
    if (is_num) return num < o.num;
    return text < o.text;
  }
  std::string show() const { return is_num ? fmt(num) : text; }
};
struct Acc {
  int64_t n = 0;
  double mean = 0, m2 = 0;
  void add(double x) {
    ++n;
    double d = x - mean;
    mean += d / n;
    m2 += d * (x - mean);
  }
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string t;
  while (std::getline(ss, t, ','))
    if (!t.empty()) out.push_back(t);
  return out;
}

// --paired COL: summarise metric - COL per trial (or metric / COL - 1 with
// --relative), so that the CI is that of the paired difference: the seeds make
// a trial and its twin (or any two columns of one row) share data and init.
int summary_main(const std::string& path, const std::string& by_text, const std::string& metric,
                 const std::string& paired, bool relative, bool include_diverged, const std::string& format,
                 const std::vector<std::string>& where_text) {
  H5Results f = H5Results::open(path, false);
  const auto& cs = store_columns();
  auto column = [&](const std::string& name0, const char* opt) {
    std::string name = name0;
    std::replace(name.begin(), name.end(), '.', '_');  // teacher.kind -> teacher_kind
    int k = store_column_index(name);
    if (k < 0 || cs[k].curve) {
      std::string names;
      for (const auto& c : cs)
        if (!c.curve) names += (names.empty() ? "" : ", ") + c.name;
      throw InputError(opt, "no column '" + name0 + "' (columns: " + names + ")");
    }
    return k;
  };
  std::vector<std::string> by = split(by_text);
  std::vector<int> byk;
  for (const auto& b : by) byk.push_back(column(b, "--by"));
  int mk = column(metric, "--metric");
  if (cs[mk].type == ColType::str) throw InputError("--metric", "'" + metric + "' is text, not a number");
  if (relative && paired.empty()) throw InputError("--relative", "needs --paired COLUMN (metric / COLUMN - 1)");
  const int pk = paired.empty() ? -1 : column(paired, "--paired");
  // The early-stopping oracle against the twin's last risk (or the reverse)
  // mixes two stopping rules: the docs warn, and so does summary (a review read
  // such a "-30%" as the teacher's effect).
  if (pk >= 0) {
    const std::string m = cs[mk].name, q = cs[pk].name;
    if ((m == "best_test_risk" && q == "baseline_test_risk") || (m == "test_risk" && q == "baseline_best_test_risk"))
      std::cerr << "stsweep: summary: warning: " << m << " paired with " << q
                << " compares a student stopped at its best with a twin at its last step (or the reverse): "
                   "for the teacher's effect pair best_test_risk with baseline_best_test_risk, test_risk with "
                   "baseline_test_risk\n";
  }
  if (pk >= 0 && cs[pk].type == ColType::str) throw InputError("--paired", "'" + paired + "' is text, not a number");
  // A diverged row's risks and losses are where its network blew up (1e20 is
  // finite): only its flags and its stop step mean something (a review's means
  // of 1e20 with --include-diverged).
  if (include_diverged && (pk >= 0 || !(cs[mk].type == ColType::i8 || cs[mk].name == "steps_run")))
    throw InputError("--include-diverged",
                     pk >= 0 ? std::string("not with --paired: a diverged row's metrics are where it blew up")
                             : "'" + metric + "' of a diverged row is where its network blew up (finite values "
                               "such as 1e20 would enter the mean): use it with student_diverged, twin_diverged, "
                               "zero_loss, baseline_zero_loss or steps_run");
  // --where COLUMN=VALUE: numbers compared as numbers (to 1e-9 relative, so
  // 0.3 finds a linspace's 0.30000000000000004), text as text.
  struct Where {
    int k;
    double num;
    std::string text, shown;
  };
  std::vector<Where> where;
  for (const std::string& w : where_text) {
    const size_t eq = w.find('=');
    if (eq == std::string::npos || eq == 0)
      throw InputError("--where", "'" + w + "': expected COLUMN=VALUE, e.g. --where noise=0.5");
    Where c{column(w.substr(0, eq), "--where"), 0, w.substr(eq + 1), w.substr(0, eq) + " = " + w.substr(eq + 1)};
    if (cs[c.k].type != ColType::str) {
      char* end = nullptr;
      c.num = std::strtod(c.text.c_str(), &end);
      if (c.text.empty() || *end != '\0')
        throw InputError("--where", "'" + w + "': " + w.substr(0, eq) + " is a number column, '" + c.text +
                                        "' is not a number");
    }
    where.push_back(c);
  }
  int sk = store_column_index("status");
  // The early-stopping oracle is only that when the best checkpoint is not the
  // last one: count the rows summarised where it is (a review found 81 of 408
  // in findings_teacher, unflagged), for the student's and the twin's best.
  auto names_best = [&](const char* a, const char* b) {
    for (int k : {mk, pk})
      if (k >= 0 && (cs[k].name == a || cs[k].name == b)) return true;
    return false;
  };
  const bool student_best = names_best("best_test_risk", "best_step");
  const bool twin_best = names_best("baseline_best_test_risk", "baseline_best_step");
  const int bsk = store_column_index("best_step"), tbk = store_column_index("baseline_best_step"),
            srk = store_column_index("steps_run"), zlk = store_column_index("zero_loss"),
            tzk = store_column_index("baseline_zero_loss");
  // Of those, the ones short of zero training loss: a converged student's
  // last risk is where more steps would leave it (a review: 7 of 18 flagged
  // rows in findings_decomposition were converged).
  int64_t best_last = 0, twin_best_last = 0, best_last_open = 0, twin_best_last_open = 0;
  std::vector<int> which = byk;
  if (student_best || twin_best) which.insert(which.end(), {bsk, tbk, srk, zlk, tzk});
  which.push_back(mk);
  if (pk >= 0) which.push_back(pk);
  which.push_back(sk);
  for (const Where& c : where) which.push_back(c.k);
  auto number = [&](const RowBlock& b, int k, size_t r) {
    return cs[k].type == ColType::f64 ? b.cols[k].f[r] : static_cast<double>(b.cols[k].i[r]);
  };
  // A metric's value, NaN where the file has none (an integer metric's -1: the
  // twin's best step in a row without a twin must not count as step -1).
  auto value = [&](const RowBlock& b, int k, size_t r) {
    if (int_column_has_missing(cs[k]) && b.cols[k].i[r] == -1) return static_cast<double>(NAN);
    return number(b, k, r);
  };
  auto matches = [&](const Where& c, const RowBlock& b, size_t r) {
    if (cs[c.k].type == ColType::str) return b.cols[c.k].s[r] == c.text;
    const double x = number(b, c.k, r);
    return std::fabs(x - c.num) <= 1e-9 * std::fabs(c.num);
  };
  // Per --where: whether some done trial matches it alone, and (up to 20) the
  // values the done trials have, for the message when nothing matches.
  std::vector<char> hit(where.size(), 0);
  std::vector<std::set<KeyPart>> seen(where.size());
  auto kept = [&](const RowBlock& b, size_t r) {
    bool all = true;
    for (size_t i = 0; i < where.size(); ++i) {
      const Where& c = where[i];
      if (matches(c, b, r)) {
        hit[i] = 1;
      } else {
        all = false;
        if (!hit[i] && seen[i].size() < 20) {
          const double x = cs[c.k].type == ColType::str ? 0 : number(b, c.k, r);
          if (!std::isnan(x))  // NaN cannot be ordered in the set (and no filter matches it)
            seen[i].insert(cs[c.k].type == ColType::str ? KeyPart{false, 0, b.cols[c.k].s[r]} : KeyPart{true, x, ""});
        }
      }
    }
    return all;
  };
  std::string where_shown;
  for (const Where& c : where) where_shown += (where_shown.empty() ? "" : ", ") + c.shown;

  const std::string counted = include_diverged ? "done and diverged trials" : "done trials";
  const std::string one_counted = include_diverged ? "done or diverged trial" : "done trial";
  std::map<std::vector<KeyPart>, Acc> groups;
  int64_t used = 0, skipped_nan = 0, matched = 0;
  const int64_t N = f.rows(), block = 1 << 16;
  for (int64_t r0 = 0; r0 < N; r0 += block) {
    RowBlock b = f.read(r0, std::min(block, N - r0), which);
    for (size_t r = 0; r < b.rows(); ++r) {
      const int64_t status = b.cols[sk].i[r];
      if (!(status == static_cast<int64_t>(Status::done) ||
            (include_diverged && status == static_cast<int64_t>(Status::diverged))) ||
          !kept(b, r))
        continue;
      ++matched;
      double x = value(b, mk, r);
      if (pk >= 0) x = relative ? x / value(b, pk, r) - 1 : x - value(b, pk, r);
      if (!std::isfinite(x)) {  // NaN, no value (-1 step of a missing twin), or +-inf (--relative against a zero)
        ++skipped_nan;
        continue;
      }
      std::vector<KeyPart> key;
      for (int k : byk) {
        const auto& d = b.cols[k];
        if (cs[k].type == ColType::str) key.push_back({false, 0, d.s[r]});
        else if (cs[k].type == ColType::f64) key.push_back({true, d.f[r], ""});
        else key.push_back({true, static_cast<double>(d.i[r]), ""});
      }
      groups[key].add(x);
      ++used;
      if (student_best || twin_best) {
        const int64_t last = b.cols[srk].i[r];
        const bool s_last = student_best && b.cols[bsk].i[r] == last, t_last = twin_best && b.cols[tbk].i[r] == last;
        best_last += s_last;
        twin_best_last += t_last;
        best_last_open += s_last && b.cols[zlk].i[r] != 1;
        twin_best_last_open += t_last && b.cols[tzk].i[r] != 1;
      }
    }
  }
  // A --where that no done trial matches is a misspelt value more often than
  // a finding: say which, and the values there are (as tools/plot-risks does).
  if (matched == 0 && !where.empty() && f.header().n_done > 0) {
    for (size_t i = 0; i < where.size(); ++i) {
      if (hit[i]) continue;
      std::string vals;
      // Shortest exact text, so a value copied from the hint matches (the table's
      // 6 digits would not: 0.0562341 is not 10^-1.25 to 1e-9).
      for (const auto& v : seen[i])
        vals += (vals.empty() ? "" : ", ") + (v.is_num ? shortest_text(v.num) : v.text.empty() ? "\"\"" : v.text);
      throw std::runtime_error("summary: no " + one_counted + " has " + where[i].shown + " (its values: " + vals +
                               (seen[i].size() >= 20 ? ", ..." : "") + ")");
    }
    throw std::runtime_error("summary: no " + one_counted + " has " + where_shown + " together (each matches some)");
  }
  // What the table leaves out, on stderr (the table or CSV on stdout stays one).
  {
    const FileHeader& h = f.header();
    if (h.n_pending + h.n_failed + (include_diverged ? 0 : h.n_diverged) > 0)
      std::cerr << "stsweep: summary: " << h.n_done << " of the " << h.rows() << " trials in " << path
                << " are done (the table counts " << counted << " only); the file also has " << h.n_diverged
                << " diverged" << (include_diverged ? "" : " (--include-diverged counts them)") << ", " << h.n_failed
                << " failed, " << h.n_pending << " pending\n";
    for (const auto& [n, open, who, col, risk, zl] :
         {std::tuple{best_last, best_last_open, "the student's", "best_step", "best_test_risk", "zero_loss"},
          std::tuple{twin_best_last, twin_best_last_open, "the twin's", "baseline_best_step",
                     "baseline_best_test_risk", "baseline_zero_loss"}})
      if (open > 0)
        std::cerr << "stsweep: summary: note: " << n << " of the " << used << " rows summarised have " << who
                  << " best checkpoint at the last step (" << col << " = steps_run), " << open
                  << " of them short of zero training loss (" << zl << " = 0): there " << risk
                  << " is the last risk of a network still learning, not an early-stopped one, and more steps "
                     "could lower it\n";
    const JournalSummary js = inspect_journal(journal_of(path));
    if (js.rows_waiting_for(h))
      std::cerr << "stsweep: summary: " << js.rows << " finished trials are in " << journal_of(path)
                << ", not yet in the file (`stsweep run ... --resume` folds them in)\n";
  }
  std::vector<std::string> head = by;
  for (const char* c : {"count", "mean", "std", "ci95_low", "ci95_high"}) head.push_back(c);
  std::vector<std::vector<std::string>> rows;
  for (const auto& [key, a] : groups) {
    std::vector<std::string> row;
    for (const auto& k : key) row.push_back(k.show());
    double sd = a.n > 1 ? std::sqrt(a.m2 / (a.n - 1)) : NAN;
    double half = a.n > 1 ? t975(a.n - 1) * sd / std::sqrt(static_cast<double>(a.n)) : NAN;
    row.push_back(std::to_string(a.n));
    row.push_back(fmt(a.mean));
    row.push_back(fmt(sd));
    row.push_back(fmt(a.mean - half));
    row.push_back(fmt(a.mean + half));
    rows.push_back(row);
  }
  if (format == "csv") {
    auto line = [](const std::vector<std::string>& v) {
      std::string s;
      for (size_t i = 0; i < v.size(); ++i) {
        std::string x = v[i];
        if (x.find_first_of(",\"") != std::string::npos) {
          std::string q = "\"";
          for (char c : x) q += c == '"' ? std::string("\"\"") : std::string(1, c);
          x = q + "\"";
        }
        s += (i ? "," : "") + x;
      }
      return s;
    };
    std::cout << line(head) << "\n";
    for (const auto& r : rows) std::cout << line(r) << "\n";
    if (skipped_nan)  // on stderr: the CSV on stdout stays a table
      std::cerr << "stsweep: summary: " << skipped_nan << " " << counted << " with no finite value (NaN, inf, or an integer metric's -1) left out\n";
  } else {
    std::vector<size_t> w(head.size());
    for (size_t i = 0; i < head.size(); ++i) w[i] = head[i].size();
    for (const auto& r : rows)
      for (size_t i = 0; i < r.size(); ++i) w[i] = std::max(w[i], r[i].size());
    auto line = [&](const std::vector<std::string>& v) {
      for (size_t i = 0; i < v.size(); ++i) {
        std::string pad(w[i] - v[i].size(), ' ');
        std::cout << (i ? "  " : "") << (i < by.size() ? v[i] + pad : pad + v[i]);
      }
      std::cout << "\n";
    };
    const std::string what = pk < 0 ? metric
                             : relative ? metric + " / " + paired + " - 1, per trial"
                                        : metric + " - " + paired + ", per trial";
    std::cout << what << " over " << counted << (where.empty() ? "" : " with " + where_shown)
              << " (mean, sample std, 95% CI of the mean)\n";
    line(head);
    for (const auto& r : rows) line(r);
    if (skipped_nan)
      std::cout << "(" << skipped_nan << " " << counted << " with no finite value (NaN, inf, or an integer metric's -1) left out)\n";
    if (used == 0) std::cout << "(no " << counted << (where.empty() ? "" : " with " + where_shown) << ")\n";
  }
  return kExitOk;
}

}  // namespace

// Two-sided 95% quantile of Student's t with `df` degrees of freedom.
double t975(int64_t df) {
  static const double table[] = {0,      12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                                 2.201,  2.179,  2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
                                 2.080,  2.074,  2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042};
  if (df <= 0) return NAN;
  if (df <= 30) return table[df];
  const double z = 1.959964, d = static_cast<double>(df);  // Cornish-Fisher expansion
  return z + (z * z * z + z) / (4 * d) + (5 * std::pow(z, 5) + 16 * z * z * z + 3 * z) / (96 * d * d);
}

void add_results_commands(CLI::App& app, Registry& r) {
  {
    struct A {
      std::string out;
      std::vector<std::string> shards;
      bool force = false;
    };
    auto a = std::make_shared<A>();
    CLI::App* sub = app.add_subcommand("merge", "merge the shard files of one sweep into one results file");
    sub->add_option("out", a->out, "merged results file (new)")->required();
    sub->add_option("shards", a->shards, "shard files (stsweep run --shard I/N)")->required();
    sub->add_flag("--force", a->force, "overwrite OUT; merge shards computed with different precisions");
    r.add(sub, [a] {
      MergeReport rep = merge_results(a->out, a->shards, a->force);
      for (const auto& n : rep.notes) std::cerr << "stsweep: note: " << n << "\n";
      std::cout << "merged " << rep.rows << " trials from " << a->shards.size() << " files into " << a->out << "\n";
      return kExitOk;
    });
  }
  {
    auto path = std::make_shared<std::string>();
    CLI::App* sub = app.add_subcommand("info", "describe a results file: sweep, counts by status, timings");
    sub->add_option("file", *path, "results file (HDF5)")->required();
    r.add(sub, [path] { return info_main(*path); });
  }
  {
    struct A {
      std::string file, by, metric = "test_risk", paired, format = "table";
      std::vector<std::string> where;
      bool relative = false, diverged = false;
    };
    auto a = std::make_shared<A>();
    CLI::App* sub =
        app.add_subcommand("summary", "mean, std, 95% CI and count of a metric by parameter values (done trials)");
    sub->add_option("file", a->file, "results file (HDF5)")->required();
    sub->add_option("--by", a->by, "comma-separated columns to group by, e.g. noise,lambda");
    sub->add_option("--metric", a->metric, "numeric column to summarise (default test_risk)");
    sub->add_option("--paired", a->paired,
                    "summarise metric - COLUMN per trial (paired), e.g. --paired baseline_test_risk: the "
                    "teacher's effect against each row's own lambda = 0 twin");
    sub->add_flag("--relative", a->relative, "with --paired: metric / COLUMN - 1 per trial");
    sub->add_flag("--include-diverged", a->diverged,
                  "count diverged trials too, for a flag metric (student_diverged, twin_diverged, zero_loss, "
                  "baseline_zero_loss) or steps_run: e.g. --metric student_diverged --include-diverged gives "
                  "divergence rates (refused for other metrics and --paired: a diverged row's risks are where it "
                  "blew up)");
    sub->add_option("--format", a->format, "table or csv")->check(CLI::IsMember({"table", "csv"}));
    sub->add_option("--where", a->where,
                    "keep only trials whose COLUMN has VALUE, e.g. --where noise=0.5 (repeatable; numbers "
                    "compared as numbers)")
        ->allow_extra_args(false);
    r.add(sub, [a] {
      return summary_main(a->file, a->by, a->metric, a->paired, a->relative, a->diverged, a->format, a->where);
    });
  }
}

}  // namespace stsweep::cli
