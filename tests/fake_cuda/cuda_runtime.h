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
//   - what real CUDA would do silently is counted instead (fake_device.hpp): an
//     allocation or free while another stream has work pending (the programming
//     guide's implicit synchronisation, which stalls the overlap of set-up with
//     training), work submitted to a stream of another device than the current
//     one, pointers outside any allocation.
// Only the fake targets see this header (test_fake_device, test_cuda_fake,
// bench_cuda_fake); they are built with or without the real toolkit.
#pragma once

#include <cstddef>

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
};
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2 };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
constexpr unsigned cudaStreamNonBlocking = 1;

struct CUstream_st;
struct CUevent_st;
typedef CUstream_st* cudaStream_t;
typedef CUevent_st* cudaEvent_t;

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
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
