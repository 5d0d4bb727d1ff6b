// Fused multi-head attention (forward and backward) with key-padding and causal masks and attention dropout.
// The contract, masks and strides are in kernels/include/kernels/ops/attention.hpp; the CPU reference is
// kernels/cpu/attention.cpp. Dimension letters: B sentences, Tq queries, Tk keys, H heads, Dh head width.
//
// Forward: one block per (query tile of kRowTile rows, head, sentence); 4 warps, each owning kRowsPerWarp query
// rows. Key/value tiles of 32 rows are staged in shared memory; lane j scores key j of the tile, the row runs
// an online softmax (running max m, running sum l), and the output accumulates p * keep * v with lanes over
// the head's channels (Dh <= 128: 4 channels per lane). out = acc / (l * (1 - p_drop)); lse = m + log l is
// saved [B, H, Tq]. A row with no valid key writes out = 0 and lse = -inf.
// Backward (nothing S x S touches global memory, no atomics, deterministic), two implementations that the
// launcher chooses between by shape (the same float operations in the same order, so the same results up to
// FMA contraction):
// - short sequences (Tq, Tk <= kHeadMaxLen and the head's rows within the device's shared memory): one kernel,
//   attention_backward_head_kernel, one block per (head, sentence) computing delta, dk, dv (keeping ds in
//   shared memory) and dq; described above the kernel.
// - any length, three kernels:
//   delta[b, h, t] = sum_c dout * out                       (one warp per row)
//   dq: blocks over query tiles; p = exp(s - lse) recomputed, dp = (dout . v) * keep / (1 - p_drop),
//       ds = p (dp - delta), dq = scale * sum_j ds_j k_j
//   dk, dv: blocks over key tiles, looping over query tiles: dv_j = sum_t p'_t dout_t,
//       dk_j = scale * sum_t ds_t q_t.
// In both, every dq, dk and dv row is owned by one warp and summed in ascending key (query) order. Rows with
// no valid key (lse = -inf) get zero gradients, padded keys exact zeros; only the head's channels are written.
// Dropout masks use dropout_row_key(seed, step, pair[b], t, site) and channel h * Tk + j, as on the CPU.
// Storage: q, k, v, out, dout, dq, dk, dv are float32 or bf16 (T, the kernels' template argument); tiles are
// converted to float when staged, and scores, softmax, lse, delta and every accumulation are float32. Outputs
// are rounded once, when stored. (bf16 runs on the same CUDA-core arithmetic; no tensor cores yet.)
// Threads outside the valid range of Tq or Tk still take part in staging and barriers; no early returns
// precede a __syncthreads.
#include <cstdint>
#include <string>

#include "common.cuh"
#include "kernels/dropout_hash.hpp"
#include "kernels/internal/attention_paths.hpp"
#include "kernels/ops/attention.hpp"

