// sgemm/dgemm throughput of the CPU backend's BLAS (kernels/cpu/blas.cpp), for kernels/README.md.
//   build-kernels/tests/kernels/gemm_bench [size=1024] [threads=all]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <omp.h>

#include "blas.hpp"

using namespace aiayn::kernels::cpu;

template <class T>
double gflops(int n, int reps) {
  std::vector<T> a(size_t(n) * n, T(0.5)), b(size_t(n) * n, T(0.25)), c(size_t(n) * n);
  blas_gemm<T>(false, true, n, n, n, T(1), a.data(), n, b.data(), n, T(0), c.data(), n);  // warm-up
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r)
    blas_gemm<T>(false, true, n, n, n, T(1), a.data(), n, b.data(), n, T(0), c.data(), n);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return 2.0 * n * n * double(n) * reps / s / 1e9;
}

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 1024;
  if (argc > 2) omp_set_num_threads(std::atoi(argv[2]));
  std::printf("BLAS: %s\n", blas_description().c_str());
  const int reps = n >= 1024 ? 10 : 50;
  std::printf("sgemm %dx%dx%d (B transposed): %.1f GFLOP/s\n", n, n, n, gflops<float>(n, reps));
  std::printf("dgemm %dx%dx%d (B transposed): %.1f GFLOP/s\n", n, n, n, gflops<double>(n, reps));
  return 0;
}
