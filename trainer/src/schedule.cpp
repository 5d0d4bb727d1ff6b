#include "trainer/schedule.hpp"

#include <algorithm>
#include <cmath>

#include "aiayn/error.hpp"

namespace aiayn::trainer {

double learning_rate(int64_t step, int d_model, int64_t warmup, double lr_scale) {
  AIAYN_CHECK(step >= 1, "learning_rate: step must be >= 1");
  AIAYN_CHECK(warmup >= 1, "learning_rate: warmup must be >= 1");
  const double s = static_cast<double>(step);
  return lr_scale * std::pow(static_cast<double>(d_model), -0.5) *
         std::min(std::pow(s, -0.5), s * std::pow(static_cast<double>(warmup), -1.5));
}

}  // namespace aiayn::trainer
