#pragma once
// The progress line's time helpers: how long the run still has to go, and how a person reads a duration.
#include <cstdint>
#include <string>

namespace aiayn::trainer {

// "45s", "3m12s", "2h05m" (rounded to the second); "-" for a negative or non-finite time.
std::string format_duration(double seconds);

// What bounds the run (0: no bound of that kind) and where it stands.
struct RunBounds {
  int64_t max_steps = 0, step = 0;  // step: steps taken
  int64_t max_epochs = 0, epoch = 0, batches_per_epoch = 0, batch_in_epoch = 0;  // batch_in_epoch: the next batch
  double max_minutes = 0, elapsed_s = 0;
};

// The time to the nearest stop condition at `seconds_per_step` (the time limit counts in seconds, not steps);
// infinity when nothing bounds the run. Negative when a bound is already passed.
double seconds_left(const RunBounds& bounds, double seconds_per_step);

}  // namespace aiayn::trainer
