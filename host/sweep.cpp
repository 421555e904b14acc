// Sweep files: parsing, validation and lazy expansion (docs/SWEEPS.md).
//
// A sweep is a list of blocks (the top level and each subgrid). A block is a
// base parameter object and a list of axes; an axis is one grid key, one zip
// group or the samples group, each a list of members (key, value source). Raw
// index x of a block is a mixed-radix number over its axes (last axis fastest).
//
// `exclude` entries are boxes: an entry constrains only the axes its keys touch,
// so the points it removes are a product of per-axis index sets. The union of
// the boxes is counted by inclusion-exclusion over their intersections (pruned:
// a superset of an empty intersection is empty), and the r-th kept point is
// found by bisection on "kept points below x", which the same boxes answer
// with a digit walk. Memory grows with the exclude entries, never with the grid.
#include "sweep.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

namespace stsweep {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

constexpr uint64_t kMaxCount = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

// floor(h * n / 2^64): an unbiased-enough index in [0, n) from 64 random bits.
uint64_t scale_to(uint64_t h, uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(h) * n) >> 64);
}

std::string idx(const std::string& path, uint64_t i) { return path + "[" + std::to_string(i) + "]"; }

std::string describe(const ojson& v) {
  std::string s = v.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

// The message of an InputError without its "path: " prefix.
std::string bare(const InputError& e) {
  std::string w = e.what();
  if (!e.path.empty() && w.compare(0, e.path.size() + 2, e.path + ": ") == 0) return w.substr(e.path.size() + 2);
  return w;
}

json plain(const ojson& v) {
  switch (v.type()) {
    case ojson::value_t::object: {
      json o = json::object();
      for (auto it = v.begin(); it != v.end(); ++it) o[it.key()] = plain(it.value());
      return o;
    }
    case ojson::value_t::array: {
      json a = json::array();
      for (const auto& x : v) a.push_back(plain(x));
      return a;
    }
    case ojson::value_t::string: return v.get<std::string>();
    case ojson::value_t::boolean: return v.get<bool>();
    case ojson::value_t::number_integer: return v.get<int64_t>();
    case ojson::value_t::number_unsigned: return v.get<uint64_t>();
    case ojson::value_t::number_float: return v.get<double>();
    default: return nullptr;
  }
}

// A parameter value as exclude compares it: for the integer-list parameters
// (hidden, matched_layers) a bare integer is the one-element list it means.
json canonical(const std::string& key, const json& v) {
  if ((key == "hidden" || key == "matched_layers") && v.is_number_integer()) return json::array({v});
  return v;
}

// Numbers compare with a relative tolerance so that a generated 0.1 matches a
// written 0.1; everything else compares exactly.
bool same_value(const json& a, const json& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_number_integer() && b.is_number_integer()) return a == b;
    double x = a.get<double>(), y = b.get<double>();
    return std::fabs(x - y) <= 1e-12 * std::max(std::fabs(x), std::fabs(y));
  }
  if (a.type() != b.type()) return false;
  if (a.is_array()) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (!same_value(a[i], b[i])) return false;
    return true;
  }
  if (a.is_object()) {
    if (a.size() != b.size()) return false;
    for (auto it = a.begin(); it != a.end(); ++it) {
      auto jt = b.find(it.key());
      if (jt == b.end() || !same_value(it.value(), *jt)) return false;
    }
    return true;
  }
  return a == b;
}

// Objects merge deeply; anything else replaces.
void merge_into(json& dst, const json& src) {
  if (dst.is_object() && src.is_object()) {
    for (auto it = src.begin(); it != src.end(); ++it) merge_into(dst[it.key()], it.value());
  } else {
    dst = src;
  }
}

void set_dotted(json& obj, const std::string& key, const json& v) {
  json* at = &obj;
  size_t start = 0;
  for (;;) {
    size_t dot = key.find('.', start);
    std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (!at->is_object()) *at = json::object();
    at = &(*at)[part];
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  merge_into(*at, v);
}

const json* get_dotted(const json& obj, const std::string& key) {
  const json* at = &obj;
  size_t start = 0;
  for (;;) {
    size_t dot = key.find('.', start);
    std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (!at->is_object()) return nullptr;
    auto it = at->find(part);
    if (it == at->end()) return nullptr;
    at = &*it;
    if (dot == std::string::npos) return at;
    start = dot + 1;
  }
}

bool key_covers(const std::string& outer, const std::string& inner) {  // inner is outer or below it
  return inner == outer || (inner.size() > outer.size() && inner.compare(0, outer.size(), outer) == 0 &&
                            inner[outer.size()] == '.');
}

// The dotted keys of an object's leaves ("teacher": {"kind": ..} gives teacher.kind).
// An empty object sets nothing, so it has none.
void leaf_keys(const json& v, const std::string& key, std::vector<std::string>& out) {
  if (v.is_object()) {
    for (auto it = v.begin(); it != v.end(); ++it) leaf_keys(it.value(), key + "." + it.key(), out);
  } else {
    out.push_back(key);
  }
}

// A parameter object from the file (dotted keys allowed) as a nested object.
// Two spellings of one parameter ("teacher.kind" and "teacher": {"kind": ..})
// are an error, as a key given twice is: one would silently win.
json nested_params(const ojson& obj, const std::string& path) {
  json out = json::object();
  std::vector<std::pair<std::string, std::string>> seen;  // leaf key, the file key that set it
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    json v = plain(it.value());
    std::vector<std::string> leaves;
    leaf_keys(v, it.key(), leaves);
    for (const auto& l : leaves)
      for (const auto& [k, from] : seen)
        if (key_covers(k, l) || key_covers(l, k))
          throw InputError(path + "." + it.key(), "sets " + (l.size() < k.size() ? l : k) + ", which \"" + from +
                                                      "\" in the same object sets too (one spelling per parameter)");
    for (const auto& l : leaves) seen.push_back({l, it.key()});
    set_dotted(out, it.key(), v);
  }
  return out;
}

bool known_key(const std::string& key) {
  if (key == "teacher") return true;
  for (const auto& s : param_specs())
    if (s.key == key && !s.derived) return true;
  return false;
}

