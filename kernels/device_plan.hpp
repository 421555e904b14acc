// The host side of the CUDA backend that needs no CUDA: how a batch becomes
// launches (set-up, groups, arena layouts, packing) and how the launches'
// outputs become TrialResults. kernels/cuda_backend.cu moves these buffers to
// and from the device; kernels/device_emu.cpp runs the same kernel bodies on
// the host over the same buffers, so the CPU test suite checks all of it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "backend.hpp"
#include "device_records.hpp"
#include "problem.hpp"

namespace stsweep::cuda {

// How a group of trials trains on the device.
//   fused:   one thread block (256 threads) per network, the trial's data and
//            the network's work in dynamic shared memory, all steps in one
//            launch (needs the arena to fit a block).
//   warp:    one warp (32 threads) per network, several networks per block,
//            each with its own slice of shared memory (small widths).
//   general: the block-per-network kernel on global memory (any shape).
//   cublas:  strided-batched SGEMM/DGEMM per layer and step (data path only;
//            the yardstick). Moment-path groups run `general` instead.
//   automatic: warp for widths <= kWarpMaxWidth when two networks fit a
//            block, else fused when one fits, else cublas (data path) or
//            general (moment path).
// The environment variable STSWEEP_CUDA_PATH (auto|fused|warp|general|cublas)
// overrides the default for backends made by make_cuda_backend.
enum class Path { automatic, fused, warp, general, cublas };
const char* name(Path);
// Parses STSWEEP_CUDA_PATH's values; std::runtime_error naming the variable.
Path parse_path(const std::string& v);

constexpr int kWarpMaxWidth = 32;  // automatic picks warp teams up to this layer width

// Timings and counts of a backend's last run() (all of it, every chunk).
struct RunStats {
  double setup_s = 0;      // host set-up (wall, all threads)
  double train_s = 0;      // device training (events around the trainer launches)
  double eval_s = 0;       // device evaluation
  double total_s = 0;      // the whole run() call
  double net_steps = 0;    // sum over networks of steps run
  double flops = 0;        // counted training flops (tm::*_step_flops)
  std::string paths;       // paths taken, e.g. "fused" or "fused, cublas"
  int chunks = 0;
  long long teachers = 0;  // trained teachers trained on the device (prepare_teachers)
  double teacher_s = 0;    // their device time (not in train_s)
};

// Adds a run's figures to a total (paths: the union, in first-seen order).
void accumulate(RunStats& total, const RunStats& s);
// One line from a total: waves, host set-up, device training, evaluation and
// teacher seconds, the backend's wall time, and a warning when set-up took
// longer than the device's work (the host bounds the run).
std::string time_report(const RunStats& total);

struct Shape {
  tm::Net net;
  int N = 0, n_test = 0, k = 0;
  uint32_t mask = 0;
  bool moment = false, exact = false;
};
Layout make_layout(const Shape& s);

// Device and pinned-host bytes one trial needs (two networks), for a layout:
// a group of one trial with its twin and maxck checkpoints (GroupSizes, below).
struct TrialBytes {
  size_t dev = 0, host = 0;
};
TrialBytes trial_bytes(const Layout& y, size_t real, int maxck);
// Checkpoint slots of the batch (at least 2), and the worst case over paths
// and matched layers of its shape (and the eval workspace of one block).
int batch_maxck(const Batch& b);
TrialBytes worst_trial_bytes(const Batch& b, size_t real, int maxck, size_t* eval_work_bytes);

// A set-up trial and how it trains.
struct Prepared {
  size_t index = 0;  // in the batch
  TrialProblem pr;
  tm::Net net;
  uint32_t mask = 0;
  bool moment = false;
  // A trained teacher's training (prepare_teachers): pr holds only its data
  // (Xn, Y), W0, widths and params.lr/steps/lambda = 0; no checkpoints, no
  // twin, no evaluation; collect_teachers hands its final weights to set-up.
  bool teacher = false;
  std::string recipe;
};
// Sets up trials [lo, hi) of the batch on `nthreads` host threads (float64,
// the CPU backend's problems); a trial that fails gets Status::failed in
// out[i] and no Prepared. Adds the wall time to *setup_s. `share` (a
// SetupShare over the whole batch, so that the waves share too) or null.
std::vector<Prepared> prepare_trials(const Batch& batch, size_t lo, size_t hi,
                                     const RunOptions& opt, int nthreads,
                                     std::vector<TrialResult>& out, double* setup_s,
                                     SetupShare* share = nullptr);

// The trained teachers trials [lo, hi) need that set-up's cache lacks
// (teachers_to_train), one per recipe, as Prepared float64 trainings (teacher
// = true): lambda = 0, no matched layers, on the path the host's
// train_plain_f64 takes, so that a team trains the host's bits
// (DeviceEmu.TeamTrainedWeightsEqualTheSerialPathBitForBit). Built on
// `nthreads` host threads; adds the wall time to *setup_s.
std::vector<Prepared> prepare_teachers(const Batch& batch, size_t lo, size_t hi, const RunOptions& opt,
                                       int nthreads, double* setup_s);
// Whether the CUDA backend trains a wave's teachers itself:
// STSWEEP_CUDA_TEACHERS (device | host; default device). `host` leaves them to set-up (one host
// core each), the yardstick for the device pass.
bool teachers_on_device();
// A two-word choice from the environment: false for `dflt` (or unset or
// empty), true for `other`; anything else is an error naming the variable and
// both words. STSWEEP_CUDA_TEACHERS and STSWEEP_CUDA_POOL read through it.
bool env_choice(const char* name, const char* dflt, const char* other);

// What the device offers a group.
struct DeviceLimits {
  size_t shared_per_block = 0;  // dynamic shared memory one block may use (bytes)
};

// One group of a wave: trials of one (path, matched layers), one layout.
struct GroupPlan {
  Shape s;
  Layout y;
  Path path = Path::general;       // resolved (never automatic)
  std::vector<size_t> members;     // indices into the wave's prepared trials, most steps first
  std::vector<NetRef> nets;        // per member: the student, then its twin when it has one
  int maxck = 0, slots = 0;        // slots = maxck + 2 (checkpoints, first, final)
  int ck_total = 0;                // checkpoint steps over all members
  long long maxT = 0;              // most steps of a member
  double step_flops = 0;           // sum over members of counted flops per step
  size_t net_shared = 0;           // shared bytes of one network (data + work)
  int warps_per_block = 0;         // warp path: networks per block
};
// Groups a wave's prepared trials and picks each group's path from `want` and
// the device's limits; `log` gets one line per fallback (e.g. an arena too big
// for shared memory).
std::vector<GroupPlan> plan_groups(const std::vector<Prepared>& wave, Path want, size_t real,
                                   const DeviceLimits& lim,
                                   const std::function<void(const std::string&)>& log);

// A group's buffers in elements, as the CUDA backend carves them from its
// pools (one place for the sizes: cuda_backend.cu, the emulator and the pool
// check below). A teacher group has no evaluation buffers (eval, metrics,
// items) and no pinned staging.
struct GroupSizes {
  size_t arena = 0;    // Real: members x y.arena
  size_t eval = 0;     // double: members x y.eval
  size_t ts = 0;       // TrialScalars: members
  size_t ck = 0;       // long long: max(ck_total, 1)
  size_t nets = 0;     // NetRef and NetState: nets
  size_t snap = 0;     // double: nets x slots x y.wsize
  size_t metrics = 0;  // double: nets x slots x 3
  size_t items = 0;    // long long: nets x slots (the list; its count follows it)
  size_t work = 0;     // Real: general nets x y.work, cublas nets x y.cwork
  static constexpr int kBuffers = 10;  // carves on the device (each aligned to 256 bytes)
  size_t dev_bytes(size_t real) const;   // without the alignment; items + 1 (the count)
  size_t host_bytes(size_t real) const;  // pinned staging: arena, eval, ts, ck, nets, states, metrics
};
GroupSizes group_sizes(const GroupPlan& g, bool teacher = false);
// The same for `members` trials and `nets` networks of layout y on `path`,
// without a plan (the pools' sizing: one trial and its twin, a chunk of teachers).
GroupSizes group_sizes(const Layout& y, Path path, size_t members, size_t nets, int slots, int ck_total,
                       bool teacher);

// Checks that a wave of `trials` trials planned as `plans` fits what its pools
// were sized for: `trials` x tb (worst_trial_bytes) plus `slack` bytes, the
// pools' allowance for alignment (at most 256 bytes a carve). std::logic_error
// ("sizing bug") otherwise. The CUDA backend checks before it carves a wave;
// the emulator checks every wave, so the CPU tests cover the sizing.
void check_wave_fits(const std::vector<GroupPlan>& plans, size_t real, size_t trials, const TrialBytes& tb,
                     size_t slack);
constexpr size_t kPoolSlack = size_t(1) << 20;  // the pools' alignment allowance (bytes)

// Most trials a wave may hold by its pinned host memory: pinned pages are RAM
// the kernel cannot page out or reclaim, so a wave pins at most 1/8 of the
// host's `ram_bytes` (two waves in flight, perhaps several devices), less
// kPoolSlack; at least 1. `host_per_trial` is TrialBytes::host; 0 bytes or an
// unknown RAM size (0) bound nothing (SIZE_MAX). Without it, a shape with
// large host staging sized by the device's free memory alone could pin most
// of the host's RAM, and the OOM killer, not a halved wave, would answer.
size_t host_wave_cap(size_t host_per_trial, size_t ram_bytes);

// Fills a group's staging buffers: arena (members x y.arena), eval
// (members x y.eval; null: none, for teachers), ts (members), ck (ck_total), the members on `threads`
// host threads (a moment-path member forms its moments here: 0.5 ms at the
// standard grid's shape, bench_cpu_train Pack/moment).
template <class Real>
void pack_group(const GroupPlan& g, const std::vector<Prepared>& wave, Real* arena, double* eval,
                TrialScalars* ts, long long* ck, int threads = 1);

// Where a group's buffers are (device memory on the GPU, host vectors in the
// emulation), and the launch arguments they make.
template <class Real>
struct GroupBuffers {
  const Real* arena = nullptr;     // members x y.arena
  Real* work = nullptr;            // general: nets x y.work; cublas: nets x y.cwork; else unused
  const double* eval = nullptr;    // members x y.eval
  const TrialScalars* ts = nullptr;
  const long long* ck = nullptr;
  const NetRef* nets = nullptr;
  NetState* state = nullptr;
  double* snap = nullptr;          // nets x slots x y.wsize
  double* metrics = nullptr;       // nets x slots x 3
};
template <class Real>
TrainArgs<Real> train_args(const GroupPlan& g, const GroupBuffers<Real>& b) {
  TrainArgs<Real> a;
  a.net = g.s.net;
  a.mask = g.s.mask;
  a.N = g.s.N;
  a.shared = g.path == Path::fused || g.path == Path::warp ? 1 : 0;
  a.lay = g.y;
  a.arena = b.arena;
  a.work = b.work;
  a.nets = b.nets;
  a.nnets = static_cast<int>(g.nets.size());
  a.ntrials = static_cast<int>(g.members.size());
  a.ck_total = g.ck_total;
  a.trials = b.ts;
  a.ck = b.ck;
  a.snap = b.snap;
  a.slots = g.slots;
  a.state = b.state;
  return a;
}
// `work`: the eval blocks' workspace (blocks x y.vwork doubles).
template <class Real>
EvalArgs eval_args(const GroupPlan& g, const GroupBuffers<Real>& b, double* work) {
  EvalArgs e;
  e.net = g.s.net;
  e.mask = g.s.mask;
  e.N = g.s.N;
  e.n_test = g.s.n_test;
  e.k = g.s.k;
  e.exact = g.s.exact ? 1 : 0;
  e.lay = g.y;
  e.arena = b.eval;
  e.work = work;
  e.nets = b.nets;
  e.nnets = static_cast<int>(g.nets.size());
  e.ntrials = static_cast<int>(g.members.size());
  e.ck_total = g.ck_total;
  e.trials = b.ts;
  e.snap = b.snap;
  e.slots = g.slots;
  e.maxck = g.maxck;
  e.state = b.state;
  e.metrics = b.metrics;
  return e;
}

// From the trainer's states and the metrics of every slot (nets x slots x 3)
// to one TrialResult per member, at out[member's batch index]; adds the steps
// and counted flops to `stats`.
void collect_group(const GroupPlan& g, const std::vector<Prepared>& wave, const Batch& batch,
                   const NetState* state, const double* metrics, std::vector<TrialResult>& out,
                   RunStats& stats);

// Hands the trained teachers of a teacher group to set-up's cache
// (put_trained_teacher: the final snapshot of each network; diverged as the
// host's loop judges it, which checks the loss before each step, not after the
// last) and appends their recipes to *pinned, for unpin_teachers once the
// wave's trials are set up. `snap`: nets x slots x y.wsize.
void collect_teachers(const GroupPlan& g, const std::vector<Prepared>& wave, const NetState* state,
                      const double* snap, std::vector<std::string>* pinned);

}  // namespace stsweep::cuda
