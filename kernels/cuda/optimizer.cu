// Adam, sum of squares and scaling over flat fp32 buffers, and the float32 <-> bf16 casts.
//   adam:        the update of ops/adam.hpp, element-wise, float arithmetic with bias1, bias2 rounded to float
//                (as the CPU reference does); with param_bf16, the same pass stores bf16(updated param), the
//                copy the bf16 matrix products read (rounded to nearest even, like kernels::to_bf16)
//   sum_squares: two passes in double: a fixed grid of kPartials blocks (independent of the GPU) each sums a
//                fixed grid-stride subset and reduces it in a fixed tree; one block then reduces the partials.
//                The result is the same bits on every run and every GPU; it synchronises the stream.
//   scale:       x *= factor
//   cast:        float32 -> bf16 rounds to nearest even (__float2bfloat16_rn); bf16 -> float32 is exact
#include "common.cuh"
#include "kernels/ops/adam.hpp"

namespace aiayn::kernels {
namespace {

using cuda_detail::as_cuda;
using cuda_detail::as_device;
using cuda_detail::block_sum;
using cuda_detail::grid_for;

constexpr int kThreads = 256;
constexpr int kPartials = 1024;

// param_bf16 [n] or null.
__global__ void adam_kernel(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                            float* __restrict__ v, size_t n, float lr, float beta1, float beta2, float eps,
                            float grad_scale, float bias1, float bias2, __nv_bfloat16* __restrict__ param_bf16) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float g = grad[i] * grad_scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float updated = param[i] - lr * (mi / bias1) / (sqrtf(vi / bias2) + eps);
    param[i] = updated;
    if (param_bf16) param_bf16[i] = __float2bfloat16_rn(updated);
  }
}

__global__ void sum_squares_partial_kernel(const float* __restrict__ x, size_t n, double* __restrict__ partial) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const double xi = x[i];
    acc += xi * xi;
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_partials_kernel(const double* __restrict__ partial, int count, double* __restrict__ total) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) *total = acc;
}

__global__ void scale_kernel(float* __restrict__ x, size_t n, float factor) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    x[i] *= factor;
}

__global__ void cast_to_bf16_kernel(const float* __restrict__ x, __nv_bfloat16* __restrict__ y, size_t n) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16_rn(x[i]);
}

__global__ void cast_to_float_kernel(const __nv_bfloat16* __restrict__ x, float* __restrict__ y, size_t n) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    y[i] = __bfloat162float(x[i]);
}

}  // namespace

namespace cuda {

void adam(const AdamArgs<float>& a, Stream s) {
  if (a.n == 0) return;
  cuda_detail::launch("adam_kernel", adam_kernel, grid_for(a.n, kThreads), kThreads, 0, as_cuda(s),  a.param, a.grad, a.m, a.v, a.n, a.lr, a.beta1, a.beta2, a.eps, a.grad_scale, static_cast<float>(a.bias1), static_cast<float>(a.bias2), as_device(a.param_bf16));
}

double sum_squares(const SumSquaresArgs<float>& a, Stream s) {
  if (a.n == 0) return 0.0;
  const cudaStream_t st = as_cuda(s);
  double* partial = nullptr;
  AIAYN_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partial), (kPartials + 1) * sizeof(double), st));
  cuda_detail::launch("sum_squares_partial_kernel", sum_squares_partial_kernel, kPartials, kThreads, 0, st, a.x, a.n, partial);
  cuda_detail::launch("sum_partials_kernel", sum_partials_kernel, 1, 1024, 0, st, partial, kPartials, partial + kPartials);
  double total = 0.0;
  AIAYN_CUDA_CHECK(cudaMemcpyAsync(&total, partial + kPartials, sizeof(double), cudaMemcpyDeviceToHost, st));
  AIAYN_CUDA_CHECK(cudaFreeAsync(partial, st));
  AIAYN_CUDA_CHECK(cudaStreamSynchronize(st));
  return total;
}

void scale(const ScaleArgs<float>& a, Stream s) {
  if (a.n == 0) return;
  cuda_detail::launch("scale_kernel", scale_kernel, grid_for(a.n, kThreads), kThreads, 0, as_cuda(s), a.x, a.n, a.factor);
}

void cast(const CastArgs<float, bf16>& a, Stream s) {
  if (a.n == 0) return;
  cuda_detail::launch("cast_to_bf16_kernel", cast_to_bf16_kernel, grid_for(a.n, kThreads), kThreads, 0, as_cuda(s), a.x, as_device(a.y), a.n);
}

void cast(const CastArgs<bf16, float>& a, Stream s) {
  if (a.n == 0) return;
  cuda_detail::launch("cast_to_float_kernel", cast_to_float_kernel, grid_for(a.n, kThreads), kThreads, 0, as_cuda(s), as_device(a.x), a.y, a.n);
}

}  // namespace cuda
}  // namespace aiayn::kernels