void check_object(const ojson& v, const std::string& path) {
  if (!v.is_object()) throw InputError(path, "expected an object, got " + describe(v));
}
void check_keys(const ojson& v, const std::string& path, std::initializer_list<const char*> allowed) {
  for (auto it = v.begin(); it != v.end(); ++it) {
    bool ok = false;
    std::string all;
    for (const char* a : allowed) {
      ok = ok || it.key() == a;
      { all += all.empty() ? "" : ", "; all += std::string(a); }
    }
    if (!ok) throw InputError(path.empty() ? it.key() : path + "." + it.key(), "unknown key (allowed: " + all + ")");
  }
}

double number_at(const ojson& arr, size_t i, const std::string& path) {
  const auto& v = arr[i];
  if (!v.is_number()) throw InputError(idx(path, i), "expected a number, got " + describe(v));
  return v.get<double>();
}
int64_t integer_at(const ojson& arr, size_t i, const std::string& path) {
  const auto& v = arr[i];
  if (v.is_number_unsigned() && v.get<uint64_t>() > kMaxCount) throw InputError(idx(path, i), "integer too large");
  if (!v.is_number_integer()) throw InputError(idx(path, i), "expected an integer, got " + describe(v));
  return v.get<int64_t>();
}

// --- value sources -------------------------------------------------------------------------
struct Source {
  enum Kind { List, Linspace, Logspace, Range, Sample } kind = List;
  enum Dist { Uniform, LogUniform, Choice, Int } dist = Uniform;
  std::vector<json> list;  // List values, or Sample choices
  double a = 0, b = 0;     // linspace/logspace ends; uniform/loguniform bounds
  int64_t r0 = 0, step = 1, ia = 0, ib = 0;
  uint64_t n = 0;          // size of generated sources
  uint64_t stream = 0;     // Sample: hash of (sweep seed, key)
  std::string path;        // JSON path of the definition

  uint64_t size() const { return kind == List ? list.size() : n; }
  bool generated() const { return kind == Linspace || kind == Logspace || kind == Range; }

  double lin(uint64_t i) const {
    if (n == 1) return a;
    if (i == n - 1) return b;
    // Weighted form: exact at whole-number steps (logspace [-2, 1, 4] gives 10^0 = 1 exactly).
    double t = static_cast<double>(i), rest = static_cast<double>(n - 1 - i);
    return (a * rest + b * t) / static_cast<double>(n - 1);
  }

  json at(uint64_t i) const {
    switch (kind) {
      case List: return list[i];
      case Linspace: return lin(i);
      case Logspace: return std::pow(10.0, lin(i));
      // In unsigned arithmetic (no overflow): the value lies between the ends.
      case Range: return static_cast<int64_t>(static_cast<uint64_t>(r0) + i * static_cast<uint64_t>(step));
      case Sample: {
        uint64_t h = splitmix64(stream ^ splitmix64(i + 0x2545f4914f6cdd1dULL));
        double u = static_cast<double>(h >> 11) * 0x1.0p-53;  // [0, 1)
        switch (dist) {
          case Uniform: return a + (b - a) * u;
          case LogUniform: return std::exp(std::log(a) + (std::log(b) - std::log(a)) * u);
          case Choice: return list[scale_to(h, list.size())];
          case Int: {  // [ia, ib]: a span of up to 2^64 values, in unsigned arithmetic
            const uint64_t span = static_cast<uint64_t>(ib) - static_cast<uint64_t>(ia);
            const uint64_t off = span == UINT64_MAX ? h : scale_to(h, span + 1);
            return static_cast<int64_t>(static_cast<uint64_t>(ia) + off);
          }
        }
      }
    }
    return nullptr;
  }

  // Where an error about value i points.
  std::string value_path(uint64_t i) const { return kind == List ? idx(path, i) : path; }

  // A generated source whose values are not all equal.
  bool monotone() const { return generated() && n > 1 && (kind == Range || a != b); }

  // Indices whose value may equal v (same_value: within 1e-12 relative): a
  // superset of the true ones, for monotone sources, found by inverting the
  // formula; the window covers the tolerance where points lie closer than it
  // (a linspace of 10^5 points over [1, 1 + 1e-9]), up to 2^20 points each side.
  std::vector<uint64_t> candidates(const json& v) const {
    std::vector<uint64_t> out;
    if (!v.is_number()) return out;
    if (kind == Range && v.is_number_integer()) {  // exactly: doubles lose integers past 2^53
      if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) return out;
      const __int128 d = static_cast<__int128>(v.get<int64_t>()) - r0;
      if (d % step == 0 && d / step >= 0 && d / step < static_cast<__int128>(n))
        out.push_back(static_cast<uint64_t>(d / step));
      return out;
    }
    double x = v.get<double>(), t, dt;  // dt: the tolerance in index units
    if (kind == Range) {
      t = (x - static_cast<double>(r0)) / static_cast<double>(step);
      dt = 1e-12 * std::fabs(x) / std::fabs(static_cast<double>(step));
    } else {
      double y = x;
      if (kind == Logspace) {
        if (!(x > 0)) return out;
        y = std::log10(x);
      }
      const double per = (b - a) / static_cast<double>(n - 1);  // y per index
      t = (y - a) / (b - a) * static_cast<double>(n - 1);
      // Logspace: a relative tolerance is 1e-12 / ln 10 in log10 units.
      dt = (kind == Logspace ? 1e-12 / std::log(10.0) : 1e-12 * std::fabs(x)) / std::fabs(per);
    }
    const double w = 1 + std::min(std::ceil(std::isfinite(dt) ? dt : 0.0), double{1 << 20});
    if (!std::isfinite(t) || t < -w - 1 || t > static_cast<double>(n) + w + 1) return out;
    const int64_t c = std::llround(t), k = static_cast<int64_t>(w);
    for (int64_t j = c - k; j <= c + k; ++j)
      if (j >= 0 && static_cast<uint64_t>(j) < n) out.push_back(static_cast<uint64_t>(j));
    return out;
  }
};

