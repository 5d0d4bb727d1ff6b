// Forwards of the CPU op table against independent direct computations, plus the properties the rest of the
// program relies on (dropout masks keyed by sentence, deterministic reductions, errors on bad input).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernel_test_util.hpp"
#include "kernels/dropout_hash.hpp"
#include "kernels/ops.hpp"
#include "blas.hpp"
#include "kernels/positional.hpp"

namespace aiayn::kernels {
namespace {

using aiayn::testing::Rng;

// ---- gemm: every transpose combination, bias, ReLU, alpha/beta, padded leading dimensions -----------------

template <class T>
void check_gemm(bool ta, bool tb, int m, int n, int k, bool bias, bool relu, float beta) {
  Rng rng(1000 + m * 100 + n * 10 + k + ta * 2 + tb);
  // Stored shapes: A is [m, k] or [k, m] when transposed; leading dimensions padded by 3 columns.
  const int a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
  const int lda = a_cols + 3, ldb = b_cols + 3, ldc = n + 3;
  // Small integers make every product and sum exact in float: the comparison can be ==.
  auto ints = [&](size_t count) {
    std::vector<T> v(count);
    for (auto& x : v) x = T(rng.integer(-4, 4));
    return v;
  };
  const std::vector<T> A = ints(size_t(a_rows) * lda), B = ints(size_t(b_rows) * ldb), bvec = ints(n);
  std::vector<T> C = ints(size_t(m) * ldc);
  const std::vector<T> C0 = C;
  const float alpha = 2.0f;
  GemmArgs<T> g;
  g.trans_a = ta, g.trans_b = tb, g.m = m, g.n = n, g.k = k, g.a = A.data(), g.lda = lda, g.b = B.data(), g.ldb = ldb;
  g.c = C.data(), g.ldc = ldc, g.alpha = alpha, g.beta = beta, g.bias = bias ? bvec.data() : nullptr, g.relu = relu;
  cpu::gemm(g);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      T acc = 0;
      for (int p = 0; p < k; ++p) {
        const T a = ta ? A[size_t(p) * lda + i] : A[size_t(i) * lda + p];
        const T b = tb ? B[size_t(j) * ldb + p] : B[size_t(p) * ldb + j];
        acc += a * b;
      }
      T want = T(alpha) * acc + T(beta) * C0[size_t(i) * ldc + j] + (bias ? bvec[j] : T(0));
      if (relu && want < 0) want = 0;
      ASSERT_EQ(C[size_t(i) * ldc + j], want) << "ta=" << ta << " tb=" << tb << " at (" << i << ", " << j << ")";
    }
  for (int i = 0; i < m; ++i)  // padding columns of C untouched
    for (int j = n; j < ldc; ++j) ASSERT_EQ(C[size_t(i) * ldc + j], C0[size_t(i) * ldc + j]);
}

// The float products run on oneDNN's sgemm where libdnnl.so.2 is present, else OpenBLAS's (cpu/blas.cpp): the
// tests below check every library this machine has.
std::vector<bool> sgemm_libraries() {
  std::vector<bool> onednn = {false};
  if (cpu::onednn_sgemm_available()) onednn.push_back(true);
  return onednn;
}

struct SgemmLibrary {
  explicit SgemmLibrary(bool onednn) { cpu::use_onednn_sgemm(onednn); }
  ~SgemmLibrary() { cpu::use_onednn_sgemm(true); }
};

TEST(Gemm, AllTransposesBiasReluFloatAndDouble) {
  const int shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 1, 9}, {33, 65, 31}, {4, 3, 0}};
  for (bool onednn : sgemm_libraries())
  for (auto& s : shapes)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (int epi = 0; epi < 4; ++epi) {
          const bool bias = epi & 1, relu = epi & 2;
          const float beta = epi == 3 ? 1.0f : 0.0f;
          SCOPED_TRACE(onednn ? "sgemm by oneDNN" : "sgemm by OpenBLAS");
          const SgemmLibrary lib(onednn);
          check_gemm<float>(ta, tb, s[0], s[1], s[2], bias, relu, beta);
          check_gemm<double>(ta, tb, s[0], s[1], s[2], bias, relu, beta);
        }
}

