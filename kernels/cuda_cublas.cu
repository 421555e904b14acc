// The cuBLAS trainer: the data path of every network of a group, one step at a
// time, each product of tm::data_forward / tm::data_backward_update as one
// strided-batched GEMM over all networks. It is the yardstick for the fused
// kernel and the path for shapes whose arena does not fit a block.
//
// Matrices are row-major as in trial_math.hpp; cuBLAS is column-major, so a
// row-major r x c matrix is cuBLAS's c x r, and row-major C = A.B is
// column-major C^T = B^T A^T. Per step, for every network n (stride cwork):
//   Z_l = H_{l-1} W_l^T            (N x w_l)       forward, l = 1..L
//   H_l = phi(Z_l)                                    (nonlinear hidden layers)
//   D_L = (Z_L - Y) / N, losses, checkpoints, divergence        (control kernel)
//   G_l = D_l^T H_{l-1}            (w_l x w_{l-1})  backward, l = L..1
//   D_{l-1} = (D_l W_l + cf (H_{l-1} - Ht)) o phi'(Z_{l-1})    (cf = lambda / N)
//   W_l -= lr G_l for networks still running                   (update kernel)
// Per-network lambda and lr enter through the element-wise kernels, so one
// GEMM serves trials with different optimiser settings. Sums run in cuBLAS's
// order: results match the fused kernel to float32 rounding, not bitwise.
#include <cublas_v2.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "cuda_common.cuh"

namespace stsweep::cuda {
namespace {

void check_cublas(cublasStatus_t s, const char* what, const char* file, int line) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  const std::string msg = std::string(file) + ":" + std::to_string(line) + ": " + what + ": " +
                          cublasGetStatusName(s) + " (" + cublasGetStatusString(s) + ")";
  if (s == CUBLAS_STATUS_ALLOC_FAILED) throw OutOfMemory(msg);
  throw std::runtime_error(msg);
}
#define STS_CUBLAS(expr) check_cublas((expr), #expr, __FILE__, __LINE__)

// C (m x n, ldc) = alpha op(A) op(B), column-major, batched over networks.
cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                    int k, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
                    long long stride, int batch) {
  const float one = 1.f, zero = 0.f;
  return cublasSgemmStridedBatched(h, ta, tb, m, n, k, &one, A, lda, stride, B, ldb, stride, &zero,
                                   C, ldc, stride, batch);
}
cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                    int k, const double* A, int lda, const double* B, int ldb, double* C, int ldc,
                    long long stride, int batch) {
  const double one = 1.0, zero = 0.0;
  return cublasDgemmStridedBatched(h, ta, tb, m, n, k, &one, A, lda, stride, B, ldb, stride, &zero,
                                   C, ldc, stride, batch);
}

// Copies each network's data and initial weights into its own work region
// (the twin reads the same trial: strided batches need one stride).
template <class Real>
__global__ void cublas_init(const TrainArgs<Real> a) {
  const Layout& lay = a.lay;
  const NetRef nr = a.nets[blockIdx.x];
  const Real* ar = a.arena + static_cast<size_t>(nr.trial) * lay.arena;
  Real* w = a.work + static_cast<size_t>(blockIdx.x) * lay.cwork;
  const int N = a.N;
  auto copy = [&](int dst, int src, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) w[dst + i] = ar[src + i];
  };
  copy(lay.cX, lay.X, N * a.net.w[0]);
  copy(lay.cY, lay.Y, N * a.net.w[a.net.L]);
  for (int l = 1; l <= a.net.L; ++l) {
    if (lay.cHt[l] != kNone) copy(lay.cHt[l], lay.Ht[l], N * a.net.w[l]);
    copy(lay.cW[l], lay.W0[l], a.net.w[l] * a.net.w[l - 1]);
  }
  if (threadIdx.x == 0) {
    NetState st{};
    st.steps_run = -1;  // running
    st.step = 0;
    a.state[blockIdx.x] = st;
  }
}

