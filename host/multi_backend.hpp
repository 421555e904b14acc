// Several backends as one (`stsweep run --devices`, e.g. one CUDA backend per
// GPU). A batch is split into contiguous parts, one per backend, with sizes
// proportional to the backends' weights; the parts run concurrently (one
// std::thread per backend) and their results are concatenated in the batch's
// order. A trial's result depends only on its parameters and the sweep seed,
// never on its batch-mates, so the split does not change any result.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend.hpp"

namespace stsweep {

class MultiBackend final : public Backend {
 public:
  // `parts`: at least one, none null. `labels` (optional, one per part): shown
  // before each part's device, e.g. the CUDA ordinal. `weights` (optional, one
  // per part, > 0): relative shares of a batch; equal when empty.
  explicit MultiBackend(std::vector<std::unique_ptr<Backend>> parts, std::vector<std::string> labels = {},
                        std::vector<double> weights = {});

  // The parts' name ("cuda"); distinct names joined with '+'.
  std::string name() const override;
  // One part: its device. Several: "2 devices: 0: NAME0; 1: NAME1" (without
  // labels: "2 devices: NAME0; NAME1").
  std::string device() const override;
  // Runs the parts concurrently; when any part throws, waits for all, then
  // rethrows the first failing part's exception (in part order).
  std::vector<TrialResult> run(const Batch& batch, const RunOptions& opt) override;
  // The parts' reports, each after its label ("0: ...; 1: ...").
  std::string time_report() const override;

  size_t size() const { return parts_.size(); }

  // Where the parts of n trials begin: size() + 1 offsets, 0 first, n last,
  // non-decreasing; part i is [offsets[i], offsets[i+1]).
  std::vector<size_t> split(size_t n) const;

 private:
  std::vector<std::unique_ptr<Backend>> parts_;
  std::vector<std::string> labels_;
  std::vector<double> cumulative_;  // prefix sums of the weights, normalised to 1 at the end
};

// `--devices LIST`: "all", or a comma list of distinct CUDA ordinals ("0,1,3").
// Throws InputError (path "--devices") on anything else.
struct DeviceList {
  bool all = false;
  std::vector<int> ordinals;  // in the given order; empty when `all`
};
DeviceList parse_device_list(const std::string& text);

}  // namespace stsweep
