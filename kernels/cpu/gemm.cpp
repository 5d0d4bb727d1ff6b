// gemm (BLAS, with the bias and ReLU epilogue in plain loops on each block) and the epilogue's backward helpers.
// Invariants: row-major; the epilogue is applied after alpha * op(A) @ op(B) + beta * C, as ops/gemm.hpp says.
#include "kernels/ops/gemm.hpp"

#include <algorithm>
#include <vector>

#include "blas.hpp"
#include "column_sums.hpp"
#include "parallel_grain.hpp"

namespace aiayn::kernels::cpu {

template <class T>
void gemm(const GemmArgs<T>& g) {
  if (g.m <= 0 || g.n <= 0) return;
  const T alpha = static_cast<T>(g.alpha), beta = static_cast<T>(g.beta);
  const GemmEpilogue<T> epilogue{g.bias, g.relu};
  if (g.k > 0) {
    blas_gemm<T>(g.trans_a, g.trans_b, g.m, g.n, g.k, alpha, g.a, g.lda, g.b, g.ldb, beta, g.c, g.ldc, epilogue);
    return;
  }
  // An empty product (k = 0): C = beta * C. BLAS rejects the degenerate leading dimensions this allows.
#pragma omp parallel for
  for (int r = 0; r < g.m; ++r) {
    for (int c = 0; c < g.n; ++c) g.c[size_t(r) * g.ldc + c] = beta == T(0) ? T(0) : beta * g.c[size_t(r) * g.ldc + c];
    apply_epilogue(epilogue, g.c, g.ldc, r, r + 1, 0, g.n);
  }
}

template <class T>
void relu_backward(const ReluBackward<T>& a) {
  const long n = static_cast<long>(a.n);
  const T* y = a.y;
  const T* dy = a.dy;
  T* dx = a.dx;
  // dy is loaded unconditionally so the select vectorises (a conditional load would not).
#pragma omp parallel for simd  // dx may be dy (in place)
  for (long i = 0; i < n; ++i) {
    const T g = dy[i];
    dx[i] = y[i] > T(0) ? g : T(0);
  }
}

// db[c] += sum_r dy[r, c], summed in double over fixed row chunks (column_sums.hpp): the result does not depend
// on the number of threads.
template <class T>
void bias_grad(const BiasGrad<T>& a) {
  ColumnPartials part(a.rows, a.cols, 1);
#pragma omp parallel for
  for (int ch = 0; ch < part.chunks(); ++ch) {
    double* sum = part.partial(ch, 0);
    for (int r = part.first_row(ch); r < part.end_row(ch); ++r) {
      const T* row = a.dy + size_t(r) * a.cols;
#pragma omp simd
      for (int c = 0; c < a.cols; ++c) sum[c] += row[c];
    }
  }
  part.add_to(0, a.db);
}

template <class T>
void add(const AddArgs<T>& a) {
  const long n = static_cast<long>(a.n);
  const T *x0 = a.a, *x1 = a.b;
  T* y = a.y;
#pragma omp parallel for simd if (n >= kParallelGrain)  // y may be a or b (in place)
  for (long i = 0; i < n; ++i) y[i] = x0[i] + x1[i];
}

#define AIAYN_INSTANTIATE(T)                              \
  template void gemm<T>(const GemmArgs<T>&);              \
  template void relu_backward<T>(const ReluBackward<T>&); \
  template void bias_grad<T>(const BiasGrad<T>&);         \
  template void add<T>(const AddArgs<T>&);
AIAYN_INSTANTIATE(float)
AIAYN_INSTANTIATE(double)
#undef AIAYN_INSTANTIATE

}  // namespace aiayn::kernels::cpu