// Products of at least 2^20 multiply-adds are split into blocks of rows (m >= n) or of columns (m < n) fixed by
// the shape and handed to the OpenMP threads (cpu/blas.cpp). Odd sizes give uneven, non-multiple-of-16 last
// blocks; 3 threads share them unevenly.
TEST(Gemm, SplitOverThreadsByRowsAndByColumns) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(3);
  const int shapes[][3] = {{133, 97, 83}, {97, 133, 83}, {1100, 7, 137}, {7, 1100, 137}};
  for (bool onednn : sgemm_libraries())
  for (auto& s : shapes)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        SCOPED_TRACE(onednn ? "sgemm by oneDNN" : "sgemm by OpenBLAS");
        const SgemmLibrary lib(onednn);
        check_gemm<float>(ta, tb, s[0], s[1], s[2], /*bias=*/true, /*relu=*/false, 1.0f);
        check_gemm<double>(ta, tb, s[0], s[1], s[2], /*bias=*/false, /*relu=*/true, 0.0f);
      }
  omp_set_num_threads(saved);
}

TEST(Gemm, BetaZeroIgnoresNaNInC) {
  for (bool onednn : sgemm_libraries()) {
    const SgemmLibrary lib(onednn);
    std::vector<float> a = {1, 2}, b = {3, 4}, c = {std::numeric_limits<float>::quiet_NaN()};
    GemmArgs<float> g;
    g.m = 1, g.n = 1, g.k = 2, g.a = a.data(), g.lda = 2, g.b = b.data(), g.ldb = 1, g.c = c.data(), g.ldc = 1;
    cpu::gemm(g);
    EXPECT_EQ(c[0], 11.0f) << (onednn ? "oneDNN" : "OpenBLAS");
    // A big product too (each library has its own path for small ones).
    const int m = 300, n = 200, k = 64;
    std::vector<float> A(size_t(m) * k, 1.0f), B(size_t(k) * n, 0.5f), C(size_t(m) * n, std::numeric_limits<float>::quiet_NaN());
    GemmArgs<float> big;
    big.m = m, big.n = n, big.k = k, big.a = A.data(), big.lda = k, big.b = B.data(), big.ldb = n, big.c = C.data();
    big.ldc = n;
    cpu::gemm(big);
    for (float x : C) ASSERT_EQ(x, 32.0f) << (onednn ? "oneDNN" : "OpenBLAS");
  }
}

TEST(Elementwise, AddReluBackwardBiasGrad) {
  std::vector<float> a = {1, -2, 3}, b = {0.5f, 0.5f, -4};
  std::vector<float> y(3);
  cpu::add(AddArgs<float>{a.data(), b.data(), y.data(), 3});
  EXPECT_EQ(y, (std::vector<float>{1.5f, -1.5f, -1}));
  cpu::add(AddArgs<float>{a.data(), b.data(), a.data(), 3});  // in place
  EXPECT_EQ(a, y);
  std::vector<float> fy = {0, 2, -1}, dy = {5, 6, 7}, dx(3);
  cpu::relu_backward(ReluBackward<float>{fy.data(), dy.data(), dx.data(), 3});
  EXPECT_EQ(dx, (std::vector<float>{0, 6, 0}));
  std::vector<float> g = {1, 2, 3, 4, 5, 6}, db = {10, 20, 30};  // [2, 3]
  cpu::bias_grad(BiasGrad<float>{g.data(), db.data(), 2, 3});
  EXPECT_EQ(db, (std::vector<float>{15, 27, 39}));
}

// ---- layer norm ---------------------------------------------------------------------------------------------

TEST(LayerNorm, UnitGammaGivesZeroMeanUnitVariance) {
  const int rows = 9, cols = 77;
  Rng rng(3);
  std::vector<float> x = rng.vec<float>(size_t(rows) * cols, -5, 20), y(x.size()), mean(rows), rstd(rows);
  std::vector<float> gamma(cols, 1.0f), beta(cols, 0.0f);
  LayerNormForward<float> f;
  f.x = x.data(), f.gamma = gamma.data(), f.beta = beta.data(), f.y = y.data(), f.mean = mean.data();
  f.rstd = rstd.data(), f.rows = rows, f.cols = cols, f.eps = 1e-5f;
  cpu::layer_norm_forward(f);
  for (int r = 0; r < rows; ++r) {
    double m = 0, v = 0, xm = 0;
    for (int c = 0; c < cols; ++c) m += y[size_t(r) * cols + c], xm += x[size_t(r) * cols + c];
    m /= cols, xm /= cols;
    for (int c = 0; c < cols; ++c) v += (y[size_t(r) * cols + c] - m) * (y[size_t(r) * cols + c] - m);
    v /= cols;
    EXPECT_NEAR(m, 0.0, 1e-5);
    EXPECT_NEAR(v, 1.0, 1e-3);  // eps = 1e-5 against variances ~30 shifts it by < 1e-6; float rounding ~1e-6
    EXPECT_NEAR(mean[r], xm, 1e-4);
  }
}

