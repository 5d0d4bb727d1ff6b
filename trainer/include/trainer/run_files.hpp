#pragma once
// The run directory's small files: creating and checking it, atomic text writes, metrics.jsonl, and the
// bridges between the parameter table and checkpoint tensors.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoints/checkpoint.hpp"
#include "data/corpus.hpp"
#include "trainer/params.hpp"

namespace aiayn::trainer {

// A fresh run refuses a non-empty directory (and leaves it untouched); creates RUN, RUN/log, RUN/checkpoints.
void create_fresh_run_dir(const std::filesystem::path& run);
// A resumed run needs RUN/checkpoints to exist.
void check_resumable_run_dir(const std::filesystem::path& run);
// tmp + fsync + rename + fsync of the directory.
void write_text_atomically(const std::filesystem::path& path, const std::string& text);

// Appends one JSON object per line, flushed each time; a no-op when constructed with an empty path.
class MetricsWriter {
 public:
  explicit MetricsWriter(const std::string& path);
  ~MetricsWriter();
  void write(const nlohmann::ordered_json& line);

 private:
  std::FILE* f_ = nullptr;
};

std::vector<checkpoints::MutableTensorRef> model_tensors(const ParamTable& table, float* flat);
std::vector<checkpoints::TensorRef> const_tensors(const ParamTable& table, const float* flat);

// The vocabulary facts a checkpoint carries (so translate needs no corpus file), and their reader.
std::string vocab_yaml(const data::CorpusInfo& info);
struct VocabInfo {
  int vocab_size = 0, pad_id = 0, unk_id = 1, bos_id = 2, eos_id = 3;
};
VocabInfo parse_vocab_yaml(const std::string& text, const std::string& origin);

// The loop's own state beyond step and cursor (checkpoint /extra/trainer_state.yaml). Files written before
// best checkpoints existed hold skipped_steps only: the rest keeps its defaults.
struct TrainerState {
  int64_t skipped_steps = 0;  // steps skipped for non-finite values (Adam's t is step - skipped_steps)
  // The best validation so far by `best_metric` ("bleu" or "loss"); best_step < 0: none yet.
  std::string best_metric;
  int64_t best_step = -1;
  double best_score = 0;
  int64_t validations_without_improvement = 0;  // of best_metric, since best_step (early stopping)
};
std::string trainer_state_yaml(const TrainerState& state);
TrainerState parse_trainer_state(const std::string& text, const std::string& origin);

// Drops the lines of metrics.jsonl whose step is after `step` (a resumed run replays those steps), rewriting
// the file atomically; a line cut short by a crash is dropped too. A missing file is left missing.
void drop_metrics_after(const std::filesystem::path& path, int64_t step);

}  // namespace aiayn::trainer
