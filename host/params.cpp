// Trial parameters: names, types, defaults, validation, flattening and seeds.
// The only file that knows parameter names (see params.hpp, docs/SWEEPS.md).
#include "params.hpp"

#include <algorithm>
#include <charconv>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <tuple>

namespace stsweep {

using json = nlohmann::json;

namespace {

// --- enum names -------------------------------------------------------------------
constexpr const char* kActivation[] = {"linear", "relu", "tanh"};
constexpr const char* kSpectrum[] = {"flat", "power", "geometric"};
constexpr const char* kTeacherKind[] = {"oracle", "perturbed", "trained"};
constexpr const char* kDecomposition[] = {"balanced", "rotated", "scaled", "power",
                                          "latent",   "input",   "output", "as_trained"};
constexpr const char* kPath[] = {"auto", "data", "moment"};
constexpr const char* kTarget[] = {"linear", "nonlinear"};

std::string join_path(const std::string& where, const std::string& key) {
  return where.empty() ? key : where + "." + key;
}

std::string describe(const json& v) {
  std::string s = v.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}


int64_t get_int64(const json& v, const std::string& path) {
  if (v.is_number_unsigned()) {
    auto u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw InputError(path, "integer too large: " + describe(v));
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    // Generated axes (linspace) give floats; accept those that are whole numbers.
    double x = v.get<double>();
    if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 9.0e15)
      return static_cast<int64_t>(x);
  }
  throw InputError(path, "expected an integer, got " + describe(v));
}

int get_int(const json& v, const std::string& path) {
  int64_t x = get_int64(v, path);
  if (x > std::numeric_limits<int>::max() || x < std::numeric_limits<int>::min())
    throw InputError(path, "integer out of range: " + describe(v) + " (at most " +
                               std::to_string(std::numeric_limits<int>::max()) + ")");
  return static_cast<int>(x);
}

double get_double(const json& v, const std::string& path) {
  if (!v.is_number()) throw InputError(path, "expected a number, got " + describe(v));
  double x = v.get<double>();
  if (!std::isfinite(x)) throw InputError(path, "expected a finite number");
  return x;
}

bool get_bool(const json& v, const std::string& path) {
  if (!v.is_boolean()) throw InputError(path, "expected true or false, got " + describe(v));
  return v.get<bool>();
}

template <class E, size_t N>
E get_enum(const json& v, const std::string& path, const char* const (&names)[N]) {
  std::string all;
  for (size_t i = 0; i < N; ++i) { all += i ? "|" : ""; all += std::string(names[i]); }
  if (!v.is_string()) throw InputError(path, "expected one of " + all + ", got " + describe(v));
  const auto& s = v.get_ref<const std::string&>();
  for (size_t i = 0; i < N; ++i)
    if (s == names[i]) return static_cast<E>(i);
  throw InputError(path, "expected one of " + all + ", got \"" + s + "\"");
}

// A list of ints; a bare int is a one-element list.
std::vector<int> get_int_list(const json& v, const std::string& path) {
  if (v.is_number()) return {get_int(v, path)};
  if (!v.is_array()) throw InputError(path, "expected a list of integers, got " + describe(v));
  std::vector<int> out;
  for (size_t i = 0; i < v.size(); ++i) out.push_back(get_int(v[i], path + "[" + std::to_string(i) + "]"));
  return out;
}

void require(bool ok, const std::string& path, const std::string& msg) {
  if (!ok) throw InputError(path, msg);
}

void at_least(int64_t x, int64_t lo, const std::string& path) {
  require(x >= lo, path, "must be >= " + std::to_string(lo) + ", got " + std::to_string(x));
}

void teacher_field(TeacherParams& t, const std::string& key, const json& v, const std::string& path) {
  if (key == "kind") {
    t.kind = get_enum<TeacherKind>(v, path, kTeacherKind);
  } else if (key == "delta") {
    t.delta = get_double(v, path);
    require(t.delta >= 0, path, "must be >= 0, got " + shortest_text(t.delta));
  } else if (key == "n_train") {
    t.n_train = get_int(v, path);
    at_least(t.n_train, 1, path);
  } else if (key == "steps") {
    t.steps = get_int(v, path);
    at_least(t.steps, 0, path);
  } else if (key == "lr") {
    t.lr = get_double(v, path);
    require(t.lr > 0, path, "must be > 0, got " + shortest_text(t.lr));
  } else if (key == "decomposition") {
    t.decomposition = get_enum<Decomposition>(v, path, kDecomposition);
  } else if (key == "scale") {
    t.scale = get_double(v, path);
    require(t.scale > 0, path, "must be > 0, got " + shortest_text(t.scale));
  } else if (key == "power") {
    t.power = get_double(v, path);
  } else if (key == "label") {
    throw InputError(path, "teacher.label is derived from the other teacher fields (a results column); set those "
                           "instead");
  } else {
    throw InputError(path, "unknown teacher parameter \"" + key +
                               "\" (known: kind, delta, n_train, steps, lr, decomposition, scale, power)");
  }
}

void field(TrialParams& p, const std::string& key, const json& v, const std::string& path) {
  if (key == "d") {
    p.d = get_int(v, path);
    at_least(p.d, 1, path);
  } else if (key == "k") {
    p.k = get_int(v, path);
    at_least(p.k, 1, path);
  } else if (key == "m") {
    p.m = get_int(v, path);
    at_least(p.m, 1, path);
  } else if (key == "hidden") {
    p.hidden = get_int_list(v, path);
    require(!p.hidden.empty(), path, "needs at least one hidden layer (depth L >= 2)");
    require(p.hidden.size() <= static_cast<size_t>(kMaxHiddenLayers), path,
            "at most " + std::to_string(kMaxHiddenLayers) + " hidden layers (depth L <= " +
                std::to_string(kMaxHiddenLayers + 1) + "), got " + std::to_string(p.hidden.size()));
    for (size_t i = 0; i < p.hidden.size(); ++i) at_least(p.hidden[i], 1, path + "[" + std::to_string(i) + "]");
  } else if (key == "activation") {
    p.activation = get_enum<Activation>(v, path, kActivation);
  } else if (key == "target") {
    p.target = get_enum<Target>(v, path, kTarget);
  } else if (key == "spectrum") {
    p.spectrum = get_enum<SpectrumKind>(v, path, kSpectrum);
  } else if (key == "spectrum_p") {
    p.spectrum_p = get_double(v, path);
    require(p.spectrum_p >= 0, path, "must be >= 0, got " + shortest_text(p.spectrum_p));
  } else if (key == "spectrum_kappa") {
    p.spectrum_kappa = get_double(v, path);
    require(p.spectrum_kappa >= 1, path, "condition number must be >= 1, got " + shortest_text(p.spectrum_kappa));
  } else if (key == "noise") {
    p.noise = get_double(v, path);
    require(p.noise >= 0, path, "must be >= 0, got " + shortest_text(p.noise));
  } else if (key == "label_noise") {
    p.label_noise = get_double(v, path);
    require(p.label_noise >= 0, path, "must be >= 0, got " + shortest_text(p.label_noise));
  } else if (key == "lambda") {
    p.lambda = get_double(v, path);
    require(p.lambda >= 0, path, "must be >= 0, got " + shortest_text(p.lambda));
  } else if (key == "matched_layers") {
    p.matched_layers = get_int_list(v, path);
  } else if (key == "teacher") {
    if (!v.is_object()) throw InputError(path, "expected an object, got " + describe(v));
    for (auto it = v.begin(); it != v.end(); ++it) teacher_field(p.teacher, it.key(), it.value(), path + "." + it.key());
  } else if (key == "n_train") {
    p.n_train = get_int(v, path);
    at_least(p.n_train, 1, path);
  } else if (key == "steps") {
    p.steps = get_int(v, path);
    at_least(p.steps, 0, path);
  } else if (key == "lr") {
    p.lr = get_double(v, path);
    require(p.lr > 0, path, "must be > 0, got " + shortest_text(p.lr));
  } else if (key == "init_scale") {
    p.init_scale = get_double(v, path);
    require(p.init_scale >= 0, path, "must be >= 0, got " + shortest_text(p.init_scale));
  } else if (key == "checkpoints") {
    p.checkpoints = get_int(v, path);
    at_least(p.checkpoints, 2, path);
    require(p.checkpoints <= kMaxCheckpoints, path,
            "must be <= " + std::to_string(kMaxCheckpoints) + " (a results record's curves), got " +
                std::to_string(p.checkpoints));
  } else if (key == "n_test") {
    p.n_test = get_int(v, path);
    at_least(p.n_test, 1, path);
  } else if (key == "baseline") {
    p.baseline = get_bool(v, path);
  } else if (key == "path") {
    p.path = get_enum<TrainPath>(v, path, kPath);
  } else if (key == "seed") {
    p.seed = get_int64(v, path);
  } else if (key == "depth") {
    throw InputError(path, "depth is derived from hidden (L = len(hidden) + 1); set hidden instead");
  } else {
    throw InputError(path, unknown_parameter_message(key));
  }
}

std::string int_list_text(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) { s += i ? "," : ""; s += std::to_string(v[i]); }
  return s;
}

