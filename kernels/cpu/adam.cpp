// Adam, the gradient's sum of squares (for clipping and the logged norm) and scaling, over flat buffers.
#include "kernels/ops/adam.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace aiayn::kernels::cpu {

template <class From, class To>
void cast_range(const CastArgs<From, To>& a) {
  const long n = static_cast<long>(a.n);
#pragma omp parallel for
  for (long i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<To, bf16>) a.y[i] = to_bf16(static_cast<float>(a.x[i]));
    else a.y[i] = static_cast<To>(to_float(a.x[i]));
  }
}

void cast(const CastArgs<float, bf16>& a) { cast_range(a); }
void cast(const CastArgs<bf16, float>& a) { cast_range(a); }
void cast(const CastArgs<double, bf16>& a) { cast_range(a); }

template <class T>
void adam(const AdamArgs<T>& a) {
  const T lr = a.lr, beta1 = a.beta1, beta2 = a.beta2, eps = a.eps, grad_scale = a.grad_scale;
  const T bias1 = static_cast<T>(a.bias1), bias2 = static_cast<T>(a.bias2);
  const long n = static_cast<long>(a.n);
#pragma omp parallel for simd
  for (long i = 0; i < n; ++i) {
    const T g = a.grad[i] * grad_scale;
    a.m[i] = beta1 * a.m[i] + (T(1) - beta1) * g;
    a.v[i] = beta2 * a.v[i] + (T(1) - beta2) * g * g;
    a.param[i] -= lr * (a.m[i] / bias1) / (std::sqrt(a.v[i] / bias2) + eps);
  }
  if (a.param_bf16) cast(CastArgs<T, bf16>{a.param, a.param_bf16, a.n});
}

// Fixed chunks (independent of the thread count), each summed in order, then the chunk sums in order: the
// result is the same bits for any number of threads.
template <class T>
double sum_squares(const SumSquaresArgs<T>& a) {
  constexpr size_t kChunk = size_t(1) << 16;
  const long chunks = static_cast<long>((a.n + kChunk - 1) / kChunk);
  std::vector<double> partial(chunks, 0.0);
#pragma omp parallel for
  for (long ch = 0; ch < chunks; ++ch) {
    const size_t begin = size_t(ch) * kChunk, end = std::min(a.n, begin + kChunk);
    double s = 0.0;
    for (size_t i = begin; i < end; ++i) s += double(a.x[i]) * double(a.x[i]);
    partial[ch] = s;
  }
  double total = 0.0;
  for (double s : partial) total += s;
  return total;
}

template <class T>
void scale(const ScaleArgs<T>& a) {
  const T factor = a.factor;
  const long n = static_cast<long>(a.n);
#pragma omp parallel for
  for (long i = 0; i < n; ++i) a.x[i] *= factor;
}

template void adam<float>(const AdamArgs<float>&);
template void adam<double>(const AdamArgs<double>&);
template double sum_squares<float>(const SumSquaresArgs<float>&);
template double sum_squares<double>(const SumSquaresArgs<double>&);
template void scale<float>(const ScaleArgs<float>&);
template void scale<double>(const ScaleArgs<double>&);

}  // namespace aiayn::kernels::cpu
