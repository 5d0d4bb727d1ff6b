// BLAS loaded at run time.
//
// Why dlopen and not a link-time dependency: Debian's OpenBLAS (0.3.21, DYNAMIC_ARCH) does not know AMD Zen4
// and falls back to its "Prescott" kernels, about 6x slower for sgemm than its SkylakeX (AVX-512) kernels,
// which run fine on Zen4. OpenBLAS picks its kernels once, in its load-time constructor, from the environment
// variable OPENBLAS_CORETYPE. A linked library is loaded before main() runs, too early for the program to set
// that variable; a library loaded here at first use is not. So: if the user has not set OPENBLAS_CORETYPE,
// set it from what the CPU supports, then dlopen. If OpenBLAS was already loaded by someone else, the
// variable comes too late; blas_description() says so.
//
// sgemm: oneDNN's dnnl_sgemm when libdnnl.so.2 is present (Debian's libdnnl2, the library PyTorch's CPU
// backend uses), else OpenBLAS; AIAYN_CPU_SGEMM=openblas|onednn chooses. oneDNN's JIT kernels ran the model's
// GEMM shapes ~5% faster than OpenBLAS's alone and a training step ~8% faster on the 2-core bench (AVX-512;
// kernels/README.md), and they thread with OpenMP on the same libgomp team as everything else. dgemm (tests
// in double) is OpenBLAS's: oneDNN has none.
//
// Threads: OpenBLAS is kept single-threaded and blas_gemm splits C into one block per OpenMP thread. Two thread
// pools (OpenBLAS's pthreads and the OpenMP team the other ops use) on the same cores fight: the idle pool
// spins or yields on the cores the busy one needs. Measured on the 2-core bench (kernels/README.md), about
// 40% of all cycles went to libgomp spinning while OpenBLAS's threads ran.
#include "blas.hpp"

#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include <cstdlib>
#include <mutex>
#include <string>

#include "aiayn/error.hpp"

namespace aiayn::kernels::cpu {
namespace {

// cblas enums (cblas.h): CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112. blasint is int in the
// LP64 builds Debian ships.
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*,
                         int);
using DgemmFn = void (*)(int, int, int, int, int, int, double, const double*, int, const double*, int, double,
                         double*, int);
using SetThreadsFn = void (*)(int);
// dnnl_status_t dnnl_sgemm(char transa, char transb, dnnl_dim_t M, N, K, float alpha, const float* A, dnnl_dim_t lda,
//                          const float* B, dnnl_dim_t ldb, float beta, float* C, dnnl_dim_t ldc)   row-major
using DnnlSgemmFn = int (*)(char, char, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                            float, float*, int64_t);
using CorenameFn = char* (*)();

struct Blas {
  void* handle = nullptr;
  SgemmFn sgemm = nullptr;
  DgemmFn dgemm = nullptr;
  SetThreadsFn set_threads = nullptr;
  CorenameFn corename = nullptr;
  DnnlSgemmFn dnnl_sgemm = nullptr;  // null: OpenBLAS's sgemm
  std::string library;
  std::string sgemm_note;
  std::string coretype_note;
  std::string error;  // non-empty when loading failed
};

const char* const kLibraries[] = {"libopenblas.so.0", "libopenblas.so", "libblas.so.3"};

// OpenBLAS core names for this CPU's instruction set; nullptr leaves OpenBLAS's own detection alone.
const char* coretype_for_this_cpu() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return "SKYLAKEX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "HASWELL";
#endif
  return nullptr;
}

void load_onednn(Blas& blas) {
  const char* choice = std::getenv("AIAYN_CPU_SGEMM");
  const std::string want = choice ? choice : "";
  AIAYN_CHECK(want.empty() || want == "onednn" || want == "openblas",
              "AIAYN_CPU_SGEMM must be 'onednn' or 'openblas', not '" + want + "'");
  if (want == "openblas") {
    blas.sgemm_note = "sgemm by OpenBLAS (AIAYN_CPU_SGEMM=openblas)";
    return;
  }
  void* h = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
  if (h) blas.dnnl_sgemm = reinterpret_cast<DnnlSgemmFn>(dlsym(h, "dnnl_sgemm"));
  if (blas.dnnl_sgemm) {
    blas.sgemm_note = "sgemm by oneDNN (libdnnl.so.2)";
    return;
  }
  AIAYN_CHECK(want.empty(), "AIAYN_CPU_SGEMM=onednn, but libdnnl.so.2 with dnnl_sgemm could not be loaded "
                            "(Debian: apt-get install libdnnl2)");
  blas.sgemm_note = "sgemm by OpenBLAS (no libdnnl.so.2)";
}

