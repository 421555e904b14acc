// Sweep files: axis forms, zip, subgrids, samples, exclude, sharding, errors.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <set>

#include "sweep.hpp"

using namespace stsweep;
using json = nlohmann::json;

namespace {

Sweep S(const std::string& text) { return Sweep::from_text(text); }
Sweep SJ(const json& doc) { return Sweep::from_text(doc.dump()); }

// Path of the InputError that parsing `text` throws, "<none>" when it parses.
std::string err(const std::string& text, std::string* msg = nullptr) {
  try {
    Sweep::from_text(text, "t.json");
  } catch (const InputError& e) {
    if (msg) *msg = e.what();
    return e.path;
  }
  return "<none>";
}

std::vector<double> noises(const Sweep& s) {
  std::vector<double> v;
  for (uint64_t i = 0; i < s.count(); ++i) v.push_back(s.trial(i).noise);
  return v;
}

const json* dotted(const json& obj, const std::string& key) {
  const json* at = &obj;
  size_t start = 0;
  while (true) {
    size_t dot = key.find('.', start);
    std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (!at->is_object() || !at->contains(part)) return nullptr;
    at = &(*at)[part];
    if (dot == std::string::npos) return at;
    start = dot + 1;
  }
}

bool close(const json& a, const json& b) {
  if (a.is_number() && b.is_number()) {
    double x = a.get<double>(), y = b.get<double>();
    return std::fabs(x - y) <= 1e-12 * std::max(std::fabs(x), std::fabs(y));
  }
  return a == b;
}

void flatten_entry(const json& e, const std::string& prefix, std::vector<std::pair<std::string, json>>& out) {
  for (auto it = e.begin(); it != e.end(); ++it) {
    std::string k = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (it->is_object()) flatten_entry(*it, k, out);
    else out.emplace_back(k, *it);
  }
}

bool excluded_by(const json& trial, const json& entries) {
  for (const auto& e : entries) {
    std::vector<std::pair<std::string, json>> items;
    flatten_entry(e, "", items);
    bool all = true;
    for (const auto& [k, v] : items) {
      const json* got = dotted(trial, k);
      all = all && got && close(*got, v);
    }
    if (all) return true;
  }
  return false;
}

// The trials of `doc` as the brute force sees them: each block expanded on its
// own without excludes, then filtered by the global and the block's entries.
// `dropping` (if given) gets the paths of the entries that drop some trial.
std::vector<json> brute_force(const json& doc, std::set<std::string>* dropping = nullptr) {
  json global = doc.value("exclude", json::array());
  json top = doc;
  top.erase("exclude");
  top.erase("subgrids");
  std::vector<json> out;
  auto expand = [&](const json& file, const json& entries, const std::vector<std::string>& paths) {
    Sweep s = SJ(file);
    for (uint64_t i = 0; i < s.count(); ++i) {
      json t = s.trial_json(i);
      if (!excluded_by(t, entries)) out.push_back(t);
      for (size_t e = 0; dropping && e < entries.size(); ++e)
        if (excluded_by(t, json::array({entries[e]}))) dropping->insert(paths[e]);
    }
  };
  std::vector<std::string> global_paths;
  for (size_t e = 0; e < global.size(); ++e) global_paths.push_back("exclude[" + std::to_string(e) + "]");
  bool top_axes = doc.contains("grid") || doc.contains("zip") || doc.contains("samples");
  if (!doc.contains("subgrids") || top_axes) expand(top, global, global_paths);
  const json subs = doc.value("subgrids", json::array());
  for (size_t j = 0; j < subs.size(); ++j) {
    const json& sub = subs[j];
    json file = {{"seed", doc.value("seed", 0)}, {"defaults", doc.value("defaults", json::object())}};
    json block = sub;
    block.erase("exclude");
    block.erase("name");
    file["subgrids"] = json::array({block});
    json entries = global;
    std::vector<std::string> paths = global_paths;
    const json own = sub.value("exclude", json::array());
    for (size_t e = 0; e < own.size(); ++e) {
      entries.push_back(own[e]);
      paths.push_back("subgrids[" + std::to_string(j) + "].exclude[" + std::to_string(e) + "]");
    }
    expand(file, entries, paths);
  }
  return out;
}

// The trials, and which exclude entries drop none (Sweep::unmatched_exclude).
void expect_lazy_equals_brute_force(const json& doc) {
  Sweep s = SJ(doc);
  std::set<std::string> dropping;
  auto expect = brute_force(doc, &dropping);
  ASSERT_EQ(s.count(), expect.size()) << doc.dump();
  for (uint64_t i = 0; i < s.count(); ++i) ASSERT_EQ(s.trial_json(i), expect[i]) << "trial " << i << " of " << doc.dump();
  std::set<std::string> all = dropping, unmatched;
  for (const auto& u : s.unmatched_exclude()) {
    unmatched.insert(u.path);
    all.insert(u.path);
    EXPECT_FALSE(u.entry.empty()) << u.path;
    EXPECT_EQ(u.subgrid, u.path.rfind("subgrids[", 0) == 0 ? u.path.substr(0, u.path.find(']') + 1) : "") << u.path;
  }
  for (const auto& path : all)
    EXPECT_NE(dropping.count(path), unmatched.count(path))
        << path << (dropping.count(path) ? " drops trials but is reported as dropping none" : " drops nothing")
        << " in " << doc.dump();
  // Every entry of the file is one or the other.
  size_t entries = doc.value("exclude", json::array()).size();
  for (const auto& sub : doc.value("subgrids", json::array())) entries += sub.value("exclude", json::array()).size();
  EXPECT_EQ(all.size(), entries) << doc.dump();
}

}  // namespace

// --- axis forms ---------------------------------------------------------------------------

TEST(Sweep, NoAxesIsOneTrialOfTheDefaults) {
  Sweep s = S(R"({"name": "one", "defaults": {"noise": 0.25, "teacher.kind": "perturbed"}})");
  EXPECT_EQ(s.count(), 1u);
  EXPECT_EQ(s.name(), "one");
  EXPECT_EQ(s.trial(0).noise, 0.25);
  EXPECT_EQ(s.trial(0).teacher.kind, TeacherKind::perturbed);
  EXPECT_EQ(s.trial(0).d, TrialParams{}.d);  // untouched parameters keep their defaults
  EXPECT_TRUE(s.axes().empty());
}

TEST(Sweep, ListAxis) {
  Sweep s = S(R"({"grid": {"noise": [0.1, 0.2, 0.7]}})");
  EXPECT_EQ(noises(s), (std::vector<double>{0.1, 0.2, 0.7}));
}

