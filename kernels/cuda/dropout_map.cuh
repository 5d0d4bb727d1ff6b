#pragma once
// The dropout map on the device, shared by the dropout op and the ops that fuse it in (embedding, residual +
// LayerNorm), so that every one of them applies the arithmetic of kernels/cpu/dropout.cpp:
//   kept:    x / keep_prob     keep_prob = 1.0f - p, one IEEE float division (not a multiply by 1 / keep_prob)
//   dropped: 0
// with keep from dropout_keep(dropout_row_key(mask, r), c, p): masks and kept values are bit-identical to the
// CPU's for the same float x.
#include <cstdint>
#include <string>

#include "common.cuh"
#include "kernels/dropout_hash.hpp"
#include "kernels/ops/dropout.hpp"

namespace aiayn::kernels::cuda_detail {

__device__ __forceinline__ float dropout_value(uint64_t row_key, int c, float p, float keep_prob, float x) {
  return dropout_keep(row_key, static_cast<uint32_t>(c), p) ? x / keep_prob : 0.0f;
}

// Throws unless the mask is usable for `rows` token rows (the checks of the CPU backend's check_mask).
inline void check_dropout_mask(const DropoutMask& m, int rows, const char* op) {
  if (m.p == 0.0f) return;
  AIAYN_CHECK(m.p > 0.0f && m.p < 1.0f, std::string(op) + ": dropout probability must lie in [0, 1)");
  AIAYN_CHECK(m.pair != nullptr, std::string(op) + ": dropout needs the pair index of each sentence");
  AIAYN_CHECK(m.seq_len > 0 && rows % m.seq_len == 0, std::string(op) + ": rows must be a multiple of seq_len");
}

}  // namespace aiayn::kernels::cuda_detail
