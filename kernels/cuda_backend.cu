// The CUDA backend: Backend::run for a batch of trials of one shape.
//
//   host threads: setup_trial (float64, the same problems as the CPU backend)
//        │  group the trials by (path, matched layers): one arena layout each
//        ▼  (planning, packing and collecting: device_plan.cpp, no CUDA)
//   pinned staging ──H2D──> trial arenas ──> trainer (fused | warp | general | cuBLAS)
//                                              │ weight snapshots (double)
//                                              ▼
//                 item compaction (CUB) ──> eval kernel (float64) ──D2H──> metrics
//                                                                   ──> TrialResult
//
// A batch is cut into waves of a quarter of it (at least 1024 trials; fewer
// when free device memory says so); two waves are in flight (one stream each),
// so the host sets up wave i+1 while the device trains wave i. Out-of-memory
// when sizing halves the capacity.
// Results are assembled by host/train.cpp's assemble_trial_result (same rules).
#include <cuda_runtime.h>
#include <cublas_v2.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend.hpp"
#include "cuda_backend.cuh"
#include "cuda_common.cuh"
#include "device_plan.hpp"

namespace stsweep::cuda {
namespace {

constexpr int kMaxChunkTrials = 32000;  // 2 networks each: grid.y <= 65535 (cuBLAS kernels)
constexpr size_t kMinWave = 1024;       // trials of a wave when the batch is cut for overlap
// Steps of the cuBLAS trainer per captured CUDA graph (about (3L + 3) x 64
// nodes; the steps left over make a second graph).
constexpr long long kGraphSteps = 64;

// ------------------------------------------------------------------ memory --
// One device allocation and one pinned host allocation per in-flight wave,
// carved per group (bump allocation, 256-byte aligned); one device allocation
// for the teacher pass (no host part).
//
// Pools are allocated before the work that uses them and kept: cudaMalloc and
// cudaMallocHost keep commands of different streams from running concurrently
// (the programming guide's "implicit synchronization"), and cudaFree waits for
// the whole device, so an allocation or free while a wave trains would stall
// the overlap of set-up with training.
//
// Split (STSWEEP_CUDA_POOL=split, a debug mode): every carve is its own
// cudaMalloc / cudaMallocHost, freed at reset, so that compute-sanitizer's
// memcheck (and the fake device's kernel-argument check) sees a kernel that
// runs past one buffer into the next; in one pool the neighbouring carve is
// valid memory. The pool's capacities still bound the carves (the sizing
// check is the same); each allocation and free first waits for the device,
// so the waves do not overlap in this mode and an out-of-memory comes at a
// carve (the run fails) instead of halving the wave.
class Pool {
 public:
  Pool() = default;
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  ~Pool() { release(); }
  void set_split(bool split) {
    if (sized_) throw std::logic_error("cuda: Pool::set_split on an allocated pool");
    split_ = split;
  }
  void allocate(size_t dev_bytes, size_t host_bytes) {
    release();
    if (!split_) {
      STS_CUDA(cudaMalloc(&dev_, dev_bytes));
      if (host_bytes > 0) {
        try {
          STS_CUDA(cudaMallocHost(&host_, host_bytes));
        } catch (...) {
          release();
          throw;
        }
      }
    }
    dcap_ = dev_bytes;
    hcap_ = host_bytes;
    sized_ = true;
  }
  void release() {
    reset();
    if (dev_) cudaFree(dev_);
    if (host_) cudaFreeHost(host_);
    dev_ = host_ = nullptr;
    dcap_ = hcap_ = 0;
    sized_ = false;
  }
  void reset() {
    dtop_ = htop_ = 0;
    poison_ = nullptr;
    if (pieces_.empty()) return;
    cudaDeviceSynchronize();  // no throw here (release runs in destructors); a free waits anyway
    for (const Piece& p : pieces_) p.pinned ? cudaFreeHost(p.at) : cudaFree(p.at);
    pieces_.clear();
  }
  // split: the pieces of the last wave stay until the next reset(), so free
  // memory is undercounted by them (a debug mode; sizing stays safe).
  size_t dev_capacity() const { return split_ ? 0 : dcap_; }
  bool holds(size_t dev_bytes, size_t host_bytes) const {
    return sized_ && dcap_ >= dev_bytes && hcap_ >= host_bytes;
  }
  // Every byte 0xFF (a NaN in float and double): tests poison the buffers so
  // that an element nothing wrote cannot pass for a result. Split: the carves
  // so far, and those until the next reset.
  void poison(cudaStream_t s) {
    if (!split_) {
      STS_CUDA(cudaMemsetAsync(dev_, 0xFF, dcap_, s));
      if (host_) std::memset(host_, 0xFF, hcap_);
      return;
    }
    poison_ = s;
    for (const Piece& p : pieces_) fill(p);
  }
  template <class T>
  T* dev(size_t count) { return static_cast<T*>(carve(false, count * sizeof(T))); }
  template <class T>
  T* host(size_t count) { return static_cast<T*>(carve(true, count * sizeof(T))); }

