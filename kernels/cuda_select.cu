// The evaluation's work items, compacted on the device (CCCL's CUB): only the
// snapshots a network wrote are measured, so a diverged trial's empty
// checkpoint slots cost no eval block. cub::DeviceSelect::If, not thrust::
// copy_if: Thrust returns the count to the host, a stream sync in the middle
// of launching a wave; CUB leaves it in device memory for the eval kernel.
#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include "cuda_common.cuh"

namespace stsweep::cuda {
namespace {

struct Needed {
  const NetState* state;
  int slots, maxck;
  __device__ bool operator()(long long it) const {
    return eval_needed(state[it / slots], static_cast<int>(it % slots), maxck);
  }
};

}  // namespace

size_t eval_select_temp_bytes(long long items) {
  size_t bytes = 0;
  STS_CUDA(cub::DeviceSelect::If(nullptr, bytes, thrust::counting_iterator<long long>(0),
                                 static_cast<long long*>(nullptr), static_cast<long long*>(nullptr),
                                 items, Needed{nullptr, 1, 0}));
  return bytes;
}

void launch_eval_select(void* temp, size_t temp_bytes, const NetState* state, int slots, int maxck,
                        long long items, long long* out, long long* nitems, cudaStream_t s) {
  STS_CUDA(cub::DeviceSelect::If(temp, temp_bytes, thrust::counting_iterator<long long>(0), out,
                                 nitems, items, Needed{state, slots, maxck}, s));
}

}  // namespace stsweep::cuda
