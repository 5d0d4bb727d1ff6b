#pragma once
// Token embedding scaled by sqrt(D) plus the sinusoidal positional encoding (positional.hpp).
//
//   out[n, :] = table[ids[n], :] * scale + PE(pos(n), :)     pos(n) = positions ? positions[n] : n % seq_len
//
// Backward accumulates into the shared matrix (the same matrix also receives the output projection's
// gradient): dtable[ids[n], :] += dout[n, :] * scale. Positions have no parameters.
// Shapes: ids [N], table [V, D], out [N, D]. Every id must lie in [0, V) (checked; throws).
#include <cstdint>

#include "kernels/ops/dispatch.hpp"

namespace aiayn::kernels {

template <class T>
struct EmbedForward {
  using scalar = T;
  const int32_t* ids = nullptr;        // [N]
  const T* table = nullptr;            // [V, D]
  T* out = nullptr;                    // [N, D]
  const int32_t* positions = nullptr;  // [N] or null: position = n % seq_len
  int N = 0, D = 0, V = 0;
  int seq_len = 1;
  float scale = 1.0f;  // sqrt(D) in the model
  bool add_positions = true;
};

template <class T>
struct EmbedBackward {
  using scalar = T;
  const int32_t* ids = nullptr;  // [N]
  const T* dout = nullptr;       // [N, D]
  T* dtable = nullptr;           // [V, D], accumulated (+=)
  int N = 0, D = 0, V = 0;
  float scale = 1.0f;
};

namespace cpu {
template <class T> void embed_forward(const EmbedForward<T>& a);
template <class T> void embed_backward(const EmbedBackward<T>& a);
}  // namespace cpu
namespace cuda {
void embed_forward(const EmbedForward<float>& a, Stream s);
void embed_backward(const EmbedBackward<float>& a, Stream s);
}  // namespace cuda

template <class T> void embed_forward(Device d, const EmbedForward<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(embed_forward, d, a, s); }
template <class T> void embed_backward(Device d, const EmbedBackward<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(embed_backward, d, a, s); }

}  // namespace aiayn::kernels
