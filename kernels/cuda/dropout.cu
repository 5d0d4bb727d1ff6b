// Inverted dropout with the stateless hash (kernels/dropout_hash.hpp); forward and backward are the same map.
//   y[r, c] = keep(r, c) ? x[r, c] / (1 - p) : 0,   keep from dropout_row_key(seed, step, pair[r / seq_len],
//                                                   r % seq_len, site) and channel c
// One block per row: the row key is hashed once per thread (four mixes), then one mix per element. The
// masks are bit-identical to the CPU backend's (same integer hash, same float comparison), and so are the
// kept values (the same single float division). y may equal x.
#include <cstdint>

#include "common.cuh"
#include "kernels/dropout_hash.hpp"
#include "kernels/ops/dropout.hpp"

namespace aiayn::kernels {
namespace {

using cuda_detail::as_cuda;

__global__ void dropout_kernel(const float* x, float* y, int cols, int seq_len, const int64_t* __restrict__ pair,
                               uint64_t seed, uint64_t step, uint32_t site, float p) {
  const int r = blockIdx.x;
  const uint64_t key = dropout_row_key(seed, step, static_cast<uint64_t>(pair[r / seq_len]),
                                       static_cast<uint32_t>(r % seq_len), site);
  const float keep_prob = 1.0f - p;
  const size_t base = size_t(r) * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x)
    y[base + c] = dropout_keep(key, static_cast<uint32_t>(c), p) ? x[base + c] / keep_prob : 0.0f;
}

void apply_dropout(const DropoutArgs<float>& a, Stream s, const char* op) {
  AIAYN_CHECK(a.rows >= 0 && a.cols >= 0, std::string(op) + ": bad shape");
  const size_t count = size_t(a.rows) * a.cols;
  if (count == 0) return;
  const cudaStream_t st = as_cuda(s);
  if (a.p == 0.0f) {
    if (a.y != a.x) AIAYN_CUDA_CHECK(cudaMemcpyAsync(a.y, a.x, count * sizeof(float), cudaMemcpyDeviceToDevice, st));
    return;
  }
  AIAYN_CHECK(a.pair != nullptr, std::string(op) + ": p > 0 needs the pair index of each sentence");
  AIAYN_CHECK(a.seq_len > 0 && a.rows % a.seq_len == 0, std::string(op) + ": rows must be a multiple of seq_len");
  const int threads = a.cols >= 256 ? 256 : ((a.cols + 31) / 32) * 32;
  cuda_detail::launch(op, dropout_kernel, a.rows, threads, 0, st, a.x, a.y, a.cols, a.seq_len, a.pair, a.seed, a.step, a.site, a.p);
}

}  // namespace

namespace cuda {
void dropout_forward(const DropoutArgs<float>& a, Stream s) { apply_dropout(a, s, "dropout_forward"); }
void dropout_backward(const DropoutArgs<float>& a, Stream s) { apply_dropout(a, s, "dropout_backward"); }
}  // namespace cuda
}  // namespace aiayn::kernels