void load(Blas& blas) {
  if (const char* user = std::getenv("OPENBLAS_CORETYPE"); user && *user) {
    blas.coretype_note = std::string("OPENBLAS_CORETYPE=") + user + " set by the user";
  } else if (const char* chosen = coretype_for_this_cpu()) {
    setenv("OPENBLAS_CORETYPE", chosen, /*overwrite=*/0);
    blas.coretype_note = std::string("OPENBLAS_CORETYPE=") + chosen + " set by aiayn";
  } else {
    blas.coretype_note = "OPENBLAS_CORETYPE unset";
  }
  std::string tried;
  for (const char* name : kLibraries) {
    if (void* already = dlopen(name, RTLD_NOW | RTLD_NOLOAD)) {
      blas.coretype_note += " (library was already loaded: the setting may have come too late)";
      blas.handle = already;
    } else {
      blas.handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    }
    if (!blas.handle) {
      const char* why = dlerror();
      tried += std::string(tried.empty() ? "" : "; ") + name + ": " + (why ? why : "not found");
      continue;
    }
    blas.sgemm = reinterpret_cast<SgemmFn>(dlsym(blas.handle, "cblas_sgemm"));
    blas.dgemm = reinterpret_cast<DgemmFn>(dlsym(blas.handle, "cblas_dgemm"));
    if (!blas.sgemm || !blas.dgemm) {
      tried += std::string(tried.empty() ? "" : "; ") + name + ": no cblas_sgemm/cblas_dgemm";
      dlclose(blas.handle);
      blas.handle = nullptr;
      continue;
    }
    blas.set_threads = reinterpret_cast<SetThreadsFn>(dlsym(blas.handle, "openblas_set_num_threads"));
    blas.corename = reinterpret_cast<CorenameFn>(dlsym(blas.handle, "openblas_get_corename"));
    blas.library = name;
    if (blas.set_threads) blas.set_threads(1);  // the parallelism is ours (see the top of this file)
    load_onednn(blas);
    return;
  }
  blas.error = "could not load a BLAS library with cblas_sgemm/cblas_dgemm (tried " + tried +
               "); install libopenblas0 (Debian: apt-get install libopenblas0-pthread)";
}

const Blas& blas() {
  static Blas instance;
  static std::once_flag once;
  std::call_once(once, [] { load(instance); });
  AIAYN_CHECK(instance.error.empty(), instance.error);
  return instance;
}

// Below this many multiply-adds a GEMM is one call on the calling thread: splitting costs more than it saves.
constexpr double kSplitMacs = 1 << 20;

// The blocks a product is cut into are a function of its shape only, never of the thread count: each element of
// C is then computed by the same single-threaded library call, with the same kernel and summation order, on 1 or
// 16 threads, so a run's results do not depend on train.threads. (oneDNN's own threading split the sum over k
// differently for 1 and 2 threads: losses of one run 7.7e-9 apart after 5 steps, then drifting.) C's rows (or
// columns, whichever dimension is longer) are cut into at most 16 blocks, multiples of 16 (one AVX-512 vector of
// floats) and at least 128 long (each block packs the other operand again: 32-row blocks cost 4% of a training
// step, 128 1.7%, against the library's own threading); blocks go to threads round robin.
int block_length(int len) {
  const int per_block = (len + 15) / 16;
  return std::max(128, (per_block + 15) / 16 * 16);
}

// C = alpha op(A) op(B) + beta C in blocks of rows (m >= n) or of columns, each block one single-threaded call
// of `fn` (a gemm taking 'N'/'T' like dnnl_sgemm, row-major) followed by its epilogue, blocks shared out over the
// OpenMP threads. A product too small to split, or one called inside a parallel region (attention's per-head
// products), is one call on this thread.
template <class T, class Fn>
void gemm_in_blocks(Fn fn, bool ta, bool tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb,
                    T beta, T* c, int ldc, const GemmEpilogue<T>& ep) {
  const bool by_rows = m >= n;
  const int len = by_rows ? m : n;
  const auto one_block = [&](int lo, int cnt) {
    if (by_rows) {  // rows lo.. of op(A) and C
      const T* a_blk = ta ? a + lo : a + size_t(lo) * lda;
      fn(ta ? 'T' : 'N', tb ? 'T' : 'N', cnt, n, k, alpha, a_blk, lda, b, ldb, beta, c + size_t(lo) * ldc, ldc);
      if (ep.active()) apply_epilogue(ep, c, ldc, lo, lo + cnt, 0, n);
    } else {  // columns lo.. of op(B) and C
      const T* b_blk = tb ? b + size_t(lo) * ldb : b + lo;
      fn(ta ? 'T' : 'N', tb ? 'T' : 'N', m, cnt, k, alpha, a, lda, b_blk, ldb, beta, c + lo, ldc);
      if (ep.active()) apply_epilogue(ep, c, ldc, 0, m, lo, lo + cnt);
    }
  };
  if (omp_in_parallel() || double(m) * n * k < kSplitMacs) {
    one_block(0, len);
    return;
  }
  const int block = block_length(len);
  const int blocks = (len + block - 1) / block;
#pragma omp parallel for schedule(static, 1)
  for (int i = 0; i < blocks; ++i) one_block(i * block, std::min(len, (i + 1) * block) - i * block);
}

