// Label-smoothed cross-entropy (PyTorch's label_smoothing), pad targets ignored. Per row n, target y:
//   lse = log sum_j exp(x_j);  logp_j = x_j - lse
//   loss_n = (1 - eps) * (lse - x_y) + eps * mean_j(lse - x_j);  nll_n = lse - x_y
//   dlogits[n, j] = grad_scale * (softmax_j - (1 - eps) [j == y] - eps / V)
// One exp per logit (V = 8000 of them per token are this op's cost), in double like the sums; the exp is the
// vectorisable exp_nonpositive below, not libm's (a scalar call per logit was 5% of a training step).
// All reads of a row happen before its gradient is written, so dlogits may alias logits. Row results are
// kept per row and summed in row order: the totals do not depend on the thread count.
#include "kernels/ops/cross_entropy.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace aiayn::kernels::cpu {
namespace {

// exp(x) for x <= 0 to within a few ulp, in a form the compiler vectorises: x = n ln2 + r with |r| <= ln2 / 2,
// exp(r) by its Taylor series to r^13 (truncation < 1e-17 relative), times 2^n built from exponent bits. n is
// rounded by adding 1.5 * 2^52, which leaves it in the low bits of the sum (no float-to-int conversion, which
// SSE cannot vectorise). x below -708 gives exp(-708) ~ 3e-308 instead of a denormal or 0: against the row
// maximum's exp(0) = 1 it is nothing either way.
inline double exp_nonpositive(double x) {
  constexpr double kLog2e = 1.4426950408889634, kLn2Hi = 0.6931471803691238, kLn2Lo = 1.9082149292705877e-10;
  constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52
  x = x < -708.0 ? -708.0 : x;
  const double shifted = x * kLog2e + kRound;
  const double n = shifted - kRound;  // round(x / ln2), in [-1022, 0]
  const double r = (x - n * kLn2Hi) - n * kLn2Lo;
  double p = 1.0 / 6227020800;  // 1/13!, then Horner down to 1/0!
  p = p * r + 1.0 / 479001600;
  p = p * r + 1.0 / 39916800;
  p = p * r + 1.0 / 3628800;
  p = p * r + 1.0 / 362880;
  p = p * r + 1.0 / 40320;
  p = p * r + 1.0 / 5040;
  p = p * r + 1.0 / 720;
  p = p * r + 1.0 / 120;
  p = p * r + 1.0 / 24;
  p = p * r + 1.0 / 6;
  p = p * r + 1.0 / 2;
  p = p * r + 1.0;
  p = p * r + 1.0;
  uint64_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  bits = (bits + 1023) << 52;  // the low 12 bits hold n + 1023 in [1, 1023]: the exponent field of 2^n
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

struct RowResult {
  double loss, nll;
  bool correct;
};

// One row that is not padding. AVX-512 (x86-64-v4) clone beside the portable one; the sums' lane order
// depends on the vector width, so the last bits may differ between machines, never between thread counts.
template <class T>
__attribute__((target_clones("arch=x86-64-v4", "default"))) RowResult
row(const T* x, T* dx, int V, int y, double eps, T grad_scale) {
  T max = x[0];
#pragma omp simd reduction(max : max)
  for (int j = 0; j < V; ++j) max = x[j] > max ? x[j] : max;
  int argmax = 0;  // the first maximum
  while (argmax < V - 1 && x[argmax] != max) ++argmax;  // (a NaN max stops at the end)
  double sum_x = 0.0, sum_exp = 0.0;
#pragma omp simd reduction(+ : sum_x, sum_exp)
  for (int j = 0; j < V; ++j) {
    sum_x += x[j];
    sum_exp += exp_nonpositive(double(x[j]) - double(max));
  }
  const double lse = double(max) + std::log(sum_exp);
  const double nll = lse - double(x[y]);
  RowResult r{(1.0 - eps) * nll + eps * (lse - sum_x / V), nll, argmax == y};
  if (dx) {  // the last reads of x are above: dx may be x
    const double shift = -lse;
    const T off_target = static_cast<T>(eps / V);
    // In blocks through a local buffer: written as one loop that reads x and stores dx, GCC 12 does not
    // vectorise the clamp in exp_nonpositive ("control flow in loop"); as two loops it does.
    for (int j0 = 0; j0 < V; j0 += 64) {
      double e[64];
      const int n = V - j0 < 64 ? V - j0 : 64;
#pragma omp simd
      for (int j = 0; j < n; ++j) e[j] = exp_nonpositive(double(x[j0 + j]) + shift);
#pragma omp simd
      for (int j = 0; j < n; ++j) dx[j0 + j] = grad_scale * (static_cast<T>(e[j]) - off_target);
    }
    dx[y] -= static_cast<T>(grad_scale * (1.0 - eps));
  }
  return r;
}

}  // namespace

template <class T>
CrossEntropyStats cross_entropy(const CrossEntropyArgs<T>& a) {
  for (int n = 0; n < a.N; ++n) {
    const int y = a.targets[n];
    AIAYN_CHECK(y == a.pad_id || (y >= 0 && y < a.V),
                "cross_entropy: target " + std::to_string(y) + " at row " + std::to_string(n) +
                    " is outside the vocabulary [0, " + std::to_string(a.V) + ")");
  }
  const double eps = a.smoothing;
  std::vector<double> row_loss(a.N, 0.0), row_nll(a.N, 0.0);
  std::vector<char> row_counted(a.N, 0), row_correct(a.N, 0);
#pragma omp parallel for
  for (int n = 0; n < a.N; ++n) {
    const T* x = a.logits + size_t(n) * a.V;                        // [V]
    T* dx = a.dlogits ? a.dlogits + size_t(n) * a.V : nullptr;      // [V]; may be x
    const int y = a.targets[n];
    if (y == a.pad_id) {
      if (dx)
        for (int j = 0; j < a.V; ++j) dx[j] = T(0);
      continue;
    }
    const RowResult r = row(x, dx, a.V, y, eps, static_cast<T>(a.grad_scale));
    row_loss[n] = r.loss;
    row_nll[n] = r.nll;
    row_counted[n] = 1;
    row_correct[n] = r.correct;
  }
  CrossEntropyStats stats;
  for (int n = 0; n < a.N; ++n) {
    stats.loss += row_loss[n];
    stats.nll += row_nll[n];
    stats.tokens += row_counted[n];
    stats.correct += row_correct[n];
  }
  return stats;
}

template CrossEntropyStats cross_entropy<float>(const CrossEntropyArgs<float>&);
template CrossEntropyStats cross_entropy<double>(const CrossEntropyArgs<double>&);

}  // namespace aiayn::kernels::cpu
