#pragma once
// The paper's learning-rate schedule (section 5.3), with a scale factor:
//   lr(step) = lr_scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)      step >= 1
#include <cstdint>

#include "kernels/ops/adam.hpp"

namespace aiayn::trainer {

struct Config;

double learning_rate(int64_t step, int d_model, int64_t warmup, double lr_scale);

// One Adam update over the flat buffers as the config says: the schedule's rate at `update` (1-based count of
// applied updates), betas, eps, bias corrections in double; gradients multiplied by `grad_scale` (clipping);
// `params_bf16` (bf16 precision) is refreshed in the same pass.
kernels::AdamArgs<float> adam_update(const Config& cfg, int64_t update, float* params, const float* grads, float* m,
                                     float* v, size_t n, float grad_scale = 1.0f, kernels::bf16* params_bf16 = nullptr);

}  // namespace aiayn::trainer
