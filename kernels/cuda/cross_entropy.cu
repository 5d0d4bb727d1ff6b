// Label-smoothed softmax cross-entropy, one block per row, chunked over the vocabulary V.
//   pass 1: max and first argmax of the row;  pass 2: sum_j exp(x_j - max) and sum_j x_j (double);
//   lse = max + log(sum);  nll = lse - x_y;  loss = (1 - eps) * nll + eps * (lse - sum_x / V)
//   pass 3: dlogits[j] = grad_scale * (exp(x_j - lse) - (1 - eps) [j == y] - eps / V)
// dlogits may alias logits: each element is read and then written by the same thread, and every read of the
// row (passes 1, 2, the target logit) is complete before the block barrier that precedes pass 3.
// Per-row results go to a scratch array; one block sums them in a fixed tree order (deterministic) and the
// totals are copied to the host: the call synchronises the stream. A target outside [0, V) that is not the
// pad id throws, naming the first such row (as the CPU reference does).
// Storage: logits and dlogits float32 or bf16. Each pass reads the row in the block's chunks of kRowThreads
// logits, converted to float; exp in float, sums in double, the gradient rounded once when stored: no float32
// copy of the row (or of [N, V]) exists in bf16.
#include <cstdint>
#include <string>

#include "common.cuh"
#include "kernels/ops/cross_entropy.hpp"

namespace aiayn::kernels {
namespace {

using cuda_detail::as_cuda;
using cuda_detail::as_device;
using cuda_detail::device_t;
using cuda_detail::from_f32;
using cuda_detail::to_f32;
using cuda_detail::block_sum;

constexpr int kRowThreads = 512;
constexpr int kReduceThreads = 1024;
constexpr int kCounted = 1, kCorrect = 2, kBadTarget = 4;

struct RowResult {
  double loss, nll;
  int flags;
};

struct Totals {
  double loss, nll;
  long long tokens, correct;
  int first_bad_row;
};

// (value, index) pairs: the larger value wins; on equal values the lower index (the first maximum).
__device__ __forceinline__ void argmax_combine(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

// logits and dlogits may alias: no __restrict__.
template <class T>
__global__ void cross_entropy_row_kernel(const T* logits, T* dlogits, const int32_t* __restrict__ targets,
                                         RowResult* __restrict__ rows, int V, size_t ld, int pad_id,
                                         float smoothing, float grad_scale) {
  __shared__ float s_val[32];
  __shared__ int s_idx[32];
  __shared__ double scratch[32];
  const int n = blockIdx.x;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const T* x = logits + size_t(n) * ld;                      // [V] of a row of ld (padding untouched)
  T* dx = dlogits ? dlogits + size_t(n) * ld : nullptr;      // [V], may be x
  const int y = targets[n];
  if (y == pad_id || y < 0 || y >= V) {
    if (dx)
      for (int j = tid; j < V; j += blockDim.x) dx[j] = from_f32<T>(0.0f);
    if (tid == 0) rows[n] = RowResult{0.0, 0.0, y == pad_id ? 0 : kBadTarget};
    return;
  }
  const float x_y = to_f32(x[y]);

  // Pass 1: max and first argmax.
  float best = -INFINITY;
  int best_i = V;
  for (int j = tid; j < V; j += blockDim.x) argmax_combine(best, best_i, to_f32(x[j]), j);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, off);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, off);
    argmax_combine(best, best_i, ov, oi);
  }
  if (lane == 0) {
    s_val[warp] = best;
    s_idx[warp] = best_i;
  }
  __syncthreads();
  best = -INFINITY;
  best_i = V;
  for (int w = 0; w < int(blockDim.x >> 5); ++w) argmax_combine(best, best_i, s_val[w], s_idx[w]);
  const float max = best;

  // Pass 2: sums for the normaliser and the smoothing term.
  double sum_exp = 0.0, sum_x = 0.0;
  for (int j = tid; j < V; j += blockDim.x) {
    const float xj = to_f32(x[j]);
    sum_exp += expf(xj - max);
    sum_x += xj;
  }
  sum_exp = block_sum(sum_exp, scratch);
  sum_x = block_sum(sum_x, scratch);  // its barriers also order every read above before pass 3's writes
  const double lse = double(max) + log(sum_exp);
  const double nll = lse - double(x_y);
  if (tid == 0) {
    const double eps = smoothing;
    rows[n] = RowResult{(1.0 - eps) * nll + eps * (lse - sum_x / V), nll, kCounted | (best_i == y ? kCorrect : 0)};
  }

