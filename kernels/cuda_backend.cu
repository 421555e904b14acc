// The CUDA backend: Backend::run for a batch of trials of one shape.
//
//   host threads: setup_trial (float64, the same problems as the CPU backend)
//        │  group the trials by (path, matched layers): one arena layout each
//        ▼
//   pinned staging ──H2D──> trial arenas ──> trainer (fused | general | cuBLAS)
//                                              │ weight snapshots (double)
//                                              ▼
//                            eval kernel (float64) ──D2H──> metrics ──> TrialResult
//
// A batch is cut into waves of `capacity` trials sized from free device memory;
// two waves are in flight (one stream each), so the host sets up wave i+1 while
// the device trains wave i. Out-of-memory when sizing halves the capacity.
// Results are assembled by host/train.cpp's assemble_trial_result (same rules).
#include <cuda_runtime.h>
#include <cublas_v2.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "backend.hpp"
#include "cuda_backend.cuh"
#include "cuda_common.cuh"
#include "problem.hpp"
#include "train.hpp"

namespace stsweep::cuda {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int kMaxChunkTrials = 32000;  // 2 networks each: grid.y <= 65535 (cuBLAS kernels)

// ------------------------------------------------------------------- rules --
// Divergence, zero loss, path choice, matched layers, moments and the result
// assembly are host/train.hpp's, shared with the CPU reference.
static_assert(kDivergeFactor == stsweep::kDivergeFactor, "divergence rule as in host/train.cpp");


// ------------------------------------------------------------------ layout --
struct Shape {
  tm::Net net;
  int N = 0, n_test = 0, k = 0;
  uint32_t mask = 0;
  bool moment = false, exact = false;
};

Layout make_layout(const Shape& s) {
  Layout y;
  for (int l = 0; l <= tm::kMaxLayers; ++l)
    y.Ht[l] = y.Chx[l] = y.W0[l] = y.WT0[l] = y.W[l] = y.WT[l] = y.Z[l] = y.H[l] = y.A[l] =
        y.E[l] = y.cHt[l] = y.cW[l] = y.cG[l] = y.cZ[l] = y.cH[l] = y.wofs[l] = y.eHt[l] =
            y.vW[l] = y.vWT[l] = y.vZ[l] = y.vH[l] = kNone;
  const tm::Net& n = s.net;
  const int L = n.L, d = n.w[0], m = n.w[L], N = s.N;
  int maxw = 0;
  for (int l = 1; l <= L; ++l) maxw = std::max(maxw, n.w[l]);
  const bool nonlin = n.act != tm::kLinear;
  const auto matched = [&](int l) { return l < L && (s.mask >> l & 1u); };
  long long top = 0;
  const auto take = [&top](long long count) {  // 32-byte aligned for float and double
    const long long at = top;
    top += (count + 3) / 4 * 4;
    if (top > std::numeric_limits<int>::max()) throw std::runtime_error("cuda: trial arena too large");
    return static_cast<int>(at);
  };
  y.moment = s.moment ? 1 : 0;
  // Trial arena: data part, then initial weights.
  if (s.moment) {
    y.Cxx = take(static_cast<long long>(d) * d);
    y.Cyx = take(static_cast<long long>(m) * d);
    for (int l = 1; l < L; ++l)
      if (matched(l)) y.Chx[l] = take(static_cast<long long>(n.w[l]) * d);
  } else {
    y.X = take(static_cast<long long>(N) * d);
    y.Y = take(static_cast<long long>(N) * m);
    for (int l = 1; l < L; ++l)
      if (matched(l)) y.Ht[l] = take(static_cast<long long>(N) * n.w[l]);
  }
  y.data = static_cast<int>(top);
  for (int l = 1; l <= L; ++l) {
    y.W0[l] = take(static_cast<long long>(n.w[l]) * n.w[l - 1]);
    if (!s.moment) y.WT0[l] = take(static_cast<long long>(n.w[l]) * n.w[l - 1]);
  }
  y.arena = static_cast<int>(top);
  // Network work (fused kernel): the pointers of host/train.cpp's DataPath/MomentPath.
  top = 0;
  for (int l = 1; l <= L; ++l) {
    y.W[l] = take(static_cast<long long>(n.w[l]) * n.w[l - 1]);
    if (!s.moment) y.WT[l] = take(static_cast<long long>(n.w[l]) * n.w[l - 1]);
  }
  if (s.moment) {
    for (int l = 2; l <= L; ++l) y.A[l] = take(static_cast<long long>(n.w[l]) * d);
    for (int l = 1; l <= L; ++l)
      if (l == L || matched(l)) y.E[l] = take(static_cast<long long>(n.w[l]) * d);
    y.Q[0] = take(static_cast<long long>(maxw) * d);
    y.Q[1] = take(static_cast<long long>(maxw) * d);
    y.AT = take(static_cast<long long>(maxw) * d);
    y.D[0] = y.D[1] = kNone;
  } else {
    for (int l = 1; l <= L; ++l) {
      y.Z[l] = take(static_cast<long long>(N) * n.w[l]);
      if (l < L && nonlin) y.H[l] = take(static_cast<long long>(N) * n.w[l]);
    }
    y.D[0] = take(static_cast<long long>(N) * maxw);
    y.D[1] = take(static_cast<long long>(N) * maxw);
    y.Q[0] = y.Q[1] = kNone;
  }
  y.work = static_cast<int>(top);
  // Network work (cuBLAS path, data path only): own data copy, W, G, Z, H, D.
  top = 0;
  if (!s.moment) {
    y.cX = take(static_cast<long long>(N) * d);
    y.cY = take(static_cast<long long>(N) * m);
    for (int l = 1; l <= L; ++l) {
      if (matched(l)) y.cHt[l] = take(static_cast<long long>(N) * n.w[l]);
      y.cW[l] = take(static_cast<long long>(n.w[l]) * n.w[l - 1]);
      y.cG[l] = take(static_cast<long long>(n.w[l]) * n.w[l - 1]);
      y.cZ[l] = take(static_cast<long long>(N) * n.w[l]);
      if (l < L && nonlin) y.cH[l] = take(static_cast<long long>(N) * n.w[l]);
    }
    y.cD[0] = take(static_cast<long long>(N) * maxw);
    y.cD[1] = take(static_cast<long long>(N) * maxw);
  } else {
    y.cD[0] = y.cD[1] = kNone;
  }
  y.cwork = static_cast<int>(top);
  // Snapshot of one network's weights (dense, no padding).
  top = 0;
  for (int l = 1; l <= L; ++l) {
    y.wofs[l] = static_cast<int>(top);
    top += static_cast<long long>(n.w[l]) * n.w[l - 1];
  }
  y.wsize = static_cast<int>(top);
  // Eval arena (double).
  top = 0;
  y.eX = take(static_cast<long long>(N) * d);
  y.eY = take(static_cast<long long>(N) * m);
  for (int l = 1; l < L; ++l)
    if (matched(l)) y.eHt[l] = take(static_cast<long long>(N) * n.w[l]);
  if (s.exact) {
    y.eWstar = take(static_cast<long long>(m) * d);
    y.eMhalf = take(static_cast<long long>(d) * s.k);
  } else if (s.n_test > 0) {
    y.eXt = take(static_cast<long long>(s.n_test) * d);
    y.eYt = take(static_cast<long long>(s.n_test) * m);
  }
  y.eval = static_cast<int>(top);
  // Eval work (double): weights in both layouts, forward workspace for the
  // larger of the training and test sets, the end-to-end ping-pong.
  top = 0;
  const int rows = std::max(N, s.exact ? 0 : s.n_test);
  for (int l = 1; l <= L; ++l) {
    y.vW[l] = take(static_cast<long long>(n.w[l]) * n.w[l - 1]);
    y.vWT[l] = take(static_cast<long long>(n.w[l]) * n.w[l - 1]);
    y.vZ[l] = take(static_cast<long long>(rows) * n.w[l]);
    if (l < L && nonlin) y.vH[l] = take(static_cast<long long>(rows) * n.w[l]);
  }
  y.vD[0] = take(static_cast<long long>(rows) * maxw);
  y.vD[1] = take(static_cast<long long>(rows) * maxw);
  y.vA[0] = take(static_cast<long long>(maxw) * d);
  y.vA[1] = take(static_cast<long long>(maxw) * d);
  y.vwork = static_cast<int>(top);
  return y;
}

// ------------------------------------------------------------------ memory --
// One device allocation and one pinned host allocation per in-flight wave,
// carved per group (bump allocation, 256-byte aligned).
class Pool {
 public:
  Pool() = default;
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  ~Pool() { release(); }
  void allocate(size_t dev_bytes, size_t host_bytes) {
    release();
    STS_CUDA(cudaMalloc(&dev_, dev_bytes));
    dcap_ = dev_bytes;
    try {
      STS_CUDA(cudaMallocHost(&host_, host_bytes));
    } catch (...) {
      release();
      throw;
    }
    hcap_ = host_bytes;
  }
  void release() {
    if (dev_) cudaFree(dev_);
    if (host_) cudaFreeHost(host_);
    dev_ = host_ = nullptr;
    dcap_ = hcap_ = dtop_ = htop_ = 0;
  }
  void reset() { dtop_ = htop_ = 0; }
  size_t dev_capacity() const { return dcap_; }
  bool holds(size_t dev_bytes, size_t host_bytes) const {
    return dev_ && dcap_ >= dev_bytes && hcap_ >= host_bytes;
  }
  // Every byte 0xFF (a NaN in float and double): tests poison the buffers so
  // that an element nothing wrote cannot pass for a result.
  void poison(cudaStream_t s) {
    STS_CUDA(cudaMemsetAsync(dev_, 0xFF, dcap_, s));
    std::memset(host_, 0xFF, hcap_);
  }
  template <class T>
  T* dev(size_t count) { return static_cast<T*>(carve(dev_, dtop_, dcap_, count * sizeof(T), "device")); }
  template <class T>
  T* host(size_t count) { return static_cast<T*>(carve(host_, htop_, hcap_, count * sizeof(T), "host")); }