// ---- embedding ----------------------------------------------------------------------------------------------

TEST(Embed, ScaledRowsPlusSinusoids) {
  const int V = 5, D = 6, N = 6, seq_len = 3;
  Rng rng(5);
  const std::vector<float> table = rng.vec<float>(size_t(V) * D);
  const std::vector<int32_t> ids = {4, 0, 2, 2, 1, 3};
  std::vector<float> out(size_t(N) * D);
  EmbedForward<float> f;
  f.ids = ids.data(), f.table = table.data(), f.out = out.data(), f.N = N, f.D = D, f.V = V;
  f.seq_len = seq_len, f.scale = 2.0f;
  cpu::embed_forward(f);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < D; ++c) {
      const int pos = n % seq_len;
      const double pe = (c % 2 == 0) ? std::sin(pos / std::pow(10000.0, double(c) / D))
                                     : std::cos(pos / std::pow(10000.0, double(c - 1) / D));
      EXPECT_NEAR(out[size_t(n) * D + c], table[size_t(ids[n]) * D + c] * 2.0f + pe, 1e-5) << n << "," << c;
    }
  // Known points: PE(0, even) = 0, PE(0, odd) = 1.
  for (int c = 0; c < D; ++c) EXPECT_EQ(sinusoid(0, c, D), (c % 2) ? 1.0f : 0.0f);
  // Explicit positions, and add_positions = false.
  const std::vector<int32_t> positions = {0, 0, 0, 0, 0, 0};
  f.positions = positions.data();
  cpu::embed_forward(f);
  for (int n = 0; n < N; ++n) EXPECT_EQ(out[size_t(n) * D + 1], table[size_t(ids[n]) * D + 1] * 2.0f + 1.0f);
  f.add_positions = false;
  cpu::embed_forward(f);
  for (int n = 0; n < N; ++n) EXPECT_EQ(out[size_t(n) * D + 1], table[size_t(ids[n]) * D + 1] * 2.0f);
}

TEST(Embed, IdOutOfRangeThrowsWithIndex) {
  const std::vector<float> table(4 * 2, 1.0f);
  const std::vector<int32_t> ids = {1, 3, 4};
  std::vector<float> out(3 * 2);
  EmbedForward<float> f;
  f.ids = ids.data(), f.table = table.data(), f.out = out.data(), f.N = 3, f.D = 2, f.V = 4;
  try {
    cpu::embed_forward(f);
    FAIL() << "expected aiayn::Error";
  } catch (const aiayn::Error& e) {
    EXPECT_NE(std::string(e.what()).find("index 2"), std::string::npos) << e.what();
  }
  std::vector<float> dtable(8);
  EXPECT_THROW(cpu::embed_backward(EmbedBackward<float>{ids.data(), out.data(), dtable.data(), 3, 2, 4, 1.0f, {}}),
               aiayn::Error);
}

// ---- dropout ------------------------------------------------------------------------------------------------

TEST(Dropout, KeepFractionScaleAndSameMaskForwardBackward) {
  const int B = 8, T = 64, C = 512;
  const float p = 0.1f;
  std::vector<int64_t> pair(B);
  for (int b = 0; b < B; ++b) pair[b] = 1000 + 37 * b;
  std::vector<float> x(size_t(B) * T * C, 1.0f), y(x.size()), dx(x.size());
  DropoutArgs<float> a;
  a.x = x.data(), a.y = y.data(), a.rows = B * T, a.cols = C, a.seq_len = T, a.pair = pair.data();
  a.seed = 42, a.step = 7, a.site = dropout_site(0, 2, DropoutKind::FfnOut), a.p = p;
  cpu::dropout_forward(a);
  DropoutArgs<float> back = a;
  back.y = dx.data();
  cpu::dropout_backward(back);
  size_t kept = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    ASSERT_TRUE(y[i] == 0.0f || y[i] == 1.0f / (1.0f - p)) << i;
    ASSERT_EQ(y[i], dx[i]) << "forward and backward masks differ at " << i;
    kept += y[i] != 0.0f;
  }
  // 262144 Bernoulli(0.9) draws: standard deviation of the fraction ~5.9e-4; 6 sigma.
  EXPECT_NEAR(double(kept) / y.size(), 1.0 - p, 3.5e-3);
}

