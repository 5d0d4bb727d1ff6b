// Layer normalisation over the last dimension, statistics accumulated in double.
//   forward:  xhat = (x - mean) * rstd;  y = xhat * gamma + beta;  saves mean, rstd [rows]
//   backward: dbeta += sum_r dy;  dgamma += sum_r dy * xhat;
//             dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))   with g = dy * gamma
// dx may alias dy, so each row's terms of the parameter gradients (which read dy) are taken before its dx is
// written; the parameter gradients are summed over fixed row chunks (column_sums.hpp), in double.
#include "kernels/ops/layer_norm.hpp"

#include <algorithm>
#include <cmath>

#include "column_sums.hpp"
#include "dropout_row.hpp"
#include "parallel_grain.hpp"

namespace aiayn::kernels::cpu {

namespace {
// The row loops below get an AVX-512 (x86-64-v4) clone beside the portable one, chosen at load time; the sums'
// lane order follows the vector width, so the last bits may differ between machines, never between thread counts.
#define AIAYN_CLONES __attribute__((target_clones("arch=x86-64-v4", "default")))

template <class T>
AIAYN_CLONES void forward_row(const LayerNormForward<T>& a, int r) {
  const T* x = a.x + size_t(r) * a.cols;  // [cols]
  T* y = a.y + size_t(r) * a.cols;        // [cols]
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int c = 0; c < a.cols; ++c) sum += x[c];
  const double mean = sum / a.cols;
  double sq = 0.0;
#pragma omp simd reduction(+ : sq)
  for (int c = 0; c < a.cols; ++c) sq += (x[c] - mean) * (x[c] - mean);
  const double rstd = 1.0 / std::sqrt(sq / a.cols + double(a.eps));
  for (int c = 0; c < a.cols; ++c) y[c] = static_cast<T>((x[c] - mean) * rstd * a.gamma[c] + a.beta[c]);
  if (a.mean) a.mean[r] = static_cast<T>(mean);
  if (a.rstd) a.rstd[r] = static_cast<T>(rstd);
}

// dx of row r; when pg is not null also adds the row's terms of dgamma and dbeta to the chunk partials
// pg, pb [cols] (before dx is written: dx may be dy).
template <class T>
AIAYN_CLONES void backward_row(const LayerNormBackward<T>& a, int r, double* pg, double* pb) {
  const T* x = a.x + size_t(r) * a.cols;
  const T* dy = a.dy + size_t(r) * a.cols;
  T* dx = a.dx + size_t(r) * a.cols;
  const double mean = a.mean[r], rstd = a.rstd[r];
  if (pg) {
#pragma omp simd
    for (int c = 0; c < a.cols; ++c) {
      pg[c] += double(dy[c]) * (x[c] - mean) * rstd;
      pb[c] += dy[c];
    }
  }
  double g_sum = 0.0, g_xhat_sum = 0.0;
#pragma omp simd reduction(+ : g_sum, g_xhat_sum)
  for (int c = 0; c < a.cols; ++c) {
    const double g = double(dy[c]) * a.gamma[c];
    g_sum += g;
    g_xhat_sum += g * (x[c] - mean) * rstd;
  }
  const double g_mean = g_sum / a.cols, g_xhat_mean = g_xhat_sum / a.cols;
#pragma omp simd  // dx may be dy: element c reads dy[c] before writing dx[c]
  for (int c = 0; c < a.cols; ++c) {
    const double xhat = (x[c] - mean) * rstd;
    const double g = double(dy[c]) * a.gamma[c];
    dx[c] = static_cast<T>(rstd * (g - g_mean - xhat * g_xhat_mean));
  }
}
#undef AIAYN_CLONES

// Row by row in fixed chunks (column_sums.hpp); `after_row(r)` runs right after row r's dx is written.
template <class T, class AfterRow>
void backward_rows(const LayerNormBackward<T>& a, AfterRow after_row) {
  const bool params = a.dgamma || a.dbeta;
  ColumnPartials part(params ? a.rows : 0, a.cols, 2);
  const int chunks = (a.rows + ColumnPartials::kRowChunk - 1) / ColumnPartials::kRowChunk;
#pragma omp parallel for
  for (int ch = 0; ch < chunks; ++ch) {
    const int r0 = ch * ColumnPartials::kRowChunk, r1 = std::min(a.rows, r0 + ColumnPartials::kRowChunk);
    double* pg = params ? part.partial(ch, 0) : nullptr;
    double* pb = params ? part.partial(ch, 1) : nullptr;
    for (int r = r0; r < r1; ++r) {
      backward_row(a, r, pg, pb);
      after_row(r);
    }
  }
  if (params) {
    part.add_to(0, a.dgamma);
    part.add_to(1, a.dbeta);
  }
}
}  // namespace