  // Pass 3: the gradient, in place when dx == x.
  if (dx) {
    const float off_target = smoothing / V, on_target = 1.0f - smoothing;
    for (int j = tid; j < V; j += blockDim.x) {
      const float softmax = expf(static_cast<float>(double(to_f32(x[j])) - lse));
      dx[j] = from_f32<T>(grad_scale * (softmax - (j == y ? on_target : 0.0f) - off_target));
    }
  }
}

__global__ void cross_entropy_total_kernel(const RowResult* __restrict__ rows, int N, Totals* __restrict__ out) {
  __shared__ double s_loss[kReduceThreads], s_nll[kReduceThreads];
  __shared__ long long s_tok[kReduceThreads], s_cor[kReduceThreads];
  __shared__ int s_bad[kReduceThreads];
  const int tid = threadIdx.x;
  double loss = 0.0, nll = 0.0;
  long long tok = 0, cor = 0;
  int bad = N;
  for (int n = tid; n < N; n += kReduceThreads) {
    const RowResult r = rows[n];
    loss += r.loss;
    nll += r.nll;
    tok += (r.flags & kCounted) ? 1 : 0;
    cor += (r.flags & kCorrect) ? 1 : 0;
    if ((r.flags & kBadTarget) && n < bad) bad = n;
  }
  s_loss[tid] = loss;
  s_nll[tid] = nll;
  s_tok[tid] = tok;
  s_cor[tid] = cor;
  s_bad[tid] = bad;
  __syncthreads();
  for (int stride = kReduceThreads / 2; stride > 0; stride >>= 1) {
    if (tid < stride) {
      s_loss[tid] += s_loss[tid + stride];
      s_nll[tid] += s_nll[tid + stride];
      s_tok[tid] += s_tok[tid + stride];
      s_cor[tid] += s_cor[tid + stride];
      s_bad[tid] = min(s_bad[tid], s_bad[tid + stride]);
    }
    __syncthreads();
  }
  if (tid == 0) *out = Totals{s_loss[0], s_nll[0], s_tok[0], s_cor[0], s_bad[0]};
}

template <class S>
CrossEntropyStats cross_entropy_impl(const CrossEntropyArgs<S>& a, Stream s) {
  AIAYN_CHECK(a.N >= 0 && a.V > 0 && (a.ld == 0 || a.ld >= a.V), "cross_entropy: bad shape");
  const size_t ld = a.ld > 0 ? size_t(a.ld) : size_t(a.V);
  CrossEntropyStats stats;
  if (a.N == 0) return stats;
  const cudaStream_t st = as_cuda(s);
  char* scratch = nullptr;
  const size_t row_bytes = size_t(a.N) * sizeof(RowResult);
  AIAYN_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&scratch), row_bytes + sizeof(Totals), st));
  RowResult* rows = reinterpret_cast<RowResult*>(scratch);
  Totals* totals = reinterpret_cast<Totals*>(scratch + row_bytes);
  cuda_detail::launch("cross_entropy_row_kernel", cross_entropy_row_kernel<device_t<S>>, a.N, kRowThreads, 0, st, as_device(a.logits), as_device(a.dlogits), a.targets, rows, a.V, ld, a.pad_id, a.smoothing, a.grad_scale);
  cuda_detail::launch("cross_entropy_total_kernel", cross_entropy_total_kernel, 1, kReduceThreads, 0, st, rows, a.N, totals);
  Totals host{};
  AIAYN_CUDA_CHECK(cudaMemcpyAsync(&host, totals, sizeof(Totals), cudaMemcpyDeviceToHost, st));
  AIAYN_CUDA_CHECK(cudaFreeAsync(scratch, st));
  AIAYN_CUDA_CHECK(cudaStreamSynchronize(st));
  if (host.first_bad_row < a.N) {
    int32_t y = 0;
    AIAYN_CUDA_CHECK(cudaMemcpy(&y, a.targets + host.first_bad_row, sizeof(int32_t), cudaMemcpyDeviceToHost));
    AIAYN_FAIL("cross_entropy: target " + std::to_string(y) + " at row " + std::to_string(host.first_bad_row) +
               " is outside the vocabulary [0, " + std::to_string(a.V) + ")");
  }
  stats.loss = host.loss;
  stats.nll = host.nll;
  stats.tokens = host.tokens;
  stats.correct = host.correct;
  return stats;
}

}  // namespace

namespace cuda {
CrossEntropyStats cross_entropy(const CrossEntropyArgs<float>& a, Stream s) { return cross_entropy_impl(a, s); }
CrossEntropyStats cross_entropy(const CrossEntropyArgs<bf16>& a, Stream s) { return cross_entropy_impl(a, s); }
}  // namespace cuda
}  // namespace aiayn::kernels
