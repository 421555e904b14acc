// `stsweep validate` and `stsweep list`: see a sweep before running it.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <unordered_set>
#include <vector>

#include "batching.hpp"
#include "cli.hpp"
#include "params.hpp"
#include "problem.hpp"
#include "sweep.hpp"

namespace stsweep::cli {
namespace {

std::string text_of(const ParamValue& v) {
  if (auto* i = std::get_if<int64_t>(&v)) return std::to_string(*i);
  if (auto* d = std::get_if<double>(&v)) return shortest_text(*d);
  return std::get<std::string>(v);
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += (c == '"') ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

// Trials that differ only in what training reads share one set-up, within a
// batch (SetupShare): say how many distinct problems the sweep has and how
// many set-ups batches of the CPU's and CUDA's default sizes would copy, when
// any would (batches here are runs of consecutive ids, as for a sweep whose
// shape never changes).
void print_setup_sharing(const Sweep& s) {
  const uint64_t n = s.count();
  std::vector<size_t> recipe(n);
  std::unordered_set<size_t> all;
  for (uint64_t id = 0; id < n; ++id) {
    recipe[id] = std::hash<std::string>{}(problem_recipe(s.trial(id), s.seed()));
    all.insert(recipe[id]);
  }
  if (all.size() == n) return;
  auto copied = [&](uint64_t batch) {
    uint64_t c = 0;
    for (uint64_t lo = 0; lo < n; lo += batch) {
      const uint64_t hi = std::min(n, lo + batch);
      const std::unordered_set<size_t> distinct(recipe.begin() + lo, recipe.begin() + hi);
      c += (hi - lo) - distinct.size();
    }
    return c;
  };
  const uint64_t cpu = default_batch_size(false, 1, 1), gpu = default_batch_size(true, 1, 1);
  std::cout << "set-up: " << n << " trials, " << all.size() << " distinct problems (trials that differ only in "
            << setup_ignores_text() << " share one, built once per batch: run --setup-cache-mb); batches of " << cpu
            << " would copy " << copied(cpu) << ", batches of " << gpu << " " << copied(gpu)
            << " (run --batch-size; with those axes last, such trials are neighbours)\n";
}

// Why parameter `key` changes nothing in trial p ("" when it is read): an
// axis over such a parameter gives trials that differ only in its column.
std::string unread_because(const TrialParams& p, const std::string& key) {
  const auto only = [&](const std::string& when) { return key + " is read only when " + when; };
  if (key == "teacher.delta" && p.teacher.kind != TeacherKind::perturbed) return only("teacher.kind = perturbed");
  // teacher.n_train is also in the teacher key (SWEEPS.md, "Seeds"): it re-draws
  // a perturbed teacher's G and a rotated decomposition's R (a review saw the
  // warning for a perturbed teacher whose risks did change; until session 15).
  if (key == "teacher.n_train" && p.teacher.kind != TeacherKind::trained &&
      (p.teacher.kind == TeacherKind::perturbed || p.teacher.decomposition == Decomposition::rotated))
    return "";
  if ((key == "teacher.n_train" || key == "teacher.steps" || key == "teacher.lr") &&
      p.teacher.kind != TeacherKind::trained)
    return only(key == "teacher.n_train" ? "teacher.kind = trained (or as a seed: teacher.kind = perturbed, or "
                                           "teacher.decomposition = rotated)"
                                         : "teacher.kind = trained");
  if (key == "teacher.scale" && p.teacher.decomposition != Decomposition::scaled)
    return only("teacher.decomposition = scaled");
  if (key == "teacher.power" && p.teacher.decomposition != Decomposition::power)
    return only("teacher.decomposition = power");
  if (key == "spectrum_p" && p.spectrum != SpectrumKind::power) return only("spectrum = power");
  if (key == "spectrum_kappa" && p.spectrum != SpectrumKind::geometric) return only("spectrum = geometric");
  if (key == "n_test" && p.linear())
    return key + " sizes the Monte Carlo test set, which only nonlinear students and targets use (linear "
                 "trials' risks are exact)";
  return "";
}

int validate(const std::string& file) {
  Sweep s = Sweep::from_file(file);
  std::cout << "sweep:  " << s.name() << "\n";
  if (!s.description().empty()) std::cout << "about:  " << s.description() << "\n";
  std::cout << "trials: " << s.count() << "\n";
  std::cout << "seed:   " << s.seed() << "\n";
  std::cout << "hash:   " << s.hash() << "\n";
  auto axes = s.axes();
  size_t wname = 4;
  for (const auto& a : axes) wname = std::max(wname, a.name.size());
  int block = -2;
  for (const auto& a : axes) {
    if (a.subgrid != block) {
      block = a.subgrid;
      std::cout << (block < 0 ? std::string("axes (the last varies fastest):")
                              : "subgrids[" + std::to_string(block) + "] axes" +
                                    (a.subgrid_label.rfind("subgrids[", 0) == 0 ? std::string()
                                                                                : " (\"" + a.subgrid_label + "\")") +
                                    ":")
                << "\n";
    }
    std::string preview;
    for (const auto& p : a.preview) { preview += preview.empty() ? "" : ", "; preview += p; }
    if (a.size > a.preview.size()) preview += ", ...";
    std::printf("  %-*s %10llu  %s\n", static_cast<int>(wname), a.name.c_str(),
                static_cast<unsigned long long>(a.size), preview.c_str());
  }
  if (axes.empty()) std::cout << "axes:   none (one trial of the defaults per block)\n";
  std::fflush(stdout);

  const uint64_t n = s.count(), checked = check_trials(s, {0, n});
  std::cout << "ok: " << (checked == n ? "all " : "") << checked << " trials checked"
            << (checked == n ? "" : " (an even spread of the sweep)") << "\n";
  if (checked == n) {
    // Trained teachers cost as much as a student each; say how many the sweep
    // really has (trials that share one train it once per run process).
    uint64_t with_teacher = 0;
    std::unordered_set<size_t> distinct;
    // Axes over parameters no trial reads (a session-14 review: teacher.delta
    // over oracle teachers plotted as "the teacher's error does not matter").
    std::vector<std::pair<std::string, std::string>> unread;  // key, reason (while no trial reads it)
    bool n_train_axis = false, n_train_sized = false, n_train_seeds = false;  // teacher.n_train: size or seed
    for (const auto& a : axes) {
      std::stringstream ss(a.name);
      for (std::string key; std::getline(ss, key, '+');) {
        if (key == "teacher.n_train") n_train_axis = true;
        if (std::none_of(unread.begin(), unread.end(), [&](const auto& u) { return u.first == key; }))
          unread.push_back({key, ""});
      }
    }
    for (uint64_t id = 0; id < n; ++id) {
      const TrialParams tp = s.trial(id);
      for (auto it = unread.begin(); it != unread.end();) {
        it->second = unread_because(tp, it->first);
        it = it->second.empty() ? unread.erase(it) : it + 1;
      }
      if (n_train_axis) {
        n_train_sized = n_train_sized || tp.teacher.kind == TeacherKind::trained;
        n_train_seeds = n_train_seeds || (tp.teacher.kind != TeacherKind::trained && unread_because(tp, "teacher.n_train").empty());
      }
      const std::string recipe = trained_teacher_recipe(tp, s.seed());
      if (recipe.empty()) continue;
      ++with_teacher;
      distinct.insert(std::hash<std::string>{}(recipe));
    }
    if (with_teacher > 0)
      std::cout << "teachers: " << with_teacher << " trials have a trained teacher, " << distinct.size()
                << " distinct: each is trained once per run process and reused (run --teacher-cache-mb)\n";
    print_setup_sharing(s);
    for (const auto& [key, why] : unread)
      if (!why.empty())
        std::cout << "warning: the axis " << key << " changes nothing: " << why
                << " and no trial of the sweep has that (its trials differ only in the " << key << " column)\n";
    if (n_train_seeds && !n_train_sized)
      std::cout << "note: the axis teacher.n_train sizes a trained teacher's training set, and the sweep has none: "
                   "for its perturbed teachers (or rotated decompositions) it only re-draws the perturbation G (the "
                   "rotation R) from another seed, a new teacher of the same delta\n";
  }
  for (const auto& u : s.unmatched_exclude())
    std::cout << "warning: " << u.path << " (" << u.entry << ") drops no trial: no trial of "
              << (u.subgrid.empty() ? std::string("the sweep") : u.subgrid)
              << " has all of that (a misspelt value, or a combination the grid never makes)\n";
  return kExitOk;
}

struct ListOptions {
  std::string file, format = "table", shard, columns;
  bool count = false;
  uint64_t offset = 0;
  std::optional<uint64_t> limit;
};

int list(const ListOptions& o) {
  Sweep s = Sweep::from_file(o.file);
  IdRange r{0, s.count()};
  if (!o.shard.empty()) r = shard_range(s.count(), parse_shard(o.shard));
  uint64_t begin = std::min(r.end, r.begin + std::min(o.offset, r.end - r.begin));
  uint64_t end = o.limit ? std::min(r.end, begin + std::min(*o.limit, r.end - begin)) : r.end;
  if (o.count) {
    std::cout << (end - begin) << "\n";
    return kExitOk;
  }

  const auto& specs = param_specs();
  std::vector<size_t> cols;  // indices into specs
  if (o.columns.empty()) {
    for (size_t i = 0; i < specs.size(); ++i) cols.push_back(i);
  } else {
    std::stringstream ss(o.columns);
    std::string c;
    while (std::getline(ss, c, ',')) {
      if (c == "id") continue;
      auto it = std::find_if(specs.begin(), specs.end(), [&](const ParamSpec& p) { return p.column == c || p.key == c; });
      if (it == specs.end()) throw InputError("--columns", unknown_parameter_message(c));
      const size_t k = static_cast<size_t>(it - specs.begin());
      if (std::find(cols.begin(), cols.end(), k) != cols.end())
        throw InputError("--columns", "column \"" + c + "\" given twice");
      cols.push_back(k);
    }
  }

  std::string out;
  auto flush = [&] {
    std::fwrite(out.data(), 1, out.size(), stdout);
    out.clear();
  };
  if (o.format == "csv") {
    out += "id";
    for (size_t c : cols) out += "," + specs[c].column;
    out += "\n";
    for (uint64_t id = begin; id < end; ++id) {
      auto v = flatten(s.trial(id));
      out += std::to_string(id);
      for (size_t c : cols) out += "," + csv_field(text_of(v[c]));
      out += "\n";
      if (out.size() > (1 << 16)) flush();
    }
  } else if (o.format == "json") {
    for (uint64_t id = begin; id < end; ++id) {
      auto v = flatten(s.trial(id));
      nlohmann::ordered_json row;
      row["id"] = id;
      for (size_t c : cols) std::visit([&](const auto& x) { row[specs[c].column] = x; }, v[c]);
      out += row.dump() + "\n";
      if (out.size() > (1 << 16)) flush();
    }
  } else {  // table: widths from the header and the first page, widened as needed
    std::vector<size_t> width{std::max<size_t>(2, std::to_string(end ? end - 1 : 0).size())};
    for (size_t c : cols) width.push_back(specs[c].column.size());
    std::vector<bool> right{true};
    for (size_t c : cols) right.push_back(specs[c].type != 's');
    auto emit = [&](const std::vector<std::string>& cells) {
      for (size_t j = 0; j < cells.size(); ++j) {
        size_t pad = width[j] > cells[j].size() ? width[j] - cells[j].size() : 0;
        if (j) out += "  ";
        if (right[j]) out.append(pad, ' ');
        out += cells[j];
        if (!right[j] && j + 1 < cells.size()) out.append(pad, ' ');
      }
      out += "\n";
    };
    std::vector<std::string> header{"id"};
    for (size_t c : cols) header.push_back(specs[c].column);
    bool header_done = false;
    const uint64_t page = 4096;
    for (uint64_t p0 = begin; p0 < end || !header_done; p0 += page) {
      std::vector<std::vector<std::string>> rows;
      for (uint64_t id = p0; id < std::min(end, p0 + page); ++id) {
        auto v = flatten(s.trial(id));
        std::vector<std::string> cells{std::to_string(id)};
        for (size_t c : cols) cells.push_back(text_of(v[c]));
        for (size_t j = 0; j < cells.size(); ++j) width[j] = std::max(width[j], cells[j].size());
        rows.push_back(std::move(cells));
      }
      if (!header_done) {
        emit(header);
        header_done = true;
      }
      for (const auto& row : rows) emit(row);
      flush();
      if (p0 >= end) break;
    }
  }
  flush();
  std::fflush(stdout);
  return kExitOk;
}

}  // namespace

void add_sweep_commands(CLI::App& app, Registry& r) {
  auto file = std::make_shared<std::string>();
  CLI::App* v = app.add_subcommand("validate", "check a sweep file: print its trial count and axes");
  v->add_option("file", *file, "sweep file (JSON, docs/SWEEPS.md)")->required();
  r.add(v, [file] { return validate(*file); });

  auto o = std::make_shared<ListOptions>();
  CLI::App* l = app.add_subcommand("list", "list a sweep's trials and their parameters (the dry run)");
  l->add_option("file", o->file, "sweep file (JSON, docs/SWEEPS.md)")->required();
  l->add_flag("--count", o->count, "print only the number of trials selected");
  l->add_option("--format", o->format, "table | csv | json (JSON lines)")
      ->check(CLI::IsMember({"table", "csv", "json"}));
  l->add_option("--shard", o->shard, "I/N: only shard I (0-based) of N contiguous shards");
  l->add_option("--offset", o->offset, "skip the first J selected trials")->check(kCount);
  l->add_option("--limit", o->limit, "print at most K trials")->check(kCount);
  l->add_option("--columns", o->columns, "comma-separated parameter columns (default: all)");
  r.add(l, [o] { return list(*o); });
}

}  // namespace stsweep::cli
