#pragma once
// Internal to the CPU backend: the dropout row map, shared by the dropout op and the ops that fuse it
// (embedding, residual + LayerNorm), so every one of them applies exactly the same arithmetic.
#include <cstdint>

#include "kernels/ops/dropout.hpp"

namespace aiayn::kernels::cpu {

// y[c] = dropout_keep(key, c, p) ? x[c] / keep_prob : 0 for c < cols (keep_prob = 1 - p in T); y may equal x.
template <class T>
void dropout_row(uint64_t key, float p, T keep_prob, const T* x, T* y, int cols);

// Throws unless the mask is usable for `rows` token rows (p in [0, 1), pair present, rows a multiple of seq_len).
void check_mask(const DropoutMask& m, int rows, const char* op);

}  // namespace aiayn::kernels::cpu
