// Cross-backend harness (in the manner of ggml's test-backend-ops): every CUDA op against the CPU reference.
//
// Each case draws fresh random inputs at sizes that are not multiples of any block size (one sentence,
// length 1, fully padded rows, odd widths), poisons every output with NaN on both backends before running,
// checks non-finite parity first and then the normalised maximum error
//     max_i |cuda_i - cpu_i| / max_i |cpu_i|          (1 when the reference is all zero)
// against a per-op limit whose reason is stated beside it. Accumulated outputs (+=) start from the same
// random values on both sides. No fraction of elements is ever allowed to fail.
//
// bf16 (mixed precision) ops are held to "no worse than twice a naive bf16 computation": on bf16 inputs, an
// exact answer in double (the CPU reference instantiated for double, or a double reference here) and a naive
// bf16 one (float arithmetic with the output, and intermediates a naive bf16 pipeline would store, rounded to
// bf16); the test requires err(cuda) <= 2 err(naive) + floor, errors normalised as above against the exact
// answer. The floor is the fp32 test's limit for the same output: what float32 arithmetic itself may add,
// two orders of magnitude below a bf16 half-ulp (2^-9), so it cannot hide a bf16-level mistake. Where the
// bf16 arithmetic is the CPU's float arithmetic plus one final rounding (dropout, casts, the embedding table
// term, add, relu_backward), the comparison is exact instead. Dropout masks are also checked element by
// element: every element the hash drops must hold exactly the dropped value.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/dropout_hash.hpp"
#include "kernels/memory.hpp"
#include "kernels/internal/attention_paths.hpp"
#include "kernels/ops.hpp"

namespace K = aiayn::kernels;
using K::Device;

#define REQUIRE_GPU()                                                          \
  do {                                                                         \
    std::string why;                                                           \
    if (K::cuda_device_count(&why) == 0) GTEST_SKIP() << "no GPU: " << why;    \
  } while (0)

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> random_floats(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::vector<float> poison(size_t n) { return std::vector<float>(n, kNaN); }

template <class T>
K::DeviceArray<T> upload(const std::vector<T>& h) {
  K::DeviceArray<T> d(Device::CUDA, h.size());
  if (!h.empty()) K::device_copy(Device::CUDA, d.data(), Device::CPU, h.data(), h.size() * sizeof(T));
  return d;
}

template <class T>
std::vector<T> download(const K::DeviceArray<T>& d) {
  std::vector<T> h(d.size());
  K::cuda_synchronize();
  if (!h.empty()) K::device_copy(Device::CPU, h.data(), Device::CUDA, d.data(), h.size() * sizeof(T));
  return h;
}

// Non-finite parity, then the normalised maximum error against `tol`.
::testing::AssertionResult close(const std::string& what, const std::vector<float>& got,
                                 const std::vector<float>& want, double tol) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << what << ": size " << got.size() << " != " << want.size();
  for (size_t i = 0; i < got.size(); ++i)
    if (std::isnan(got[i]) != std::isnan(want[i]) || std::isinf(got[i]) != std::isinf(want[i]))
      return ::testing::AssertionFailure() << what << ": non-finite mismatch at " << i << ": cuda " << got[i]
                                           << ", cpu " << want[i];
  double max_ref = 0.0, max_err = 0.0;
  size_t worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(want[i])) continue;
    max_ref = std::max(max_ref, std::fabs(double(want[i])));
    const double err = std::fabs(double(got[i]) - double(want[i]));
    if (err > max_err) {
      max_err = err;
      worst = i;
    }
  }
  const double norm = max_ref > 0.0 ? max_err / max_ref : max_err;
  if (norm > tol)
    return ::testing::AssertionFailure() << what << ": normalised error " << norm << " > " << tol << " (worst at "
                                         << worst << ": cuda " << got[worst] << ", cpu " << want[worst] << ")";
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult close_scalar(const std::string& what, double got, double want, double tol) {
  const double err = std::fabs(got - want) / std::max(1e-30, std::fabs(want));
  if (!(err <= tol)) return ::testing::AssertionFailure() << what << ": cuda " << got << ", cpu " << want;
  return ::testing::AssertionSuccess();
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// ---- bf16 -------------------------------------------------------------------------------------------------
// Host copies of bf16 tensors are std::vector<float> holding bf16 values exactly (the CPU references read them
// as float or double); upload_bf16 / download_bf16 convert at the device boundary (exact for such values; NaN
// poison stays NaN).

float round_bf16(float x) { return K::to_float(K::to_bf16(x)); }

std::vector<float> round_bf16(std::vector<float> v) {
  for (auto& x : v) x = round_bf16(x);
  return v;
}

std::vector<float> random_bf16(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  return round_bf16(random_floats(n, rng, lo, hi));
}

K::DeviceArray<K::bf16> upload_bf16(const std::vector<float>& h) {
  std::vector<K::bf16> b(h.size());
  for (size_t i = 0; i < h.size(); ++i) b[i] = K::to_bf16(h[i]);
  return upload(b);
}

std::vector<float> download_bf16(const K::DeviceArray<K::bf16>& d) {
  const std::vector<K::bf16> b = download(d);
  std::vector<float> h(b.size());
  for (size_t i = 0; i < b.size(); ++i) h[i] = K::to_float(b[i]);
  return h;
}

K::DeviceArray<K::bf16> poison_bf16(size_t n) { return upload_bf16(poison(n)); }

std::vector<double> as_doubles(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

std::vector<float> as_floats(const std::vector<double>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = static_cast<float>(v[i]);
  return f;
}

// max_i |got_i - exact_i| / max_i |exact_i| over the finite exact values (absolute when they are all zero).
double normalised_error(const std::vector<float>& got, const std::vector<double>& exact, size_t* worst = nullptr) {
  double max_ref = 0.0, max_err = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(exact[i])) continue;
    max_ref = std::max(max_ref, std::fabs(exact[i]));
    const double err = std::fabs(double(got[i]) - exact[i]);
    if (err > max_err) {
      max_err = err;
      if (worst) *worst = i;
    }
  }
  return max_ref > 0.0 ? max_err / max_ref : max_err;
}

::testing::AssertionResult same_non_finite(const std::string& what, const std::vector<float>& got,
                                           const std::vector<double>& exact) {
  if (got.size() != exact.size())
    return ::testing::AssertionFailure() << what << ": size " << got.size() << " != " << exact.size();
  for (size_t i = 0; i < got.size(); ++i)
    if (std::isnan(got[i]) != std::isnan(exact[i]) || std::isinf(got[i]) != std::isinf(exact[i]))
      return ::testing::AssertionFailure() << what << ": non-finite mismatch at " << i << ": got " << got[i]
                                           << ", exact " << exact[i];
  return ::testing::AssertionSuccess();
}

// The bf16 criterion of the file comment: non-finite parity with the exact answer, then
// err(cuda) <= 2 err(naive) + floor.
::testing::AssertionResult within_twice_naive(const std::string& what, const std::vector<float>& got,
                                              const std::vector<float>& naive, const std::vector<double>& exact,
                                              double floor) {
  if (auto r = same_non_finite(what, got, exact); !r) return r;
  if (auto r = same_non_finite(what + " (naive reference)", naive, exact); !r) return r;
  size_t worst = 0;
  const double err = normalised_error(got, exact, &worst), err_naive = normalised_error(naive, exact);
  if (!(err <= 2.0 * err_naive + floor))
    return ::testing::AssertionFailure() << what << ": normalised error " << err << " > 2 * " << err_naive
                                         << " (naive bf16) + " << floor << " (worst at " << worst << ": cuda "
                                         << got[worst] << ", exact " << exact[worst] << ", naive " << naive[worst]
                                         << ")";
  return ::testing::AssertionSuccess();
}

// Rows are tokens [B, m.seq_len] (m.pair on the host). Every element the mask drops must hold exactly
// dropped_value[i] (0 when dropped_value is empty).
::testing::AssertionResult dropped_where_cpu_drops(const std::string& what, const std::vector<float>& got, int rows,
                                                   int cols, const K::DropoutMask& m,
                                                   const std::vector<float>& dropped_value = {}) {
  if (m.p == 0.0f) return ::testing::AssertionSuccess();
  for (int r = 0; r < rows; ++r) {
    const uint64_t key = K::dropout_row_key(m, r);
    for (int c = 0; c < cols; ++c) {
      const size_t i = size_t(r) * cols + c;
      const float want = dropped_value.empty() ? 0.0f : dropped_value[i];
      if (!K::dropout_keep(key, uint32_t(c), m.p) && !(got[i] == want))
        return ::testing::AssertionFailure() << what << ": element (" << r << ", " << c << ") is dropped by the "
                                             << "CPU's mask but holds " << got[i] << " instead of " << want;
    }
  }
  return ::testing::AssertionSuccess();
}

K::DropoutMask test_mask(const int64_t* pair, int seq_len, float p, uint32_t site) {
  K::DropoutMask m;
  m.p = p, m.seq_len = seq_len, m.pair = pair, m.seed = 4321, m.step = 17, m.site = site;
  return m;
}

