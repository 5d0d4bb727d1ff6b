#include "trainer/run_files.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "aiayn/error.hpp"

namespace aiayn::trainer {
namespace fs = std::filesystem;

void create_fresh_run_dir(const fs::path& run) {
  std::error_code ec;
  if (fs::exists(run, ec)) {
    AIAYN_CHECK(fs::is_directory(run, ec), fmt::format("{}: exists and is not a directory", run.string()));
    AIAYN_CHECK(fs::is_empty(run, ec), fmt::format("{}: the run directory is not empty; use --resume to continue "
                                                   "that run, or choose a new --run-dir", run.string()));
  }
  for (const auto& d : {run, run / "log", run / "checkpoints"}) {
    fs::create_directories(d, ec);
    AIAYN_CHECK(!ec, fmt::format("{}: cannot create directory: {}", d.string(), ec.message()));
  }
}

void check_resumable_run_dir(const fs::path& run) {
  AIAYN_CHECK(fs::is_directory(run / "checkpoints"),
              fmt::format("{}: no checkpoints directory; nothing to resume (start a fresh run without --resume)",
                          run.string()));
  std::error_code ec;
  fs::create_directories(run / "log", ec);
}

void write_text_atomically(const fs::path& path, const std::string& text) {
  const std::string tmp = path.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  AIAYN_CHECK(fd >= 0, fmt::format("{}: cannot write: {}", tmp, std::strerror(errno)));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t w = ::write(fd, text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      AIAYN_FAIL(fmt::format("{}: write failed: {}", tmp, std::strerror(err)));
    }
    done += static_cast<size_t>(w);
  }
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    AIAYN_FAIL(fmt::format("{}: cannot commit: {}", path.string(), std::strerror(err)));
  }
  const int dfd = ::open(path.parent_path().empty() ? "." : path.parent_path().c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

MetricsWriter::MetricsWriter(const std::string& path) {
  if (path.empty()) return;
  f_ = std::fopen(path.c_str(), "a");
  AIAYN_CHECK(f_ != nullptr, fmt::format("{}: cannot open for appending: {}", path, std::strerror(errno)));
}

MetricsWriter::~MetricsWriter() {
  if (f_) std::fclose(f_);
}

void MetricsWriter::write(const nlohmann::ordered_json& line) {
  if (!f_) return;
  const std::string s = line.dump() + "\n";
  std::fwrite(s.data(), 1, s.size(), f_);
  std::fflush(f_);
}

std::vector<checkpoints::MutableTensorRef> model_tensors(const ParamTable& table, float* flat) {
  std::vector<checkpoints::MutableTensorRef> out;
  for (const auto& v : table.views()) out.push_back({v.name, v.shape, flat + v.offset});
  return out;
}

std::vector<checkpoints::TensorRef> const_tensors(const ParamTable& table, const float* flat) {
  std::vector<checkpoints::TensorRef> out;
  for (const auto& v : table.views()) out.push_back({v.name, v.shape, flat + v.offset});
  return out;
}

std::string vocab_yaml(const data::CorpusInfo& info) {
  return fmt::format("vocab_size: {}\npad_id: {}\nunk_id: {}\nbos_id: {}\neos_id: {}\n", info.vocab_size, info.pad_id,
                     info.unk_id, info.bos_id, info.eos_id);
}

VocabInfo parse_vocab_yaml(const std::string& text, const std::string& origin) {
  VocabInfo v;
  try {
    const YAML::Node n = YAML::Load(text);
    v.vocab_size = n["vocab_size"].as<int>();
    v.pad_id = n["pad_id"].as<int>();
    v.unk_id = n["unk_id"].as<int>();
    v.bos_id = n["bos_id"].as<int>();
    v.eos_id = n["eos_id"].as<int>();
  } catch (const YAML::Exception& e) {
    AIAYN_FAIL(fmt::format("{}: /extra/vocab.yaml is damaged: {}", origin, e.what()));
  }
  AIAYN_CHECK(v.vocab_size > 0, fmt::format("{}: /extra/vocab.yaml: vocab_size must be positive", origin));
  return v;
}

std::string trainer_state_yaml(const TrainerState& s) {
  std::string out = fmt::format("skipped_steps: {}\n", s.skipped_steps);
  if (s.best_step >= 0)
    out += fmt::format("best_metric: {}\nbest_step: {}\nbest_score: {}\nvalidations_without_improvement: {}\n",
                       s.best_metric, s.best_step, s.best_score, s.validations_without_improvement);
  return out;
}

TrainerState parse_trainer_state(const std::string& text, const std::string& origin) {
  TrainerState s;
  try {
    const YAML::Node n = YAML::Load(text);
    s.skipped_steps = n["skipped_steps"].as<int64_t>();
    if (n["best_step"]) {
      s.best_metric = n["best_metric"].as<std::string>();
      s.best_step = n["best_step"].as<int64_t>();
      s.best_score = n["best_score"].as<double>();
      s.validations_without_improvement = n["validations_without_improvement"].as<int64_t>();
    }
  } catch (const YAML::Exception& e) {
    AIAYN_FAIL(fmt::format("{}: /extra/trainer_state.yaml is damaged: {}", origin, e.what()));
  }
  return s;
}

void drop_metrics_after(const std::filesystem::path& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string line, kept;
  bool dropped = false;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number_integer() ||
        j["step"].get<int64_t>() > step) {
      dropped = true;
      continue;
    }
    kept += line + "\n";
  }
  if (dropped) write_text_atomically(path, kept);
}

}  // namespace aiayn::trainer
