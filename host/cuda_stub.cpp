// make_cuda_backend when the build has no CUDA: no backend, and why.
#include "backend.hpp"

#if !STSWEEP_HAVE_CUDA
namespace stsweep {
std::unique_ptr<Backend> make_cuda_backend(const RunOptions&, std::string* why) {
  if (why) *why = "built without CUDA";
  return nullptr;
}
}  // namespace stsweep
#endif
