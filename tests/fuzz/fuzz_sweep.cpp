// libFuzzer target for the sweep file (tools/fuzz sweep builds and runs it;
// ctest `fuzz_sweep_parser`). The contract it checks: any bytes given as a
// sweep file either parse, or fail with an InputError (the message that
// names the field, exit 2), never another exception, a crash or undefined
// behaviour (built with ASan and UBSan). For a sweep that parses: its count,
// axes and hash, the first, middle and last trial, and check_trials over the
// first 16 trials, where an InputError (values that do not combine) is again
// the only allowed failure.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "params.hpp"
#include "sweep.hpp"

using namespace stsweep;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const Sweep s = Sweep::from_text(text, "fuzz.json");
    const uint64_t n = s.count();
    (void)s.axes();
    (void)s.hash();
    if (n > 0) {
      for (uint64_t id : {uint64_t{0}, n / 2, n - 1}) {
        try {
          (void)s.trial_json(id);
          (void)s.trial(id);
        } catch (const InputError&) {
        }
      }
      try {
        (void)check_trials(s, IdRange{0, n < 16 ? n : 16}, 16);
      } catch (const InputError&) {
      }
    }
  } catch (const InputError&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_sweep: bad input gave an exception that is not an InputError: %s\n", e.what());
    std::abort();
  }
  return 0;
}
