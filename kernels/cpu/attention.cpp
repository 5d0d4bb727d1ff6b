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
#include <cstring>
#include <string>
#include <vector>

#include "kernels/fast_math.hpp"
#include "kernels/dropout_hash.hpp"
#include "reference.hpp"

namespace aiayn::kernels::cpu {
namespace {

// What this backend saves for the backward pass (attention_saved_bytes): the probabilities [B, H, Tq, Tk];
// the row of (b, h, t).
template <class T>
T* saved_probs(void* saved, const AttentionShape<T>& s, int b, int h, int t) {
  return static_cast<T*>(saved) + ((size_t(b) * s.H + h) * s.Tq + t) * s.Tk;
}
template <class T>
const T* saved_probs(const void* saved, const AttentionShape<T>& s, int b, int h, int t) {
  return static_cast<const T*>(saved) + ((size_t(b) * s.H + h) * s.Tq + t) * s.Tk;
}

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
// for when nothing is saved. target_clones: an AVX-512 (x86-64-v4) clone beside the portable one, picked at
// load time; the loops are the same, only the vector width differs (with FMA contraction in the clone, so the
// last bits may differ between machines, as OpenBLAS's kernels do).
template <class T>
__attribute__((target_clones("arch=x86-64-v4", "default"))) void forward_head_reference(const AttentionForward<T>& a, int b,
                                                                              int h, T* p_row) {
  const AttentionShape<T>& s = a.shape;
  const T scale = static_cast<T>(s.scale);
  const int k_len = valid_keys(s, b);
  for (int t = 0; t < s.Tq; ++t) {
    const T* q = a.q + b * s.q_bstride + long(t) * s.q_stride + h * s.Dh;  // [Dh]
    T* out = a.out + b * s.o_bstride + long(t) * s.o_stride + h * s.Dh;   // [Dh]
    T* p = a.saved ? saved_probs(a.saved, s, b, h, t) : p_row;  // [Tk]
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
__attribute__((target_clones("arch=x86-64-v4", "default"))) void backward_head_reference(const AttentionBackward<T>& a, int b,
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
    const T* p = saved_probs(a.saved, s, b, h, t);
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


// ---- the variant the op runs: the same arithmetic per element, reorganised for the vector units ----------
// Per (sentence, head) the valid keys (and, in the backward pass, values) are packed transposed into
// [Dh, ld] (ld = Tk rounded up to 16, zero columns beyond the valid keys), so a query's scores against 16
// keys are one vector of accumulators over d instead of 16 horizontal dot-product sums; weighted sums of
// rows (out, dq) keep 16 channels in registers across the keys; the exponentials go through the
// vectorisable exp_nonpositive (in double) instead of libm's scalar exp. Sums run in another order than the
// reference's, so the two agree to rounding (tests/kernels/fused_test.cpp compares them).
// The vectors are GCC vector extensions: 16 lanes of T, split by the compiler into what the clone's target
// has (one zmm for float on x86-64-v4, four xmm on the portable clone).
constexpr int kLanes = 16;

inline int padded_keys(int Tk) { return (Tk + kLanes - 1) / kLanes * kLanes; }

// mt[d * ld + j] = m[j][d] for j < n (rows of m at `stride`), 0 for n <= j < ld.
template <class T>
inline __attribute__((always_inline)) void pack_transposed(const T* m, long stride, int n, int Dh, int ld, T* mt) {
  for (int d = 0; d < Dh; ++d) {
    T* row = mt + size_t(d) * ld;
    for (int j = 0; j < n; ++j) row[j] = m[j * stride + d];
    for (int j = n; j < ld; ++j) row[j] = T(0);
  }
}

// out[j] = sum_d x[d] * mt[d * ld + j] for j < n (n <= ld, ld a multiple of kLanes). Four accumulators over
// d % 4, so the additions are four independent chains instead of one (an FMA's latency is 4 cycles).
template <class T>
inline __attribute__((always_inline)) void times_packed(const T* __restrict x, const T* __restrict mt, int ld, int Dh,
                                                        int n, T* __restrict out) {
  typedef T Vec __attribute__((vector_size(kLanes * sizeof(T))));
  // Loads through memcpy into a named vector (a lambda returning a 64-byte vector by value would change the
  // portable clone's ABI).
  Vec m0, m1, m2, m3;
  auto row = [&](Vec& m, int d, int j0) { std::memcpy(&m, mt + size_t(d) * ld + j0, sizeof m); };
  for (int j0 = 0; j0 < n; j0 += kLanes) {
    Vec a0 = {}, a1 = {}, a2 = {}, a3 = {};
    int d = 0;
    for (; d + 4 <= Dh; d += 4) {
      row(m0, d, j0), row(m1, d + 1, j0), row(m2, d + 2, j0), row(m3, d + 3, j0);
      a0 += x[d] * m0;
      a1 += x[d + 1] * m1;
      a2 += x[d + 2] * m2;
      a3 += x[d + 3] * m3;
    }
    for (; d < Dh; ++d) {
      row(m0, d, j0);
      a0 += x[d] * m0;
    }
    const Vec acc = (a0 + a1) + (a2 + a3);
    T lanes[kLanes];
    std::memcpy(lanes, &acc, sizeof acc);
    const int w = n - j0 < kLanes ? n - j0 : kLanes;
    for (int jj = 0; jj < w; ++jj) out[j0 + jj] = lanes[jj];
  }
}

// times_packed for one query without the packing: out[j] = x . k[j] for j < n (rows of k at `stride`), with
// times_packed's arithmetic per key (four chains over d % 4, now the lanes of one 4-vector, then
// (a0 + a1) + (a2 + a3)), so the scores are the same bit for bit. With one query (the decoder's self-attention,
// one new position per hypothesis) packing the keys cost more than the products it serves.
template <class T>
inline __attribute__((always_inline)) void times_rows(const T* __restrict x, const T* __restrict k, long stride, int Dh,
                                                      int n, T* __restrict out) {
  typedef T Vec4 __attribute__((vector_size(4 * sizeof(T))));
  for (int j = 0; j < n; ++j) {
    const T* kj = k + j * stride;
    Vec4 a = {}, xv, kv;
    int d = 0;
    for (; d + 4 <= Dh; d += 4) {
      std::memcpy(&xv, x + d, sizeof xv);
      std::memcpy(&kv, kj + d, sizeof kv);
      a += xv * kv;
    }
    for (; d < Dh; ++d) a[0] += x[d] * kj[d];
    out[j] = (a[0] + a[1]) + (a[2] + a[3]);
  }
}

// out[d] = sum_{j < n} coef[j] * rows[j * stride + d] for d < Dh (overwrites out). Channels in groups of
// four vectors, each its own chain over j.
template <class T>
inline __attribute__((always_inline)) void weighted_rows(const T* __restrict coef, const T* __restrict rows, long stride,
                                                         int n, int Dh, T* __restrict out) {
  typedef T Vec __attribute__((vector_size(kLanes * sizeof(T))));
  Vec r0, r1, r2, r3;
  auto load = [&](Vec& r, int j, int d) { std::memcpy(&r, rows + j * stride + d, sizeof r); };
  int d0 = 0;
  for (; d0 + 4 * kLanes <= Dh; d0 += 4 * kLanes) {
    Vec a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int j = 0; j < n; ++j) {
      const T c = coef[j];
      load(r0, j, d0), load(r1, j, d0 + kLanes), load(r2, j, d0 + 2 * kLanes), load(r3, j, d0 + 3 * kLanes);
      a0 += c * r0;
      a1 += c * r1;
      a2 += c * r2;
      a3 += c * r3;
    }
    std::memcpy(out + d0, &a0, sizeof a0);
    std::memcpy(out + d0 + kLanes, &a1, sizeof a1);
    std::memcpy(out + d0 + 2 * kLanes, &a2, sizeof a2);
    std::memcpy(out + d0 + 3 * kLanes, &a3, sizeof a3);
  }
  for (; d0 + kLanes <= Dh; d0 += kLanes) {
    Vec acc = {};
    for (int j = 0; j < n; ++j) {
      load(r0, j, d0);
      acc += coef[j] * r0;
    }
    std::memcpy(out + d0, &acc, sizeof acc);
  }
  for (int d = d0; d < Dh; ++d) {
    T acc = T(0);
    for (int j = 0; j < n; ++j) acc += coef[j] * rows[j * stride + d];
    out[d] = acc;
  }
}

// p[j] = exp(p[j] - max) / sum over j < n (the scores already scaled); e [n] is scratch.
template <class T>
inline __attribute__((always_inline)) void softmax_row(T* p, int n, double* e) {
  T max = p[0];
#pragma omp simd reduction(max : max)
  for (int j = 0; j < n; ++j) max = p[j] > max ? p[j] : max;
#pragma omp simd
  for (int j = 0; j < n; ++j) e[j] = exp_nonpositive(double(p[j]) - double(max));
  T sum = T(0);
  for (int j = 0; j < n; ++j) {
    p[j] = static_cast<T>(e[j]);
    sum += p[j];
  }
  for (int j = 0; j < n; ++j) p[j] /= sum;
}

// Scratch of one thread: [Dh * ld] packed keys or values, then [Tk] of T, then [Tk] of double.
// Scratch of one thread: [Dh * ld] packed keys or values, [Tk] of T, [Tk] of double; for the backward pass
// also the dropped probabilities and the score gradients transposed, [Tk, Tq] each.
template <class T>
struct HeadScratch {
  std::vector<T> packed, row, pd_t, ds_t;
  std::vector<double> e;
  HeadScratch(const AttentionShape<T>& s, bool backward)
      : packed(size_t(s.Dh) * padded_keys(s.Tk)), row(s.Tk + 1), pd_t(backward ? size_t(s.Tk) * s.Tq : 0),
        ds_t(backward ? size_t(s.Tk) * s.Tq : 0), e(s.Tk + 1) {}
};

// The forward pass's scratch of the calling thread, kept across calls and grown when a shape needs more: the
// decoder calls attention twice per layer per step on small shapes, where allocating (and zeroing) it each time
// cost as much as the attention. forward_head writes every element it reads (the packed keys' padding too).
template <class T>
HeadScratch<T>& forward_scratch(const AttentionShape<T>& s) {
  thread_local HeadScratch<T> scratch(AttentionShape<T>{}, false);
  const size_t packed = size_t(s.Dh) * padded_keys(s.Tk), row = size_t(s.Tk) + 1;
  if (scratch.packed.size() < packed) scratch.packed.resize(packed);
  if (scratch.row.size() < row) scratch.row.resize(row);
  if (scratch.e.size() < row) scratch.e.resize(row);
  return scratch;
}

template <class T>
__attribute__((target_clones("arch=x86-64-v4", "default"))) void forward_head(const AttentionForward<T>& a, int b,
                                                                              int h, HeadScratch<T>& w) {
  const AttentionShape<T>& s = a.shape;
  const T scale = static_cast<T>(s.scale);
  const int k_len = valid_keys(s, b), ld = padded_keys(s.Tk);
  T* kt = w.packed.data();  // [Dh, ld]
  T* pd = w.row.data();     // [Tk] p after dropout
  const T* k0 = a.k + b * s.kv_bstride + h * s.Dh;
  const T* v0 = a.v + b * s.kv_bstride + h * s.Dh;
  const bool one_query = s.Tq == 1;
  if (!one_query) pack_transposed(k0, s.kv_stride, k_len, s.Dh, ld, kt);
  for (int t = 0; t < s.Tq; ++t) {
    const T* q = a.q + b * s.q_bstride + long(t) * s.q_stride + h * s.Dh;  // [Dh]
    T* out = a.out + b * s.o_bstride + long(t) * s.o_stride + h * s.Dh;   // [Dh]
    T* p = a.saved ? saved_probs(a.saved, s, b, h, t) : pd;  // [Tk]
    const int n_valid = s.causal ? std::min(k_len, t + 1) : k_len;  // valid keys are j < n_valid
    if (one_query)
      times_rows(q, k0, s.kv_stride, s.Dh, n_valid, p);
    else
      times_packed(q, kt, ld, s.Dh, n_valid, p);
#pragma omp simd
    for (int j = 0; j < n_valid; ++j) p[j] *= scale;
    if (n_valid > 0) softmax_row(p, n_valid, w.e.data());
    const DropoutRow<T> drop(s, b, h, t);
    for (int j = 0; j < n_valid; ++j) pd[j] = p[j] * drop.factor(j);
    for (int j = n_valid; j < s.Tk; ++j) p[j] = T(0);
    weighted_rows(pd, v0, s.kv_stride, n_valid, s.Dh, out);
  }
}

// Per query t: dp = dout . v (packed), ds; dq from ds (registers). Then per key j, from the transposed
// scratch: dv[j] = sum_t p'[t, j] dout[t] and dk[j] = sum_t ds[t, j] q[t], each one register-accumulated sum
// written once (keys without a valid query get exact zeros).
template <class T>
__attribute__((target_clones("arch=x86-64-v4", "default"))) void backward_head(const AttentionBackward<T>& a, int b,
                                                                               int h, HeadScratch<T>& w) {
  const AttentionShape<T>& s = a.shape;
  const T scale = static_cast<T>(s.scale);
  const int k_len = valid_keys(s, b), ld = padded_keys(s.Tk), Tq = s.Tq;
  T* vt = w.packed.data();  // [Dh, ld]
  T* dp = w.row.data();     // [Tk] dp, then ds
  T* pd_t = w.pd_t.data();  // [Tk, Tq] p' = p * dropout factor, transposed
  T* ds_t = w.ds_t.data();  // [Tk, Tq] ds, transposed
  const T* q0 = a.q + b * s.q_bstride + h * s.Dh;
  const T* k0 = a.k + b * s.kv_bstride + h * s.Dh;
  const T* dout0 = a.dout + b * s.o_bstride + h * s.Dh;
  pack_transposed(a.v + b * s.kv_bstride + h * s.Dh, s.kv_stride, k_len, s.Dh, ld, vt);
  for (int t = 0; t < Tq; ++t) {
    const T* dout = dout0 + long(t) * s.o_stride;
    T* dq = a.dq + b * s.q_bstride + long(t) * s.q_stride + h * s.Dh;
    const T* p = saved_probs(a.saved, s, b, h, t);
    const int n_valid = s.causal ? std::min(k_len, t + 1) : k_len;
    const DropoutRow<T> drop(s, b, h, t);
    times_packed(dout, vt, ld, s.Dh, n_valid, dp);  // dout . v[j]
    T p_dot_dp = T(0);
    for (int j = 0; j < n_valid; ++j) {
      const T factor = drop.factor(j);
      pd_t[size_t(j) * Tq + t] = p[j] * factor;
      dp[j] *= factor;
      p_dot_dp += p[j] * dp[j];
    }
    for (int j = 0; j < n_valid; ++j) {
      dp[j] = p[j] * (dp[j] - p_dot_dp) * scale;  // ds[j]
      ds_t[size_t(j) * Tq + t] = dp[j];
    }
    for (int j = n_valid; j < k_len; ++j) pd_t[size_t(j) * Tq + t] = ds_t[size_t(j) * Tq + t] = T(0);
    weighted_rows(dp, k0, s.kv_stride, n_valid, s.Dh, dq);
  }
  for (int j = 0; j < s.Tk; ++j) {
    T* dk = a.dk + b * s.kv_bstride + long(j) * s.kv_stride + h * s.Dh;
    T* dv = a.dv + b * s.kv_bstride + long(j) * s.kv_stride + h * s.Dh;
    // Causal: queries before j never see key j (their entries are zero), so the sums start at t = j.
    const int t0 = s.causal ? std::min(j, Tq) : 0;
    const int n = j < k_len ? Tq - t0 : 0;
    weighted_rows(pd_t + size_t(j) * Tq + t0, dout0 + long(t0) * s.o_stride, s.o_stride, n, s.Dh, dv);
    weighted_rows(ds_t + size_t(j) * Tq + t0, q0 + long(t0) * s.q_stride, s.q_stride, n, s.Dh, dk);
  }
}

}  // namespace

template <class T>
void attention_forward(const AttentionForward<T>& a) {
  const AttentionShape<T>& s = a.shape;
  check_shape(s, "attention_forward");
#pragma omp parallel
  {
    HeadScratch<T>& scratch = forward_scratch(s);
#pragma omp for collapse(2)
    for (int b = 0; b < s.B; ++b)
      for (int h = 0; h < s.H; ++h) forward_head(a, b, h, scratch);
  }
}

template <class T>
void attention_backward(const AttentionBackward<T>& a) {
  const AttentionShape<T>& s = a.shape;
  check_shape(s, "attention_backward");
  AIAYN_CHECK(a.saved != nullptr, "attention_backward (cpu): needs what the forward pass saved");
#pragma omp parallel
  {
    HeadScratch<T> scratch(s, true);
#pragma omp for collapse(2)
    for (int b = 0; b < s.B; ++b)
      for (int h = 0; h < s.H; ++h) backward_head(a, b, h, scratch);
  }
}

namespace reference {
template <class T>
void attention_forward(const AttentionForward<T>& a) {
  const AttentionShape<T>& s = a.shape;
  check_shape(s, "attention_forward");
  std::vector<T> p_row(s.Tk);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h) forward_head_reference(a, b, h, p_row.data());
}

template <class T>
void attention_backward(const AttentionBackward<T>& a) {
  const AttentionShape<T>& s = a.shape;
  check_shape(s, "attention_backward");
  AIAYN_CHECK(a.saved != nullptr, "attention_backward (cpu): needs what the forward pass saved");
  std::vector<T> dp(s.Tk);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h) backward_head_reference(a, b, h, dp.data());
}
template void attention_forward<float>(const AttentionForward<float>&);
template void attention_forward<double>(const AttentionForward<double>&);
template void attention_backward<float>(const AttentionBackward<float>&);
template void attention_backward<double>(const AttentionBackward<double>&);
}  // namespace reference

template void attention_forward<float>(const AttentionForward<float>&);
template void attention_forward<double>(const AttentionForward<double>&);
template void attention_backward<float>(const AttentionBackward<float>&);
template void attention_backward<double>(const AttentionBackward<double>&);

}  // namespace aiayn::kernels::cpu
