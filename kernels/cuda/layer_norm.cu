// Layer normalisation over the last dimension, one warp per row, float statistics; and the post-norm residual
// sub-layer output LayerNorm(x + dropout(f)) fused into the same row kernels.
//   forward:  mean = sum_c x / C;  rstd = 1 / sqrt(sum_c (x - mean)^2 / C + eps)  (two passes over the row)
//             y = (x - mean) * rstd * gamma + beta;  saves mean, rstd [rows]
//   backward: dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)),  g = dy * gamma   (one warp per row)
//             dgamma += sum_r dy * xhat;  dbeta += sum_r dy    (column reduction in two fixed-order passes:
//             row chunks into partials, then the partials in order; deterministic, no atomics)
//   residual_norm_forward:  per row, s = x + dropout(f) (stored, then read back by the same lane for the
//             statistics), then the forward above on s
//   residual_norm_backward: the backward above on (dy, s), and in the dx kernel df = dropout(dx) from the
//             stored dx (the dropout op's map, dropout_map.cuh), so the fused op equals the unfused composition
// Storage: x, f, s, y, dy, dx, df float32 or bf16 (T); gamma, beta, mean, rstd, dgamma, dbeta float32. In bf16,
// s is rounded before the statistics are taken and dx before df is derived from it (as the unfused ops would).
// dx may alias dy: every element of dy is read by the lane that writes dx there, after the row's sums; the
// parameter-gradient kernels run first on the same stream, so they read dy before dx overwrites it.
#include <string>

#include "common.cuh"
#include "dropout_map.cuh"
#include "kernels/ops/layer_norm.hpp"

