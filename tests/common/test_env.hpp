#pragma once
// Where tests find shared/ data and the aiayn executable (set by CTest; see tests/CMakeLists.txt).
#include <cstdlib>
#include <filesystem>
#include <string>

namespace aiayn::testing {

inline std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}
inline std::string shared_dir() { return env_or("AIAYN_SHARED_DIR", "../shared"); }
inline std::string aiayn_exe() { return env_or("AIAYN_EXE", "build/aiayn"); }
inline std::string source_dir() { return env_or("AIAYN_SOURCE_DIR", "."); }
// The Python with the field's own tools (tests/python_env.sh; tests/run.sh sets it), or "".
inline std::string python_with_tools() { return env_or("AIAYN_PYTHON", ""); }
// AIAYN_NO_SKIP=1 (CI): a test must not skip for want of a file, tool or package.
inline bool no_skip() { return env_or("AIAYN_NO_SKIP", "") == "1"; }

// A fresh, empty temporary directory, removed when the object dies.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "aiayn-test-XXXXXX").string();
    path_ = mkdtemp(tmpl.data()) ? tmpl : std::string();
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace aiayn::testing

// Skips the test for `reason` (a missing file, tool or package), or fails it under AIAYN_NO_SKIP=1.
#define AIAYN_SKIP_OR_FAIL(reason)                                                   \
  do {                                                                               \
    if (::aiayn::testing::no_skip()) FAIL() << "AIAYN_NO_SKIP=1 and " << (reason);    \
    GTEST_SKIP() << (reason);                                                        \
  } while (0)
