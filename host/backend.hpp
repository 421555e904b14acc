// A backend trains batches of trials of equal shape.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "params.hpp"
#include "result.hpp"

namespace stsweep {

enum class Precision { f32, f64 };

struct Batch {
  std::vector<int64_t> ids;          // trial ids
  std::vector<TrialParams> trials;   // same ShapeKey for all
};

struct RunOptions {
  uint64_t sweep_seed = 0;
  Precision precision = Precision::f32;
  int threads = 0;  // 0: all cores
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;    // "cpu", "cuda"
  virtual std::string device() const = 0;  // e.g. "AMD EPYC (2 threads)"
  // Fills one result per trial, in order. A diverging trial is a result.
  virtual std::vector<TrialResult> run(const Batch& batch, const RunOptions& opt) = 0;
  // Where the time of every run() so far went, one line for `stsweep run` to
  // print at the end; empty when there is nothing to add to the run's own
  // figures (the CPU backend). The CUDA backend: host set-up against device
  // training, evaluation and teachers, and its waves.
  virtual std::string time_report() const { return ""; }
};

std::unique_ptr<Backend> make_cpu_backend(const RunOptions& opt);
// nullptr with `why` set when no usable GPU (or built without CUDA). `device`:
// the CUDA device ordinal (0 .. cuda_device_count() - 1).
std::unique_ptr<Backend> make_cuda_backend(const RunOptions& opt, std::string* why, int device = 0);
// Usable CUDA devices (0 without CUDA or without a GPU; never throws).
int cuda_device_count();

}  // namespace stsweep