Source parse_axis(const ojson& v, const std::string& path) {
  Source s;
  s.path = path;
  if (v.is_array()) {
    if (v.empty()) throw InputError(path, "empty axis (an axis needs at least one value)");
    for (const auto& x : v) s.list.push_back(plain(x));
    return s;
  }
  if (v.is_object() && v.size() == 1) {
    const std::string form = v.begin().key();
    const ojson& arg = v.begin().value();
    const std::string fpath = path + "." + form;
    if (form == "linspace" || form == "logspace") {
      if (!arg.is_array() || arg.size() != 3)
        throw InputError(fpath, "expected [start, stop, count], got " + describe(arg));
      s.kind = form == "linspace" ? Source::Linspace : Source::Logspace;
      s.a = number_at(arg, 0, fpath);
      s.b = number_at(arg, 1, fpath);
      int64_t n = integer_at(arg, 2, fpath);
      if (n < 1) throw InputError(idx(fpath, 2), "count must be >= 1 (an axis cannot be empty), got " + std::to_string(n));
      s.n = static_cast<uint64_t>(n);
      s.path = fpath;
      return s;
    }
    if (form == "range") {
      if (!arg.is_array() || (arg.size() != 2 && arg.size() != 3))
        throw InputError(fpath, "expected [start, stop] or [start, stop, step], got " + describe(arg));
      s.kind = Source::Range;
      s.r0 = integer_at(arg, 0, fpath);
      int64_t stop = integer_at(arg, 1, fpath);
      s.step = arg.size() == 3 ? integer_at(arg, 2, fpath) : 1;
      if (s.step == 0) throw InputError(idx(fpath, 2), "step must not be 0");
      __int128 span = static_cast<__int128>(stop) - s.r0;
      __int128 n = 0;
      if (s.step > 0 && span > 0) n = (span + s.step - 1) / s.step;
      if (s.step < 0 && span < 0) n = (-span + (-static_cast<__int128>(s.step)) - 1) / (-static_cast<__int128>(s.step));
      if (n == 0)
        throw InputError(fpath, "empty range (half-open, as in Python): " + describe(arg));
      s.n = static_cast<uint64_t>(n);
      s.path = fpath;
      return s;
    }
  }
  throw InputError(path, "an axis is a list of values or {\"linspace\"|\"logspace\"|\"range\": [...]}, got " +
                             describe(v));
}

Source parse_sample(const ojson& v, const std::string& path, uint64_t seed, const std::string& key, uint64_t n) {
  Source s;
  s.kind = Source::Sample;
  s.n = n;
  s.stream = splitmix64(seed ^ splitmix64(fnv1a(key)));
  if (!v.is_object() || v.size() != 1)
    throw InputError(path, "expected {\"uniform\"|\"loguniform\"|\"choice\"|\"int\": [...]}, got " + describe(v));
  const std::string form = v.begin().key();
  const ojson& arg = v.begin().value();
  s.path = path + "." + form;
  if (form == "uniform" || form == "loguniform") {
    if (!arg.is_array() || arg.size() != 2) throw InputError(s.path, "expected [low, high], got " + describe(arg));
    s.dist = form == "uniform" ? Source::Uniform : Source::LogUniform;
    s.a = number_at(arg, 0, s.path);
    s.b = number_at(arg, 1, s.path);
    if (s.a > s.b) throw InputError(s.path, "low must be <= high");
    if (s.dist == Source::LogUniform && !(s.a > 0)) throw InputError(idx(s.path, 0), "loguniform needs low > 0");
  } else if (form == "int") {
    if (!arg.is_array() || arg.size() != 2) throw InputError(s.path, "expected [low, high] (inclusive), got " + describe(arg));
    s.dist = Source::Int;
    s.ia = integer_at(arg, 0, s.path);
    s.ib = integer_at(arg, 1, s.path);
    if (s.ia > s.ib) throw InputError(s.path, "low must be <= high");
  } else if (form == "choice") {
    if (!arg.is_array() || arg.empty()) throw InputError(s.path, "expected a non-empty list of values, got " + describe(arg));
    s.dist = Source::Choice;
    for (const auto& x : arg) s.list.push_back(plain(x));
  } else {
    throw InputError(path + "." + form, "unknown distribution (uniform, loguniform, choice, int)");
  }
  return s;
}

struct Member {
  std::string key;
  Source src;
};
struct Axis {
  std::vector<Member> members;
  uint64_t size = 0;
  bool sampled = false;
};

// A set of indices along one axis: all of them, or a sorted list.
struct IndexSet {
  bool full = true;
  std::vector<uint64_t> v;
  uint64_t size(uint64_t axis_size) const { return full ? axis_size : v.size(); }
  uint64_t less(uint64_t x) const {  // elements < x
    return full ? x : static_cast<uint64_t>(std::lower_bound(v.begin(), v.end(), x) - v.begin());
  }
  bool has(uint64_t x) const { return full || std::binary_search(v.begin(), v.end(), x); }
  bool operator==(const IndexSet&) const = default;
};
IndexSet intersect(const IndexSet& a, const IndexSet& b) {
  if (a.full) return b;
  if (b.full) return a;
  IndexSet r;
  r.full = false;
  std::set_intersection(a.v.begin(), a.v.end(), b.v.begin(), b.v.end(), std::back_inserter(r.v));
  return r;
}

struct Box {
  int sign = 1;
  std::vector<IndexSet> sets;     // per axis
  std::vector<uint64_t> suffix;   // suffix[a] = prod_{b > a} |sets[b]|
  uint64_t size = 0;
};

struct ExcludeItem {
  std::string key, path;
  json value;
};

struct Block {
  std::string path;   // "" top level, "subgrids[i]"
  std::string label;  // the subgrid column: its name, else its path
  int subgrid = -1;
  json base;          // all parameters before the axes apply
  std::vector<Axis> axes;
  std::vector<uint64_t> radix;  // radix[a] = prod_{b > a} size_b
  uint64_t raw = 1, excluded = 0, kept = 0, offset = 0;
  std::vector<Box> boxes;

  std::vector<uint64_t> digits(uint64_t x) const {
    std::vector<uint64_t> d(axes.size());
    for (size_t a = 0; a < axes.size(); ++a) {
      d[a] = x / radix[a];
      x %= radix[a];
    }
    return d;
  }

  // Excluded raw points with index < x.
  uint64_t excluded_below(uint64_t x) const {
    if (x >= raw) return excluded;
    auto d = digits(x);
    __int128 total = 0;
    for (const auto& b : boxes) {
      __int128 c = 0;
      for (size_t a = 0; a < axes.size(); ++a) {
        c += static_cast<__int128>(b.sets[a].less(d[a])) * b.suffix[a];
        if (!b.sets[a].has(d[a])) break;
      }
      total += b.sign * c;
    }
    return static_cast<uint64_t>(total);
  }

