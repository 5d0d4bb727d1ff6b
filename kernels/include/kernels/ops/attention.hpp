#pragma once
// Multi-head scaled dot-product attention with key-padding and causal masks (self and cross).
//
// For sentence b, head h, query t, key j (Dh = head width, channels h*Dh .. h*Dh+Dh-1 of each row):
//   s[j]  = (q[b,t,h,:] . k[b,j,h,:]) * scale                       scale = 1/sqrt(Dh)
//   valid = j < k_len[b] && (!causal || j <= t)
//   p[j]  = valid ? exp(s[j] - max) / sum_valid exp(...) : 0          a row with no valid key gives p = 0
//   p'[j] = p[j] * keep(j) / (1 - p_drop)                             attention dropout, channel h*Tk + j
//   out[b,t,h,:] = sum_j p'[j] v[b,j,h,:]
//
// Element (b, t, c) of q lives at q[b*q_bstride + t*q_stride + c]; k and v use kv_bstride, kv_stride; out
// uses o_bstride, o_stride. This lets q, k and v be column slices of one fused projection [N, 3D] and lets
// incremental decoding point k and v at a cache of Tmax rows per sentence.
// The CPU backend saves p (before dropout) in probs [B, H, Tq, Tk]; the CUDA backend saves the
// log-sum-exp per row in lse [B, H, Tq] instead and recomputes. Backward overwrites dq, dk, dv (same strides
// as q, k, v). In bf16 precision q, k, v, out and the gradients are bf16; scores, softmax, lse and every
// accumulation are float32.
#include <cstdint>

#include "kernels/ops/dispatch.hpp"

namespace aiayn::kernels {

template <class T>
struct AttentionShape {
  int B = 0, Tq = 0, Tk = 0, H = 0, Dh = 0;
  long q_bstride = 0, kv_bstride = 0, o_bstride = 0;
  int q_stride = 0, kv_stride = 0, o_stride = 0;
  const int32_t* k_len = nullptr;  // [B] valid keys per sentence (padding is at the end)
  bool causal = false;
  float scale = 1.0f;
  // attention dropout (p_drop = 0: off)
  float p_drop = 0.0f;
  const int64_t* pair = nullptr;  // [B]
  uint64_t seed = 0, step = 0;
  uint32_t site = 0;
};

template <class T>
struct AttentionForward {
  using scalar = T;
  AttentionShape<T> shape;
  const T* q = nullptr;
  const T* k = nullptr;
  const T* v = nullptr;
  T* out = nullptr;
  T* probs = nullptr;    // CPU: [B, H, Tq, Tk] saved for backward (may be null when no backward follows)
  float* lse = nullptr;  // CUDA: [B, H, Tq] saved for backward (may be null when no backward follows)
};

template <class T>
struct AttentionBackward {
  using scalar = T;
  AttentionShape<T> shape;
  const T* dout = nullptr;  // strides of out
  const T* q = nullptr;
  const T* k = nullptr;
  const T* v = nullptr;
  const T* out = nullptr;     // forward output (CUDA uses it for the row dot products)
  const T* probs = nullptr;   // CPU
  const float* lse = nullptr; // CUDA
  T* dq = nullptr;
  T* dk = nullptr;
  T* dv = nullptr;
};

namespace cpu {
template <class T> void attention_forward(const AttentionForward<T>& a);
template <class T> void attention_backward(const AttentionBackward<T>& a);
}  // namespace cpu
namespace cuda {
// The widest head the CUDA kernels take (a warp holds a query's channels, 4 per lane). A model with wider
// heads is refused before training starts on a GPU (trainer/src/runtime.cpp).
constexpr int kMaxHeadWidth = 128;
void attention_forward(const AttentionForward<float>& a, Stream s);
void attention_backward(const AttentionBackward<float>& a, Stream s);
void attention_forward(const AttentionForward<bf16>& a, Stream s);
void attention_backward(const AttentionBackward<bf16>& a, Stream s);
// The CUDA backward has two implementations with the same results up to FMA contraction: PerHead, one kernel
// with one block per (head, sentence) holding the head's rows in shared memory, for short sequences (Tq, Tk
// <= 128 and the rows within the device's shared memory, see attention_backward_per_head_fits), and Tiled,
// three kernels over query and key tiles, for any length. Auto (the two-argument form) takes PerHead where it
// fits; asking for PerHead where it does not throws. The explicit forms are for tests and benchmarks.
enum class AttentionBackwardPath { Auto, PerHead, Tiled };
void attention_backward(const AttentionBackward<float>& a, AttentionBackwardPath path, Stream s);
void attention_backward(const AttentionBackward<bf16>& a, AttentionBackwardPath path, Stream s);
bool attention_backward_per_head_fits(int Tq, int Tk, int Dh);  // on the current device
}  // namespace cuda

template <class T> void attention_forward(Device d, const AttentionForward<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(attention_forward, d, a, s); }
template <class T> void attention_backward(Device d, const AttentionBackward<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(attention_backward, d, a, s); }

}  // namespace aiayn::kernels
