#pragma once
// Adam over a flat range of parameters (the paper's optimiser, with bias correction as in PyTorch):
//
//   g = grad * grad_scale
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g^2
//   param -= lr * (m / bias1) / (sqrt(v / bias2) + eps)        bias1 = 1 - beta1^step, bias2 = 1 - beta2^step
//
// step is 1-based; the caller computes bias1 and bias2 in double.
#include <cstddef>

#include "kernels/ops/dispatch.hpp"

namespace aiayn::kernels {

template <class T>
struct AdamArgs {
  using scalar = T;
  T* param = nullptr;
  const T* grad = nullptr;
  T* m = nullptr;
  T* v = nullptr;
  size_t n = 0;
  float lr = 0.0f, beta1 = 0.9f, beta2 = 0.98f, eps = 1e-9f;
  float grad_scale = 1.0f;
  double bias1 = 1.0, bias2 = 1.0;
};

// Sum of squares of a flat range, accumulated in double in a fixed order (reproducible, no float atomics).
template <class T>
struct SumSquaresArgs {
  using scalar = T;
  const T* x = nullptr;
  size_t n = 0;
};

// x *= factor over a flat range (gradient clipping).
template <class T>
struct ScaleArgs {
  using scalar = T;
  T* x = nullptr;
  size_t n = 0;
  float factor = 1.0f;
};

namespace cpu {
template <class T> void adam(const AdamArgs<T>& a);
template <class T> double sum_squares(const SumSquaresArgs<T>& a);
template <class T> void scale(const ScaleArgs<T>& a);
}  // namespace cpu
namespace cuda {
void adam(const AdamArgs<float>& a, Stream s);
double sum_squares(const SumSquaresArgs<float>& a, Stream s);  // synchronises the stream
void scale(const ScaleArgs<float>& a, Stream s);
}  // namespace cuda

template <class T> void adam(Device d, const AdamArgs<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(adam, d, a, s); }
template <class T> double sum_squares(Device d, const SumSquaresArgs<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(sum_squares, d, a, s); }
template <class T> void scale(Device d, const ScaleArgs<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(scale, d, a, s); }

}  // namespace aiayn::kernels
