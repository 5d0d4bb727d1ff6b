#pragma once
// Adam over a flat range of parameters (the paper's optimiser, with bias correction as in PyTorch):
//
//   g = grad * grad_scale
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g^2
//   param -= lr * (m / bias1) / (sqrt(v / bias2) + eps)        bias1 = 1 - beta1^step, bias2 = 1 - beta2^step
//
// step is 1-based; the caller computes bias1 and bias2 in double. In bf16 precision the same pass refreshes
// the bf16 copy of the weights the matrix products read: param_bf16[i] = bf16(param[i]) (CUDA only).
//
// cast: y = x converted, element by element (float32 -> bf16 rounds to nearest even; bf16 -> float32 exact).
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
  bf16* param_bf16 = nullptr;  // [n] or null: refreshed from the updated param (CUDA only)
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

template <class From, class To>
struct CastArgs {
  using scalar = To;
  const From* x = nullptr;
  To* y = nullptr;
  size_t n = 0;
};

namespace cpu {
template <class T> void adam(const AdamArgs<T>& a);
template <class T> double sum_squares(const SumSquaresArgs<T>& a);
template <class T> void scale(const ScaleArgs<T>& a);
void cast(const CastArgs<float, bf16>& a);
void cast(const CastArgs<bf16, float>& a);
void cast(const CastArgs<double, bf16>& a);
}  // namespace cpu
namespace cuda {
void adam(const AdamArgs<float>& a, Stream s);
double sum_squares(const SumSquaresArgs<float>& a, Stream s);  // synchronises the stream
void scale(const ScaleArgs<float>& a, Stream s);
void cast(const CastArgs<float, bf16>& a, Stream s);
void cast(const CastArgs<bf16, float>& a, Stream s);
}  // namespace cuda

template <class T> void adam(Device d, const AdamArgs<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(adam, d, a, s); }
template <class T> double sum_squares(Device d, const SumSquaresArgs<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(sum_squares, d, a, s); }
template <class T> void scale(Device d, const ScaleArgs<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(scale, d, a, s); }
// cast is the one op with bf16 on the CPU too (tests and host-side conversions use it).
template <class From, class To> void cast(Device d, const CastArgs<From, To>& a, Stream s = nullptr) {
  if (d == Device::CPU) return cpu::cast(a);
#if AIAYN_HAVE_CUDA
  cuda::cast(a, s);
#else
  (void)s;
  no_cuda_backend("cast");
#endif
}

}  // namespace aiayn::kernels