namespace aiayn::kernels {
namespace {

using cuda_detail::as_cuda;
using cuda_detail::as_device;
using cuda_detail::device_t;
using cuda_detail::from_f32;
using cuda_detail::to_f32;
using cuda_detail::warp_max;
using cuda_detail::warp_sum;

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;
constexpr int kRowTile = kWarps * kRowsPerWarp;  // query rows (forward, dq) or key rows (dk, dv) per block
constexpr int kColTile = 32;                     // keys (forward, dq) or queries (dk, dv) per staged tile
constexpr int kMaxDh = cuda::kMaxHeadWidth;
constexpr int kPerLane = kMaxDh / 32;

// Everything the kernels need, by value (no CUDA types in the public header, so copy the shape here).
struct Params {
  int B, Tq, Tk, H, Dh;
  long q_bstride, kv_bstride, o_bstride;
  int q_stride, kv_stride, o_stride;
  const int32_t* k_len;
  bool causal;
  float scale;
  float p_drop;
  const int64_t* pair;
  uint64_t seed, step;
  uint32_t site;
};

template <class S>
Params to_params(const AttentionShape<S>& s) {
  return Params{s.B,         s.Tq,          s.Tk,      s.H,      s.Dh,     s.q_bstride, s.kv_bstride,
                s.o_bstride, s.q_stride,    s.kv_stride, s.o_stride, s.k_len, s.causal,  s.scale,
                s.p_drop,    s.pair,        s.seed,    s.step,   s.site};
}

__device__ __forceinline__ int valid_key_count(const Params& p, int b) {
  const int k = p.k_len ? p.k_len[b] : p.Tk;
  return k < 0 ? 0 : (k > p.Tk ? p.Tk : k);
}

// Stages rows [row0, row0 + rows) of a strided [T, channels] tensor's head slice into smem[r * pitch + d];
// rows at or beyond `limit` are zero. Converted to float.
template <class T>
__device__ __forceinline__ void stage_rows(float* smem, int pitch, const T* base, long bstride, int stride,
                                           int b, int h, int Dh, int row0, int rows, int limit) {
  for (int idx = threadIdx.x; idx < rows * Dh; idx += blockDim.x) {
    const int r = idx / Dh, d = idx - r * Dh;
    const int t = row0 + r;
    smem[r * pitch + d] = t < limit ? to_f32(base[b * bstride + long(t) * stride + h * Dh + d]) : 0.0f;
  }
}

__device__ __forceinline__ float dot_smem(const float* a, const float* b, int Dh) {
  float acc = 0.0f;
  for (int d = 0; d < Dh; ++d) acc += a[d] * b[d];
  return acc;
}

// ---------------------------------------------------------------------------------------------------------
// Forward. Shared: Q [kRowTile][Dh], K and V [kColTile][Dh + 1] (padding: lane j reads row j conflict-free).
template <class T>
__global__ void attention_forward_kernel(Params p, const T* __restrict__ q, const T* __restrict__ k,
                                         const T* __restrict__ v, T* __restrict__ out, float* __restrict__ lse) {
  AIAYN_DYNAMIC_SHARED(float, smem);
  const int Dh = p.Dh, pitch = Dh + 1;
  float* Qs = smem;
  float* Ks = Qs + kRowTile * Dh;
  float* Vs = Ks + kColTile * pitch;
  const int b = blockIdx.z, h = blockIdx.y, t0 = blockIdx.x * kRowTile;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int k_len = valid_key_count(p, b);
  const int t_last = min(p.Tq, t0 + kRowTile) - 1;
  const int n_keys = p.causal ? min(k_len, t_last + 1) : k_len;  // keys any row of this block can see
  const bool dropout = p.p_drop > 0.0f;
  const uint32_t channel0 = uint32_t(h) * uint32_t(p.Tk);

  stage_rows(Qs, Dh, q, p.q_bstride, p.q_stride, b, h, Dh, t0, kRowTile, p.Tq);

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kPerLane];
  uint64_t key[kRowsPerWarp];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) acc[rr][i] = 0.0f;
    const int t = t0 + warp * kRowsPerWarp + rr;
    key[rr] = dropout ? dropout_row_key(p.seed, p.step, uint64_t(p.pair[b]), uint32_t(t), p.site) : 0;
  }

  for (int j0 = 0; j0 < n_keys; j0 += kColTile) {
    __syncthreads();  // previous tile fully consumed (and Q staged, on the first pass)
    stage_rows(Ks, pitch, k, p.kv_bstride, p.kv_stride, b, h, Dh, j0, kColTile, n_keys);
    stage_rows(Vs, pitch, v, p.kv_bstride, p.kv_stride, b, h, Dh, j0, kColTile, n_keys);
    __syncthreads();
    const int j = j0 + lane;
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr, t = t0 + r;
      if (t >= p.Tq) continue;  // warp-uniform
      const bool valid = j < n_keys && (!p.causal || j <= t);
      const float s = valid ? dot_smem(Qs + r * Dh, Ks + lane * pitch, Dh) * p.scale : -INFINITY;
      const float m_new = fmaxf(m[rr], warp_max(s));
      if (m_new == -INFINITY) continue;  // no valid key yet (warp-uniform)
      const float e = valid ? expf(s - m_new) : 0.0f;
      const float correction = expf(m[rr] - m_new);  // 0 when m was -inf
      l[rr] = l[rr] * correction + warp_sum(e);
      m[rr] = m_new;
      const float e_kept = (dropout && valid && !dropout_keep(key[rr], channel0 + uint32_t(j), p.p_drop)) ? 0.0f : e;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) acc[rr][i] *= correction;
      for (int jj = 0; jj < kColTile; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, e_kept, jj);
        if (pj == 0.0f) continue;  // warp-uniform
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int d = lane + 32 * i;
          if (d < Dh) acc[rr][i] += pj * Vs[jj * pitch + d];
        }
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int t = t0 + warp * kRowsPerWarp + rr;
    if (t >= p.Tq) continue;
    const float norm = l[rr] > 0.0f ? 1.0f / (l[rr] * (1.0f - p.p_drop)) : 0.0f;
    T* o = out + b * p.o_bstride + long(t) * p.o_stride + h * Dh;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < Dh) o[d] = from_f32<T>(acc[rr][i] * norm);
    }
    if (lse && lane == 0) lse[(size_t(b) * p.H + h) * p.Tq + t] = l[rr] > 0.0f ? m[rr] + logf(l[rr]) : -INFINITY;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Backward, step 1: delta[b, h, t] = sum over the head's channels of dout * out. One warp per (b, t, h).
