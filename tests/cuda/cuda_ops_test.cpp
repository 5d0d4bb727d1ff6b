// Cross-backend harness (in the manner of ggml's test-backend-ops): every CUDA op against the CPU reference.
//
// Each case draws fresh random inputs at sizes that are not multiples of any block size (one sentence,
// length 1, fully padded rows, odd widths), poisons every output with NaN on both backends before running,
// checks non-finite parity first and then the normalised maximum error
//     max_i |cuda_i - cpu_i| / max_i |cpu_i|          (1 when the reference is all zero)
// against a per-op limit whose reason is stated beside it. Accumulated outputs (+=) start from the same
// random values on both sides. No fraction of elements is ever allowed to fail.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/dropout_hash.hpp"
#include "kernels/memory.hpp"
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

TEST(CudaOps, EmbeddingRejectsBadId) {
  REQUIRE_GPU();
  std::vector<int32_t> ids = {0, 3, 9, 1};
  auto d_ids = upload(ids);
  auto d_table = upload(std::vector<float>(4 * 3, 1.0f));
  auto d_out = upload(poison(4 * 3));
  K::EmbedForward<float> f;
  f.N = 4, f.D = 3, f.V = 4, f.seq_len = 4, f.ids = d_ids.data(), f.table = d_table.data(), f.out = d_out.data();
  EXPECT_THROW(K::cuda::embed_forward(f, nullptr), aiayn::Error);
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

struct AttnCase {
  int B, Tq, Tk, H, Dh;
  std::vector<int32_t> k_len;  // empty: no key padding (null k_len)
  bool causal;
  float p_drop;
  bool fused;  // q, k, v (and dq, dk, dv) as column slices of one [rows, 3 * H * Dh] buffer (self-attention)
};

void run_attention_case(const AttnCase& c, std::mt19937& rng) {
  const int D = c.H * c.Dh;
  const int width = c.fused ? 3 * D : D;
  // q [B, Tq, width], k and v [B, Tk, width]; in the fused layout all three live in one buffer (Tq == Tk).
  const size_t q_elems = size_t(c.B) * c.Tq * width, kv_elems = size_t(c.B) * c.Tk * width;
  const auto qb = random_floats(q_elems, rng, -2.0f, 2.0f);
  const auto kb = c.fused ? qb : random_floats(kv_elems, rng, -2.0f, 2.0f);
  const auto vb = c.fused ? qb : random_floats(kv_elems, rng);
  std::vector<int64_t> pair(c.B);
  for (auto& p : pair) p = int64_t(rng() % 1000000);

  K::AttentionShape<float> sh;
  sh.B = c.B, sh.Tq = c.Tq, sh.Tk = c.Tk, sh.H = c.H, sh.Dh = c.Dh;
  sh.q_bstride = long(c.Tq) * width, sh.kv_bstride = long(c.Tk) * width, sh.o_bstride = long(c.Tq) * D;
  sh.q_stride = width, sh.kv_stride = width, sh.o_stride = D;
  sh.causal = c.causal, sh.scale = 1.0f / std::sqrt(float(c.Dh));
  sh.p_drop = c.p_drop, sh.seed = 99, sh.step = 5, sh.site = K::dropout_site(1, 2, K::DropoutKind::SelfAttnProbs);
  const size_t k_off = c.fused ? D : 0, v_off = c.fused ? 2 * D : 0;

  // CPU.
  K::AttentionShape<float> sh_cpu = sh;
  sh_cpu.k_len = c.k_len.empty() ? nullptr : c.k_len.data();
  sh_cpu.pair = pair.data();
  const size_t out_elems = size_t(c.B) * c.Tq * D;
  std::vector<float> out_cpu = poison(out_elems), probs(size_t(c.B) * c.H * c.Tq * c.Tk, kNaN);
  K::AttentionForward<float> f;
  f.shape = sh_cpu, f.q = qb.data(), f.k = kb.data() + k_off, f.v = vb.data() + v_off, f.out = out_cpu.data(),
  f.probs = probs.data();
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
  f.shape = sh_gpu, f.q = d_q.data(), f.k = d_k.data() + k_off, f.v = d_v.data() + v_off, f.out = d_out.data(),
  f.probs = nullptr, f.lse = d_lse.data();
  K::cuda::attention_forward(f, nullptr);
  // Online softmax (rescaled partial sums) against a two-pass softmax, fp32 throughout: a few ulp per key.
  EXPECT_TRUE(close("attention out", download(d_out), out_cpu, 1e-5));

  // Backward.
  const auto dout = random_floats(out_elems, rng);
  const size_t gq_elems = c.fused ? q_elems : q_elems, gkv_elems = c.fused ? q_elems : kv_elems;
  std::vector<float> dq_cpu = poison(gq_elems), dk_cpu = c.fused ? std::vector<float>() : poison(gkv_elems),
                     dv_cpu = c.fused ? std::vector<float>() : poison(gkv_elems);
  float* dk_base = c.fused ? dq_cpu.data() : dk_cpu.data();
  float* dv_base = c.fused ? dq_cpu.data() : dv_cpu.data();
  K::AttentionBackward<float> b;
  b.shape = sh_cpu, b.dout = dout.data(), b.q = qb.data(), b.k = kb.data() + k_off, b.v = vb.data() + v_off;
  b.out = out_cpu.data(), b.probs = probs.data();
  b.dq = dq_cpu.data(), b.dk = dk_base + k_off, b.dv = dv_base + v_off;
  K::cpu::attention_backward(b);

  auto d_dout = upload(dout);
  auto d_dq = upload(poison(gq_elems));
  auto d_dk = upload(c.fused ? std::vector<float>() : poison(gkv_elems));
  auto d_dv = upload(c.fused ? std::vector<float>() : poison(gkv_elems));
  float* gdk = c.fused ? d_dq.data() : d_dk.data();
  float* gdv = c.fused ? d_dq.data() : d_dv.data();
  b.shape = sh_gpu, b.dout = d_dout.data(), b.q = d_q.data(), b.k = d_k.data() + k_off, b.v = d_v.data() + v_off;
  b.out = d_out.data(), b.probs = nullptr, b.lse = d_lse.data();
  b.dq = d_dq.data(), b.dk = gdk + k_off, b.dv = gdv + v_off;
  K::cuda::attention_backward(b, nullptr);
  // ds = p (dp - delta) cancels: the CUDA delta is dout . out (from its own forward), the CPU's sum_j p dp;
  // each carries ~Tk ulp, amplified by the cancellation. Normalised 1e-4 covers Tk <= 40 with margin.
  EXPECT_TRUE(close("attention dq", download(d_dq), dq_cpu, 1e-4));
  if (!c.fused) {
    EXPECT_TRUE(close("attention dk", download(d_dk), dk_cpu, 1e-4));
    EXPECT_TRUE(close("attention dv", download(d_dv), dv_cpu, 1e-4));
  }
}

}  // namespace