TEST(Dropout, MaskDependsOnlyOnPairPositionSiteChannel) {
  const int T = 5, C = 33;
  const float p = 0.5f;
  std::vector<float> x(size_t(3) * T * C);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 1.0f + float(i % 7);
  auto run = [&](std::vector<int64_t> pair, uint32_t site, uint64_t step) {
    std::vector<float> y(x.size());
    DropoutArgs<float> a;
    a.x = x.data(), a.y = y.data(), a.rows = 3 * T, a.cols = C, a.seq_len = T, a.pair = pair.data();
    a.seed = 1, a.step = step, a.site = site, a.p = p;
    cpu::dropout_forward(a);
    return y;
  };
  auto mask_of = [&](const std::vector<float>& y, int b) {
    std::vector<bool> m;
    for (int i = 0; i < T * C; ++i) m.push_back(y[size_t(b) * T * C + i] != 0.0f);
    return m;
  };
  const auto y1 = run({10, 20, 30}, 3, 1);
  const auto y2 = run({30, 10, 99}, 3, 1);  // sentence 10 moved from row 0 to row 1, 30 from row 2 to row 0
  EXPECT_EQ(mask_of(y1, 0), mask_of(y2, 1));
  EXPECT_EQ(mask_of(y1, 2), mask_of(y2, 0));
  EXPECT_NE(mask_of(y1, 1), mask_of(y2, 2));
  EXPECT_NE(mask_of(y1, 0), mask_of(run({10, 20, 30}, 4, 1), 0));  // another site
  EXPECT_NE(mask_of(y1, 0), mask_of(run({10, 20, 30}, 3, 2), 0));  // another step
  // The same mask is what dropout_keep says for (pair, position, site, channel).
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < C; ++c)
      EXPECT_EQ(y1[size_t(T + t) * C + c] != 0.0f, dropout_keep(dropout_row_key(1, 1, 20, t, 3), c, p));
}

TEST(Dropout, ZeroProbabilityCopiesInPlaceAndOut) {
  std::vector<float> x = {1, 2, 3, 4}, y(4);
  DropoutArgs<float> a;
  a.x = x.data(), a.y = y.data(), a.rows = 2, a.cols = 2, a.seq_len = 2;
  cpu::dropout_forward(a);
  EXPECT_EQ(x, y);
  a.y = x.data();
  cpu::dropout_forward(a);
  EXPECT_EQ(x, y);
}

// ---- attention: against a direct masked softmax ---------------------------------------------------------------

TEST(Attention, MatchesDirectMaskedSoftmax) {
  const int B = 3, T = 6, Tk = 6, H = 2, Dh = 4, D = H * Dh;
  Rng rng(77);
  const std::vector<double> qkv = rng.vec<double>(size_t(B) * T * 3 * D, -2, 2);
  const std::vector<int32_t> k_len = {6, 3, 0};
  const std::vector<int64_t> pair = {5, 6, 7};
  for (int causal = 0; causal < 2; ++causal)
    for (float p_drop : {0.0f, 0.3f}) {
      AttentionShape<double> s;
      s.B = B, s.Tq = T, s.Tk = Tk, s.H = H, s.Dh = Dh, s.q_bstride = s.kv_bstride = long(T) * 3 * D;
      s.q_stride = s.kv_stride = 3 * D, s.o_bstride = long(T) * D, s.o_stride = D, s.k_len = k_len.data();
      s.causal = causal, s.scale = 0.5f, s.p_drop = p_drop, s.pair = pair.data(), s.seed = 3, s.step = 4, s.site = 9;
      std::vector<double> out(size_t(B) * T * D), probs(size_t(B) * H * T * Tk);
      AttentionForward<double> f;
      f.shape = s, f.q = qkv.data(), f.k = qkv.data() + D, f.v = qkv.data() + 2 * D, f.out = out.data();
      f.saved = probs.data();
      cpu::attention_forward(f);
      for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
          for (int t = 0; t < T; ++t) {
            auto at = [&](int row, int part, int d) { return qkv[(size_t(b) * T + row) * 3 * D + part * D + h * Dh + d]; };
            std::vector<double> score(Tk, -INFINITY);
            double max = -INFINITY;
            for (int j = 0; j < Tk; ++j) {
              if (j >= k_len[b] || (causal && j > t)) continue;
              score[j] = 0;
              for (int d = 0; d < Dh; ++d) score[j] += at(t, 0, d) * at(j, 1, d) * 0.5;
              max = std::max(max, score[j]);
            }
            double z = 0;
            for (int j = 0; j < Tk; ++j) z += std::isinf(score[j]) ? 0.0 : std::exp(score[j] - max);
            const uint64_t key = dropout_row_key(3, 4, pair[b], t, 9);
            for (int d = 0; d < Dh; ++d) {
              double want = 0;
              for (int j = 0; j < Tk; ++j) {
                if (std::isinf(score[j])) continue;
                double pj = std::exp(score[j] - max) / z;
                if (p_drop > 0) pj = dropout_keep(key, h * Tk + j, p_drop) ? pj / (1.0 - double(p_drop)) : 0.0;
                want += pj * at(j, 2, d);
              }
              EXPECT_NEAR(out[(size_t(b) * T + t) * D + h * Dh + d], want, 1e-12);
            }
            double psum = 0;
            for (int j = 0; j < Tk; ++j) psum += probs[((size_t(b) * H + h) * T + t) * Tk + j];
            EXPECT_NEAR(psum, k_len[b] == 0 ? 0.0 : 1.0, 1e-12);  // probs are saved before dropout
          }
    }
}

