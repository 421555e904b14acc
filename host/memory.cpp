#include "memory.hpp"

#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "params.hpp"

namespace stsweep {

namespace {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitizerMalloc = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
constexpr bool kSanitizerMalloc = true;
#else
constexpr bool kSanitizerMalloc = false;
#endif
#else
constexpr bool kSanitizerMalloc = false;
#endif
}  // namespace

bool tune_malloc() {
  const char* policy = std::getenv("STSWEEP_MALLOC");
  const std::string p = policy ? policy : "";
  if (!p.empty() && p != "tuned" && p != "system")
    throw InputError("STSWEEP_MALLOC", "'" + p + "' is not a policy; use 'tuned' (the default) or 'system'");
  if (p == "system" || kSanitizerMalloc) return false;
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables && std::strstr(tunables, "glibc.malloc.")) return false;
#if defined(__GLIBC__)
  // mallopt returns 1 on success; a value above glibc's limit would return 0.
  return mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 256 << 20) == 1;
#else
  return false;
#endif
}

}  // namespace stsweep