TEST(CudaOps, Attention) {
  REQUIRE_GPU();
  std::mt19937 rng(6);
  const AttnCase cases[] = {
      // decoder self-attention: causal, padding, a fully padded sentence (k_len = 0), dropout, fused QKV
      {3, 19, 19, 3, 21, {19, 7, 0}, true, 0.1f, true},
      // cross-attention: Tq != Tk, Dh = 128 (the limit), keys crossing a 32-key tile
      {2, 5, 37, 2, 128, {37, 33}, false, 0.0f, false},
      // one sentence of length 1, one head of width 1
      {1, 1, 1, 1, 1, {1}, false, 0.0f, false},
      // encoder self-attention without key padding (null k_len), dropout, odd head width
      {2, 35, 35, 4, 33, {}, false, 0.2f, false},
      // causal with more queries than a tile and keys beyond k_len
      {1, 40, 40, 1, 64, {23}, true, 0.0f, false},
  };
  for (const AttnCase& c : cases) {
    SCOPED_TRACE("B=" + std::to_string(c.B) + " Tq=" + std::to_string(c.Tq) + " Tk=" + std::to_string(c.Tk) +
                 " H=" + std::to_string(c.H) + " Dh=" + std::to_string(c.Dh) + " causal=" + std::to_string(c.causal));
    run_attention_case(c, rng);
  }
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
