// TEMPORARY: registers the subcommands whose files have not landed yet, each
// failing with a clear "not implemented" message. Deleted as they land.
#include <iostream>

#include "cli.hpp"

namespace stsweep::cli {
namespace {
Action not_yet(const char* what) {
  return [what] {
    std::cerr << "stsweep: " << what << " is not implemented yet\n";
    return kExitFailure;
  };
}
}  // namespace
void add_sweep_commands(CLI::App& app, Registry& r) {
  r.add(app.add_subcommand("validate", "check a sweep file"), not_yet("validate"));
  r.add(app.add_subcommand("list", "list a sweep's trials"), not_yet("list"));
}
void add_run_command(CLI::App& app, Registry& r) {
  r.add(app.add_subcommand("run", "run a sweep"), not_yet("run"));
}
void add_results_commands(CLI::App& app, Registry& r) {
  r.add(app.add_subcommand("merge", "merge shard files"), not_yet("merge"));
  r.add(app.add_subcommand("info", "describe a results file"), not_yet("info"));
  r.add(app.add_subcommand("summary", "summarise a results file"), not_yet("summary"));
}
void add_export_command(CLI::App& app, Registry& r) {
  r.add(app.add_subcommand("export", "export one trial"), not_yet("export"));
}
}  // namespace stsweep::cli
