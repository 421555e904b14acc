// Helpers for tests that run the stsweep binary (STSWEEP_BINARY, defined by
// tests/CMakeLists.txt): a scratch folder per test binary (scratch.hpp), file reading, and a
// run that captures exit code, stdout and stderr.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "scratch.hpp"

namespace stsweep::testing {

struct Outcome {
  int rc = -1;
  std::string out, err;
};

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The lines of a text, without their newlines.
inline std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> v;
  std::stringstream ss(text);
  for (std::string l; std::getline(ss, l);) v.push_back(l);
  return v;
}

// Runs `stsweep ARGS` (ARGS is shell text); output captured in the scratch folder.
inline Outcome run_stsweep(const std::string& args, const std::string& tag) {
  const std::filesystem::path dir = scratch(tag);
  const std::string cmd = std::string("'") + STSWEEP_BINARY + "' " + args + " >'" + (dir / "out").string() +
                          "' 2>'" + (dir / "err").string() + "'";
  const int status = std::system(cmd.c_str());
  Outcome r;
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(dir / "out");
  r.err = slurp(dir / "err");
  return r;
}

}  // namespace stsweep::testing
