// sgemm/dgemm throughput of the CPU backend's BLAS (kernels/cpu/blas.cpp), for kernels/README.md.
//   build-kernels/tests/kernels/gemm_bench [size=1024] [threads=all]   square products, B transposed
//   build-kernels/tests/kernels/gemm_bench model [threads=all]          the small preset's training products
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <omp.h>

#include "blas.hpp"

using namespace aiayn::kernels::cpu;

// Best of `reps` timed runs, GFLOP/s: C[m, n] = op(A) @ op(B), as the model calls it.
template <class T>
double gflops(bool ta, bool tb, int m, int n, int k, int reps) {
  std::vector<T> a(size_t(m) * k, T(0.5)), b(size_t(k) * n, T(0.25)), c(size_t(m) * n);
  const int lda = ta ? m : k, ldb = tb ? k : n;
  double best = 1e30;
  for (int r = 0; r < reps + 1; ++r) {  // the first is a warm-up
    const auto t0 = std::chrono::steady_clock::now();
    blas_gemm<T>(ta, tb, m, n, k, T(1), a.data(), lda, b.data(), ldb, T(0), c.data(), n);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0 && s < best) best = s;
  }
  return 2.0 * m * n * double(k) / best / 1e9;
}

// The small preset (D 256, F 1024, V 8000) on the bench batch (64 sentences x 24 tokens = 1536 rows): each
// linear layer's forward (x @ W^T), input gradient (dy @ W) and weight gradient (dy^T @ x), and the logits.
struct Shape { const char* what; bool ta, tb; int m, n, k; int per_step; };
const Shape kModel[] = {
    {"qkv fwd   x@W^T", false, true, 1536, 768, 256, 6},     {"qkv dx    dy@W", false, false, 1536, 256, 768, 6},
    {"qkv dW    dy^T@x", true, false, 768, 256, 1536, 6},     {"DxD fwd", false, true, 1536, 256, 256, 15},
    {"DxD dx", false, false, 1536, 256, 256, 15},            {"DxD dW", true, false, 256, 256, 1536, 15},
    {"fc1 fwd", false, true, 1536, 1024, 256, 6},            {"fc1 dx", false, false, 1536, 256, 1024, 6},
    {"fc1 dW", true, false, 1024, 256, 1536, 6},             {"fc2 fwd", false, true, 1536, 256, 1024, 6},
    {"fc2 dx", false, false, 1536, 1024, 256, 6},            {"fc2 dW", true, false, 256, 1024, 1536, 6},
    {"logits fwd", false, true, 1536, 8000, 256, 1},         {"logits dx", false, false, 1536, 256, 8000, 1},
    {"logits dE", true, false, 8000, 256, 1536, 1},
};

int main(int argc, char** argv) {
  const bool model = argc > 1 && std::strcmp(argv[1], "model") == 0;
  if (argc > 2) omp_set_num_threads(std::atoi(argv[2]));
  std::printf("BLAS: %s, %d OpenMP threads\n", blas_description().c_str(), omp_get_max_threads());
  if (model) {
    double flop = 0, seconds = 0;
    for (const Shape& s : kModel) {
      const double g = gflops<float>(s.ta, s.tb, s.m, s.n, s.k, 5);
      const double f = 2.0 * s.m * s.n * double(s.k) * s.per_step;
      flop += f, seconds += f / (g * 1e9);
      std::printf("%-18s %5d x %5d x %5d  x%2d/step  %6.1f GFLOP/s\n", s.what, s.m, s.n, s.k, s.per_step, g);
    }
    std::printf("all products of one step: %.1f GFLOP in %.0f ms = %.1f GFLOP/s\n", flop / 1e9, seconds * 1e3,
                flop / seconds / 1e9);
    return 0;
  }
  const int n = argc > 1 ? std::atoi(argv[1]) : 1024;
  const int reps = n >= 1024 ? 5 : 20;
  std::printf("sgemm %dx%dx%d (B transposed): %.1f GFLOP/s\n", n, n, n, gflops<float>(false, true, n, n, n, reps));
  std::printf("dgemm %dx%dx%d (B transposed): %.1f GFLOP/s\n", n, n, n, gflops<double>(false, true, n, n, n, reps));
  return 0;
}
