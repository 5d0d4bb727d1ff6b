// Layer normalisation over the last dimension, one warp per row, float statistics.
//   forward:  mean = sum_c x / C;  rstd = 1 / sqrt(sum_c (x - mean)^2 / C + eps)  (two passes over the row)
//             y = (x - mean) * rstd * gamma + beta;  saves mean, rstd [rows]
//   backward: dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)),  g = dy * gamma   (one warp per row)
//             dgamma += sum_r dy * xhat;  dbeta += sum_r dy    (column reduction in two fixed-order passes:
//             row chunks into partials, then the partials in order; deterministic, no atomics)
// dx may alias dy: every element of dy is read by the lane that writes dx there, after the row's sums; the
// parameter-gradient kernels run first on the same stream, so they read dy before dx overwrites it.
#include "common.cuh"
#include "kernels/ops/layer_norm.hpp"

namespace aiayn::kernels {
namespace {

using cuda_detail::as_cuda;
using cuda_detail::warp_sum;

constexpr int kWarpsPerBlock = 4;

__global__ void layer_norm_forward_kernel(const float* __restrict__ x, const float* __restrict__ gamma,
                                          const float* __restrict__ beta, float* __restrict__ y,
                                          float* __restrict__ mean_out, float* __restrict__ rstd_out, int rows,
                                          int cols, float eps) {
  const int r = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const float* xr = x + size_t(r) * cols;  // [cols]
  float sum = 0.0f;
  for (int c = lane; c < cols; c += 32) sum += xr[c];
  const float mean = warp_sum(sum) / cols;
  float sq = 0.0f;
  for (int c = lane; c < cols; c += 32) {
    const float d = xr[c] - mean;
    sq += d * d;
  }
  const float rstd = 1.0f / sqrtf(warp_sum(sq) / cols + eps);
  float* yr = y + size_t(r) * cols;
  for (int c = lane; c < cols; c += 32) yr[c] = (xr[c] - mean) * rstd * gamma[c] + beta[c];
  if (lane == 0) {
    if (mean_out) mean_out[r] = mean;
    if (rstd_out) rstd_out[r] = rstd;
  }
}

// dy and dx may alias: no __restrict__ on them.
__global__ void layer_norm_dx_kernel(const float* dy, const float* __restrict__ x, const float* __restrict__ gamma,
                                     const float* __restrict__ mean, const float* __restrict__ rstd, float* dx,
                                     int rows, int cols) {
  const int r = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const float* xr = x + size_t(r) * cols;
  const float* dyr = dy + size_t(r) * cols;
  float* dxr = dx + size_t(r) * cols;
  const float mu = mean[r], rs = rstd[r];
  float g_sum = 0.0f, g_xhat_sum = 0.0f;
  for (int c = lane; c < cols; c += 32) {
    const float g = dyr[c] * gamma[c];
    g_sum += g;
    g_xhat_sum += g * (xr[c] - mu) * rs;
  }
  const float g_mean = warp_sum(g_sum) / cols, g_xhat_mean = warp_sum(g_xhat_sum) / cols;
  for (int c = lane; c < cols; c += 32) {
    const float xhat = (xr[c] - mu) * rs;
    const float g = dyr[c] * gamma[c];
    dxr[c] = rs * (g - g_mean - xhat * g_xhat_mean);
  }
}

// Pass 1: block (32-column tile, chunk of kRowChunk rows) -> partials [chunk, cols] for dgamma and dbeta.
constexpr int kColTile = 32, kRowLanes = 8, kRowChunk = 256;
__global__ void layer_norm_param_partial_kernel(const float* __restrict__ dy, const float* __restrict__ x,
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
      acc_g += dy[i] * (x[i] - mean[r]) * rstd[r];
      acc_b += dy[i];
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

}  // namespace

namespace cuda {

void layer_norm_forward(const LayerNormForward<float>& a, Stream s) {
  AIAYN_CHECK(a.rows >= 0 && a.cols > 0, "layer_norm_forward: bad shape");
  if (a.rows == 0) return;
  const unsigned blocks = (a.rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  cuda_detail::launch("layer_norm_forward_kernel", layer_norm_forward_kernel, blocks, kWarpsPerBlock * 32, 0, as_cuda(s), a.x, a.gamma, a.beta, a.y, a.mean, a.rstd, a.rows, a.cols, a.eps);
}

void layer_norm_backward(const LayerNormBackward<float>& a, Stream s) {
  AIAYN_CHECK(a.rows >= 0 && a.cols > 0, "layer_norm_backward: bad shape");
  if (a.rows == 0) return;
  const cudaStream_t st = as_cuda(s);
  if (a.dgamma || a.dbeta) {
    const int chunks = (a.rows + kRowChunk - 1) / kRowChunk;
    AIAYN_CHECK(chunks <= 65535, "layer_norm_backward: too many rows (" + std::to_string(a.rows) + ")");
    float* part = nullptr;
    AIAYN_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&part), 2 * size_t(chunks) * a.cols * sizeof(float), st));
    float* part_gamma = part;
    float* part_beta = part + size_t(chunks) * a.cols;
    const dim3 grid((a.cols + kColTile - 1) / kColTile, chunks);
    cuda_detail::launch("layer_norm_param_partial_kernel", layer_norm_param_partial_kernel, grid, dim3(kColTile, kRowLanes), 0, st, a.dy, a.x, a.mean, a.rstd, part_gamma, part_beta, a.rows, a.cols);
    cuda_detail::launch("layer_norm_param_final_kernel", layer_norm_param_final_kernel, (a.cols + 255) / 256, 256, 0, st, part_gamma, part_beta, a.dgamma, a.dbeta, chunks, a.cols);
    AIAYN_CUDA_CHECK(cudaFreeAsync(part, st));
  }
  const unsigned blocks = (a.rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  cuda_detail::launch("layer_norm_dx_kernel", layer_norm_dx_kernel, blocks, kWarpsPerBlock * 32, 0, st, a.dy, a.x, a.gamma, a.mean, a.rstd, a.dx, a.rows, a.cols);
}

}  // namespace cuda
}  // namespace aiayn::kernels
