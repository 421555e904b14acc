// The fake CUDA runtime (cuda_runtime.h, cublas_v2.h, fake_device.hpp) and the
// fake device's kernel launchers (kernels/cuda_common.cuh's declarations),
// which run kernels/device_body.hpp's bodies on one-thread host teams. The
// cuBLAS trainer is kernels/cuda_cublas.cu itself (cuda_cublas_fake.cpp) on
// this file's cuBLAS and fake_cuda::launch.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "cublas_v2.h"
#include "cuda_common.cuh"
#include "cuda_runtime.h"
#include "device_body.hpp"
#include "device_emu.hpp"
#include "device_plan.hpp"
#include "fake_device.hpp"

using Ops = std::vector<std::function<void()>>;
struct CUstream_st {
  int device = 0;
  std::deque<std::function<void()>> q;  // deferred operations, in order
  // While capturing (cudaStreamBeginCapture): the graph's operations, in order.
  std::shared_ptr<Ops> capture;
  bool invalidated = false;  // the capture met an operation CUDA refuses
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::thread::id capturer;
};
struct CUgraph_st {
  int device = 0;
  std::shared_ptr<const Ops> ops;
};
struct CUgraphExec_st {
  int device = 0;
  std::shared_ptr<const Ops> ops;
  std::shared_ptr<std::atomic<int>> pending = std::make_shared<std::atomic<int>>(0);  // launches not yet run
};
struct CUevent_st {
  bool done = false;  // recorded and reached by its stream
  std::chrono::steady_clock::time_point t;
};
struct cublasContext {
  int device = 0;                  // current at cublasCreate
  cudaStream_t stream = nullptr;   // cublasSetStream (null: the legacy default stream, which the fake lacks)
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
  cudaStream_t last = nullptr;     // the stream of the handle's last product
};

namespace fake_cuda {
namespace {

struct Alloc {
  size_t bytes = 0;
  int device = 0;
  bool pinned = false;  // cudaMallocHost
};

// The configuration a process starts with: the defaults, or the environment
// (STSWEEP_FAKE_CUDA_DEVICES, STSWEEP_FAKE_CUDA_MEMORY_MB) for stsweep_fake.
Config initial() {
  Config c;
  if (const char* e = std::getenv("STSWEEP_FAKE_CUDA_DEVICES")) c.devices = std::atoi(e);
  if (const char* e = std::getenv("STSWEEP_FAKE_CUDA_MEMORY_MB")) c.memory = size_t(std::atoll(e)) << 20;
  return c;
}

struct State {
  std::mutex mu;
  Config cfg = initial();
  Counters c;
  std::map<const char*, Alloc> allocs;  // by first byte
  std::map<int, size_t> used;           // device bytes in use, per device
  std::set<CUstream_st*> streams;
  long long graphs_live = 0;
  cudaError_t last = cudaSuccess;
};
State& st() {
  static State s;
  return s;
}
thread_local int current = 0;

// Under st().mu.
void broke(long long Counters::*what, const std::string& msg) {
  ++(st().c.*what);
  if (st().c.notes.size() < 100) st().c.notes.push_back(msg);
}
cudaError_t fail(cudaError_t e) {
  st().last = e;
  return e;
}

// The allocation that holds [p, p + n) (under st().mu), or null.
const Alloc* holding(const void* p, size_t n) {
  auto& a = st().allocs;
  const char* c = static_cast<const char*>(p);
  auto it = a.upper_bound(c);
  if (it == a.begin()) return nullptr;
  --it;
  if (c < it->first || c + n > it->first + it->second.bytes) return nullptr;
  return &it->second;
}
bool in_device(const void* p, size_t n, int device) {
  const Alloc* a = holding(p, n);
  return a && !a->pinned && a->device == device;
}
bool in_pinned(const void* p, size_t n) {
  const Alloc* a = holding(p, n);
  return a && a->pinned;
}

// Streams of `device` with work pending (under st().mu), for the notes.
std::string pending(int device) {
  std::string s;
  for (CUstream_st* x : st().streams)
    if (x->device == device && !x->q.empty())
      s += (s.empty() ? "" : ", ") + std::to_string(x->q.size()) + " operations";
  return s;
}

// Runs a stream's queue to its end (not under st().mu: the operations run the kernels).
void flush(CUstream_st* s) {
  for (;;) {
    std::function<void()> op;
    {
      std::lock_guard<std::mutex> lock(st().mu);
      if (s->q.empty()) return;
      op = std::move(s->q.front());
      s->q.pop_front();
    }
    op();
  }
}
void flush_device(int device) {
  std::vector<CUstream_st*> v;
  {
    std::lock_guard<std::mutex> lock(st().mu);
    for (CUstream_st* x : st().streams)
      if (x->device == device) v.push_back(x);
  }
  for (CUstream_st* x : v) flush(x);
}

// An allocation or free: stalls the overlap when a stream has work pending.
void check_quiet(const char* call) {
  const std::string p = pending(current);
  if (!p.empty())
    broke(&Counters::stalls, std::string(call) + " on device " + std::to_string(current) +
                                 " while streams have work pending (" + p + ")");
}

void enqueue(CUstream_st* s, const char* what, std::function<void()> op) {
  std::lock_guard<std::mutex> lock(st().mu);
  if (s->device != current)
    broke(&Counters::wrong_device, std::string(what) + " on a stream of device " + std::to_string(s->device) +
                                       " while device " + std::to_string(current) + " is current");
  if (s->capture) {
    s->capture->push_back(std::move(op));  // into the graph: runs when a launch of it runs
  } else {
    s->q.push_back(std::move(op));
    st().c.max_queue = std::max<long long>(st().c.max_queue, static_cast<long long>(s->q.size()));
  }
}

// Under st().mu: whether CUDA refuses `call` (an allocation or free) while a
// stream captures: from the capturing thread, or from any thread when the
// capture is in global mode. It then invalidates the capture.
bool refused_in_capture(const char* call) {
  for (CUstream_st* x : st().streams) {
    if (!x->capture) continue;
    const bool mine = x->capturer == std::this_thread::get_id();
    if (x->mode == cudaStreamCaptureModeRelaxed || (x->mode == cudaStreamCaptureModeThreadLocal && !mine)) continue;
    x->invalidated = true;
    broke(&Counters::graph_rules, std::string(call) + " while a stream captures (" +
                                      (mine ? "this thread's capture" : "another thread's capture, global mode") + ")");
    return true;
  }
  return false;
}
// Under st().mu: CUDA refuses to wait for a capturing stream.
bool refused_wait(CUstream_st* s, const char* call) {
  if (!s->capture) return false;
  s->invalidated = true;
  broke(&Counters::graph_rules, std::string(call) + " of a stream that captures");
  return true;
}

}  // namespace

void reset(const Config& c) {
  std::lock_guard<std::mutex> lock(st().mu);
  st().cfg = c;
  const long long live = static_cast<long long>(st().allocs.size());
  st().c = Counters{};
  st().c.live = live;
  st().last = cudaSuccess;
}

Counters counters() {
  std::lock_guard<std::mutex> lock(st().mu);
  Counters c = st().c;
  c.live = static_cast<long long>(st().allocs.size());
  c.graphs_live = st().graphs_live;
  return c;
}

// Checks that a kernel argument lies in device memory of `device` (null: an
// optional buffer the kernel does not touch).
void kernel_arg(const void* p, size_t bytes, int device, const char* what) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(st().mu);
  if (!in_device(p, std::max<size_t>(bytes, 1), device))
    broke(&Counters::bad_pointers, std::string("kernel argument ") + what + " is not device memory of device " +
                                       std::to_string(device));
}