// delta uses the stored (in bf16: rounded) out, the values the forward actually produced.
template <class T>
__global__ void attention_delta_kernel(Params p, const T* __restrict__ dout, const T* __restrict__ out,
                                       float* __restrict__ delta) {
  const long row = long(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= long(p.B) * p.Tq * p.H) return;
  const int h = int(row % p.H), t = int((row / p.H) % p.Tq), b = int(row / (long(p.H) * p.Tq));
  const T* go = dout + b * p.o_bstride + long(t) * p.o_stride + h * p.Dh;
  const T* o = out + b * p.o_bstride + long(t) * p.o_stride + h * p.Dh;
  float acc = 0.0f;
  for (int d = lane; d < p.Dh; d += 32) acc += to_f32(go[d]) * to_f32(o[d]);
  acc = warp_sum(acc);
  if (lane == 0) delta[(size_t(b) * p.H + h) * p.Tq + t] = acc;
}

// Backward, step 2: dq. Shared: Q, dO [kRowTile][Dh]; K, V [kColTile][Dh + 1].
template <class T>
__global__ void attention_dq_kernel(Params p, const T* __restrict__ dout, const T* __restrict__ q,
                                    const T* __restrict__ k, const T* __restrict__ v,
                                    const float* __restrict__ lse, const float* __restrict__ delta,
                                    T* __restrict__ dq) {
  AIAYN_DYNAMIC_SHARED(float, smem);
  const int Dh = p.Dh, pitch = Dh + 1;
  float* Qs = smem;
  float* dOs = Qs + kRowTile * Dh;
  float* Ks = dOs + kRowTile * Dh;
  float* Vs = Ks + kColTile * pitch;
  const int b = blockIdx.z, h = blockIdx.y, t0 = blockIdx.x * kRowTile;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int k_len = valid_key_count(p, b);
  const int t_last = min(p.Tq, t0 + kRowTile) - 1;
  const int n_keys = p.causal ? min(k_len, t_last + 1) : k_len;
  const bool dropout = p.p_drop > 0.0f;
  const float inv_keep = 1.0f / (1.0f - p.p_drop);
  const uint32_t channel0 = uint32_t(h) * uint32_t(p.Tk);

  stage_rows(Qs, Dh, q, p.q_bstride, p.q_stride, b, h, Dh, t0, kRowTile, p.Tq);
  stage_rows(dOs, Dh, dout, p.o_bstride, p.o_stride, b, h, Dh, t0, kRowTile, p.Tq);

  float acc[kRowsPerWarp][kPerLane], row_lse[kRowsPerWarp], row_delta[kRowsPerWarp];
  uint64_t key[kRowsPerWarp];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int t = t0 + warp * kRowsPerWarp + rr;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) acc[rr][i] = 0.0f;
    const size_t stat = (size_t(b) * p.H + h) * p.Tq + t;
    row_lse[rr] = t < p.Tq ? lse[stat] : 0.0f;
    row_delta[rr] = t < p.Tq ? delta[stat] : 0.0f;
    key[rr] = dropout ? dropout_row_key(p.seed, p.step, uint64_t(p.pair[b]), uint32_t(t), p.site) : 0;
  }

  for (int j0 = 0; j0 < n_keys; j0 += kColTile) {
    __syncthreads();
    stage_rows(Ks, pitch, k, p.kv_bstride, p.kv_stride, b, h, Dh, j0, kColTile, n_keys);
    stage_rows(Vs, pitch, v, p.kv_bstride, p.kv_stride, b, h, Dh, j0, kColTile, n_keys);
    __syncthreads();
    const int j = j0 + lane;
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr, t = t0 + r;
      if (t >= p.Tq) continue;  // warp-uniform
      const bool valid = j < n_keys && (!p.causal || j <= t);
      float ds = 0.0f;
      if (valid) {
        const float prob = expf(dot_smem(Qs + r * Dh, Ks + lane * pitch, Dh) * p.scale - row_lse[rr]);
        float factor = 1.0f;
        if (dropout) factor = dropout_keep(key[rr], channel0 + uint32_t(j), p.p_drop) ? inv_keep : 0.0f;
        const float dp = dot_smem(dOs + r * Dh, Vs + lane * pitch, Dh) * factor;
        ds = prob * (dp - row_delta[rr]);
      }
      for (int jj = 0; jj < kColTile; ++jj) {
        const float dsj = __shfl_sync(0xffffffffu, ds, jj);
        if (dsj == 0.0f) continue;  // warp-uniform
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int d = lane + 32 * i;
          if (d < Dh) acc[rr][i] += dsj * Ks[jj * pitch + d];
        }
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int t = t0 + warp * kRowsPerWarp + rr;
    if (t >= p.Tq) continue;
    T* g = dq + b * p.q_bstride + long(t) * p.q_stride + h * Dh;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < Dh) g[d] = from_f32<T>(acc[rr][i] * p.scale);
    }
  }
}