// ---- cross entropy --------------------------------------------------------------------------------------------

TEST(CrossEntropy, TargetOutOfRangeThrowsWithRow) {
  const std::vector<float> logits(3 * 4, 0.0f);
  const std::vector<int32_t> targets = {1, 0, 4};
  CrossEntropyArgs<float> a;
  a.logits = logits.data(), a.targets = targets.data(), a.N = 3, a.V = 4, a.pad_id = 0;
  try {
    cpu::cross_entropy(a);
    FAIL() << "expected aiayn::Error";
  } catch (const aiayn::Error& e) {
    EXPECT_NE(std::string(e.what()).find("row 2"), std::string::npos) << e.what();
  }
}

TEST(CrossEntropy, UniformLogitsGiveLogV) {
  const int N = 4, V = 10;
  const std::vector<float> logits(size_t(N) * V, 0.25f);
  const std::vector<int32_t> targets = {3, 1, 1, 9};
  CrossEntropyArgs<float> a;
  a.logits = logits.data(), a.targets = targets.data(), a.N = N, a.V = V, a.pad_id = 1, a.smoothing = 0.1f;
  const CrossEntropyStats s = cpu::cross_entropy(a);
  EXPECT_EQ(s.tokens, 2);
  EXPECT_NEAR(s.nll, 2 * std::log(10.0), 1e-5);
  EXPECT_NEAR(s.loss, 2 * std::log(10.0), 1e-5);  // smoothing changes nothing when every logit is equal
  EXPECT_EQ(s.correct, 0);                          // first maximum is index 0, never a target here
}

// Issue 15: rows padded to a stride ld > V (the model's aligned logits). The padding holds NaN: it must be
// neither read (the results equal those of the compact rows, bit for bit) nor written (still NaN after).
TEST(CrossEntropy, PaddedRowsNeitherReadNorWriteThePadding) {
  const int N = 5, V = 37, ld = 48;
  std::vector<float> compact(size_t(N) * V), padded(size_t(N) * ld, std::nanf(""));
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < V; ++j) compact[size_t(n) * V + j] = padded[size_t(n) * ld + j] = std::sin(0.7f * n + 0.31f * j) * 3;
  const std::vector<int32_t> targets = {5, 0, 36, 12, 0};  // pad id 0: two pad rows
  for (const bool in_place : {false, true}) {
    std::vector<float> c = compact, p = padded;
    std::vector<float> dc(c.size(), -1.0f), dp(p.size(), std::nanf(""));
    CrossEntropyArgs<float> a;
    a.targets = targets.data(), a.N = N, a.V = V, a.pad_id = 0, a.smoothing = 0.1f, a.grad_scale = 0.5f;
    a.logits = c.data(), a.dlogits = in_place ? c.data() : dc.data();
    const CrossEntropyStats sc = cpu::cross_entropy(a);
    a.logits = p.data(), a.dlogits = in_place ? p.data() : dp.data(), a.ld = ld;
    const CrossEntropyStats sp = cpu::cross_entropy(a);
    EXPECT_EQ(sp.loss, sc.loss);
    EXPECT_EQ(sp.nll, sc.nll);
    EXPECT_EQ(sp.tokens, sc.tokens);
    EXPECT_EQ(sp.correct, sc.correct);
    const std::vector<float>& gc = in_place ? c : dc;
    const std::vector<float>& gp = in_place ? p : dp;
    for (int n = 0; n < N; ++n) {
      for (int j = 0; j < V; ++j) ASSERT_EQ(gp[size_t(n) * ld + j], gc[size_t(n) * V + j]) << n << "," << j;
      for (int j = V; j < ld; ++j) ASSERT_TRUE(std::isnan(gp[size_t(n) * ld + j])) << "padding written at " << n << "," << j;
    }
  }
  CrossEntropyArgs<float> bad;
  bad.logits = padded.data(), bad.targets = targets.data(), bad.N = N, bad.V = V, bad.ld = V - 1;
  EXPECT_THROW(cpu::cross_entropy(bad), aiayn::Error);
}

