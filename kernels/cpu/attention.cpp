// Multi-head scaled dot-product attention, plain loops (the specification the CUDA kernel is tested against).
//
// Per sentence b, head h (channels h*Dh .. h*Dh+Dh-1), query t, key j:
//   s[j] = scale * q[t] . k[j];   valid(j) = j < k_len[b] && (!causal || j <= t)
//   p[j] = softmax over valid j (0 for invalid keys; a row with no valid key is all 0)
//   p'[j] = p[j] * keep(j) / (1 - p_drop)       keep from dropout_row_key(seed, step, pair[b], t, site),
//                                               channel h*Tk + j
//   out[t] = sum_j p'[j] v[j]
// Backward, with dp'[j] = dout[t] . v[j] and dp[j] = dp'[j] * keep(j) / (1 - p_drop):
//   dv[j] += p'[j] dout[t];  ds[j] = p[j] (dp[j] - sum_i p[i] dp[i]);
//   dq[t] = scale * sum_j ds[j] k[j];  dk[j] += scale * ds[j] q[t]
// Work is split over (sentence, head) pairs, which own disjoint channels of every tensor, so the
// accumulations into dk and dv need no synchronisation. Backward writes only its own channels (q, k, v may
// be column slices of one fused buffer, and so may dq, dk, dv).
#include "kernels/ops/attention.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/dropout_hash.hpp"