// A kernel for stream s: counted, then queued like any other operation.
void enqueue_kernel(cudaStream_t s, const char* name, std::function<void()> op) {
  {
    std::lock_guard<std::mutex> lock(st().mu);
    ++st().c.launches;
  }
  enqueue(s, name, std::move(op));
}

}  // namespace fake_cuda

using namespace fake_cuda;

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureWrongThread: return "cudaErrorStreamCaptureWrongThread";
  }
  return "cudaError(fake)";
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaErrorMemoryAllocation: return "out of memory (fake device)";
    case cudaErrorNotReady: return "device not ready (fake device)";
    default: return "fake device error";
  }
}
cudaError_t cudaGetLastError() {
  std::lock_guard<std::mutex> lock(st().mu);
  const cudaError_t e = st().last;
  st().last = cudaSuccess;
  return e;
}
cudaError_t cudaGetDeviceCount(int* count) {
  std::lock_guard<std::mutex> lock(st().mu);
  *count = st().cfg.devices;
  return st().cfg.devices > 0 ? cudaSuccess : fail(cudaErrorNoDevice);
}
cudaError_t cudaSetDevice(int device) {
  std::lock_guard<std::mutex> lock(st().mu);
  if (device < 0 || device >= st().cfg.devices) return fail(cudaErrorInvalidDevice);
  current = device;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  std::lock_guard<std::mutex> lock(st().mu);
  if (device < 0 || device >= st().cfg.devices) return fail(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "fake device %d (host)", device);
  p->totalGlobalMem = st().cfg.memory;
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 4;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  std::lock_guard<std::mutex> lock(st().mu);
  if (device < 0 || device >= st().cfg.devices) return fail(cudaErrorInvalidDevice);
  if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin) return fail(cudaErrorInvalidValue);
  *value = static_cast<int>(st().cfg.shared_optin);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  std::lock_guard<std::mutex> lock(st().mu);
  *total_bytes = st().cfg.memory;
  *free_bytes = st().cfg.memory - std::min(st().cfg.memory, st().used[current]) + st().cfg.reported_extra;
  return cudaSuccess;
}