// --- hashing for seeds ----------------------------------------------------------------
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
struct KeyChain {
  uint64_t h;
  explicit KeyChain(uint64_t tag) : h(splitmix64(tag)) {}
  KeyChain& add(uint64_t v) {
    h = splitmix64(h ^ splitmix64(v + 0x632be59bd9b4e019ULL));
    return *this;
  }
  KeyChain& add(int64_t v) { return add(static_cast<uint64_t>(v)); }
  KeyChain& add(int v) { return add(static_cast<uint64_t>(static_cast<int64_t>(v))); }
  KeyChain& add(double v) { return add(std::bit_cast<uint64_t>(v == 0.0 ? 0.0 : v)); }
  KeyChain& add(const std::vector<int>& v) {
    add(static_cast<uint64_t>(v.size()));
    for (int x : v) add(x);
    return *this;
  }
};
// Domain tags so that the three streams never coincide.
constexpr uint64_t kTagData = 0x64617461ULL;        // "data"
constexpr uint64_t kTagInit = 0x696e6974ULL;        // "init"
constexpr uint64_t kTagTeacher = 0x7465616368ULL;   // "teach"

}  // namespace

// --- names ------------------------------------------------------------------------------
const char* name(Activation a) { return kActivation[static_cast<int>(a)]; }
const char* name(SpectrumKind s) { return kSpectrum[static_cast<int>(s)]; }
const char* name(TeacherKind t) { return kTeacherKind[static_cast<int>(t)]; }
const char* name(Decomposition d) { return kDecomposition[static_cast<int>(d)]; }
const char* name(TrainPath p) { return kPath[static_cast<int>(p)]; }
const char* name(Target t) { return kTarget[static_cast<int>(t)]; }

