// The parameters of one trial (../shared/MODEL.md), typed, in one place.
//
// The sweep layer works on plain JSON objects (dotted keys reach nested
// objects); parse_trial_params() turns one merged JSON object into a typed
// TrialParams and is the only place that knows parameter names, types and
// defaults. Every backend, the results store and the CLI read this struct.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

namespace stsweep {

enum class Activation { linear, relu, tanh };
enum class SpectrumKind { flat, power, geometric };
enum class TeacherKind { oracle, perturbed, trained };
enum class Decomposition { balanced, rotated, scaled, power, latent, input, output, as_trained };
enum class TrainPath { automatic, data, moment };  // "auto" in JSON
enum class Target { linear, nonlinear };           // y = W* x  or  y = A2 phi(A1 z)

struct TeacherParams {
  TeacherKind kind = TeacherKind::oracle;
  double delta = 0.1;    // perturbed: relative clean error
  int n_train = 256;     // trained: size of its own clean training set
  int steps = 2000;      // trained: GD steps
  double lr = 0.05;      // trained: GD rate
  Decomposition decomposition = Decomposition::balanced;
  double scale = 1.0;    // decomposition "scaled": c
  double power = 0.5;    // decomposition "power": p
};

// Most checkpoints a trial may ask for: a results record holds at most this
// many per curve (host/store.cpp), and the sweep check refuses more.
constexpr int kMaxCheckpoints = 1 << 24;
// Hidden layers a network may have (depth L = hidden + 1 <= tm::kMaxLayers = 16,
// the trainer's fixed arrays; host/train.cpp asserts the two agree).
constexpr int kMaxHiddenLayers = 15;

struct TrialParams {
  int d = 32, k = 8, m = 8;
  std::vector<int> hidden{32};  // hidden widths; depth L = hidden.size() + 1
  Activation activation = Activation::linear;
  Target target = Target::linear;
  SpectrumKind spectrum = SpectrumKind::flat;
  double spectrum_p = 1.0;       // power: s_j = j^-p
  double spectrum_kappa = 10.0;  // geometric: condition number
  double noise = 0.5;            // sigma
  double label_noise = 0.0;      // sigma_y
  double lambda = 1.0;
  std::vector<int> matched_layers;  // 1-based hidden layers; empty = all
  TeacherParams teacher;
  int n_train = 16;
  int steps = 2000;
  double lr = 0.05;
  double init_scale = 1e-3;
  int checkpoints = 32;  // at most kMaxCheckpoints
  int n_test = 1000;  // Monte Carlo test set (nonlinear students)
  bool baseline = true;
  TrainPath path = TrainPath::automatic;
  int64_t seed = 0;
  // Where the trial comes from in its sweep file, not a parameter (no effect on
  // the math; to_json leaves it out): the subgrid's "name", or "subgrids[i]"
  // when it has none; empty for the top-level grid. Set by Sweep::trial.
  std::string subgrid;

  int depth() const { return static_cast<int>(hidden.size()) + 1; }
  // Layer widths w[0..L]: d, the hidden widths, m.
  std::vector<int> widths() const {
    std::vector<int> w{d};
    w.insert(w.end(), hidden.begin(), hidden.end());
    w.push_back(m);
    return w;
  }
  bool linear() const { return activation == Activation::linear && target == Target::linear; }
};

// Thrown for every bad input; `path` is the JSON path (e.g. "grid.noise.logspace[2]").
struct InputError : std::runtime_error {
  std::string path;
  InputError(std::string path_, const std::string& msg)
      : std::runtime_error(path_.empty() ? msg : path_ + ": " + msg), path(std::move(path_)) {}
};

// One flattened parameter column, as the results store writes it.
using ParamValue = std::variant<int64_t, double, std::string>;
struct ParamSpec {
  std::string key;      // dotted JSON key, e.g. "teacher.kind"
  std::string column;   // results dataset name, e.g. "teacher_kind"
  char type;            // 'i' int, 'f' float, 's' string, 'b' bool (stored as int)
  std::string doc;      // one line for docs and --help
  bool derived = false; // computed from the others (depth, teacher.label): a column, not settable
};

// All trial parameters in a fixed order (the order of flatten()).
const std::vector<ParamSpec>& param_specs();
// The shortest text that reads back as exactly x (std::to_chars): for messages,
// `list` and hints a user may copy back into a sweep or a filter.
std::string shortest_text(double x);

// The derived teacher_label column: kind and decomposition with the fields each reads.
std::string teacher_label(const TeacherParams& t);
std::vector<ParamValue> flatten(const TrialParams& p);

// The defaults as a JSON object (nested for teacher.*).
nlohmann::json default_params_json();

// Typed parameters from a merged JSON object. `where` prefixes error paths.
// Rejects unknown keys, wrong types and impossible combinations (InputError).
TrialParams parse_trial_params(const nlohmann::json& obj, const std::string& where);
// The two halves of parse_trial_params: each field on its own (names, types,
// ranges of one value) and the checks that combine fields (k <= d, matched
// layers within depth, decomposition vs widths, moment path vs linearity).
// The sweep checks every axis value with the first, every trial with both.
TrialParams parse_trial_fields(const nlohmann::json& obj, const std::string& where);
void check_trial(const TrialParams& p, const std::string& where);
// The teacher's own rules, part of check_trial and called again by set-up
// (host/setup.cpp) for trials built without the sweep's check: as_trained
// needs a trained teacher, a nonlinear target needs a trained teacher, a
// trained nonlinear teacher needs as_trained.
void check_teacher_rules(const TrialParams& p, const std::string& where);

// Parameters back to JSON (round trip of parse_trial_params).
nlohmann::json to_json(const TrialParams& p);

// "unknown parameter "lamda" (did you mean "lambda"? ...)": the message for a key
// that is no parameter, with the closest parameter name when one is close.
std::string unknown_parameter_message(const std::string& key);

// Names of enums, as used in JSON and in the results.
const char* name(Activation);
const char* name(SpectrumKind);
const char* name(TeacherKind);
const char* name(Decomposition);
const char* name(TrainPath);
const char* name(Target);

// Everything that changes array sizes or the code path: trials with equal
// shape keys go into one batch.
struct ShapeKey {
  int d, k, m, n_train, n_test, teacher_n_train;
  std::vector<int> hidden;
  Activation activation;
  Target target;
  bool operator==(const ShapeKey&) const = default;
  bool operator<(const ShapeKey& o) const;
};
ShapeKey shape_key(const TrialParams& p);

// Seeds (MODEL.md "Data"): keys of the counter-based RNG. The data key depends
// on the sweep seed, the trial's `seed` and what defines the data's shape and
// law, never on lambda, noise level, teacher or optimiser settings, so trials
// that differ only in those share data (and noise draws E) and initial weights.
struct TrialKeys {
  uint64_t data;     // U, spectrum draws, z, E, A, label noise, test set
  uint64_t init;     // student initial weights (and twin)
  uint64_t teacher;  // perturbation G, rotation R, teacher training set and init
};
TrialKeys trial_keys(uint64_t sweep_seed, const TrialParams& p);

}  // namespace stsweep