namespace aiayn::kernels {
namespace {

using cuda_detail::as_cuda;
using cuda_detail::as_device;
using cuda_detail::device_t;
using cuda_detail::dropout_value;
using cuda_detail::from_f32;
using cuda_detail::to_f32;
using cuda_detail::warp_sum;

constexpr int kWarpsPerBlock = 4;

// Row r's statistics and normalised output, one warp; xr [cols] is read twice for the statistics, once for y.
template <class T>
__device__ __forceinline__ void normalize_row(const T* xr, const float* __restrict__ gamma,
                                              const float* __restrict__ beta, T* __restrict__ yr,
                                              float* __restrict__ mean_out, float* __restrict__ rstd_out, int r,
                                              int cols, float eps, int lane) {
  float sum = 0.0f;
  for (int c = lane; c < cols; c += 32) sum += to_f32(xr[c]);
  const float mean = warp_sum(sum) / cols;
  float sq = 0.0f;
  for (int c = lane; c < cols; c += 32) {
    const float d = to_f32(xr[c]) - mean;
    sq += d * d;
  }
  const float rstd = 1.0f / sqrtf(warp_sum(sq) / cols + eps);
  for (int c = lane; c < cols; c += 32) yr[c] = from_f32<T>((to_f32(xr[c]) - mean) * rstd * gamma[c] + beta[c]);
  if (lane == 0) {
    if (mean_out) mean_out[r] = mean;
    if (rstd_out) rstd_out[r] = rstd;
  }
}

template <class T>
__global__ void layer_norm_forward_kernel(const T* __restrict__ x, const float* __restrict__ gamma,
                                          const float* __restrict__ beta, T* __restrict__ y,
                                          float* __restrict__ mean_out, float* __restrict__ rstd_out, int rows,
                                          int cols, float eps) {
  const int r = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  normalize_row(x + size_t(r) * cols, gamma, beta, y + size_t(r) * cols, mean_out, rstd_out, r, cols, eps, lane);
}

// s = x + dropout(f), then LayerNorm(s). s may alias x (each element is read, then written, by one lane).
template <class T>
__global__ void residual_norm_forward_kernel(const T* x, const T* __restrict__ f, const float* __restrict__ gamma,
                                             const float* __restrict__ beta, T* s, T* __restrict__ y,
                                             float* __restrict__ mean_out, float* __restrict__ rstd_out, int rows,
                                             int cols, float eps, DropoutMask drop) {
  const int r = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const bool dropout = drop.p > 0.0f;
  const uint64_t key = dropout ? dropout_row_key(drop, r) : 0;
  const float keep_prob = 1.0f - drop.p;
  const size_t at = size_t(r) * cols;
  T* sr = s + at;  // [cols]
  for (int c = lane; c < cols; c += 32) {
    float fv = to_f32(f[at + c]);
    if (dropout) fv = dropout_value(key, c, drop.p, keep_prob, fv);
    sr[c] = from_f32<T>(to_f32(x[at + c]) + fv);
  }
  // The statistics read back what this lane stored (program order within a thread): the rounded s.
  normalize_row(static_cast<const T*>(sr), gamma, beta, y + at, mean_out, rstd_out, r, cols, eps, lane);
}

// dy and dx may alias: no __restrict__ on them. df (null: not wanted) receives dropout(dx) from the stored dx.
template <class T>
__global__ void layer_norm_dx_kernel(const T* dy, const T* __restrict__ x, const float* __restrict__ gamma,
                                     const float* __restrict__ mean, const float* __restrict__ rstd, T* dx,
                                     int rows, int cols, T* __restrict__ df, DropoutMask drop) {
  const int r = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const T* xr = x + size_t(r) * cols;
  const T* dyr = dy + size_t(r) * cols;
  T* dxr = dx + size_t(r) * cols;
  const float mu = mean[r], rs = rstd[r];
  float g_sum = 0.0f, g_xhat_sum = 0.0f;
  for (int c = lane; c < cols; c += 32) {
    const float g = to_f32(dyr[c]) * gamma[c];
    g_sum += g;
    g_xhat_sum += g * (to_f32(xr[c]) - mu) * rs;
  }
  const float g_mean = warp_sum(g_sum) / cols, g_xhat_mean = warp_sum(g_xhat_sum) / cols;
  const bool dropout = df && drop.p > 0.0f;
  const uint64_t key = dropout ? dropout_row_key(drop, r) : 0;
  const float keep_prob = 1.0f - drop.p;
  T* dfr = df ? df + size_t(r) * cols : nullptr;
  for (int c = lane; c < cols; c += 32) {
    const float xhat = (to_f32(xr[c]) - mu) * rs;
    const float g = to_f32(dyr[c]) * gamma[c];
    const T d = from_f32<T>(rs * (g - g_mean - xhat * g_xhat_mean));
    dxr[c] = d;
    if (dfr) dfr[c] = dropout ? from_f32<T>(dropout_value(key, c, drop.p, keep_prob, to_f32(d))) : d;
  }
}

// Pass 1: block (32-column tile, chunk of kRowChunk rows) -> partials [chunk, cols] for dgamma and dbeta.
constexpr int kColTile = 32, kRowLanes = 8, kRowChunk = 256;
template <class T>
__global__ void layer_norm_param_partial_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                                const float* __restrict__ mean, const float* __restrict__ rstd,
                                                float* __restrict__ part_gamma, float* __restrict__ part_beta,
                                                int rows, int cols) {
  __shared__ float sg[kRowLanes][kColTile], sb[kRowLanes][kColTile];
  const int col = blockIdx.x * kColTile + threadIdx.x;
  const int r0 = blockIdx.y * kRowChunk, r1 = min(rows, r0 + kRowChunk);
  float acc_g = 0.0f, acc_b = 0.0f;
  if (col < cols)
    for (int r = r0 + threadIdx.y; r < r1; r += kRowLanes) {
      const size_t i = size_t(r) * cols + col;
      const float g = to_f32(dy[i]);
      acc_g += g * (to_f32(x[i]) - mean[r]) * rstd[r];
      acc_b += g;
    }
  sg[threadIdx.y][threadIdx.x] = acc_g;
  sb[threadIdx.y][threadIdx.x] = acc_b;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float tg = 0.0f, tb = 0.0f;
    for (int l = 0; l < kRowLanes; ++l) {
      tg += sg[l][threadIdx.x];
      tb += sb[l][threadIdx.x];
    }
    part_gamma[size_t(blockIdx.y) * cols + col] = tg;
    part_beta[size_t(blockIdx.y) * cols + col] = tb;
  }
}

// Pass 2: the partials in chunk order, added into dgamma and dbeta.
__global__ void layer_norm_param_final_kernel(const float* __restrict__ part_gamma, const float* __restrict__ part_beta,
                                              float* __restrict__ dgamma, float* __restrict__ dbeta, int chunks,
                                              int cols) {
  const int col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  float tg = 0.0f, tb = 0.0f;
  for (int ch = 0; ch < chunks; ++ch) {
    tg += part_gamma[size_t(ch) * cols + col];
    tb += part_beta[size_t(ch) * cols + col];
  }
  if (dgamma) dgamma[col] += tg;
  if (dbeta) dbeta[col] += tb;
}

unsigned row_blocks(int rows) { return unsigned((rows + kWarpsPerBlock - 1) / kWarpsPerBlock); }

