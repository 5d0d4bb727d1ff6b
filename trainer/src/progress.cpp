// The progress line's time helpers (see progress.hpp).
#include "trainer/progress.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace aiayn::trainer {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "-";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02d}s", s / 60, s % 60);
  return fmt::format("{}h{:02d}m", s / 3600, (s % 3600) / 60);
}

double seconds_left(const RunBounds& b, double seconds_per_step) {
  double left = std::numeric_limits<double>::infinity();
  if (b.max_steps > 0) left = static_cast<double>(b.max_steps - b.step) * seconds_per_step;
  if (b.max_epochs > 0)
    left = std::min(left, static_cast<double>((b.max_epochs - b.epoch) * b.batches_per_epoch - b.batch_in_epoch) *
                              seconds_per_step);
  if (b.max_minutes > 0) left = std::min(left, b.max_minutes * 60.0 - b.elapsed_s);
  return left;
}

}  // namespace aiayn::trainer