TEST(Sweep, Linspace) {
  Sweep s = S(R"({"grid": {"noise": {"linspace": [0, 1, 5]}}})");
  EXPECT_EQ(noises(s), (std::vector<double>{0, 0.25, 0.5, 0.75, 1}));
  EXPECT_EQ(noises(S(R"({"grid": {"noise": {"linspace": [0.3, 9, 1]}}})")), std::vector<double>{0.3});
  // Descending, and whole numbers for integer parameters.
  Sweep d = S(R"({"grid": {"d": {"linspace": [64, 16, 4]}}})");
  ASSERT_EQ(d.count(), 4u);
  EXPECT_EQ(d.trial(0).d, 64);
  EXPECT_EQ(d.trial(1).d, 48);
  EXPECT_EQ(d.trial(3).d, 16);
}

TEST(Sweep, Logspace) {
  Sweep s = S(R"({"grid": {"noise": {"logspace": [-2, 0, 3]}}})");
  auto v = noises(s);
  ASSERT_EQ(v.size(), 3u);
  EXPECT_NEAR(v[0], 0.01, 1e-15);
  EXPECT_NEAR(v[1], 0.1, 1e-15);
  EXPECT_NEAR(v[2], 1.0, 1e-15);
  auto w = noises(S(R"({"grid": {"noise": {"logspace": [-1, 1, 5]}}})"));
  EXPECT_NEAR(w[1], std::sqrt(0.1 * 1.0), 1e-12);  // geometric midpoints
  EXPECT_NEAR(w[3], std::sqrt(10.0), 1e-12);
}

TEST(Sweep, Range) {
  auto seeds = [](const std::string& r) {
    Sweep s = S(R"({"grid": {"seed": {"range": )" + r + "}}}");
    std::vector<int64_t> v;
    for (uint64_t i = 0; i < s.count(); ++i) v.push_back(s.trial(i).seed);
    return v;
  };
  EXPECT_EQ(seeds("[0, 4]"), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(seeds("[2, 10, 3]"), (std::vector<int64_t>{2, 5, 8}));
  EXPECT_EQ(seeds("[2, 11, 3]"), (std::vector<int64_t>{2, 5, 8}));
  EXPECT_EQ(seeds("[2, 12, 3]"), (std::vector<int64_t>{2, 5, 8, 11}));
  EXPECT_EQ(seeds("[5, 0, -2]"), (std::vector<int64_t>{5, 3, 1}));
  EXPECT_EQ(seeds("[-3, -1]"), (std::vector<int64_t>{-3, -2}));
}

TEST(Sweep, MixedRadixLastAxisFastest) {
  Sweep s = S(R"({"grid": {"noise": [0.1, 0.2], "lambda": [1, 2, 3], "seed": {"range": [0, 4]}}})");
  ASSERT_EQ(s.count(), 24u);
  for (uint64_t i = 0; i < 24; ++i) {
    TrialParams p = s.trial(i);
    EXPECT_EQ(p.seed, static_cast<int64_t>(i % 4));
    EXPECT_EQ(p.lambda, static_cast<double>(i / 4 % 3 + 1));
    EXPECT_EQ(p.noise, i / 12 == 0 ? 0.1 : 0.2);
  }
  auto axes = s.axes();
  ASSERT_EQ(axes.size(), 3u);
  EXPECT_EQ(axes[0].name, "noise");
  EXPECT_EQ(axes[1].size, 3u);
  EXPECT_EQ(axes[2].preview.front(), "0");
  EXPECT_EQ(axes[0].subgrid, -1);
}

TEST(Sweep, DottedAndNestedKeys) {
  Sweep s = S(R"({"defaults": {"teacher": {"kind": "perturbed", "delta": 0.5}},
                  "grid": {"seed": [0, 1],
                           "teacher": [{"delta": 0.1}, {"delta": 0.2, "kind": "oracle"}]}})");
  ASSERT_EQ(s.count(), 4u);
  // A whole-object axis merges into the defaults rather than replacing them.
  EXPECT_EQ(s.trial(0).teacher.kind, TeacherKind::perturbed);
  EXPECT_EQ(s.trial(0).teacher.delta, 0.1);
  EXPECT_EQ(s.trial(1).teacher.kind, TeacherKind::oracle);
  EXPECT_EQ(s.trial(3).seed, 1);
  EXPECT_EQ(s.trial(3).teacher.delta, 0.2);
}

TEST(Sweep, DuplicateNestedAxesAreErrors) {
  EXPECT_EQ(err(R"({"grid": {"teacher": [{"delta": 0.1}], "teacher.kind": ["oracle"]}})"), "grid.teacher.kind");
}

// --- zip and subgrids ------------------------------------------------------------------------

TEST(Sweep, ZipVariesTogetherAndMultiplies) {
  Sweep s = S(R"({"grid": {"noise": [0.1, 0.2, 0.3]},
                  "zip": [{"d": [16, 32], "hidden": [[16], [32]]}, {"lr": [0.1, 0.2], "steps": [10, 20]}]})");
  ASSERT_EQ(s.count(), 12u);
  std::set<std::tuple<double, int, double>> seen;
  for (uint64_t i = 0; i < 12; ++i) {
    TrialParams p = s.trial(i);
    EXPECT_EQ(p.hidden, std::vector<int>{p.d});
    EXPECT_EQ(p.steps, p.lr == 0.1 ? 10 : 20);
    seen.insert({p.noise, p.d, p.lr});
  }
  EXPECT_EQ(seen.size(), 12u);
  EXPECT_EQ(s.axes()[1].name, "d+hidden");
}

TEST(Sweep, SubgridsUnionOverTopDefaults) {
  Sweep s = S(R"({"defaults": {"d": 20, "noise": 0.3},
                  "grid": {"lambda": [1, 2]},
                  "subgrids": [{"defaults": {"noise": 0.9}, "grid": {"seed": {"range": [0, 3]}}},
                               {"zip": [{"k": [2, 3], "m": [4, 5]}]}]})");
  ASSERT_EQ(s.count(), 2u + 3u + 2u);
  EXPECT_EQ(s.trial(1).lambda, 2);
  EXPECT_EQ(s.trial(1).noise, 0.3);
  // Subgrid 0: the top defaults plus its own, not the top grid.
  for (uint64_t i = 2; i < 5; ++i) {
    EXPECT_EQ(s.trial(i).d, 20);
    EXPECT_EQ(s.trial(i).noise, 0.9);
    EXPECT_EQ(s.trial(i).lambda, TrialParams{}.lambda);
    EXPECT_EQ(s.trial(i).seed, static_cast<int64_t>(i - 2));
  }
  EXPECT_EQ(s.trial(6).k, 3);
  EXPECT_EQ(s.trial(6).m, 5);
  EXPECT_EQ(s.trial(6).noise, 0.3);
  auto axes = s.axes();
  ASSERT_EQ(axes.size(), 3u);
  EXPECT_EQ(axes[1].subgrid, 0);
  EXPECT_EQ(axes[2].subgrid, 1);
}

TEST(Sweep, SubgridsAloneHaveNoTopBlock) {
  Sweep s = S(R"({"subgrids": [{"grid": {"seed": [5, 6]}}, {"defaults": {"seed": 9}}]})");
  ASSERT_EQ(s.count(), 3u);
  EXPECT_EQ(s.trial(0).seed, 5);
  EXPECT_EQ(s.trial(2).seed, 9);
}

