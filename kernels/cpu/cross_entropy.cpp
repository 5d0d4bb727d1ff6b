// Label-smoothed cross-entropy (PyTorch's label_smoothing), pad targets ignored. Per row n, target y:
//   lse = log sum_j exp(x_j);  logp_j = x_j - lse
//   loss_n = (1 - eps) * (lse - x_y) + eps * mean_j(lse - x_j);  nll_n = lse - x_y
//   dlogits[n, j] = grad_scale * (softmax_j - (1 - eps) [j == y] - eps / V)
// One exp per logit (V = 8000 of them per token are this op's cost), in double like the sums.
// All reads of a row happen before its gradient is written, so dlogits may alias logits. Row results are
// kept per row and summed in row order: the totals do not depend on the thread count.
#include "kernels/ops/cross_entropy.hpp"

#include <cmath>
#include <string>
#include <vector>

namespace aiayn::kernels::cpu {

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
    // Pass 1: max (first maximum), sum of x. Pass 2: e_j = exp(x_j - max) in double, summed, kept in dx (as T)
    // when the gradient is wanted (x is read for the last time here, so dx may alias it). Pass 3: the gradient.
    T max = x[0];
    int argmax = 0;
    double sum_x = 0.0;
    for (int j = 0; j < a.V; ++j) {
      if (x[j] > max) max = x[j], argmax = j;
      sum_x += x[j];
    }
    const double x_y = x[y];
    double sum_exp = 0.0;
    for (int j = 0; j < a.V; ++j) {
      const double e = std::exp(double(x[j]) - double(max));
      sum_exp += e;
      if (dx) dx[j] = static_cast<T>(e);
    }
    const double lse = double(max) + std::log(sum_exp);
    const double nll = lse - x_y;
    row_nll[n] = nll;
    row_loss[n] = (1.0 - eps) * nll + eps * (lse - sum_x / a.V);
    row_counted[n] = 1;
    row_correct[n] = argmax == y;
    if (dx) {
      const T inv_sum = static_cast<T>(1.0 / sum_exp), scale = a.grad_scale;
      const T off_target = static_cast<T>(eps / a.V);
      for (int j = 0; j < a.V; ++j) dx[j] = scale * (dx[j] * inv_sum - off_target);
      dx[y] -= static_cast<T>(a.grad_scale * (1.0 - eps));
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
