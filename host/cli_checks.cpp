// Checks for the subcommands' numeric options (cli.hpp).
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <string>

#include "cli.hpp"
#include "params.hpp"

namespace stsweep::cli {

CLI::Validator count_check(long long lo, long long hi) {
  const std::string range = ">= " + std::to_string(lo) + (hi < LLONG_MAX ? " and <= " + std::to_string(hi) : "");
  return CLI::Validator(
      [lo, hi, range](std::string& text) -> std::string {
        // Digits only (no sign, space or exponent), and within long long: trial
        // offsets and counts go up to 2^63 - 1.
        const bool digits = !text.empty() && text.size() <= 19 &&
                            text.find_first_not_of("0123456789") == std::string::npos;
        errno = 0;
        const long long v = digits ? std::strtoll(text.c_str(), nullptr, 10) : lo - 1;
        if (!digits || errno == ERANGE || v < lo || v > hi)
          return "expected an integer " + range + ", got \"" + text + "\"";
        return "";
      },
      "INTEGER " + range);
}

const CLI::Validator kFiniteNonNegative(
    [](std::string& text) -> std::string {
      char* end = nullptr;
      const double v = std::strtod(text.c_str(), &end);
      if (text.empty() || *end != '\0') return "expected a number, got \"" + text + "\"";
      if (!std::isfinite(v) || v < 0) return "expected a finite number >= 0, got " + text;
      return "";
    },
    "NUMBER >= 0");

int report_error(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const InputError& x) {
    std::cerr << "stsweep: error: " << x.what() << "\n";
    return kExitBadInput;
  } catch (const std::exception& x) {
    std::cerr << "stsweep: failed: " << x.what() << "\n";
  } catch (...) {
    std::cerr << "stsweep: failed: an unknown exception\n";
  }
  return kExitFailure;
}

}  // namespace stsweep::cli
