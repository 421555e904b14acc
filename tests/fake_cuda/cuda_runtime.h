// A fake CUDA runtime: the part of the runtime API that kernels/cuda_backend.cu
// uses, implemented on the host (fake_runtime.cpp), so that the CUDA backend's
// own host code (waves, pools, streams, the teacher pass, out-of-memory
// handling, several devices) runs in the CPU test suite. Not a GPU model:
//   - device memory is host memory, counted against a configurable size per
//     device (fake_device.hpp), so cudaMemGetInfo and out-of-memory are real;
//   - each stream is a queue of deferred operations that run, in order, only
//     when the host synchronises with it (cudaStreamSynchronize, a copy into
//     pageable memory, cudaFree): a result read before its stream is synchronised
//     is whatever was there before (the backend poisons it in the tests);
//   - kernels are launched by tests/fake_cuda/fake_runtime.cpp's launchers, which
//     run kernels/device_body.hpp's bodies on one-thread host teams (the CPU's
//     bits: tests compare with the CPU backend bit for bit);
//   - a file that launches its own kernels (kernels/cuda_cublas.cu) is compiled
//     as it is: __global__ functions are host functions, and STS_LAUNCH
//     (cuda_common.cuh) queues fake_cuda::launch, which runs the grid's blocks one
//     after another, each with ONE thread (blockDim 1, threadIdx 0): kernels that
//     stride by blockDim and sync with __syncthreads compute what they would
//     compute with a full block, up to the order of their sums;
//   - what real CUDA would do silently is counted instead (fake_device.hpp): an
//     allocation or free while another stream has work pending (the programming
//     guide's implicit synchronisation, which stalls the overlap of set-up with
//     training), work submitted to a stream of another device than the current
//     one, pointers outside any allocation.
// Only the fake targets see this header (test_fake_device, test_cuda_fake,
// bench_cuda_fake); they are built with or without the real toolkit.
#pragma once

#include <cstddef>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorIllegalState = 401,
  cudaErrorNotReady = 600,
  cudaErrorNotSupported = 801,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
  cudaErrorStreamCaptureWrongThread = 908,
};
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2,
};
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2 };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
constexpr unsigned cudaStreamNonBlocking = 1;

struct CUstream_st;
struct CUevent_st;
struct CUgraph_st;
struct CUgraphExec_st;
typedef CUstream_st* cudaStream_t;
typedef CUevent_st* cudaEvent_t;
typedef CUgraph_st* cudaGraph_t;
typedef CUgraphExec_st* cudaGraphExec_t;

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int major, minor;
  int multiProcessorCount;
};

const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaMalloc(void** p, size_t bytes);
cudaError_t cudaMallocHost(void** p, size_t bytes);
cudaError_t cudaFree(void* p);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaDeviceGetStreamPriorityRange(int* least, int* greatest);
cudaError_t cudaStreamCreateWithPriority(cudaStream_t* s, unsigned flags, int priority);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize();  // every stream of the current device (refused while one captures)
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
// Stream capture and graphs: while a stream captures, what is queued on it
// goes into the graph instead of running; a launch of the instantiated graph
// queues it all, in order, as one operation. What CUDA refuses during a
// capture (an allocation or free from the capturing thread, or from any
// thread in global mode; synchronising the capturing stream; a copy from it
// into pageable memory) fails with cudaErrorStreamCaptureUnsupported and
// invalidates the capture, as CUDA does, and is counted (graph_rules).
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);

// ----------------------------------------------------- kernels on the host --
// What a .cu file that launches its own kernels needs from CUDA C++, for the
// host compiler: the qualifiers are nothing (shared memory is per host thread),
// the built-in indices are per host thread, __syncthreads is nothing (one
// thread a block).
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
inline thread_local dim3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0}, blockDim, gridDim;
#define __global__
#define __device__
#define __shared__ static thread_local
#define __launch_bounds__(...)
inline void __syncthreads() {}

namespace fake_cuda {
// fake_runtime.cpp: the launch's configuration against CUDA's limits (a
// refused launch sets cudaGetLastError's error, as CUDA's does), the queue.
bool launch_ok(const char* kernel, dim3 grid, dim3 block, size_t shared, cudaStream_t s);
int stream_device(cudaStream_t s);
void enqueue_kernel(cudaStream_t s, const char* name, std::function<void()> op);
void kernel_arg(const void* p, size_t bytes, int device, const char* what);

// A kernel argument's pointers checked against the stream's device memory:
// nothing for scalars; records overload it (found by argument-dependent lookup).
template <class T>
void kernel_args_on_device(const T&, int) {}

// kernel<<<grid, block, shared, stream>>>(args...) on the fake device: checked
// now, queued on the stream with the arguments copied (as CUDA copies them),
// run block by block when the host synchronises with the stream.
template <class... P>
struct Launch {
  const char* name;
  dim3 grid, block;
  size_t shared;
  cudaStream_t stream;
  void (*kernel)(P...);
  template <class... A>
  void operator()(A&&... args) const {
    if (!launch_ok(name, grid, block, shared, stream)) return;
    std::tuple<std::decay_t<P>...> t(std::forward<A>(args)...);
    const int dev = stream_device(stream);
    std::apply([dev](const auto&... x) { (kernel_args_on_device(x, dev), ...); }, t);
    enqueue_kernel(stream, name, [k = kernel, g = grid, t] {
      gridDim = g;
      blockDim = dim3(1, 1, 1);
      threadIdx = dim3(0, 0, 0);
      for (unsigned z = 0; z < g.z; ++z)
        for (unsigned y = 0; y < g.y; ++y)
          for (unsigned x = 0; x < g.x; ++x) {
            blockIdx = dim3(x, y, z);
            std::apply(k, t);
          }
    });
  }
};
template <class... P>
Launch<P...> launch(const char* name, dim3 grid, dim3 block, size_t shared, cudaStream_t s, void (*k)(P...)) {
  return Launch<P...>{name, grid, block, shared, s, k};
}
}  // namespace fake_cuda