 private:
  struct Piece {
    void* at;
    size_t bytes;
    bool pinned;
  };
  void* carve(bool pinned, size_t bytes) {
    size_t& top = pinned ? htop_ : dtop_;
    const size_t at = (top + 255) / 256 * 256;
    if (at + bytes > (pinned ? hcap_ : dcap_))
      throw std::logic_error(std::string("cuda: ") + (pinned ? "host" : "device") +
                             " pool exhausted (sizing bug)");
    top = at + bytes;
    if (!split_) return static_cast<char*>(pinned ? host_ : dev_) + at;
    STS_CUDA(cudaDeviceSynchronize());  // what the allocation would wait for anyway, explicitly
    Piece p{nullptr, bytes, pinned};
    if (pinned)
      STS_CUDA(cudaMallocHost(&p.at, bytes));
    else
      STS_CUDA(cudaMalloc(&p.at, bytes));
    pieces_.push_back(p);
    if (poison_) fill(p);
    return p.at;
  }
  void fill(const Piece& p) const {
    if (p.pinned)
      std::memset(p.at, 0xFF, p.bytes);
    else
      STS_CUDA(cudaMemsetAsync(p.at, 0xFF, p.bytes, poison_));
  }
  void* dev_ = nullptr;
  void* host_ = nullptr;
  size_t dcap_ = 0, hcap_ = 0, dtop_ = 0, htop_ = 0;
  bool sized_ = false;
  bool split_ = false;
  cudaStream_t poison_ = nullptr;  // split: the stream that poisons new carves (until reset)
  std::vector<Piece> pieces_;      // split: the carves since the last reset
};

// One side of a group's buffers (GroupSizes): on the device every buffer, in
// pinned host staging the inputs, the states and the metrics; a buffer of
// size 0 is null.
template <class Real>
struct GroupMemory {
  Real* arena = nullptr;
  double* eval = nullptr;
  TrialScalars* ts = nullptr;
  long long* ck = nullptr;
  NetRef* nets = nullptr;
  NetState* state = nullptr;
  double* snap = nullptr;
  double* metrics = nullptr;
  long long* items = nullptr;  // items + 1: the list, then its count
  Real* work = nullptr;

  static GroupMemory device(Pool& p, const GroupSizes& z) {
    GroupMemory m;
    m.carve(p, z, true);
    return m;
  }
  static GroupMemory host(Pool& p, const GroupSizes& z) {
    GroupMemory m;
    m.carve(p, z, false);
    return m;
  }
  GroupBuffers<Real> buffers() const {
    GroupBuffers<Real> b;
    b.arena = arena;
    b.work = work;
    b.eval = eval;
    b.ts = ts;
    b.ck = ck;
    b.nets = nets;
    b.state = state;
    b.snap = snap;
    b.metrics = metrics;
    return b;
  }
  // The inputs (arena, evaluation data, trial scalars, checkpoints, network
  // list) from host staging h to this device side, on stream s.
  void copy_inputs(const GroupMemory& h, const GroupSizes& z, cudaStream_t s) const {
    put(arena, h.arena, z.arena, s);
    put(eval, h.eval, z.eval, s);
    put(ts, h.ts, z.ts, s);
    put(ck, h.ck, z.ck, s);
    put(nets, h.nets, z.nets, s);
  }

