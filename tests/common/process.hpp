#pragma once
// Running commands from tests (the aiayn executable, mpiexec, tools): spawn, wait, signal, capture, read back.
#include <sys/types.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace aiayn::testing {

// Runs `cmd` with /bin/sh; returns the exit status (128 + signal when killed). Output goes to `log` (appended).
int run_command(const std::string& cmd, const std::string& log);
// Starts `cmd` (exec'd by sh, so the pid is the command's own) in a new session.
pid_t spawn_command(const std::string& cmd, const std::string& log);
int wait_for(pid_t pid);
// Sends `sig` to every process of the session `sid` (spawn_command's pid): mpiexec and all its ranks.
void kill_session(pid_t sid, int sig);

// Runs `cmd` with std::system, stdout and stderr captured (redirected to DIR/stdout.txt and DIR/stderr.txt,
// replaced each call).
struct CommandResult {
  int status = -1;  // the shell's exit status; -1 when the shell itself did not exit
  std::string out, err;
};
CommandResult run_captured(const std::string& cmd, const std::string& dir);

std::string read_file(const std::string& path);
std::vector<nlohmann::json> read_jsonl(const std::string& path);

}  // namespace aiayn::testing
