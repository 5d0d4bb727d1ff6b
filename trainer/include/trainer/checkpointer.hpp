#pragma once
// The training run's checkpoints: resume (the newest complete checkpoint, checked against the config and the
// corpus), periodic saves with retention, best.h5, and the average of the last ones at the end.
//
// Saving is rank 0's job (the other ranks' calls return at once); resume runs on every rank. best.h5 is a
// full checkpoint (model, Adam moments, cursor) written atomically like step-N.h5 but never listed, pruned or
// averaged with them; /extra/best.yaml records its metric, score and step.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <spdlog/logger.h>

#include "checkpoints/checkpoint.hpp"
#include "kernels/memory.hpp"
#include "trainer/best_tracker.hpp"
#include "trainer/config.hpp"
#include "trainer/model.hpp"
#include "trainer/run_files.hpp"

namespace aiayn::trainer {

// Where the loop stands: what a checkpoint saves beyond the tensors.
struct LoopState {
  int64_t step = 0;            // optimizer steps taken, skipped ones included
  int64_t epoch = 0;
  int64_t batch_in_epoch = 0;  // the next global batch to run
  TrainerState trainer;
};

class Checkpointer {
 public:
  Checkpointer(const std::filesystem::path& run_dir, const Config& cfg, Model<float>& model,
               kernels::DeviceArray<float>& adam_m, kernels::DeviceArray<float>& adam_v, std::string corpus_fingerprint,
               std::map<std::string, std::string> extras, int world, bool leader, spdlog::logger& log,
               std::vector<int64_t> fail_save_at = {});

  // Loads the checkpoint to resume from into the model and Adam state. Throws when there is none, or when
  // the architecture, batch_tokens, seed or corpus differ (naming the key or file).
  LoopState resume(const std::string& corpus_path);
  // Rank 0, after a resume from `step`: removes interrupted temporaries and sets aside (*.stale) checkpoints,
  // best.h5 included, newer than the resume point.
  void set_aside_after_resume(int64_t step);
  // Rank 0: whether best.h5 is present and verifies; a damaged one is renamed best.h5.damaged (reported).
  bool best_file_is_sound();

  // Rank 0: step-N.h5, LATEST, then retention. Returns the path ("" on other ranks). Throws when the write
  // fails (nothing is replaced: LATEST still names the previous checkpoint). Test-only fault injection: the
  // save of a step in `fail_save_at` (FaultInjection, AIAYN_TEST_FAIL_SAVE_AT) fails at its rename.
  std::string save(const LoopState& state, const std::string& why);
  // Rank 0: best.h5 with the state at the best step.
  void save_best(const LoopState& state, const BestTracker& best);
  // Rank 0: RUN/averaged.h5 from the last checkpoint.average_last checkpoints (none when 0).
  void average_last();

  std::filesystem::path dir() const { return dir_; }
  std::filesystem::path best_path() const { return dir_ / "best.h5"; }

 private:
  checkpoints::SaveRequest request(const LoopState& state, std::vector<float>* p, std::vector<float>* m,
                                   std::vector<float>* v) const;
  std::filesystem::path run_, dir_;
  const Config& cfg_;
  Model<float>& model_;
  kernels::DeviceArray<float>& adam_m_;
  kernels::DeviceArray<float>& adam_v_;
  std::string fingerprint_;
  std::map<std::string, std::string> extras_;
  std::vector<int64_t> fail_save_at_;  // test-only: FaultInjection::fail_save_at
  int world_;
  bool leader_;
  spdlog::logger& log_;
};

}  // namespace aiayn::trainer