namespace {
cudaError_t allocate(void** p, size_t bytes, bool pinned) {
  std::lock_guard<std::mutex> lock(st().mu);
  if (refused_in_capture(pinned ? "cudaMallocHost" : "cudaMalloc")) return fail(cudaErrorStreamCaptureUnsupported);
  check_quiet(pinned ? "cudaMallocHost" : "cudaMalloc");
  if (!pinned && st().used[current] + bytes > st().cfg.memory) {
    ++st().c.out_of_memory;
    return fail(cudaErrorMemoryAllocation);
  }
  const size_t n = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
  char* m = static_cast<char*>(std::aligned_alloc(256, n));
  if (!m) return fail(cudaErrorMemoryAllocation);
  std::memset(m, 0xFF, n);  // NaN bytes: what no one wrote cannot pass for a result
  st().allocs[m] = Alloc{std::max<size_t>(bytes, 1), current, pinned};
  if (!pinned) {
    st().used[current] += bytes;
    st().c.peak = std::max(st().c.peak, st().used[current]);
  }
  ++st().c.allocations;
  *p = m;
  return cudaSuccess;
}
cudaError_t release(void* p, bool pinned) {
  if (!p) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(st().mu);
    if (refused_in_capture(pinned ? "cudaFreeHost" : "cudaFree")) return fail(cudaErrorStreamCaptureUnsupported);
    check_quiet(pinned ? "cudaFreeHost" : "cudaFree");
  }
  flush_device(current);  // a free waits for the device
  std::lock_guard<std::mutex> lock(st().mu);
  auto it = st().allocs.find(static_cast<const char*>(p));
  if (it == st().allocs.end() || it->second.pinned != pinned) {
    broke(&Counters::bad_pointers, std::string(pinned ? "cudaFreeHost" : "cudaFree") + " of an unknown pointer");
    return fail(cudaErrorInvalidValue);
  }
  if (!pinned) st().used[it->second.device] -= it->second.bytes;
  st().allocs.erase(it);
  std::free(p);
  return cudaSuccess;
}
}  // namespace

cudaError_t cudaMalloc(void** p, size_t bytes) { return allocate(p, bytes, false); }
cudaError_t cudaMallocHost(void** p, size_t bytes) { return allocate(p, bytes, true); }
cudaError_t cudaFree(void* p) { return release(p, false); }
cudaError_t cudaFreeHost(void* p) { return release(p, true); }

cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
  {
    std::lock_guard<std::mutex> lock(st().mu);
    if (bytes && !in_device(p, bytes, s->device)) {
      broke(&Counters::bad_pointers, "cudaMemsetAsync outside device memory");
      return fail(cudaErrorInvalidValue);
    }
  }
  enqueue(s, "cudaMemsetAsync", [p, value, bytes] { std::memset(p, value, bytes); });
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
  if (bytes == 0) return cudaSuccess;
  bool pinned = false;
  {
    std::lock_guard<std::mutex> lock(st().mu);
    const void* dev = kind == cudaMemcpyHostToDevice ? dst : src;
    const void* host = kind == cudaMemcpyHostToDevice ? src : dst;
    if (!in_device(dev, bytes, s->device) || holding(host, bytes) && !in_pinned(host, bytes)) {
      broke(&Counters::bad_pointers, std::string("cudaMemcpyAsync ") +
                                         (kind == cudaMemcpyHostToDevice ? "to" : "from") +
                                         " something that is not device memory of the stream's device");
      return fail(cudaErrorInvalidValue);
    }
    pinned = in_pinned(host, bytes);
    if (kind == cudaMemcpyDeviceToHost && !pinned && refused_wait(s, "cudaMemcpyAsync into pageable memory"))
      return fail(cudaErrorStreamCaptureUnsupported);
  }
  if (kind == cudaMemcpyHostToDevice) {
    if (pinned) {  // read when the copy runs: the host must not touch it before
      enqueue(s, "cudaMemcpyAsync", [dst, src, bytes] { std::memcpy(dst, src, bytes); });
    } else {  // pageable: staged at once
      auto copy = std::make_shared<std::vector<char>>(static_cast<const char*>(src),
                                                      static_cast<const char*>(src) + bytes);
      enqueue(s, "cudaMemcpyAsync", [dst, copy] { std::memcpy(dst, copy->data(), copy->size()); });
    }
  } else {
    enqueue(s, "cudaMemcpyAsync", [dst, src, bytes] { std::memcpy(dst, src, bytes); });
    if (!pinned) flush(s);  // into pageable memory: returns when the copy is done
  }
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  std::lock_guard<std::mutex> lock(st().mu);
  *s = new CUstream_st;
  (*s)->device = current;
  st().streams.insert(*s);
  return cudaSuccess;
}
cudaError_t cudaDeviceGetStreamPriorityRange(int* least, int* greatest) {
  *least = 0;
  *greatest = -5;
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithPriority(cudaStream_t* s, unsigned flags, int) {
  return cudaStreamCreateWithFlags(s, flags);
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  flush(s);
  std::lock_guard<std::mutex> lock(st().mu);
  if (s->capture) broke(&Counters::graph_rules, "cudaStreamDestroy of a stream that captures");
  st().streams.erase(s);
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  {
    std::lock_guard<std::mutex> lock(st().mu);
    if (refused_wait(s, "cudaStreamSynchronize")) return fail(cudaErrorStreamCaptureUnsupported);
  }
  flush(s);
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  {
    std::lock_guard<std::mutex> lock(st().mu);
    for (CUstream_st* x : st().streams)
      if (x->device == current && refused_wait(x, "cudaDeviceSynchronize")) return fail(cudaErrorStreamCaptureUnsupported);
  }
  flush_device(current);
  return cudaSuccess;
}

// ------------------------------------------------------- capture, graphs --
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
  std::lock_guard<std::mutex> lock(st().mu);
  if (!s || !st().streams.count(s) || s->capture) return fail(cudaErrorIllegalState);
  s->capture = std::make_shared<Ops>();
  s->invalidated = false;
  s->mode = mode;
  s->capturer = std::this_thread::get_id();
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
  std::lock_guard<std::mutex> lock(st().mu);
  *graph = nullptr;
  if (!s || !s->capture) return fail(cudaErrorIllegalState);
  if (s->mode != cudaStreamCaptureModeRelaxed && s->capturer != std::this_thread::get_id()) {
    s->invalidated = true;  // as CUDA: the capture is spoilt
    return fail(cudaErrorStreamCaptureWrongThread);
  }
  std::shared_ptr<Ops> ops = std::move(s->capture);
  s->capture.reset();
  if (s->invalidated) return fail(cudaErrorStreamCaptureInvalidated);
  *graph = new CUgraph_st{s->device, std::move(ops)};
  ++st().graphs_live;
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  std::lock_guard<std::mutex> lock(st().mu);
  *exec = nullptr;
  if (!graph) return fail(cudaErrorInvalidValue);
  if (st().cfg.refuse_graphs) return fail(cudaErrorNotSupported);
  *exec = new CUgraphExec_st;
  (*exec)->device = graph->device;
  (*exec)->ops = graph->ops;  // an executable graph outlives its graph
  ++st().graphs_live;
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  {
    std::lock_guard<std::mutex> lock(st().mu);
    if (!exec || !s || !st().streams.count(s)) return fail(cudaErrorInvalidResourceHandle);
    if (exec->device != s->device)
      broke(&Counters::wrong_device, "cudaGraphLaunch of a graph of device " + std::to_string(exec->device) +
                                         " on a stream of device " + std::to_string(s->device));
    ++st().c.graph_launches;
    ++*exec->pending;
  }
  enqueue(s, "cudaGraphLaunch", [ops = exec->ops, pending = exec->pending] {
    for (const auto& op : *ops) op();
    --*pending;
  });
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  if (!exec) return cudaSuccess;
  std::lock_guard<std::mutex> lock(st().mu);
  if (*exec->pending > 0)
    broke(&Counters::graph_rules, "cudaGraphExecDestroy with " + std::to_string(exec->pending->load()) +
                                      " launches of the graph not yet run");
  --st().graphs_live;
  delete exec;  // the queued launches hold the operations (shared), so the fake runs on
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  if (!graph) return cudaSuccess;
  std::lock_guard<std::mutex> lock(st().mu);
  --st().graphs_live;
  delete graph;
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st;
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;  // the backend destroys events only after their streams are synchronised
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  e->done = false;
  enqueue(s, "cudaEventRecord", [e] {
    e->t = std::chrono::steady_clock::now();
    e->done = true;
  });
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  if (!a->done || !b->done) return fail(cudaErrorNotReady);
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}