namespace aiayn::kernels::cpu {
namespace {

template <class T>
int valid_keys(const AttentionShape<T>& s, int b) {
  return s.k_len ? s.k_len[b] : s.Tk;  // null k_len: no key padding
}

template <class T>
void check_shape(const AttentionShape<T>& s, const char* op) {
  AIAYN_CHECK(s.B >= 0 && s.Tq >= 0 && s.Tk >= 0 && s.H > 0 && s.Dh > 0,
              std::string(op) + ": bad shape (B, Tq, Tk, H, Dh must be non-negative, H and Dh positive)");
  for (int b = 0; b < s.B; ++b)
    AIAYN_CHECK(valid_keys(s, b) >= 0 && valid_keys(s, b) <= s.Tk,
                std::string(op) + ": k_len[" + std::to_string(b) + "] = " + std::to_string(valid_keys(s, b)) +
                    " is outside [0, Tk = " + std::to_string(s.Tk) + "]");
  AIAYN_CHECK(s.p_drop == 0.0f || s.pair != nullptr, std::string(op) + ": attention dropout needs pair indices");
}

// Multiplier applied to p[j] by attention dropout: keep(j) / (1 - p_drop), or 1 when dropout is off.
template <class T>
struct DropoutRow {
  uint64_t key = 0;
  float p = 0.0f;
  T inv_keep = T(1);
  uint32_t channel0 = 0;  // h * Tk
  DropoutRow(const AttentionShape<T>& s, int b, int h, int t) : p(s.p_drop) {
    if (p == 0.0f) return;
    key = dropout_row_key(s.seed, s.step, static_cast<uint64_t>(s.pair[b]), static_cast<uint32_t>(t), s.site);
    inv_keep = T(1) / (T(1) - static_cast<T>(p));
    channel0 = static_cast<uint32_t>(h) * static_cast<uint32_t>(s.Tk);
  }
  T factor(int j) const {
    if (p == 0.0f) return T(1);
    return dropout_keep(key, channel0 + static_cast<uint32_t>(j), p) ? inv_keep : T(0);
  }
};

// The two inner loops over the head width, written so the compiler vectorises them: `omp simd` lets the dot
// product's sum be split into vector lanes (a fixed order for a given build, independent of the threads).
template <class T>
T dot(const T* __restrict x, const T* __restrict y, int n) {
  T sum = T(0);
#pragma omp simd reduction(+ : sum)
  for (int d = 0; d < n; ++d) sum += x[d] * y[d];
  return sum;
}

// y += alpha * x
template <class T>
void axpy(T alpha, const T* __restrict x, T* __restrict y, int n) {
#pragma omp simd
  for (int d = 0; d < n; ++d) y[d] += alpha * x[d];
}

// One (sentence, head): all queries of sentence b against its keys, channels of head h. p_row [Tk] is scratch
// for when probs is not saved. target_clones: an AVX-512 (x86-64-v4) clone beside the portable one, picked at
// load time; the loops are the same, only the vector width differs (with FMA contraction in the clone, so the
// last bits may differ between machines, as OpenBLAS's kernels do).
template <class T>
__attribute__((target_clones("arch=x86-64-v4", "default"))) void forward_head(const AttentionForward<T>& a, int b,
                                                                              int h, T* p_row) {
  const AttentionShape<T>& s = a.shape;
  const T scale = static_cast<T>(s.scale);
  const int k_len = valid_keys(s, b);
  for (int t = 0; t < s.Tq; ++t) {
    const T* q = a.q + b * s.q_bstride + long(t) * s.q_stride + h * s.Dh;  // [Dh]
    T* out = a.out + b * s.o_bstride + long(t) * s.o_stride + h * s.Dh;   // [Dh]
    T* p = a.probs ? a.probs + ((size_t(b) * s.H + h) * s.Tq + t) * s.Tk : p_row;  // [Tk]
    const int n_valid = s.causal ? std::min(k_len, t + 1) : k_len;  // valid keys are j < n_valid
    T max = T(0);
    for (int j = 0; j < n_valid; ++j) {
      const T* k = a.k + b * s.kv_bstride + long(j) * s.kv_stride + h * s.Dh;
      p[j] = dot(q, k, s.Dh) * scale;
      if (j == 0 || p[j] > max) max = p[j];
    }
    T sum = T(0);
    for (int j = 0; j < n_valid; ++j) {
      p[j] = std::exp(p[j] - max);
      sum += p[j];
    }
    for (int j = 0; j < n_valid; ++j) p[j] /= sum;
    for (int j = n_valid; j < s.Tk; ++j) p[j] = T(0);

    const DropoutRow<T> drop(s, b, h, t);
    for (int d = 0; d < s.Dh; ++d) out[d] = T(0);
    for (int j = 0; j < n_valid; ++j) {
      const T pj = p[j] * drop.factor(j);
      const T* v = a.v + b * s.kv_bstride + long(j) * s.kv_stride + h * s.Dh;
      axpy(pj, v, out, s.Dh);
    }
  }
}

// One (sentence, head) of the backward pass; dp [Tk] is scratch.
template <class T>
__attribute__((target_clones("arch=x86-64-v4", "default"))) void backward_head(const AttentionBackward<T>& a, int b,
                                                                               int h, T* dp) {
  const AttentionShape<T>& s = a.shape;
  const T scale = static_cast<T>(s.scale);
  // Overwrite semantics: clear this (b, h)'s channels of dk, dv (all Tk rows) and dq (all Tq rows).
  for (int j = 0; j < s.Tk; ++j)
    for (int d = 0; d < s.Dh; ++d) {
      a.dk[b * s.kv_bstride + long(j) * s.kv_stride + h * s.Dh + d] = T(0);
      a.dv[b * s.kv_bstride + long(j) * s.kv_stride + h * s.Dh + d] = T(0);
    }
  const int k_len = valid_keys(s, b);
  for (int t = 0; t < s.Tq; ++t) {
    const T* q = a.q + b * s.q_bstride + long(t) * s.q_stride + h * s.Dh;
    const T* dout = a.dout + b * s.o_bstride + long(t) * s.o_stride + h * s.Dh;
    T* dq = a.dq + b * s.q_bstride + long(t) * s.q_stride + h * s.Dh;
    const T* p = a.probs + ((size_t(b) * s.H + h) * s.Tq + t) * s.Tk;
    const int n_valid = s.causal ? std::min(k_len, t + 1) : k_len;
    const DropoutRow<T> drop(s, b, h, t);

    T p_dot_dp = T(0);
    for (int j = 0; j < n_valid; ++j) {
      const T factor = drop.factor(j);
      const T* v = a.v + b * s.kv_bstride + long(j) * s.kv_stride + h * s.Dh;
      T* dv = a.dv + b * s.kv_bstride + long(j) * s.kv_stride + h * s.Dh;
      axpy(p[j] * factor, dout, dv, s.Dh);
      dp[j] = dot(dout, v, s.Dh) * factor;
      p_dot_dp += p[j] * dp[j];
    }
    for (int d = 0; d < s.Dh; ++d) dq[d] = T(0);
    for (int j = 0; j < n_valid; ++j) {
      const T ds = p[j] * (dp[j] - p_dot_dp) * scale;
      const T* k = a.k + b * s.kv_bstride + long(j) * s.kv_stride + h * s.Dh;
      T* dk = a.dk + b * s.kv_bstride + long(j) * s.kv_stride + h * s.Dh;
      axpy(ds, k, dq, s.Dh);
      axpy(ds, q, dk, s.Dh);
    }
  }
}

}  // namespace

template <class T>
void attention_forward(const AttentionForward<T>& a) {
  const AttentionShape<T>& s = a.shape;
  check_shape(s, "attention_forward");
#pragma omp parallel
  {
    std::vector<T> p_row(s.Tk);
#pragma omp for collapse(2)
    for (int b = 0; b < s.B; ++b)
      for (int h = 0; h < s.H; ++h) forward_head(a, b, h, p_row.data());
  }
}

template <class T>
void attention_backward(const AttentionBackward<T>& a) {
  const AttentionShape<T>& s = a.shape;
  check_shape(s, "attention_backward");
  AIAYN_CHECK(a.probs != nullptr, "attention_backward (cpu): needs the probabilities saved by the forward pass");
#pragma omp parallel
  {
    std::vector<T> dp(s.Tk);  // [Tk] gradient w.r.t. p (after undoing dropout), then w.r.t. the scores
#pragma omp for collapse(2)
    for (int b = 0; b < s.B; ++b)
      for (int h = 0; h < s.H; ++h) backward_head(a, b, h, dp.data());
  }
}

template void attention_forward<float>(const AttentionForward<float>&);
template void attention_forward<double>(const AttentionForward<double>&);
template void attention_backward<float>(const AttentionBackward<float>&);
template void attention_backward<double>(const AttentionBackward<double>&);

}  // namespace aiayn::kernels::cpu