 private:
  template <class T>
  static T* take(Pool& p, size_t n, bool device) {
    if (n == 0) return nullptr;
    return device ? p.dev<T>(n) : p.host<T>(n);
  }
  void carve(Pool& p, const GroupSizes& z, bool device) {
    arena = take<Real>(p, z.arena, device);
    eval = take<double>(p, z.eval, device);
    ts = take<TrialScalars>(p, z.ts, device);
    ck = take<long long>(p, z.ck, device);
    nets = take<NetRef>(p, z.nets, device);
    state = take<NetState>(p, z.nets, device);
    metrics = take<double>(p, z.metrics, device);
    if (!device) return;
    snap = take<double>(p, z.snap, true);
    items = take<long long>(p, z.items ? z.items + 1 : 0, true);
    work = take<Real>(p, z.work, true);
  }
  template <class T>
  static void put(T* dst, const T* src, size_t n, cudaStream_t s) {
    if (n) STS_CUDA(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyHostToDevice, s));
  }
};

// ----------------------------------------------------------------- backend --
// A 0/1 switch from the environment: `dflt` when unset or empty, off for "0".
bool env_switch(const char* name, bool dflt) {
  const char* e = std::getenv(name);
  if (!e || !*e) return dflt;
  return std::string(e) != "0";
}

// An integer >= lo from the environment: `dflt` when unset or empty; anything
// else is an error naming the variable and what it expects.
long long env_integer(const char* name, long long lo, long long dflt, const char* expected) {
  const char* e = std::getenv(name);
  if (!e || !*e) return dflt;
  char* end = nullptr;
  const long long v = std::strtoll(e, &end, 10);
  if (*end || v < lo) throw std::runtime_error(std::string(name) + "=" + e + ": expected " + expected);
  return v;
}

Path path_from_env(Path dflt) {
  const char* e = std::getenv("STSWEEP_CUDA_PATH");
  if (!e || !*e) return dflt;
  return parse_path(e);
}

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { STS_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  // The device's highest priority: its pending blocks are dispatched before
  // pending blocks of the default-priority streams (running ones are not
  // preempted).
  struct Urgent {};
  explicit Stream(Urgent) {
    int least = 0, greatest = 0;
    STS_CUDA(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    STS_CUDA(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, greatest));
  }
  ~Stream() {
    if (s) cudaStreamDestroy(s);
  }
};
struct Blas {
  cublasHandle_t h = nullptr;  // of the device current at cublasCreate
  Blas() = default;
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;
  ~Blas() {
    if (h) cublasDestroy(h);
  }
};
struct Event {
  cudaEvent_t e = nullptr;
  Event() { STS_CUDA(cudaEventCreate(&e)); }
  ~Event() {
    if (e) cudaEventDestroy(e);
  }
};

// One group of one wave on the device: what the host needs to finish it.
struct Launched {
  GroupPlan plan;
  const NetState* state = nullptr;   // pinned, filled by D2H
  const double* metrics = nullptr;   // pinned
  std::unique_ptr<Event> t0, t1, t2;  // before training, after training, after eval
  std::vector<std::unique_ptr<GraphExec>> graphs;  // the cuBLAS trainer's, kept until the stream is synchronised
};

struct Wave {
  Pool pool;
  std::vector<Prepared> prepared;
  std::vector<Launched> groups;
  bool busy = false;
};

class CudaBackend final : public Backend {
 public:
  // dev_ is set (and made current) before the members that hold device
  // resources (the streams) are made: a stream belongs to the device current
  // when it is created, and with --devices the constructing thread's current
  // device is the previous backend's.
  CudaBackend(const RunOptions& opt, Path path, int device)
      : threads_(opt.threads), path_(path), dev_(make_current(device)) {
    STS_CUDA(cudaGetDeviceProperties(&prop_, dev_));
    STS_CUDA(cudaDeviceGetAttribute(&optin_, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev_));
    // A cuBLAS handle per wave stream: two waves in flight on one handle
    // would share its workspace, and the cuBLAS guide ("Results
    // reproducibility") then promises no bitwise reproducibility. Made here,
    // not at the first product: cublasCreate allocates.
    for (Blas& b : cublas_) {
      const cublasStatus_t cs = cublasCreate(&b.h);
      if (cs != CUBLAS_STATUS_SUCCESS)
        throw std::runtime_error(std::string("cublasCreate: ") + cublasGetStatusString(cs));
    }
    static_shared_ = fused_static_shared_bytes();
    vector_a_ = env_switch("STSWEEP_CUDA_VECTOR_A", true);
    one_column_ = env_switch("STSWEEP_CUDA_ONE_COLUMN", true);
    teachers_on_device_ = teachers_on_device();
    wave_ = static_cast<size_t>(env_integer("STSWEEP_CUDA_WAVE", 1, 0, "a number of trials >= 1"));
    graph_steps_ =
        env_integer("STSWEEP_CUDA_GRAPH", 0, kGraphSteps, "the cuBLAS trainer's steps per CUDA graph (0: no graphs)");
    // `one` allocation per pool, or `split`: one per buffer, for compute-sanitizer (see Pool).
    const bool split = env_choice("STSWEEP_CUDA_POOL", "one", "split");
    for (Wave& w : waves_) w.pool.set_split(split);
    teach_pool_.set_split(split);
  }
  ~CudaBackend() override {
    // Its own device current while its streams, pools and cuBLAS handles go
    // (with --devices the backends are destroyed on one thread; cuBLAS wants the
    // handle's device current at cublasDestroy). No throw in a destructor.
    cudaSetDevice(dev_);
    for (auto& w : waves_) {
      if (w.busy) cudaStreamSynchronize(streams_[&w - waves_].s);
      w.pool.release();
    }
  }
  std::string name() const override { return "cuda"; }
  std::string device() const override {
    return std::string(prop_.name) + " (sm_" + std::to_string(prop_.major) +
           std::to_string(prop_.minor) + ", " + std::to_string(prop_.multiProcessorCount) + " SMs, " +
           std::to_string(prop_.totalGlobalMem >> 20) + " MiB)";
  }
  RunStats stats() const { return stats_; }
  std::string time_report() const override { return cuda::time_report(total_); }