// Backward, step 3: dk and dv. Blocks over key tiles; shared: K, V [kRowTile][Dh]; Q, dO [kColTile][Dh + 1];
// lse, delta [kColTile].
template <class T>
__global__ void attention_dkdv_kernel(Params p, const T* __restrict__ dout, const T* __restrict__ q,
                                      const T* __restrict__ k, const T* __restrict__ v,
                                      const float* __restrict__ lse, const float* __restrict__ delta,
                                      T* __restrict__ dk, T* __restrict__ dv) {
  AIAYN_DYNAMIC_SHARED(float, smem);
  const int Dh = p.Dh, pitch = Dh + 1;
  float* Ks = smem;
  float* Vs = Ks + kRowTile * Dh;
  float* Qs = Vs + kRowTile * Dh;
  float* dOs = Qs + kColTile * pitch;
  float* lse_s = dOs + kColTile * pitch;
  float* delta_s = lse_s + kColTile;
  const int b = blockIdx.z, h = blockIdx.y, j0 = blockIdx.x * kRowTile;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int k_len = valid_key_count(p, b);
  const bool dropout = p.p_drop > 0.0f;
  const float inv_keep = 1.0f / (1.0f - p.p_drop);
  const uint32_t channel0 = uint32_t(h) * uint32_t(p.Tk);

  stage_rows(Ks, Dh, k, p.kv_bstride, p.kv_stride, b, h, Dh, j0, kRowTile, k_len);
  stage_rows(Vs, Dh, v, p.kv_bstride, p.kv_stride, b, h, Dh, j0, kRowTile, k_len);

  float gk[kRowsPerWarp][kPerLane], gv[kRowsPerWarp][kPerLane];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr)
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) gk[rr][i] = gv[rr][i] = 0.0f;

  // Queries before j0 cannot see any key of this block under the causal mask; none can when j0 >= k_len.
  const int t_begin = p.causal ? j0 : 0;
  const int t_end = j0 < k_len ? p.Tq : 0;
  for (int tq0 = t_begin; tq0 < t_end; tq0 += kColTile) {
    __syncthreads();
    stage_rows(Qs, pitch, q, p.q_bstride, p.q_stride, b, h, Dh, tq0, kColTile, p.Tq);
    stage_rows(dOs, pitch, dout, p.o_bstride, p.o_stride, b, h, Dh, tq0, kColTile, p.Tq);
    if (threadIdx.x < kColTile) {
      const int t = tq0 + threadIdx.x;
      const size_t stat = (size_t(b) * p.H + h) * p.Tq + t;
      lse_s[threadIdx.x] = t < p.Tq ? lse[stat] : 0.0f;
      delta_s[threadIdx.x] = t < p.Tq ? delta[stat] : 0.0f;
    }
    __syncthreads();
    const int t = tq0 + lane;  // this lane's query
    const uint64_t key = dropout && t < p.Tq ? dropout_row_key(p.seed, p.step, uint64_t(p.pair[b]), uint32_t(t), p.site) : 0;
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr, j = j0 + r;
      if (j >= k_len) continue;  // warp-uniform; gradients stay 0
      const bool valid = t < p.Tq && (!p.causal || j <= t);
      float p_kept = 0.0f, ds = 0.0f;
      if (valid) {
        const float prob = expf(dot_smem(Qs + lane * pitch, Ks + r * Dh, Dh) * p.scale - lse_s[lane]);
        float factor = 1.0f;
        if (dropout) factor = dropout_keep(key, channel0 + uint32_t(j), p.p_drop) ? inv_keep : 0.0f;
        const float dp = dot_smem(dOs + lane * pitch, Vs + r * Dh, Dh) * factor;
        p_kept = prob * factor;
        ds = prob * (dp - delta_s[lane]);
      }
      for (int tt = 0; tt < kColTile; ++tt) {
        const float pt = __shfl_sync(0xffffffffu, p_kept, tt);
        const float dst = __shfl_sync(0xffffffffu, ds, tt);
        if (pt == 0.0f && dst == 0.0f) continue;  // warp-uniform
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int d = lane + 32 * i;
          if (d < Dh) {
            gv[rr][i] += pt * dOs[tt * pitch + d];
            gk[rr][i] += dst * Qs[tt * pitch + d];
          }
        }
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int j = j0 + warp * kRowsPerWarp + rr;
    if (j >= p.Tk) continue;
    T* gkr = dk + b * p.kv_bstride + long(j) * p.kv_stride + h * Dh;
    T* gvr = dv + b * p.kv_bstride + long(j) * p.kv_stride + h * Dh;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < Dh) {
        gkr[d] = from_f32<T>(gk[rr][i] * p.scale);
        gvr[d] = from_f32<T>(gv[rr][i]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Backward for short sequences, all of it in one kernel: one block of kHeadWarps warps per (head, sentence),
// the head's rows staged in shared memory as float (pitch Dh | 1, odd, where lanes run over rows):
//   K, V [Tk4][Dh] (Tk4 = Tk rounded up to kRowsPerWarp; rows >= k_len are 0)   Q, dO [Tq][Dh | 1]
//   dsT [Tk][Tq] (ds transposed; only valid (query, key) entries are written or read)   lse, delta [Tq]
// 1. Stage; delta[t] = dout[t] . out[t] (one warp per row, attention_delta_kernel's order).       barrier
// 2. dk, dv: each warp takes groups of kRowsPerWarp keys and loops over chunks of 32 queries (lane = query);
//    p, p' and ds per (query, key) exactly as attention_dkdv_kernel computes them; ds is kept in dsT; dk and
//    dv (rows >= k_len: 0) are written.                                                           barrier
// 3. dq: each warp takes groups of kRowsPerWarp queries, lanes over channels: dq[t] = scale sum_j ds[t][j] k[j].
// Every sum runs over keys (dq) or queries (dk, dv) in ascending order, as in the tiled kernels, one owner per
// output row: deterministic, and the same float operations as the three-kernel path. The launcher uses it
// when attention_backward_per_head_fits(Tq, Tk, Dh).
constexpr int kHeadWarps = 8;
constexpr int kHeadMaxLen = 128;  // Tq and Tk at most this (and the shared memory within the device's limit)

__host__ __device__ constexpr int head_pitch(int Dh) { return Dh | 1; }
__host__ __device__ constexpr int head_key_rows(int Tk) {
  return (Tk + kRowsPerWarp - 1) / kRowsPerWarp * kRowsPerWarp;
}

size_t per_head_backward_smem(int Tq, int Tk, int Dh) {
  return sizeof(float) * (2 * size_t(head_key_rows(Tk)) * Dh + 2 * size_t(Tq) * head_pitch(Dh) +
                          size_t(Tk) * Tq + 2 * size_t(Tq));
}

template <class T>
__global__ void attention_backward_head_kernel(Params p, const T* __restrict__ dout, const T* __restrict__ q,
                                               const T* __restrict__ k, const T* __restrict__ v,
                                               const T* __restrict__ out, const float* __restrict__ lse,
                                               T* __restrict__ dq, T* __restrict__ dk, T* __restrict__ dv) {
  AIAYN_DYNAMIC_SHARED(float, smem);
  const int Dh = p.Dh, Tq = p.Tq, Tk = p.Tk, pitch = head_pitch(Dh), Tk4 = head_key_rows(Tk);
  float* Ks = smem;
  float* Vs = Ks + Tk4 * Dh;
  float* Qs = Vs + Tk4 * Dh;
  float* dOs = Qs + Tq * pitch;
  float* dsT = dOs + Tq * pitch;
  float* lse_s = dsT + Tk * Tq;
  float* delta_s = lse_s + Tq;
  const int h = blockIdx.x, b = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int k_len = valid_key_count(p, b);
  const bool dropout = p.p_drop > 0.0f;
  const float inv_keep = 1.0f / (1.0f - p.p_drop);
  const uint32_t channel0 = uint32_t(h) * uint32_t(Tk);
  const size_t stat0 = (size_t(b) * p.H + h) * Tq;  // lse of (b, h, t) at lse[stat0 + t]

  // 1. Stage the head's rows, lse, and delta (from global memory: the same products in the same order as
  //    attention_delta_kernel).
  stage_rows(Ks, Dh, k, p.kv_bstride, p.kv_stride, b, h, Dh, 0, Tk4, k_len);
  stage_rows(Vs, Dh, v, p.kv_bstride, p.kv_stride, b, h, Dh, 0, Tk4, k_len);
  stage_rows(Qs, pitch, q, p.q_bstride, p.q_stride, b, h, Dh, 0, Tq, Tq);
  stage_rows(dOs, pitch, dout, p.o_bstride, p.o_stride, b, h, Dh, 0, Tq, Tq);
  for (int t = threadIdx.x; t < Tq; t += blockDim.x) lse_s[t] = lse[stat0 + t];
  for (int t = warp; t < Tq; t += kHeadWarps) {  // warp-uniform
    const T* go = dout + b * p.o_bstride + long(t) * p.o_stride + h * Dh;
    const T* o = out + b * p.o_bstride + long(t) * p.o_stride + h * Dh;
    float acc = 0.0f;
    for (int d = lane; d < Dh; d += 32) acc += to_f32(go[d]) * to_f32(o[d]);
    acc = warp_sum(acc);
    if (lane == 0) delta_s[t] = acc;
  }
  __syncthreads();

  // 2. dk, dv, and ds into dsT. A group's queries start at its first key under the causal mask (earlier ones
  //    see none of its keys); a group at or past k_len has no valid entry and writes zeros.
  for (int j0 = warp * kRowsPerWarp; j0 < Tk; j0 += kHeadWarps * kRowsPerWarp) {  // warp-uniform
    float gk[kRowsPerWarp][kPerLane], gv[kRowsPerWarp][kPerLane];
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr)
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) gk[rr][i] = gv[rr][i] = 0.0f;
    const int t_begin = p.causal ? j0 : 0;
    const int t_end = j0 < k_len ? Tq : 0;
    for (int tq0 = t_begin; tq0 < t_end; tq0 += 32) {
      const int t = tq0 + lane;      // this lane's query
      const int tc = min(t, Tq - 1);  // the row it reads (lanes past Tq compute a discarded score)
      const uint64_t key = dropout && t < Tq ? dropout_row_key(p.seed, p.step, uint64_t(p.pair[b]), uint32_t(t), p.site) : 0;
      // Scores and dout . v for the group's keys, each a sum over d in order (as dot_smem).
      float sc[kRowsPerWarp], dv_dot[kRowsPerWarp];
#pragma unroll
      for (int rr = 0; rr < kRowsPerWarp; ++rr) sc[rr] = dv_dot[rr] = 0.0f;
      const float* qrow = Qs + tc * pitch;
      const float* grow = dOs + tc * pitch;
      for (int d = 0; d < Dh; ++d) {
        const float qd = qrow[d], gd = grow[d];
#pragma unroll
        for (int rr = 0; rr < kRowsPerWarp; ++rr) {
          sc[rr] += qd * Ks[(j0 + rr) * Dh + d];
          dv_dot[rr] += gd * Vs[(j0 + rr) * Dh + d];
        }
      }
#pragma unroll
      for (int rr = 0; rr < kRowsPerWarp; ++rr) {
        const int j = j0 + rr;
        if (j >= k_len) continue;  // warp-uniform; gradients stay 0
        const bool valid = t < Tq && (!p.causal || j <= t);
        float p_kept = 0.0f, ds = 0.0f;
        if (valid) {
          const float prob = expf(sc[rr] * p.scale - lse_s[t]);
          float factor = 1.0f;
          if (dropout) factor = dropout_keep(key, channel0 + uint32_t(j), p.p_drop) ? inv_keep : 0.0f;
          const float dp = dv_dot[rr] * factor;
          p_kept = prob * factor;
          ds = prob * (dp - delta_s[t]);
          dsT[j * Tq + t] = ds;
        }
        for (int tt = 0; tt < 32; ++tt) {
          const float pt = __shfl_sync(0xffffffffu, p_kept, tt);
          const float dst = __shfl_sync(0xffffffffu, ds, tt);
          if (pt == 0.0f && dst == 0.0f) continue;  // warp-uniform
          const float* qt = Qs + (tq0 + tt) * pitch;  // tq0 + tt < Tq: invalid lanes hold two zeros
          const float* gt = dOs + (tq0 + tt) * pitch;
#pragma unroll
          for (int i = 0; i < kPerLane; ++i) {
            const int d = lane + 32 * i;
            if (d < Dh) {
              gv[rr][i] += pt * gt[d];
              gk[rr][i] += dst * qt[d];
            }
          }
        }
      }
    }
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int j = j0 + rr;
      if (j >= Tk) continue;
      T* gkr = dk + b * p.kv_bstride + long(j) * p.kv_stride + h * Dh;
      T* gvr = dv + b * p.kv_bstride + long(j) * p.kv_stride + h * Dh;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int d = lane + 32 * i;
        if (d < Dh) {
          gkr[d] = from_f32<T>(gk[rr][i] * p.scale);
          gvr[d] = from_f32<T>(gv[rr][i]);
        }
      }
    }
  }
  __syncthreads();  // dsT complete

  // 3. dq. Query t sums over its valid keys j < n_valid(t), ascending; K rows load once per group.
  for (int t0 = warp * kRowsPerWarp; t0 < Tq; t0 += kHeadWarps * kRowsPerWarp) {  // warp-uniform
    int n_valid[kRowsPerWarp];
    float acc[kRowsPerWarp][kPerLane];
    int n_max = 0;
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int t = t0 + rr;
      n_valid[rr] = t >= Tq ? 0 : (p.causal ? min(k_len, t + 1) : k_len);
      n_max = max(n_max, n_valid[rr]);
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) acc[rr][i] = 0.0f;
    }
    for (int j = 0; j < n_max; ++j) {
      float kj[kPerLane];
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int d = lane + 32 * i;
        kj[i] = d < Dh ? Ks[j * Dh + d] : 0.0f;
      }
