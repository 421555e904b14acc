// Controls and counters of the fake CUDA runtime (tests/fake_cuda/cuda_runtime.h).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace fake_cuda {

struct Config {
  int devices = 1;                       // what cudaGetDeviceCount says
  size_t memory = size_t(256) << 20;     // bytes of device memory per device
  size_t shared_optin = 227 * 1024;      // cudaDevAttrMaxSharedMemoryPerBlockOptin
  size_t reported_extra = 0;             // cudaMemGetInfo says this much more is free than is
  bool refuse_graphs = false;            // cudaGraphInstantiate fails (cudaErrorNotSupported)
};
// Starts afresh: the configuration, zero counters. Allocations still live are
// kept (and counted).
void reset(const Config& c = Config{});

struct Counters {
  long long launches = 0;        // kernels queued or captured (cuBLAS products included)
  long long graph_launches = 0;  // cudaGraphLaunch calls
  long long graphs_live = 0;     // graphs and executable graphs not destroyed
  long long max_queue = 0;       // most operations queued on one stream at once (the fake runs
                                 // them only when the host synchronises; a GPU's launch queue
                                 // holds about a thousand, and a host that queues more waits)
  long long gemms = 0;           // cuBLAS strided-batched products queued
  long long allocations = 0;     // cudaMalloc and cudaMallocHost that succeeded
  long long out_of_memory = 0;   // cudaMalloc refused for the configured memory
  long long live = 0;            // allocations not freed
  size_t peak = 0;               // most device bytes in use on one device at once
  // Rule breaks, each also described in `notes`:
  long long stalls = 0;          // an allocation or free while another stream had work pending
  long long wrong_device = 0;    // work for a stream of another device than the current one
  long long bad_pointers = 0;    // a copy, set or kernel argument outside the allocations (a kernel
                                 // argument over its launch's whole extent), or a launch whose blocks and
                                 // warps share out networks, items, slices or workspaces wrongly
  long long shared_blas = 0;     // a cuBLAS handle's product queued while another stream's product of the
                                 // same handle is pending (they share its workspace: cuBLAS then gives no
                                 // bitwise reproducibility)
  long long graph_rules = 0;     // an operation CUDA refuses while a stream captures (cuda_runtime.h), an
                                 // executable graph destroyed while a launch of it is pending (undefined
                                 // in CUDA), a stream destroyed while it captures
  std::vector<std::string> notes;
};
Counters counters();

}  // namespace fake_cuda
