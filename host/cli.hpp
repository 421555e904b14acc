// stsweep's subcommands. Each file host/cli_*.cpp adds its own to the app.
// Exit codes: 0 ok, 2 bad input, 1 failure at run time.
#pragma once

#include <climits>
#include <cstdint>
#include <exception>
#include <functional>
#include <vector>

#include <CLI/CLI.hpp>

#include "backend.hpp"

namespace stsweep::cli {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitBadInput = 2;

// A subcommand's action; runs after parsing and returns the exit code.
using Action = std::function<int()>;
struct Registry {
  std::vector<std::pair<CLI::App*, Action>> actions;
  void add(CLI::App* sub, Action a) { actions.emplace_back(sub, std::move(a)); }
};

// Checks for numeric options, with messages that say what is expected (CLI11's
// own NonNegativeNumber says "not in range 0.000000 to 1.797...e308", lets
// "nan" through and lets "-3" wrap round into an unsigned option).
// A whole number in [lo, hi], in decimal digits (no sign, point or exponent).
CLI::Validator count_check(long long lo, long long hi = LLONG_MAX);
inline const CLI::Validator kCount = count_check(0);          // 0, 1, 2, ...
inline const CLI::Validator kPositiveCount = count_check(1);  // 1, 2, 3, ...
// A finite number >= 0 (seconds, megabytes).
extern const CLI::Validator kFiniteNonNegative;

// Writes an action's exception to stderr ("stsweep: error: ..." for bad
// input, "stsweep: failed: ..." otherwise) and returns its exit code.
int report_error(const std::exception_ptr& e);

// The backend of --backend auto|cpu|cuda (one GPU): for `auto` without a
// usable GPU the CPU's, with `why` saying why; `cuda` without one is a
// failure (exit 1: the same command may work on another machine).
std::unique_ptr<Backend> choose_backend(const std::string& backend, const RunOptions& ro, std::string* why);

// Two-sided 95% quantile of Student's t with `df` degrees of freedom (summary's
// intervals, estimate's).
double t975(int64_t df);

void add_sweep_commands(CLI::App& app, Registry& r);    // validate, list   (cli_sweep.cpp)
void add_run_command(CLI::App& app, Registry& r);       // run              (cli_run.cpp)
void add_results_commands(CLI::App& app, Registry& r);  // merge, info, summary (cli_results.cpp)
void add_export_command(CLI::App& app, Registry& r);    // export           (cli_export.cpp)
void add_estimate_command(CLI::App& app, Registry& r);  // estimate         (cli_estimate.cpp)

}  // namespace stsweep::cli
