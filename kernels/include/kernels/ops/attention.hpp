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
// What the backward pass needs besides q, k, v and out is the op's own business: the forward writes it to
// `saved` (attention_saved_bytes(device, shape) bytes, laid out by the backend) and the backward reads it back.
// The caller only sizes the buffer. The CPU backend keeps the probabilities p (before dropout) [B, H, Tq, Tk]
// of T: memory is plentiful there and recomputing an exp per score would about double its backward. The CUDA
// backend keeps one float32 log-sum-exp per row [B, H, Tq] and recomputes p tile by tile (FlashAttention's
// choice: the [Tq, Tk] matrices never reach device memory, which bandwidth and capacity reward). Backward
// overwrites dq, dk, dv (same strides as q, k, v). In bf16 precision q, k, v, out and the gradients are bf16;
// scores, softmax, lse and every accumulation are float32.
#include <cstddef>
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
  void* saved = nullptr;  // attention_saved_bytes(device, shape) for the backward pass; null when none follows
};

template <class T>
struct AttentionBackward {
  using scalar = T;
  AttentionShape<T> shape;
  const T* dout = nullptr;  // strides of out
  const T* q = nullptr;
  const T* k = nullptr;
  const T* v = nullptr;
  const T* out = nullptr;        // forward output (CUDA uses it for the row dot products)
  const void* saved = nullptr;   // what the forward pass saved
  T* dq = nullptr;
  T* dk = nullptr;
  T* dv = nullptr;
};

namespace cpu {
template <class T> void attention_forward(const AttentionForward<T>& a);
template <class T> void attention_backward(const AttentionBackward<T>& a);
// the probabilities [B, H, Tq, Tk]
template <class T> size_t attention_saved_bytes(const AttentionShape<T>& s) {
  return size_t(s.B) * s.H * s.Tq * s.Tk * sizeof(T);
}
}  // namespace cpu
namespace cuda {
// The widest head the CUDA kernels take (a warp holds a query's channels, 4 per lane). A model with wider
// heads is refused before training starts on a GPU (trainer/src/runtime.cpp).
constexpr int kMaxHeadWidth = 128;
void attention_forward(const AttentionForward<float>& a, Stream s);
void attention_backward(const AttentionBackward<float>& a, Stream s);
void attention_forward(const AttentionForward<bf16>& a, Stream s);
void attention_backward(const AttentionBackward<bf16>& a, Stream s);
// the float32 log-sum-exp per row [B, H, Tq]
template <class T> size_t attention_saved_bytes(const AttentionShape<T>& s) {
  return size_t(s.B) * s.H * s.Tq * sizeof(float);
}
}  // namespace cuda

template <class T> size_t attention_saved_bytes(Device d, const AttentionShape<T>& s) {
  return d == Device::CPU ? cpu::attention_saved_bytes(s) : cuda::attention_saved_bytes(s);
}
template <class T> void attention_forward(Device d, const AttentionForward<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(attention_forward, d, a, s); }
template <class T> void attention_backward(Device d, const AttentionBackward<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(attention_backward, d, a, s); }

}  // namespace aiayn::kernels
