#pragma once
// The one error type of the project. Library code throws aiayn::Error with a message a user can act on
// (naming the file, key, dataset or index at fault); only `main` turns it into an exit status.
#include <stdexcept>
#include <string>

namespace aiayn {

class Error : public std::runtime_error {
 public:
  Error(const std::string& message, const char* file, int line)
      : std::runtime_error(message), file_(file), line_(line) {}
  explicit Error(const std::string& message) : std::runtime_error(message) {}
  const char* source_file() const { return file_; }
  int source_line() const { return line_; }

 private:
  const char* file_ = "";
  int line_ = 0;
};

}  // namespace aiayn

// AIAYN_CHECK(condition, message): throws aiayn::Error(message) when condition is false. `message` is any
// expression convertible to std::string (use fmt::format for formatting); it is evaluated only on failure.
#define AIAYN_CHECK(cond, message)                                   \
  do {                                                               \
    if (!(cond)) throw ::aiayn::Error((message), __FILE__, __LINE__); \
  } while (0)

#define AIAYN_FAIL(message) throw ::aiayn::Error((message), __FILE__, __LINE__)
