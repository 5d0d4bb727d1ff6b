// Label-smoothed cross-entropy (PyTorch's label_smoothing), pad targets ignored. Per row n, target y:
//   lse = log sum_j exp(x_j);  logp_j = x_j - lse
//   loss_n = (1 - eps) * (lse - x_y) + eps * mean_j(lse - x_j);  nll_n = lse - x_y
//   dlogits[n, j] = grad_scale * (softmax_j - (1 - eps) [j == y] - eps / V)
// One exp per logit (V = 8000 of them per token are this op's cost), in double like the sums, kept for the
// gradient; the exp is the vectorisable exp_nonpositive (fast_math.hpp), not libm's (a scalar call per logit
// was 5% of a training step).
// All reads of a row happen before its gradient is written, so dlogits may alias logits. Row results are
// kept per row and summed in row order: the totals do not depend on the thread count.
#include "kernels/ops/cross_entropy.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/fast_math.hpp"

namespace aiayn::kernels::cpu {
namespace {

struct RowResult {
  double loss, nll;
  bool correct;
};

// One row that is not padding; e [V] is scratch for the exponentials, which the gradient reuses (one exp per
// logit). AVX-512 (x86-64-v4) clone beside the portable one; the sums' lane order depends on the vector width,
// so the last bits may differ between machines, never between thread counts.
template <class T>
__attribute__((target_clones("arch=x86-64-v4", "default"))) RowResult
row(const T* x, T* dx, int V, int y, double eps, T grad_scale, double* e) {
  T max = x[0];
#pragma omp simd reduction(max : max)
  for (int j = 0; j < V; ++j) max = x[j] > max ? x[j] : max;
  int argmax = 0;  // the first maximum
  while (argmax < V - 1 && x[argmax] != max) ++argmax;  // (a NaN max stops at the end)
  double sum_x = 0.0, sum_exp = 0.0;
#pragma omp simd reduction(+ : sum_x)
  for (int j = 0; j < V; ++j) {
    sum_x += x[j];
    e[j] = exp_nonpositive(double(x[j]) - double(max));
  }
#pragma omp simd reduction(+ : sum_exp)
  for (int j = 0; j < V; ++j) sum_exp += e[j];
  const double lse = double(max) + std::log(sum_exp);
  const double nll = lse - double(x[y]);
  RowResult r{(1.0 - eps) * nll + eps * (lse - sum_x / V), nll, argmax == y};
  if (dx) {  // the last reads of x are above: dx may be x.  softmax_j = e_j / sum
    const double inv_sum = 1.0 / sum_exp;
    const T off_target = static_cast<T>(eps / V);
#pragma omp simd
    for (int j = 0; j < V; ++j) dx[j] = grad_scale * (static_cast<T>(e[j] * inv_sum) - off_target);
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
  AIAYN_CHECK(a.ld == 0 || a.ld >= a.V, "cross_entropy: row stride " + std::to_string(a.ld) + " < V = " + std::to_string(a.V));
  const size_t ld = a.ld > 0 ? size_t(a.ld) : size_t(a.V);
  const double eps = a.smoothing;
  std::vector<double> row_loss(a.N, 0.0), row_nll(a.N, 0.0);
  std::vector<char> row_counted(a.N, 0), row_correct(a.N, 0);
#pragma omp parallel
  {
  std::vector<double> e(a.V);  // [V] per thread
#pragma omp for
  for (int n = 0; n < a.N; ++n) {
    const T* x = a.logits + size_t(n) * ld;                        // [V] of a row of ld
    T* dx = a.dlogits ? a.dlogits + size_t(n) * ld : nullptr;      // [V]; may be x
    const int y = a.targets[n];
    if (y == a.pad_id) {
      if (dx)
        for (int j = 0; j < a.V; ++j) dx[j] = T(0);
      continue;
    }
    const RowResult r = row(x, dx, a.V, y, eps, static_cast<T>(a.grad_scale), e.data());
    row_loss[n] = r.loss;
    row_nll[n] = r.nll;
    row_counted[n] = 1;
    row_correct[n] = r.correct;
  }
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
