#pragma once
// Label-smoothed softmax cross-entropy over the vocabulary, ignoring pad targets.
//
// For each row n with target y = targets[n] != pad_id (eps = smoothing, V = vocabulary):
//   logp = log_softmax(logits[n, :])
//   loss_n = (1 - eps) * (-logp[y]) + eps * mean_j(-logp[j])        (PyTorch's label_smoothing)
//   nll_n  = -logp[y]
//   dlogits[n, j] = grad_scale * (softmax[j] - (1 - eps) * [j == y] - eps / V)
// Pad rows contribute nothing and get dlogits = 0. Sums are accumulated in double and returned, with the
// number of counted tokens and of rows whose argmax (first maximum) equals the target.
// dlogits may alias logits (the gradient overwrites the logits in place); null skips the gradient. Rows may be
// padded (ld > V: the model pads its logits rows so that matrix products keep aligned leading dimensions);
// the padding is neither read nor written.
// In bf16 precision logits and dlogits are bf16 (the softmax is computed in float32 chunk by chunk; no
// float32 copy of the [N, V] probabilities exists).
#include <cstdint>

#include "kernels/ops/dispatch.hpp"

namespace aiayn::kernels {

struct CrossEntropyStats {
  double loss = 0.0;  // smoothed loss, summed over counted tokens
  double nll = 0.0;   // unsmoothed negative log-likelihood, summed
  int64_t tokens = 0;
  int64_t correct = 0;
};

template <class T>
struct CrossEntropyArgs {
  using scalar = T;
  const T* logits = nullptr;      // [N, V]
  T* dlogits = nullptr;           // [N, V] or null
  const int32_t* targets = nullptr;  // [N]
  int N = 0, V = 0;
  int ld = 0;  // row stride of logits and dlogits in elements (>= V; 0: V); columns [V, ld) are never touched
  int pad_id = 0;
  float smoothing = 0.0f;
  float grad_scale = 1.0f;
};

namespace cpu {
template <class T> CrossEntropyStats cross_entropy(const CrossEntropyArgs<T>& a);
}  // namespace cpu
namespace cuda {
CrossEntropyStats cross_entropy(const CrossEntropyArgs<float>& a, Stream s);  // synchronises the stream
CrossEntropyStats cross_entropy(const CrossEntropyArgs<bf16>& a, Stream s);   // synchronises the stream
}  // namespace cuda

template <class T> CrossEntropyStats cross_entropy(Device d, const CrossEntropyArgs<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(cross_entropy, d, a, s); }

}  // namespace aiayn::kernels