std::string shortest_text(double x) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, r.ptr);
}

// --- specs and flattening -----------------------------------------------------------
const std::vector<ParamSpec>& param_specs() {
  static const std::vector<ParamSpec> specs = {
      {"d", "d", 'i', "input dimension"},
      {"k", "k", 'i', "signal rank (k <= d)"},
      {"m", "m", 'i', "output dimension"},
      {"hidden", "hidden", 's', "hidden widths h_1..h_{L-1}, stored as text \"32,32\""},
      {"depth", "depth", 'i', "derived: number of layers L = len(hidden) + 1 (not settable)", true},
      {"activation", "activation", 's', "student (and teacher) nonlinearity: linear|relu|tanh"},
      {"target", "target", 's', "target function: linear (y = W* x) | nonlinear (y = A2 phi(A1 z))"},
      {"spectrum", "spectrum", 's', "latent spectrum: flat|power|geometric (normalised to sum k)"},
      {"spectrum_p", "spectrum_p", 'f', "power spectrum exponent: s_j = j^-p"},
      {"spectrum_kappa", "spectrum_kappa", 'f', "geometric spectrum condition number"},
      {"noise", "noise", 'f', "input noise std sigma (student sees x + sigma eps)"},
      {"label_noise", "label_noise", 'f', "label noise std sigma_y"},
      {"lambda", "lambda", 'f', "feature-matching weight (0 = baseline)"},
      {"matched_layers", "matched_layers", 's', "matched hidden layers (1-based), text \"1,2\"; \"all\" when empty"},
      {"teacher.kind", "teacher_kind", 's', "teacher: oracle|perturbed|trained"},
      {"teacher.delta", "teacher_delta", 'f', "perturbed teacher: relative clean error"},
      {"teacher.n_train", "teacher_n_train", 'i', "trained teacher: size of its clean training set"},
      {"teacher.steps", "teacher_steps", 'i', "trained teacher: GD steps"},
      {"teacher.lr", "teacher_lr", 'f', "trained teacher: GD learning rate"},
      {"teacher.decomposition", "teacher_decomposition", 's',
       "how W_t is split into layers: balanced|rotated|scaled|power|latent|input|output|as_trained"},
      {"teacher.scale", "teacher_scale", 'f', "decomposition scaled: c (W1 <- c W1, W2 <- W2 / c)"},
      {"teacher.power", "teacher_power", 'f', "decomposition power: p (W1 = S^p Q^T, W2 = P S^(1-p))"},
      {"teacher.label", "teacher_label", 's',
       "derived: the teacher in words, only the fields it reads, e.g. \"perturbed(0.5) power(0.25)\", "
       "\"trained(n_train=64, steps=2000, lr=0.05) as_trained\" (not settable)", true},
      {"n_train", "n_train", 'i', "student training samples N"},
      {"steps", "steps", 'i', "student GD steps T"},
      {"lr", "lr", 'f', "student learning rate eta"},
      {"init_scale", "init_scale", 'f', "initialisation scale alpha: W_l ~ N(0, alpha^2 / fan_in)"},
      {"checkpoints", "checkpoints", 'i', "number of log-spaced checkpoints (incl. 0 and T)"},
      {"n_test", "n_test", 'i', "Monte Carlo test set size (nonlinear students)"},
      {"baseline", "baseline", 'b', "also train the lambda = 0 twin from the same data and init"},
      {"path", "path", 's', "training path: auto|data|moment (moment: linear networks only)"},
      {"seed", "seed", 'i', "trial seed; with the sweep seed it keys data and init"},
      {"subgrid", "subgrid", 's',
       "derived: the subgrid of the sweep file the trial comes from, its name or \"subgrids[i]\"; empty for the "
       "top-level grid (not settable)", true},
  };
  return specs;
}

