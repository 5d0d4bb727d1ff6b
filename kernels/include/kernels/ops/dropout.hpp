#pragma once
// Inverted dropout with masks from the stateless hash (dropout_hash.hpp).
//
//   y[r, c] = keep(r, c) ? x[r, c] / (1 - p) : 0
//   keep(r, c) = dropout_keep(dropout_row_key(seed, step, pair[r / seq_len], r % seq_len, site), c, p)
//
// Rows are tokens laid out [B, seq_len] (sentence b = r / seq_len). Backward is the same map applied to dy.
// p == 0 copies (in place is allowed: y may equal x).
#include <cstdint>

#include "kernels/dropout_hash.hpp"
#include "kernels/ops/dispatch.hpp"

namespace aiayn::kernels {

// Which elements dropout keeps, shared by the dropout op and the ops that fuse dropout in (embedding,
// residual + LayerNorm). Rows are tokens laid out [B, seq_len]; p == 0 is off (pair may then be null).
struct DropoutMask {
  float p = 0.0f;
  int seq_len = 1;
  const int64_t* pair = nullptr;  // [rows / seq_len] corpus index of each sentence
  uint64_t seed = 0;
  uint64_t step = 0;
  uint32_t site = 0;
};

// The hash key of row r (token r of the [B, seq_len] layout); channel c of the row is kept when
// dropout_keep(key, c, p).
AIAYN_HD inline uint64_t dropout_row_key(const DropoutMask& m, int r) {
  return dropout_row_key(m.seed, m.step, static_cast<uint64_t>(m.pair[r / m.seq_len]),
                         static_cast<uint32_t>(r % m.seq_len), m.site);
}

template <class T>
struct DropoutArgs : DropoutMask {
  using scalar = T;
  const T* x = nullptr;  // [rows, cols]  (dy in backward)
  T* y = nullptr;        // [rows, cols]  (dx in backward); may equal x
  int rows = 0, cols = 0;
};

namespace cpu {
template <class T> void dropout_forward(const DropoutArgs<T>& a);
template <class T> void dropout_backward(const DropoutArgs<T>& a);
}  // namespace cpu
namespace cuda {
void dropout_forward(const DropoutArgs<float>& a, Stream s);
void dropout_backward(const DropoutArgs<float>& a, Stream s);
void dropout_forward(const DropoutArgs<bf16>& a, Stream s);
void dropout_backward(const DropoutArgs<bf16>& a, Stream s);
}  // namespace cuda

template <class T> void dropout_forward(Device d, const DropoutArgs<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(dropout_forward, d, a, s); }
template <class T> void dropout_backward(Device d, const DropoutArgs<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(dropout_backward, d, a, s); }

}  // namespace aiayn::kernels
