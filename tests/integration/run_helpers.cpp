#include "run_helpers.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "checkpoints/checkpoint.hpp"
#include "trainer/config.hpp"
#include "trainer/params.hpp"
#include "trainer/run_files.hpp"

namespace aiayn::testing {

pid_t spawn_command(const std::string& cmd, const std::string& log) {
  const pid_t pid = fork();
  if (pid == 0) {
    setsid();
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

int wait_for(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + WTERMSIG(status);
}

void kill_session(pid_t sid, int sig) {
  // Open MPI puts each rank in a process group of its own, so the job is found by its session id.
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "stat");
    std::string stat;
    std::getline(in, stat);
    const auto close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 2));
    char state;
    long ppid, pgrp, session;
    if (rest >> state >> ppid >> pgrp >> session && session == sid) kill(static_cast<pid_t>(std::stol(name)), sig);
  }
}

int run_command(const std::string& cmd, const std::string& log) { return wait_for(spawn_command(cmd, log)); }

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

std::vector<double> losses(const std::string& run) {
  std::vector<double> out;
  if (!std::filesystem::exists(run + "/metrics.jsonl")) return out;
  for (const auto& j : read_jsonl(run + "/metrics.jsonl"))
    if (j.contains("loss") && j["loss"].is_number()) out.push_back(j["loss"].get<double>());
  return out;
}

std::string latest(const std::string& run) {
  std::string name = read_file(run + "/checkpoints/LATEST");
  while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
  return run + "/checkpoints/" + name;
}

std::map<std::string, std::vector<float>> checkpoint_tensors(const std::string& path, bool with_optim) {
  const checkpoints::Meta meta = checkpoints::read_meta(path);
  const trainer::Config cfg = trainer::Config::parse(meta.config, path);
  std::string vocab_text;
  checkpoints::read_extra(path, "vocab.yaml", &vocab_text);
  const auto vocab = trainer::parse_vocab_yaml(vocab_text, path);
  const auto table = trainer::ParamTable::transformer(cfg.model, vocab.vocab_size);
  std::vector<float> p(table.total()), m(table.total()), v(table.total());
  const auto pr = trainer::model_tensors(table, p.data());
  const auto mr = trainer::model_tensors(table, m.data());
  const auto vr = trainer::model_tensors(table, v.data());
  checkpoints::load_checkpoint(path, pr, with_optim ? &mr : nullptr, with_optim ? &vr : nullptr);
  std::map<std::string, std::vector<float>> out;
  for (const auto& view : table.views()) {
    out["/model/" + view.name].assign(p.begin() + view.offset, p.begin() + view.offset + view.size);
    if (with_optim) {
      out["/optim/m/" + view.name].assign(m.begin() + view.offset, m.begin() + view.offset + view.size);
      out["/optim/v/" + view.name].assign(v.begin() + view.offset, v.begin() + view.offset + view.size);
    }
  }
  return out;
}

std::string launcher(int ranks) {
  if (ranks <= 1) return "";
  return "mpiexec --allow-run-as-root --oversubscribe -np " + std::to_string(ranks) + " ";
}

}  // namespace aiayn::testing