// ------------------------------------------------------------------ cuBLAS --
cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = new cublasContext;
  (*h)->device = current;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
  {  // the cuBLAS guide: the handle's device stays current from cublasCreate to cublasDestroy
    std::lock_guard<std::mutex> lock(st().mu);
    if (h && h->device != current)
      broke(&Counters::wrong_device, "cublasDestroy of a handle of device " + std::to_string(h->device) +
                                         " while device " + std::to_string(current) + " is current");
  }
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
const char* cublasGetStatusString(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success (fake cuBLAS)";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the handle has no stream (fake cuBLAS)";
    case CUBLAS_STATUS_ALLOC_FAILED: return "resource allocation failed (fake cuBLAS)";
    case CUBLAS_STATUS_INVALID_VALUE: return "an unsupported value or parameter was passed (fake cuBLAS)";
  }
  return "unknown (fake cuBLAS)";
}
const char* cublasGetStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
  h->stream = s;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode) {
  h->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

namespace {
// [lo, hi) of one column-major rows x cols matrix with leading dimension ld.
struct Span {
  const char* lo;
  const char* hi;
  bool overlaps(const Span& o) const { return lo < o.hi && o.lo < hi; }
};
template <class Real>
Span span(const Real* p, int rows, int cols, int ld) {
  const size_t n = rows > 0 && cols > 0 ? static_cast<size_t>(cols - 1) * ld + rows : 0;
  return {reinterpret_cast<const char*>(p), reinterpret_cast<const char*>(p + n)};
}

template <class Real>
cublasStatus_t gemm_strided_batched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                    int k, const Real* alpha, const Real* A, int lda, long long sA, const Real* B,
                                    int ldb, long long sB, const Real* beta, Real* C, int ldc, long long sC,
                                    int batch) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  const bool tA = ta == CUBLAS_OP_T, tB = tb == CUBLAS_OP_T;
  const int rA = tA ? k : m, cA = tA ? m : k, rB = tB ? n : k, cB = tB ? k : n;
  if (m < 0 || n < 0 || k < 0 || batch < 0 || lda < std::max(1, rA) || ldb < std::max(1, rB) ||
      ldc < std::max(1, m) || (ta != CUBLAS_OP_N && !tA) || (tb != CUBLAS_OP_N && !tB))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
  if (!h->stream) {
    std::lock_guard<std::mutex> lock(st().mu);
    broke(&Counters::bad_pointers, "cuBLAS GEMM on the legacy default stream (no cublasSetStream)");
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  {
    std::lock_guard<std::mutex> lock(st().mu);
    if (h->device != current || h->stream->device != h->device)
      broke(&Counters::wrong_device, "cuBLAS handle of device " + std::to_string(h->device) + " used with device " +
                                         std::to_string(current) + " current and a stream of device " +
                                         std::to_string(h->stream->device));
    // Every matrix of the batch, and C apart from A and B (cuBLAS's products
    // are undefined when the output aliases an input).
    const Span a0 = span(A, rA, cA, lda), b0 = span(B, rB, cB, ldb), c0 = span(C, m, n, ldc);
    const long long last = batch - 1;
    const auto whole = [&](const Span& s0, long long stride, const char* what) {
      const char* hi = s0.hi + last * stride * static_cast<long long>(sizeof(Real));
      if (stride < 0 || !in_device(s0.lo, static_cast<size_t>(hi - s0.lo), h->device))
        broke(&Counters::bad_pointers, std::string("cuBLAS GEMM: the batch's ") + what +
                                           " matrices are not device memory of device " + std::to_string(h->device));
    };
    whole(a0, sA, "A");
    whole(b0, sB, "B");
    whole(c0, sC, "C");
    if (c0.overlaps(a0) || c0.overlaps(b0))
      broke(&Counters::bad_pointers, "cuBLAS GEMM: C overlaps A or B");
    // The cuBLAS guide (results reproducibility): streams that share a handle
    // share its workspace, and concurrent products then lose bitwise
    // reproducibility; a handle per stream (or a workspace per stream) keeps it.
    if (h->last && h->last != h->stream && st().streams.count(h->last) && !h->last->q.empty())
      broke(&Counters::shared_blas, "cuBLAS handle used on two streams with work in flight (shared workspace)");
    h->last = h->stream;
    ++st().c.gemms;
  }
  const Real al = *alpha, be = *beta;  // host pointer mode: read at the call
  enqueue_kernel(h->stream, "gemm_strided_batched", [=] {
    for (long long b = 0; b < batch; ++b) {
      const Real* Ab = A + b * sA;
      const Real* Bb = B + b * sB;
      Real* Cb = C + b * sC;
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
          Real acc = 0;
          for (int p = k - 1; p >= 0; --p) {
            const Real x = tA ? Ab[p + static_cast<size_t>(i) * lda] : Ab[i + static_cast<size_t>(p) * lda];
            const Real y = tB ? Bb[j + static_cast<size_t>(p) * ldb] : Bb[p + static_cast<size_t>(j) * ldb];
            acc = std::fma(x, y, acc);
          }
          Real& c = Cb[i + static_cast<size_t>(j) * ldc];
          c = be == Real(0) ? al * acc : al * acc + be * c;
        }
    }
  });
  return CUBLAS_STATUS_SUCCESS;
}
}  // namespace

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                                         int n, int k, const float* alpha, const float* A, int lda,
                                         long long sA, const float* B, int ldb, long long sB,
                                         const float* beta, float* C, int ldc, long long sC, int batch) {
  return gemm_strided_batched(h, ta, tb, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch);
}
cublasStatus_t cublasDgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                                         int n, int k, const double* alpha, const double* A, int lda,
                                         long long sA, const double* B, int ldb, long long sB,
                                         const double* beta, double* C, int ldc, long long sC, int batch) {
  return gemm_strided_batched(h, ta, tb, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch);
}

