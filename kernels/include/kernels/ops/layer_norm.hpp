#pragma once
// Layer normalisation over the last dimension:
//
//   mean[r] = sum_c x[r,c] / C;  rstd[r] = 1 / sqrt(sum_c (x[r,c]-mean[r])^2 / C + eps)
//   y[r, c] = (x[r,c] - mean[r]) * rstd[r] * gamma[c] + beta[c]
//
// Forward saves mean and rstd [rows] for the backward pass (statistics in float32 at least).
// Backward overwrites dx and accumulates dgamma, dbeta (+=). dx may not alias x; it may alias dy.
#include "kernels/ops/dispatch.hpp"

namespace aiayn::kernels {

template <class T>
struct LayerNormForward {
  using scalar = T;
  const T* x = nullptr;      // [rows, cols]
  const T* gamma = nullptr;  // [cols]
  const T* beta = nullptr;   // [cols]
  T* y = nullptr;            // [rows, cols]
  T* mean = nullptr;         // [rows]
  T* rstd = nullptr;         // [rows]
  int rows = 0, cols = 0;
  float eps = 1e-5f;
};

template <class T>
struct LayerNormBackward {
  using scalar = T;
  const T* dy = nullptr;     // [rows, cols]
  const T* x = nullptr;      // [rows, cols] forward input
  const T* gamma = nullptr;  // [cols]
  const T* mean = nullptr;   // [rows]
  const T* rstd = nullptr;   // [rows]
  T* dx = nullptr;           // [rows, cols]
  T* dgamma = nullptr;       // [cols] (+=)
  T* dbeta = nullptr;        // [cols] (+=)
  int rows = 0, cols = 0;
};

namespace cpu {
template <class T> void layer_norm_forward(const LayerNormForward<T>& a);
template <class T> void layer_norm_backward(const LayerNormBackward<T>& a);
}  // namespace cpu
namespace cuda {
void layer_norm_forward(const LayerNormForward<float>& a, Stream s);
void layer_norm_backward(const LayerNormBackward<float>& a, Stream s);
}  // namespace cuda

template <class T> void layer_norm_forward(Device d, const LayerNormForward<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(layer_norm_forward, d, a, s); }
template <class T> void layer_norm_backward(Device d, const LayerNormBackward<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(layer_norm_backward, d, a, s); }

}  // namespace aiayn::kernels