  // Raw index of the r-th kept point: the smallest y with kept(< y) = r + 1, less one.
  uint64_t raw_index(uint64_t r) const {
    if (boxes.empty()) return r;
    uint64_t lo = r + 1, hi = std::min(raw, r + 1 + excluded);
    while (lo < hi) {
      uint64_t mid = lo + (hi - lo) / 2;
      if (mid - excluded_below(mid) >= r + 1) hi = mid;
      else lo = mid + 1;
    }
    return lo - 1;
  }

  json at_raw(uint64_t x) const {
    json obj = base;
    auto d = digits(x);
    for (size_t a = 0; a < axes.size(); ++a)
      for (const auto& m : axes[a].members) set_dotted(obj, m.key, m.src.at(d[a]));
    return obj;
  }
};

// Field-level check of one axis point (all members at index i) over the base.
void check_axis_point(const json& base, const Axis& ax, uint64_t i) {
  json obj = base;
  for (const auto& m : ax.members) set_dotted(obj, m.key, m.src.at(i));
  try {
    parse_trial_fields(obj, "");
  } catch (const InputError& e) {
    const Member* who = &ax.members[0];
    for (const auto& m : ax.members)
      if (key_covers(m.key, e.path) || e.path.compare(0, m.key.size() + 1, m.key + "[") == 0) who = &m;
    std::string msg = (e.path == who->key) ? bare(e) : std::string(e.what());
    throw InputError(who->src.value_path(i), msg);
  }
}

void check_axis(const json& base, const Axis& ax) {
  bool any_list = false;
  for (const auto& m : ax.members) any_list = any_list || m.src.kind == Source::List;
  if (any_list || ax.size <= 2048) {
    for (uint64_t i = 0; i < ax.size; ++i) check_axis_point(base, ax, i);
    return;
  }
  // Generated values are monotone, so single-value ranges hold when the ends
  // and a spread of points between hold (the spread catches non-integers).
  for (uint64_t j = 0; j <= 1024; ++j)
    check_axis_point(base, ax, static_cast<uint64_t>(static_cast<unsigned __int128>(ax.size - 1) * j / 1024));
}

std::vector<ExcludeItem> flatten_exclude(const ojson& v, const std::string& prefix, const std::string& path) {
  std::vector<ExcludeItem> out;
  for (auto it = v.begin(); it != v.end(); ++it) {
    std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    std::string p = path + "." + it.key();
    if (it.value().is_object()) {
      auto sub = flatten_exclude(it.value(), key, p);
      out.insert(out.end(), sub.begin(), sub.end());
    } else {
      out.push_back({key, p, canonical(key, plain(it.value()))});
    }
  }
  return out;
}

std::vector<std::vector<ExcludeItem>> parse_exclude(const ojson& v, const std::string& path) {
  if (!v.is_array()) throw InputError(path, "expected a list of partial parameter objects, got " + describe(v));
  std::vector<std::vector<ExcludeItem>> out;
  for (size_t i = 0; i < v.size(); ++i) {
    std::string ep = idx(path, i);
    check_object(v[i], ep);
    auto items = flatten_exclude(v[i], "", ep);
    if (items.empty()) throw InputError(ep, "empty entry (it would exclude every trial)");
    for (size_t a = 0; a < items.size(); ++a)
      for (size_t b = 0; b < a; ++b)
        if (key_covers(items[a].key, items[b].key) || key_covers(items[b].key, items[a].key))
          throw InputError(ep, items[a].key == items[b].key
                                   ? items[a].key + " is named twice (as a dotted key and inside an object: keep one)"
                                   : items[b].key + " and " + items[a].key + " overlap (one names a part of the other)");
    for (const auto& it : items) {
      if (!known_key(it.key)) throw InputError(it.path, unknown_parameter_message(it.key));
      json obj = default_params_json();
      set_dotted(obj, it.key, it.value);
      try {
        parse_trial_fields(obj, "");
      } catch (const InputError& e) {
        throw InputError(it.path, bare(e));
      }
    }
    out.push_back(std::move(items));
  }
  return out;
}

uint64_t checked_mul(uint64_t a, uint64_t b, const std::string& path) {
  unsigned __int128 r = static_cast<unsigned __int128>(a) * b;
  if (r > kMaxCount) throw InputError(path, "the sweep has more than 2^63 - 1 trials");
  return static_cast<uint64_t>(r);
}

class Builder {
 public:
  Builder(uint64_t seed, const std::vector<std::vector<ExcludeItem>>& global_exclude)
      : seed_(seed), global_exclude_(global_exclude) {}

