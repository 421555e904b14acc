// One trial, set up and ready to train: the contract between the set-up code
// (host/setup.cpp: data, teacher, decomposition, closed-form risks; all in
// float64 on the host) and every trainer (host/train_cpu.cpp, kernels/*.cu).
//
// Matrices are row-major, samples are columns (X is d x N), as in MODEL.md.
// Layer l (1..L) maps width w[l-1] to w[l]; w[0] = d, w[L] = m.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "params.hpp"

namespace stsweep {

struct Matrix {
  int rows = 0, cols = 0;
  std::vector<double> a;  // row-major
  Matrix() = default;
  Matrix(int r, int c) : rows(r), cols(c), a(static_cast<size_t>(r) * c, 0.0) {}
  double& operator()(int i, int j) { return a[static_cast<size_t>(i) * cols + j]; }
  double operator()(int i, int j) const { return a[static_cast<size_t>(i) * cols + j]; }
};

struct SharedMoments;  // host/train.hpp

struct TrialProblem {
  TrialParams params;
  int L = 2;
  std::vector<int> w;          // widths w[0..L]
  std::vector<int> matched;    // matched hidden layers (1..L-1), ascending; kept when lambda = 0
                               // (the twin and lambda = 0 rows report their feature loss)
  // Student training data (noisy inputs, labels) and the teacher's features on
  // the CLEAN inputs: feature[l] is w[l] x N for l in matched (others empty).
  Matrix X, Xn, Y;
  std::vector<Matrix> feature;  // size L (index 0 unused)
  // (The moment path's moments are formed from Xn, Y and feature by
  // trial_moments (host/train.hpp) for the trials that train on them only.)
  // Set by SetupShare on a problem several trials share (null otherwise): the
  // copies hold the same one, so trial_moments forms their moments once. A
  // problem that has it must not be changed (its moments would be stale).
  std::shared_ptr<SharedMoments> shared_moments;
  // Initial student weights W[l] (w[l] x w[l-1]), l = 1..L (index 0 unused);
  // the twin starts from the same weights.
  std::vector<Matrix> W0;
  // Exact risk of a linear end-to-end map W_e (m x d):
  //   R = ||(W_e - W*) Mhalf||_F^2 + sigma^2 ||W_e||_F^2 + m sigma_y^2,  Mhalf = U diag(s)^1/2 (d x k).
  Matrix Wstar, Mhalf;
  double sigma = 0, sigma_y = 0;
  // Closed forms computed at set-up (float64).
  double bayes_risk = 0, interp_risk = 0, teacher_clean_risk = 0;
  // Nonlinear students: Monte Carlo test set (noisy inputs, clean targets).
  Matrix Xtest, Ytest;
  // Teacher: its layers (for export), end-to-end clean map W_t.
  std::vector<Matrix> teacher_W;  // index 1..L
  Matrix Wt, U;
  std::vector<double> spectrum;
  // Checkpoint steps: 0 and T always, log-spaced between, strictly increasing.
  std::vector<int64_t> checkpoints;
};

// Builds the problem of one trial (throws InputError for a decomposition the
// widths cannot hold). Deterministic in (sweep_seed, params).
TrialProblem setup_trial(const TrialParams& p, uint64_t sweep_seed);

// Trials whose parameters differ only in what training reads (kSetupIgnores)
// have the same problem but for `params` and `checkpoints`. A SetupShare
// covers the trials [lo, hi) of one batch: a problem two or more of them have
// is built once, by the first trial that asks, and copied for the others (a
// trial asking while it is built waits for it); it is dropped when its last
// trial has taken it. A copy has the bits a new build has (SetupShare tests).
// The problems kept at once are held to a budget (`stsweep run
// --setup-cache-mb`, default 512; reset_setup_cache; 0 turns sharing off):
// past it, a problem is not kept and its other trials build their own. In the
// standard GPU grid (4 lambdas) three set-ups of four are copies. The CPU
// backend shares within a batch, the CUDA backend within a batch across its
// waves. Thread-safe; every trial of the range is set up once.
inline constexpr const char* kSetupIgnores[] = {"lambda", "lr", "steps", "checkpoints", "baseline", "path"};
constexpr int kSetupCacheDefaultMb = 512;
class SetupShare {
 public:
  // Reads every trial's problem_recipe once; `trials` must outlive the share.
  SetupShare(const std::vector<TrialParams>& trials, size_t lo, size_t hi, uint64_t sweep_seed);
  ~SetupShare();
  SetupShare(const SetupShare&) = delete;
  SetupShare& operator=(const SetupShare&) = delete;
  // setup_trial(trials[i], sweep_seed), built or copied; i in [lo, hi), each once.
  TrialProblem setup(size_t i);
  // Whether trial i will take a copy of an earlier trial's problem (setup_order
  // sets it up after the trials that build).
  bool copies(size_t i) const;