// The shared backward: parameter gradients (two passes) first, then dx (and df) row by row. T is the device type.
template <class T>
void norm_backward(const T* dy, const T* x, const float* gamma, const float* mean, const float* rstd, T* dx,
                   float* dgamma, float* dbeta, int rows, int cols, T* df, const DropoutMask& drop,
                   cudaStream_t st, const char* op) {
  if (dgamma || dbeta) {
    const int chunks = (rows + kRowChunk - 1) / kRowChunk;
    AIAYN_CHECK(chunks <= 65535, std::string(op) + ": too many rows (" + std::to_string(rows) + ")");
    float* part = nullptr;
    AIAYN_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&part), 2 * size_t(chunks) * cols * sizeof(float), st));
    float* part_gamma = part;
    float* part_beta = part + size_t(chunks) * cols;
    const dim3 grid((cols + kColTile - 1) / kColTile, chunks);
    cuda_detail::launch("layer_norm_param_partial_kernel", layer_norm_param_partial_kernel<T>, grid, dim3(kColTile, kRowLanes), 0, st, dy, x, mean, rstd, part_gamma, part_beta, rows, cols);
    cuda_detail::launch("layer_norm_param_final_kernel", layer_norm_param_final_kernel, (cols + 255) / 256, 256, 0, st, part_gamma, part_beta, dgamma, dbeta, chunks, cols);
    AIAYN_CUDA_CHECK(cudaFreeAsync(part, st));
  }
  cuda_detail::launch("layer_norm_dx_kernel", layer_norm_dx_kernel<T>, row_blocks(rows), kWarpsPerBlock * 32, 0, st, dy, x, gamma, mean, rstd, dx, rows, cols, df, drop);
}

template <class T>
void layer_norm_forward_impl(const LayerNormForward<T, float>& a, Stream s) {
  AIAYN_CHECK(a.rows >= 0 && a.cols > 0, "layer_norm_forward: bad shape");
  if (a.rows == 0) return;
  cuda_detail::launch("layer_norm_forward_kernel", layer_norm_forward_kernel<device_t<T>>, row_blocks(a.rows), kWarpsPerBlock * 32, 0, as_cuda(s), as_device(a.x), a.gamma, a.beta, as_device(a.y), a.mean, a.rstd, a.rows, a.cols, a.eps);
}

template <class T>
void layer_norm_backward_impl(const LayerNormBackward<T, float>& a, Stream s) {
  AIAYN_CHECK(a.rows >= 0 && a.cols > 0, "layer_norm_backward: bad shape");
  if (a.rows == 0) return;
  norm_backward(as_device(a.dy), as_device(a.x), a.gamma, a.mean, a.rstd, as_device(a.dx), a.dgamma, a.dbeta, a.rows,
                a.cols, static_cast<device_t<T>*>(nullptr), DropoutMask{}, as_cuda(s), "layer_norm_backward");
}

template <class T>
void residual_norm_forward_impl(const ResidualNormForward<T, float>& a, Stream s) {
  AIAYN_CHECK(a.rows >= 0 && a.cols > 0, "residual_norm_forward: bad shape");
  cuda_detail::check_dropout_mask(a.drop, a.rows, "residual_norm_forward");
  if (a.rows == 0) return;
  cuda_detail::launch("residual_norm_forward_kernel", residual_norm_forward_kernel<device_t<T>>, row_blocks(a.rows), kWarpsPerBlock * 32, 0, as_cuda(s), as_device(a.x), as_device(a.f), a.gamma, a.beta, as_device(a.s), as_device(a.y), a.mean, a.rstd, a.rows, a.cols, a.eps, a.drop);
}

template <class T>
void residual_norm_backward_impl(const ResidualNormBackward<T, float>& a, Stream s) {
  AIAYN_CHECK(a.rows >= 0 && a.cols > 0, "residual_norm_backward: bad shape");
  cuda_detail::check_dropout_mask(a.drop, a.rows, "residual_norm_backward");
  AIAYN_CHECK(a.df != nullptr && a.df != a.dy && a.df != a.dx,
              "residual_norm_backward: df is required and may not alias dy or dx");
  if (a.rows == 0) return;
  norm_backward(as_device(a.dy), as_device(a.s), a.gamma, a.mean, a.rstd, as_device(a.dx), a.dgamma, a.dbeta, a.rows,
                a.cols, as_device(a.df), a.drop, as_cuda(s), "residual_norm_backward");
}

}  // namespace

namespace cuda {
void layer_norm_forward(const LayerNormForward<float>& a, Stream s) { layer_norm_forward_impl(a, s); }
void layer_norm_backward(const LayerNormBackward<float>& a, Stream s) { layer_norm_backward_impl(a, s); }
void layer_norm_forward(const LayerNormForward<bf16, float>& a, Stream s) { layer_norm_forward_impl(a, s); }
void layer_norm_backward(const LayerNormBackward<bf16, float>& a, Stream s) { layer_norm_backward_impl(a, s); }
void residual_norm_forward(const ResidualNormForward<float>& a, Stream s) { residual_norm_forward_impl(a, s); }
void residual_norm_backward(const ResidualNormBackward<float>& a, Stream s) { residual_norm_backward_impl(a, s); }
void residual_norm_forward(const ResidualNormForward<bf16, float>& a, Stream s) { residual_norm_forward_impl(a, s); }
void residual_norm_backward(const ResidualNormBackward<bf16, float>& a, Stream s) { residual_norm_backward_impl(a, s); }
}  // namespace cuda
}  // namespace aiayn::kernels