  // One block from an object holding grid / zip / samples / exclude.
  Block block(const ojson& src, const std::string& path, int subgrid, const json& base) {
    Block b;
    b.path = path;
    b.subgrid = subgrid;
    b.label = subgrid >= 0 && src.contains("name") && src["name"].is_string() ? src["name"].get<std::string>() : path;
    b.base = base;
    auto at = [&](const std::string& k) { return path.empty() ? k : path + "." + k; };
    std::vector<std::pair<std::string, std::string>> seen;  // key, path
    auto claim = [&](const std::string& key, const std::string& kpath) {
      if (!known_key(key)) throw InputError(kpath, unknown_parameter_message(key));
      for (const auto& [k, p] : seen)
        if (key_covers(k, key) || key_covers(key, k))
          throw InputError(kpath, "duplicate axis: \"" + key + "\" is also varied by " + p);
      seen.emplace_back(key, kpath);
    };
    if (src.contains("grid")) {
      const ojson& grid = src["grid"];
      check_object(grid, at("grid"));
      for (auto it = grid.begin(); it != grid.end(); ++it) {
        std::string kp = at("grid") + "." + it.key();
        claim(it.key(), kp);
        Axis ax;
        ax.members.push_back({it.key(), parse_axis(it.value(), kp)});
        ax.size = ax.members[0].src.size();
        b.axes.push_back(std::move(ax));
      }
    }
    if (src.contains("zip")) {
      const ojson& zip = src["zip"];
      if (!zip.is_array()) throw InputError(at("zip"), "expected a list of zip groups, got " + describe(zip));
      for (size_t g = 0; g < zip.size(); ++g) {
        std::string gp = idx(at("zip"), g);
        check_object(zip[g], gp);
        if (zip[g].empty()) throw InputError(gp, "empty zip group");
        Axis ax;
        for (auto it = zip[g].begin(); it != zip[g].end(); ++it) {
          std::string kp = gp + "." + it.key();
          claim(it.key(), kp);
          ax.members.push_back({it.key(), parse_axis(it.value(), kp)});
          uint64_t n = ax.members.back().src.size();
          if (ax.members.size() > 1 && n != ax.size)
            throw InputError(kp, "zip lengths differ: \"" + it.key() + "\" has " + std::to_string(n) + " values, \"" +
                                     ax.members[0].key + "\" has " + std::to_string(ax.size));
          ax.size = n;
        }
        b.axes.push_back(std::move(ax));
      }
    }
    if (src.contains("samples")) {
      const ojson& sm = src["samples"];
      std::string sp = at("samples");
      check_object(sm, sp);
      check_keys(sm, sp, {"n", "params"});
      if (!sm.contains("n")) throw InputError(sp + ".n", "missing: the number of samples");
      if (!sm["n"].is_number_integer()) throw InputError(sp + ".n", "expected an integer, got " + describe(sm["n"]));
      if (sm["n"].is_number_unsigned() && sm["n"].get<uint64_t>() > kMaxCount) throw InputError(sp + ".n", "too large");
      int64_t n = sm["n"].get<int64_t>();
      if (n < 1) throw InputError(sp + ".n", "must be >= 1 (an axis cannot be empty), got " + std::to_string(n));
      if (!sm.contains("params")) throw InputError(sp + ".params", "missing: the sampled parameters");
      const ojson& params = sm["params"];
      check_object(params, sp + ".params");
      if (params.empty()) throw InputError(sp + ".params", "no parameters to sample");
      Axis ax;
      ax.sampled = true;
      ax.size = static_cast<uint64_t>(n);
      for (auto it = params.begin(); it != params.end(); ++it) {
        std::string kp = sp + ".params." + it.key();
        claim(it.key(), kp);
        ax.members.push_back({it.key(), parse_sample(it.value(), kp, seed_, it.key(), ax.size)});
      }
      b.axes.push_back(std::move(ax));
    }

    // Mixed radix.
    b.radix.assign(b.axes.size(), 1);
    b.raw = 1;
    for (size_t a = b.axes.size(); a-- > 0;) {
      b.radix[a] = b.raw;
      b.raw = checked_mul(b.raw, b.axes[a].size, path.empty() ? "grid" : path);
    }

    // Every value of every axis, checked on its own over the base.
    for (const auto& ax : b.axes) {
      if (!ax.sampled) {
        check_axis(b.base, ax);
        continue;
      }
      for (const auto& m : ax.members) check_sample_bounds(b.base, m);
      for (uint64_t i = 0; i < std::min<uint64_t>(ax.size, 256); ++i) check_axis_point(b.base, ax, i);
    }

    // Exclusions: the global entries, then the block's own.
    std::vector<std::vector<ExcludeItem>> entries = global_exclude_;
    if (subgrid >= 0 && src.contains("exclude")) {
      auto own = parse_exclude(src["exclude"], at("exclude"));
      entries.insert(entries.end(), own.begin(), own.end());
    }
    build_boxes(b, entries);
    return b;
  }

  // Exclude entries that drop no trial of any block so far: a misspelt value
  // or a combination the grid never makes.
  std::vector<Sweep::UnmatchedExclude> unmatched_entries() const {
    std::vector<Sweep::UnmatchedExclude> out;
    for (const auto& e : seen_)
      if (!matched_.count(e.path)) out.push_back(e);
    return out;
  }

 private:
  void check_sample_bounds(const json& base, const Member& m) {
    const Source& s = m.src;
    auto check = [&](const json& v, const std::string& p) {
      json obj = base;
      set_dotted(obj, m.key, v);
      try {
        parse_trial_fields(obj, "");
      } catch (const InputError& e) {
        throw InputError(p, e.path == m.key ? bare(e) : std::string(e.what()));
      }
    };
    switch (s.dist) {
      case Source::Uniform:
      case Source::LogUniform:
        check(s.a, idx(s.path, 0));
        check(s.b, idx(s.path, 1));
        break;
      case Source::Int:
        check(s.ia, idx(s.path, 0));
        check(s.ib, idx(s.path, 1));
        break;
      case Source::Choice:
        for (size_t i = 0; i < s.list.size(); ++i) check(s.list[i], idx(s.path, i));
        break;
    }
  }

  // Index set of axis `a` on which every item matches.
  static IndexSet match_set(const Block& b, size_t a, const std::vector<const ExcludeItem*>& items,
                            const std::vector<const Member*>& members) {
    const Axis& ax = b.axes[a];
    auto matches = [&](uint64_t i) {
      for (size_t j = 0; j < items.size(); ++j) {
        const Member& m = *members[j];
        json v = m.src.at(i);
        const json* got = &v;
        if (items[j]->key != m.key) {  // a key below the axis key, e.g. teacher.kind under teacher
          got = get_dotted(v, items[j]->key.substr(m.key.size() + 1));
          if (!got) got = get_dotted(b.base, items[j]->key);
        }
        if (!got || !same_value(canonical(items[j]->key, *got), items[j]->value)) return false;
      }
      return true;
    };
    IndexSet s;
    s.full = false;
    // A generated member of one value throughout (linspace [x, x, n]): one
    // comparison decides for every index, not a scan of n.
    bool all_constant = true;
    for (size_t j = 0; j < items.size(); ++j) {
      const Source& src = members[j]->src;
      const bool constant = items[j]->key == members[j]->key && src.generated() && !src.monotone();
      if (constant && !same_value(canonical(items[j]->key, src.at(0)), items[j]->value)) return s;  // none
      all_constant = all_constant && constant;
    }
    if (all_constant) {
      s.full = true;
      return s;
    }
    for (size_t j = 0; j < items.size(); ++j) {
      const Source& src = members[j]->src;
      if (items[j]->key == members[j]->key && src.monotone()) {  // no scan of a long generated axis
        for (uint64_t i : src.candidates(items[j]->value))
          if (matches(i)) s.v.push_back(i);
        if (s.v.size() == ax.size) s.full = true, s.v.clear();
        return s;
      }
    }
    for (uint64_t i = 0; i < ax.size; ++i)
      if (matches(i)) s.v.push_back(i);
    if (s.v.size() == ax.size) s.full = true, s.v.clear();
    return s;
  }

