// The best validation so far and early stopping (see best_tracker.hpp).
#include "trainer/best_tracker.hpp"

#include <fmt/format.h>

#include "aiayn/error.hpp"

namespace aiayn::trainer {

BestTracker::BestTracker(std::string metric, int64_t patience) : metric_(std::move(metric)), patience_(patience) {
  AIAYN_CHECK(metric_ == "bleu" || metric_ == "loss", fmt::format("best metric must be bleu or loss, not '{}'", metric_));
  AIAYN_CHECK(patience_ >= 0, fmt::format("patience must not be negative (got {})", patience_));
}

bool BestTracker::restore(const TrainerState& saved) {
  if (saved.best_step < 0) return true;
  if (saved.best_metric != metric_) return false;
  best_step_ = saved.best_step;
  best_score_ = saved.best_score;
  without_improvement_ = saved.validations_without_improvement;
  return true;
}

void BestTracker::forget() {
  best_step_ = -1;
  best_score_ = 0;
  without_improvement_ = 0;
}

bool BestTracker::observe(int64_t step, double score) {
  const bool better = !has_best() || (metric_ == "bleu" ? score > best_score_ : score < best_score_);
  if (better) {
    best_step_ = step;
    best_score_ = score;
    without_improvement_ = 0;
  } else {
    ++without_improvement_;
  }
  return better;
}

void BestTracker::save_to(TrainerState* state) const {
  state->best_metric = metric_;
  state->best_step = best_step_;
  state->best_score = best_score_;
  state->validations_without_improvement = without_improvement_;
}

}  // namespace aiayn::trainer