// OpenBLAS's row-major cblas_sgemm or cblas_dgemm with the 'N'/'T' arguments of gemm_in_blocks.
template <class T, class CblasFn>
auto cblas(CblasFn fn) {
  return [fn](char ta, char tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb, T beta, T* c,
              int ldc) {
    fn(kRowMajor, ta == 'T' ? kTrans : kNoTrans, tb == 'T' ? kTrans : kNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c,
       ldc);
  };
}

}  // namespace

template <class T>
void apply_epilogue(const GemmEpilogue<T>& e, T* c, int ldc, int r0, int r1, int c0, int c1) {
  for (int r = r0; r < r1; ++r) {
    T* row = c + size_t(r) * ldc;
    if (e.bias)
#pragma omp simd
      for (int j = c0; j < c1; ++j) row[j] += e.bias[j];
    if (e.relu)
#pragma omp simd
      for (int j = c0; j < c1; ++j) row[j] = row[j] > T(0) ? row[j] : T(0);
  }
}
template void apply_epilogue<float>(const GemmEpilogue<float>&, float*, int, int, int, int, int);
template void apply_epilogue<double>(const GemmEpilogue<double>&, double*, int, int, int, int, int);

std::atomic<bool> g_use_onednn{true};  // tests switch between the two sgemm libraries

template <>
void blas_gemm<float>(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
                      int ldb, float beta, float* c, int ldc, GemmEpilogue<float> ep) {
  const Blas& lib = blas();
  // Inside a parallel region (attention's per-head products) the call stays on its thread with OpenBLAS, which
  // does small single-threaded products best.
  if (lib.dnnl_sgemm && g_use_onednn.load(std::memory_order_relaxed) && !omp_in_parallel()) {
    // oneDNN threads by OpenMP: one thread per call, so that each block is computed the same way whatever the
    // thread count (omp_set_num_threads sets this thread's own setting, restored after the call).
    const auto dnnl = [&](char ta_, char tb_, int m_, int n_, int k_, float al, const float* a_, int lda_,
                          const float* b_, int ldb_, float be, float* c_, int ldc_) {
      const int saved = omp_get_max_threads();
      omp_set_num_threads(1);
      const int status = lib.dnnl_sgemm(ta_, tb_, m_, n_, k_, al, a_, lda_, b_, ldb_, be, c_, ldc_);
      omp_set_num_threads(saved);
      AIAYN_CHECK(status == 0, "dnnl_sgemm failed with status " + std::to_string(status) + " (m " + std::to_string(m_) +
                                   ", n " + std::to_string(n_) + ", k " + std::to_string(k_) + ")");
    };
    gemm_in_blocks<float>(dnnl, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, ep);
    return;
  }
  gemm_in_blocks<float>(cblas<float>(lib.sgemm), ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, ep);
}

bool onednn_sgemm_available() { return blas().dnnl_sgemm != nullptr; }
void use_onednn_sgemm(bool on) { g_use_onednn.store(on, std::memory_order_relaxed); }

template <>
void blas_gemm<double>(bool ta, bool tb, int m, int n, int k, double alpha, const double* a, int lda,
                       const double* b, int ldb, double beta, double* c, int ldc, GemmEpilogue<double> ep) {
  gemm_in_blocks<double>(cblas<double>(blas().dgemm), ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, ep);
}

std::string blas_description() {
  const Blas& b = blas();
  std::string core = b.corename ? std::string(", core ") + b.corename() : std::string();
  return b.library + " (" + b.coretype_note + core + "); " + b.sgemm_note;
}

}  // namespace aiayn::kernels::cpu
