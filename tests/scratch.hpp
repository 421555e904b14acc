// A scratch folder per test process: <temp>/stsweep_<tag>_<pid>, emptied and
// created on first use, removed when the process exits, so test runs do not
// pile folders up in /tmp. STSWEEP_KEEP_TEST_FILES=1 keeps them (the path is
// then printed at exit) for looking at what a failing test wrote.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

namespace stsweep::testing {

namespace detail {
struct ScratchDir {
  std::filesystem::path path;
  pid_t owner = ::getpid();  // a forked child that exits must not remove it
  explicit ScratchDir(std::filesystem::path p) : path(std::move(p)) {
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~ScratchDir() {
    if (::getpid() != owner) return;
    const char* keep = std::getenv("STSWEEP_KEEP_TEST_FILES");
    if (keep && *keep && std::string(keep) != "0") {
      std::fprintf(stderr, "kept test files in %s\n", path.c_str());
      return;
    }
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
};
}  // namespace detail

inline const std::filesystem::path& scratch(const std::string& tag) {
  static std::map<std::string, std::unique_ptr<detail::ScratchDir>> dirs;
  auto& d = dirs[tag];
  if (!d)
    d = std::make_unique<detail::ScratchDir>(std::filesystem::temp_directory_path() /
                                             ("stsweep_" + tag + "_" + std::to_string(::getpid())));
  return d->path;
}

}  // namespace stsweep::testing