// The teacher as one word for grouping and plots: the kind and the
// decomposition with only the fields each reads (the other teacher columns
// hold defaults that mean nothing for this teacher; a review's summary by
// teacher_decomposition pooled power(0) with power(1)).
std::string teacher_label(const TeacherParams& t) {
  std::string kind = name(t.kind);
  if (t.kind == TeacherKind::perturbed) kind += "(" + shortest_text(t.delta) + ")";
  if (t.kind == TeacherKind::trained)
    kind += "(n_train=" + std::to_string(t.n_train) + ", steps=" + std::to_string(t.steps) + ", lr=" + shortest_text(t.lr) + ")";
  std::string dec = name(t.decomposition);
  if (t.decomposition == Decomposition::scaled) dec += "(" + shortest_text(t.scale) + ")";
  if (t.decomposition == Decomposition::power) dec += "(" + shortest_text(t.power) + ")";
  return kind + " " + dec;
}

std::vector<ParamValue> flatten(const TrialParams& p) {
  const auto& t = p.teacher;
  return {
      int64_t{p.d}, int64_t{p.k}, int64_t{p.m}, int_list_text(p.hidden), int64_t{p.depth()},
      std::string(name(p.activation)), std::string(name(p.target)), std::string(name(p.spectrum)),
      p.spectrum_p, p.spectrum_kappa, p.noise, p.label_noise, p.lambda,
      p.matched_layers.empty() ? std::string("all") : int_list_text(p.matched_layers),
      std::string(name(t.kind)), t.delta, int64_t{t.n_train}, int64_t{t.steps}, t.lr,
      std::string(name(t.decomposition)), t.scale, t.power, teacher_label(t),
      int64_t{p.n_train}, int64_t{p.steps}, p.lr, p.init_scale, int64_t{p.checkpoints},
      int64_t{p.n_test}, int64_t{p.baseline ? 1 : 0}, std::string(name(p.path)), p.seed, p.subgrid,
  };
}