// The CPU op takes its exp from a polynomial (cpu/cross_entropy.cpp), not libm: checked here against libm's exp
// and log in double, over logits spread wide enough (-40 .. 40) that the range reduction runs through many
// powers of two and some terms underflow against the maximum. A few ulp per exp, summed over V terms: 1e-12.
TEST(CrossEntropy, MatchesLibmInDouble) {
  const int N = 5, V = 301;
  Rng rng(43);
  const std::vector<double> logits = rng.vec<double>(size_t(N) * V, -40, 40);
  const std::vector<int32_t> targets = {0, 300, 17, 2, 150};
  const double eps = double(0.1f), grad_scale = 0.5;  // the op takes float arguments
  std::vector<double> dlogits(logits.size());
  CrossEntropyArgs<double> a;
  a.logits = logits.data(), a.dlogits = dlogits.data(), a.targets = targets.data(), a.N = N, a.V = V;
  a.pad_id = -1, a.smoothing = float(eps), a.grad_scale = float(grad_scale);
  const CrossEntropyStats s = cpu::cross_entropy(a);
  double loss = 0, nll = 0;
  for (int n = 0; n < N; ++n) {
    const double* x = logits.data() + size_t(n) * V;
    double max = x[0], sum = 0, sum_x = 0;
    for (int j = 0; j < V; ++j) max = std::max(max, x[j]);
    for (int j = 0; j < V; ++j) sum += std::exp(x[j] - max), sum_x += x[j];
    const double lse = max + std::log(sum), row_nll = lse - x[targets[n]];
    nll += row_nll;
    loss += (1 - eps) * row_nll + eps * (lse - sum_x / V);
    for (int j = 0; j < V; ++j) {
      const double expect = grad_scale * (std::exp(x[j] - lse) - (j == targets[n] ? 1 - eps : 0) - eps / V);
      EXPECT_NEAR(dlogits[size_t(n) * V + j], expect, 1e-15) << n << "," << j;
    }
  }
  EXPECT_NEAR(s.nll, nll, 1e-12 * nll);
  EXPECT_NEAR(s.loss, loss, 1e-12 * loss);
}

// ---- adam, sum_squares, scale --------------------------------------------------------------------------------

TEST(Adam, MatchesHandComputedSteps) {
  // One parameter, two steps, numbers worked by hand (double arithmetic):
  // step 1: g = 0.5*2 = 1; m = 0.1; v = 0.02*1 = 0.02; m^ = 0.1/0.1 = 1; v^ = 0.02/0.02 = 1;
  //         p = 1 - 0.01 * 1 / (1 + 1e-9)
  std::vector<double> p = {1.0}, g = {2.0}, m = {0.0}, v = {0.0};
  AdamArgs<double> a;
  a.param = p.data(), a.grad = g.data(), a.m = m.data(), a.v = v.data(), a.n = 1;
  a.lr = 0.01f, a.beta1 = 0.9f, a.beta2 = 0.98f, a.eps = 1e-9f, a.grad_scale = 0.5f;
  const double b1 = double(0.9f), b2 = double(0.98f), lr = double(0.01f), eps = double(1e-9f);
  a.bias1 = 1 - b1, a.bias2 = 1 - b2;
  cpu::adam(a);
  EXPECT_NEAR(m[0], (1 - b1) * 1.0, 1e-15);
  EXPECT_NEAR(v[0], (1 - b2) * 1.0, 1e-15);
  const double p1 = 1.0 - lr * 1.0 / (1.0 + eps);
  EXPECT_NEAR(p[0], p1, 1e-12);
  // step 2 with g = -4 * 0.5 = -2
  g[0] = -4.0;
  a.bias1 = 1 - b1 * b1, a.bias2 = 1 - b2 * b2;
  cpu::adam(a);
  const double m2 = b1 * (1 - b1) + (1 - b1) * -2.0, v2 = b2 * (1 - b2) + (1 - b2) * 4.0;
  EXPECT_NEAR(m[0], m2, 1e-12);
  EXPECT_NEAR(v[0], v2, 1e-12);
  EXPECT_NEAR(p[0], p1 - lr * (m2 / (1 - b1 * b1)) / (std::sqrt(v2 / (1 - b2 * b2)) + eps), 1e-12);
}

