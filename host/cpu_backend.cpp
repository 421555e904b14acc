// The CPU backend: the reference. Trials of a batch run in parallel, one trial
// per worker at a time; each trial's arithmetic is independent of the others,
// so results are bit-identical whatever the thread count or batch composition.
#include <algorithm>
#include <exception>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "backend.hpp"
#include "problem.hpp"
#include "train.hpp"

namespace stsweep {
namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const auto p = line.find(':');
      if (p != std::string::npos) {
        auto s = line.substr(p + 1);
        const auto b = s.find_first_not_of(" \t");
        return b == std::string::npos ? s : s.substr(b);
      }
    }
  return "CPU";
}

// Trial i of the batch `share` covers.
TrialResult run_one(int64_t id, size_t i, const RunOptions& opt, SetupShare& share) {
  TrialResult r;
  try {
    const TrialProblem pr = share.setup(i);
    r = opt.precision == Precision::f64 ? train_trial<double>(pr) : train_trial<float>(pr);
  } catch (const InputError& e) {
    r = TrialResult{};
    r.status = Status::failed;
    r.message = std::string("input error: ") + e.what();
  } catch (const std::exception& e) {
    r = TrialResult{};
    r.status = Status::failed;
    r.message = e.what();
  } catch (...) {
    r = TrialResult{};
    r.status = Status::failed;
    r.message = "unknown exception";
  }
  r.trial = id;
  return r;
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : threads_(thread_count(threads)) {}
  std::string name() const override { return "cpu"; }
  std::string device() const override {
    return cpu_model() + " (" + std::to_string(threads_) + " threads)";
  }
  std::vector<TrialResult> run(const Batch& batch, const RunOptions& opt) override {
    const size_t n = batch.trials.size();
    std::vector<TrialResult> out(n);
    // Trials that share a trained teacher wait for its training: each
    // teacher's first trial starts before them (setup_order). Trials that
    // share a whole problem (SetupShare) build it once.
    SetupShare share(batch.trials, 0, n, opt.sweep_seed);
    for_each_in_setup_order(batch.trials, 0, n, opt.sweep_seed, opt.threads > 0 ? opt.threads : threads_,
                            [&](size_t i) {
                              const int64_t id = i < batch.ids.size() ? batch.ids[i] : static_cast<int64_t>(i);
                              out[i] = run_one(id, i, opt, share);
                            },
                            &share);
    return out;
  }

 private:
  int threads_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const RunOptions& opt) {
  return std::make_unique<CpuBackend>(opt.threads);
}

}  // namespace stsweep