#pragma unroll
      for (int rr = 0; rr < kRowsPerWarp; ++rr) {
        if (j >= n_valid[rr]) continue;  // warp-uniform
        const float ds = dsT[j * Tq + t0 + rr];
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) acc[rr][i] += ds * kj[i];
      }
    }
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int t = t0 + rr;
      if (t >= Tq) continue;
      T* g = dq + b * p.q_bstride + long(t) * p.q_stride + h * Dh;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int d = lane + 32 * i;
        if (d < Dh) g[d] = from_f32<T>(acc[rr][i] * p.scale);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
template <class S>
void check_shape(const AttentionShape<S>& s, const char* op) {
  AIAYN_CHECK(s.B >= 0 && s.Tq >= 0 && s.Tk >= 0 && s.H > 0 && s.Dh > 0,
              std::string(op) + ": bad shape (B, Tq, Tk must be non-negative, H and Dh positive)");
  AIAYN_CHECK(s.Dh <= kMaxDh, std::string(op) + " (cuda): head width " + std::to_string(s.Dh) +
                                  " exceeds the supported maximum " + std::to_string(kMaxDh));
  AIAYN_CHECK(s.H <= 65535 && s.B <= 65535, std::string(op) + " (cuda): B and H must be at most 65535");
  AIAYN_CHECK(s.p_drop == 0.0f || s.pair != nullptr, std::string(op) + ": attention dropout needs pair indices");
  AIAYN_CHECK(s.p_drop >= 0.0f && s.p_drop < 1.0f, std::string(op) + ": attention dropout must lie in [0, 1)");
}