// The subgrid column: a subgrid's name, else its path; empty at the top level.
// Two subgrids of one name are refused (the column could not tell them apart),
// and the derived key cannot be set.
TEST(Sweep, SubgridColumnNamesEachTrialsBlock) {
  Sweep s = S(R"({"grid": {"lambda": [1, 2]},
                  "subgrids": [{"name": "wide", "grid": {"seed": [0, 1, 2]}}, {"defaults": {"seed": 9}}]})");
  ASSERT_EQ(s.count(), 6u);
  const std::vector<std::string> want = {"", "", "wide", "wide", "wide", "subgrids[1]"};
  for (uint64_t i = 0; i < s.count(); ++i) {
    EXPECT_EQ(s.trial(i).subgrid, want[i]) << i;
    const auto v = flatten(s.trial(i));
    const auto& specs = param_specs();
    for (size_t c = 0; c < specs.size(); ++c)
      if (specs[c].key == "subgrid") EXPECT_EQ(std::get<std::string>(v[c]), want[i]) << i;
    EXPECT_FALSE(to_json(s.trial(i)).contains("subgrid")) << "not a parameter";
  }
  std::string msg;
  EXPECT_EQ(err(R"({"subgrids": [{"name": "a", "grid": {"seed": [0, 1]}}, {"name": "a"}]})", &msg), "subgrids[1].name");
  EXPECT_NE(msg.find("also the subgrid column of subgrids[0]"), std::string::npos) << msg;
  EXPECT_EQ(err(R"({"grid": {"seed": [0, 1]}, "subgrids": [{"name": "", "grid": {"seed": [2]}}]})", &msg),
            "subgrids[0].name");
  EXPECT_NE(msg.find("the top-level grid"), std::string::npos) << msg;
  EXPECT_EQ(err(R"({"subgrids": [{"name": "subgrids[1]"}, {"grid": {"seed": [2]}}]})", &msg), "subgrids[0].name");
  EXPECT_EQ(err(R"({"subgrids": [{"name": "", "grid": {"seed": [0, 1]}}, {"name": "b"}]})"), "<none>");
  EXPECT_EQ(err(R"({"grid": {"subgrid": ["a", "b"]}})", &msg), "grid.subgrid");
  EXPECT_NE(msg.find("derived"), std::string::npos) << msg;
}

// --- exclude ------------------------------------------------------------------------------------

TEST(Sweep, ExcludeSimple) {
  Sweep s = S(R"({"grid": {"d": [16, 32], "teacher.decomposition": ["balanced", "rotated", "latent"]},
                  "exclude": [{"teacher.decomposition": "latent", "d": 16}]})");
  ASSERT_EQ(s.count(), 5u);
  for (uint64_t i = 0; i < 5; ++i) {
    TrialParams p = s.trial(i);
    EXPECT_FALSE(p.d == 16 && p.teacher.decomposition == Decomposition::latent);
  }
  EXPECT_EQ(s.trial(2).d, 32);  // the excluded point was the third
}

TEST(Sweep, ExcludeAgainstBruteForce) {
  const char* cases[] = {
      // overlapping entries on the same axes
      R"({"grid": {"noise": [0.1, 0.2, 0.3], "lambda": [0, 1, 2], "seed": {"range": [0, 3]}},
          "exclude": [{"noise": 0.1}, {"lambda": 1}, {"noise": 0.1, "lambda": 1}, {"noise": 0.2, "seed": 2}]})",
      // an entry on a constant key that matches (the default k) and one that does not
      R"({"grid": {"noise": [0.1, 0.2], "lambda": [0, 1]},
          "exclude": [{"k": 8, "noise": 0.2}, {"k": 5, "lambda": 0}]})",
      // zip members, nested entry form, generated axes (linspace, logspace, range)
      R"({"grid": {"noise": {"linspace": [0, 1, 5]}, "lambda": {"logspace": [-2, 0, 3]},
                   "seed": {"range": [10, 20, 3]}},
          "zip": [{"d": [16, 32], "hidden": [[16], [32]]}],
          "exclude": [{"noise": 0.25}, {"lambda": 0.1, "d": 32}, {"seed": 13, "hidden": [16]},
                      {"teacher": {"kind": "oracle"}, "noise": 0.5, "seed": 16}, {"noise": 0.25, "seed": 13}]})",
      // whole-object axis with an entry below it
      R"({"grid": {"teacher": [{"kind": "oracle"}, {"kind": "perturbed", "delta": 0.5}], "seed": [0, 1]},
          "exclude": [{"teacher.kind": "perturbed", "seed": 1}, {"teacher.delta": 0.1, "seed": 0}]})",
      // subgrids with their own and global entries
      R"({"grid": {"lambda": [0, 1]},
          "subgrids": [{"grid": {"noise": [0.1, 0.2], "lambda": [1, 2]}, "exclude": [{"noise": 0.1}]},
                       {"grid": {"seed": [0, 1, 2]}, "exclude": [{"seed": 1}, {"seed": 1, "lambda": 1}]}],
          "exclude": [{"lambda": 1, "noise": 0.5}, {"lambda": 2, "noise": 0.2}]})",
      // the same entry twice
      R"({"grid": {"seed": [0, 1, 2, 3]}, "exclude": [{"seed": 2}, {"seed": 2}]})",
      // entries that drop nothing: a value no axis has, a combination only another
      // subgrid makes, a constant at another value, and a global entry that only
      // one subgrid matches (it drops something, so it is not reported)
      R"({"subgrids": [{"grid": {"noise": [0.1, 0.2], "lambda": [1, 2]},
                        "exclude": [{"noise": 0.3}, {"seed": 1, "noise": 0.1}]},
                       {"grid": {"seed": [0, 1, 2]}, "exclude": [{"seed": 1, "d": 64}, {"seed": 2}]}],
          "exclude": [{"lambda": 2, "noise": 0.2}, {"lambda": 5}]})",
  };
  for (const char* c : cases) expect_lazy_equals_brute_force(json::parse(c));
}