json to_json(const TrialParams& p) {
  const auto& t = p.teacher;
  json j;
  j["d"] = p.d;
  j["k"] = p.k;
  j["m"] = p.m;
  j["hidden"] = p.hidden;
  j["activation"] = name(p.activation);
  j["target"] = name(p.target);
  j["spectrum"] = name(p.spectrum);
  j["spectrum_p"] = p.spectrum_p;
  j["spectrum_kappa"] = p.spectrum_kappa;
  j["noise"] = p.noise;
  j["label_noise"] = p.label_noise;
  j["lambda"] = p.lambda;
  j["matched_layers"] = p.matched_layers;
  j["teacher"] = {{"kind", name(t.kind)},   {"delta", t.delta},
                  {"n_train", t.n_train},   {"steps", t.steps},
                  {"lr", t.lr},             {"decomposition", name(t.decomposition)},
                  {"scale", t.scale},       {"power", t.power}};
  j["n_train"] = p.n_train;
  j["steps"] = p.steps;
  j["lr"] = p.lr;
  j["init_scale"] = p.init_scale;
  j["checkpoints"] = p.checkpoints;
  j["n_test"] = p.n_test;
  j["baseline"] = p.baseline;
  j["path"] = name(p.path);
  j["seed"] = p.seed;
  return j;
}

json default_params_json() { return to_json(TrialParams{}); }

// --- parsing ---------------------------------------------------------------------------
TrialParams parse_trial_fields(const json& obj, const std::string& where) {
  if (!obj.is_object()) throw InputError(where, "expected an object of parameters, got " + describe(obj));
  TrialParams p;
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    const std::string& key = it.key();
    std::string path = join_path(where, key);
    auto dot = key.find('.');
    if (dot != std::string::npos) {  // dotted key, e.g. "teacher.kind"
      if (key.compare(0, dot, "teacher") != 0)
        throw InputError(path, unknown_parameter_message(key) + "; only teacher.* parameters are nested");
      teacher_field(p.teacher, key.substr(dot + 1), it.value(), path);
    } else {
      field(p, key, it.value(), path);
    }
  }
  return p;
}

void check_teacher_rules(const TrialParams& p, const std::string& where) {
  auto at = [&](const char* key) { return join_path(where, key); };
  const auto& t = p.teacher;
  require(t.decomposition != Decomposition::as_trained || t.kind == TeacherKind::trained,
          at("teacher.decomposition"), "as_trained needs teacher.kind = trained");
  require(p.target == Target::linear || t.kind == TeacherKind::trained, at("teacher.kind"),
          "the nonlinear target has no linear map W*; use teacher.kind = trained");
  require(t.kind != TeacherKind::trained || p.activation == Activation::linear ||
              t.decomposition == Decomposition::as_trained,
          at("teacher.decomposition"),
          "a trained nonlinear teacher has no linear map to re-factorise; use teacher.decomposition = as_trained");
}

void check_trial(const TrialParams& p, const std::string& where) {
  auto at = [&](const char* key) { return join_path(where, key); };
  require(p.k <= p.d, at("k"),
          "signal rank k = " + std::to_string(p.k) + " must be <= d = " + std::to_string(p.d));
  const int L = p.depth();
  std::vector<int> seen;
  for (int l : p.matched_layers) {
    require(l >= 1 && l <= L - 1, at("matched_layers"),
            "layer " + std::to_string(l) + " is not a hidden layer (1.." + std::to_string(L - 1) + ")");
    require(std::find(seen.begin(), seen.end(), l) == seen.end(), at("matched_layers"),
            "layer " + std::to_string(l) + " listed twice");
    seen.push_back(l);
  }
  // A linear student's loss is a function of the data's moments whatever made
  // Y, so a nonlinear target is fine (auto takes the moment path there too).
  require(p.path != TrainPath::moment || p.activation == Activation::linear, at("path"),
          "the moment path needs a linear student (activation linear)");
  const auto& t = p.teacher;
  // Until session 13 only set-up checked the teacher's rules: such trials passed
  // validate and each failed at run time.
  check_teacher_rules(p, where);
  // A decomposition the widths cannot hold is an input error (MODEL.md), at
  // lambda = 0 too: set-up builds the teacher's features for every trial (a
  // lambda = 0 row and the twin report feature_loss against them). Until
  // session 13 lambda = 0 was let through here and failed at run time.
  {
    int hmin = *std::min_element(p.hidden.begin(), p.hidden.end());
    auto need = [&](int w, const std::string& what) {
      require(hmin >= w, at("teacher.decomposition"),
              std::string(name(t.decomposition)) + " needs every hidden width >= " + what + " = " +
                  std::to_string(w) + ", but hidden = [" + int_list_text(p.hidden) + "]");
    };
    switch (t.decomposition) {
      case Decomposition::latent: need(p.k, "k"); break;
      case Decomposition::input: need(p.d, "d"); break;
      case Decomposition::output: need(p.m, "m"); break;
      case Decomposition::balanced:
      case Decomposition::rotated:
      case Decomposition::scaled:
      case Decomposition::power:
        // W_t = (A + delta G) U^T has rank min(m, k) almost surely. A trained
        // teacher's map factors through its own widths, so it always fits.
        if (t.kind != TeacherKind::trained && p.target == Target::linear)
          need(std::min(p.m, p.k), "rank min(m, k)");
        break;
      case Decomposition::as_trained: break;
    }
  }
}

