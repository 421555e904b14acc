// make_cuda_backend when the build has no CUDA: no backend, and why.
#include "backend.hpp"

#if !STSWEEP_HAVE_CUDA
namespace stsweep {
std::unique_ptr<Backend> make_cuda_backend(const RunOptions&, std::string* why, int) {
  if (why) *why = "built without CUDA";
  return nullptr;
}
int cuda_device_count() { return 0; }
}  // namespace stsweep
#endif