TEST(Sweep, ExcludeRandomSweepsAgainstBruteForce) {
  std::mt19937_64 rng(12345);
  auto pick = [&](size_t n) { return static_cast<size_t>(rng() % n); };
  const std::vector<double> noise_pool = {0, 0.1, 0.5, 1};
  const std::vector<std::string> decs = {"balanced", "rotated", "latent", "input"};
  for (int round = 0; round < 150; ++round) {
    json doc = {{"seed", round}, {"grid", json::object()}};
    std::map<std::string, std::vector<json>> values;  // what entries can pick from
    auto subset = [&](const auto& pool) {
      json list = json::array();
      for (const auto& v : pool)
        if (rng() % 2) list.push_back(v);
      if (list.empty()) list.push_back(pool[pick(pool.size())]);
      return list;
    };
    if (rng() % 2) {
      json l = subset(noise_pool);
      doc["grid"]["noise"] = l;
      values["noise"] = std::vector<json>(l.begin(), l.end());
    } else {
      int n = 1 + static_cast<int>(pick(4));
      doc["grid"]["noise"] = {{"linspace", {0, 1, n}}};
      for (int i = 0; i < n; ++i) values["noise"].push_back(n == 1 ? 0.0 : static_cast<double>(i) / (n - 1));
    }
    if (rng() % 2) {
      int a = static_cast<int>(pick(3)), n = 1 + static_cast<int>(pick(5)), st = 1 + static_cast<int>(pick(2));
      doc["grid"]["seed"] = {{"range", {a, a + n * st, st}}};
      for (int i = 0; i < n; ++i) values["seed"].push_back(a + i * st);
    }
    if (rng() % 2) {
      json l = subset(decs);
      doc["grid"]["teacher.decomposition"] = l;
      values["teacher.decomposition"] = std::vector<json>(l.begin(), l.end());
    }
    if (rng() % 2) {
      int n = 1 + static_cast<int>(pick(3));
      json d = json::array(), h = json::array();
      for (int i = 0; i < n; ++i) {
        d.push_back(32 + 8 * i);
        h.push_back(json::array({32 + 8 * i}));
      }
      doc["zip"] = json::array({{{"d", d}, {"hidden", h}}});
      values["d"] = std::vector<json>(d.begin(), d.end());
      values["hidden"] = std::vector<json>(h.begin(), h.end());
    }
    values["m"] = {8, 9};  // a constant key: 8 is the default, 9 never matches
    std::vector<std::string> keys;
    for (const auto& [k, v] : values) keys.push_back(k);
    json ex = json::array();
    int n_entries = 1 + static_cast<int>(pick(5));
    for (int e = 0; e < n_entries; ++e) {
      json entry = json::object();
      int n_keys = 1 + static_cast<int>(pick(3));
      for (int j = 0; j < n_keys; ++j) {
        const std::string& k = keys[pick(keys.size())];
        entry[k] = values[k][pick(values[k].size())];
      }
      ex.push_back(entry);
    }
    doc["exclude"] = ex;
    // Skip the (rare) draws that exclude everything: that is an error, tested elsewhere.
    if (brute_force(doc).empty()) continue;
    expect_lazy_equals_brute_force(doc);
  }
}

TEST(Sweep, ExcludeEverythingIsAnError) {
  std::string msg;
  EXPECT_EQ(err(R"({"grid": {"seed": [0, 1]}, "exclude": [{"seed": 0}, {"seed": 1}]})", &msg), "exclude");
  EXPECT_NE(msg.find("empty"), std::string::npos);
}

// --- a large grid, lazily --------------------------------------------------------------------------

TEST(Sweep, TenMillionTrialsCountedAndDecoded) {
  // 10 x 10 x 100 x 1000 = 10^7; raw id x has seed = x % 1000, lr index (x / 1000) % 100,
  // lambda index (x / 10^5) % 10, noise index x / 10^6.
  const std::string grid = R"("grid": {"noise": {"linspace": [0, 1, 10]}, "lambda": {"logspace": [-2, 1, 10]},
                                        "lr": {"linspace": [0.01, 0.1, 100]}, "seed": {"range": [0, 1000]}})";
  Sweep s = S("{" + grid + "}");
  ASSERT_EQ(s.count(), 10000000u);
  auto check_point = [](const TrialParams& p, uint64_t x) {
    EXPECT_EQ(p.seed, static_cast<int64_t>(x % 1000));
    EXPECT_NEAR(p.lr, 0.01 + 0.09 * static_cast<double>(x / 1000 % 100) / 99, 1e-12);
    EXPECT_NEAR(std::log10(p.lambda), -2 + 3 * static_cast<double>(x / 100000 % 10) / 9, 1e-12);
    EXPECT_NEAR(p.noise, static_cast<double>(x / 1000000) / 9, 1e-12);
  };
  std::mt19937_64 rng(7);
  for (int t = 0; t < 2000; ++t) {
    uint64_t x = rng() % s.count();
    check_point(s.trial(x), x);
  }
  check_point(s.trial(s.count() - 1), s.count() - 1);

  // Union of {seed = 5} and {noise = 0}, with entries inside each (overlaps).
  Sweep e = S("{" + grid + R"(, "exclude": [{"seed": 5}, {"noise": 0}, {"noise": 0, "seed": 7}, {"lambda": 0.01, "seed": 5}]})");
  const uint64_t excluded = 10000 + 1000000 - 1000;  // |seed=5| + |noise=0| - |both|
  ASSERT_EQ(e.count(), 10000000u - excluded);
  // Kept rank of raw x (noise index >= 1, seed != 5): x minus the excluded points below it.
  auto f = [](uint64_t t) { return t / 1000 + (t % 1000 > 5 ? 1 : 0); };  // #{y < t : y % 1000 = 5}
  for (int t = 0; t < 2000; ++t) {
    uint64_t x = 1000000 + rng() % 9000000;
    if (x % 1000 == 5) continue;
    uint64_t rank = x - 1000000 - (f(x) - f(1000000));
    check_point(e.trial(rank), x);
  }
  check_point(e.trial(0), 1000000);
  check_point(e.trial(e.count() - 1), 9999999);
}

// --- samples ----------------------------------------------------------------------------------

TEST(Sweep, SamplesReproducibleAndInBounds) {
  const std::string text = R"({"seed": 5, "grid": {"noise": [0.1, 0.2]},
     "samples": {"n": 500, "params": {"lr": {"loguniform": [0.001, 0.1]}, "lambda": {"uniform": [0, 2]},
                                      "teacher.decomposition": {"choice": ["balanced", "rotated"]},
                                      "n_train": {"int": [4, 6]}}}})";
  Sweep a = S(text), b = S(text);
  ASSERT_EQ(a.count(), 1000u);
  double log_lr = 0, lambda = 0;
  std::set<int> n_train;
  std::set<Decomposition> decs;
  for (uint64_t j = 0; j < 500; ++j) {
    TrialParams p = a.trial(j);
    EXPECT_EQ(to_json(p), to_json(b.trial(j)));  // same file, same points
    EXPECT_GE(p.lr, 0.001);
    EXPECT_LE(p.lr, 0.1);
    EXPECT_GE(p.lambda, 0);
    EXPECT_LT(p.lambda, 2);
    EXPECT_GE(p.n_train, 4);
    EXPECT_LE(p.n_train, 6);
    n_train.insert(p.n_train);
    decs.insert(p.teacher.decomposition);
    log_lr += std::log10(p.lr) / 500;
    lambda += p.lambda / 500;
    // Samples multiply with the grid: the same points for every noise level (paired).
    TrialParams q = a.trial(500 + j);
    EXPECT_EQ(q.noise, 0.2);
    EXPECT_EQ(q.lr, p.lr);
    EXPECT_EQ(q.n_train, p.n_train);
  }
  EXPECT_EQ(n_train, (std::set<int>{4, 5, 6}));
  EXPECT_EQ(decs.size(), 2u);
  EXPECT_NEAR(log_lr, -2, 0.15);  // mean of U(-3, -1); its standard error is 0.026
  EXPECT_NEAR(lambda, 1, 0.15);

  // Another sweep seed gives other points.
  std::string other = text;
  other.replace(other.find("\"seed\": 5"), 9, "\"seed\": 6");
  Sweep c = S(other);
  int differ = 0;
  for (uint64_t j = 0; j < 50; ++j) differ += c.trial(j).lr != a.trial(j).lr;
  EXPECT_GT(differ, 45);
  // Different parameters draw independently.
  EXPECT_NE(a.trial(0).lambda / 2, std::log10(a.trial(0).lr / 0.001) / 2);
}