template <class Real>
__global__ void cublas_activate(const TrainArgs<Real> a, int l) {
  const int n = a.N * a.net.w[l];
  Real* w = a.work + static_cast<size_t>(blockIdx.y) * a.lay.cwork;
  const Real* Z = w + a.lay.cZ[l];
  Real* H = w + a.lay.cH[l];
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    H[i] = tm::activate(a.net.act, Z[i]);
}

template <class Real>
__device__ void snapshot(const TrainArgs<Real>& a, const Real* w, double* dst) {
  for (int l = 1; l <= a.net.L; ++l) {
    const int n = a.net.w[l] * a.net.w[l - 1];
    for (int i = threadIdx.x; i < n; i += blockDim.x)
      dst[a.lay.wofs[l] + i] = static_cast<double>(w[a.lay.cW[l] + i]);
  }
}

// One block per network at step t: residual D_L, losses (training mask),
// checkpoint snapshots, divergence and the end of the run (Trainer::run's rules).
// The step t is the network's own counter (NetState::step), not an argument:
// a captured graph's arguments are fixed, and one graph serves every step.
template <class Real>
__global__ void __launch_bounds__(kThreads) cublas_control(const TrainArgs<Real> a) {
  __shared__ double red[32];
  const BlockTeam team{red};
  const int net_id = blockIdx.x;
  NetState st = a.state[net_id];
  if (st.steps_run >= 0) return;  // stopped
  const long long t = st.step;
  const NetRef nr = a.nets[net_id];
  const TrialScalars& ts = a.trials[nr.trial];
  const Layout& lay = a.lay;
  const tm::Net& net = a.net;
  const int L = net.L, N = a.N;
  Real* w = a.work + static_cast<size_t>(net_id) * lay.cwork;
  const Real invN = Real(1) / Real(N);
  Real lab = 0, fea = 0;
  {
    const Real* O = w + lay.cZ[L];
    const Real* Y = w + lay.cY;
    Real* D = w + lay.cD[L % 2];
    for (int i = team.rank(); i < N * net.w[L]; i += team.size()) {
      const Real r = O[i] - Y[i];
      D[i] = r * invN;
      lab = tm::fmadd(r, r, lab);
    }
  }
  const uint32_t tmask = nr.twin ? 0u : a.mask;
  for (int l = 1; l < L; ++l) {
    if (!(tmask >> l & 1u)) continue;
    const Real* H = w + (lay.cH[l] == kNone ? lay.cZ[l] : lay.cH[l]);
    const Real* T = w + lay.cHt[l];
    for (int i = team.rank(); i < N * net.w[l]; i += team.size()) {
      const Real r = H[i] - T[i];
      fea = tm::fmadd(r, r, fea);
    }
  }
  tm::Losses<Real> loss;
  loss.label = Real(0.5) * invN * team.sum(lab);
  loss.feature = Real(0.5) * invN * team.sum(fea);
  const Real lam = static_cast<Real>(nr.twin ? 0.0 : ts.lambda);
  double* snap = a.snap + static_cast<size_t>(net_id) * a.slots * lay.wsize;
  const long long* ck = a.ck + ts.ck_offset;
  if (st.written < ts.nck && ck[st.written] == t)
    snapshot(a, w, snap + static_cast<size_t>(st.written++) * lay.wsize);
  if (t == 0) snapshot(a, w, snap + static_cast<size_t>(a.slots - 2) * lay.wsize);
  const double total = static_cast<double>(loss.total(lam));
  if (t == 0) st.loss0 = total;
  st.rise.add(t, total, st.loss0, kZeroLossRtol);
  bool stop = false;
  if (!isfinite(total) || (st.loss0 > 0 && total > kDivergeFactor * st.loss0)) {
    st.diverged = 1;
    st.diverged_loss = total;
    stop = true;
  }
  if (t >= ts.T) stop = true;
  if (stop) {
    st.steps_run = t;
    snapshot(a, w, snap + static_cast<size_t>(a.slots - 1) * lay.wsize);
  } else {
    st.step = t + 1;
  }
  __syncthreads();
  if (team.rank() == 0) a.state[net_id] = st;
}