TEST(SumSquares, ExactAndDeterministicAcrossChunks) {
  const size_t n = 300001;  // several fixed chunks plus a remainder
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = float(int(i % 11) - 5);
  double want = 0;
  for (size_t i = 0; i < n; ++i) want += double(x[i]) * x[i];  // small integers: exact in double
  EXPECT_EQ(cpu::sum_squares(SumSquaresArgs<float>{x.data(), n}), want);
  EXPECT_EQ(cpu::sum_squares(SumSquaresArgs<float>{x.data(), 0}), 0.0);
  std::vector<float> r = Rng(9).vec<float>(n);
  const double first = cpu::sum_squares(SumSquaresArgs<float>{r.data(), n});
  EXPECT_EQ(cpu::sum_squares(SumSquaresArgs<float>{r.data(), n}), first);
  cpu::scale(ScaleArgs<float>{x.data(), n, 0.5f});
  EXPECT_EQ(cpu::sum_squares(SumSquaresArgs<float>{x.data(), n}), want / 4);
}

// ---- float instantiations agree with double; results do not depend on the thread count --------------------

TEST(FloatInstantiation, AttentionAndCrossEntropyAgreeWithDouble) {
  const int B = 2, T = 7, H = 3, Dh = 5, D = H * Dh;
  Rng rng(31);
  const std::vector<double> qkv = rng.vec<double>(size_t(B) * T * 3 * D, -2, 2);
  const std::vector<float> qkv_f(qkv.begin(), qkv.end());
  const std::vector<int32_t> k_len = {7, 4};
  const std::vector<int64_t> pair = {1, 2};
  auto run = [&](const auto& buf, auto& out, auto& probs) {
    using T_ = typename std::decay_t<decltype(buf)>::value_type;
    AttentionShape<T_> s;
    s.B = B, s.Tq = T, s.Tk = T, s.H = H, s.Dh = Dh, s.q_bstride = s.kv_bstride = long(T) * 3 * D;
    s.q_stride = s.kv_stride = 3 * D, s.o_bstride = long(T) * D, s.o_stride = D, s.k_len = k_len.data();
    s.causal = true, s.scale = float(1 / std::sqrt(double(Dh))), s.p_drop = 0.2f, s.pair = pair.data();
    AttentionForward<T_> f;
    f.shape = s, f.q = buf.data(), f.k = buf.data() + D, f.v = buf.data() + 2 * D, f.out = out.data();
    f.saved = probs.data();
    cpu::attention_forward(f);
  };
  std::vector<double> out(size_t(B) * T * D), probs(size_t(B) * H * T * T);
  std::vector<float> out_f(out.size()), probs_f(probs.size());
  run(qkv, out, probs);
  run(qkv_f, out_f, probs_f);
  // float: scores of |q.k| <= 20 carry ~2e-6 absolute error, softmax and the sum of <= 7 terms keep it ~1e-5.
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out_f[i], out[i], 1e-4) << i;

  const int N = 6, V = 50;
  const std::vector<float> logits_f = rng.vec<float>(size_t(N) * V, -4, 4);
  const std::vector<double> logits(logits_f.begin(), logits_f.end());  // the same values in both
  const std::vector<int32_t> targets = {5, 0, 49, 7, 0, 1};
  CrossEntropyArgs<double> cd;
  cd.logits = logits.data(), cd.targets = targets.data(), cd.N = N, cd.V = V, cd.smoothing = 0.1f;
  CrossEntropyArgs<float> cf;
  cf.logits = logits_f.data(), cf.targets = targets.data(), cf.N = N, cf.V = V, cf.smoothing = 0.1f;
  const CrossEntropyStats sd = cpu::cross_entropy(cd), sf = cpu::cross_entropy(cf);
  EXPECT_NEAR(sf.loss, sd.loss, 1e-9);  // both accumulate in double from the same (float-exact) logits
  EXPECT_EQ(sf.tokens, 4);
  EXPECT_EQ(sf.correct, sd.correct);
}