  void build_boxes(Block& b, const std::vector<std::vector<ExcludeItem>>& entries) {
    const size_t A = b.axes.size();
    std::vector<std::vector<IndexSet>> applicable;
    for (const auto& entry : entries) {
      const std::string ep = entry_path(entry);
      if (std::none_of(seen_.begin(), seen_.end(), [&](const auto& e) { return e.path == ep; })) {
        std::string text;
        for (const auto& it : entry) text += (text.empty() ? "" : ", ") + it.key + " = " + it.value.dump();
        const size_t own = ep.rfind(".exclude[");  // a subgrid's own entry: "subgrids[i].exclude[j]"
        seen_.push_back({ep, text, own == std::string::npos ? std::string() : ep.substr(0, own)});
      }
      std::vector<std::vector<const ExcludeItem*>> items(A);
      std::vector<std::vector<const Member*>> members(A);
      bool possible = true;
      for (const auto& it : entry) {
        int found = -1;
        for (size_t a = 0; a < A && found < 0; ++a)
          for (const auto& m : b.axes[a].members)
            if (key_covers(m.key, it.key) || key_covers(it.key, m.key)) {
              if (b.axes[a].sampled)
                throw InputError(it.path, "exclude cannot refer to the sampled parameter \"" + m.key +
                                              "\"; narrow its distribution instead");
              if (!key_covers(m.key, it.key))  // an axis below the entry's key: never equal to a leaf
                possible = false;
              found = static_cast<int>(a);
              items[a].push_back(&it);
              members[a].push_back(&m);
              break;
            }
        if (found < 0) {  // constant over the block
          const json* v = get_dotted(b.base, it.key);
          if (!v || !same_value(canonical(it.key, *v), it.value)) possible = false;
        }
      }
      if (!possible) continue;
      std::vector<IndexSet> sets(A);
      for (size_t a = 0; a < A && possible; ++a) {
        if (items[a].empty()) continue;
        sets[a] = match_set(b, a, items[a], members[a]);
        if (!sets[a].full && sets[a].v.empty()) possible = false;
      }
      if (!possible) continue;
      matched_.insert(ep);
      // Entries that select the same trials (repeated, or differing only in
      // constants at their defaults) count once: each copy would double the
      // boxes of inclusion-exclusion.
      if (std::find(applicable.begin(), applicable.end(), sets) == applicable.end())
        applicable.push_back(std::move(sets));
    }

    // Inclusion-exclusion over the intersections, pruning empty ones; bounded
    // in boxes and in the indices they store (a box copies its index lists).
    const size_t kMaxBoxes = size_t{1} << 20, kMaxStored = size_t{1} << 24;
    size_t stored = 0;
    std::vector<IndexSet> cur(A);
    auto dfs = [&](auto&& self, size_t start, int depth, const std::vector<IndexSet>& sets) -> void {
      for (size_t j = start; j < applicable.size(); ++j) {
        std::vector<IndexSet> next(A);
        bool empty = false;
        for (size_t a = 0; a < A && !empty; ++a) {
          next[a] = intersect(sets[a], applicable[j][a]);
          empty = !next[a].full && next[a].v.empty();
        }
        if (empty) continue;
        for (size_t a = 0; a < A; ++a) stored += next[a].v.size();
        if (b.boxes.size() >= kMaxBoxes || stored > kMaxStored)
          throw InputError(b.path.empty() ? "exclude" : b.path + ".exclude",
                           "exclude entries overlap in too many ways; split the sweep into subgrids");
        Box box;
        box.sign = (depth % 2 == 0) ? 1 : -1;
        box.sets = next;
        box.suffix.assign(A, 1);
        uint64_t prod = 1;
        for (size_t a = A; a-- > 0;) {
          box.suffix[a] = prod;
          prod *= next[a].size(b.axes[a].size);
        }
        box.size = prod;
        b.boxes.push_back(std::move(box));
        self(self, j + 1, depth + 1, next);
      }
    };
    dfs(dfs, 0, 0, cur);
    __int128 ex = 0;
    for (const auto& box : b.boxes) ex += box.sign * static_cast<__int128>(box.size);
    b.excluded = static_cast<uint64_t>(ex);
    b.kept = b.raw - b.excluded;
  }

  // "exclude[2]" or "subgrids[1].exclude[0]": the entry's own path, from its first item's.
  static std::string entry_path(const std::vector<ExcludeItem>& entry) {
    const std::string& p = entry.front().path;
    return p.substr(0, p.find(']', p.rfind("exclude[")) + 1);
  }

  uint64_t seed_;
  const std::vector<std::vector<ExcludeItem>>& global_exclude_;
  std::vector<Sweep::UnmatchedExclude> seen_;  // every entry met, in order
  std::set<std::string> matched_;                          // paths of the entries that drop some trial
};

}  // namespace

struct Sweep::Impl {
  std::string text, source, name, description, hash;
  uint64_t seed = 0;
  nlohmann::json doc;
  std::vector<Block> blocks;
  uint64_t total = 0;
  std::vector<Sweep::UnmatchedExclude> unmatched_exclude;

  const Block& block_of(uint64_t id, uint64_t& local) const {
    if (id >= total)
      throw InputError("", "trial id " + std::to_string(id) + " is out of range (the sweep has " +
                               std::to_string(total) + " trials)");
    auto it = std::upper_bound(blocks.begin(), blocks.end(), id,
                               [](uint64_t v, const Block& b) { return v < b.offset; });
    const Block& b = *(it - 1);
    local = id - b.offset;
    return b;
  }
};

namespace {

// 1-based line and column of byte offset `pos` in `text`.
std::pair<size_t, size_t> line_col(const std::string& text, size_t pos) {
  pos = std::min(pos, text.size());
  size_t line = 1, col = 1;
  for (size_t i = 0; i < pos; ++i) {
    if (text[i] == '\n') {
      ++line;
      col = 1;
    } else {
      ++col;
    }
  }
  return {line, col};
}

}  // namespace

Sweep Sweep::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError("", "cannot read sweep file '" + path + "': " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return from_text(ss.str(), path);
}