// D_{l-1} <- (D_{l-1} + cf (H_{l-1} - Ht)) o phi'(Z_{l-1}), after D_{l-1} = D_l W_l.
template <class Real>
__global__ void cublas_delta(const TrainArgs<Real> a, int l) {  // l = the layer below (l-1 above)
  const int net_id = blockIdx.y;
  const NetRef nr = a.nets[net_id];
  const bool m = !nr.twin && (a.mask >> l & 1u);
  const Real cf = static_cast<Real>(a.trials[nr.trial].lambda) / Real(a.N);
  const Layout& lay = a.lay;
  Real* w = a.work + static_cast<size_t>(net_id) * lay.cwork;
  Real* P = w + lay.cD[l % 2];
  const Real* Z = w + lay.cZ[l];
  const Real* H = w + (lay.cH[l] == kNone ? lay.cZ[l] : lay.cH[l]);
  const Real* T = m ? w + lay.cHt[l] : nullptr;
  const int n = a.N * a.net.w[l];
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    Real v = P[i];
    if (m) v = tm::fmadd(cf, H[i] - T[i], v);
    if (a.net.act != tm::kLinear) v *= tm::activate_deriv(a.net.act, Z[i], H[i]);
    P[i] = v;
  }
}

template <class Real>
__global__ void cublas_update(const TrainArgs<Real> a) {
  const int net_id = blockIdx.y;
  if (a.state[net_id].steps_run >= 0) return;  // stopped: weights frozen
  const Real lr = static_cast<Real>(a.trials[a.nets[net_id].trial].lr);
  Real* w = a.work + static_cast<size_t>(net_id) * a.lay.cwork;
  for (int l = 1; l <= a.net.L; ++l) {
    Real* W = w + a.lay.cW[l];
    const Real* G = w + a.lay.cG[l];
    const int n = a.net.w[l] * a.net.w[l - 1];
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
      W[i] = tm::fmadd(-lr, G[i], W[i]);
  }
}

int blocks_for(int n) { return (n + kThreads - 1) / kThreads < 8 ? (n + kThreads - 1) / kThreads : 8; }

// A capture of stream s into a graph: ended, and its graph dropped, if
// anything throws before instantiate(). Thread-local mode: CUDA refuses
// unsafe calls (an allocation, a synchronisation) from this thread while it
// captures, and lets the host's other threads (set-up, other devices) go on.
class Capture {
 public:
  explicit Capture(cudaStream_t s) {
    STS_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    s_ = s;
  }
  Capture(const Capture&) = delete;
  Capture& operator=(const Capture&) = delete;
  ~Capture() {
    if (!s_) return;
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(s_, &g);  // an invalidated capture: an error and no graph
    if (g) cudaGraphDestroy(g);
    (void)cudaGetLastError();
  }
  std::unique_ptr<GraphExec> instantiate() {
    cudaGraph_t g = nullptr;
    const cudaError_t e = cudaStreamEndCapture(s_, &g);
    s_ = nullptr;
    STS_CUDA(e);
    auto x = std::make_unique<GraphExec>();
    const cudaError_t ei = cudaGraphInstantiate(&x->exec, g, 0);
    cudaGraphDestroy(g);
    STS_CUDA(ei);
    return x;
  }

 private:
  cudaStream_t s_ = nullptr;
};

}  // namespace