 private:
  static void* carve(void* base, size_t& top, size_t cap, size_t bytes, const char* what) {
    const size_t at = (top + 255) / 256 * 256;
    if (at + bytes > cap)
      throw std::logic_error(std::string("cuda: ") + what + " pool exhausted (sizing bug)");
    top = at + bytes;
    return static_cast<char*>(base) + at;
  }
  void* dev_ = nullptr;
  void* host_ = nullptr;
  size_t dcap_ = 0, hcap_ = 0, dtop_ = 0, htop_ = 0;
};

// Bytes one trial needs (two networks), for a layout.
struct TrialBytes {
  size_t dev = 0, host = 0;
};
TrialBytes trial_bytes(const Layout& y, size_t real, int maxck) {
  const size_t slots = static_cast<size_t>(maxck) + 2;
  TrialBytes b;
  const size_t common = y.arena * real + y.eval * 8 + sizeof(TrialScalars) + maxck * 8 +
                        2 * (sizeof(NetRef) + sizeof(NetState)) + 2 * slots * 3 * 8;
  b.host = common + 6 * 256 / 16;  // alignment, amortised over >= 16 trials
  b.dev = common + 2 * slots * y.wsize * 8 + 2 * std::max(y.work, y.cwork) * real + 10 * 256 / 16;
  return b;
}

// --------------------------------------------------------------- packing --
void put(double* dst, const Matrix& M) { std::copy(M.a.begin(), M.a.end(), dst); }
void put_t(double* dst, const Matrix& M) {  // M^T (samples as rows)
  for (int i = 0; i < M.rows; ++i)
    for (int j = 0; j < M.cols; ++j) dst[static_cast<size_t>(j) * M.rows + i] = M(i, j);
}
template <class Real>
void put(Real* dst, const Matrix& M) {
  for (size_t i = 0; i < M.a.size(); ++i) dst[i] = static_cast<Real>(M.a[i]);
}
template <class Real>
void put_t(Real* dst, const Matrix& M) {
  for (int i = 0; i < M.rows; ++i)
    for (int j = 0; j < M.cols; ++j) dst[static_cast<size_t>(j) * M.rows + i] = static_cast<Real>(M(i, j));
}
void expect(const Matrix& M, int r, int c, const char* what) {
  if (M.rows != r || M.cols != c)
    throw std::logic_error(std::string("cuda: ") + what + " is " + std::to_string(M.rows) + "x" +
                           std::to_string(M.cols) + ", expected " + std::to_string(r) + "x" +
                           std::to_string(c));
}

// A set-up trial and how it trains.
struct Prepared {
  size_t index = 0;  // in the batch
  TrialProblem pr;
  tm::Net net;
  uint32_t mask = 0;
  bool moment = false;
};

template <class Real>
void pack_trial(const Prepared& p, const Shape& s, const Layout& y, Real* arena, double* eval,
                TrialScalars& ts) {
  const TrialProblem& pr = p.pr;
  const tm::Net& n = s.net;
  const int L = n.L, d = n.w[0], m = n.w[L], N = s.N;
  for (int l = 1; l <= L; ++l) {
    expect(pr.W0[l], n.w[l], n.w[l - 1], "W0");
    put(arena + y.W0[l], pr.W0[l]);
    if (!y.moment) put_t(arena + y.WT0[l], pr.W0[l]);
  }
  expect(pr.Xn, d, N, "inputs");
  expect(pr.Y, m, N, "labels");
  ts = TrialScalars{};
  if (y.moment) {
    const TrialMoments mo = trial_moments(pr, s.mask);
    put(arena + y.Cxx, mo.Cxx);
    put(arena + y.Cyx, mo.Cyx);
    ts.tr_yy = mo.tr_yy;
    for (int l = 1; l < L; ++l)
      if (y.Chx[l] != kNone) {
        put(arena + y.Chx[l], mo.Chx[l]);
        ts.tr_hh[l] = mo.tr_hh[l];
      }
  } else {
    put_t(arena + y.X, pr.Xn);
    put_t(arena + y.Y, pr.Y);
    for (int l = 1; l < L; ++l)
      if (y.Ht[l] != kNone) {
        expect(pr.feature[l], n.w[l], N, "teacher features");
        put_t(arena + y.Ht[l], pr.feature[l]);
      }
  }
  put_t(eval + y.eX, pr.Xn);
  put_t(eval + y.eY, pr.Y);
  for (int l = 1; l < L; ++l)
    if (y.eHt[l] != kNone) {
      expect(pr.feature[l], n.w[l], N, "teacher features");
      put_t(eval + y.eHt[l], pr.feature[l]);
    }
  if (y.eWstar != kNone) {
    expect(pr.Wstar, m, d, "Wstar");
    expect(pr.Mhalf, d, s.k, "Mhalf");
    put(eval + y.eWstar, pr.Wstar);
    put(eval + y.eMhalf, pr.Mhalf);
  }
  if (y.eXt != kNone) {
    expect(pr.Xtest, d, s.n_test, "test inputs");
    expect(pr.Ytest, m, s.n_test, "test targets");
    put_t(eval + y.eXt, pr.Xtest);
    put_t(eval + y.eYt, pr.Ytest);
  }
  ts.lambda = pr.params.lambda;
  ts.lr = pr.params.lr;
  ts.sigma = pr.sigma;
  ts.sigma_y = pr.sigma_y;
  ts.T = pr.params.steps;
  ts.nck = static_cast<int>(pr.checkpoints.size());
}

// ----------------------------------------------------------------- backend --
Path path_from_env(Path dflt) {
  const char* e = std::getenv("STSWEEP_CUDA_PATH");
  if (!e || !*e) return dflt;
  const std::string v(e);
  if (v == "auto") return Path::automatic;
  if (v == "fused") return Path::fused;
  if (v == "general") return Path::general;
  if (v == "cublas") return Path::cublas;
  throw std::runtime_error("STSWEEP_CUDA_PATH=" + v + ": expected auto, fused, general or cublas");
}

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { STS_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~Stream() {
    if (s) cudaStreamDestroy(s);
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
  std::vector<size_t> members;  // indices into the wave's prepared trials
  std::vector<NetRef> nets;
  int maxck = 0, slots = 0;
  const NetState* state = nullptr;   // pinned, filled by D2H
  const double* metrics = nullptr;   // pinned
  std::unique_ptr<Event> t0, t1, t2;  // before training, after training, after eval
  double flops = 0;
};

struct Wave {
  Pool pool;
  std::vector<Prepared> prepared;
  std::vector<Launched> groups;
  bool busy = false;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(const RunOptions& opt, Path path, int device) : threads_(opt.threads), path_(path), dev_(device) {
    STS_CUDA(cudaSetDevice(dev_));
    STS_CUDA(cudaGetDeviceProperties(&prop_, dev_));
    STS_CUDA(cudaDeviceGetAttribute(&optin_, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev_));
    const cublasStatus_t cs = cublasCreate(&cublas_);
    if (cs != CUBLAS_STATUS_SUCCESS)
      throw std::runtime_error(std::string("cublasCreate: ") + cublasGetStatusString(cs));
    static_shared_ = fused_static_shared_bytes();
  }
  ~CudaBackend() override {
    for (auto& w : waves_) {
      if (w.busy) cudaStreamSynchronize(streams_[&w - waves_].s);
      w.pool.release();
    }
    if (cublas_) cublasDestroy(cublas_);
  }
  std::string name() const override { return "cuda"; }
  std::string device() const override {
    return std::string(prop_.name) + " (sm_" + std::to_string(prop_.major) +
           std::to_string(prop_.minor) + ", " + std::to_string(prop_.multiProcessorCount) + " SMs, " +
           std::to_string(prop_.totalGlobalMem >> 20) + " MiB)";
  }
  RunStats stats() const { return stats_; }

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
    return out;
  }

 private:
  // Worst case over paths and matched layers of the batch's shape.
  template <class Real>
  TrialBytes worst_bytes(const Batch& b, int maxck, size_t* eval_work) const {
    const TrialParams& p0 = b.trials[0];
    Shape s;
    std::vector<int> w{p0.d};
    for (int h : p0.hidden) w.push_back(h);
    w.push_back(p0.m);
    s.net = make_net(w, p0.activation);
    s.N = p0.n_train;
    s.n_test = p0.n_test;
    s.k = p0.k;
    s.exact = p0.linear();
    s.mask = 0;
    for (int l = 1; l < s.net.L; ++l) s.mask |= 1u << l;
    TrialBytes worst;
    for (int moment = 0; moment < 2; ++moment) {
      s.moment = moment;
      const Layout y = make_layout(s);
      const TrialBytes tb = trial_bytes(y, sizeof(Real), maxck);
      worst.dev = std::max(worst.dev, tb.dev);
      worst.host = std::max(worst.host, tb.host);
      *eval_work = std::max(*eval_work, static_cast<size_t>(y.vwork) * 8);
    }
    return worst;
  }

  int eval_blocks(size_t vwork_bytes, size_t budget) const {
    const size_t want = static_cast<size_t>(prop_.multiProcessorCount) * 8;
    return static_cast<int>(std::max<size_t>(1, std::min(want, budget / std::max<size_t>(vwork_bytes, 1))));
  }

  template <class Real>
  void run_all(const Batch& batch, const RunOptions& opt, std::vector<TrialResult>& out) {
    const Path want = path_;
    const char* poison = std::getenv("STSWEEP_CUDA_POISON");
    poison_ = poison && *poison && std::string(poison) != "0";
    const size_t n = batch.trials.size();
    int maxck = 2;
    for (const TrialParams& p : batch.trials)
      maxck = std::max<int>(maxck, static_cast<int>(std::min<int64_t>(std::max(p.checkpoints, 2),
                                                                       int64_t(p.steps) + 1)));
    size_t vwork = 0;
    const TrialBytes tb = worst_bytes<Real>(batch, maxck, &vwork);
    // Capacity: half the free memory per wave (two in flight), 1/8 of a wave
    // for the evaluation workspace.
    size_t free_b = 0, total_b = 0;
    STS_CUDA(cudaMemGetInfo(&free_b, &total_b));
    for (const auto& w : waves_) free_b += w.pool.dev_capacity();  // kept from the last run
    const size_t budget = free_b / 2 * 8 / 10;
    const int eb = eval_blocks(vwork, budget / 8);
    const size_t fixed = static_cast<size_t>(eb) * vwork + (1 << 20);
    size_t cap = budget > fixed ? (budget - fixed) / tb.dev : 0;
    cap = std::min<size_t>({cap, n, kMaxChunkTrials});
    if (cap == 0) cap = 1;
    for (;;) {
      try {
        const size_t dev = cap * tb.dev + fixed, host = cap * tb.host + (1 << 20);
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
    const int nthreads = std::max(1, threads_ > 0 ? threads_ : opt.threads > 0 ? opt.threads
                                                             : static_cast<int>(std::thread::hardware_concurrency()));
    size_t wave_no = 0;
    try {
      for (size_t lo = 0; lo < n; lo += cap, ++wave_no) {
        const size_t hi = std::min(n, lo + cap);
        Wave& w = waves_[wave_no % 2];
        Stream& st = streams_[wave_no % 2];
        // Set up on the host while the other wave trains.
        std::vector<Prepared> prepared = setup(batch, lo, hi, opt, nthreads, out);
        if (w.busy) finish<Real>(w, st, batch, out);
        w.prepared = std::move(prepared);
        w.pool.reset();
        if (poison_) w.pool.poison(st.s);
        launch<Real>(w, st, want, eb, vwork);
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

  std::vector<Prepared> setup(const Batch& batch, size_t lo, size_t hi, const RunOptions& opt,
                              int nthreads, std::vector<TrialResult>& out) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::unique_ptr<Prepared>> slot(hi - lo);
    std::atomic<size_t> next{lo};
    auto work = [&] {
      for (size_t i; (i = next.fetch_add(1)) < hi;) {
        const int64_t id = i < batch.ids.size() ? batch.ids[i] : static_cast<int64_t>(i);
        TrialResult& r = out[i];
        r.trial = id;
        try {
          auto p = std::make_unique<Prepared>();
          p->index = i;
          p->pr = setup_trial(batch.trials[i], opt.sweep_seed);
          if (static_cast<int>(p->pr.w.size()) != p->pr.L + 1)
            throw std::logic_error("train: widths do not match the depth");
          if (static_cast<int>(p->pr.W0.size()) != p->pr.L + 1)
            throw std::logic_error("train: W0 has wrong depth");
          if (static_cast<int>(p->pr.feature.size()) < p->pr.L && !p->pr.matched.empty())
            throw std::logic_error("train: teacher features missing");
          p->net = make_net(p->pr.w, p->pr.params.activation);
          p->mask = matched_mask(p->pr);
          p->moment = trains_on_moments(p->pr);
          slot[i - lo] = std::move(p);
        } catch (const InputError& e) {
          r.status = Status::failed;
          r.message = std::string("input error: ") + e.what();
        } catch (const std::exception& e) {
          r.status = Status::failed;
          r.message = e.what();
        }
      }
    };
    const int nt = static_cast<int>(std::min<size_t>(hi - lo, static_cast<size_t>(nthreads)));
    if (nt <= 1) {
      work();
    } else {
      std::vector<std::thread> pool;
      for (int t = 0; t < nt; ++t) pool.emplace_back(work);
      for (auto& th : pool) th.join();
    }
    std::vector<Prepared> prepared;
    prepared.reserve(hi - lo);
    for (auto& p : slot)
      if (p) prepared.push_back(std::move(*p));
    stats_.setup_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return prepared;
  }

  void log_once(const std::string& msg) {
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    if (logged_.insert(msg).second) std::cerr << "stsweep: cuda: " << msg << "\n";
  }

  template <class Real>
  void launch(Wave& w, Stream& st, Path want, int eb, size_t vwork_bytes) {
    w.groups.clear();
    // Group by (path, matched layers): one layout per group.
    std::map<std::pair<int, uint32_t>, std::vector<size_t>> groups;
    for (size_t i = 0; i < w.prepared.size(); ++i)
      groups[{w.prepared[i].moment ? 1 : 0, w.prepared[i].mask}].push_back(i);
    double* eval_ws = nullptr;
    for (auto& [key, members] : groups) {
      const Prepared& p0 = w.prepared[members[0]];
      Shape s;
      s.net = p0.net;
      s.N = p0.pr.Xn.cols;
      s.n_test = p0.pr.params.linear() ? 0 : p0.pr.Xtest.cols;
      s.k = p0.pr.Mhalf.cols;
      s.mask = key.second;
      s.moment = key.first != 0;
      s.exact = p0.pr.params.linear();
      const Layout y = make_layout(s);
      // Which trainer.
      const size_t shared = (static_cast<size_t>(y.data) + y.work) * sizeof(Real);
      const bool fits = shared + static_shared_ <= static_cast<size_t>(optin_);
      Path path = want;
      if (path == Path::automatic) path = fits ? Path::fused : s.moment ? Path::general : Path::cublas;
      if (path == Path::fused && !fits) {
        log_once("arena of " + std::to_string(shared >> 10) + " KB does not fit a block (" +
                 std::to_string((optin_ - static_shared_) >> 10) + " KB): general path");
        path = Path::general;
      }
      if (path == Path::cublas && s.moment) {
        log_once("the cuBLAS path has no moment path: general path for moment-path trials");
        path = Path::general;
      }
      paths_.insert(cuda::name(path));

      Launched g;
      g.members = members;
      int maxck = 0;
      for (size_t i : members) maxck = std::max<int>(maxck, static_cast<int>(w.prepared[i].pr.checkpoints.size()));
      g.maxck = maxck;
      g.slots = maxck + 2;
      const size_t nt = members.size();
      for (size_t j = 0; j < nt; ++j) {
        g.nets.push_back({static_cast<int>(j), 0});
        if (w.prepared[members[j]].pr.params.baseline) g.nets.push_back({static_cast<int>(j), 1});
      }
      const size_t nn = g.nets.size();
      // Host staging.
      Real* h_arena = w.pool.host<Real>(nt * y.arena);
      double* h_eval = w.pool.host<double>(nt * y.eval);
      TrialScalars* h_ts = w.pool.host<TrialScalars>(nt);
      long long* h_ck = w.pool.host<long long>(nt * maxck);
      NetRef* h_nets = w.pool.host<NetRef>(nn);
      NetState* h_state = w.pool.host<NetState>(nn);
      double* h_metrics = w.pool.host<double>(nn * g.slots * 3);
      int ck_off = 0;
      for (size_t j = 0; j < nt; ++j) {
        const Prepared& p = w.prepared[members[j]];
        pack_trial<Real>(p, s, y, h_arena + j * y.arena, h_eval + j * y.eval, h_ts[j]);
        h_ts[j].ck_offset = ck_off;
        for (int64_t c : p.pr.checkpoints) h_ck[ck_off++] = c;
        g.flops += (s.moment ? tm::moment_step_flops(s.net, p.mask) : tm::data_step_flops(s.net, s.N));
      }
      std::copy(g.nets.begin(), g.nets.end(), h_nets);
      // Device buffers and copies.
      TrainArgs<Real> a;
      a.net = s.net;
      a.mask = s.mask;
      a.N = s.N;
      a.lay = y;
      Real* d_arena = w.pool.dev<Real>(nt * y.arena);
      double* d_eval = w.pool.dev<double>(nt * y.eval);
      TrialScalars* d_ts = w.pool.dev<TrialScalars>(nt);
      long long* d_ck = w.pool.dev<long long>(std::max(ck_off, 1));
      NetRef* d_nets = w.pool.dev<NetRef>(nn);
      NetState* d_state = w.pool.dev<NetState>(nn);
      double* d_snap = w.pool.dev<double>(nn * g.slots * y.wsize);
      double* d_metrics = w.pool.dev<double>(nn * g.slots * 3);
      Real* d_work = nullptr;
      if (path == Path::general) d_work = w.pool.dev<Real>(nn * y.work);
      if (path == Path::cublas) d_work = w.pool.dev<Real>(nn * y.cwork);
      if (!eval_ws) eval_ws = w.pool.dev<double>(static_cast<size_t>(eb) * vwork_bytes / 8);
      STS_CUDA(cudaMemcpyAsync(d_arena, h_arena, nt * y.arena * sizeof(Real), cudaMemcpyHostToDevice, st.s));
      STS_CUDA(cudaMemcpyAsync(d_eval, h_eval, nt * y.eval * sizeof(double), cudaMemcpyHostToDevice, st.s));
      STS_CUDA(cudaMemcpyAsync(d_ts, h_ts, nt * sizeof(TrialScalars), cudaMemcpyHostToDevice, st.s));
      STS_CUDA(cudaMemcpyAsync(d_ck, h_ck, ck_off * sizeof(long long), cudaMemcpyHostToDevice, st.s));
      STS_CUDA(cudaMemcpyAsync(d_nets, h_nets, nn * sizeof(NetRef), cudaMemcpyHostToDevice, st.s));
      a.arena = d_arena;
      a.work = d_work;
      a.nets = d_nets;
      a.nnets = static_cast<int>(nn);
      a.trials = d_ts;
      a.ck = d_ck;
      a.snap = d_snap;
      a.slots = g.slots;
      a.state = d_state;
      g.t0 = std::make_unique<Event>();
      g.t1 = std::make_unique<Event>();
      g.t2 = std::make_unique<Event>();
      STS_CUDA(cudaEventRecord(g.t0->e, st.s));
      if (path == Path::cublas) {
        long long maxT = 0;
        for (size_t i : members) maxT = std::max<long long>(maxT, w.prepared[i].pr.params.steps);
        train_cublas<Real>(cublas_, a, maxT, st.s);
      } else {
        a.shared = path == Path::fused ? 1 : 0;
        const size_t dyn = a.shared ? shared : 0;
        if (dyn > 48 * 1024) fused_prepare<Real>(dyn);
        launch_fused<Real>(a, dyn, st.s);
      }
      STS_CUDA(cudaEventRecord(g.t1->e, st.s));
      EvalArgs e;
      e.net = s.net;
      e.mask = s.mask;
      e.N = s.N;
      e.n_test = s.n_test;
      e.k = s.k;
      e.exact = s.exact ? 1 : 0;
      e.lay = y;
      e.arena = d_eval;
      e.work = eval_ws;
      e.nets = d_nets;
      e.nnets = static_cast<int>(nn);
      e.trials = d_ts;
      e.snap = d_snap;
      e.slots = g.slots;
      e.maxck = maxck;
      e.state = d_state;
      e.metrics = d_metrics;
      launch_eval(e, static_cast<int>(std::min<long long>(eb, static_cast<long long>(nn) * g.slots)), st.s);
      STS_CUDA(cudaEventRecord(g.t2->e, st.s));
      STS_CUDA(cudaMemcpyAsync(h_state, d_state, nn * sizeof(NetState), cudaMemcpyDeviceToHost, st.s));
      STS_CUDA(cudaMemcpyAsync(h_metrics, d_metrics, nn * g.slots * 3 * sizeof(double),
                               cudaMemcpyDeviceToHost, st.s));
      g.state = h_state;
      g.metrics = h_metrics;
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
      // Per network: its trace from the state and the metrics of its slots.
      std::vector<NetTrace> traces(g.nets.size());
      for (size_t k = 0; k < g.nets.size(); ++k) {
        const NetState& s = g.state[k];
        const Prepared& p = w.prepared[g.members[g.nets[k].trial]];
        const size_t nck = p.pr.checkpoints.size();
        const double* m = g.metrics + k * g.slots * 3;
        NetTrace& tr = traces[k];
        tr.test.assign(nck, kNaN);
        tr.label.assign(nck, kNaN);
        tr.feature.assign(nck, kNaN);
        for (size_t c = 0; c < nck && static_cast<int>(c) < s.written; ++c) {
          tr.test[c] = m[c * 3];
          tr.label[c] = m[c * 3 + 1];
          tr.feature[c] = m[c * 3 + 2];
        }
        const double* f = m + static_cast<size_t>(g.slots - 2) * 3;
        const double* l = m + static_cast<size_t>(g.slots - 1) * 3;
        tr.first = {f[0], f[1], f[2]};
        tr.last = {l[0], l[1], l[2]};
        tr.diverged = s.diverged != 0;
        tr.steps_run = s.steps_run;
        tr.diverged_loss = s.diverged_loss;
        stats_.net_steps += static_cast<double>(s.steps_run);
        stats_.flops += static_cast<double>(s.steps_run) * g.flops / g.members.size();
      }
      for (size_t k = 0; k < g.nets.size(); ++k) {
        if (g.nets[k].twin) continue;
        const Prepared& p = w.prepared[g.members[g.nets[k].trial]];
        const bool twin = k + 1 < g.nets.size() && g.nets[k + 1].twin && g.nets[k + 1].trial == g.nets[k].trial;
        TrialResult r = assemble_trial_result(p.pr, traces[k], twin ? &traces[k + 1] : nullptr);
        r.trial = p.index < batch.ids.size() ? batch.ids[p.index] : static_cast<int64_t>(p.index);
        out[p.index] = std::move(r);
      }
    }
    w.groups.clear();
    w.prepared.clear();
  }

  int threads_;
  Path path_;
  int dev_;
  cudaDeviceProp prop_{};
  int optin_ = 0;
  size_t static_shared_ = 0;
  cublasHandle_t cublas_ = nullptr;
  Stream streams_[2];
  Wave waves_[2];
  RunStats stats_;
  bool poison_ = false;
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

}  // namespace

const char* name(Path p) {
  switch (p) {
    case Path::fused: return "fused";
    case Path::general: return "general";
    case Path::cublas: return "cublas";
    default: return "auto";
  }
}

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

}  // namespace stsweep::cuda

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
