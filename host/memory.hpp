// The process's allocator policy (glibc malloc).
//
// A trial allocates its matrices once: the data, the teacher's features, the
// Monte Carlo test set (d x n_test doubles: 1 MB at n_test = 2000) and the
// evaluator's work. glibc serves blocks above its mmap threshold (128 KiB at
// first) with fresh mmap'd pages and gives freed memory back above its trim
// threshold, so every trial paid its megabytes again in page faults and zero
// fills: 116,000 minor faults for 64 tanh trials, 17% of their wall time
// (docs/PERFORMANCE.md, "Nonlinear students"). tune_malloc raises both
// thresholds so freed blocks stay in the process for the next trial: the
// resident size stays near its peak instead of going up and down.
#pragma once

namespace stsweep {

// Sets glibc's M_MMAP_THRESHOLD to 32 MiB (its largest) and M_TRIM_THRESHOLD
// to 256 MiB. Returns whether it did; it does nothing when
//   STSWEEP_MALLOC=system (glibc's own policy: the yardstick, or when another
//     allocator is preloaded),
//   GLIBC_TUNABLES sets a glibc.malloc tunable (the user's choice stands),
//   the allocator is not glibc's (another C library, or a sanitizer's).
// Throws InputError("STSWEEP_MALLOC", ...) for any other value than `tuned`
// (the default) or `system`.
bool tune_malloc();

}  // namespace stsweep
