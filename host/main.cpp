// stsweep: the command-line entry point. Each subcommand lives in host/cli_*.cpp.
#include <csignal>
#include <cstdio>
#include <exception>
#include <iostream>
#include <string>

#include "cli.hpp"
#include "memory.hpp"
#include "params.hpp"
#include "version.hpp"

int main(int argc, char** argv) {
  using namespace stsweep;
  // A file-size limit (ulimit -f, a batch system's) makes writes past it fail
  // with EFBIG, which run, merge and export report (exit 1, the temporary
  // copy removed, the journal kept), instead of killing the process.
  std::signal(SIGXFSZ, SIG_IGN);
  try {
    tune_malloc();  // host/memory.hpp: trials reuse freed blocks instead of new pages
  } catch (const InputError& e) {
    std::cerr << "stsweep: error: " << e.what() << "\n";
    return cli::kExitBadInput;
  }
  CLI::App app{"stsweep: student-teacher learning sweeps on CPU and GPU"};
  app.set_version_flag("--version", std::string("stsweep ") + STSWEEP_VERSION + " (git " +
                                        STSWEEP_GIT_COMMIT + ")");
  app.require_subcommand(1);
  cli::Registry reg;
  cli::add_sweep_commands(app, reg);
  cli::add_estimate_command(app, reg);  // validate, list, estimate, then run
  cli::add_run_command(app, reg);
  cli::add_results_commands(app, reg);
  cli::add_export_command(app, reg);
  if (argc > 1 && argv[1][0] != '-') {
    // CLI11 would say only "A subcommand is required" of a misspelt command.
    std::string names;
    bool known = false;
    for (const CLI::App* s : app.get_subcommands([](CLI::App*) { return true; })) {
      known = known || s->get_name() == argv[1];
      names += (names.empty() ? "" : ", ") + s->get_name();
    }
    if (!known) {
      std::cerr << "stsweep: error: unknown command '" << argv[1] << "' (the commands: " << names
                << "; stsweep --help)\n";
      return cli::kExitBadInput;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::cerr << "stsweep: error: " << e.what() << "\n(the options: stsweep "
              << (argc > 1 && argv[1][0] != '-' ? std::string(argv[1]) + " " : "") << "--help)\n";
    return cli::kExitBadInput;
  }
  try {
    for (auto& [sub, action] : reg.actions)
      if (sub->parsed()) return action();
  } catch (...) {
    return cli::report_error(std::current_exception());
  }
  return cli::kExitFailure;
}
