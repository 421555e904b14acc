// A sweep file (docs/SWEEPS.md) and its lazy expansion into trials.
//
// Trial i is decoded from its index: subgrids are blocks of consecutive ids
// (offsets), and inside a block the id is a mixed-radix number over the
// block's axes (grid axes and zip groups; the last axis varies fastest).
// `exclude` and `samples` are handled without materialising the sweep.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "params.hpp"

namespace stsweep {

struct AxisInfo {
  std::string name;           // dotted key, or "a+b" for a zip group
  uint64_t size = 0;
  std::vector<std::string> preview;  // first values, as JSON text
  int subgrid = -1;           // -1: top level
  std::string subgrid_label;  // its subgrid column: the name, or "subgrids[i]"
};

class Sweep {
 public:
  // Parse and validate; throws InputError naming the JSON path (syntax errors
  // carry line and column). Nothing is expanded here.
  static Sweep from_file(const std::string& path);
  static Sweep from_text(const std::string& text, const std::string& source = "<string>");

  const std::string& name() const;
  const std::string& description() const;
  uint64_t seed() const;
  const std::string& text() const;   // the file verbatim
  std::string hash() const;          // hex digest of the canonical JSON
  const nlohmann::json& json() const;

  uint64_t count() const;            // trials after exclude
  // The exclude entries that drop no trial: validate and run warn of them.
  struct UnmatchedExclude {
    std::string path;     // "exclude[1]", or "subgrids[0].exclude[2]" for a subgrid's own
    std::string entry;    // "key = value, ..."
    std::string subgrid;  // "subgrids[0]" for a subgrid's own entry, "" for a global one
  };
  const std::vector<UnmatchedExclude>& unmatched_exclude() const;
  std::vector<AxisInfo> axes() const;

  // The merged parameter object and typed parameters of trial `id` (0 <= id < count()).
  nlohmann::json trial_json(uint64_t id) const;
  TrialParams trial(uint64_t id) const;

  struct Impl;
 private:
  std::shared_ptr<const Impl> impl_;
};

// Shard I of N (0-based): the contiguous id range [begin, end). Together the N
// shards are the sweep, each trial exactly once.
struct Shard {
  uint64_t index = 0, count = 1;
};
Shard parse_shard(const std::string& text);  // "I/N"; InputError on bad text
struct IdRange {
  uint64_t begin = 0, end = 0;
};
IdRange shard_range(uint64_t n_trials, Shard s);

// Decodes trials of `r` (clipped to the sweep) so that a value that does not
// combine (k > d, ...) is an InputError before anything runs: every one when
// there are at most `all_up_to`, else an even spread of 20001 including both
// ends. Returns how many it checked. `validate` and `run` call it.
uint64_t check_trials(const Sweep& s, IdRange r, uint64_t all_up_to = 200000);

}  // namespace stsweep