Sweep Sweep::from_text(const std::string& text, const std::string& source) {
  auto impl = std::make_shared<Impl>();
  impl->text = text;
  impl->source = source;
  ojson root;
  // JSON keeps the last of two equal keys in one object without a word; in a
  // sweep file that is almost always a mistake (two "grid" blocks, say), so it
  // is an error naming where.
  constexpr size_t kMaxDepth = 64;
  struct Frame {
    bool object;
    std::string name;               // how the path names this level
    std::vector<std::string> keys;  // keys seen so far (objects)
  };
  std::vector<Frame> stack;
  // The path of the open levels below the root, at most `levels` of them.
  auto stack_path = [&stack](size_t levels) {
    std::string p;
    for (size_t i = 1; i < stack.size() && i <= levels; ++i)
      p += (stack[i].name.rfind('[', 0) == 0 || p.empty()) ? stack[i].name : "." + stack[i].name;
    return p;
  };
  auto path_of = [&stack_path](const std::string& key) {
    const std::string p = stack_path(SIZE_MAX);
    return p.empty() ? key : p + "." + key;
  };
  std::string pending;  // the key whose value comes next
  ojson::parser_callback_t no_duplicate_keys = [&](int, ojson::parse_event_t ev, ojson& parsed) {
    using E = ojson::parse_event_t;
    const bool in_array = !stack.empty() && !stack.back().object;
    switch (ev) {
      case E::object_start:
      case E::array_start:
        // No sweep needs deep nesting, and the functions that walk a value
        // recurse: 100,000 levels overflowed the stack (a crash, not a message).
        if (stack.size() >= kMaxDepth)  // the first levels name the place well enough
          throw InputError(stack_path(3), "nested deeper than " + std::to_string(kMaxDepth) + " levels");
        stack.push_back({ev == E::object_start, stack.empty() ? "" : in_array ? "[]" : pending, {}});
        break;
      case E::object_end:
      case E::array_end:
        stack.pop_back();
        break;
      case E::key: {
        pending = parsed.get<std::string>();
        auto& keys = stack.back().keys;
        if (std::find(keys.begin(), keys.end(), pending) != keys.end())
          throw InputError(path_of(pending), "the key \"" + pending +
                                                 "\" appears twice in one object (JSON would keep only the last)");
        keys.push_back(pending);
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    root = ojson::parse(text, no_duplicate_keys);
  } catch (const ojson::out_of_range& e) {  // 1e309: no double holds it
    std::string detail = e.what();
    if (auto b = detail.find("] "); b != std::string::npos) detail = detail.substr(b + 2);
    // The object key or the array the number was read in.
    const std::string where = stack.empty()           ? std::string()
                              : stack.back().object ? path_of(pending)
                                                    : stack_path(SIZE_MAX);
    throw InputError(where, detail + " (a number must fit a double: at most about 1.8e308)");
  } catch (const ojson::parse_error& e) {
    // e.byte is 1-based: the last character read, where the parser stopped.
    auto [line, col] = line_col(text, e.byte > 0 ? e.byte - 1 : 0);
    std::string detail = e.what();
    auto c = detail.find("column ");
    auto colon = c == std::string::npos ? std::string::npos : detail.find(": ", c);
    if (colon != std::string::npos) detail = detail.substr(colon + 2);
    throw InputError("", source + ": JSON syntax error at line " + std::to_string(line) + ", column " +
                             std::to_string(col) + ": " + detail);
  }
  if (!root.is_object()) throw InputError("", "a sweep file is a JSON object, got " + describe(root));
  check_keys(root, "", {"name", "description", "seed", "defaults", "grid", "zip", "subgrids", "samples", "exclude"});

  if (root.contains("name")) {
    if (!root["name"].is_string()) throw InputError("name", "expected a string, got " + describe(root["name"]));
    impl->name = root["name"].get<std::string>();
  } else {
    // Default: the file name without folders and extension.
    std::string base = source.substr(source.find_last_of('/') == std::string::npos ? 0 : source.find_last_of('/') + 1);
    impl->name = base.substr(0, base.rfind('.'));
  }
  if (root.contains("description")) {
    if (!root["description"].is_string())
      throw InputError("description", "expected a string, got " + describe(root["description"]));
    impl->description = root["description"].get<std::string>();
  }
  if (root.contains("seed")) {
    const auto& s = root["seed"];
    if (!s.is_number_integer() || (!s.is_number_unsigned() && s.get<int64_t>() < 0))
      throw InputError("seed", "expected a non-negative integer, got " + describe(s));
    impl->seed = s.get<uint64_t>();
  }

  auto defaults_of = [](const ojson& obj, const std::string& path, const nlohmann::json& over) {
    nlohmann::json base = over;
    if (obj.contains("defaults")) {
      check_object(obj["defaults"], path);
      merge_into(base, nested_params(obj["defaults"], path));
      // Each field on its own; combinations are checked per trial, since axes
      // may override any default.
      parse_trial_fields(base, path);
    }
    return base;
  };
  nlohmann::json top_base = defaults_of(root, "defaults", default_params_json());

  std::vector<std::vector<ExcludeItem>> global;
  if (root.contains("exclude")) global = parse_exclude(root["exclude"], "exclude");
  Builder with_exclude(impl->seed, global);

  bool has_subgrids = root.contains("subgrids");
  bool top_axes = root.contains("grid") || root.contains("zip") || root.contains("samples");
  if (!has_subgrids || top_axes) impl->blocks.push_back(with_exclude.block(root, "", -1, top_base));
  if (has_subgrids) {
    const ojson& subs = root["subgrids"];
    if (!subs.is_array()) throw InputError("subgrids", "expected a list of subgrids, got " + describe(subs));
    if (subs.empty()) throw InputError("subgrids", "empty list");
    for (size_t i = 0; i < subs.size(); ++i) {
      std::string sp = idx("subgrids", i);
      check_object(subs[i], sp);
      check_keys(subs[i], sp, {"name", "description", "defaults", "grid", "zip", "samples", "exclude"});
      for (const char* k : {"name", "description"})
        if (subs[i].contains(k) && !subs[i][k].is_string())
          throw InputError(sp + "." + k, "expected a string, got " + describe(subs[i][k]));
      nlohmann::json base = defaults_of(subs[i], sp + ".defaults", top_base);
      impl->blocks.push_back(with_exclude.block(subs[i], sp, static_cast<int>(i), base));
    }
  }

  // Each block's label is its trials' `subgrid` column: two blocks of one label
  // could not be told apart (two subgrids of one name, a name "" beside the top
  // level's, a name "subgrids[1]" beside an unnamed subgrids[1]).
  for (size_t i = 0; i < impl->blocks.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (impl->blocks[i].label == impl->blocks[j].label) {
        // Blame the block whose name was written (an unnamed one's label is its path).
        const bool i_named = impl->blocks[i].label != impl->blocks[i].path;
        const Block& bad = i_named ? impl->blocks[i] : impl->blocks[j];
        const Block& other = i_named ? impl->blocks[j] : impl->blocks[i];
        throw InputError(bad.path + ".name",
                         "\"" + bad.label + "\" is also the subgrid column of " +
                             (other.path.empty() ? std::string("the top-level grid") : other.path) +
                             " (the results tell subgrids apart by it: give each its own name)");
      }
  impl->unmatched_exclude = with_exclude.unmatched_entries();
  uint64_t total = 0;
  for (auto& b : impl->blocks) {
    b.offset = total;
    if (b.kept > kMaxCount - total) throw InputError("subgrids", "the sweep has more than 2^63 - 1 trials");
    total += b.kept;
  }
  if (total == 0) throw InputError("exclude", "every trial is excluded: the sweep is empty");
  // Empty blocks would confuse the offset search; drop them.
  std::erase_if(impl->blocks, [](const Block& b) { return b.kept == 0; });
  impl->total = total;

  // Key order defines trial ids, so the canonical form keeps it. The
  // description is prose about the sweep, not the sweep: editing it must not
  // refuse a --resume or a merge (a researcher's review; until session 14 it did).
  // So are the subgrids' descriptions (since session 15); their names are not:
  // they are the trials' `subgrid` column.
  auto identity = root;
  if (identity.is_object()) identity.erase("description");
  if (identity.is_object() && identity.contains("subgrids") && identity["subgrids"].is_array())
    for (auto& sub : identity["subgrids"])
      if (sub.is_object()) sub.erase("description");
  std::string canon = identity.dump();
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(fnv1a(canon)));
  impl->hash = hex;
  impl->doc = plain(root);

  Sweep s;
  s.impl_ = std::move(impl);
  return s;
}

const std::string& Sweep::name() const { return impl_->name; }
const std::string& Sweep::description() const { return impl_->description; }
uint64_t Sweep::seed() const { return impl_->seed; }
const std::string& Sweep::text() const { return impl_->text; }
std::string Sweep::hash() const { return impl_->hash; }
const nlohmann::json& Sweep::json() const { return impl_->doc; }
uint64_t Sweep::count() const { return impl_->total; }
const std::vector<Sweep::UnmatchedExclude>& Sweep::unmatched_exclude() const {
  return impl_->unmatched_exclude;
}

std::vector<AxisInfo> Sweep::axes() const {
  std::vector<AxisInfo> out;
  for (const auto& b : impl_->blocks)
    for (const auto& ax : b.axes) {
      AxisInfo info;
      for (const auto& m : ax.members) { info.name += info.name.empty() ? "" : "+"; info.name += m.key; }
      info.size = ax.size;
      info.subgrid = b.subgrid;
      info.subgrid_label = b.label;
      for (uint64_t i = 0; i < std::min<uint64_t>(ax.size, 4); ++i) {
        std::string v;
        for (const auto& m : ax.members) { v += v.empty() ? "" : "+"; v += m.src.at(i).dump(); }
        info.preview.push_back(v);
      }
      out.push_back(std::move(info));
    }
  return out;
}

nlohmann::json Sweep::trial_json(uint64_t id) const {
  uint64_t local = 0;
  const Block& b = impl_->block_of(id, local);
  return b.at_raw(b.raw_index(local));
}

TrialParams Sweep::trial(uint64_t id) const {
  const nlohmann::json j = trial_json(id);
  const std::string path = "trials[" + std::to_string(id) + "]";
  try {
    TrialParams p = parse_trial_params(j, path);
    uint64_t local = 0;
    p.subgrid = impl_->block_of(id, local).label;
    return p;
  } catch (const InputError& e) {
    // Say which grid point it is: the trial's value of each axis of its block.
    uint64_t local = 0;
    std::string where;
    for (const auto& ax : impl_->block_of(id, local).axes)
      for (const auto& m : ax.members)
        if (const nlohmann::json* v = get_dotted(j, m.key)) where += (where.empty() ? "" : ", ") + m.key + " = " + v->dump();
    std::string msg = e.what();
    if (!e.path.empty() && msg.rfind(e.path + ": ", 0) == 0) msg = msg.substr(e.path.size() + 2);
    if (where.empty()) throw;
    throw InputError(e.path, msg + " (trial " + std::to_string(id) + ": " + where + ")");
  }
}

uint64_t check_trials(const Sweep& s, IdRange r, uint64_t all_up_to) {
  r.end = std::min(r.end, s.count());
  if (r.begin >= r.end) return 0;
  const uint64_t n = r.end - r.begin;
  if (n <= all_up_to) {
    for (uint64_t id = r.begin; id < r.end; ++id) s.trial(id);
    return n;
  }
  const uint64_t spread = 20000;
  for (uint64_t j = 0; j <= spread; ++j)
    s.trial(r.begin + static_cast<uint64_t>(static_cast<unsigned __int128>(n - 1) * j / spread));
  return spread + 1;
}

Shard parse_shard(const std::string& text) {
  auto bad = [&] { return InputError("--shard", "expected I/N with 0 <= I < N, got \"" + text + "\""); };
  auto slash = text.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == text.size()) throw bad();
  auto number = [&](const std::string& s) {
    if (s.size() > 18 || s.find_first_not_of("0123456789") != std::string::npos) throw bad();
    return std::stoull(s);
  };
  Shard s{number(text.substr(0, slash)), number(text.substr(slash + 1))};
  if (s.count == 0 || s.index >= s.count) throw bad();
  return s;
}

IdRange shard_range(uint64_t n_trials, Shard s) {
  auto cut = [&](uint64_t i) {
    return static_cast<uint64_t>(static_cast<unsigned __int128>(n_trials) * i / s.count);
  };
  return IdRange{cut(s.index), cut(s.index + 1)};
}

}  // namespace stsweep