  std::vector<TrialResult> run(const Batch& batch, const RunOptions& opt) override {
    STS_CUDA(cudaSetDevice(dev_));
    const auto t_start = std::chrono::steady_clock::now();
    stats_ = RunStats{};
    paths_.clear();
    std::vector<TrialResult> out(batch.trials.size());
    if (batch.trials.empty()) return out;
    if (opt.precision == Precision::f64)
      run_all<double>(batch, opt, out);
    else
      run_all<float>(batch, opt, out);
    for (const auto& p : paths_) stats_.paths += (stats_.paths.empty() ? "" : ", ") + p;
    stats_.total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    accumulate(total_, stats_);
    return out;
  }

 private:
  int eval_blocks(size_t vwork_bytes, size_t budget) const {
    const size_t want = static_cast<size_t>(prop_.multiProcessorCount) * 8;
    return static_cast<int>(std::max<size_t>(1, std::min(want, budget / std::max<size_t>(vwork_bytes, 1))));
  }

  template <class Real>
  void run_all(const Batch& batch, const RunOptions& opt, std::vector<TrialResult>& out) {
    const Path want = path_;
    poison_ = env_switch("STSWEEP_CUDA_POISON", false);
    const size_t n = batch.trials.size();
    const int maxck = batch_maxck(batch);
    size_t vwork = 0;
    const TrialBytes tb = worst_trial_bytes(batch, sizeof(Real), maxck, &vwork);
    // Capacity: half the free memory per wave (two in flight), 1/8 of a wave
    // for the evaluation workspace.
    // Nothing is in flight between runs: the teacher pool is freed here (no
    // stall) and sized again by this run's first teachers, after the waves'.
    teach_pool_.release();
    size_t free_b = 0, total_b = 0;
    STS_CUDA(cudaMemGetInfo(&free_b, &total_b));
    for (const auto& w : waves_) free_b += w.pool.dev_capacity();  // kept from the last run
    const size_t budget = free_b / 2 * 8 / 10;
    const int eb = eval_blocks(vwork, budget / 8);
    // The eval workspace, CUB's temporary storage for the largest group, slack.
    select_temp_ = eval_select_temp_bytes(static_cast<long long>(std::min<size_t>(n, kMaxChunkTrials)) *
                                          2 * (maxck + 2));
    const size_t fixed = static_cast<size_t>(eb) * vwork + select_temp_ + kPoolSlack + 2 * 256;
    size_t cap = budget > fixed ? (budget - fixed) / tb.dev : 0;
    // Waves of a quarter of the batch (at least kMinWave trials), so that the
    // host sets up the next wave while the device trains this one: with one
    // wave the device waits for all of a batch's set-up. STSWEEP_CUDA_WAVE caps
    // it (tests: several waves from a small batch).
    const size_t wave = wave_ > 0 ? wave_ : std::max<size_t>(kMinWave, (n + 3) / 4);
    cap = std::min<size_t>({cap, wave, n, kMaxChunkTrials});
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
    const size_t host_cap =
        host_wave_cap(tb.host, pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0);
    if (host_cap < cap) {
      log_once("waves of at most " + std::to_string(host_cap) + " trials: their pinned host memory (" +
               std::to_string(tb.host) + " bytes a trial) is limited to 1/8 of the host's RAM");
      cap = host_cap;
    }
    if (cap == 0) cap = 1;
    for (;;) {
      try {
        const size_t dev = cap * tb.dev + fixed, host = cap * tb.host + kPoolSlack;
        for (auto& w : waves_)
          if (!w.pool.holds(dev, host)) w.pool.allocate(dev, host);
        break;
      } catch (const OutOfMemory& e) {
        for (auto& w : waves_) w.pool.release();
        if (cap == 1) throw;
        cap /= 2;
        std::cerr << "stsweep: cuda: out of memory, " << cap << " trials per chunk\n";
      }
    }
    const int nthreads = thread_count(threads_ > 0 ? threads_ : opt.threads);
    // Trials of the batch that share a problem (lambda siblings, often in
    // different waves) build it once (SetupShare).
    SetupShare share(batch.trials, 0, n, opt.sweep_seed);
    size_t wave_no = 0;
    try {
      for (size_t lo = 0; lo < n; lo += cap, ++wave_no) {
        const size_t hi = std::min(n, lo + cap);
        Wave& w = waves_[wave_no % 2];
        Stream& st = streams_[wave_no % 2];
        // The wave's new trained teachers on the device (beside the other
        // wave), then set-up on the host while the other wave trains; the
        // teachers stay pinned in set-up's cache until it is done.
        PinnedTeachers pinned;
        if (teachers_on_device_) train_teachers(batch, lo, hi, opt, nthreads, &pinned.recipes);
        std::vector<Prepared> prepared = prepare_trials(batch, lo, hi, opt, nthreads, out, &stats_.setup_s, &share);
        if (w.busy) finish<Real>(w, st, batch, out);
        w.prepared = std::move(prepared);
        w.pool.reset();
        if (poison_) w.pool.poison(st.s);
        launch<Real>(w, st, want, tb, eb, vwork, nthreads);
        w.busy = true;
        ++stats_.chunks;
      }
      for (int i = 0; i < 2; ++i) {
        const size_t k = (wave_no + i) % 2;  // older wave first
        if (waves_[k].busy) finish<Real>(waves_[k], streams_[k], batch, out);
      }
    } catch (...) {
      for (int i = 0; i < 2; ++i) {
        cudaStreamSynchronize(streams_[i].s);
        waves_[i].busy = false;
        waves_[i].groups.clear();
      }
      throw;
    }
  }

