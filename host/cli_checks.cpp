// Checks for the subcommands' numeric options (cli.hpp).
#include <cmath>
#include <cstdlib>
#include <string>

#include "cli.hpp"

namespace stsweep::cli {

CLI::Validator count_check(long long lo, long long hi) {
  const std::string range =
      ">= " + std::to_string(lo) + (hi < 999999999999999999LL ? " and <= " + std::to_string(hi) : "");
  return CLI::Validator(
      [lo, hi, range](std::string& text) -> std::string {
        const bool digits = !text.empty() && text.size() <= 18 &&
                            text.find_first_not_of("0123456789") == std::string::npos;
        const long long v = digits ? std::stoll(text) : lo - 1;
        if (v < lo || v > hi) return "expected an integer " + range + ", got \"" + text + "\"";
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

}  // namespace stsweep::cli
