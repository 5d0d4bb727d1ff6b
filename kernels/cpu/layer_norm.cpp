// Layer normalisation over the last dimension, statistics accumulated in double.
//   forward:  xhat = (x - mean) * rstd;  y = xhat * gamma + beta;  saves mean, rstd [rows]
//   backward: dbeta += sum_r dy;  dgamma += sum_r dy * xhat;
//             dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))   with g = dy * gamma
// dx may alias dy, so the parameter gradients (which read dy) are computed before dx is written.
#include "kernels/ops/layer_norm.hpp"

#include <algorithm>
#include <cmath>

namespace aiayn::kernels::cpu {

template <class T>
void layer_norm_forward(const LayerNormForward<T>& a) {
#pragma omp parallel for
  for (int r = 0; r < a.rows; ++r) {
    const T* x = a.x + size_t(r) * a.cols;  // [cols]
    T* y = a.y + size_t(r) * a.cols;        // [cols]
    double sum = 0.0;
    for (int c = 0; c < a.cols; ++c) sum += x[c];
    const double mean = sum / a.cols;
    double sq = 0.0;
    for (int c = 0; c < a.cols; ++c) sq += (x[c] - mean) * (x[c] - mean);
    const double rstd = 1.0 / std::sqrt(sq / a.cols + double(a.eps));
    for (int c = 0; c < a.cols; ++c) y[c] = static_cast<T>((x[c] - mean) * rstd * a.gamma[c] + a.beta[c]);
    if (a.mean) a.mean[r] = static_cast<T>(mean);
    if (a.rstd) a.rstd[r] = static_cast<T>(rstd);
  }
}

template <class T>
void layer_norm_backward(const LayerNormBackward<T>& a) {
  // dgamma, dbeta: blocks of columns, rows in order.
  constexpr int kBlock = 64;
  const int blocks = (a.cols + kBlock - 1) / kBlock;
#pragma omp parallel for
  for (int blk = 0; blk < blocks; ++blk) {
    const int c0 = blk * kBlock, c1 = std::min(a.cols, c0 + kBlock);
    double dgamma[kBlock] = {}, dbeta[kBlock] = {};
    for (int r = 0; r < a.rows; ++r) {
      const T* x = a.x + size_t(r) * a.cols;
      const T* dy = a.dy + size_t(r) * a.cols;
      const double mean = a.mean[r], rstd = a.rstd[r];
      for (int c = c0; c < c1; ++c) {
        dgamma[c - c0] += double(dy[c]) * (x[c] - mean) * rstd;
        dbeta[c - c0] += dy[c];
      }
    }
    for (int c = c0; c < c1; ++c) {
      if (a.dgamma) a.dgamma[c] += static_cast<T>(dgamma[c - c0]);
      if (a.dbeta) a.dbeta[c] += static_cast<T>(dbeta[c - c0]);
    }
  }
  // dx, row by row.
#pragma omp parallel for
  for (int r = 0; r < a.rows; ++r) {
    const T* x = a.x + size_t(r) * a.cols;
    const T* dy = a.dy + size_t(r) * a.cols;
    T* dx = a.dx + size_t(r) * a.cols;
    const double mean = a.mean[r], rstd = a.rstd[r];
    double g_sum = 0.0, g_xhat_sum = 0.0;
    for (int c = 0; c < a.cols; ++c) {
      const double g = double(dy[c]) * a.gamma[c];
      g_sum += g;
      g_xhat_sum += g * (x[c] - mean) * rstd;
    }
    const double g_mean = g_sum / a.cols, g_xhat_mean = g_xhat_sum / a.cols;
    for (int c = 0; c < a.cols; ++c) {
      const double xhat = (x[c] - mean) * rstd;
      const double g = double(dy[c]) * a.gamma[c];
      dx[c] = static_cast<T>(rstd * (g - g_mean - xhat * g_xhat_mean));
    }
  }
}

template void layer_norm_forward<float>(const LayerNormForward<float>&);
template void layer_norm_forward<double>(const LayerNormForward<double>&);
template void layer_norm_backward<float>(const LayerNormBackward<float>&);
template void layer_norm_backward<double>(const LayerNormBackward<double>&);

}  // namespace aiayn::kernels::cpu
