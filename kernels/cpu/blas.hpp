#pragma once
// Row-major GEMM through the system's OpenBLAS, loaded at first use with dlopen (see blas.cpp for why the
// library is not linked at build time). Internal to kernels/cpu; the op table's gemm (ops/gemm.hpp) is the
// public entry point.
#include <string>

namespace aiayn::kernels::cpu {

// C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C[m, n]; op(X) = X^T when tX. Row-major, leading
// dimensions are row strides in elements (as in cblas with CblasRowMajor). T is float or double.
// Runs on all OpenMP threads (omp_get_max_threads) when called outside a parallel region and the product is big
// enough, else on the calling thread; OpenBLAS itself is single-threaded. Throws aiayn::Error when no BLAS
// library can be loaded.
template <class T>
void blas_gemm(bool ta, bool tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb, T beta,
               T* c, int ldc);

// "libopenblas.so.0 (core SkylakeX, OPENBLAS_CORETYPE=SKYLAKEX set by aiayn)": for logs. Loads the library.
std::string blas_description();

}  // namespace aiayn::kernels::cpu