template <class T>
void layer_norm_forward(const LayerNormForward<T>& a) {
#pragma omp parallel for if (long(a.rows) * a.cols >= kParallelGrain)
  for (int r = 0; r < a.rows; ++r) forward_row(a, r);
}

template <class T>
void layer_norm_backward(const LayerNormBackward<T>& a) {
  backward_rows(a, [](int) {});
}

// Post-norm residual output: s = x + dropout(f), row by row with the dropout op's own row map, then the
// LayerNorm row; the same operations in the same order as dropout_forward, add, layer_norm_forward.
template <class T>
void residual_norm_forward(const ResidualNormForward<T>& a) {
  check_mask(a.drop, a.rows, "residual_norm_forward");
  const LayerNormForward<T> ln{a.s, a.gamma, a.beta, a.y, a.mean, a.rstd, a.rows, a.cols, a.eps};
  const T keep_prob = T(1) - static_cast<T>(a.drop.p);
#pragma omp parallel for if (long(a.rows) * a.cols >= kParallelGrain)
  for (int r = 0; r < a.rows; ++r) {
    const size_t at = size_t(r) * a.cols;
    T* s = a.s + at;  // [cols]
    if (a.drop.p > 0.0f) {
      dropout_row(dropout_row_key(a.drop, r), a.drop.p, keep_prob, a.f + at, s, a.cols);
      for (int c = 0; c < a.cols; ++c) s[c] = a.x[at + c] + s[c];
    } else {
      for (int c = 0; c < a.cols; ++c) s[c] = a.x[at + c] + a.f[at + c];
    }
    forward_row(ln, r);
  }
}

// LayerNorm backward row by row, and each row of df right after its dx.
template <class T>
void residual_norm_backward(const ResidualNormBackward<T>& a) {
  check_mask(a.drop, a.rows, "residual_norm_backward");
  AIAYN_CHECK(a.df != a.dy && a.df != a.dx, "residual_norm_backward: df may not alias dy or dx");
  const LayerNormBackward<T> ln{a.dy, a.s, a.gamma, a.mean, a.rstd, a.dx, a.dgamma, a.dbeta, a.rows, a.cols};
  const T keep_prob = T(1) - static_cast<T>(a.drop.p);
  backward_rows(ln, [&](int r) {
    const size_t at = size_t(r) * a.cols;
    if (a.drop.p > 0.0f) {
      dropout_row(dropout_row_key(a.drop, r), a.drop.p, keep_prob, a.dx + at, a.df + at, a.cols);
    } else {
      for (int c = 0; c < a.cols; ++c) a.df[at + c] = a.dx[at + c];
    }
  });
}

template void residual_norm_forward<float>(const ResidualNormForward<float>&);
template void residual_norm_forward<double>(const ResidualNormForward<double>&);
template void residual_norm_backward<float>(const ResidualNormBackward<float>&);
template void residual_norm_backward<double>(const ResidualNormBackward<double>&);
template void layer_norm_forward<float>(const LayerNormForward<float>&);
template void layer_norm_forward<double>(const LayerNormForward<double>&);
template void layer_norm_backward<float>(const LayerNormBackward<float>&);
template void layer_norm_backward<double>(const LayerNormBackward<double>&);

}  // namespace aiayn::kernels::cpu