// --------------------------------------------------------- host launches --
namespace fake_cuda {
bool launch_ok(const char* kernel, dim3 g, dim3 b, size_t shared, cudaStream_t s) {
  std::lock_guard<std::mutex> lock(st().mu);
  const unsigned long long threads = 1ull * b.x * b.y * b.z;
  const bool ok = g.x >= 1 && g.x <= 2147483647u && g.y >= 1 && g.y <= 65535 && g.z >= 1 && g.z <= 65535 &&
                  b.x >= 1 && b.x <= 1024 && b.y >= 1 && b.y <= 1024 && b.z >= 1 && b.z <= 64 &&
                  threads <= 1024 && shared <= stsweep::cuda::kSharedWithoutOptIn;
  if (!ok) {
    st().last = cudaErrorInvalidConfiguration;
    if (st().c.notes.size() < 100)
      st().c.notes.push_back(std::string(kernel) + ": launch refused (grid " + std::to_string(g.x) + "x" +
                             std::to_string(g.y) + "x" + std::to_string(g.z) + ", block " +
                             std::to_string(b.x) + "x" + std::to_string(b.y) + "x" + std::to_string(b.z) + ")");
    return false;
  }
  if (!s || !st().streams.count(s)) {
    st().last = cudaErrorInvalidResourceHandle;
    return false;
  }
  return true;
}
int stream_device(cudaStream_t s) { return s ? s->device : current; }
}  // namespace fake_cuda