 private:
  struct Impl;
  const std::vector<TrialParams>& trials_;
  size_t lo_;
  uint64_t seed_;
  std::unique_ptr<Impl> impl_;  // null: nothing to share (or sharing off)
};
// kSetupIgnores as prose ("lambda, lr, ... or path"), for messages and help.
std::string setup_ignores_text();
// The key of that sharing: the sweep seed and every parameter but kSetupIgnores.
std::string problem_recipe(const TrialParams& p, uint64_t sweep_seed);
// Process totals of the SetupShares since reset_setup_cache.
struct SetupCacheStats {
  long long built = 0;    // problems built: one per trial that did not take a copy (shared or its own)
  long long reused = 0;   // trials that took a copy
  long long evicted = 0;  // problems not kept for the budget (their other trials built their own)
  long long moments_reused = 0;  // moment-path trials that took a shared problem's moments (trial_moments)
  size_t bytes = 0;       // most bytes one SetupShare kept at once
};
SetupCacheStats setup_cache_stats();
void count_moments_reused();  // trial_moments, for setup_cache_stats
// Zeroes the totals and sets the budget of the SetupShares made after it (0: off).
void reset_setup_cache(size_t capacity_bytes);

// Trained teachers (teacher.kind = trained) are kept per process and reused by
// every trial whose teacher training reads the same inputs (seed, data law,
// widths, activation, label noise, teacher.n_train, teacher.steps,
// teacher.lr): a sweep over noise, lambda or the decomposition trains each
// teacher once. Reuse gives the same bits as training again. The budget is
// `stsweep run --teacher-cache-mb` (default 512; 0 turns reuse off); least
// recently used teachers go first.
constexpr int kTeacherCacheDefaultMb = 512;
struct TeacherCacheStats {
  long long trained = 0;  // trainings run (or running)
  long long reused = 0;   // trials that took a kept teacher
  long long evicted = 0;  // teachers dropped for the budget
  size_t bytes = 0;       // kept now
  double train_seconds = 0;  // wall time of the trainings, summed over the threads
  long long elsewhere = 0;  // teachers trained by a backend (put_trained_teacher), not by set-up
};
TeacherCacheStats teacher_cache_stats();
// Drops every kept teacher, zeroes the counts and sets the budget (0: off).
void reset_teacher_cache(size_t capacity_bytes);

// A trained teacher's training, for a trainer other than set-up's own (the
// CUDA backend trains a wave's new teachers on the device, many per launch):
// `steps` steps of float64 full-batch GD at `lr` on (X, Y) from W0, on the
// moment path when `moment`: the loop and path choice of train_plain_f64
// (host/train.hpp), whose result must be handed back with
// put_trained_teacher.
struct TeacherTraining {
  std::string recipe;        // trained_teacher_recipe of the trials it serves
  std::vector<int> w;        // widths d, hidden..., m
  Activation act = Activation::linear;
  Matrix X, Y;               // its clean training set, d x n_train and m x n_train
  std::vector<Matrix> W0;    // initial weights, index 1..L
  int steps = 0;
  double lr = 0;
  bool moment = false;       // the path train_plain_f64's `automatic` takes
};
// The teachers trials [lo, hi) need that the cache neither holds nor is
// training, one per recipe, in batch order; built on `threads` threads. A
// trial whose teacher cannot be built (bad input) is skipped: its set-up
// reports the error.
std::vector<TeacherTraining> teachers_to_train(const std::vector<TrialParams>& trials, size_t lo, size_t hi,
                                               uint64_t sweep_seed, int threads);
// Hands the cache the result of a TeacherTraining (W: index 1..L; ok = false:
// it diverged). The entry is pinned: the budget does not drop it until
// unpin_teachers names it, so the trials it was trained for find it at their
// set-up whatever --teacher-cache-mb says. Counted in `elsewhere`.
void put_trained_teacher(const std::string& recipe, std::vector<Matrix> W, bool ok);
// Ends the pins of put_trained_teacher (one per call and recipe); the budget
// applies again.
void unpin_teachers(const std::vector<std::string>& recipes);
// The recipes a backend pinned for one wave, unpinned when it goes out of
// scope (also when the wave's set-up throws).
struct PinnedTeachers {
  std::vector<std::string> recipes;
  PinnedTeachers() = default;
  PinnedTeachers(const PinnedTeachers&) = delete;
  PinnedTeachers& operator=(const PinnedTeachers&) = delete;
  ~PinnedTeachers() { unpin_teachers(recipes); }
};

// Everything a trial's trained teacher depends on, as bytes: trials with equal
// recipes share their teacher. Empty when the teacher is not trained.
std::string trained_teacher_recipe(const TrialParams& p, uint64_t sweep_seed);

// The order in which threads should set up trials [lo, hi) of a batch: first
// every trial that neither needs a trained teacher an earlier trial of the
// range needs nor takes a copy of an earlier trial's problem (`share`, when
// the trials are set up through one: SetupShare::copies), so the first trial
// of each teacher and of each problem; then the others, each part in batch
// order. Trials that share a teacher or a problem are often neighbours (noise
// and lambda the fastest axes); set up in batch order, all threads but one
// would wait for the same teacher or problem, and they would be built one at
// a time.
std::vector<size_t> setup_order(const std::vector<TrialParams>& trials, size_t lo, size_t hi,
                                uint64_t sweep_seed, const SetupShare* share = nullptr);
// Calls f(i) once for every trial i in [lo, hi), on min(threads, hi - lo)
// threads (this one when that is 1 or less), taking the trials in setup_order.
// f should not throw (the backends catch a trial's errors into its result):
// an exception stops the other threads taking trials and comes back here, but
// a thread waiting for a shared teacher or set-up the thrower was building
// would get that exception too. The CPU backend (set-up and training) and the CUDA plan
// (set-up) run their batches through it.
void for_each_in_setup_order(const std::vector<TrialParams>& trials, size_t lo, size_t hi,
                             uint64_t sweep_seed, int threads, const std::function<void(size_t)>& f,
                             const SetupShare* share = nullptr);

// f(i) for every i in [0, n) on min(threads, n) threads, this one among them,
// each taking the next i as it frees up. A thread the system refuses is one
// fewer (the others do its share). An exception of f stops the others taking
// work and is rethrown here after every thread has ended.
void parallel_for(size_t n, int threads, const std::function<void(size_t)>& f);

// The cores this process may run on: its CPU affinity (taskset, SLURM's and
// cgroup cpusets), not every core of the machine; at least 1. What
// `--threads 0` means.
int usable_cores();
// A thread count as --threads gives it: `requested` when > 0, else usable_cores().
int thread_count(int requested);

// min(count, T + 1) distinct steps: 0, T and log-spaced between.
std::vector<int64_t> checkpoint_steps(int64_t T, int count);

// End-to-end map W_L ... W_1 of layers W[1..L] (index 0 unused), multiplied in the
// order the trainer measures its test risk in.
Matrix end_to_end(const std::vector<Matrix>& W);

// Risk of a linear end-to-end map W_e: the exact formula above when there is a W*
// (tm::linear_risk, kernels/trial_math.hpp: the one implementation, which the CPU
// trainer and the CUDA backend call too), else the Monte Carlo risk on (Xtest, Ytest).
// linear_risk(pr, end_to_end(W)) of a linear student's layers W is its test_risk
// bit for bit.
double linear_risk(const TrialProblem& pr, const Matrix& We);

}  // namespace stsweep