TEST(Sweep, HugeSampleCountIsLazy) {
  Sweep s = S(R"({"samples": {"n": 1000000000000, "params": {"noise": {"uniform": [0.5, 0.75]}}}})");
  ASSERT_EQ(s.count(), 1000000000000u);
  for (uint64_t j : {uint64_t{0}, uint64_t{123456789012}, s.count() - 1}) {
    double v = s.trial(j).noise;
    EXPECT_GE(v, 0.5);
    EXPECT_LT(v, 0.75);
  }
}

// --- sharding ------------------------------------------------------------------------------------

TEST(Shard, PartitionProperty) {
  for (uint64_t n : {0ull, 1ull, 2ull, 7ull, 100ull, 12345ull, 10000000ull, 9223372036854775807ull}) {
    for (uint64_t N = 1; N <= 64; ++N) {
      uint64_t next = 0, lo = UINT64_MAX, hi = 0;
      for (uint64_t i = 0; i < N; ++i) {
        IdRange r = shard_range(n, Shard{i, N});
        ASSERT_EQ(r.begin, next) << n << " " << i << "/" << N;  // contiguous, no overlap, no gap
        ASSERT_LE(r.begin, r.end);
        lo = std::min(lo, r.end - r.begin);
        hi = std::max(hi, r.end - r.begin);
        next = r.end;
      }
      ASSERT_EQ(next, n);      // every id exactly once
      ASSERT_LE(hi - lo, 1u);  // balanced
    }
  }
}

TEST(Shard, Parse) {
  Shard s = parse_shard("3/8");
  EXPECT_EQ(s.index, 3u);
  EXPECT_EQ(s.count, 8u);
  EXPECT_EQ(parse_shard("0/1").count, 1u);
  for (const char* bad : {"8/8", "1", "a/2", "-1/2", "1/0", "/2", "1/", "1/2/3", " 1/2"}) {
    try {
      parse_shard(bad);
      ADD_FAILURE() << bad;
    } catch (const InputError& e) {
      EXPECT_EQ(e.path, "--shard");
    }
  }
}

// --- pairing -------------------------------------------------------------------------------------

TEST(Sweep, PairingOfKeysThroughASweep) {
  Sweep s = S(R"({"seed": 3, "grid": {"lambda": [0, 1], "teacher.decomposition": ["balanced", "rotated"],
                                      "lr": [0.01, 0.1], "seed": [0, 1], "d": [16, 32]}})");
  std::map<std::pair<int64_t, int>, std::set<uint64_t>> data_by, init_by;
  std::set<uint64_t> all_data;
  for (uint64_t i = 0; i < s.count(); ++i) {
    TrialParams p = s.trial(i);
    TrialKeys k = trial_keys(s.seed(), p);
    data_by[{p.seed, p.d}].insert(k.data);
    init_by[{p.seed, p.d}].insert(k.init);
    all_data.insert(k.data);
  }
  // Within (seed, d) every lambda/teacher/lr variant shares data and init...
  for (const auto& [key, set] : data_by) EXPECT_EQ(set.size(), 1u);
  for (const auto& [key, set] : init_by) EXPECT_EQ(set.size(), 1u);
  // ... and each (seed, d) has its own.
  EXPECT_EQ(all_data.size(), 4u);
}

// --- errors --------------------------------------------------------------------------------------

TEST(SweepErrors, TopLevel) {
  std::string msg;
  EXPECT_EQ(err(R"({"grids": {}})", &msg), "grids");
  EXPECT_NE(msg.find("unknown key"), std::string::npos);
  EXPECT_EQ(err(R"([1, 2])"), "");
  EXPECT_EQ(err(R"({"name": 3})"), "name");
  EXPECT_EQ(err(R"({"description": []})"), "description");
  EXPECT_EQ(err(R"({"seed": -1})"), "seed");
  EXPECT_EQ(err(R"({"seed": 1.5})"), "seed");
  EXPECT_EQ(err(R"({"defaults": []})"), "defaults");
  EXPECT_EQ(err(R"({"defaults": {"foo": 1}})", &msg), "defaults.foo");
  EXPECT_NE(msg.find("unknown parameter"), std::string::npos);
  EXPECT_EQ(msg.find("did you mean"), std::string::npos) << "foo is close to no parameter: " << msg;
  // A typo gets the closest name; a dotted typo outside teacher.* too.
  EXPECT_EQ(err(R"({"grid": {"lamda": [1, 2]}})", &msg), "grid.lamda");
  EXPECT_NE(msg.find("did you mean \"lambda\"?"), std::string::npos) << msg;
  EXPECT_EQ(err(R"({"defaults": {"init_scal": 0.1}})", &msg), "defaults.init_scal");
  EXPECT_NE(msg.find("did you mean \"init_scale\"?"), std::string::npos) << msg;
  EXPECT_EQ(err(R"({"grid": {"teachr.kind": ["oracle"]}})", &msg), "grid.teachr.kind");
  EXPECT_NE(msg.find("did you mean \"teacher.kind\"?"), std::string::npos) << msg;
  EXPECT_EQ(err(R"({"defaults": {"d": "big"}})"), "defaults.d");
  // A key twice in one object (JSON would silently keep the last) names where.
  EXPECT_EQ(err(R"({"name": "a", "name": "b"})", &msg), "name");
  EXPECT_NE(msg.find("appears twice"), std::string::npos) << msg;
  EXPECT_EQ(err(R"({"grid": {"noise": [1], "lambda": [0], "noise": [2]}})"), "grid.noise");
  EXPECT_EQ(err(R"({"zip": [{"d": [16], "hidden": [[16]]}, {"k": [1], "k": [2]}]})"), "zip[].k");
  EXPECT_EQ(err(R"({"defaults": {"teacher": {"kind": "oracle", "kind": "trained"}}})"), "defaults.teacher.kind");
  // Equal keys in different objects are fine.
  EXPECT_EQ(err(R"({"defaults": {"d": 8, "k": 2, "hidden": [8]}, "grid": {"d": [8, 16]}})"), "<none>");
  EXPECT_EQ(err(R"({"defaults": {"teacher.kind": "wise"}})"), "defaults.teacher.kind");
  EXPECT_EQ(err(R"({"grid": []})"), "grid");
  EXPECT_EQ(err(R"({"zip": {"d": [1]}})"), "zip");
  EXPECT_EQ(err(R"({"subgrids": {}})"), "subgrids");
  EXPECT_EQ(err(R"({"exclude": {"d": 16}})"), "exclude");
}