  // Trains the trained teachers trials [lo, hi) need that set-up's cache
  // lacks (prepare_teachers: float64, lambda = 0, the host's path) on the
  // teacher stream, as many per launch as half the free memory holds, and
  // hands them to the cache pinned (their recipes appended to *pinned).
  void train_teachers(const Batch& batch, size_t lo, size_t hi, const RunOptions& opt, int nthreads,
                      std::vector<std::string>* pinned) {
    const std::vector<Prepared> tw = prepare_teachers(batch, lo, hi, opt, nthreads, &stats_.setup_s);
    if (tw.empty()) return;
    const DeviceLimits lim = limits();
    for (const GroupPlan& all : plan_groups(tw, path_, sizeof(double), lim,
                                            [this](const std::string& m) { log_once(m); })) {
      paths_.insert(std::string(cuda::name(all.path)) + " (teachers)");
      size_t free_b = 0, total_b = 0;
      STS_CUDA(cudaMemGetInfo(&free_b, &total_b));
      free_b += teach_pool_.dev_capacity();
      const size_t per = teacher_chunk_bytes(all, 2) - teacher_chunk_bytes(all, 1);
      size_t chunk = std::max<size_t>(1, std::min<size_t>(free_b / 2 / per, kMaxChunkTrials));
      for (size_t at = 0; at < all.members.size();) {
        GroupPlan g = all;  // members [at, at + chunk): one network each, no twins
        const size_t nt = std::min(chunk, all.members.size() - at);
        g.members.assign(all.members.begin() + at, all.members.begin() + at + nt);
        g.nets.resize(nt);
        for (size_t j = 0; j < nt; ++j) g.nets[j] = {static_cast<int>(j), 0};
        try {
          // Sized for a wave's worth of this layout's teachers (a wave of
          // hi - lo trials needs at most that many; the first wave is a full
          // one), up to a chunk, by the first wave's teachers, before anything
          // else runs. It grows only for a larger layout in a later wave, and
          // then stalls once: a free waits for the device.
          const size_t need = teacher_chunk_bytes(g, nt);
          if (!teach_pool_.holds(need, 0))
            teach_pool_.allocate(teacher_chunk_bytes(g, std::min(chunk, std::max(nt, hi - lo))), 0);
          train_teacher_chunk(g, tw, nthreads, pinned);
        } catch (const OutOfMemory&) {
          teach_pool_.release();
          if (chunk == 1) throw;
          chunk /= 2;
          log_once("out of memory training teachers: " + std::to_string(chunk) + " per launch");
          continue;
        }
        at += nt;
      }
    }
  }

  // Device bytes of a chunk of nt teachers (one network each) of group g's
  // layout, as train_teacher_chunk carves them (each buffer 256-byte aligned).
  static size_t teacher_chunk_bytes(const GroupPlan& g, size_t nt) {
    return group_sizes(g.y, g.path, nt, nt, g.slots, g.ck_total, true).dev_bytes(sizeof(double)) +
           GroupSizes::kBuffers * 256;
  }

  // One chunk of teachers on the teacher stream, in teach_pool_ (sized by
  // the caller); waits for it and hands the teachers to set-up's cache.
  void train_teacher_chunk(const GroupPlan& g, const std::vector<Prepared>& tw, int nthreads,
                           std::vector<std::string>* pinned) {
    if (g.path == Path::cublas) throw std::logic_error("cuda: teachers on the cuBLAS path (plan_groups)");
    const size_t nt = g.members.size(), nn = g.nets.size();
    if (nn != nt) throw std::logic_error("cuda: a teacher chunk has one network per teacher");
    const GroupSizes z = group_sizes(g, true);
    // Host side in pageable vectors (a teacher chunk is copied once, then waited for).
    std::vector<double> h_arena(z.arena), h_snap(z.snap);
    std::vector<TrialScalars> h_ts(z.ts);
    std::vector<long long> h_ck(z.ck);
    std::vector<NetRef> h_nets(g.nets);
    std::vector<NetState> h_state(z.nets);
    pack_group<double>(g, tw, h_arena.data(), nullptr, h_ts.data(), h_ck.data(), nthreads);  // no evaluation
    GroupMemory<double> h;
    h.arena = h_arena.data();
    h.ts = h_ts.data();
    h.ck = h_ck.data();
    h.nets = h_nets.data();
    teach_pool_.reset();
    const GroupMemory<double> d = GroupMemory<double>::device(teach_pool_, z);
    cudaStream_t s = teach_.s;
    if (poison_) teach_pool_.poison(s);
    d.copy_inputs(h, z, s);
    TrainArgs<double> a = train_args(g, d.buffers());
    a.one_column = one_column_ ? 1 : 0;
    Event t0, t1;
    STS_CUDA(cudaEventRecord(t0.e, s));
    launch_trainer<double>(g, a, s);
    STS_CUDA(cudaEventRecord(t1.e, s));
    STS_CUDA(cudaMemcpyAsync(h_state.data(), d.state, nn * sizeof(NetState), cudaMemcpyDeviceToHost, s));
    STS_CUDA(cudaMemcpyAsync(h_snap.data(), d.snap, h_snap.size() * sizeof(double), cudaMemcpyDeviceToHost, s));
    STS_CUDA(cudaStreamSynchronize(s));
    float ms = 0;
    STS_CUDA(cudaEventElapsedTime(&ms, t0.e, t1.e));
    stats_.teacher_s += ms * 1e-3;
    stats_.teachers += static_cast<long long>(nn);
    collect_teachers(g, tw, h_state.data(), h_snap.data(), pinned);
  }