// ------------------------------------------------------------- launchers --
namespace stsweep::cuda {

// A launch's records in device memory of the stream's device, each over the
// whole extent the launch may touch: the group's buffer sizes (group_sizes,
// the formulas the backend carves by) for its trials, networks, slots and
// checkpoints. With STSWEEP_CUDA_POOL=split every carve is an allocation of
// its own, so a carve smaller than its launch reads fails here; in one pool it
// runs into the next carve, valid memory (for the fake as for memcheck).
template <class Real>
void train_args_on_device(const TrainArgs<Real>& a, Path path, int dev) {
  const GroupSizes z = group_sizes(a.lay, path, static_cast<size_t>(a.ntrials), static_cast<size_t>(a.nnets),
                                   a.slots, a.ck_total, false);
  fake_cuda::kernel_arg(a.arena, z.arena * sizeof(Real), dev, "arena");
  fake_cuda::kernel_arg(a.work, z.work * sizeof(Real), dev, "work");
  fake_cuda::kernel_arg(a.nets, z.nets * sizeof(NetRef), dev, "nets");
  fake_cuda::kernel_arg(a.trials, z.ts * sizeof(TrialScalars), dev, "trial scalars");
  fake_cuda::kernel_arg(a.ck, z.ck * sizeof(long long), dev, "checkpoints");
  fake_cuda::kernel_arg(a.snap, z.snap * sizeof(double), dev, "snapshots");
  fake_cuda::kernel_arg(a.state, z.nets * sizeof(NetState), dev, "states");
}
// cuda_cublas.cu's kernels (fake_cuda::launch finds it by argument-dependent lookup).
template <class Real>
void kernel_args_on_device(const TrainArgs<Real>& a, int dev) {
  train_args_on_device(a, Path::cublas, dev);
}
template void kernel_args_on_device<float>(const TrainArgs<float>&, int);
template void kernel_args_on_device<double>(const TrainArgs<double>&, int);

namespace {

int device_of(cudaStream_t s) { return s->device; }

// A broken launch geometry (under no lock): counted with the bad pointers.
void geometry_broken(const std::string& msg) {
  std::lock_guard<std::mutex> lock(fake_cuda::st().mu);
  fake_cuda::broke(&fake_cuda::Counters::bad_pointers, msg);
}

// Whether [lo, lo + n) of each piece lies in [0, total) and apart from the others.
bool apart_and_inside(std::vector<std::pair<size_t, size_t>> pieces, size_t total) {
  std::sort(pieces.begin(), pieces.end());
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (pieces[i].first + pieces[i].second > total) return false;
    if (i && pieces[i - 1].first + pieces[i - 1].second > pieces[i].first) return false;
  }
  return true;
}

// The fused and general trainers: every network of the launch, one after the
// other, on a one-thread team with `reals` of "shared memory" (none: the
// general path's global work).
template <class Real>
void train_all(const TrainArgs<Real>& a, size_t reals, bool vector_a) {
  std::vector<Real> sm(reals);
  if (!sm.empty()) std::memset(static_cast<void*>(sm.data()), 0xFF, sm.size() * sizeof(Real));  // null when empty
  run_emulated_team(1, false, [&](const EmuTeam& team) {
    EmuTeam t = team;
    t.one_column = a.one_column != 0;
    Real* p = sm.empty() ? nullptr : sm.data();
    if (vector_a) {
      for (int k = 0; k < a.nnets; ++k) train_network(t, a, k, p);
    } else {
      const EmuTeamScalarA sa{t};
      for (int k = 0; k < a.nnets; ++k) train_network(sa, a, k, p);
    }
  });
}

// warp_train as the GPU launches it: warp_blocks blocks of `warps` warps, one
// after the other, each block with one buffer of warps x reals (poisoned, as
// a block's shared memory starts with anything in it); each warp runs the
// kernel's own body (warp_train_body) on a one-thread team. What the body's
// indexing hands out is checked first: every network once, each warp's slice
// (the layout's data + work) inside the block's buffer and apart from the
// other warps' (a GPU runs them at once; here an overlap would not show).
template <class Real>
void train_warps(const TrainArgs<Real>& a, int warps, int reals, bool vector_a) {
  const int blocks = warp_blocks(a.nnets, warps);
  const size_t used = static_cast<size_t>(a.lay.data) + a.lay.work;
  std::vector<int> trained(static_cast<size_t>(a.nnets), 0);
  for (int b = 0; b < blocks; ++b) {
    std::vector<std::pair<size_t, size_t>> slices;
    for (int w = 0; w < warps; ++w) {
      const int net = warp_network(b, warps, w);
      if (net < 0 || net >= a.nnets) continue;
      ++trained[static_cast<size_t>(net)];
      slices.emplace_back(warp_slice(w, reals), used);
    }
    if (!apart_and_inside(slices, static_cast<size_t>(warps) * reals))
      geometry_broken("warp_train: block " + std::to_string(b) + "'s warps have shared-memory slices that overlap "
                      "or leave its " + std::to_string(warps) + " x " + std::to_string(reals) + " elements");
  }
  for (int k = 0; k < a.nnets; ++k)
    if (trained[static_cast<size_t>(k)] != 1)
      geometry_broken("warp_train: network " + std::to_string(k) + " trained by " +
                      std::to_string(trained[static_cast<size_t>(k)]) + " warps");
  std::vector<Real> sm(static_cast<size_t>(warps) * reals);
  run_emulated_team(1, false, [&](const EmuTeam& team) {
    EmuTeam t = team;
    t.one_column = a.one_column != 0;
    const EmuTeamScalarA sa{t};
    for (int b = 0; b < blocks; ++b) {
      std::memset(static_cast<void*>(sm.data()), 0xFF, sm.size() * sizeof(Real));
      for (int w = 0; w < warps; ++w) {
        if (vector_a)
          warp_train_body(t, a, b, warps, w, reals, sm.data());
        else
          warp_train_body(sa, a, b, warps, w, reals, sm.data());
      }
    }
  });
}

// eval_snapshots as the GPU launches it: `blocks` blocks, one after the
// other, each running the kernel's own body (eval_block: its workspace, its
// grid-strided items). Checked first: every item of the list once, each
// block's workspace inside the launch's blocks x vwork and apart from the
// other blocks'.
void eval_blocks(const EvalArgs& a, int blocks) {
  const long long all = static_cast<long long>(a.nnets) * a.slots;
  const long long n = eval_item_count(a);
  std::vector<int> measured(static_cast<size_t>(all), 0);
  long long visits = 0, outside = 0;
  std::vector<std::pair<size_t, size_t>> spaces;
  for (int b = 0; b < blocks; ++b) {
    spaces.emplace_back(static_cast<size_t>(eval_workspace(a, b) - a.work), static_cast<size_t>(a.lay.vwork));
    eval_block_items(a, b, blocks, [&](long long it) {
      ++visits;
      if (it < 0 || it >= all) ++outside;
      else ++measured[static_cast<size_t>(it)];
    });
  }
  if (visits != n || outside || std::any_of(measured.begin(), measured.end(), [](int c) { return c > 1; }))
    geometry_broken("eval_snapshots: " + std::to_string(blocks) + " blocks measured " + std::to_string(visits) +
                    " items of a list of " + std::to_string(n) + " (" + std::to_string(outside) +
                    " outside the launch, or one twice)");
  if (!apart_and_inside(spaces, static_cast<size_t>(blocks) * a.lay.vwork))
    geometry_broken("eval_snapshots: the blocks' workspaces overlap or leave the launch's " +
                    std::to_string(blocks) + " x vwork");
  run_emulated_team(1, false, [&](const EmuTeam& team) {
    for (int b = 0; b < blocks; ++b) eval_block(team, a, b, blocks);
  });
}

size_t optin() {
  int v = 0;
  cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, fake_cuda::current);
  return static_cast<size_t>(v);
}
constexpr size_t kStaticFused = 32 * sizeof(double);  // fused_train's `red`