template <class Real>
CublasQueued train_cublas(void* handle, const TrainArgs<Real>& a, long long maxT, cudaStream_t s, long long graph_steps) {
  CublasQueued q;
  if (a.nnets == 0) return q;
  cublasHandle_t h = static_cast<cublasHandle_t>(handle);
  STS_CUBLAS(cublasSetStream(h, s));
  STS_CUBLAS(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));  // no TF32: float32 products
  const Layout& lay = a.lay;
  const tm::Net& net = a.net;
  const int L = net.L, N = a.N, B = a.nnets;
  const long long st = lay.cwork;
  Real* w = a.work;
  const auto OpN = CUBLAS_OP_N, OpT = CUBLAS_OP_T;
  STS_LAUNCH(cublas_init<Real>, B, kThreads, 0, s)(a);
  STS_CUDA_LAUNCHED("cublas_init");
  auto hidden = [&](int l) { return w + (lay.cH[l] == kNone ? lay.cZ[l] : lay.cH[l]); };
  // One step of every network: forward, control (losses, checkpoints, stop),
  // then, unless `control_only`, backward and update. A step after a
  // network's stop leaves it as it is (control and update skip it).
  auto step = [&](bool control_only) {
    for (int l = 1; l <= L; ++l) {
      const Real* Hp = l == 1 ? w + lay.cX : hidden(l - 1);
      STS_CUBLAS(gemm(h, OpT, OpN, net.w[l], N, net.w[l - 1], w + lay.cW[l], net.w[l - 1], Hp,
                      net.w[l - 1], w + lay.cZ[l], net.w[l], st, B));
      if (l < L && lay.cH[l] != kNone) {
        STS_LAUNCH(cublas_activate<Real>, dim3(blocks_for(N * net.w[l]), B), kThreads, 0, s)(a, l);
        STS_CUDA_LAUNCHED("cublas_activate");
      }
    }
    STS_LAUNCH(cublas_control<Real>, B, kThreads, 0, s)(a);
    STS_CUDA_LAUNCHED("cublas_control");
    if (control_only) return;
    for (int l = L; l >= 1; --l) {
      const Real* Dl = w + lay.cD[l % 2];
      const Real* Hp = l == 1 ? w + lay.cX : hidden(l - 1);
      // G_l (row-major w_l x w_{l-1}) = D_l^T H_{l-1}: column-major G^T = H^T D.
      STS_CUBLAS(gemm(h, OpN, OpT, net.w[l - 1], net.w[l], N, Hp, net.w[l - 1], Dl, net.w[l],
                      w + lay.cG[l], net.w[l - 1], st, B));
      if (l == 1) break;
      // D_{l-1} = D_l W_l (N x w_{l-1}): column-major W^T-view times D^T.
      STS_CUBLAS(gemm(h, OpN, OpN, net.w[l - 1], N, net.w[l], w + lay.cW[l], net.w[l - 1], Dl,
                      net.w[l], w + lay.cD[(l - 1) % 2], net.w[l - 1], st, B));
      if (net.act != tm::kLinear || (a.mask >> (l - 1) & 1u)) {
        STS_LAUNCH(cublas_delta<Real>, dim3(blocks_for(N * net.w[l - 1]), B), kThreads, 0, s)(a, l - 1);
        STS_CUDA_LAUNCHED("cublas_delta");
      }
    }
    STS_LAUNCH(cublas_update<Real>, dim3(8, B), kThreads, 0, s)(a);
    STS_CUDA_LAUNCHED("cublas_update");
  };
  // Steps 0..maxT: the last one stops every network (t >= T). With graphs:
  // graph A of graph_steps steps, launched as often as the steps fill it
  // (when A's last launch ends at step maxT, that step's update changes
  // nothing), then graph B of the steps left, the last control only,
  // launched once: a group queues a handful of operations, far fewer than a
  // launch queue holds. Without (or when CUDA refuses a capture), the steps
  // left one by one.
  long long left = maxT + 1;
  auto graphed = [&](long long count, long long times, bool ends_run) {
    std::unique_ptr<GraphExec> g;
    try {
      Capture cap(s);
      for (long long k = 0; k < count; ++k) step(ends_run && k == count - 1);
      g = cap.instantiate();
    } catch (const std::exception& e) {
      q.fallback = e.what();
      (void)cudaGetLastError();
      return false;
    }
    for (long long i = 0; i < times; ++i) STS_CUDA(cudaGraphLaunch(g->exec, s));
    q.graphs.push_back(std::move(g));
    left -= count * times;
    return true;
  };
  if (graph_steps > 0) {
    const long long n = left / graph_steps;
    if ((n == 0 || graphed(graph_steps, n, false)) && left > 0) graphed(left, 1, true);
  }
  for (; left > 0; --left) step(left == 1);
  return q;
}

template CublasQueued train_cublas<float>(void*, const TrainArgs<float>&, long long, cudaStream_t, long long);
template CublasQueued train_cublas<double>(void*, const TrainArgs<double>&, long long, cudaStream_t, long long);

}  // namespace stsweep::cuda