  // What a block may use: the opt-in shared memory less the kernels' static share.
  DeviceLimits limits() const {
    DeviceLimits lim;
    lim.shared_per_block = static_cast<size_t>(optin_) > static_shared_ ? optin_ - static_shared_ : 0;
    return lim;
  }

  // The group's trainer (fused, warp, general or cuBLAS) on stream s.
  // A cuBLAS group's graphs go to *graphs (kept until s is synchronised).
  template <class Real>
  void launch_trainer(const GroupPlan& g, const TrainArgs<Real>& a, cudaStream_t s,
                      std::vector<std::unique_ptr<GraphExec>>* graphs = nullptr) {
    if (g.path == Path::cublas) {
      const int k = s == streams_[0].s ? 0 : s == streams_[1].s ? 1 : -1;
      if (k < 0 || !graphs) throw std::logic_error("cuda: a cuBLAS group on a stream that is not a wave's");
      CublasQueued q = train_cublas<Real>(cublas_[k].h, a, g.maxT, s, graph_steps_);
      if (!q.fallback.empty()) {
        log_once("cuBLAS trainer: CUDA refused to capture a graph (" + q.fallback + "); launching step by step");
        paths_.insert("cublas (graph refused: step by step)");
      }
      *graphs = std::move(q.graphs);
    } else if (g.path == Path::warp) {
      // A block may hold 48 KB of shared memory, static and dynamic together,
      // unless its kernel opts in (cudaFuncSetAttribute). warp_train has no
      // static shared memory.
      const size_t dyn = g.warps_per_block * g.net_shared;
      if (dyn > kSharedWithoutOptIn) warp_prepare<Real>(dyn);
      launch_warp<Real>(a, g.warps_per_block, g.net_shared, vector_a_, s);
    } else {
      // fused_train's static `red` counts against the 48 KB too: an arena of
      // 48 KB less 256 bytes or more needs the opt-in (a GPU refuses the
      // launch otherwise; found by reading in session 11).
      const size_t dyn = a.shared ? g.net_shared : 0;
      if (dyn > 0 && dyn + static_shared_ > kSharedWithoutOptIn) fused_prepare<Real>(dyn);
      launch_fused<Real>(a, dyn, vector_a_, s);
    }
  }

  void log_once(const std::string& msg) {
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    if (logged_.insert(msg).second) std::cerr << "stsweep: cuda: " << msg << "\n";
  }