template <class Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    AIAYN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

// S: the host storage type (float or bf16); the kernels take its device type.
template <class S>
void attention_forward_impl(const AttentionForward<S>& a, Stream s) {
  using T = device_t<S>;
  const AttentionShape<S>& sh = a.shape;
  check_shape(sh, "attention_forward");
  if (sh.B == 0 || sh.Tq == 0) return;
  const Params p = to_params(sh);
  const size_t smem = sizeof(float) * (size_t(kRowTile) * sh.Dh + 2 * size_t(kColTile) * (sh.Dh + 1));
  allow_shared(attention_forward_kernel<T>, smem);
  const dim3 grid((sh.Tq + kRowTile - 1) / kRowTile, sh.H, sh.B);
  cuda_detail::launch("attention_forward_kernel", attention_forward_kernel<T>, grid, kWarps * 32, smem, as_cuda(s), p, as_device(a.q), as_device(a.k), as_device(a.v), as_device(a.out), static_cast<float*>(a.saved));
}

// The device's opt-in limit on dynamic shared memory per block (227 KiB on sm_90).
size_t max_dynamic_shared() {
  int dev = 0, bytes = 0;
  AIAYN_CUDA_CHECK(cudaGetDevice(&dev));
  AIAYN_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return size_t(bytes);
}

