// Inverted dropout with the stateless hash (kernels/dropout_hash.hpp); forward and backward are the same map.
//   y[r, c] = keep(r, c) ? x[r, c] / (1 - p) : 0,   keep from dropout_row_key(seed, step, pair[r / seq_len],
//                                                   r % seq_len, site) and channel c
// One block per row: the row key is hashed once per thread (four mixes), then one mix per element. The
// masks are bit-identical to the CPU backend's (same integer hash, same float comparison), and so are the
// kept values (the same single float division, dropout_map.cuh). y may equal x.
// Storage float32 or bf16 (loaded as float, divided in float, rounded once to nearest even).
#include <cstdint>

#include "common.cuh"
#include "dropout_map.cuh"
#include "kernels/ops/dropout.hpp"

namespace aiayn::kernels {
namespace {

using cuda_detail::as_cuda;
using cuda_detail::as_device;
using cuda_detail::dropout_value;
using cuda_detail::from_f32;
using cuda_detail::to_f32;

// x and y may alias: no __restrict__.
template <class T>
__global__ void dropout_kernel(const T* x, T* y, int cols, DropoutMask m) {
  const int r = blockIdx.x;
  const uint64_t key = dropout_row_key(m, r);
  const float keep_prob = 1.0f - m.p;
  const size_t base = size_t(r) * cols;  // row r [cols]
  for (int c = threadIdx.x; c < cols; c += blockDim.x)
    y[base + c] = from_f32<T>(dropout_value(key, c, m.p, keep_prob, to_f32(x[base + c])));
}

template <class T>
void apply_dropout(const DropoutArgs<T>& a, Stream s, const char* op) {
  AIAYN_CHECK(a.rows >= 0 && a.cols >= 0, std::string(op) + ": bad shape");
  const size_t count = size_t(a.rows) * a.cols;
  if (count == 0) return;
  const cudaStream_t st = as_cuda(s);
  if (a.p == 0.0f) {
    if (a.y != a.x) AIAYN_CUDA_CHECK(cudaMemcpyAsync(a.y, a.x, count * sizeof(T), cudaMemcpyDeviceToDevice, st));
    return;
  }
  cuda_detail::check_dropout_mask(a, a.rows, op);
  const int threads = a.cols >= 256 ? 256 : ((a.cols + 31) / 32) * 32;
  const DropoutMask mask = a;
  cuda_detail::launch(op, dropout_kernel<cuda_detail::device_t<T>>, a.rows, threads, 0, st, as_device(a.x),
                      as_device(a.y), a.cols, mask);
}

}  // namespace

namespace cuda {
void dropout_forward(const DropoutArgs<float>& a, Stream s) { apply_dropout(a, s, "dropout_forward"); }
void dropout_backward(const DropoutArgs<float>& a, Stream s) { apply_dropout(a, s, "dropout_backward"); }
void dropout_forward(const DropoutArgs<bf16>& a, Stream s) { apply_dropout(a, s, "dropout_forward"); }
void dropout_backward(const DropoutArgs<bf16>& a, Stream s) { apply_dropout(a, s, "dropout_backward"); }
}  // namespace cuda
}  // namespace aiayn::kernels
