#pragma once
// Stateless counter-based randomness for dropout, identical on host and device.
//
// A mask element is a pure function of (seed, step, the pair's index in the corpus, position in the
// sentence, dropout site, channel). Masks therefore do not depend on how a global batch is split across
// ranks or accumulation steps, CPU and CUDA draw identical masks, and resume needs no generator state.
// The row-invariant part is hashed once per row (dropout_row_key), then one mix per channel.
#include <cstdint>

#include "kernels/device.hpp"

namespace aiayn::kernels {

// splitmix64's finaliser: a bijective avalanche mix of 64 bits.
AIAYN_HD inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

AIAYN_HD inline uint64_t dropout_row_key(uint64_t seed, uint64_t step, uint64_t pair, uint32_t position,
                                         uint32_t site) {
  uint64_t h = mix64(seed);
  h = mix64(h ^ step);
  h = mix64(h ^ pair);
  h = mix64(h ^ ((static_cast<uint64_t>(position) << 32) | site));
  return h;
}

// Uniform in [0, 1) with 24 bits, exactly representable in float on both backends.
AIAYN_HD inline float dropout_uniform(uint64_t row_key, uint32_t channel) {
  return static_cast<float>(mix64(row_key ^ (0xD6E8FEB86659FD93ull * (channel + 1ull))) >> 40) *
         (1.0f / 16777216.0f);
}

// Keep the element with probability 1 - p.
AIAYN_HD inline bool dropout_keep(uint64_t row_key, uint32_t channel, float p) {
  return dropout_uniform(row_key, channel) >= p;
}

// Dropout sites: each place in the model that applies dropout has its own id, so masks never repeat
// across places. The trainer builds ids with dropout_site(); kernels treat them as opaque numbers.
enum class DropoutKind : uint32_t { Embedding = 0, SelfAttnOut, CrossAttnOut, FfnOut, SelfAttnProbs, CrossAttnProbs, Relu };
// stack: 0 encoder, 1 decoder.
AIAYN_HD inline uint32_t dropout_site(uint32_t stack, uint32_t layer, DropoutKind kind) {
  return (stack * 256u + layer) * 16u + static_cast<uint32_t>(kind);
}

}  // namespace aiayn::kernels
