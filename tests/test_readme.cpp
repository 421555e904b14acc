// The README's two commands cannot silently break: README leads with them,
// .ci/run calls the test command, and every stsweep command tools/quickstart
// runs is run here (against this build, into a scratch folder) and must succeed.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>
#include "cli_util.hpp"

namespace fs = std::filesystem;

namespace {

const fs::path kSource = STSWEEP_SOURCE_DIR;

using stsweep::testing::lines;
using stsweep::testing::slurp;

// Runs a shell command in `dir`; returns the exit code, output in *out.
int shell(const fs::path& dir, const std::string& cmd, std::string* out) {
  const fs::path log = dir / "cmd.log";
  const std::string full = "cd '" + dir.string() + "' && (" + cmd + ") >'" + log.string() + "' 2>&1";
  const int status = std::system(full.c_str());
  *out = slurp(log);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(Readme, LeadsWithTheTwoCommands) {
  const std::string readme = slurp(kSource / "README.md");
  ASSERT_FALSE(readme.empty());
  // The first fenced block holds exactly the two commands, quickstart first.
  const size_t open = readme.find("```");
  ASSERT_NE(open, std::string::npos);
  const size_t body = readme.find('\n', open) + 1;
  const size_t close = readme.find("```", body);
  std::vector<std::string> cmds;
  for (const auto& l : lines(readme.substr(body, close - body)))
    if (!l.empty()) cmds.push_back(l.substr(0, l.find(' ')));
  ASSERT_EQ(cmds.size(), 2u) << readme.substr(body, close - body);
  EXPECT_EQ(cmds[0], "tools/quickstart");
  EXPECT_EQ(cmds[1], "tools/test");
  for (const char* tool : {"tools/quickstart", "tools/test", "tools/install-deps", "tools/build", ".ci/run"})
    EXPECT_EQ(::access((kSource / tool).c_str(), X_OK), 0) << tool << " is not executable";
}

TEST(Readme, CiRunsTheTestCommand) {
  const std::string ci = slurp(kSource / ".ci/run");
  EXPECT_NE(ci.find("tools/test"), std::string::npos);
  // tools/test runs the whole ctest suite, not a subset.
  const std::string test = slurp(kSource / "tools/test");
  EXPECT_NE(test.find("ctest"), std::string::npos);
  EXPECT_EQ(test.find("-R "), std::string::npos) << "tools/test must not filter tests";
  EXPECT_EQ(test.find("-E "), std::string::npos) << "tools/test must not exclude tests";
}

TEST(Readme, QuickstartCommandsRun) {
  // Every `build/stsweep ...` line of tools/quickstart, with this build's binary.
  const std::string script = slurp(kSource / "tools/quickstart");
  std::vector<std::string> cmds;
  for (const auto& l : lines(script))
    if (l.rfind("build/stsweep ", 0) == 0) cmds.push_back(l);
  ASSERT_GE(cmds.size(), 3u) << "tools/quickstart should run, inspect and summarise a sweep";
  EXPECT_NE(cmds[0].find(" run sweeps/quickstart.json"), std::string::npos) << cmds[0];

  const fs::path dir = fs::temp_directory_path() / ("stsweep_readme_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "results");
  fs::create_directory_symlink(kSource / "sweeps", dir / "sweeps");
  for (std::string cmd : cmds) {
    cmd = std::regex_replace(cmd, std::regex("^build/stsweep"), std::string("'") + STSWEEP_BINARY + "'");
    std::string out;
    const int rc = shell(dir, cmd + " --help >/dev/null && " + cmd, &out);
    EXPECT_EQ(rc, 0) << cmd << "\n" << out;
  }
  ASSERT_TRUE(fs::exists(dir / "results/quickstart.h5"));
  std::string info;
  ASSERT_EQ(shell(dir, std::string("'") + STSWEEP_BINARY + "' info results/quickstart.h5", &info), 0);
  EXPECT_NE(info.find("[complete]"), std::string::npos) << info;
  fs::remove_all(dir);
}

TEST(Readme, QuickstartHelpDoesNothingElse) {
  // tools/quickstart takes no arguments: --help prints a usage and exits 0, anything
  // else exits 2, both before it installs, builds or deletes results/quickstart.h5. A
  // copy runs in a scratch folder without tools/install-deps, so a quickstart that
  // went on would fail there, not install anything.
  const fs::path dir = fs::temp_directory_path() / ("stsweep_readme_qs_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "tools");
  fs::create_directories(dir / "results");
  fs::copy_file(kSource / "tools/quickstart", dir / "tools/quickstart");
  std::ofstream(dir / "results/quickstart.h5") << "kept";
  std::string out;
  EXPECT_EQ(shell(dir, "tools/quickstart --help", &out), 0) << out;
  EXPECT_NE(out.find("results/quickstart.h5"), std::string::npos) << out;
  EXPECT_EQ(shell(dir, "tools/quickstart --bogus", &out), 2) << out;
  EXPECT_NE(out.find("unknown argument '--bogus'"), std::string::npos) << out;
  EXPECT_EQ(slurp(dir / "results/quickstart.h5"), "kept");
  fs::remove_all(dir);
}

TEST(Readme, UsageCommandsRunInOrder) {
  // The `build/stsweep ...` lines of the block under "## Using it", run in order as
  // written (each output new where it must be, the merge's shards made by the lines
  // before it), with a small sweep standing in for sweeps/demo.json.
  const std::string readme = slurp(kSource / "README.md");
  const size_t section = readme.find("## Using it");
  ASSERT_NE(section, std::string::npos);
  const size_t open = readme.find("```", section);
  ASSERT_NE(open, std::string::npos);
  const size_t body = readme.find('\n', open) + 1;
  const size_t close = readme.find("```", body);
  std::vector<std::string> cmds;
  for (const auto& l : lines(readme.substr(body, close - body)))
    if (l.rfind("build/stsweep ", 0) == 0) cmds.push_back(l);
  ASSERT_GE(cmds.size(), 8u) << readme.substr(body, close - body);

  const fs::path dir = fs::temp_directory_path() / ("stsweep_readme_usage_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "results");
  fs::create_directories(dir / "sweeps");
  std::ofstream(dir / "sweeps/demo.json")
      << R"({"name": "demo", "seed": 7,
            "defaults": {"d": 8, "k": 4, "m": 2, "hidden": [8], "n_train": 6, "steps": 200, "lr": 0.05,
                         "teacher": {"kind": "oracle"}},
            "grid": {"noise": [0.5, 1], "lambda": [0, 1], "teacher.decomposition": ["balanced", "latent"],
                     "seed": {"range": [0, 3]}}})";
  for (std::string cmd : cmds) {
    cmd = std::regex_replace(cmd, std::regex("^build/stsweep"), std::string("'") + STSWEEP_BINARY + "'");
    std::string out;
    EXPECT_EQ(shell(dir, cmd + "\n", &out), 0) << cmd << "\n" << out;  // "\n": the line's # comment ends
  }
  fs::remove_all(dir);
}

}  // namespace
