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
// The epilogue, when given, runs on each thread's block of C right after its product (while the block is in
// cache): C[r, c] = act(C[r, c] + bias[c]), act = ReLU when relu.
template <class T>
struct GemmEpilogue {
  const T* bias = nullptr;  // [n] or null
  bool relu = false;
  bool active() const { return bias || relu; }
};

template <class T>
void blas_gemm(bool ta, bool tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb, T beta,
               T* c, int ldc, GemmEpilogue<T> epilogue = {});

// The epilogue over rows [r0, r1) and columns [c0, c1) of C (also used when k = 0 and no product runs).
template <class T>
void apply_epilogue(const GemmEpilogue<T>& e, T* c, int ldc, int r0, int r1, int c0, int c1);

// float: oneDNN's dnnl_sgemm when libdnnl.so.2 is present (AIAYN_CPU_SGEMM=openblas|onednn overrides), else
// OpenBLAS (blas.cpp says why). For tests: whether oneDNN is loaded, and switching float products between them.
bool onednn_sgemm_available();
void use_onednn_sgemm(bool on);

// "libopenblas.so.0 (core SkylakeX, OPENBLAS_CORETYPE=SKYLAKEX set by aiayn); sgemm by oneDNN (libdnnl.so.2)":
// for logs. Loads the libraries.
std::string blas_description();

}  // namespace aiayn::kernels::cpu
