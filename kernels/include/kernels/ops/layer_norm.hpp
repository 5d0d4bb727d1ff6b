#pragma once
// Layer normalisation over the last dimension:
//
//   mean[r] = sum_c x[r,c] / C;  rstd[r] = 1 / sqrt(sum_c (x[r,c]-mean[r])^2 / C + eps)
//   y[r, c] = (x[r,c] - mean[r]) * rstd[r] * gamma[c] + beta[c]
//
// Forward saves mean and rstd [rows] for the backward pass (statistics in float32 at least).
// Backward overwrites dx and accumulates dgamma, dbeta (+=). dx may not alias x; it may alias dy.
//
// The post-norm residual sub-layer output, fused (the paper's LayerNorm(x + Dropout(F(x)))):
//
//   s[r, c] = x[r, c] + dropout(f)[r, c]          dropout: the dropout op's map and mask (dropout.hpp)
//   y = LayerNorm(s)                              saves s, mean, rstd
// backward, from dy:
//   ds = LayerNorm backward of dy (dgamma, dbeta +=)
//   dx = ds                                       the residual branch's gradient (dx may alias dy)
//   df = dropout(ds)                              F's output gradient (same mask)
// The fused forward computes exactly dropout, then add, then layer_norm_forward, and the backward
// layer_norm_backward, then dropout: results equal the unfused composition bit for bit on the CPU.
//
// In bf16 precision x, f, s, y, dy, dx, df are bf16 and gamma, beta, mean, rstd and the parameter gradients
// float32 (T = bf16, P = float); s is rounded to bf16 before the statistics are taken.
#include "kernels/ops/dispatch.hpp"
#include "kernels/ops/dropout.hpp"

namespace aiayn::kernels {

template <class T, class P = T>
struct LayerNormForward {
  using scalar = T;
  const T* x = nullptr;      // [rows, cols]
  const P* gamma = nullptr;  // [cols]
  const P* beta = nullptr;   // [cols]
  T* y = nullptr;            // [rows, cols]
  P* mean = nullptr;         // [rows]
  P* rstd = nullptr;         // [rows]
  int rows = 0, cols = 0;
  float eps = 1e-5f;
};

template <class T, class P = T>
struct LayerNormBackward {
  using scalar = T;
  const T* dy = nullptr;     // [rows, cols]
  const T* x = nullptr;      // [rows, cols] forward input
  const P* gamma = nullptr;  // [cols]
  const P* mean = nullptr;   // [rows]
  const P* rstd = nullptr;   // [rows]
  T* dx = nullptr;           // [rows, cols]
  P* dgamma = nullptr;       // [cols] (+=)
  P* dbeta = nullptr;        // [cols] (+=)
  int rows = 0, cols = 0;
};

template <class T, class P = T>
struct ResidualNormForward {
  using scalar = T;
  const T* x = nullptr;      // [rows, cols] residual input
  const T* f = nullptr;      // [rows, cols] sub-layer output (not modified)
  const P* gamma = nullptr;  // [cols]
  const P* beta = nullptr;   // [cols]
  T* s = nullptr;            // [rows, cols] x + dropout(f), the LayerNorm input (saved for backward)
  T* y = nullptr;            // [rows, cols]
  P* mean = nullptr;         // [rows]
  P* rstd = nullptr;         // [rows]
  int rows = 0, cols = 0;
  float eps = 1e-5f;
  DropoutMask drop;          // rows are tokens [B, drop.seq_len]
};

template <class T, class P = T>
struct ResidualNormBackward {
  using scalar = T;
  const T* dy = nullptr;     // [rows, cols]
  const T* s = nullptr;      // [rows, cols] saved LayerNorm input
  const P* gamma = nullptr;  // [cols]
  const P* mean = nullptr;   // [rows]
  const P* rstd = nullptr;   // [rows]
  T* dx = nullptr;           // [rows, cols] gradient w.r.t. x (may alias dy)
  T* df = nullptr;           // [rows, cols] gradient w.r.t. f (may not alias dy or dx)
  P* dgamma = nullptr;       // [cols] (+=)
  P* dbeta = nullptr;        // [cols] (+=)
  int rows = 0, cols = 0;
  DropoutMask drop;
};

namespace cpu {
template <class T> void layer_norm_forward(const LayerNormForward<T>& a);
template <class T> void layer_norm_backward(const LayerNormBackward<T>& a);
template <class T> void residual_norm_forward(const ResidualNormForward<T>& a);
template <class T> void residual_norm_backward(const ResidualNormBackward<T>& a);
}  // namespace cpu
namespace cuda {
void layer_norm_forward(const LayerNormForward<float>& a, Stream s);
void layer_norm_backward(const LayerNormBackward<float>& a, Stream s);
void layer_norm_forward(const LayerNormForward<bf16, float>& a, Stream s);
void layer_norm_backward(const LayerNormBackward<bf16, float>& a, Stream s);
void residual_norm_forward(const ResidualNormForward<float>& a, Stream s);
void residual_norm_backward(const ResidualNormBackward<float>& a, Stream s);
void residual_norm_forward(const ResidualNormForward<bf16, float>& a, Stream s);
void residual_norm_backward(const ResidualNormBackward<bf16, float>& a, Stream s);
}  // namespace cuda

template <class T, class P> void layer_norm_forward(Device d, const LayerNormForward<T, P>& a, Stream s = nullptr) { AIAYN_DISPATCH(layer_norm_forward, d, a, s); }
template <class T, class P> void layer_norm_backward(Device d, const LayerNormBackward<T, P>& a, Stream s = nullptr) { AIAYN_DISPATCH(layer_norm_backward, d, a, s); }
template <class T, class P> void residual_norm_forward(Device d, const ResidualNormForward<T, P>& a, Stream s = nullptr) { AIAYN_DISPATCH(residual_norm_forward, d, a, s); }
template <class T, class P> void residual_norm_backward(Device d, const ResidualNormBackward<T, P>& a, Stream s = nullptr) { AIAYN_DISPATCH(residual_norm_backward, d, a, s); }

}  // namespace aiayn::kernels