TEST(SweepErrors, Axes) {
  std::string msg;
  EXPECT_EQ(err(R"({"grid": {"noise": []}})", &msg), "grid.noise");
  EXPECT_NE(msg.find("empty axis"), std::string::npos);
  EXPECT_EQ(err(R"({"grid": {"noise": 0.5}})"), "grid.noise");
  EXPECT_EQ(err(R"({"grid": {"noise": {"geomspace": [1, 2, 3]}}})"), "grid.noise");
  EXPECT_EQ(err(R"({"grid": {"noise": {"logspace": [-2, 0, 0]}}})"), "grid.noise.logspace[2]");
  EXPECT_EQ(err(R"({"grid": {"noise": {"logspace": [-2, 0, 2.5]}}})"), "grid.noise.logspace[2]");
  EXPECT_EQ(err(R"({"grid": {"noise": {"logspace": [-2, "0", 3]}}})"), "grid.noise.logspace[1]");
  EXPECT_EQ(err(R"({"grid": {"noise": {"linspace": [0, 1]}}})"), "grid.noise.linspace");
  EXPECT_EQ(err(R"({"grid": {"seed": {"range": [0, 5, 0]}}})"), "grid.seed.range[2]");
  EXPECT_EQ(err(R"({"grid": {"seed": {"range": [5, 0]}}})", &msg), "grid.seed.range");
  EXPECT_NE(msg.find("empty range"), std::string::npos);
  EXPECT_EQ(err(R"({"grid": {"seed": {"range": [0, 2.5]}}})"), "grid.seed.range[1]");
  // Values checked with the parameter's own rules, at their axis path.
  EXPECT_EQ(err(R"({"grid": {"noise": [0.1, "loud"]}})"), "grid.noise[1]");
  EXPECT_EQ(err(R"({"grid": {"noise": [0.1, -1]}})", &msg), "grid.noise[1]");
  EXPECT_NE(msg.find(">= 0"), std::string::npos);
  EXPECT_EQ(err(R"({"grid": {"noise": {"linspace": [-1, 1, 3]}}})"), "grid.noise.linspace");
  EXPECT_EQ(err(R"({"grid": {"d": {"linspace": [8, 16, 4]}}})"), "grid.d.linspace");  // 10.67 is no integer
  EXPECT_EQ(err(R"({"grid": {"teacher.decomposition": ["balanced", "rotatd"]}})"), "grid.teacher.decomposition[1]");
  EXPECT_EQ(err(R"({"grid": {"teacher": [{"kind": "oracle"}, {"knd": "oracle"}]}})", &msg), "grid.teacher[1]");
  EXPECT_NE(msg.find("teacher.knd"), std::string::npos);
  EXPECT_EQ(err(R"({"grid": {"hidden": [[16], [16, 0]]}})"), "grid.hidden[1]");
  EXPECT_EQ(err(R"({"grid": {"foo": [1, 2]}})"), "grid.foo");
  EXPECT_EQ(err(R"({"grid": {"depth": [2, 3]}})"), "grid.depth");
}

TEST(SweepErrors, ZipAndDuplicates) {
  std::string msg;
  EXPECT_EQ(err(R"({"zip": [{"d": [16, 32], "hidden": [[16]]}]})", &msg), "zip[0].hidden");
  EXPECT_NE(msg.find("zip lengths differ"), std::string::npos);
  EXPECT_EQ(err(R"({"zip": [{}]})"), "zip[0]");
  EXPECT_EQ(err(R"({"zip": [[1]]})"), "zip[0]");
  EXPECT_EQ(err(R"({"zip": [{"d": [16], "k": {"range": [1, 2]}}, {"m": []}]})"), "zip[1].m");
  EXPECT_EQ(err(R"({"grid": {"d": [16]}, "zip": [{"d": [16], "k": [4]}]})", &msg), "zip[0].d");
  EXPECT_NE(msg.find("duplicate axis"), std::string::npos);
  EXPECT_NE(msg.find("grid.d"), std::string::npos);
  EXPECT_EQ(err(R"({"zip": [{"d": [16]}, {"d": [32]}]})"), "zip[1].d");
  EXPECT_EQ(err(R"({"grid": {"lr": [0.1]}, "samples": {"n": 2, "params": {"lr": {"uniform": [0.1, 0.2]}}}})"),
            "samples.params.lr");
  // The same key in different subgrids is fine.
  EXPECT_EQ(err(R"({"subgrids": [{"grid": {"d": [16]}}, {"grid": {"d": [32]}}]})"), "<none>");
}

TEST(SweepErrors, CountOverflow) {
  std::string msg;
  EXPECT_EQ(err(R"({"grid": {"seed": {"range": [0, 4294967296]}, "d": {"range": [1, 4294967297]}}})", &msg), "grid");
  EXPECT_NE(msg.find("2^63"), std::string::npos);
  // 2^62 fits; two such subgrids overflow together.
  EXPECT_EQ(err(R"({"grid": {"seed": {"range": [0, 2147483648]}, "lambda": {"linspace": [0, 1, 2147483648]}}})"), "<none>");
  EXPECT_EQ(err(R"({"subgrids": [
      {"grid": {"seed": {"range": [0, 4294967296]}, "noise": {"linspace": [0, 1, 1073741824]}}},
      {"grid": {"seed": {"range": [0, 4294967296]}, "noise": {"linspace": [0, 1, 1073741824]}}}]})"),
            "subgrids");
}

