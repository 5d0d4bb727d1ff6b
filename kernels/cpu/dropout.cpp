// Inverted dropout with the stateless hash mask (kernels/dropout_hash.hpp). Forward and backward are the
// same map: the mask of element (r, c) is a pure function of (seed, step, pair[r / seq_len], r % seq_len,
// site, c), so backward re-derives it instead of storing it.
#include "kernels/ops/dropout.hpp"

#include <cstring>
#include <string>

#include "dropout_row.hpp"
#include "kernels/dropout_hash.hpp"

namespace aiayn::kernels::cpu {

// The hash is 64-bit multiplies, which vectorise only with AVX-512DQ (vpmullq): x86-64-v4 gets its own
// clone, chosen at load time, so the binary stays portable. The mask is the same integer arithmetic in every clone.
template <class T>
__attribute__((target_clones("arch=x86-64-v4", "default"))) void dropout_row(uint64_t key, float p, T keep_prob,
                                                                              const T* x, T* y, int cols) {
#pragma omp simd  // y may be x (in place): element c reads only x[c] before writing y[c]
  for (int c = 0; c < cols; ++c) y[c] = dropout_keep(key, static_cast<uint32_t>(c), p) ? x[c] / keep_prob : T(0);
}
template void dropout_row<float>(uint64_t, float, float, const float*, float*, int);
template void dropout_row<double>(uint64_t, float, double, const double*, double*, int);

void check_mask(const DropoutMask& m, int rows, const char* op) {
  if (m.p == 0.0f) return;
  AIAYN_CHECK(m.p > 0.0f && m.p < 1.0f, std::string(op) + ": dropout probability must lie in [0, 1)");
  AIAYN_CHECK(m.pair != nullptr, std::string(op) + ": dropout needs the pair index of each sentence");
  AIAYN_CHECK(m.seq_len > 0 && rows % m.seq_len == 0, std::string(op) + ": rows must be a multiple of seq_len");
}

namespace {
template <class T>
void apply_dropout(const DropoutArgs<T>& a) {
  const size_t count = size_t(a.rows) * a.cols;
  if (a.p == 0.0f) {
    if (a.y != a.x && count) std::memmove(a.y, a.x, count * sizeof(T));
    return;
  }
  check_mask(a, a.rows, "dropout");
  const T keep_prob = T(1) - static_cast<T>(a.p);
#pragma omp parallel for
  for (int r = 0; r < a.rows; ++r) {
    dropout_row(dropout_row_key(a, r), a.p, keep_prob, a.x + size_t(r) * a.cols, a.y + size_t(r) * a.cols, a.cols);
  }
}
}  // namespace

template <class T> void dropout_forward(const DropoutArgs<T>& a) { apply_dropout(a); }
template <class T> void dropout_backward(const DropoutArgs<T>& a) { apply_dropout(a); }

template void dropout_forward<float>(const DropoutArgs<float>&);
template void dropout_forward<double>(const DropoutArgs<double>&);
template void dropout_backward<float>(const DropoutArgs<float>&);
template void dropout_backward<double>(const DropoutArgs<double>&);

}  // namespace aiayn::kernels::cpu
