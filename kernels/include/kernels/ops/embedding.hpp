#pragma once
// Token embedding scaled by sqrt(D) plus the sinusoidal positional encoding (positional.hpp), with the
// dropout on the sum fused in:
//
//   e[n, :]   = table[ids[n], :] * scale + PE(pos(n), :)     pos(n) = positions ? positions[n] : n % seq_len
//   out[n, c] = drop.p > 0 ? (keep(n, c) ? e[n, c] / (1 - p) : 0) : e[n, c]
//
// keep is the dropout op's mask (dropout.hpp) with rows = tokens [B, seq_len] (drop.seq_len must equal
// seq_len when p > 0; dropout is not allowed together with explicit positions). Backward accumulates into
// the shared matrix (the same matrix also receives the output projection's gradient):
//   dtable[ids[n], c] += mask(dout)[n, c] * scale        mask = the same dropout map applied to dout
// Positions have no parameters. Shapes: ids [N], table [V, D], out [N, D]. In bf16 precision out/dout are bf16
// and table/dtable float32 (T = bf16, P = float).
//
// Every id must lie in [0, V): that is the caller's to ensure, with check_token_ids below (on the host, where
// the ids come from, as the model and the decoder do; or on the device, which costs a synchronisation). The
// CPU backend checks again and throws; the CUDA backend does not check (a check there would synchronise the
// stream at every call), so an id outside [0, V) gives undefined results on a GPU.
#include <cstdint>

#include "kernels/ops/dispatch.hpp"
#include "kernels/ops/dropout.hpp"

namespace aiayn::kernels {

template <class T, class P = T>
struct EmbedForward {
  using scalar = T;
  const int32_t* ids = nullptr;        // [N]
  const P* table = nullptr;            // [V, D]
  T* out = nullptr;                    // [N, D]
  const int32_t* positions = nullptr;  // [N] or null: position = n % seq_len
  int N = 0, D = 0, V = 0;
  int seq_len = 1;
  float scale = 1.0f;  // sqrt(D) in the model
  bool add_positions = true;
  DropoutMask drop;    // p = 0: no dropout
};

template <class T, class P = T>
struct EmbedBackward {
  using scalar = T;
  const int32_t* ids = nullptr;  // [N]
  const T* dout = nullptr;       // [N, D]
  P* dtable = nullptr;           // [V, D], accumulated (+=)
  int N = 0, D = 0, V = 0;
  float scale = 1.0f;
  DropoutMask drop;              // the forward's mask (p = 0: none)
};

// Throws, naming `what`, the first bad index and its id, unless every ids[n] lies in [0, V). ids live on the
// device d (CUDA: the check synchronises the stream).
struct TokenIdCheck {
  const int32_t* ids = nullptr;  // [N]
  long N = 0;
  int V = 0;
  const char* what = "token";  // "source", "target input", ...: the error message's noun
};

namespace cpu {
void check_token_ids(const TokenIdCheck& a);
template <class T> void embed_forward(const EmbedForward<T>& a);
template <class T> void embed_backward(const EmbedBackward<T>& a);
}  // namespace cpu
namespace cuda {
void check_token_ids(const TokenIdCheck& a, Stream s);
void embed_forward(const EmbedForward<float>& a, Stream s);
void embed_backward(const EmbedBackward<float>& a, Stream s);
void embed_forward(const EmbedForward<bf16, float>& a, Stream s);
void embed_backward(const EmbedBackward<bf16, float>& a, Stream s);
}  // namespace cuda

inline void check_token_ids(Device d, const TokenIdCheck& a, Stream s = nullptr) {
  const OpTimer timer("check_token_ids", d);
  if (d == Device::CPU) return cpu::check_token_ids(a);
#if AIAYN_HAVE_CUDA
  cuda::check_token_ids(a, s);
#else
  (void)s;
  no_cuda_backend("check_token_ids");
#endif
}
template <class T, class P> void embed_forward(Device d, const EmbedForward<T, P>& a, Stream s = nullptr) { AIAYN_DISPATCH(embed_forward, d, a, s); }
template <class T, class P> void embed_backward(Device d, const EmbedBackward<T, P>& a, Stream s = nullptr) { AIAYN_DISPATCH(embed_backward, d, a, s); }

}  // namespace aiayn::kernels