std::vector<int64_t> random_pairs(int B, std::mt19937& rng) {
  std::vector<int64_t> pair(B);
  for (auto& p : pair) p = int64_t(rng() % 1000000);
  return pair;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
TEST(CudaOps, Embedding) {
  REQUIRE_GPU();
  std::mt19937 rng(1);
  struct Case { int N, D, V, seq_len; bool positions; };
  for (const Case c : {Case{13, 37, 11, 5, false}, Case{1, 1, 1, 1, false}, Case{29, 515, 7, 29, true}}) {
    SCOPED_TRACE("N=" + std::to_string(c.N) + " D=" + std::to_string(c.D));
    std::vector<int32_t> ids(c.N), positions(c.N);
    for (int n = 0; n < c.N; ++n) {
      ids[n] = int32_t(rng() % c.V);  // V < N: ids repeat, so backward accumulates rows several times
      positions[n] = int32_t(rng() % 60);
    }
    const auto table = random_floats(size_t(c.V) * c.D, rng);
    const float scale = std::sqrt(float(c.D));
    auto d_ids = upload(ids);
    auto d_pos = upload(positions);
    auto d_table = upload(table);

    std::vector<float> out_cpu = poison(size_t(c.N) * c.D);
    auto d_out = upload(poison(size_t(c.N) * c.D));
    K::EmbedForward<float> f;
    f.N = c.N, f.D = c.D, f.V = c.V, f.seq_len = c.seq_len, f.scale = scale;
    f.ids = ids.data(), f.table = table.data(), f.out = out_cpu.data(), f.positions = c.positions ? positions.data() : nullptr;
    K::cpu::embed_forward(f);
    f.ids = d_ids.data(), f.table = d_table.data(), f.out = d_out.data(), f.positions = c.positions ? d_pos.data() : nullptr;
    K::cuda::embed_forward(f, nullptr);
    // The table term is bit-identical (uncontracted product); the sinusoid comes from the device's sinf/cosf/
    // expf against the host's, each within 2 ulp of |PE| <= 1.
    EXPECT_TRUE(close("embed_forward", download(d_out), out_cpu, 1e-6));

    const auto dout = random_floats(size_t(c.N) * c.D, rng);
    std::vector<float> dtable_cpu = random_floats(size_t(c.V) * c.D, rng);
    auto d_dtable = upload(dtable_cpu);
    auto d_dout = upload(dout);
    K::EmbedBackward<float> b;
    b.N = c.N, b.D = c.D, b.V = c.V, b.scale = scale;
    b.ids = ids.data(), b.dout = dout.data(), b.dtable = dtable_cpu.data();
    K::cpu::embed_backward(b);
    b.ids = d_ids.data(), b.dout = d_dout.data(), b.dtable = d_dtable.data();
    K::cuda::embed_backward(b, nullptr);
    // Exact: the stable sort replays the CPU's additions into each row in token order, products uncontracted.
    EXPECT_TRUE(close("embed_backward", download(d_dtable), dtable_cpu, 0.0));
  }
}

// The embedding ops leave the ids to the caller (the CUDA ones never synchronise): check_token_ids finds the
// first id outside [0, V) on either backend and names it with its index.
TEST(CudaOps, CheckTokenIdsNamesTheFirstBadIdOnBothBackends) {
  REQUIRE_GPU();
  const std::vector<int32_t> ids = {0, 3, 9, 1, -2};
  auto d_ids = upload(ids);
  for (const K::Device dev : {K::Device::CPU, K::Device::CUDA}) {
    const int32_t* at = dev == K::Device::CPU ? ids.data() : d_ids.data();
    try {
      K::check_token_ids(dev, K::TokenIdCheck{at, 5, 4, "source"});
      ADD_FAILURE() << "no error for id 9";
    } catch (const aiayn::Error& e) {
      EXPECT_STREQ(e.what(), "source id 9 at index 2 is outside the vocabulary [0, 4)");
    }
    EXPECT_NO_THROW(K::check_token_ids(dev, K::TokenIdCheck{at, 2, 4, "source"}));
    EXPECT_NO_THROW(K::check_token_ids(dev, K::TokenIdCheck{at, 0, 4, "source"}));
  }
}

TEST(CudaOps, Dropout) {
  REQUIRE_GPU();
  std::mt19937 rng(2);
  struct Case { int rows, cols, seq_len; float p; bool in_place; };
  for (const Case c : {Case{21, 37, 7, 0.1f, false}, Case{1, 1, 1, 0.5f, false}, Case{15, 513, 5, 0.3f, true},
                       Case{6, 10, 3, 0.0f, false}}) {
    SCOPED_TRACE("rows=" + std::to_string(c.rows) + " cols=" + std::to_string(c.cols));
    const size_t n = size_t(c.rows) * c.cols;
    const auto x = random_floats(n, rng);
    std::vector<int64_t> pair(c.rows / c.seq_len);
    for (auto& p : pair) p = int64_t(rng() % 100000);
    auto d_pair = upload(pair);
    for (const bool backward : {false, true}) {
      std::vector<float> y_cpu = c.in_place ? x : poison(n);
      auto d_x = upload(x);
      auto d_y = upload(poison(n));
      K::DropoutArgs<float> a;
      a.rows = c.rows, a.cols = c.cols, a.seq_len = c.seq_len, a.seed = 1234, a.step = 7, a.site = 33, a.p = c.p;
      a.x = c.in_place ? y_cpu.data() : x.data(), a.y = y_cpu.data(), a.pair = pair.data();
      backward ? K::cpu::dropout_backward(a) : K::cpu::dropout_forward(a);
      a.x = d_x.data(), a.y = c.in_place ? d_x.data() : d_y.data(), a.pair = d_pair.data();
      backward ? K::cuda::dropout_backward(a, nullptr) : K::cuda::dropout_forward(a, nullptr);
      // Exact: the same integer hash decides the mask, kept values come from the same float division.
      EXPECT_TRUE(close("dropout", download(c.in_place ? d_x : d_y), y_cpu, 0.0));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
TEST(CudaOps, Gemm) {
  REQUIRE_GPU();
  std::mt19937 rng(3);
  struct Case { int m, n, k, pad; float beta; bool bias, relu, misalign_bias; };
  const Case cases[] = {
      {37, 53, 67, 0, 0.0f, false, false, false}, {37, 53, 67, 3, 0.0f, true, false, false},
      {37, 53, 67, 0, 0.0f, true, true, false},   {33, 45, 19, 1, 0.5f, true, true, false},
      {17, 29, 41, 0, 0.0f, true, true, true},    {5, 7, 0, 0, 0.75f, true, false, false},
      {1, 1, 1, 0, 0.0f, false, true, false},     {3, 130, 1, 2, 1.0f, false, false, false},
  };
  for (const Case& c : cases)
    for (int trans = 0; trans < 4; ++trans) {
      const bool ta = trans & 1, tb = trans & 2;
      SCOPED_TRACE("m=" + std::to_string(c.m) + " n=" + std::to_string(c.n) + " k=" + std::to_string(c.k) +
                   " trans_a=" + std::to_string(ta) + " trans_b=" + std::to_string(tb) + " beta=" + std::to_string(c.beta));
      const int a_rows = ta ? c.k : c.m, a_cols = ta ? c.m : c.k;
      const int b_rows = tb ? c.n : c.k, b_cols = tb ? c.k : c.n;
      const int lda = std::max(1, a_cols + c.pad), ldb = std::max(1, b_cols + c.pad), ldc = c.n + c.pad;
      const auto A = random_floats(size_t(a_rows) * lda, rng);
      const auto Bm = random_floats(size_t(b_rows) * ldb, rng);
      const auto bias_store = random_floats(size_t(c.n) + 1, rng);
      const size_t bias_off = c.misalign_bias ? 1 : 0;
      std::vector<float> C_cpu = c.beta != 0.0f ? random_floats(size_t(c.m) * ldc, rng) : poison(size_t(c.m) * ldc);
      auto d_a = upload(A);
      auto d_b = upload(Bm);
      auto d_bias = upload(bias_store);
      auto d_c = upload(C_cpu);
      K::GemmArgs<float> g;
      g.trans_a = ta, g.trans_b = tb, g.m = c.m, g.n = c.n, g.k = c.k, g.lda = lda, g.ldb = ldb, g.ldc = ldc;
      g.alpha = 0.8f, g.beta = c.beta, g.relu = c.relu;
      g.a = A.data(), g.b = Bm.data(), g.c = C_cpu.data(), g.bias = c.bias ? bias_store.data() + bias_off : nullptr;
      K::cpu::gemm(g);
      g.a = d_a.data(), g.b = d_b.data(), g.c = d_c.data(), g.bias = c.bias ? d_bias.data() + bias_off : nullptr;
      K::cuda::gemm(g, nullptr);
      // fp32 with k <= 67 in a different summation order: about sqrt(k) * 2^-24 * |a||b| relative, with margin.
      // Padding columns of C (beyond n) are never written on either side, so they compare NaN to NaN.
      EXPECT_TRUE(close("gemm", download(d_c), C_cpu, 2e-5));
    }
}

// Where cuBLASLt's heuristic has no algorithm for the bias/ReLU epilogue (CUBLAS_STATUS_NOT_SUPPORTED, as it may
// answer for some types and alignments), gemm asks again without it and adds bias and ReLU in bias_act_kernel.
// Under the emulator AIAYN_EMU_LT_NO_EPILOGUE=1 makes its heuristic refuse every epilogue; on a GPU it changes
// nothing and the test checks the epilogue path. Shapes no other test uses, so the algorithm cache is cold.
TEST(CudaOps, GemmWithoutEpilogueAlgorithms) {
  REQUIRE_GPU();
  ASSERT_EQ(setenv("AIAYN_EMU_LT_NO_EPILOGUE", "1", 1), 0);
  std::mt19937 rng(11);
  for (const bool relu : {false, true})
    for (const bool bias : {false, true}) {
      if (!relu && !bias) continue;
      const int m = 23, n = 31 + 8 * relu, k = 29;
      SCOPED_TRACE("bias=" + std::to_string(bias) + " relu=" + std::to_string(relu));
      const auto A = random_floats(size_t(m) * k, rng), Bm = random_floats(size_t(k) * n, rng);
      const auto bias_v = random_floats(size_t(n), rng);
      std::vector<float> C_cpu = poison(size_t(m) * n);
      auto d_a = upload(A), d_b = upload(Bm), d_bias = upload(bias_v), d_c = upload(C_cpu);
      K::GemmArgs<float> g;
      g.m = m, g.n = n, g.k = k, g.lda = k, g.ldb = n, g.ldc = n, g.alpha = 1.0f, g.beta = 0.0f, g.relu = relu;
      g.a = A.data(), g.b = Bm.data(), g.c = C_cpu.data(), g.bias = bias ? bias_v.data() : nullptr;
      K::cpu::gemm(g);
      g.a = d_a.data(), g.b = d_b.data(), g.c = d_c.data(), g.bias = bias ? d_bias.data() : nullptr;
      for (int repeat = 0; repeat < 2; ++repeat) {  // the second call takes the cached choice
        K::cuda::gemm(g, nullptr);
        EXPECT_TRUE(close("gemm", download(d_c), C_cpu, 2e-5));
      }
    }
  unsetenv("AIAYN_EMU_LT_NO_EPILOGUE");
}

TEST(CudaOps, GemmHelpers) {
  REQUIRE_GPU();
  std::mt19937 rng(4);
  const size_t n = 1001;
  auto y = random_floats(n, rng);
  for (size_t i = 0; i < n; i += 7) y[i] = 0.0f;  // the boundary: y == 0 passes no gradient
  const auto dy = random_floats(n, rng);
  for (const bool in_place : {false, true}) {
    std::vector<float> dx_cpu = in_place ? dy : poison(n);
    auto d_y = upload(y);
    auto d_dy = upload(dy);
    auto d_dx = upload(poison(n));
    K::ReluBackward<float> r;
    r.n = n, r.y = y.data(), r.dy = in_place ? dx_cpu.data() : dy.data(), r.dx = dx_cpu.data();
    K::cpu::relu_backward(r);
    r.y = d_y.data(), r.dy = d_dy.data(), r.dx = in_place ? d_dy.data() : d_dx.data();
    K::cuda::relu_backward(r, nullptr);
    EXPECT_TRUE(close("relu_backward", download(in_place ? d_dy : d_dx), dx_cpu, 0.0));  // a selection: exact
  }
  {
    const auto a = random_floats(n, rng), b = random_floats(n, rng);
    std::vector<float> y_cpu = poison(n);
    auto d_a = upload(a), d_b = upload(b), d_y2 = upload(poison(n));
    K::AddArgs<float> s;
    s.n = n, s.a = a.data(), s.b = b.data(), s.y = y_cpu.data();
    K::cpu::add(s);
    s.a = d_a.data(), s.b = d_b.data(), s.y = d_y2.data();
    K::cuda::add(s, nullptr);
    EXPECT_TRUE(close("add", download(d_y2), y_cpu, 0.0));  // one float addition: exact
  }
  for (const int rows : {1, 300, 777}) {
    const int cols = 45;
    const auto g = random_floats(size_t(rows) * cols, rng);
    std::vector<float> db_cpu = random_floats(cols, rng);
    auto d_g = upload(g);
    auto d_db = upload(db_cpu);
    K::BiasGrad<float> bg;
    bg.rows = rows, bg.cols = cols, bg.dy = g.data(), bg.db = db_cpu.data();
    K::cpu::bias_grad(bg);
    bg.dy = d_g.data(), bg.db = d_db.data();
    K::cuda::bias_grad(bg, nullptr);
    // A sum of up to 777 values of magnitude <= 1 in a different order: about sqrt(rows) * 2^-24 relative to
    // the sum's magnitude; the sum of random signs is ~sqrt(rows), so normalise generously.
    EXPECT_TRUE(close("bias_grad rows=" + std::to_string(rows), download(d_db), db_cpu, 1e-5));
  }
}

// ---------------------------------------------------------------------------------------------------------
TEST(CudaOps, LayerNorm) {
  REQUIRE_GPU();
  std::mt19937 rng(5);
  struct Case { int rows, cols; bool alias_dx; };
  for (const Case c : {Case{37, 333, false}, Case{1, 1, false}, Case{300, 515, true}, Case{5, 31, false}}) {
    SCOPED_TRACE("rows=" + std::to_string(c.rows) + " cols=" + std::to_string(c.cols));
    const size_t n = size_t(c.rows) * c.cols;
    auto x = random_floats(n, rng, -2.0f, 3.0f);
    const auto gamma = random_floats(c.cols, rng, 0.5f, 1.5f), beta = random_floats(c.cols, rng);
    std::vector<float> y_cpu = poison(n), mean_cpu = poison(c.rows), rstd_cpu = poison(c.rows);
    auto d_x = upload(x), d_gamma = upload(gamma), d_beta = upload(beta);
    auto d_y = upload(poison(n)), d_mean = upload(poison(c.rows)), d_rstd = upload(poison(c.rows));
    K::LayerNormForward<float> f;
    f.rows = c.rows, f.cols = c.cols, f.eps = 1e-5f;
    f.x = x.data(), f.gamma = gamma.data(), f.beta = beta.data(), f.y = y_cpu.data(), f.mean = mean_cpu.data(),
    f.rstd = rstd_cpu.data();
    K::cpu::layer_norm_forward(f);
    f.x = d_x.data(), f.gamma = d_gamma.data(), f.beta = d_beta.data(), f.y = d_y.data(), f.mean = d_mean.data(),
    f.rstd = d_rstd.data();
    K::cuda::layer_norm_forward(f, nullptr);
    // Float statistics (two passes) against the CPU's double: a few ulp of the row's scale, cols <= 515.
    EXPECT_TRUE(close("layer_norm y", download(d_y), y_cpu, 1e-5));
    EXPECT_TRUE(close("layer_norm mean", download(d_mean), mean_cpu, 1e-5));
    EXPECT_TRUE(close("layer_norm rstd", download(d_rstd), rstd_cpu, 1e-5));

    const auto dy = random_floats(n, rng);
    std::vector<float> dx_cpu = c.alias_dx ? dy : poison(n);
    std::vector<float> dgamma_cpu = random_floats(c.cols, rng), dbeta_cpu = random_floats(c.cols, rng);
    auto d_dy = upload(dy), d_dx = upload(poison(n)), d_dgamma = upload(dgamma_cpu), d_dbeta = upload(dbeta_cpu);
    // Both backends start from the CPU's saved statistics so that backward is compared on its own.
    auto d_mean_ref = upload(mean_cpu), d_rstd_ref = upload(rstd_cpu);
    K::LayerNormBackward<float> b;
    b.rows = c.rows, b.cols = c.cols;
    b.dy = c.alias_dx ? dx_cpu.data() : dy.data(), b.x = x.data(), b.gamma = gamma.data(), b.mean = mean_cpu.data(),
    b.rstd = rstd_cpu.data(), b.dx = dx_cpu.data(), b.dgamma = dgamma_cpu.data(), b.dbeta = dbeta_cpu.data();
    K::cpu::layer_norm_backward(b);
    b.dy = d_dy.data(), b.x = d_x.data(), b.gamma = d_gamma.data(), b.mean = d_mean_ref.data(),
    b.rstd = d_rstd_ref.data(), b.dx = c.alias_dx ? d_dy.data() : d_dx.data(), b.dgamma = d_dgamma.data(),
    b.dbeta = d_dbeta.data();
    K::cuda::layer_norm_backward(b, nullptr);
    // dx subtracts two row means from g (cancellation): float sums over <= 515 columns against double.
    EXPECT_TRUE(close("layer_norm dx", download(c.alias_dx ? d_dy : d_dx), dx_cpu, 2e-5));
    // Column sums over <= 300 rows in a different order, float against double.
    EXPECT_TRUE(close("layer_norm dgamma", download(d_dgamma), dgamma_cpu, 1e-5));
    EXPECT_TRUE(close("layer_norm dbeta", download(d_dbeta), dbeta_cpu, 1e-5));
  }
}

// ---------------------------------------------------------------------------------------------------------
namespace {

// Where q, k, v (and dq, dk, dv, at the same offsets and strides) live. Separate: three [rows, H Dh] tensors.
// FusedQkv (self-attention, Tq == Tk): column slices of one [rows, 3 H Dh] buffer, as the model's self-attention.
// FusedKv (cross-attention, as in the model): q [rows, H Dh + 1] alone, k and v column slices of one
// [rows, 2 H Dh + 3] buffer; the columns no head owns must stay as they were (poisoned on both sides).
enum class QkvLayout { Separate, FusedQkv, FusedKv };

struct AttnCase {
  int B, Tq, Tk, H, Dh;
  std::vector<int32_t> k_len;  // empty: no key padding (null k_len)
  bool causal;
  float p_drop;
  QkvLayout layout;
};

// Row widths and column offsets of a layout; k shares q's buffer (FusedQkv), v shares k's (FusedQkv, FusedKv).
struct AttnLayout {
  int q_width, kv_width;
  size_t k_off, v_off;
  bool k_shares_q, v_shares_k;
  int dk_buffer() const { return k_shares_q ? 0 : 1; }  // buffers: 0 holds q, 1 k, 2 v (when not shared)
  int dv_buffer() const { return v_shares_k ? dk_buffer() : 2; }
};

AttnLayout attention_layout(const AttnCase& c) {
  const int D = c.H * c.Dh;
  switch (c.layout) {
    case QkvLayout::FusedQkv: return AttnLayout{3 * D, 3 * D, size_t(D), size_t(2 * D), true, true};
    case QkvLayout::FusedKv: return AttnLayout{D + 1, 2 * D + 3, 0, size_t(D), false, true};
    case QkvLayout::Separate: break;
  }
  return AttnLayout{D, D, 0, 0, false, false};
}

// The sizes of the three buffers (0 where a tensor shares another's buffer).
std::array<size_t, 3> attention_buffer_sizes(const AttnLayout& L, size_t q_elems, size_t kv_elems) {
  return {q_elems, L.dk_buffer() == 1 ? kv_elems : 0, L.dv_buffer() == 2 ? kv_elems : 0};
}

// B, lengths, heads, the layout's strides, causal, scale 1/sqrt(Dh) and the dropout of a case (seed 99, step 5);
// k_len and pair are the caller's (host or device pointers).
template <class S>
K::AttentionShape<S> attention_geometry(const AttnCase& c) {
  const AttnLayout L = attention_layout(c);
  const int D = c.H * c.Dh;
  K::AttentionShape<S> sh;
  sh.B = c.B, sh.Tq = c.Tq, sh.Tk = c.Tk, sh.H = c.H, sh.Dh = c.Dh;
  sh.q_bstride = long(c.Tq) * L.q_width, sh.kv_bstride = long(c.Tk) * L.kv_width, sh.o_bstride = long(c.Tq) * D;
  sh.q_stride = L.q_width, sh.kv_stride = L.kv_width, sh.o_stride = D;
  sh.causal = c.causal, sh.scale = 1.0f / std::sqrt(float(c.Dh));
  sh.p_drop = c.p_drop, sh.seed = 99, sh.step = 5, sh.site = K::dropout_site(1, 2, K::DropoutKind::SelfAttnProbs);
  return sh;
}

const K::cuda::AttentionBackwardPath kAttnPaths[] = {K::cuda::AttentionBackwardPath::Tiled,
                                                     K::cuda::AttentionBackwardPath::PerHead,
                                                     K::cuda::AttentionBackwardPath::Auto};
const char* path_name(K::cuda::AttentionBackwardPath p) {
  switch (p) {
    case K::cuda::AttentionBackwardPath::Tiled: return "tiled";
    case K::cuda::AttentionBackwardPath::PerHead: return "per-head";
    case K::cuda::AttentionBackwardPath::Auto: break;
  }
  return "auto";
}

// The backward paths that can take a case: Tiled always, PerHead where it fits, and Auto.
std::vector<K::cuda::AttentionBackwardPath> attention_paths(const AttnCase& c) {
  std::vector<K::cuda::AttentionBackwardPath> paths;
  for (auto p : kAttnPaths)
    if (p != K::cuda::AttentionBackwardPath::PerHead || K::cuda::attention_backward_per_head_fits(c.Tq, c.Tk, c.Dh))
      paths.push_back(p);
  return paths;
}

// Keys at or past k_len[b] hold exact (+0) zeros in every head's channels of dk and dv, and so do all dq rows of a
// sentence without keys (lse = -inf). g: the layout's gradient buffers as downloaded.
::testing::AssertionResult padded_gradients_zero(const AttnCase& c, const std::vector<float> (&g)[3]) {
  const AttnLayout L = attention_layout(c);
  const int D = c.H * c.Dh;
  auto zero_rows = [&](const char* what, const std::vector<float>& buf, size_t off, int T, int width, int b,
                       int from) -> ::testing::AssertionResult {
    for (int t = from; t < T; ++t)
      for (int ch = 0; ch < D; ++ch) {
        const float x = buf[(size_t(b) * T + t) * width + off + ch];
        if (!(x == 0.0f && !std::signbit(x)))
          return ::testing::AssertionFailure() << what << " of sentence " << b << ", row " << t << ", channel " << ch
                                               << " is " << x << ", not +0";
      }
    return ::testing::AssertionSuccess();
  };
  for (int b = 0; b < c.B; ++b) {
    const int k_len = c.k_len.empty() ? c.Tk : c.k_len[b];
    if (auto r = zero_rows("dk", g[L.dk_buffer()], L.k_off, c.Tk, L.kv_width, b, k_len); !r) return r;
    if (auto r = zero_rows("dv", g[L.dv_buffer()], L.v_off, c.Tk, L.kv_width, b, k_len); !r) return r;
    if (k_len == 0)
      if (auto r = zero_rows("dq", g[0], 0, c.Tq, L.q_width, b, 0); !r) return r;
  }
  return ::testing::AssertionSuccess();
}

void run_attention_case(const AttnCase& c, std::mt19937& rng) {
  using Path = K::cuda::AttentionBackwardPath;
  const AttnLayout L = attention_layout(c);
  const int D = c.H * c.Dh;
  // q [B, Tq, q_width], k and v [B, Tk, kv_width] (in shared buffers as the layout says).
  const size_t q_elems = size_t(c.B) * c.Tq * L.q_width, kv_elems = size_t(c.B) * c.Tk * L.kv_width;
  const auto qb = random_floats(q_elems, rng, -2.0f, 2.0f);
  const auto kb = L.k_shares_q ? qb : random_floats(kv_elems, rng, -2.0f, 2.0f);
  const auto vb = L.v_shares_k ? kb : random_floats(kv_elems, rng);
  std::vector<int64_t> pair(c.B);
  for (auto& p : pair) p = int64_t(rng() % 1000000);

  const K::AttentionShape<float> sh = attention_geometry<float>(c);

  // CPU.
  K::AttentionShape<float> sh_cpu = sh;
  sh_cpu.k_len = c.k_len.empty() ? nullptr : c.k_len.data();
  sh_cpu.pair = pair.data();
  const size_t out_elems = size_t(c.B) * c.Tq * D;
  std::vector<float> out_cpu = poison(out_elems), probs(size_t(c.B) * c.H * c.Tq * c.Tk, kNaN);
  K::AttentionForward<float> f;
  f.shape = sh_cpu, f.q = qb.data(), f.k = kb.data() + L.k_off, f.v = vb.data() + L.v_off, f.out = out_cpu.data(),
  f.saved = probs.data();
  K::cpu::attention_forward(f);

  // CUDA.
  auto d_q = upload(qb), d_k = upload(kb), d_v = upload(vb);
  auto d_klen = upload(c.k_len);
  auto d_pair = upload(pair);
  K::AttentionShape<float> sh_gpu = sh;
  sh_gpu.k_len = c.k_len.empty() ? nullptr : d_klen.data();
  sh_gpu.pair = d_pair.data();
  auto d_out = upload(poison(out_elems));
  auto d_lse = upload(poison(size_t(c.B) * c.H * c.Tq));
  f.shape = sh_gpu, f.q = d_q.data(), f.k = d_k.data() + L.k_off, f.v = d_v.data() + L.v_off, f.out = d_out.data(),
  f.saved = d_lse.data();
  K::cuda::attention_forward(f, nullptr);
  // Online softmax (rescaled partial sums) against a two-pass softmax, fp32 throughout: a few ulp per key.
  EXPECT_TRUE(close("attention out", download(d_out), out_cpu, 1e-5));

  // Backward: the CPU once, then each CUDA path that can take the shape into freshly poisoned buffers.
  const auto dout = random_floats(out_elems, rng);
  const auto sizes = attention_buffer_sizes(L, q_elems, kv_elems);
  std::vector<float> g_cpu[3];
  for (int i = 0; i < 3; ++i) g_cpu[i] = poison(sizes[i]);
  K::AttentionBackward<float> b;
  b.shape = sh_cpu, b.dout = dout.data(), b.q = qb.data(), b.k = kb.data() + L.k_off, b.v = vb.data() + L.v_off;
  b.out = out_cpu.data(), b.saved = probs.data();
  b.dq = g_cpu[0].data(), b.dk = g_cpu[L.dk_buffer()].data() + L.k_off, b.dv = g_cpu[L.dv_buffer()].data() + L.v_off;
  K::cpu::attention_backward(b);

  auto d_dout = upload(dout);
  const char* names[3] = {"attention dq", "attention dk", "attention dv"};
  std::vector<float> g_path[3][3];  // [path index in kAttnPaths][buffer]
  bool ran[3] = {false, false, false};
  for (const Path path : attention_paths(c)) {
    const int pi = path == Path::Tiled ? 0 : path == Path::PerHead ? 1 : 2;
    SCOPED_TRACE(path_name(path));
    K::DeviceArray<float> d_g[3];
    for (int i = 0; i < 3; ++i) d_g[i] = upload(poison(sizes[i]));
    b.shape = sh_gpu, b.dout = d_dout.data(), b.q = d_q.data(), b.k = d_k.data() + L.k_off, b.v = d_v.data() + L.v_off;
    b.out = d_out.data(), b.saved = d_lse.data();
    b.dq = d_g[0].data(), b.dk = d_g[L.dk_buffer()].data() + L.k_off, b.dv = d_g[L.dv_buffer()].data() + L.v_off;
    K::cuda::attention_backward(b, path, nullptr);
    ran[pi] = true;
    for (int i = 0; i < 3; ++i) {
      if (sizes[i] == 0) continue;
      g_path[pi][i] = download(d_g[i]);
      // ds = p (dp - delta) cancels: the CUDA delta is dout . out (from its own forward), the CPU's sum_j p dp;
      // each carries ~Tk ulp, amplified by the cancellation. Normalised 1e-4 covers Tk <= 150 with margin (measured
      // under the emulator: < 1e-6 for every case here).
      EXPECT_TRUE(close(names[i], g_path[pi][i], g_cpu[i], 1e-4));
    }
    EXPECT_TRUE(padded_gradients_zero(c, g_path[pi]));
  }
  b.dq = b.dk = b.dv = nullptr;  // the request is refused before any device work
  if (!K::cuda::attention_backward_per_head_fits(c.Tq, c.Tk, c.Dh)) {
    EXPECT_THROW(K::cuda::attention_backward(b, Path::PerHead, nullptr), aiayn::Error);
  }
  for (int i = 0; i < 3; ++i) {
    if (sizes[i] == 0) continue;
    // The two paths perform the same float operations in the same order (bit-identical under the emulator);
    // on a GPU nvcc might contract a product into an FMA differently in the two kernels, a last-bit difference
    // per term: at most what a different summation order gives (the CPU comparison above measures < 1e-6).
    // 1e-5 is ten times below that comparison's limit.
    if (ran[1]) {
      EXPECT_TRUE(close(std::string(names[i]) + " per-head vs tiled", g_path[1][i], g_path[0][i], 1e-5));
    }
    // Auto is the per-head kernel where it fits, the tiled ones elsewhere: the same bits (each is deterministic).
    EXPECT_TRUE(bitwise_equal(g_path[2][i], g_path[ran[1] ? 1 : 0][i])) << names[i] << ": auto";
  }
}

}  // namespace

namespace {
std::vector<AttnCase> attention_cases() {
  return {
      // decoder self-attention: causal, padding, a fully padded sentence (k_len = 0), dropout, fused QKV
      {3, 19, 19, 3, 21, {19, 7, 0}, true, 0.1f, QkvLayout::FusedQkv},
      // cross-attention: Tq != Tk, Dh = 128 (the limit), keys crossing a 32-key tile
      {2, 5, 37, 2, 128, {37, 33}, false, 0.0f, QkvLayout::Separate},
      // one sentence of length 1, one head of width 1
      {1, 1, 1, 1, 1, {1}, false, 0.0f, QkvLayout::Separate},
      // encoder self-attention without key padding (null k_len), dropout, odd head width
      {2, 35, 35, 4, 33, {}, false, 0.2f, QkvLayout::Separate},
      // causal with more queries than a tile and keys beyond k_len
      {1, 40, 40, 1, 64, {23}, true, 0.0f, QkvLayout::Separate},
      // the model's cross-attention layout (q alone, k|v slices of one buffer, unowned columns), Tq != Tk, dropout,
      // a fully padded sentence and one with a single key
      {3, 13, 29, 2, 24, {29, 1, 0}, false, 0.1f, QkvLayout::FusedKv},
      // the per-head backward's largest length (Tq = Tk = 128), causal, padding, dropout
      {2, 128, 128, 2, 64, {128, 77}, true, 0.1f, QkvLayout::FusedQkv},
      // over the per-head bound: Tq = Tk = 131 (tiled only), causal, padding, dropout
      {2, 131, 131, 2, 16, {131, 60}, true, 0.1f, QkvLayout::FusedQkv},
      // over the bound in Tk only (cross-attention), a fully padded sentence
      {2, 7, 150, 1, 32, {150, 0}, false, 0.1f, QkvLayout::FusedKv},
      // within the length bound but over 227 KiB of shared memory (Dh = 128): tiled only
      {1, 100, 90, 1, 128, {90}, false, 0.1f, QkvLayout::FusedKv},
  };
}

std::string attention_trace(const AttnCase& c) {
  return "B=" + std::to_string(c.B) + " Tq=" + std::to_string(c.Tq) + " Tk=" + std::to_string(c.Tk) +
         " H=" + std::to_string(c.H) + " Dh=" + std::to_string(c.Dh) + " causal=" + std::to_string(c.causal);
}
}  // namespace

TEST(CudaOps, Attention) {
  REQUIRE_GPU();
  std::mt19937 rng(6);
  for (const AttnCase& c : attention_cases()) {
    SCOPED_TRACE(attention_trace(c));
    run_attention_case(c, rng);
  }
}

// The per-head backward's bound: Tq, Tk <= 128 and its shared memory (4 staged rows of Dh floats per token plus
// Tq x Tk scores) within the device's opt-in limit (227 KiB on an H100/H200 and under the emulator).
TEST(CudaOps, AttentionBackwardPerHeadBound) {
  REQUIRE_GPU();
  EXPECT_TRUE(K::cuda::attention_backward_per_head_fits(32, 32, 64));  // the benchmark's shape: 37 KiB
  EXPECT_TRUE(K::cuda::attention_backward_per_head_fits(1, 1, 1));
  EXPECT_TRUE(K::cuda::attention_backward_per_head_fits(0, 5, 64));
  EXPECT_FALSE(K::cuda::attention_backward_per_head_fits(129, 20, 32));
  EXPECT_FALSE(K::cuda::attention_backward_per_head_fits(20, 129, 32));
  EXPECT_FALSE(K::cuda::attention_backward_per_head_fits(100, 90, 128));  // 229 KiB
  EXPECT_FALSE(K::cuda::attention_backward_per_head_fits(16, 16, 129));   // over the supported head width
}

// ---------------------------------------------------------------------------------------------------------
TEST(CudaOps, CrossEntropy) {
  REQUIRE_GPU();
  std::mt19937 rng(7);
  struct Case { int N, V; bool in_place, with_grad; };
  for (const Case c : {Case{9, 5003, false, true}, Case{1, 1, false, true}, Case{7, 37, true, true},
                       Case{4, 1031, false, false}}) {
    SCOPED_TRACE("N=" + std::to_string(c.N) + " V=" + std::to_string(c.V));
    const int pad_id = c.V > 1 ? 0 : -1;  // V = 1: the only real target is 0, so 0 cannot be the pad id
    const auto logits = random_floats(size_t(c.N) * c.V, rng, -4.0f, 4.0f);
    std::vector<int32_t> targets(c.N);
    for (int n = 0; n < c.N; ++n) targets[n] = int32_t(rng() % c.V);
    if (c.N > 2) targets[1] = pad_id, targets[c.N - 1] = pad_id;  // pad rows: no loss, zero gradient
    if (c.V > 1) targets[0] = 1 + int32_t(rng() % (c.V - 1));
    std::vector<float> logits_cpu = logits;
    std::vector<float> dl_cpu = c.in_place ? std::vector<float>() : poison(logits.size());
    auto d_logits = upload(logits), d_dl = upload(poison(logits.size()));
    auto d_t = upload(targets);
    K::CrossEntropyArgs<float> a;
    a.N = c.N, a.V = c.V, a.pad_id = pad_id, a.smoothing = c.V > 1 ? 0.1f : 0.0f, a.grad_scale = 0.37f;
    a.logits = logits_cpu.data(), a.targets = targets.data();
    a.dlogits = !c.with_grad ? nullptr : (c.in_place ? logits_cpu.data() : dl_cpu.data());
    const auto s_cpu = K::cpu::cross_entropy(a);
    a.logits = d_logits.data(), a.targets = d_t.data();
    a.dlogits = !c.with_grad ? nullptr : (c.in_place ? d_logits.data() : d_dl.data());
    const auto s_gpu = K::cuda::cross_entropy(a, nullptr);
    // Float exp per element against double exp, sums in double: ~1e-7 relative per row.
    EXPECT_TRUE(close_scalar("loss", s_gpu.loss, s_cpu.loss, 1e-5));
    EXPECT_TRUE(close_scalar("nll", s_gpu.nll, s_cpu.nll, 1e-5));
    EXPECT_EQ(s_gpu.tokens, s_cpu.tokens);
    EXPECT_EQ(s_gpu.correct, s_cpu.correct);  // same float comparisons, first maximum on both sides
    if (c.with_grad) {
      // softmax in float from a double lse against double throughout: a few ulp of the largest gradient.
      EXPECT_TRUE(close("dlogits", download(c.in_place ? d_logits : d_dl), c.in_place ? logits_cpu : dl_cpu, 1e-5));
    }
  }
}

// Issue 15: padded rows (stride ld > V, as the model lays out its logits): NaN in the padding, which the op must
// neither read (results as the CPU's) nor write (still NaN after, in place or not).
TEST(CudaOps, CrossEntropyPaddedRows) {
  REQUIRE_GPU();
  std::mt19937 rng(15);
  const int N = 6, V = 37, ld = 48;
  for (const bool in_place : {false, true}) {
    SCOPED_TRACE(in_place ? "in place" : "separate dlogits");
    std::vector<float> logits = random_floats(size_t(N) * ld, rng, -4.0f, 4.0f);
    for (int n = 0; n < N; ++n)
      for (int j = V; j < ld; ++j) logits[size_t(n) * ld + j] = std::nanf("");
    std::vector<int32_t> targets(N);
    for (int n = 0; n < N; ++n) targets[n] = 1 + int32_t(rng() % (V - 1));
    targets[2] = 0;  // a pad row
    std::vector<float> logits_cpu = logits, dl_cpu(logits.size(), std::nanf(""));
    auto d_logits = upload(logits), d_dl = upload(std::vector<float>(logits.size(), std::nanf("")));
    auto d_t = upload(targets);
    K::CrossEntropyArgs<float> a;
    a.N = N, a.V = V, a.ld = ld, a.pad_id = 0, a.smoothing = 0.1f, a.grad_scale = 0.37f;
    a.logits = logits_cpu.data(), a.targets = targets.data(), a.dlogits = in_place ? logits_cpu.data() : dl_cpu.data();
    const auto s_cpu = K::cpu::cross_entropy(a);
    a.logits = d_logits.data(), a.targets = d_t.data(), a.dlogits = in_place ? d_logits.data() : d_dl.data();
    const auto s_gpu = K::cuda::cross_entropy(a, nullptr);
    ASSERT_TRUE(std::isfinite(s_gpu.loss));
    EXPECT_TRUE(close_scalar("loss", s_gpu.loss, s_cpu.loss, 1e-5));
    EXPECT_TRUE(close_scalar("nll", s_gpu.nll, s_cpu.nll, 1e-5));
    EXPECT_EQ(s_gpu.tokens, s_cpu.tokens);
    EXPECT_EQ(s_gpu.correct, s_cpu.correct);
    const auto got = download(in_place ? d_logits : d_dl);
    const auto& want = in_place ? logits_cpu : dl_cpu;
    std::vector<float> got_v, want_v;
    for (int n = 0; n < N; ++n) {
      for (int j = 0; j < V; ++j) got_v.push_back(got[size_t(n) * ld + j]), want_v.push_back(want[size_t(n) * ld + j]);
      for (int j = V; j < ld; ++j) ASSERT_TRUE(std::isnan(got[size_t(n) * ld + j])) << "padding written at " << n << "," << j;
    }
    EXPECT_TRUE(close("dlogits", got_v, want_v, 1e-5));
  }
}

// ---------------------------------------------------------------------------------------------------------
TEST(CudaOps, Optimizer) {
  REQUIRE_GPU();
  std::mt19937 rng(8);
  const size_t n = 100003;
  {
    const auto grad = random_floats(n, rng);
    std::vector<float> p_cpu = random_floats(n, rng), m_cpu = random_floats(n, rng, -0.1f, 0.1f),
                       v_cpu = random_floats(n, rng, 0.0f, 0.01f);
    auto d_p = upload(p_cpu), d_m = upload(m_cpu), d_v = upload(v_cpu), d_g = upload(grad);
    K::AdamArgs<float> a;
    a.n = n, a.lr = 1e-3f, a.grad_scale = 0.5f;
    a.bias1 = 1.0 - std::pow(0.9, 3), a.bias2 = 1.0 - std::pow(0.98, 3);
    a.param = p_cpu.data(), a.grad = grad.data(), a.m = m_cpu.data(), a.v = v_cpu.data();
    K::cpu::adam(a);
    a.param = d_p.data(), a.grad = d_g.data(), a.m = d_m.data(), a.v = d_v.data();
    K::cuda::adam(a, nullptr);
    // The same float formula; nvcc may contract a product and a sum into one FMA (1 ulp per operation).
    EXPECT_TRUE(close("adam m", download(d_m), m_cpu, 1e-6));
    EXPECT_TRUE(close("adam v", download(d_v), v_cpu, 1e-6));
    EXPECT_TRUE(close("adam param", download(d_p), p_cpu, 1e-6));
  }
  for (const size_t len : {size_t(1), size_t(1000), n}) {
    const auto x = random_floats(len, rng);
    auto d_x = upload(x);
    K::SumSquaresArgs<float> s;
    s.n = len, s.x = x.data();
    const double want = K::cpu::sum_squares(s);
    s.x = d_x.data();
    // Squares of floats are exact in double; only the order of the double additions differs.
    EXPECT_TRUE(close_scalar("sum_squares", K::cuda::sum_squares(s, nullptr), want, 1e-12));
  }
  {
    std::vector<float> x = random_floats(1001, rng);
    auto d_x = upload(x);
    K::ScaleArgs<float> s;
    s.n = x.size(), s.factor = 0.3f, s.x = x.data();
    K::cpu::scale(s);
    s.x = d_x.data();
    K::cuda::scale(s, nullptr);
    EXPECT_TRUE(close("scale", download(d_x), x, 0.0));  // one float multiplication: exact
  }
}

// ---------------------------------------------------------------------------------------------------------
// Determinism: the ops that reduce (embedding backward, attention backward, parameter gradients, sums)
// give the same bits when run twice.
TEST(CudaOps, DeterministicRepeats) {
  REQUIRE_GPU();
  std::mt19937 rng(9);
  const int N = 4000, D = 64, V = 50;
  std::vector<int32_t> ids(N);
  for (auto& id : ids) id = int32_t(rng() % V);
  auto d_ids = upload(ids);
  auto d_dout = upload(random_floats(size_t(N) * D, rng));
  std::vector<float> runs[2];
  for (auto& r : runs) {
    K::DeviceArray<float> dtable(Device::CUDA, size_t(V) * D);
    K::EmbedBackward<float> b;
    b.N = N, b.D = D, b.V = V, b.scale = 8.0f, b.ids = d_ids.data(), b.dout = d_dout.data(), b.dtable = dtable.data();
    K::cuda::embed_backward(b, nullptr);
    r = download(dtable);
  }
  EXPECT_TRUE(bitwise_equal(runs[0], runs[1])) << "embed_backward";

  const int rows = 3000, cols = 96;
  auto d_dy = upload(random_floats(size_t(rows) * cols, rng));
  for (auto& r : runs) {
    K::DeviceArray<float> db(Device::CUDA, cols);
    K::BiasGrad<float> bg;
    bg.rows = rows, bg.cols = cols, bg.dy = d_dy.data(), bg.db = db.data();
    K::cuda::bias_grad(bg, nullptr);
    r = download(db);
  }
  EXPECT_TRUE(bitwise_equal(runs[0], runs[1])) << "bias_grad";

  K::SumSquaresArgs<float> s;
  s.n = size_t(rows) * cols, s.x = d_dy.data();
  EXPECT_EQ(K::cuda::sum_squares(s, nullptr), K::cuda::sum_squares(s, nullptr));
}

// ---------------------------------------------------------------------------------------------------------
// Argument checks of the CUDA launchers: they throw before touching the device, so they run without a GPU.
TEST(CudaOpsChecks, LaunchersRejectBadArguments) {
  std::vector<float> buf(8, 1.0f);
  const std::vector<int64_t> pair = {0, 1};
  {
    K::ResidualNormBackward<float> b;
    b.dy = buf.data(), b.s = buf.data(), b.gamma = buf.data(), b.mean = buf.data(), b.rstd = buf.data();
    b.dx = buf.data(), b.df = buf.data(), b.rows = 2, b.cols = 4;
    EXPECT_THROW(K::cuda::residual_norm_backward(b, nullptr), aiayn::Error);  // df aliases dy and dx
  }
  {
    const std::vector<int32_t> ids = {0, 1}, pos = {3, 4};
    K::EmbedForward<K::bf16, float> e;
    e.ids = ids.data(), e.table = buf.data(), e.positions = pos.data(), e.N = 2, e.D = 2, e.V = 2;
    e.drop = test_mask(pair.data(), 1, 0.1f, 0);
    EXPECT_THROW(K::cuda::embed_forward(e, nullptr), aiayn::Error);  // dropout with explicit positions
  }
  {
    std::vector<K::bf16> x(8);
    K::DropoutArgs<K::bf16> d;
    d.x = x.data(), d.y = x.data(), d.rows = 2, d.cols = 4, d.seq_len = 1, d.p = 1.0f, d.pair = pair.data();
    EXPECT_THROW(K::cuda::dropout_forward(d, nullptr), aiayn::Error);  // p must lie in [0, 1)
    d.p = 0.1f, d.pair = nullptr;
    EXPECT_THROW(K::cuda::dropout_forward(d, nullptr), aiayn::Error);  // p > 0 needs the pair indices
    d.pair = pair.data(), d.seq_len = 3;
    EXPECT_THROW(K::cuda::dropout_forward(d, nullptr), aiayn::Error);  // rows not a multiple of seq_len
  }
}

// Empty shapes (N = 0, rows = 0, B = 0, n = 0) return before any device work, so they run without a GPU too.
// The pointers are distinct host addresses that must never be dereferenced.
TEST(CudaOpsChecks, EmptyShapesDoNothing) {
  float f[6] = {};
  K::bf16 h[6] = {};
  const int32_t ids[1] = {0};
  {
    K::EmbedForward<K::bf16, float> e;
    e.ids = ids, e.table = f, e.out = h, e.N = 0, e.D = 4, e.V = 3;
    EXPECT_NO_THROW(K::cuda::embed_forward(e, nullptr));
    K::EmbedBackward<K::bf16, float> b;
    b.ids = ids, b.dout = h, b.dtable = f, b.N = 0, b.D = 4, b.V = 3;
    EXPECT_NO_THROW(K::cuda::embed_backward(b, nullptr));
  }
  {
    K::DropoutArgs<K::bf16> d;
    d.x = h, d.y = h + 1, d.rows = 0, d.cols = 5, d.p = 0.1f;
    EXPECT_NO_THROW(K::cuda::dropout_forward(d, nullptr));
  }
  {
    K::ResidualNormForward<K::bf16, float> fw;
    fw.x = h, fw.f = h + 1, fw.gamma = f, fw.beta = f + 1, fw.s = h + 2, fw.y = h + 3, fw.rows = 0, fw.cols = 7;
    EXPECT_NO_THROW(K::cuda::residual_norm_forward(fw, nullptr));
    K::ResidualNormBackward<K::bf16, float> bw;
    bw.dy = h, bw.s = h + 1, bw.gamma = f, bw.mean = f + 1, bw.rstd = f + 2, bw.dx = h + 2, bw.df = h + 3;
    bw.dgamma = f + 3, bw.dbeta = f + 4, bw.rows = 0, bw.cols = 7;
    EXPECT_NO_THROW(K::cuda::residual_norm_backward(bw, nullptr));
    K::ResidualNormForward<float> f32;
    f32.x = f, f32.f = f + 1, f32.s = f + 2, f32.y = f + 3, f32.rows = 0, f32.cols = 7;
    EXPECT_NO_THROW(K::cuda::residual_norm_forward(f32, nullptr));
    EXPECT_NO_THROW(K::cuda::layer_norm_forward(K::LayerNormForward<K::bf16, float>{h, f, f, h + 1, f, f, 0, 3, 1e-5f}, nullptr));
  }
  {
    K::GemmArgs<K::bf16> g;
    g.m = 0, g.n = 3, g.k = 2, g.a = h, g.b = h, g.c = h + 1, g.lda = 2, g.ldb = 3, g.ldc = 3;
    EXPECT_NO_THROW(K::cuda::gemm(g, nullptr));
    K::GemmArgs<K::bf16, float> gw;
    gw.m = 3, gw.n = 0, gw.k = 2, gw.a = h, gw.b = h, gw.c = f, gw.lda = 2, gw.ldb = 1, gw.ldc = 1, gw.beta = 1.0f;
    EXPECT_NO_THROW(K::cuda::gemm(gw, nullptr));
    EXPECT_NO_THROW(K::cuda::add(K::AddArgs<K::bf16>{h, h + 1, h + 2, 0}, nullptr));
    EXPECT_NO_THROW(K::cuda::relu_backward(K::ReluBackward<K::bf16>{h, h + 1, h + 2, 0}, nullptr));
    EXPECT_NO_THROW(K::cuda::bias_grad(K::BiasGrad<K::bf16, float>{h, f, 0, 5}, nullptr));
  }
  {
    K::AttentionForward<K::bf16> a;
    a.shape.B = 0, a.shape.Tq = 3, a.shape.Tk = 3, a.shape.H = 1, a.shape.Dh = 8, a.q = h, a.k = h, a.v = h, a.out = h + 1;
    EXPECT_NO_THROW(K::cuda::attention_forward(a, nullptr));
    K::AttentionBackward<K::bf16> b;
    b.shape = a.shape, b.dout = h, b.q = h, b.k = h, b.v = h, b.out = h + 1, b.saved = f, b.dq = h + 2, b.dk = h + 3;
    b.dv = h + 4;
    EXPECT_NO_THROW(K::cuda::attention_backward(b, nullptr));
  }
  {
    K::CrossEntropyArgs<K::bf16> ce;
    ce.logits = h, ce.dlogits = h, ce.targets = ids, ce.N = 0, ce.V = 5;
    const auto stats = K::cuda::cross_entropy(ce, nullptr);
    EXPECT_EQ(stats.tokens, 0);
    EXPECT_EQ(stats.loss, 0.0);
  }
  {
    K::AdamArgs<float> a;
    a.param = f, a.grad = f + 1, a.m = f + 2, a.v = f + 3, a.param_bf16 = h, a.n = 0;
    EXPECT_NO_THROW(K::cuda::adam(a, nullptr));
    EXPECT_NO_THROW(K::cuda::cast(K::CastArgs<float, K::bf16>{f, h, 0}, nullptr));
    EXPECT_NO_THROW(K::cuda::cast(K::CastArgs<K::bf16, float>{h, f, 0}, nullptr));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Fused fp32 ops: embedding with its dropout, residual + dropout + LayerNorm.
TEST(CudaOps, EmbeddingDropout) {
  REQUIRE_GPU();
  std::mt19937 rng(10);
  struct Case { int B, S, D, V; float p; bool add_positions; };
  for (const Case c : {Case{3, 7, 37, 11, 0.1f, true}, Case{1, 1, 1, 1, 0.5f, false},
                       Case{2, 13, 515, 5, 0.3f, false}, Case{4, 5, 64, 50, 0.0f, true}}) {
    SCOPED_TRACE("B=" + std::to_string(c.B) + " S=" + std::to_string(c.S) + " D=" + std::to_string(c.D) +
                 " p=" + std::to_string(c.p));
    const int N = c.B * c.S;
    std::vector<int32_t> ids(N);
    for (auto& id : ids) id = int32_t(rng() % c.V);
    const auto table = random_floats(size_t(c.V) * c.D, rng);
    const auto pair = random_pairs(c.B, rng);
    auto d_ids = upload(ids);
    auto d_table = upload(table);
    auto d_pair = upload(pair);
    const uint32_t site = K::dropout_site(0, 0, K::DropoutKind::Embedding);
    const K::DropoutMask m_cpu = test_mask(pair.data(), c.S, c.p, site), m_gpu = test_mask(d_pair.data(), c.S, c.p, site);

    std::vector<float> out_cpu = poison(size_t(N) * c.D);
    auto d_out = upload(poison(size_t(N) * c.D));
    K::EmbedForward<float> f;
    f.N = N, f.D = c.D, f.V = c.V, f.seq_len = c.S, f.scale = std::sqrt(float(c.D)), f.add_positions = c.add_positions;
    f.ids = ids.data(), f.table = table.data(), f.out = out_cpu.data(), f.drop = m_cpu;
    K::cpu::embed_forward(f);
    f.ids = d_ids.data(), f.table = d_table.data(), f.out = d_out.data(), f.drop = m_gpu;
    K::cuda::embed_forward(f, nullptr);
    const auto out = download(d_out);
    // Without positions the arithmetic is the CPU's (uncontracted product, one float division): exact. With
    // them, the sinusoid comes from the device's sinf/cosf/expf, 2 ulp of |PE| <= 1 (as in Embedding).
    EXPECT_TRUE(close("embed_forward", out, out_cpu, c.add_positions ? 1e-6 : 0.0));
    EXPECT_TRUE(dropped_where_cpu_drops("embed_forward", out, N, c.D, m_cpu));

    const auto dout = random_floats(size_t(N) * c.D, rng);
    std::vector<float> dtable_cpu = random_floats(size_t(c.V) * c.D, rng);
    auto d_dout = upload(dout), d_dtable = upload(dtable_cpu);
    K::EmbedBackward<float> b;
    b.N = N, b.D = c.D, b.V = c.V, b.scale = f.scale;
    b.ids = ids.data(), b.dout = dout.data(), b.dtable = dtable_cpu.data(), b.drop = m_cpu;
    K::cpu::embed_backward(b);
    b.ids = d_ids.data(), b.dout = d_dout.data(), b.dtable = d_dtable.data(), b.drop = m_gpu;
    K::cuda::embed_backward(b, nullptr);
    // Exact: each row receives the CPU's additions in token order, of the same divided, uncontracted products.
    EXPECT_TRUE(close("embed_backward", download(d_dtable), dtable_cpu, 0.0));
  }
}

namespace {

struct ResidualCase {
  int B, T, cols;
  float p;
  bool alias_dx;
};
const ResidualCase kResidualCases[] = {
    {3, 7, 333, 0.1f, false},   // odd width
    {1, 1, 1, 0.5f, false},     // one token of one channel
    {2, 150, 515, 0.2f, true},  // 300 rows: two row chunks of the parameter-gradient reduction; dx aliases dy
    {5, 1, 31, 0.0f, false},    // no dropout, sentences of length 1
};

std::string residual_trace(const ResidualCase& c) {
  return "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " cols=" + std::to_string(c.cols) +
         " p=" + std::to_string(c.p);
}

}  // namespace

TEST(CudaOps, ResidualNorm) {
  REQUIRE_GPU();
  std::mt19937 rng(11);
  for (const ResidualCase& c : kResidualCases) {
    SCOPED_TRACE(residual_trace(c));
    const int rows = c.B * c.T;
    const size_t n = size_t(rows) * c.cols;
    const auto x = random_floats(n, rng, -2.0f, 2.0f), f = random_floats(n, rng, -2.0f, 2.0f);
    const auto gamma = random_floats(c.cols, rng, 0.5f, 1.5f), beta = random_floats(c.cols, rng);
    const auto pair = random_pairs(c.B, rng);
    auto d_x = upload(x);
    auto d_f = upload(f);
    auto d_gamma = upload(gamma);
    auto d_beta = upload(beta);
    auto d_pair = upload(pair);
    const uint32_t site = K::dropout_site(1, 3, K::DropoutKind::FfnOut);
    const K::DropoutMask m_cpu = test_mask(pair.data(), c.T, c.p, site), m_gpu = test_mask(d_pair.data(), c.T, c.p, site);

    std::vector<float> s_cpu = poison(n), y_cpu = poison(n), mean_cpu = poison(rows), rstd_cpu = poison(rows);
    auto d_s = upload(poison(n)), d_y = upload(poison(n)), d_mean = upload(poison(rows)), d_rstd = upload(poison(rows));
    K::ResidualNormForward<float> fw;
    fw.rows = rows, fw.cols = c.cols, fw.eps = 1e-5f;
    fw.x = x.data(), fw.f = f.data(), fw.gamma = gamma.data(), fw.beta = beta.data(), fw.s = s_cpu.data();
    fw.y = y_cpu.data(), fw.mean = mean_cpu.data(), fw.rstd = rstd_cpu.data(), fw.drop = m_cpu;
    K::cpu::residual_norm_forward(fw);
    fw.x = d_x.data(), fw.f = d_f.data(), fw.gamma = d_gamma.data(), fw.beta = d_beta.data(), fw.s = d_s.data();
    fw.y = d_y.data(), fw.mean = d_mean.data(), fw.rstd = d_rstd.data(), fw.drop = m_gpu;
    K::cuda::residual_norm_forward(fw, nullptr);
    const auto s = download(d_s);
    // s = x + f / (1 - p) (or x where dropped): the CPU's two float operations in the same order: exact.
    EXPECT_TRUE(close("residual_norm s", s, s_cpu, 0.0));
    EXPECT_TRUE(dropped_where_cpu_drops("residual_norm s", s, rows, c.cols, m_cpu, x));  // dropped: s == x
    // LayerNorm of s with float statistics against the CPU's double (the LayerNorm test's limits and reasons).
    EXPECT_TRUE(close("residual_norm y", download(d_y), y_cpu, 1e-5));
    EXPECT_TRUE(close("residual_norm mean", download(d_mean), mean_cpu, 1e-5));
    EXPECT_TRUE(close("residual_norm rstd", download(d_rstd), rstd_cpu, 1e-5));

    // Backward from the CPU's saved s, mean, rstd on both sides (backward compared on its own).
    const auto dy = random_floats(n, rng);
    std::vector<float> dx_cpu = c.alias_dx ? dy : poison(n), df_cpu = poison(n);
    std::vector<float> dgamma_cpu = random_floats(c.cols, rng), dbeta_cpu = random_floats(c.cols, rng);
    auto d_dy = upload(dy), d_dx = upload(poison(n)), d_df = upload(poison(n));
    auto d_dgamma = upload(dgamma_cpu), d_dbeta = upload(dbeta_cpu);
    auto d_s_ref = upload(s_cpu), d_mean_ref = upload(mean_cpu), d_rstd_ref = upload(rstd_cpu);
    K::ResidualNormBackward<float> bw;
    bw.rows = rows, bw.cols = c.cols, bw.drop = m_cpu;
    bw.dy = c.alias_dx ? dx_cpu.data() : dy.data(), bw.s = s_cpu.data(), bw.gamma = gamma.data();
    bw.mean = mean_cpu.data(), bw.rstd = rstd_cpu.data(), bw.dx = dx_cpu.data(), bw.df = df_cpu.data();
    bw.dgamma = dgamma_cpu.data(), bw.dbeta = dbeta_cpu.data();
    K::cpu::residual_norm_backward(bw);
    bw.drop = m_gpu;
    bw.dy = d_dy.data(), bw.s = d_s_ref.data(), bw.gamma = d_gamma.data(), bw.mean = d_mean_ref.data();
    bw.rstd = d_rstd_ref.data(), bw.dx = c.alias_dx ? d_dy.data() : d_dx.data(), bw.df = d_df.data();
    bw.dgamma = d_dgamma.data(), bw.dbeta = d_dbeta.data();
    K::cuda::residual_norm_backward(bw, nullptr);
    // dx: LayerNorm's dx (float sums against double, cancellation): the LayerNorm test's 2e-5. df is dx
    // through the same division on both sides, so it carries the same normalised error.
    EXPECT_TRUE(close("residual_norm dx", download(c.alias_dx ? d_dy : d_dx), dx_cpu, 2e-5));
    const auto df = download(d_df);
    EXPECT_TRUE(close("residual_norm df", df, df_cpu, 2e-5));
    EXPECT_TRUE(dropped_where_cpu_drops("residual_norm df", df, rows, c.cols, m_cpu));
    // Column sums over <= 300 rows in another order, float against double (as LayerNorm).
    EXPECT_TRUE(close("residual_norm dgamma", download(d_dgamma), dgamma_cpu, 1e-5));
    EXPECT_TRUE(close("residual_norm dbeta", download(d_dbeta), dbeta_cpu, 1e-5));
  }
}

// The fused op performs the unfused CUDA composition's float operations in the same order (dropout, add,
// layer_norm_forward; layer_norm_backward, dropout): equal bit for bit in fp32.
TEST(CudaOps, ResidualNormEqualsUnfusedComposition) {
  REQUIRE_GPU();
  std::mt19937 rng(12);
  for (const ResidualCase& c : kResidualCases) {
    SCOPED_TRACE(residual_trace(c));
    const int rows = c.B * c.T;
    const size_t n = size_t(rows) * c.cols;
    const auto pair = random_pairs(c.B, rng);
    auto d_x = upload(random_floats(n, rng, -2.0f, 2.0f)), d_f = upload(random_floats(n, rng, -2.0f, 2.0f));
    auto d_gamma = upload(random_floats(c.cols, rng, 0.5f, 1.5f)), d_beta = upload(random_floats(c.cols, rng));
    auto d_dy = upload(random_floats(n, rng));
    auto d_pair = upload(pair);
    const auto dgamma0 = random_floats(c.cols, rng), dbeta0 = random_floats(c.cols, rng);
    const K::DropoutMask m = test_mask(d_pair.data(), c.T, c.p, 77);

    // Fused.
    auto s1 = upload(poison(n)), y1 = upload(poison(n)), mean1 = upload(poison(rows)), rstd1 = upload(poison(rows));
    auto dx1 = upload(poison(n)), df1 = upload(poison(n)), dg1 = upload(dgamma0), db1 = upload(dbeta0);
    K::ResidualNormForward<float> fw;
    fw.rows = rows, fw.cols = c.cols, fw.drop = m, fw.x = d_x.data(), fw.f = d_f.data(), fw.gamma = d_gamma.data();
    fw.beta = d_beta.data(), fw.s = s1.data(), fw.y = y1.data(), fw.mean = mean1.data(), fw.rstd = rstd1.data();
    K::cuda::residual_norm_forward(fw, nullptr);
    K::ResidualNormBackward<float> bw;
    bw.rows = rows, bw.cols = c.cols, bw.drop = m, bw.dy = d_dy.data(), bw.s = s1.data(), bw.gamma = d_gamma.data();
    bw.mean = mean1.data(), bw.rstd = rstd1.data(), bw.dx = dx1.data(), bw.df = df1.data(), bw.dgamma = dg1.data();
    bw.dbeta = db1.data();
    K::cuda::residual_norm_backward(bw, nullptr);

    // Unfused.
    auto f2 = upload(poison(n)), s2 = upload(poison(n)), y2 = upload(poison(n)), mean2 = upload(poison(rows));
    auto rstd2 = upload(poison(rows)), dx2 = upload(poison(n)), df2 = upload(poison(n));
    auto dg2 = upload(dgamma0), db2 = upload(dbeta0);
    K::DropoutArgs<float> d;
    static_cast<K::DropoutMask&>(d) = m;
    d.rows = rows, d.cols = c.cols, d.x = d_f.data(), d.y = f2.data();
    K::cuda::dropout_forward(d, nullptr);
    K::cuda::add(K::AddArgs<float>{d_x.data(), f2.data(), s2.data(), n}, nullptr);
    K::cuda::layer_norm_forward(K::LayerNormForward<float>{s2.data(), d_gamma.data(), d_beta.data(), y2.data(),
                                                           mean2.data(), rstd2.data(), rows, c.cols, 1e-5f}, nullptr);
    K::cuda::layer_norm_backward(K::LayerNormBackward<float>{d_dy.data(), s2.data(), d_gamma.data(), mean2.data(),
                                                             rstd2.data(), dx2.data(), dg2.data(), db2.data(), rows,
                                                             c.cols}, nullptr);
    d.x = dx2.data(), d.y = df2.data();
    K::cuda::dropout_backward(d, nullptr);

    EXPECT_TRUE(bitwise_equal(download(s1), download(s2))) << "s";
    EXPECT_TRUE(bitwise_equal(download(y1), download(y2))) << "y";
    EXPECT_TRUE(bitwise_equal(download(mean1), download(mean2))) << "mean";
    EXPECT_TRUE(bitwise_equal(download(rstd1), download(rstd2))) << "rstd";
    EXPECT_TRUE(bitwise_equal(download(dx1), download(dx2))) << "dx";
    EXPECT_TRUE(bitwise_equal(download(df1), download(df2))) << "df";
    EXPECT_TRUE(bitwise_equal(download(dg1), download(dg2))) << "dgamma";
    EXPECT_TRUE(bitwise_equal(download(db1), download(db2))) << "dbeta";
  }
}

// ---------------------------------------------------------------------------------------------------------
// bf16: element-wise ops, dropout, casts, Adam's copy.
TEST(CudaOps, DropoutBf16) {
  REQUIRE_GPU();
  std::mt19937 rng(13);
  struct Case { int rows, cols, seq_len; float p; bool in_place; };
  for (const Case c : {Case{21, 37, 7, 0.1f, false}, Case{1, 1, 1, 0.5f, false}, Case{15, 513, 5, 0.3f, true},
                       Case{6, 10, 3, 0.0f, false}}) {
    SCOPED_TRACE("rows=" + std::to_string(c.rows) + " cols=" + std::to_string(c.cols));
    const size_t n = size_t(c.rows) * c.cols;
    const auto x = random_bf16(n, rng);
    const auto pair = random_pairs(c.rows / c.seq_len, rng);
    auto d_pair = upload(pair);
    for (const bool backward : {false, true}) {
      // Reference: the CPU's float map on the bf16 values, rounded once.
      std::vector<float> want = poison(n);
      K::DropoutArgs<float> a;
      static_cast<K::DropoutMask&>(a) = test_mask(pair.data(), c.seq_len, c.p, 5);
      a.rows = c.rows, a.cols = c.cols, a.x = x.data(), a.y = want.data();
      backward ? K::cpu::dropout_backward(a) : K::cpu::dropout_forward(a);
      want = round_bf16(want);

      auto d_x = upload_bf16(x), d_y = poison_bf16(n);
      K::DropoutArgs<K::bf16> g;
      static_cast<K::DropoutMask&>(g) = test_mask(d_pair.data(), c.seq_len, c.p, 5);
      g.rows = c.rows, g.cols = c.cols, g.x = d_x.data(), g.y = c.in_place ? d_x.data() : d_y.data();
      backward ? K::cuda::dropout_backward(g, nullptr) : K::cuda::dropout_forward(g, nullptr);
      const auto got = download_bf16(c.in_place ? d_x : d_y);
      // Exact: the same float division of the same value, rounded to nearest even on both sides.
      EXPECT_TRUE(close("dropout bf16", got, want, 0.0));
      EXPECT_TRUE(dropped_where_cpu_drops("dropout bf16", got, c.rows, c.cols, a));
    }
  }
}

TEST(CudaOps, GemmHelpersBf16) {
  REQUIRE_GPU();
  std::mt19937 rng(14);
  const size_t n = 1001;
  auto y = random_bf16(n, rng);
  for (size_t i = 0; i < n; i += 7) y[i] = 0.0f;  // y == 0 passes no gradient
  const auto dy = random_bf16(n, rng);
  for (const bool in_place : {false, true}) {
    std::vector<float> want(n);
    for (size_t i = 0; i < n; ++i) want[i] = y[i] > 0.0f ? dy[i] : 0.0f;
    auto d_y = upload_bf16(y), d_dy = upload_bf16(dy), d_dx = poison_bf16(n);
    K::ReluBackward<K::bf16> r;
    r.n = n, r.y = d_y.data(), r.dy = d_dy.data(), r.dx = in_place ? d_dy.data() : d_dx.data();
    K::cuda::relu_backward(r, nullptr);
    EXPECT_TRUE(close("relu_backward bf16", download_bf16(in_place ? d_dy : d_dx), want, 0.0));  // a selection
  }
  {
    const auto a = random_bf16(n, rng), b = random_bf16(n, rng, -3.0f, 3.0f);
    std::vector<float> want(n);
    for (size_t i = 0; i < n; ++i) want[i] = round_bf16(a[i] + b[i]);
    auto d_a = upload_bf16(a), d_b = upload_bf16(b), d_y = poison_bf16(n);
    K::cuda::add(K::AddArgs<K::bf16>{d_a.data(), d_b.data(), d_y.data(), n}, nullptr);
    // One float addition of two bf16 values, rounded once: exact.
    EXPECT_TRUE(close("add bf16", download_bf16(d_y), want, 0.0));
    K::cuda::add(K::AddArgs<K::bf16>{d_a.data(), d_b.data(), d_a.data(), n}, nullptr);  // y aliases a
    EXPECT_TRUE(close("add bf16 in place", download_bf16(d_a), want, 0.0));
  }
  for (const int rows : {1, 300, 777}) {
    const int cols = 45;
    const auto g = random_bf16(size_t(rows) * cols, rng);
    std::vector<float> db_cpu = random_floats(cols, rng);
    auto d_g = upload_bf16(g);
    auto d_db = upload(db_cpu);
    K::BiasGrad<float> bg;
    bg.rows = rows, bg.cols = cols, bg.dy = g.data(), bg.db = db_cpu.data();
    K::cpu::bias_grad(bg);
    K::BiasGrad<K::bf16, float> bgb;
    bgb.rows = rows, bgb.cols = cols, bgb.dy = d_g.data(), bgb.db = d_db.data();
    K::cuda::bias_grad(bgb, nullptr);
    // The inputs are the same numbers on both sides and the sums float32 (fp32 bias_grad's limit and reason).
    EXPECT_TRUE(close("bias_grad bf16 rows=" + std::to_string(rows), download(d_db), db_cpu, 1e-5));
  }
}

TEST(CudaOps, Cast) {
  REQUIRE_GPU();
  std::mt19937 rng(15);
  const float inf = std::numeric_limits<float>::infinity();
  // Special values, float denormals, the largest float (rounds to inf), exact ties (low 16 bits 0x8000, to even),
  // just above and below ties, and random values over a wide range.
  std::vector<float> x = {0.0f, -0.0f, 1.0f, -2.5f, inf, -inf, kNaN, 1e-40f, -1e-41f, 1.17549435e-38f,
                          std::numeric_limits<float>::max(), -std::numeric_limits<float>::max()};
  for (int i = 0; i < 3000; ++i) {
    const uint32_t hi = uint32_t(rng()) & 0xffff0000u;
    for (const uint32_t lo : {0x8000u, 0x7fffu, 0x8001u, uint32_t(rng()) & 0xffffu}) x.push_back(K::bits_float(hi | lo));
  }
  std::vector<K::bf16> want(x.size());
  K::cpu::cast(K::CastArgs<float, K::bf16>{x.data(), want.data(), x.size()});
  auto d_x = upload(x);
  auto d_y = poison_bf16(x.size());
  K::cuda::cast(K::CastArgs<float, K::bf16>{d_x.data(), d_y.data(), x.size()}, nullptr);
  const std::vector<K::bf16> got = download(d_y);
  // Round to nearest even on both sides: the same bits, except that NaN payloads may differ (NaN stays NaN).
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) {
      EXPECT_TRUE(std::isnan(K::to_float(got[i]))) << i;
    } else {
      ASSERT_EQ(got[i].bits, want[i].bits) << "float -> bf16 of " << x[i] << " (bits " << K::float_bits(x[i]) << ")";
    }
  }

  // bf16 -> float of every one of the 65536 bit patterns: exact (NaN patterns stay NaN).
  std::vector<K::bf16> all(65536);
  for (uint32_t u = 0; u < 65536; ++u) all[u].bits = uint16_t(u);
  std::vector<float> back_cpu(all.size());
  K::cpu::cast(K::CastArgs<K::bf16, float>{all.data(), back_cpu.data(), all.size()});
  auto d_all = upload(all);
  auto d_back = upload(poison(all.size()));
  K::cuda::cast(K::CastArgs<K::bf16, float>{d_all.data(), d_back.data(), all.size()}, nullptr);
  const auto back = download(d_back);
  for (uint32_t u = 0; u < 65536; ++u) {
    if (std::isnan(back_cpu[u])) {
      EXPECT_TRUE(std::isnan(back[u])) << u;
    } else {
      ASSERT_EQ(K::float_bits(back[u]), K::float_bits(back_cpu[u])) << "bf16 bits " << u;
    }
  }
}

TEST(CudaOps, AdamRefreshesBf16Copy) {
  REQUIRE_GPU();
  std::mt19937 rng(16);
  const size_t n = 100003;
  const auto grad = random_floats(n, rng);
  std::vector<float> p_cpu = random_floats(n, rng), m_cpu = random_floats(n, rng, -0.1f, 0.1f),
                     v_cpu = random_floats(n, rng, 0.0f, 0.01f);
  std::vector<K::bf16> copy_cpu(n);
  auto d_p = upload(p_cpu), d_m = upload(m_cpu), d_v = upload(v_cpu), d_g = upload(grad);
  auto d_copy = poison_bf16(n);
  K::AdamArgs<float> a;
  a.n = n, a.lr = 1e-3f, a.grad_scale = 0.5f, a.bias1 = 1.0 - std::pow(0.9, 3), a.bias2 = 1.0 - std::pow(0.98, 3);
  a.param = p_cpu.data(), a.grad = grad.data(), a.m = m_cpu.data(), a.v = v_cpu.data(), a.param_bf16 = copy_cpu.data();
  K::cpu::adam(a);
  a.param = d_p.data(), a.grad = d_g.data(), a.m = d_m.data(), a.v = d_v.data(), a.param_bf16 = d_copy.data();
  K::cuda::adam(a, nullptr);
  const auto p = download(d_p);
  const std::vector<K::bf16> copy = download(d_copy);
  EXPECT_TRUE(close("adam param", p, p_cpu, 1e-6));  // the fp32 Optimizer test's limit and reason
  // The copy is the device's own updated parameter rounded to nearest even: bit for bit.
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(copy[i].bits, K::to_bf16(p[i]).bits) << i;
  // Against the CPU's copy: the parameters differ by an FMA's ulp at most, so a rounding may flip near a tie:
  // one bf16 ulp of an element, at most 2^-7 of its magnitude, never more.
  std::vector<float> copy_f(n), copy_cpu_f(n);
  for (size_t i = 0; i < n; ++i) copy_f[i] = K::to_float(copy[i]), copy_cpu_f[i] = K::to_float(copy_cpu[i]);
  EXPECT_TRUE(close("adam param_bf16", copy_f, copy_cpu_f, std::ldexp(1.0, -7)));
}

// ---------------------------------------------------------------------------------------------------------
// bf16: embedding (bf16 out/dout, float32 table), GEMM, LayerNorm, residual + LayerNorm.
TEST(CudaOps, EmbeddingBf16) {
  REQUIRE_GPU();
  std::mt19937 rng(17);
  struct Case { int B, S, D, V; float p; bool add_positions, explicit_positions; };
  for (const Case c : {Case{3, 7, 37, 11, 0.1f, true, false}, Case{1, 1, 1, 1, 0.5f, false, false},
                       Case{2, 13, 515, 5, 0.3f, false, false}, Case{1, 29, 515, 7, 0.0f, true, true}}) {
    SCOPED_TRACE("B=" + std::to_string(c.B) + " S=" + std::to_string(c.S) + " D=" + std::to_string(c.D) +
                 " p=" + std::to_string(c.p));
    const int N = c.B * c.S;
    std::vector<int32_t> ids(N), positions(N);
    for (int n = 0; n < N; ++n) ids[n] = int32_t(rng() % c.V), positions[n] = int32_t(rng() % 60);
    const auto table = random_floats(size_t(c.V) * c.D, rng);
    const auto pair = random_pairs(c.B, rng);
    auto d_ids = upload(ids);
    auto d_pos = upload(positions);
    auto d_table = upload(table);
    auto d_pair = upload(pair);
    const K::DropoutMask m_cpu = test_mask(pair.data(), c.S, c.p, 3), m_gpu = test_mask(d_pair.data(), c.S, c.p, 3);
    const float scale = std::sqrt(float(c.D));

    std::vector<float> out_f(size_t(N) * c.D);  // naive: the CPU's float result, then rounded
    K::EmbedForward<float> f;
    f.N = N, f.D = c.D, f.V = c.V, f.seq_len = c.S, f.scale = scale, f.add_positions = c.add_positions;
    f.ids = ids.data(), f.table = table.data(), f.out = out_f.data(), f.drop = m_cpu;
    f.positions = c.explicit_positions ? positions.data() : nullptr;
    K::cpu::embed_forward(f);
    const auto naive = round_bf16(out_f);
    const auto table_d = as_doubles(table);
    std::vector<double> exact(out_f.size());
    K::EmbedForward<double> fd;
    fd.N = N, fd.D = c.D, fd.V = c.V, fd.seq_len = c.S, fd.scale = scale, fd.add_positions = c.add_positions;
    fd.ids = ids.data(), fd.table = table_d.data(), fd.out = exact.data(), fd.drop = m_cpu, fd.positions = f.positions;
    K::cpu::embed_forward(fd);

    auto d_out = poison_bf16(size_t(N) * c.D);
    K::EmbedForward<K::bf16, float> g;
    g.N = N, g.D = c.D, g.V = c.V, g.seq_len = c.S, g.scale = scale, g.add_positions = c.add_positions;
    g.ids = d_ids.data(), g.table = d_table.data(), g.out = d_out.data(), g.drop = m_gpu;
    g.positions = c.explicit_positions ? d_pos.data() : nullptr;
    K::cuda::embed_forward(g, nullptr);
    const auto out = download_bf16(d_out);
    if (!c.add_positions) {
      // The CPU's float arithmetic (uncontracted product, one division), rounded once: exact.
      EXPECT_TRUE(close("embed_forward bf16", out, naive, 0.0));
    } else {
      // The sinusoid's last-place differences (fp32 limit 1e-6) may flip a rounding.
      EXPECT_TRUE(within_twice_naive("embed_forward bf16", out, naive, exact, 1e-6));
    }
    EXPECT_TRUE(dropped_where_cpu_drops("embed_forward bf16", out, N, c.D, m_cpu));

    const auto dout = random_bf16(size_t(N) * c.D, rng);
    std::vector<float> dtable_cpu = random_floats(size_t(c.V) * c.D, rng);
    auto d_dout = upload_bf16(dout);
    auto d_dtable = upload(dtable_cpu);
    K::EmbedBackward<float> b;
    b.N = N, b.D = c.D, b.V = c.V, b.scale = scale, b.ids = ids.data(), b.dout = dout.data();
    b.dtable = dtable_cpu.data(), b.drop = m_cpu;
    K::cpu::embed_backward(b);
    K::EmbedBackward<K::bf16, float> gb;
    gb.N = N, gb.D = c.D, gb.V = c.V, gb.scale = scale, gb.ids = d_ids.data(), gb.dout = d_dout.data();
    gb.dtable = d_dtable.data(), gb.drop = m_gpu;
    K::cuda::embed_backward(gb, nullptr);
    // dout's bf16 values are exact floats and the table is float32: the CPU's float additions in its order.
    EXPECT_TRUE(close("embed_backward bf16", download(d_dtable), dtable_cpu, 0.0));
  }
}

namespace {
struct GemmCase {
  int m, n, k, pad;
  float beta;
  bool bias, relu, misalign_bias;
};
}  // namespace

// Activations: bf16 A, B, C and bias, float32 accumulation. The naive bf16 GEMM rounds the product (with
// beta C) to bf16 and adds the bias and ReLU in a second pass, rounding again, as an unfused bf16 pipeline
// would; cuBLASLt's epilogue rounds once, the fallback bias kernel (beta != 0, misaligned bias) twice.
TEST(CudaOps, GemmBf16) {
  REQUIRE_GPU();
  std::mt19937 rng(18);
  const GemmCase cases[] = {
      {37, 53, 67, 0, 0.0f, false, false, false}, {37, 53, 67, 3, 0.0f, true, false, false},
      {37, 53, 67, 0, 0.0f, true, true, false},   {33, 45, 19, 1, 0.5f, true, true, false},
      {17, 29, 41, 0, 0.0f, true, true, true},    {5, 7, 0, 0, 0.75f, true, false, false},
      {1, 1, 1, 0, 0.0f, false, true, false},     {3, 130, 1, 2, 1.0f, false, false, false},
      {64, 96, 128, 0, 0.0f, true, true, false},  // 16-byte aligned rows: the tensor-core kernels
  };
  for (const GemmCase& c : cases)
    for (int trans = 0; trans < 4; ++trans) {
      const bool ta = trans & 1, tb = trans & 2;
      SCOPED_TRACE("m=" + std::to_string(c.m) + " n=" + std::to_string(c.n) + " k=" + std::to_string(c.k) +
                   " pad=" + std::to_string(c.pad) + " trans_a=" + std::to_string(ta) + " trans_b=" +
                   std::to_string(tb) + " beta=" + std::to_string(c.beta));
      const int a_rows = ta ? c.k : c.m, a_cols = ta ? c.m : c.k;
      const int b_rows = tb ? c.n : c.k, b_cols = tb ? c.k : c.n;
      const int lda = std::max(1, a_cols + c.pad), ldb = std::max(1, b_cols + c.pad), ldc = c.n + c.pad;
      const auto A = random_bf16(size_t(a_rows) * lda, rng), Bm = random_bf16(size_t(b_rows) * ldb, rng);
      const auto bias_store = random_bf16(size_t(c.n) + 1, rng);
      const size_t bias_off = c.misalign_bias ? 1 : 0;
      const auto C0 = c.beta != 0.0f ? random_bf16(size_t(c.m) * ldc, rng) : poison(size_t(c.m) * ldc);

      // Exact: the double product of the bf16 values.
      const auto A_d = as_doubles(A), B_d = as_doubles(Bm), bias_d = as_doubles(bias_store);
      std::vector<double> exact = as_doubles(C0);
      K::GemmArgs<double> gd;
      gd.trans_a = ta, gd.trans_b = tb, gd.m = c.m, gd.n = c.n, gd.k = c.k, gd.lda = lda, gd.ldb = ldb, gd.ldc = ldc;
      gd.alpha = 0.8f, gd.beta = c.beta, gd.relu = c.relu, gd.a = A_d.data(), gd.b = B_d.data(), gd.c = exact.data();
      gd.bias = c.bias ? bias_d.data() + bias_off : nullptr;
      K::cpu::gemm(gd);
      // Naive bf16: float product rounded, then bias and ReLU rounded again.
      std::vector<float> naive = C0;
      K::GemmArgs<float> gf;
      gf.trans_a = ta, gf.trans_b = tb, gf.m = c.m, gf.n = c.n, gf.k = c.k, gf.lda = lda, gf.ldb = ldb, gf.ldc = ldc;
      gf.alpha = 0.8f, gf.beta = c.beta, gf.a = A.data(), gf.b = Bm.data(), gf.c = naive.data();
      K::cpu::gemm(gf);
      for (int r = 0; r < c.m; ++r)
        for (int col = 0; col < c.n; ++col) {
          float& x = naive[size_t(r) * ldc + col];
          x = round_bf16(x);
          if (c.bias) x = round_bf16(x + bias_store[bias_off + col]);
          if (c.relu) x = x > 0.0f ? x : 0.0f;
        }

      auto d_a = upload_bf16(A), d_b = upload_bf16(Bm), d_bias = upload_bf16(bias_store), d_c = upload_bf16(C0);
      K::GemmArgs<K::bf16> g;
      g.trans_a = ta, g.trans_b = tb, g.m = c.m, g.n = c.n, g.k = c.k, g.lda = lda, g.ldb = ldb, g.ldc = ldc;
      g.alpha = 0.8f, g.beta = c.beta, g.relu = c.relu, g.a = d_a.data(), g.b = d_b.data(), g.c = d_c.data();
      g.bias = c.bias ? d_bias.data() + bias_off : nullptr;
      K::cuda::gemm(g, nullptr);
      // Floor: the fp32 GEMM test's limit (float32 accumulation order over k <= 130). Padding columns of C are
      // never written: NaN against NaN, or C0's values where beta != 0.
      EXPECT_TRUE(within_twice_naive("gemm bf16", download_bf16(d_c), naive, exact, 2e-5));
    }
}

// Weight gradients: bf16 A, B accumulated (beta = 1) into float32 C; also a float32 bias epilogue.
TEST(CudaOps, GemmBf16FloatOut) {
  REQUIRE_GPU();
  std::mt19937 rng(19);
  const GemmCase cases[] = {
      {37, 53, 67, 0, 1.0f, false, false, false}, {33, 45, 19, 1, 1.0f, false, false, false},
      {1, 1, 1, 0, 1.0f, false, false, false},    {5, 7, 0, 0, 1.0f, false, false, false},
      {64, 40, 130, 0, 0.0f, true, true, false},  {64, 40, 130, 0, 1.0f, true, false, false},
  };
  for (const GemmCase& c : cases)
    for (int trans = 0; trans < 4; ++trans) {
      const bool ta = trans & 1, tb = trans & 2;
      SCOPED_TRACE("m=" + std::to_string(c.m) + " n=" + std::to_string(c.n) + " k=" + std::to_string(c.k) +
                   " trans_a=" + std::to_string(ta) + " trans_b=" + std::to_string(tb) + " beta=" + std::to_string(c.beta));
      const int a_rows = ta ? c.k : c.m, a_cols = ta ? c.m : c.k;
      const int b_rows = tb ? c.n : c.k, b_cols = tb ? c.k : c.n;
      const int lda = std::max(1, a_cols + c.pad), ldb = std::max(1, b_cols + c.pad), ldc = c.n + c.pad;
      const auto A = random_bf16(size_t(a_rows) * lda, rng), Bm = random_bf16(size_t(b_rows) * ldb, rng);
      const auto bias = random_floats(size_t(c.n), rng);
      std::vector<float> C_cpu = c.beta != 0.0f ? random_floats(size_t(c.m) * ldc, rng) : poison(size_t(c.m) * ldc);
      auto d_a = upload_bf16(A);
      auto d_b = upload_bf16(Bm);
      auto d_bias = upload(bias);
      auto d_c = upload(C_cpu);
      K::GemmArgs<float> gf;
      gf.trans_a = ta, gf.trans_b = tb, gf.m = c.m, gf.n = c.n, gf.k = c.k, gf.lda = lda, gf.ldb = ldb, gf.ldc = ldc;
      gf.alpha = 0.8f, gf.beta = c.beta, gf.relu = c.relu, gf.a = A.data(), gf.b = Bm.data(), gf.c = C_cpu.data();
      gf.bias = c.bias ? bias.data() : nullptr;
      K::cpu::gemm(gf);
      K::GemmArgs<K::bf16, float> g;
      g.trans_a = ta, g.trans_b = tb, g.m = c.m, g.n = c.n, g.k = c.k, g.lda = lda, g.ldb = ldb, g.ldc = ldc;
      g.alpha = 0.8f, g.beta = c.beta, g.relu = c.relu, g.a = d_a.data(), g.b = d_b.data(), g.c = d_c.data();
      g.bias = c.bias ? d_bias.data() : nullptr;
      K::cuda::gemm(g, nullptr);
      // The output is float32 and the inputs the same numbers on both sides (bf16 values, exact products in
      // float): only the float32 accumulation order differs, the fp32 GEMM test's limit and reason (k <= 130).
      EXPECT_TRUE(close("gemm bf16 -> fp32", download(d_c), C_cpu, 2e-5));
    }
}

TEST(CudaOps, LayerNormBf16) {
  REQUIRE_GPU();
  std::mt19937 rng(20);
  struct Case { int rows, cols; bool alias_dx; };
  for (const Case c : {Case{37, 333, false}, Case{1, 1, false}, Case{300, 515, true}, Case{5, 31, false}}) {
    SCOPED_TRACE("rows=" + std::to_string(c.rows) + " cols=" + std::to_string(c.cols));
    const size_t n = size_t(c.rows) * c.cols;
    const auto x = random_bf16(n, rng, -2.0f, 3.0f);
    const auto gamma = random_floats(c.cols, rng, 0.5f, 1.5f), beta = random_floats(c.cols, rng);
    const auto x_d = as_doubles(x), gamma_d = as_doubles(gamma), beta_d = as_doubles(beta);
    // Naive: the CPU's float LayerNorm of the bf16 values, y rounded; exact: the same in double.
    std::vector<float> y_f(n), mean_f(c.rows), rstd_f(c.rows);
    K::cpu::layer_norm_forward(K::LayerNormForward<float>{x.data(), gamma.data(), beta.data(), y_f.data(), mean_f.data(),
                                                          rstd_f.data(), c.rows, c.cols, 1e-5f});
    std::vector<double> y_d(n), mean_d(c.rows), rstd_d(c.rows);
    K::cpu::layer_norm_forward(K::LayerNormForward<double>{x_d.data(), gamma_d.data(), beta_d.data(), y_d.data(),
                                                           mean_d.data(), rstd_d.data(), c.rows, c.cols, 1e-5f});
    auto d_x = upload_bf16(x);
    auto d_gamma = upload(gamma);
    auto d_beta = upload(beta);
    auto d_y = poison_bf16(n);
    auto d_mean = upload(poison(c.rows));
    auto d_rstd = upload(poison(c.rows));
    K::cuda::layer_norm_forward(K::LayerNormForward<K::bf16, float>{d_x.data(), d_gamma.data(), d_beta.data(),
                                                                    d_y.data(), d_mean.data(), d_rstd.data(), c.rows,
                                                                    c.cols, 1e-5f}, nullptr);
    // Floor: the fp32 LayerNorm limit (float statistics over <= 515 columns).
    EXPECT_TRUE(within_twice_naive("layer_norm bf16 y", download_bf16(d_y), round_bf16(y_f), y_d, 1e-5));
    // The statistics are float32 of exactly the bf16 values: the fp32 test's limits and reasons.
    EXPECT_TRUE(close("layer_norm bf16 mean", download(d_mean), as_floats(mean_d), 1e-5));
    EXPECT_TRUE(close("layer_norm bf16 rstd", download(d_rstd), as_floats(rstd_d), 1e-5));

    // Backward from the CPU's float statistics on every side (they are inputs of the backward op).
    const auto dy = random_bf16(n, rng);
    const auto dgamma0 = random_floats(c.cols, rng), dbeta0 = random_floats(c.cols, rng);
    std::vector<float> dx_f(n), dgamma_f = dgamma0, dbeta_f = dbeta0;
    K::cpu::layer_norm_backward(K::LayerNormBackward<float>{dy.data(), x.data(), gamma.data(), mean_f.data(),
                                                            rstd_f.data(), dx_f.data(), dgamma_f.data(),
                                                            dbeta_f.data(), c.rows, c.cols});
    const auto dy_d = as_doubles(dy), mean_fd = as_doubles(mean_f), rstd_fd = as_doubles(rstd_f);
    std::vector<double> dx_d(n), dgamma_d = as_doubles(dgamma0), dbeta_d = as_doubles(dbeta0);
    K::cpu::layer_norm_backward(K::LayerNormBackward<double>{dy_d.data(), x_d.data(), gamma_d.data(), mean_fd.data(),
                                                             rstd_fd.data(), dx_d.data(), dgamma_d.data(),
                                                             dbeta_d.data(), c.rows, c.cols});
    auto d_dy = upload_bf16(dy);
    auto d_dx = poison_bf16(n);
    auto d_dgamma = upload(dgamma0);
    auto d_dbeta = upload(dbeta0);
    auto d_mean_f = upload(mean_f), d_rstd_f = upload(rstd_f);
    K::cuda::layer_norm_backward(K::LayerNormBackward<K::bf16, float>{d_dy.data(), d_x.data(), d_gamma.data(),
                                                                      d_mean_f.data(), d_rstd_f.data(),
                                                                      c.alias_dx ? d_dy.data() : d_dx.data(),
                                                                      d_dgamma.data(), d_dbeta.data(), c.rows,
                                                                      c.cols}, nullptr);
    // Floor: the fp32 LayerNorm dx limit (cancellation of two float row means).
    EXPECT_TRUE(within_twice_naive("layer_norm bf16 dx", download_bf16(c.alias_dx ? d_dy : d_dx), round_bf16(dx_f),
                                   dx_d, 2e-5));
    // Float32 outputs from the same numbers: column sums in another order (the fp32 test's limits).
    EXPECT_TRUE(close("layer_norm bf16 dgamma", download(d_dgamma), dgamma_f, 1e-5));
    EXPECT_TRUE(close("layer_norm bf16 dbeta", download(d_dbeta), dbeta_f, 1e-5));
  }
}

// Naive bf16 here is the unfused bf16 composition: dropout(f) rounded, x + f' rounded (s), LayerNorm of s with
// y rounded; backward dx rounded, then df = dropout(dx) rounded. The fused forward rounds s once.
TEST(CudaOps, ResidualNormBf16) {
  REQUIRE_GPU();
  std::mt19937 rng(21);
  for (const ResidualCase& c : kResidualCases) {
    SCOPED_TRACE(residual_trace(c));
    const int rows = c.B * c.T;
    const size_t n = size_t(rows) * c.cols;
    const auto x = random_bf16(n, rng, -2.0f, 2.0f), f = random_bf16(n, rng, -2.0f, 2.0f);
    const auto gamma = random_floats(c.cols, rng, 0.5f, 1.5f), beta = random_floats(c.cols, rng);
    const auto pair = random_pairs(c.B, rng);
    auto d_pair = upload(pair);
    const K::DropoutMask m_cpu = test_mask(pair.data(), c.T, c.p, 9), m_gpu = test_mask(d_pair.data(), c.T, c.p, 9);
    const auto x_d = as_doubles(x), f_d = as_doubles(f), gamma_d = as_doubles(gamma), beta_d = as_doubles(beta);

    // Exact.
    std::vector<double> s_d(n), y_d(n), mean_d(rows), rstd_d(rows);
    K::ResidualNormForward<double> fd;
    fd.rows = rows, fd.cols = c.cols, fd.drop = m_cpu, fd.x = x_d.data(), fd.f = f_d.data(), fd.gamma = gamma_d.data();
    fd.beta = beta_d.data(), fd.s = s_d.data(), fd.y = y_d.data(), fd.mean = mean_d.data(), fd.rstd = rstd_d.data();
    K::cpu::residual_norm_forward(fd);
    // Naive.
    std::vector<float> f_n(n), s_n(n), y_n(n), mean_n(rows), rstd_n(rows);
    K::DropoutArgs<float> dr;
    static_cast<K::DropoutMask&>(dr) = m_cpu;
    dr.rows = rows, dr.cols = c.cols, dr.x = f.data(), dr.y = f_n.data();
    K::cpu::dropout_forward(dr);
    for (size_t i = 0; i < n; ++i) s_n[i] = round_bf16(x[i] + round_bf16(f_n[i]));
    K::cpu::layer_norm_forward(K::LayerNormForward<float>{s_n.data(), gamma.data(), beta.data(), y_n.data(),
                                                          mean_n.data(), rstd_n.data(), rows, c.cols, 1e-5f});
    y_n = round_bf16(y_n);
    // CUDA.
    auto d_x = upload_bf16(x);
    auto d_f = upload_bf16(f);
    auto d_gamma = upload(gamma);
    auto d_beta = upload(beta);
    auto d_s = poison_bf16(n);
    auto d_y = poison_bf16(n);
    auto d_mean = upload(poison(rows));
    auto d_rstd = upload(poison(rows));
    K::ResidualNormForward<K::bf16, float> fw;
    fw.rows = rows, fw.cols = c.cols, fw.drop = m_gpu, fw.x = d_x.data(), fw.f = d_f.data(), fw.gamma = d_gamma.data();
    fw.beta = d_beta.data(), fw.s = d_s.data(), fw.y = d_y.data(), fw.mean = d_mean.data(), fw.rstd = d_rstd.data();
    K::cuda::residual_norm_forward(fw, nullptr);
    const auto s = download_bf16(d_s);
    // Floor for s: the float32 rounding of the sum before its bf16 rounding (2^-24 relative), with margin.
    EXPECT_TRUE(within_twice_naive("residual_norm bf16 s", s, s_n, s_d, 1e-6));
    EXPECT_TRUE(dropped_where_cpu_drops("residual_norm bf16 s", s, rows, c.cols, m_cpu, x));  // dropped: s == x
    // Floors: the fp32 LayerNorm limits (float statistics over <= 515 columns).
    EXPECT_TRUE(within_twice_naive("residual_norm bf16 y", download_bf16(d_y), y_n, y_d, 1e-5));
    EXPECT_TRUE(within_twice_naive("residual_norm bf16 mean", download(d_mean), mean_n, mean_d, 1e-5));
    EXPECT_TRUE(within_twice_naive("residual_norm bf16 rstd", download(d_rstd), rstd_n, rstd_d, 1e-5));

    // Backward from the naive s and statistics on every side (inputs of the backward op).
    const auto dy = random_bf16(n, rng);
    const auto dgamma0 = random_floats(c.cols, rng), dbeta0 = random_floats(c.cols, rng);
    const auto dy_d = as_doubles(dy), s_nd = as_doubles(s_n), mean_nd = as_doubles(mean_n), rstd_nd = as_doubles(rstd_n);
    std::vector<double> dx_d(n), df_d(n), dgamma_d = as_doubles(dgamma0), dbeta_d = as_doubles(dbeta0);
    K::ResidualNormBackward<double> bd;
    bd.rows = rows, bd.cols = c.cols, bd.drop = m_cpu, bd.dy = dy_d.data(), bd.s = s_nd.data(), bd.gamma = gamma_d.data();
    bd.mean = mean_nd.data(), bd.rstd = rstd_nd.data(), bd.dx = dx_d.data(), bd.df = df_d.data();
    bd.dgamma = dgamma_d.data(), bd.dbeta = dbeta_d.data();
    K::cpu::residual_norm_backward(bd);
    std::vector<float> dx_n(n), df_n(n), dgamma_f = dgamma0, dbeta_f = dbeta0;
    K::cpu::layer_norm_backward(K::LayerNormBackward<float>{dy.data(), s_n.data(), gamma.data(), mean_n.data(),
                                                            rstd_n.data(), dx_n.data(), dgamma_f.data(),
                                                            dbeta_f.data(), rows, c.cols});
    dx_n = round_bf16(dx_n);
    dr.x = dx_n.data(), dr.y = df_n.data();
    K::cpu::dropout_backward(dr);
    df_n = round_bf16(df_n);

    auto d_dy = upload_bf16(dy), d_dx = poison_bf16(n), d_df = poison_bf16(n);
    auto d_s_n = upload_bf16(s_n);
    auto d_mean_n = upload(mean_n);
    auto d_rstd_n = upload(rstd_n);
    auto d_dgamma = upload(dgamma0), d_dbeta = upload(dbeta0);
    K::ResidualNormBackward<K::bf16, float> bw;
    bw.rows = rows, bw.cols = c.cols, bw.drop = m_gpu, bw.dy = d_dy.data(), bw.s = d_s_n.data();
    bw.gamma = d_gamma.data(), bw.mean = d_mean_n.data(), bw.rstd = d_rstd_n.data();
    bw.dx = c.alias_dx ? d_dy.data() : d_dx.data(), bw.df = d_df.data(), bw.dgamma = d_dgamma.data();
    bw.dbeta = d_dbeta.data();
    K::cuda::residual_norm_backward(bw, nullptr);
    // Floors: the fp32 LayerNorm dx limit (df is dx through one division).
    EXPECT_TRUE(within_twice_naive("residual_norm bf16 dx", download_bf16(c.alias_dx ? d_dy : d_dx), dx_n, dx_d, 2e-5));
    const auto df = download_bf16(d_df);
    EXPECT_TRUE(within_twice_naive("residual_norm bf16 df", df, df_n, df_d, 2e-5));
    EXPECT_TRUE(dropped_where_cpu_drops("residual_norm bf16 df", df, rows, c.cols, m_cpu));
    EXPECT_TRUE(close("residual_norm bf16 dgamma", download(d_dgamma), dgamma_f, 1e-5));  // float32, as LayerNormBf16
    EXPECT_TRUE(close("residual_norm bf16 dbeta", download(d_dbeta), dbeta_f, 1e-5));
  }
}

// ---------------------------------------------------------------------------------------------------------
// bf16 attention against a double reference with rounding hooks.
namespace {

// q, k, v (and dq, dk, dv) live where run_attention_case puts them (attention_layout).

// The attention of ops/attention.hpp in double, with R applied wherever a naive bf16 pipeline stores a tensor:
// scores, probabilities, dropped probabilities, the output; in backward dout . v before and after the dropout
// map, ds (scale included), dq, dk, dv. R = identity gives the exact answer for the given inputs. The dropout
// mask and the float scale are the kernels' (seed 99, step 5, site as in run_attention_case). Writes out
// [B, Tq, H * Dh], lse [B, H, Tq] (or null) and the channels of dq (q's addressing), dk, dv (k's and v's).
template <class Round>
void reference_attention(const AttnCase& c, const float* q, const float* k, const float* v, const float* dout,
                         const int64_t* pair, Round R, double* out, double* lse, double* dq, double* dk, double* dv) {
  const AttnLayout L = attention_layout(c);
  const int D = c.H * c.Dh;
  const double scale = double(1.0f / std::sqrt(float(c.Dh)));
  const double inv_keep = 1.0 / (1.0 - double(c.p_drop));
  const uint32_t site = K::dropout_site(1, 2, K::DropoutKind::SelfAttnProbs);
  auto qi = [&](int b, int t, int h) { return (size_t(b) * c.Tq + t) * L.q_width + size_t(h) * c.Dh; };
  auto ki = [&](int b, int j, int h) { return (size_t(b) * c.Tk + j) * L.kv_width + size_t(h) * c.Dh; };
  auto oi = [&](int b, int t, int h) { return size_t(b) * c.Tq * D + size_t(t) * D + size_t(h) * c.Dh; };
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.H; ++h) {
      const int k_len = c.k_len.empty() ? c.Tk : c.k_len[b];
      std::vector<double> gk(size_t(c.Tk) * c.Dh, 0.0), gv(size_t(c.Tk) * c.Dh, 0.0);
      for (int t = 0; t < c.Tq; ++t) {
        const int n_valid = c.causal ? std::min(k_len, t + 1) : k_len;
        const float* qt = q + qi(b, t, h);
        const float* go = dout + oi(b, t, h);
        std::vector<double> p(n_valid), pk(n_valid), fac(n_valid, 1.0), dp(n_valid), ds(n_valid);
        double max = -INFINITY;
        for (int j = 0; j < n_valid; ++j) {
          const float* kj = k + L.k_off + ki(b, j, h);
          double dot = 0.0;
          for (int d = 0; d < c.Dh; ++d) dot += double(qt[d]) * kj[d];
          p[j] = R(scale * dot);
          max = std::max(max, p[j]);
        }
        double sum = 0.0;
        for (int j = 0; j < n_valid; ++j) sum += std::exp(p[j] - max);
        for (int j = 0; j < n_valid; ++j) p[j] = R(std::exp(p[j] - max) / sum);
        if (lse) lse[(size_t(b) * c.H + h) * c.Tq + t] = n_valid > 0 ? max + std::log(sum) : -INFINITY;
        if (c.p_drop > 0.0f) {
          const uint64_t key = K::dropout_row_key(99, 5, uint64_t(pair[b]), uint32_t(t), site);
          for (int j = 0; j < n_valid; ++j)
            fac[j] = K::dropout_keep(key, uint32_t(h) * uint32_t(c.Tk) + uint32_t(j), c.p_drop) ? inv_keep : 0.0;
        }
        for (int j = 0; j < n_valid; ++j) pk[j] = R(p[j] * fac[j]);
        for (int d = 0; d < c.Dh; ++d) {
          double acc = 0.0;
          for (int j = 0; j < n_valid; ++j) acc += pk[j] * v[L.v_off + ki(b, j, h) + d];
          out[oi(b, t, h) + d] = R(acc);
        }
        double sigma = 0.0;
        for (int j = 0; j < n_valid; ++j) {
          const float* vj = v + L.v_off + ki(b, j, h);
          double dot = 0.0;
          for (int d = 0; d < c.Dh; ++d) dot += double(go[d]) * vj[d];
          dp[j] = R(R(dot) * fac[j]);
          sigma += p[j] * dp[j];
        }
        for (int j = 0; j < n_valid; ++j) ds[j] = R(scale * p[j] * (dp[j] - sigma));
        for (int d = 0; d < c.Dh; ++d) {
          double acc = 0.0;
          for (int j = 0; j < n_valid; ++j) acc += ds[j] * k[L.k_off + ki(b, j, h) + d];
          dq[qi(b, t, h) + d] = R(acc);
        }
        for (int j = 0; j < n_valid; ++j)
          for (int d = 0; d < c.Dh; ++d) {
            gk[size_t(j) * c.Dh + d] += ds[j] * qt[d];
            gv[size_t(j) * c.Dh + d] += pk[j] * go[d];
          }
      }
      for (int j = 0; j < c.Tk; ++j)
        for (int d = 0; d < c.Dh; ++d) {
          dk[L.k_off + ki(b, j, h) + d] = R(gk[size_t(j) * c.Dh + d]);
          dv[L.v_off + ki(b, j, h) + d] = R(gv[size_t(j) * c.Dh + d]);
        }
    }
}

const auto kExact = [](double x) { return x; };
const auto kNaiveBf16 = [](double x) { return double(round_bf16(float(x))); };

// Inputs of one bf16 attention case (bf16 values held in floats) and the buffers of its gradients.
struct AttnInputs {
  std::vector<float> q, k, v, dout;
  std::vector<int64_t> pair;
  size_t q_elems, kv_elems, out_elems, stat_elems;
};

AttnInputs attention_inputs(const AttnCase& c, std::mt19937& rng) {
  const AttnLayout L = attention_layout(c);
  AttnInputs in;
  in.q_elems = size_t(c.B) * c.Tq * L.q_width, in.kv_elems = size_t(c.B) * c.Tk * L.kv_width;
  in.out_elems = size_t(c.B) * c.Tq * c.H * c.Dh, in.stat_elems = size_t(c.B) * c.H * c.Tq;
  in.q = random_bf16(in.q_elems, rng, -2.0f, 2.0f);
  in.k = L.k_shares_q ? in.q : random_bf16(in.kv_elems, rng, -2.0f, 2.0f);
  in.v = L.v_shares_k ? in.k : random_bf16(in.kv_elems, rng);
  in.dout = random_bf16(in.out_elems, rng);
  in.pair = random_pairs(c.B, rng);
  return in;
}

// The reference's outputs; the gradients in the layout's buffers (g[0] holds dq; g[1] dk and g[2] dv unless
// they share another's buffer, then empty). Columns no head owns stay NaN.
struct AttnOutputs {
  std::vector<double> out, lse, g[3];
};

template <class Round>
AttnOutputs reference_outputs(const AttnCase& c, const AttnInputs& in, Round R) {
  const AttnLayout L = attention_layout(c);
  const auto sizes = attention_buffer_sizes(L, in.q_elems, in.kv_elems);
  AttnOutputs o;
  o.out.assign(in.out_elems, NAN), o.lse.assign(in.stat_elems, NAN);
  for (int i = 0; i < 3; ++i) o.g[i].assign(sizes[i], NAN);
  reference_attention(c, in.q.data(), in.k.data(), in.v.data(), in.dout.data(), in.pair.data(), R, o.out.data(),
                      o.lse.data(), o.g[0].data(), o.g[L.dk_buffer()].data(), o.g[L.dv_buffer()].data());
  return o;
}

}  // namespace

// The reference with R = identity is the CPU op in double (checks the harness itself; runs without a GPU).
TEST(CudaOpsHarness, ReferenceAttentionIsTheCpuOpInDouble) {
  std::mt19937 rng(22);
  for (const AttnCase& c : attention_cases()) {
    SCOPED_TRACE(attention_trace(c));
    const AttnInputs in = attention_inputs(c, rng);
    const AttnOutputs ref = reference_outputs(c, in, kExact);
    const AttnLayout L = attention_layout(c);
    K::AttentionShape<double> sh = attention_geometry<double>(c);
    sh.k_len = c.k_len.empty() ? nullptr : c.k_len.data(), sh.pair = in.pair.data();
    const auto q = as_doubles(in.q), k = as_doubles(in.k), v = as_doubles(in.v), dout = as_doubles(in.dout);
    std::vector<double> out(in.out_elems), probs(size_t(c.B) * c.H * c.Tq * c.Tk);
    K::AttentionForward<double> f;
    f.shape = sh, f.q = q.data(), f.k = k.data() + L.k_off, f.v = v.data() + L.v_off, f.out = out.data();
    f.saved = probs.data();
    K::cpu::attention_forward(f);
    std::vector<double> g[3];
    for (int i = 0; i < 3; ++i) g[i].assign(ref.g[i].size(), NAN);
    K::AttentionBackward<double> b;
    b.shape = sh, b.dout = dout.data(), b.q = q.data(), b.k = k.data() + L.k_off, b.v = v.data() + L.v_off;
    b.out = out.data(), b.saved = probs.data(), b.dq = g[0].data(), b.dk = g[L.dk_buffer()].data() + L.k_off;
    b.dv = g[L.dv_buffer()].data() + L.v_off;
    K::cpu::attention_backward(b);
    // Both in double, summed in different orders: ~1e-16 relative per term. NaN where no head owns a column.
    EXPECT_LE(normalised_error(as_floats(ref.out), out), 1e-6);  // via float: the comparison's own rounding
    auto max_abs_diff = [](const std::vector<double>& a, const std::vector<double>& b) {
      double m = 0.0;
      for (size_t i = 0; i < a.size(); ++i) {
        if (std::isnan(a[i]) != std::isnan(b[i])) return double(INFINITY);
        if (!std::isnan(a[i])) m = std::max(m, std::fabs(a[i] - b[i]));
      }
      return m;
    };
    EXPECT_LE(max_abs_diff(ref.out, out), 1e-12);
    for (int i = 0; i < 3; ++i) EXPECT_LE(max_abs_diff(ref.g[i], g[i]), 1e-12) << "gradient buffer " << i;
    // The naive bf16 reference is a bf16-level approximation of it: errors of a few bf16 half-ulps (2^-9), and
    // not none (except with one key, where out = v is exact).
    const AttnOutputs naive = reference_outputs(c, in, kNaiveBf16);
    const double e_out = normalised_error(as_floats(naive.out), ref.out);
    const double e_dq = normalised_error(as_floats(naive.g[0]), ref.g[0]);
    if (c.Tk > 1) {
      EXPECT_GT(e_out, 0.0);
    }
    EXPECT_LT(e_out, 0.05);
    EXPECT_LT(e_dq, 0.1);
  }
}

namespace {
// Two bf16 results of the same float computation, up to FMA contraction: each element equal, or one bf16 ulp
// apart (a last-bit difference in float flips a rounding), or within `floor` of the largest |b| (elements that
// are small through cancellation, where a float-level difference exceeds their own ulp). NaN where NaN.
::testing::AssertionResult bf16_agree(const std::string& what, const std::vector<float>& a,
                                      const std::vector<float>& b, double floor) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
  double max_b = 0.0;
  for (float x : b)
    if (std::isfinite(x)) max_b = std::max(max_b, std::fabs(double(x)));
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) {
      if (std::isnan(a[i]) != std::isnan(b[i]))
        return ::testing::AssertionFailure() << what << ": NaN mismatch at " << i << ": " << a[i] << " vs " << b[i];
      continue;
    }
    int e = 0;
    std::frexp(std::max(std::fabs(a[i]), std::fabs(b[i])), &e);
    const double ulp = std::ldexp(1.0, e - 8);  // bf16: 8 significant bits
    if (std::fabs(double(a[i]) - double(b[i])) > std::max(ulp, floor * max_b))
      return ::testing::AssertionFailure() << what << ": element " << i << ": " << a[i] << " vs " << b[i];
  }
  return ::testing::AssertionSuccess();
}
}  // namespace