bool per_head_fits(int Tq, int Tk, int Dh) {
  return Tq >= 0 && Tk >= 0 && Dh > 0 && Dh <= kMaxDh && Tq <= kHeadMaxLen && Tk <= kHeadMaxLen &&
         per_head_backward_smem(Tq, Tk, Dh) <= max_dynamic_shared();
}

template <class S>
void attention_backward_impl(const AttentionBackward<S>& a, cuda::AttentionBackwardPath path, Stream s) {
  using T = device_t<S>;
  using Path = cuda::AttentionBackwardPath;
  const AttentionShape<S>& sh = a.shape;
  check_shape(sh, "attention_backward");
  AIAYN_CHECK(a.saved != nullptr && a.out != nullptr,
              "attention_backward (cuda): needs the forward output and what the forward pass saved");
  const float* lse = static_cast<const float*>(a.saved);  // [B, H, Tq] (attention_saved_bytes)
  if (sh.B == 0) return;
  const bool fits = per_head_fits(sh.Tq, sh.Tk, sh.Dh);
  AIAYN_CHECK(path != Path::PerHead || fits,
              "attention_backward (cuda): the per-head kernel takes Tq, Tk <= " + std::to_string(kHeadMaxLen) +
                  " within the device's shared memory; got Tq = " + std::to_string(sh.Tq) + ", Tk = " +
                  std::to_string(sh.Tk) + ", Dh = " + std::to_string(sh.Dh));
  const cudaStream_t st = as_cuda(s);
  const Params p = to_params(sh);
  if (path == Path::PerHead || (path == Path::Auto && fits)) {
    if (sh.Tq == 0 && sh.Tk == 0) return;
    const size_t smem = per_head_backward_smem(sh.Tq, sh.Tk, sh.Dh);
    allow_shared(attention_backward_head_kernel<T>, smem);
    const dim3 grid(sh.H, sh.B);
    cuda_detail::launch("attention_backward_head_kernel", attention_backward_head_kernel<T>, grid, kHeadWarps * 32, smem, st, p, as_device(a.dout), as_device(a.q), as_device(a.k), as_device(a.v), as_device(a.out), lse, as_device(a.dq), as_device(a.dk), as_device(a.dv));
    return;
  }
  float* delta = nullptr;
  const size_t rows = size_t(sh.B) * sh.H * sh.Tq;
  if (rows > 0) {
    AIAYN_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&delta), rows * sizeof(float), st));
    cuda_detail::launch("attention_delta_kernel", attention_delta_kernel<T>, unsigned((rows + kWarps - 1) / kWarps), kWarps * 32, 0, st, p, as_device(a.dout), as_device(a.out), delta);
    const size_t smem_dq = sizeof(float) * (2 * size_t(kRowTile) * sh.Dh + 2 * size_t(kColTile) * (sh.Dh + 1));
    allow_shared(attention_dq_kernel<T>, smem_dq);
    const dim3 grid_q((sh.Tq + kRowTile - 1) / kRowTile, sh.H, sh.B);
    cuda_detail::launch("attention_dq_kernel", attention_dq_kernel<T>, grid_q, kWarps * 32, smem_dq, st, p, as_device(a.dout), as_device(a.q), as_device(a.k), as_device(a.v), lse, static_cast<const float*>(delta), as_device(a.dq));
  }
  if (sh.Tk > 0) {
    const size_t smem_kv =
        sizeof(float) * (2 * size_t(kRowTile) * sh.Dh + 2 * size_t(kColTile) * (sh.Dh + 1) + 2 * kColTile);
    allow_shared(attention_dkdv_kernel<T>, smem_kv);
    const dim3 grid_k((sh.Tk + kRowTile - 1) / kRowTile, sh.H, sh.B);
    cuda_detail::launch("attention_dkdv_kernel", attention_dkdv_kernel<T>, grid_k, kWarps * 32, smem_kv, st, p, as_device(a.dout), as_device(a.q), as_device(a.k), as_device(a.v), lse, static_cast<const float*>(delta), as_device(a.dk), as_device(a.dv));
  }
  if (delta) AIAYN_CUDA_CHECK(cudaFreeAsync(delta, st));
}

}  // namespace

namespace cuda {
void attention_forward(const AttentionForward<float>& a, Stream s) { attention_forward_impl(a, s); }
void attention_backward(const AttentionBackward<float>& a, Stream s) {
  attention_backward_impl(a, AttentionBackwardPath::Auto, s);
}
void attention_backward(const AttentionBackward<float>& a, AttentionBackwardPath path, Stream s) {
  attention_backward_impl(a, path, s);
}
void attention_forward(const AttentionForward<bf16>& a, Stream s) { attention_forward_impl(a, s); }
void attention_backward(const AttentionBackward<bf16>& a, Stream s) {
  attention_backward_impl(a, AttentionBackwardPath::Auto, s);
}
void attention_backward(const AttentionBackward<bf16>& a, AttentionBackwardPath path, Stream s) {
  attention_backward_impl(a, path, s);
}
bool attention_backward_per_head_fits(int Tq, int Tk, int Dh) { return per_head_fits(Tq, Tk, Dh); }
}  // namespace cuda
}  // namespace aiayn::kernels
