#pragma once
// The paper's learning-rate schedule (section 5.3), with a scale factor:
//   lr(step) = lr_scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)      step >= 1
#include <cstdint>

namespace aiayn::trainer {

double learning_rate(int64_t step, int d_model, int64_t warmup, double lr_scale);

}  // namespace aiayn::trainer
