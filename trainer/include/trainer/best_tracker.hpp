#pragma once
// The best validation so far and early stopping: which step holds the best score of the chosen metric
// (BLEU: higher is better; loss: lower is better), and how many validations of that metric have passed
// since without improvement. A pure state machine; the loop writes best.h5 when observe() says so.
#include <cstdint>
#include <string>

#include "trainer/run_files.hpp"

namespace aiayn::trainer {

class BestTracker {
 public:
  // metric: "bleu" or "loss"; patience: validations without improvement that end the run (0 = never).
  BestTracker(std::string metric, int64_t patience);

  // Takes the record a checkpoint saved. A record of another metric (best_metric changed on resume) is
  // dropped: the next validation starts a new record. Returns false when it was dropped.
  bool restore(const TrainerState& saved);
  // Forgets the best (its file is gone): the next validation becomes the best; the patience count restarts.
  void forget();

  // One validation of the metric at `step`. True when it is strictly better than every earlier one (the
  // first always is); otherwise one more validation without improvement.
  bool observe(int64_t step, double score);
  // patience > 0 and that many validations in a row brought no improvement.
  bool exhausted() const { return patience_ > 0 && without_improvement_ >= patience_; }

  const std::string& metric() const { return metric_; }
  bool has_best() const { return best_step_ >= 0; }
  int64_t best_step() const { return best_step_; }
  double best_score() const { return best_score_; }
  int64_t without_improvement() const { return without_improvement_; }
  int64_t patience() const { return patience_; }
  // Writes the record into the state a checkpoint saves.
  void save_to(TrainerState* state) const;

 private:
  std::string metric_;
  int64_t patience_;
  int64_t best_step_ = -1;
  double best_score_ = 0;
  int64_t without_improvement_ = 0;
};

}  // namespace aiayn::trainer