TEST(SweepErrors, SubgridsSamplesExclude) {
  std::string msg;
  EXPECT_EQ(err(R"({"subgrids": [{"grid": {"d": [16]}}, {"grid": {"lambda": [-1]}}]})"), "subgrids[1].grid.lambda[0]");
  EXPECT_EQ(err(R"({"subgrids": [{"defaults": {"lr": 0}}]})"), "subgrids[0].defaults.lr");
  EXPECT_EQ(err(R"({"subgrids": [{"gird": {}}]})"), "subgrids[0].gird");
  EXPECT_EQ(err(R"({"subgrids": []})"), "subgrids");
  EXPECT_EQ(err(R"({"samples": {"n": 0, "params": {"lr": {"uniform": [0.1, 0.2]}}}})"), "samples.n");
  EXPECT_EQ(err(R"({"samples": {"params": {"lr": {"uniform": [0.1, 0.2]}}}})"), "samples.n");
  EXPECT_EQ(err(R"({"samples": {"n": 3, "params": {"lr": {"loguniform": [0, 0.2]}}}})"), "samples.params.lr.loguniform[0]");
  EXPECT_EQ(err(R"({"samples": {"n": 3, "params": {"lr": {"uniform": [0.2, 0.1]}}}})"), "samples.params.lr.uniform");
  EXPECT_EQ(err(R"({"samples": {"n": 3, "params": {"lr": {"normal": [0, 1]}}}})"), "samples.params.lr.normal");
  EXPECT_EQ(err(R"({"samples": {"n": 3, "params": {"lr": {"uniform": [-1, 1]}}}})"), "samples.params.lr.uniform[0]");
  EXPECT_EQ(err(R"({"samples": {"n": 3, "params": {"d": {"uniform": [8, 16]}}}})"), "samples.params.d.uniform");
  EXPECT_EQ(err(R"({"samples": {"n": 3, "params": {"activation": {"choice": ["relu", "selu"]}}}})"),
            "samples.params.activation.choice[1]");
  EXPECT_EQ(err(R"({"samples": {"n": 3, "params": {}}})"), "samples.params");
  EXPECT_EQ(err(R"({"exclude": [{"foo": 1}]})"), "exclude[0].foo");
  EXPECT_EQ(err(R"({"exclude": [{"d": "x"}]})"), "exclude[0].d");
  EXPECT_EQ(err(R"({"exclude": [{"teacher": {"decomposition": "latnt"}}]})"), "exclude[0].teacher.decomposition");
  EXPECT_EQ(err(R"({"exclude": [{}]})"), "exclude[0]");
  EXPECT_EQ(err(R"({"grid": {"d": [16]}, "exclude": [3]})"), "exclude[0]");
  EXPECT_EQ(err(R"({"samples": {"n": 3, "params": {"lr": {"uniform": [0.1, 0.2]}}}, "exclude": [{"lr": 0.1}]})", &msg),
            "exclude[0].lr");
  EXPECT_NE(msg.find("sampled"), std::string::npos);
  EXPECT_EQ(err(R"({"subgrids": [{"grid": {"d": [16, 32]}, "exclude": [{"d": "16"}]}]})"), "subgrids[0].exclude[0].d");
}

TEST(SweepErrors, SyntaxLineAndColumn) {
  std::string msg;
  // The stray comma is on line 3, column 11.
  EXPECT_EQ(err("{\n  \"name\": \"x\",\n  \"seed\": ,\n  \"grid\": {}\n}", &msg), "");
  EXPECT_NE(msg.find("line 3, column 11"), std::string::npos) << msg;
  EXPECT_NE(msg.find("t.json"), std::string::npos) << msg;
  // A missing closing brace: reported at the end of the text.
  EXPECT_EQ(err("{\"grid\": {\"d\": [16]}\n", &msg), "");
  EXPECT_NE(msg.find("line 2, column 1"), std::string::npos) << msg;
  EXPECT_EQ(err("{\"a\": tru}", &msg), "");
  EXPECT_NE(msg.find("line 1, column"), std::string::npos) << msg;
}

TEST(SweepErrors, CombinationsCheckedPerTrial) {
  // Each value is fine on its own; d = 4 with the default k = 8 is not.
  Sweep s = S(R"({"grid": {"d": [4, 32], "k": [2, 8]}})");
  ASSERT_EQ(s.count(), 4u);
  EXPECT_EQ(s.trial(0).k, 2);  // d = 4, k = 2: fine
  try {
    s.trial(1);
    ADD_FAILURE() << "d = 4, k = 8 should not parse";
  } catch (const InputError& e) {
    EXPECT_EQ(e.path, "trials[1].k");
  }
}

TEST(SweepErrors, MissingFile) {
  try {
    Sweep::from_file("/nonexistent/sweep.json");
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/sweep.json"), std::string::npos);
  }
}

// --- identity -----------------------------------------------------------------------------------

// Inputs a review (session 12) found crashing or misread: a number no
// double holds (was exit 1 without a field), nesting deep enough to overflow
// the stack (was a segfault), and two spellings of one parameter in one
// object (one silently won).
TEST(SweepErrors, HugeNumbersDeepNestingAndTwoSpellings) {
  std::string msg;
  EXPECT_EQ(err(R"({"defaults": {"noise": 1e309}})", &msg), "defaults.noise");
  EXPECT_NE(msg.find("fit a double"), std::string::npos) << msg;
  EXPECT_EQ(err(R"({"grid": {"lambda": [0, 1e400]}})"), "grid.lambda");
  std::string deep = R"({"grid": {"noise": )" + std::string(100000, '[') + "1" + std::string(100000, ']') + "}}";
  EXPECT_EQ(err(deep, &msg), "grid.noise[]");
  EXPECT_NE(msg.find("nested deeper than 64"), std::string::npos) << msg;
  std::string deep_obj = R"({"defaults": {"teacher": )";
  for (int i = 0; i < 5000; ++i) deep_obj += R"({"a": )";
  deep_obj += "1" + std::string(5000, '}') + "}}";
  EXPECT_EQ(err(deep_obj), "defaults.teacher.a");
  EXPECT_EQ(err(R"({"defaults": {"teacher.kind": "perturbed", "teacher": {"kind": "oracle"}}})", &msg),
            "defaults.teacher");
  EXPECT_NE(msg.find("teacher.kind"), std::string::npos) << msg;
  EXPECT_EQ(err(R"({"defaults": {"teacher": {"delta": 0.5}, "teacher.kind": "perturbed"}})"), "<none>");
  EXPECT_EQ(err(R"({"defaults": {"teacher": {}, "teacher.kind": "perturbed"}})"), "<none>");  // {} sets nothing
  EXPECT_EQ(err(R"({"subgrids": [{"defaults": {"teacher": "x", "teacher.kind": "oracle"}}]})"),
            "subgrids[0].defaults.teacher.kind");
  EXPECT_EQ(err(R"({"grid": {"d": [8, 16]}, "exclude": [{"teacher.kind": "oracle", "teacher": {"kind": "oracle"}}]})",
                &msg),
            "exclude[0]");
  EXPECT_NE(msg.find("named twice"), std::string::npos) << msg;
}