TEST(CudaOps, AttentionBf16) {
  REQUIRE_GPU();
  using Path = K::cuda::AttentionBackwardPath;
  std::mt19937 rng(23);
  for (const AttnCase& c : attention_cases()) {
    SCOPED_TRACE(attention_trace(c));
    const AttnInputs in = attention_inputs(c, rng);
    const AttnOutputs exact = reference_outputs(c, in, kExact), naive = reference_outputs(c, in, kNaiveBf16);
    const AttnLayout L = attention_layout(c);

    auto d_q = upload_bf16(in.q), d_k = upload_bf16(in.k), d_v = upload_bf16(in.v), d_dout = upload_bf16(in.dout);
    auto d_klen = upload(c.k_len);
    auto d_pair = upload(in.pair);
    K::AttentionShape<K::bf16> sh = attention_geometry<K::bf16>(c);
    sh.k_len = c.k_len.empty() ? nullptr : d_klen.data(), sh.pair = d_pair.data();
    auto d_out = poison_bf16(in.out_elems);
    auto d_lse = upload(poison(in.stat_elems));
    K::AttentionForward<K::bf16> f;
    f.shape = sh, f.q = d_q.data(), f.k = d_k.data() + L.k_off, f.v = d_v.data() + L.v_off, f.out = d_out.data();
    f.saved = d_lse.data();
    K::cuda::attention_forward(f, nullptr);
    // Floors: the fp32 attention limits (online softmax against two-pass, float arithmetic).
    EXPECT_TRUE(within_twice_naive("attention bf16 out", download_bf16(d_out), as_floats(naive.out), exact.out, 1e-5));
    // lse is float32 of exactly representable scores (bf16 products are exact in float): float-level error.
    EXPECT_TRUE(close("attention bf16 lse", download(d_lse), as_floats(exact.lse), 1e-5));

    const char* names[3] = {"attention bf16 dq", "attention bf16 dk", "attention bf16 dv"};
    std::vector<float> g_path[3][3];  // [Tiled, PerHead, Auto][buffer]
    bool ran[3] = {false, false, false};
    for (const Path path : attention_paths(c)) {
      const int pi = path == Path::Tiled ? 0 : path == Path::PerHead ? 1 : 2;
      SCOPED_TRACE(path_name(path));
      K::DeviceArray<K::bf16> d_g[3];
      for (int i = 0; i < 3; ++i) d_g[i] = poison_bf16(exact.g[i].size());
      K::AttentionBackward<K::bf16> b;
      b.shape = sh, b.dout = d_dout.data(), b.q = d_q.data(), b.k = d_k.data() + L.k_off, b.v = d_v.data() + L.v_off;
      b.out = d_out.data(), b.saved = d_lse.data(), b.dq = d_g[0].data(), b.dk = d_g[L.dk_buffer()].data() + L.k_off;
      b.dv = d_g[L.dv_buffer()].data() + L.v_off;
      K::cuda::attention_backward(b, path, nullptr);
      ran[pi] = true;
      for (int i = 0; i < 3; ++i) {
        if (exact.g[i].empty()) continue;
        g_path[pi][i] = download_bf16(d_g[i]);
        // Floors: the fp32 attention backward limit (ds = p (dp - delta) cancels).
        EXPECT_TRUE(within_twice_naive(names[i], g_path[pi][i], as_floats(naive.g[i]), exact.g[i], 1e-4));
      }
      EXPECT_TRUE(padded_gradients_zero(c, g_path[pi]));
    }
    for (int i = 0; i < 3; ++i) {
      if (exact.g[i].empty()) continue;
      // As in the fp32 test, the paths agree up to FMA contraction (bit-identical under the emulator); floor:
      // the fp32 test's limit for the two paths.
      if (ran[1]) {
        EXPECT_TRUE(bf16_agree(std::string(names[i]) + " per-head vs tiled", g_path[1][i], g_path[0][i], 1e-5));
      }
      EXPECT_TRUE(bitwise_equal(g_path[2][i], g_path[ran[1] ? 1 : 0][i])) << names[i] << ": auto";
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
TEST(CudaOps, CrossEntropyBf16) {
  REQUIRE_GPU();
  std::mt19937 rng(24);
  struct Case { int N, V; bool in_place, with_grad; };
  for (const Case c : {Case{9, 5003, false, true}, Case{1, 1, false, true}, Case{7, 37, true, true},
                       Case{4, 1031, false, false}}) {
    SCOPED_TRACE("N=" + std::to_string(c.N) + " V=" + std::to_string(c.V));
    const int pad_id = c.V > 1 ? 0 : -1;
    // bf16 logits repeat values often (256 per octave), so the argmax meets ties: first maximum on both sides.
    const auto logits = random_bf16(size_t(c.N) * c.V, rng, -4.0f, 4.0f);
    std::vector<int32_t> targets(c.N);
    for (int n = 0; n < c.N; ++n) targets[n] = int32_t(rng() % c.V);
    if (c.N > 2) targets[1] = pad_id, targets[c.N - 1] = pad_id;
    if (c.V > 1) targets[0] = 1 + int32_t(rng() % (c.V - 1));
    const float smoothing = c.V > 1 ? 0.1f : 0.0f, grad_scale = 0.37f;

    const auto logits_d = as_doubles(logits);
    std::vector<double> dl_d(logits.size());
    K::CrossEntropyArgs<double> ad;
    ad.N = c.N, ad.V = c.V, ad.pad_id = pad_id, ad.smoothing = smoothing, ad.grad_scale = grad_scale;
    ad.logits = logits_d.data(), ad.dlogits = dl_d.data(), ad.targets = targets.data();
    const auto s_exact = K::cpu::cross_entropy(ad);
    std::vector<float> dl_f(logits.size());
    K::CrossEntropyArgs<float> af;
    af.N = c.N, af.V = c.V, af.pad_id = pad_id, af.smoothing = smoothing, af.grad_scale = grad_scale;
    af.logits = logits.data(), af.dlogits = dl_f.data(), af.targets = targets.data();
    K::cpu::cross_entropy(af);

    auto d_logits = upload_bf16(logits), d_dl = poison_bf16(logits.size());
    auto d_t = upload(targets);
    K::CrossEntropyArgs<K::bf16> a;
    a.N = c.N, a.V = c.V, a.pad_id = pad_id, a.smoothing = smoothing, a.grad_scale = grad_scale;
    a.logits = d_logits.data(), a.targets = d_t.data();
    a.dlogits = !c.with_grad ? nullptr : (c.in_place ? d_logits.data() : d_dl.data());
    const auto s_gpu = K::cuda::cross_entropy(a, nullptr);
    // The logits are exact in float; float exp per element, double sums (the fp32 test's limits and reasons).
    EXPECT_TRUE(close_scalar("loss", s_gpu.loss, s_exact.loss, 1e-5));
    EXPECT_TRUE(close_scalar("nll", s_gpu.nll, s_exact.nll, 1e-5));
    EXPECT_EQ(s_gpu.tokens, s_exact.tokens);
    EXPECT_EQ(s_gpu.correct, s_exact.correct);
    if (c.with_grad) {
      // Naive: the float gradient rounded once. Floor: the fp32 dlogits limit (float softmax from a double lse).
      EXPECT_TRUE(within_twice_naive("dlogits bf16", download_bf16(c.in_place ? d_logits : d_dl), round_bf16(dl_f),
                                     dl_d, 1e-5));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Determinism of the new reducing ops: the same bits when run twice.
TEST(CudaOps, DeterministicRepeatsBf16AndFused) {
  REQUIRE_GPU();
  std::mt19937 rng(25);
  {
    const AttnCase c{2, 35, 35, 4, 33, {35, 20}, true, 0.2f, QkvLayout::Separate};
    const AttnInputs in = attention_inputs(c, rng);
    auto d_q = upload_bf16(in.q), d_k = upload_bf16(in.k), d_v = upload_bf16(in.v), d_dout = upload_bf16(in.dout);
    auto d_klen = upload(c.k_len);
    auto d_pair = upload(in.pair);
    K::AttentionShape<K::bf16> sh = attention_geometry<K::bf16>(c);
    sh.k_len = d_klen.data(), sh.pair = d_pair.data();
    sh.scale = 0.17f, sh.seed = 3, sh.step = 4, sh.site = 5;
    auto d_out = poison_bf16(in.out_elems);
    auto d_lse = upload(poison(in.stat_elems));
    K::AttentionForward<K::bf16> f;
    f.shape = sh, f.q = d_q.data(), f.k = d_k.data(), f.v = d_v.data(), f.out = d_out.data(), f.saved = d_lse.data();
    K::cuda::attention_forward(f, nullptr);
    // Both backward paths, each run twice.
    std::vector<float> runs[2][3];
    for (const auto path : {K::cuda::AttentionBackwardPath::PerHead, K::cuda::AttentionBackwardPath::Tiled}) {
      for (auto& r : runs) {
        auto d_dq = poison_bf16(in.q_elems), d_dk = poison_bf16(in.kv_elems), d_dv = poison_bf16(in.kv_elems);
        K::AttentionBackward<K::bf16> b;
        b.shape = sh, b.dout = d_dout.data(), b.q = d_q.data(), b.k = d_k.data(), b.v = d_v.data();
        b.out = d_out.data(), b.saved = d_lse.data(), b.dq = d_dq.data(), b.dk = d_dk.data(), b.dv = d_dv.data();
        K::cuda::attention_backward(b, path, nullptr);
        r[0] = download_bf16(d_dq), r[1] = download_bf16(d_dk), r[2] = download_bf16(d_dv);
      }
      for (int i = 0; i < 3; ++i)
        EXPECT_TRUE(bitwise_equal(runs[0][i], runs[1][i])) << "attention bf16 gradient " << i << " " << path_name(path);
    }
  }
  {
    const int rows = 3000, cols = 96;
    const std::vector<int64_t> pair(rows / 30, 7);
    auto d_pair = upload(pair);
    auto d_dy = upload_bf16(random_bf16(size_t(rows) * cols, rng)), d_s = upload_bf16(random_bf16(size_t(rows) * cols, rng));
    auto d_gamma = upload(random_floats(cols, rng)), d_mean = upload(random_floats(rows, rng));
    auto d_rstd = upload(random_floats(rows, rng, 0.5f, 2.0f));
    std::vector<float> runs[2][2];
    for (auto& r : runs) {
      K::DeviceArray<float> dg(Device::CUDA, cols), db(Device::CUDA, cols);
      auto d_dx = poison_bf16(size_t(rows) * cols), d_df = poison_bf16(size_t(rows) * cols);
      K::ResidualNormBackward<K::bf16, float> bw;
      bw.rows = rows, bw.cols = cols, bw.drop = test_mask(d_pair.data(), 30, 0.1f, 1), bw.dy = d_dy.data();
      bw.s = d_s.data(), bw.gamma = d_gamma.data(), bw.mean = d_mean.data(), bw.rstd = d_rstd.data();
      bw.dx = d_dx.data(), bw.df = d_df.data(), bw.dgamma = dg.data(), bw.dbeta = db.data();
      K::cuda::residual_norm_backward(bw, nullptr);
      r[0] = download(dg), r[1] = download(db);
    }
    EXPECT_TRUE(bitwise_equal(runs[0][0], runs[1][0])) << "residual_norm dgamma";
    EXPECT_TRUE(bitwise_equal(runs[0][1], runs[1][1])) << "residual_norm dbeta";
  }
}
