#pragma once
// Inverted dropout with masks from the stateless hash (dropout_hash.hpp).
//
//   y[r, c] = keep(r, c) ? x[r, c] / (1 - p) : 0
//   keep(r, c) = dropout_keep(dropout_row_key(seed, step, pair[r / seq_len], r % seq_len, site), c, p)
//
// Rows are tokens laid out [B, seq_len] (sentence b = r / seq_len). Backward is the same map applied to dy.
// p == 0 copies (in place is allowed: y may equal x).
#include <cstdint>

#include "kernels/ops/dispatch.hpp"

namespace aiayn::kernels {

template <class T>
struct DropoutArgs {
  using scalar = T;
  const T* x = nullptr;  // [rows, cols]  (dy in backward)
  T* y = nullptr;        // [rows, cols]  (dx in backward); may equal x
  int rows = 0, cols = 0;
  int seq_len = 1;
  const int64_t* pair = nullptr;  // [rows / seq_len] corpus index of each sentence
  uint64_t seed = 0;
  uint64_t step = 0;
  uint32_t site = 0;
  float p = 0.0f;
};

namespace cpu {
template <class T> void dropout_forward(const DropoutArgs<T>& a);
template <class T> void dropout_backward(const DropoutArgs<T>& a);
}  // namespace cpu
namespace cuda {
void dropout_forward(const DropoutArgs<float>& a, Stream s);
void dropout_backward(const DropoutArgs<float>& a, Stream s);
}  // namespace cuda

template <class T> void dropout_forward(Device d, const DropoutArgs<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(dropout_forward, d, a, s); }
template <class T> void dropout_backward(Device d, const DropoutArgs<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(dropout_backward, d, a, s); }

}  // namespace aiayn::kernels