  template <class Real>
  void launch(Wave& w, Stream& st, Path want, const TrialBytes& tb, int eb, size_t vwork_bytes, int nthreads) {
    w.groups.clear();
    const DeviceLimits lim = limits();
    std::vector<GroupPlan> plans =
        plan_groups(w.prepared, want, sizeof(Real), lim, [this](const std::string& m) { log_once(m); });
    check_wave_fits(plans, sizeof(Real), w.prepared.size(), tb, kPoolSlack);  // before carving
    double* eval_ws = nullptr;
    void* select_tmp = nullptr;
    for (GroupPlan& plan : plans) {
      const bool scalar_a = !vector_a_ && sizeof(Real) == 4 &&
                            (plan.path == Path::fused || plan.path == Path::warp || plan.path == Path::general);
      paths_.insert(std::string(cuda::name(plan.path)) + (scalar_a ? " (scalar A)" : "") +
                    (!one_column_ && !scalar_a && plan.path != Path::cublas ? " (v4 tiles)" : "") +
                    (plan.path != Path::cublas ? "" : graph_steps_ > 0 ? " (CUDA graphs)" : " (step by step)"));
      {  // Once per shape and trainer: which one runs it (a researcher's first question when slow).
        std::string widths;
        for (int l = 0; l <= plan.s.net.L; ++l) widths += (l ? "-" : "") + std::to_string(plan.s.net.w[l]);
        std::string how = cuda::name(plan.path);
        if (plan.path == Path::fused) how += " (a block per network, " + std::to_string(plan.net_shared >> 10) + " KB of shared memory)";
        if (plan.path == Path::cublas)
          how += graph_steps_ > 0 ? " (CUDA graphs of " + std::to_string(graph_steps_) + " steps)" : " (step by step)";
        if (plan.path == Path::warp)
          how += " (a warp per network, " + std::to_string(plan.warps_per_block) + " per block)";
        log_once("widths " + widths + ", N " + std::to_string(plan.s.N) + ", " +
                 (plan.s.moment ? "moment" : "data") + " path: trainer " + how);
      }
      Launched g;
      const GroupSizes z = group_sizes(plan);
      const size_t items = z.items;
      // Host staging (pinned), packed on the host threads.
      const GroupMemory<Real> h = GroupMemory<Real>::host(w.pool, z);
      pack_group<Real>(plan, w.prepared, h.arena, h.eval, h.ts, h.ck, nthreads);
      std::copy(plan.nets.begin(), plan.nets.end(), h.nets);
      // Device buffers and copies.
      const GroupMemory<Real> d = GroupMemory<Real>::device(w.pool, z);
      if (!eval_ws) eval_ws = w.pool.dev<double>(static_cast<size_t>(eb) * vwork_bytes / 8);
      if (!select_tmp) select_tmp = w.pool.dev<unsigned char>(std::max<size_t>(select_temp_, 1));
      d.copy_inputs(h, z, st.s);
      const GroupBuffers<Real> buf = d.buffers();
      TrainArgs<Real> a = train_args(plan, buf);
      a.one_column = one_column_ ? 1 : 0;
      g.t0 = std::make_unique<Event>();
      g.t1 = std::make_unique<Event>();
      g.t2 = std::make_unique<Event>();
      STS_CUDA(cudaEventRecord(g.t0->e, st.s));
      launch_trainer<Real>(plan, a, st.s, &g.graphs);
      STS_CUDA(cudaEventRecord(g.t1->e, st.s));
      // Only the snapshots the networks wrote are measured.
      launch_eval_select(select_tmp, select_temp_, d.state, plan.slots, plan.maxck,
                         static_cast<long long>(items), d.items, d.items + items, st.s);
      EvalArgs e = eval_args(plan, buf, eval_ws);
      e.items = d.items;
      e.nitems = d.items + items;
      launch_eval(e, static_cast<int>(std::min<long long>(eb, static_cast<long long>(items))), st.s);
      STS_CUDA(cudaEventRecord(g.t2->e, st.s));
      STS_CUDA(cudaMemcpyAsync(h.state, d.state, z.nets * sizeof(NetState), cudaMemcpyDeviceToHost, st.s));
      STS_CUDA(cudaMemcpyAsync(h.metrics, d.metrics, z.metrics * sizeof(double), cudaMemcpyDeviceToHost, st.s));
      g.state = h.state;
      g.metrics = h.metrics;
      g.plan = std::move(plan);
      w.groups.push_back(std::move(g));
    }
  }

  template <class Real>
  void finish(Wave& w, Stream& st, const Batch& batch, std::vector<TrialResult>& out) {
    STS_CUDA(cudaStreamSynchronize(st.s));
    w.busy = false;
    for (const Launched& g : w.groups) {
      float ms_train = 0, ms_eval = 0;
      STS_CUDA(cudaEventElapsedTime(&ms_train, g.t0->e, g.t1->e));
      STS_CUDA(cudaEventElapsedTime(&ms_eval, g.t1->e, g.t2->e));
      stats_.train_s += ms_train * 1e-3;
      stats_.eval_s += ms_eval * 1e-3;
      collect_group(g.plan, w.prepared, batch, g.state, g.metrics, out, stats_);
    }
    w.groups.clear();
    w.prepared.clear();
  }

  static int make_current(int device) {
    STS_CUDA(cudaSetDevice(device));
    return device;
  }

