#pragma once
// bfloat16 storage for the CUDA backend's mixed precision: the upper 16 bits of an IEEE float32 (8 exponent
// bits, 7 mantissa bits), rounded to nearest even. A plain struct, so every header compiles without CUDA;
// the CUDA kernels reinterpret it as __nv_bfloat16, which has the same size and bit layout.
//
// In precision bf16 (DESIGN.md): the copy of the weights the matrix products read and the activations
// between ops are bf16; master weights, gradients, Adam's m and v, LayerNorm statistics, the attention
// log-sum-exp, softmax internals and every accumulation stay float32.
#include <cstdint>
#include <cstring>

#include "kernels/device.hpp"

namespace aiayn::kernels {

struct bf16 {
  uint16_t bits = 0;
};
static_assert(sizeof(bf16) == 2, "bf16 must be 16 bits");

AIAYN_HD inline uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

AIAYN_HD inline float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

AIAYN_HD inline float to_float(bf16 h) { return bits_float(static_cast<uint32_t>(h.bits) << 16); }

// Round to nearest, ties to even; NaN stays a (quiet) NaN, infinities stay infinite, overflow rounds to inf.
AIAYN_HD inline bf16 to_bf16(float f) {
  const uint32_t u = float_bits(f);
  bf16 h;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    h.bits = static_cast<uint16_t>((u >> 16) | 0x0040u);
    return h;
  }
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  h.bits = static_cast<uint16_t>((u + rounding) >> 16);
  return h;
}

}  // namespace aiayn::kernels
