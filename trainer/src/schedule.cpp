#include "trainer/schedule.hpp"

#include <algorithm>
#include <cmath>

#include "aiayn/error.hpp"
#include "trainer/config.hpp"

namespace aiayn::trainer {

double learning_rate(int64_t step, int d_model, int64_t warmup, double lr_scale) {
  AIAYN_CHECK(step >= 1, "learning_rate: step must be >= 1");
  AIAYN_CHECK(warmup >= 1, "learning_rate: warmup must be >= 1");
  const double s = static_cast<double>(step);
  return lr_scale * std::pow(static_cast<double>(d_model), -0.5) *
         std::min(std::pow(s, -0.5), s * std::pow(static_cast<double>(warmup), -1.5));
}

kernels::AdamArgs<float> adam_update(const Config& cfg, int64_t update, float* params, const float* grads, float* m,
                                     float* v, size_t n, float grad_scale, kernels::bf16* params_bf16) {
  kernels::AdamArgs<float> a;
  a.param_bf16 = params_bf16;
  a.param = params, a.grad = grads, a.m = m, a.v = v, a.n = n;
  a.lr = static_cast<float>(learning_rate(update, cfg.model.d_model, cfg.train.warmup, cfg.train.lr_scale));
  a.beta1 = static_cast<float>(cfg.train.adam_beta1);
  a.beta2 = static_cast<float>(cfg.train.adam_beta2);
  a.eps = static_cast<float>(cfg.train.adam_eps);
  a.grad_scale = grad_scale;
  a.bias1 = 1.0 - std::pow(cfg.train.adam_beta1, static_cast<double>(update));
  a.bias2 = 1.0 - std::pow(cfg.train.adam_beta2, static_cast<double>(update));
  return a;
}

}  // namespace aiayn::trainer
