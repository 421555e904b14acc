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
void add_export_command(CLI::App& app, Registry& r) {
  r.add(app.add_subcommand("export", "export one trial"), not_yet("export"));
}
}  // namespace stsweep::cli