// cudaFuncSetAttribute(MaxDynamicSharedMemorySize) as *_prepare makes it: per
// kernel and device (a launch with more than 48 KB of dynamic shared memory
// fails unless the current device's attribute allows it).
std::map<std::tuple<std::string, size_t, int>, size_t>& allowed() {
  static std::map<std::tuple<std::string, size_t, int>, size_t> m;
  return m;
}
void allow(const char* kernel, size_t real, size_t bytes, size_t static_bytes) {
  if (bytes + static_bytes > optin())
    throw std::runtime_error(std::string("fake device: cudaFuncSetAttribute(") + kernel + ", " +
                             std::to_string(bytes) + " bytes): beyond the opt-in shared memory");
  std::lock_guard<std::mutex> lock(fake_cuda::st().mu);
  allowed()[{kernel, real, fake_cuda::current}] = bytes;
}
void check_dynamic(const char* kernel, size_t real, size_t bytes, size_t static_bytes) {
  if (bytes + static_bytes > optin())
    throw std::runtime_error(std::string("fake device: ") + kernel + " launched beyond the opt-in shared memory");
  if (bytes + static_bytes <= kSharedWithoutOptIn) return;  // as a GPU counts: static and dynamic together
  std::lock_guard<std::mutex> lock(fake_cuda::st().mu);
  auto it = allowed().find({kernel, real, fake_cuda::current});
  if (it == allowed().end() || it->second < bytes)
    throw std::runtime_error(std::string("fake device: ") + kernel + " launched with " + std::to_string(bytes) +
                             " bytes of dynamic shared memory, more than cudaFuncSetAttribute allowed on device " +
                             std::to_string(fake_cuda::current) + " (invalid argument on a GPU)");
}

}  // namespace

template <class Real>
void fused_prepare(size_t shared_bytes) {
  allow("fused_train", sizeof(Real), shared_bytes, kStaticFused);
}
template <class Real>
void warp_prepare(size_t shared_bytes) {
  allow("warp_train", sizeof(Real), shared_bytes, 0);
}

