// stsweep's subcommands. Each file host/cli_*.cpp adds its own to the app.
// Exit codes: 0 ok, 2 bad input, 1 failure at run time.
#pragma once

#include <functional>
#include <vector>

#include <CLI/CLI.hpp>

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

void add_sweep_commands(CLI::App& app, Registry& r);    // validate, list   (cli_sweep.cpp)
void add_run_command(CLI::App& app, Registry& r);       // run              (cli_run.cpp)
void add_results_commands(CLI::App& app, Registry& r);  // merge, info, summary (cli_results.cpp)
void add_export_command(CLI::App& app, Registry& r);    // export           (cli_export.cpp)

}  // namespace stsweep::cli