// Exclude and generated axes at their edges (the same review): integers past
// 2^53 on a range are matched exactly (doubles could not), a constant
// linspace of 10^12 points is decided by one comparison (it was scanned), a
// bare integer equals its one-element list for hidden and matched_layers as
// everywhere else, repeated entries do not multiply the inclusion-exclusion
// boxes (21 copies took gigabytes), and a sampled int over all of int64
// varies (the span overflowed to 0).
TEST(Sweep, ExcludeAndSourcesAtTheirEdges) {
  Sweep r = S(R"({"grid": {"seed": {"range": [1000000000000000000, 1000000000000000010]}},
                  "exclude": [{"seed": 1000000000000000005}]})");
  ASSERT_EQ(r.count(), 9u);
  for (uint64_t i = 0; i < 9; ++i) EXPECT_NE(r.trial(i).seed, 1000000000000000005ll);
  EXPECT_EQ(r.trial(5).seed, 1000000000000000006ll);
  Sweep ext = S(R"({"grid": {"seed": {"range": [-9223372036854775807, 9223372036854775807, 9223372036854775807]}}})");
  ASSERT_EQ(ext.count(), 2u);  // the stop is excluded
  EXPECT_EQ(ext.trial(0).seed, -9223372036854775807ll);
  EXPECT_EQ(ext.trial(1).seed, 0);
  Sweep c = S(R"({"grid": {"noise": {"linspace": [0.5, 0.5, 1000000000000]}}, "exclude": [{"noise": 0.3}]})");
  EXPECT_EQ(c.count(), 1000000000000ull);
  EXPECT_EQ(err(R"({"grid": {"noise": {"linspace": [0.5, 0.5, 1000000000000]}}, "exclude": [{"noise": 0.5}]})"),
            "exclude");  // excludes every trial
  EXPECT_EQ(S(R"({"grid": {"hidden": [16, 32]}, "exclude": [{"hidden": [16]}]})").count(), 1u);
  EXPECT_EQ(S(R"({"grid": {"hidden": [[16], [32]]}, "exclude": [{"hidden": 16}]})").count(), 1u);
  EXPECT_EQ(S(R"({"defaults": {"hidden": [32]}, "grid": {"d": [32, 64]}, "exclude": [{"hidden": 32, "d": 64}]})")
                .count(),
            1u);
  EXPECT_EQ(S(R"({"defaults": {"hidden": [8, 8]}, "grid": {"matched_layers": [[], [1]]},
                  "exclude": [{"matched_layers": 1}]})")
                .count(),
            1u);
  std::string noise = "[";
  for (int i = 0; i < 2000; ++i) noise += (i ? "," : "") + std::string(i % 2 ? "0.6" : "0.5");
  std::string copies;
  for (int i = 0; i < 21; ++i) copies += std::string(i ? "," : "") + R"({"noise": 0.5})";
  EXPECT_EQ(S(R"({"grid": {"noise": )" + noise + R"(]}, "exclude": [)" + copies + "]}").count(), 1000u);
  // Points closer than the 1e-12 tolerance: the linspace excludes what the
  // same values written as a list exclude (it tried only the nearest 3).
  {
    const json lin = {{"grid", {{"noise", {{"linspace", {1.0, 1.000000001, 10001}}}}}},
                      {"exclude", {{{"noise", 1.0000000005}}}}};
    Sweep g = SJ(lin);
    json values = json::array();
    for (double x : noises(SJ({{"grid", lin["grid"]}}))) values.push_back(x);
    Sweep l = SJ({{"grid", {{"noise", values}}}, {"exclude", lin["exclude"]}});
    EXPECT_LT(g.count(), 10001u - 3) << "more than the 3 nearest points lie within the tolerance";
    EXPECT_EQ(g.count(), l.count());
  }
  Sweep si = S(R"({"samples": {"n": 64, "params": {"seed": {"int": [-9223372036854775808, 9223372036854775807]}}}})");
  std::set<int64_t> seeds;
  for (uint64_t i = 0; i < 64; ++i) seeds.insert(si.trial(i).seed);
  EXPECT_GT(seeds.size(), 60u);
}

TEST(Sweep, HashFollowsContentNotWhitespace) {
  Sweep a = S(R"({"name": "x", "grid": {"d": [16, 32], "k": [4]}})");
  Sweep b = S("{\n  \"name\" : \"x\",\n  \"grid\": {\"d\": [16,32], \"k\": [4]}\n}");
  Sweep c = S(R"({"name": "x", "grid": {"d": [16, 33], "k": [4]}})");
  Sweep d = S(R"({"name": "x", "grid": {"k": [4], "d": [16, 32]}})");  // key order defines ids
  EXPECT_EQ(a.hash(), b.hash());
  EXPECT_NE(a.hash(), c.hash());
  EXPECT_NE(a.hash(), d.hash());
  EXPECT_EQ(a.hash().size(), 16u);
  // The description is prose, not the sweep (since session 14).
  Sweep e = S(R"({"name": "x", "description": "first try", "grid": {"d": [16, 32], "k": [4]}})");
  Sweep f = S(R"({"name": "x", "description": "the same, reworded", "grid": {"d": [16, 32], "k": [4]}})");
  EXPECT_EQ(e.hash(), f.hash());
  EXPECT_EQ(e.hash(), a.hash());
  // So are a subgrid's (since session 15); its name is the subgrid column, so it counts.
  Sweep g = S(R"({"subgrids": [{"name": "s", "description": "one", "grid": {"d": [16, 32]}}]})");
  Sweep h = S(R"({"subgrids": [{"name": "s", "description": "two", "grid": {"d": [16, 32]}}]})");
  Sweep i = S(R"({"subgrids": [{"name": "t", "description": "one", "grid": {"d": [16, 32]}}]})");
  EXPECT_EQ(g.hash(), h.hash());
  EXPECT_NE(g.hash(), i.hash());
  EXPECT_EQ(b.text().front(), '{');
  EXPECT_EQ(a.json()["grid"]["d"][1], 32);
}

TEST(Sweep, ExampleFilesParse) {
  for (const char* f : {"quickstart", "tiny", "demo", "factor1", "teachers"}) {
    Sweep s = Sweep::from_file(std::string(STSWEEP_SOURCE_DIR) + "/sweeps/" + f + ".json");
    EXPECT_EQ(s.name(), f);
    EXPECT_GT(s.count(), 0u);
    s.trial(0);
    s.trial(s.count() - 1);
  }
  // The counts the docs promise: quickstart 3 x 3 x 3 x 2 x 4, tiny 3 x 3 x 2 x 2.
  EXPECT_EQ(Sweep::from_file(std::string(STSWEEP_SOURCE_DIR) + "/sweeps/quickstart.json").count(), 216u);
  EXPECT_EQ(Sweep::from_file(std::string(STSWEEP_SOURCE_DIR) + "/sweeps/tiny.json").count(), 36u);
  // docs/SWEEPS.md gives demo.json's count and shows the file: the same sweep (same hash).
  const Sweep demo = Sweep::from_file(std::string(STSWEEP_SOURCE_DIR) + "/sweeps/demo.json");
  EXPECT_EQ(demo.count(), 30060u);
  std::ifstream md(std::string(STSWEEP_SOURCE_DIR) + "/docs/SWEEPS.md");
  const std::string doc((std::istreambuf_iterator<char>(md)), std::istreambuf_iterator<char>());
  EXPECT_NE(doc.find("exclude (30060 trials"), std::string::npos);
  const size_t open = doc.find("```json\n{\"name\": \"demo\"");
  ASSERT_NE(open, std::string::npos);
  const size_t body = open + 8, close = doc.find("```", body);
  EXPECT_EQ(Sweep::from_text(doc.substr(body, close - body)).hash(), demo.hash());
}