TrialParams parse_trial_params(const json& obj, const std::string& where) {
  TrialParams p = parse_trial_fields(obj, where);
  check_trial(p, where);
  return p;
}

// --- shapes and seeds -------------------------------------------------------------------
bool ShapeKey::operator<(const ShapeKey& o) const {
  auto tie = [](const ShapeKey& s) {
    return std::tie(s.d, s.k, s.m, s.n_train, s.n_test, s.teacher_n_train, s.hidden, s.activation, s.target);
  };
  return tie(*this) < tie(o);
}

ShapeKey shape_key(const TrialParams& p) {
  return ShapeKey{p.d, p.k, p.m, p.n_train, p.n_test, p.teacher.n_train, p.hidden, p.activation, p.target};
}

TrialKeys trial_keys(uint64_t sweep_seed, const TrialParams& p) {
  KeyChain data(kTagData);
  data.add(sweep_seed).add(p.seed).add(p.d).add(p.k).add(p.m);
  data.add(static_cast<int>(p.spectrum));
  // A spectrum's parameter only enters when that spectrum uses it.
  data.add(p.spectrum == SpectrumKind::power ? p.spectrum_p : 0.0);
  data.add(p.spectrum == SpectrumKind::geometric ? p.spectrum_kappa : 0.0);
  // n_test only sizes the Monte Carlo test set, whose samples are their own
  // streams (test_z, test_e): the key holds 1000, n_test's default, whatever the
  // trial's n_test, so that an axis over n_test keeps the training data (until
  // session 13 the key held n_test, so each n_test had other X, U and W*; the
  // constant keeps the data of every trial with the default as it was).
  constexpr int kKeyNTest = 1000;
  data.add(static_cast<int>(p.target)).add(p.n_train).add(kKeyNTest);

  KeyChain init(kTagInit);
  init.add(data.h).add(p.hidden).add(static_cast<int>(p.activation));

  KeyChain teacher(kTagTeacher);
  teacher.add(data.h).add(p.hidden).add(p.teacher.n_train);
  return TrialKeys{data.h, init.h, teacher.h};
}

namespace {
// Edit distance (insertions, deletions, substitutions), for suggestions.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}
}  // namespace

std::string unknown_parameter_message(const std::string& key) {
  for (const auto& spec : param_specs())
    if (spec.derived && spec.key == key)
      return key + " is derived (" + (spec.doc.rfind("derived: ", 0) == 0 ? spec.doc.substr(9) : spec.doc) +
             "): a results column, not a parameter to set";
  std::string best;
  size_t best_d = std::string::npos;
  for (const auto& spec : param_specs()) {
    if (spec.derived) continue;  // not settable
    const size_t d = edit_distance(key, spec.key);
    if (d < best_d) best_d = d, best = spec.key;
  }
  std::string msg = "unknown parameter \"" + key + "\"";
  // Close enough to be a typo: at most 2 edits, and fewer than half the name.
  if (!best.empty() && best_d <= 2 && 2 * best_d < key.size()) msg += " (did you mean \"" + best + "\"?)";
  return msg + "; the parameters are listed in docs/SWEEPS.md";
}

}  // namespace stsweep