// Every element of a product comes from the same single-threaded library call whatever the thread count: the
// blocks depend on the shape only (cpu/blas.cpp). oneDNN's own threading split the sum over k differently on 1
// and 2 threads where k was 1024 (a training run's losses differed from the first step); this caught it. Shapes of the model's
// products: activations x weights, the weight gradient's long k (tokens), the output projection.
TEST(Determinism, MatrixProductsDoNotDependOnThreadCount) {
  Rng rng(41);
  const int shapes[][5] = {  // m, n, k, trans_a, trans_b
      {700, 256, 1024, 0, 1}, {1400, 768, 1024, 0, 0}, {1024, 256, 1400, 1, 0}, {1500, 1000, 256, 0, 1},
      {37, 3001, 96, 0, 1}};
  for (bool onednn : sgemm_libraries()) {
    const SgemmLibrary lib(onednn);
    for (auto& s : shapes) {
      const int m = s[0], n = s[1], k = s[2];
      const bool ta = s[3], tb = s[4];
      const std::vector<float> a = rng.vec<float>(size_t(m) * k), b = rng.vec<float>(size_t(k) * n);
      const auto product = [&](int threads) {
        const int saved = omp_get_max_threads();
        omp_set_num_threads(threads);
        std::vector<float> c(size_t(m) * n);
        cpu::blas_gemm<float>(ta, tb, m, n, k, 1.0f, a.data(), ta ? m : k, b.data(), tb ? k : n, 0.0f, c.data(), n, {});
        omp_set_num_threads(saved);
        return c;
      };
      const std::vector<float> one = product(1);
      for (int threads : {2, 3}) {
        const std::vector<float> other = product(threads);
        size_t differ = 0;
        for (size_t i = 0; i < one.size(); ++i) differ += one[i] != other[i];
        EXPECT_EQ(differ, 0u) << (onednn ? "oneDNN" : "OpenBLAS") << " m " << m << " n " << n << " k " << k << ", "
                              << threads << " threads against 1";
      }
    }
  }
}

TEST(Determinism, ReductionsDoNotDependOnThreadCount) {
  Rng rng(37);
  const int rows = 301, cols = 130, N = 40, V = 77;
  const std::vector<float> dy = rng.vec<float>(size_t(rows) * cols), x = rng.vec<float>(size_t(rows) * cols);
  const std::vector<float> logits = rng.vec<float>(size_t(N) * V, -3, 3);
  std::vector<int32_t> targets(N);
  for (auto& t : targets) t = rng.integer(0, V - 1);
  const std::vector<float> big = rng.vec<float>(1 << 18);
  auto all = [&] {
    std::vector<double> r;
    std::vector<float> db(cols, 0.0f);
    cpu::bias_grad(BiasGrad<float>{dy.data(), db.data(), rows, cols});
    r.insert(r.end(), db.begin(), db.end());
    CrossEntropyArgs<float> a;
    a.logits = logits.data(), a.targets = targets.data(), a.N = N, a.V = V, a.smoothing = 0.1f;
    const CrossEntropyStats s = cpu::cross_entropy(a);
    r.push_back(s.loss), r.push_back(s.nll);
    r.push_back(cpu::sum_squares(SumSquaresArgs<float>{big.data(), big.size()}));
    std::vector<float> mean(rows), rstd(rows), gamma(cols, 1.5f), dx(x.size()), dgamma(cols, 0.0f), dbeta(cols, 0.0f);
    LayerNormBackward<float> ln;
    for (int r0 = 0; r0 < rows; ++r0) mean[r0] = 0.1f, rstd[r0] = 2.0f;
    ln.dy = dy.data(), ln.x = x.data(), ln.gamma = gamma.data(), ln.mean = mean.data(), ln.rstd = rstd.data();
    ln.dx = dx.data(), ln.dgamma = dgamma.data(), ln.dbeta = dbeta.data(), ln.rows = rows, ln.cols = cols;
    cpu::layer_norm_backward(ln);
    r.insert(r.end(), dgamma.begin(), dgamma.end());
    r.insert(r.end(), dbeta.begin(), dbeta.end());
    return r;
  };
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const std::vector<double> one = all();
  omp_set_num_threads(3);
  const std::vector<double> three = all();
  omp_set_num_threads(saved);
  ASSERT_EQ(one.size(), three.size());
  for (size_t i = 0; i < one.size(); ++i) EXPECT_EQ(one[i], three[i]) << i;
}

}  // namespace
}  // namespace aiayn::kernels
