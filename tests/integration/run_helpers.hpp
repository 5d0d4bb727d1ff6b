#pragma once
// Running the aiayn executable from tests: spawn, wait, signal, and read what a run leaves behind.
#include <sys/types.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace aiayn::testing {

// Runs `cmd` with /bin/sh; returns the exit status (128 + signal when killed). Output goes to `log`.
int run_command(const std::string& cmd, const std::string& log);
// Starts `cmd` (exec'd by sh, so the pid is the command's own) in a new session.
pid_t spawn_command(const std::string& cmd, const std::string& log);
int wait_for(pid_t pid);
// Sends `sig` to every process of the session `sid` (spawn_command's pid): mpiexec and all its ranks.
void kill_session(pid_t sid, int sig);
std::string read_file(const std::string& path);
std::vector<nlohmann::json> read_jsonl(const std::string& path);

// The training losses a run logged in RUN/metrics.jsonl, in order (skipped steps left out; none without the file).
std::vector<double> losses(const std::string& run);
// RUN/checkpoints/<the file LATEST names>.
std::string latest(const std::string& run);

// The tensors of a checkpoint, by dataset name ("/model/...", "/optim/m/...", "/optim/v/..."), as raw floats.
std::map<std::string, std::vector<float>> checkpoint_tensors(const std::string& path, bool with_optim);

// "mpiexec --allow-run-as-root --oversubscribe -np N " or "" for one plain process.
std::string launcher(int ranks);

}  // namespace aiayn::testing