  int threads_;
  Path path_;
  int dev_;  // before streams_ and teach_ (see the constructor)
  cudaDeviceProp prop_{};
  int optin_ = 0;
  size_t static_shared_ = 0;
  Stream streams_[2];
  Blas cublas_[2];  // one per wave stream (after streams_: destroyed before them)
  // Trained teachers (train_teachers), beside the waves, at the highest
  // priority: the host waits for them before it can set up the next wave, so
  // their blocks go ahead of the training wave's blocks not yet started, and
  // set-up then overlaps the rest of that wave.
  Stream teach_{Stream::Urgent{}};
  Pool teach_pool_;  // the teacher pass's device memory, kept across waves (see Pool)
  Wave waves_[2];
  RunStats stats_;
  RunStats total_;  // every run() so far (time_report)
  bool poison_ = false;
  bool vector_a_ = true;  // STSWEEP_CUDA_VECTOR_A=0: the scalar-A (v2) tiles, float only
  bool one_column_ = true;  // STSWEEP_CUDA_ONE_COLUMN=0: v4's tiles (no one-column shapes)
  bool teachers_on_device_ = true;  // STSWEEP_CUDA_TEACHERS=host: trained teachers in set-up
  size_t wave_ = 0;                 // STSWEEP_CUDA_WAVE: most trials per wave (0: automatic)
  long long graph_steps_ = 0;       // STSWEEP_CUDA_GRAPH: cuBLAS steps per CUDA graph (0: none)
  size_t select_temp_ = 0;
  std::set<std::string> paths_, logged_;
};

std::string probe_impl(int* count_out) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (count_out) *count_out = e == cudaSuccess ? count : 0;
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("cudaGetDeviceCount: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
  }
  if (count == 0) return "cudaGetDeviceCount: no CUDA device";
  cudaDeviceProp p{};
  const cudaError_t e2 = cudaGetDeviceProperties(&p, 0);
  if (e2 != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("cudaGetDeviceProperties: ") + cudaGetErrorString(e2);
  }
  if (p.major < 7) return std::string(p.name) + ": compute capability below 7.0";
  return "";
}

#ifdef __CUDACC__  // not in tests/fake_cuda's host-compiled build of this file
__global__ void fma_chain(float* out, int iters, float a, float b) {
  // 8 independent chains per thread: enough instruction-level parallelism to
  // fill the FMA pipes; the result is stored so nothing is optimised away.
  float x[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) x[j] = threadIdx.x * 1e-7f + j;
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int j = 0; j < 8; ++j) x[j] = fmaf(x[j], a, b);
  }
  float s = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) s += x[j];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
#endif

}  // namespace

std::string probe() {
  try {
    return probe_impl(nullptr);
  } catch (const std::exception& e) {
    return e.what();
  }
}

std::unique_ptr<Backend> make_backend(const RunOptions& opt, Path path, std::string* why,
                                      int device) {
  const std::string no = probe();
  if (!no.empty()) {
    if (why) *why = no;
    return nullptr;
  }
  int count = 0;
  (void)probe_impl(&count);
  if (device < 0 || device >= count) {
    if (why)
      *why = "CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) +
             " device" + (count == 1 ? "" : "s") + ": 0.." + std::to_string(count - 1) + ")";
    return nullptr;
  }
  try {
    return std::make_unique<CudaBackend>(opt, path, device);
  } catch (const std::exception& e) {
    if (why) *why = e.what();
    return nullptr;
  }
}

RunStats last_stats(const Backend& b) {
  const auto* c = dynamic_cast<const CudaBackend*>(&b);
  return c ? c->stats() : RunStats{};
}

#ifndef __CUDACC__
double fma_peak_gflops() { throw std::logic_error("fma_peak_gflops: no device (host-compiled build)"); }
#else
double fma_peak_gflops() {
  STS_CUDA(cudaSetDevice(0));
  cudaDeviceProp p{};
  STS_CUDA(cudaGetDeviceProperties(&p, 0));
  const int threads = 256, blocks = p.multiProcessorCount * 8, iters = 1 << 14;
  float* out = nullptr;
  STS_CUDA(cudaMalloc(&out, sizeof(float) * threads * blocks));
  cudaEvent_t e0, e1;
  STS_CUDA(cudaEventCreate(&e0));
  STS_CUDA(cudaEventCreate(&e1));
  double best = 0;
  for (int rep = 0; rep < 6; ++rep) {  // the first is the warm-up
    STS_CUDA(cudaEventRecord(e0));
    fma_chain<<<blocks, threads>>>(out, iters, 0.999f, 1e-3f);
    STS_CUDA_LAUNCHED("fma_chain");
    STS_CUDA(cudaEventRecord(e1));
    STS_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    STS_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    const double gflops = 2.0 * 8 * iters * double(threads) * blocks / (ms * 1e-3) * 1e-9;
    if (rep > 0) best = std::max(best, gflops);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(out);
  return best;
}
#endif

}  // namespace stsweep::cuda

// (In tests/fake_cuda's build these two come before host/cuda_stub.cpp's on the
// link line, so the linker never takes the stub's from the core library.)
namespace stsweep {
std::unique_ptr<Backend> make_cuda_backend(const RunOptions& opt, std::string* why, int device) {
  cuda::Path path = cuda::Path::automatic;
  try {
    path = cuda::path_from_env(path);
  } catch (const std::exception& e) {
    if (why) *why = e.what();
    return nullptr;
  }
  return cuda::make_backend(opt, path, why, device);
}

int cuda_device_count() {
  try {
    int count = 0;
    return cuda::probe_impl(&count).empty() ? count : 0;
  } catch (...) {
    return 0;
  }
}
}  // namespace stsweep