template <class Real>
void launch_fused(const TrainArgs<Real>& a, size_t shared_bytes, bool vector_a, cudaStream_t s) {
  if (a.nnets == 0) return;
  if (a.shared) {  // the general variant (data in global memory) is never given more than 48 KB
    check_dynamic("fused_train", sizeof(Real), shared_bytes, kStaticFused);
  } else if (shared_bytes > kSharedWithoutOptIn) {
    throw std::runtime_error("fake device: the general trainer launched with more than 48 KB of dynamic shared memory");
  }
  if (a.shared && shared_bytes < (static_cast<size_t>(a.lay.data) + a.lay.work) * sizeof(Real))
    throw std::runtime_error("fake device: launch_fused with less shared memory than the layout needs");
  train_args_on_device(a, a.shared ? Path::fused : Path::general, device_of(s));
  fake_cuda::enqueue_kernel(s, "fused_train", [a, shared_bytes, vector_a] {
    train_all(a, a.shared ? shared_bytes / sizeof(Real) : 0, vector_a || sizeof(Real) == 8);
  });
}

template <class Real>
void launch_warp(const TrainArgs<Real>& a, int warps, size_t net_shared, bool vector_a, cudaStream_t s) {
  if (a.nnets == 0) return;
  if (warps < 1 || warps > kWarpsPerBlock || net_shared % 16 != 0)
    throw std::logic_error("launch_warp: bad warps or slice size");
  if (!a.shared) throw std::logic_error("launch_warp: the warp path needs the data in shared memory");
  check_dynamic("warp_train", sizeof(Real), warps * net_shared, 0);
  if (net_shared < (static_cast<size_t>(a.lay.data) + a.lay.work) * sizeof(Real))
    throw std::runtime_error("fake device: launch_warp with a slice smaller than the layout needs");
  train_args_on_device(a, Path::warp, device_of(s));
  const int reals = static_cast<int>(net_shared / sizeof(Real));
  fake_cuda::enqueue_kernel(s, "warp_train", [a, warps, reals, vector_a] {
    train_warps(a, warps, reals, vector_a || sizeof(Real) == 8);
  });
}

void launch_eval(const EvalArgs& a, int blocks, cudaStream_t s) {
  if (a.nnets == 0) return;
  if (blocks < 1) throw std::logic_error("fake device: eval_snapshots launched with no block");
  const int dev = device_of(s);
  // The buffers the evaluation reads and writes, over their extents (group_sizes).
  const GroupSizes z = group_sizes(a.lay, Path::fused, static_cast<size_t>(a.ntrials),
                                   static_cast<size_t>(a.nnets), a.slots, a.ck_total, false);
  fake_cuda::kernel_arg(a.work, static_cast<size_t>(blocks) * a.lay.vwork * sizeof(double), dev, "eval workspace");
  fake_cuda::kernel_arg(a.arena, z.eval * sizeof(double), dev, "eval data");
  fake_cuda::kernel_arg(a.nets, z.nets * sizeof(NetRef), dev, "nets");
  fake_cuda::kernel_arg(a.trials, z.ts * sizeof(TrialScalars), dev, "trial scalars");
  fake_cuda::kernel_arg(a.snap, z.snap * sizeof(double), dev, "snapshots");
  fake_cuda::kernel_arg(a.state, z.nets * sizeof(NetState), dev, "states");
  fake_cuda::kernel_arg(a.metrics, z.metrics * sizeof(double), dev, "metrics");
  fake_cuda::kernel_arg(a.items, (z.items + 1) * sizeof(long long), dev, "items");  // the list, then its count
  if (a.items && a.nitems != a.items + z.items)
    geometry_broken("eval_snapshots: the item count is not after the list of nets x slots");
  fake_cuda::enqueue_kernel(s, "eval_snapshots", [a, blocks] { eval_blocks(a, blocks); });
}

size_t fused_static_shared_bytes() { return kStaticFused; }

size_t eval_select_temp_bytes(long long items) { return 512 + static_cast<size_t>(items) * 4; }

void launch_eval_select(void* temp, size_t temp_bytes, const NetState* state, int slots, int maxck,
                        long long items, long long* out, long long* nitems, cudaStream_t s) {
  if (temp_bytes < eval_select_temp_bytes(items))
    throw std::runtime_error("fake device: CUB's temporary storage is too small for " + std::to_string(items) +
                             " items");
  fake_cuda::kernel_arg(temp, temp_bytes, device_of(s), "select temporary storage");
  fake_cuda::kernel_arg(out, sizeof(long long) * (items + 1), device_of(s), "item list");
  fake_cuda::enqueue_kernel(s, "select", [state, slots, maxck, items, out, nitems] {
    long long n = 0;
    for (long long it = 0; it < items; ++it)
      if (eval_needed(state[it / slots], static_cast<int>(it % slots), maxck)) out[n++] = it;
    *nitems = n;
  });
}

template void fused_prepare<float>(size_t);
template void fused_prepare<double>(size_t);
template void warp_prepare<float>(size_t);
template void warp_prepare<double>(size_t);
template void launch_fused<float>(const TrainArgs<float>&, size_t, bool, cudaStream_t);
template void launch_fused<double>(const TrainArgs<double>&, size_t, bool, cudaStream_t);
template void launch_warp<float>(const TrainArgs<float>&, int, size_t, bool, cudaStream_t);
template void launch_warp<double>(const TrainArgs<double>&, int, size_t, bool, cudaStream_t);

}  // namespace stsweep::cuda
