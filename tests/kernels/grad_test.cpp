// Every backward of the CPU op table against central finite differences, in double, on random inputs.
// The objective is always L = sum(w * out) with random w, so dL/dout = w; every input and parameter
// gradient is checked entry by entry (tolerances: kernel_test_util.hpp).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernel_test_util.hpp"
#include "kernels/ops.hpp"

namespace aiayn::kernels {
namespace {

using aiayn::testing::expect_gradient;
using aiayn::testing::Rng;
using aiayn::testing::weighted_sum;
using Vec = std::vector<double>;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- linear layer: y = act(x @ W^T + b), backward composed from gemm, relu_backward and bias_grad ----------

struct LinearCase { int M, K, N; bool relu; };
class LinearGrad : public ::testing::TestWithParam<LinearCase> {};

TEST_P(LinearGrad, MatchesFiniteDifferences) {
  const auto [M, K, N, relu] = GetParam();
  Rng rng(100 + M * 7 + K * 3 + N);
  Vec x = rng.vec<double>(size_t(M) * K), W = rng.vec<double>(size_t(N) * K), b = rng.vec<double>(N);
  const Vec w = rng.vec<double>(size_t(M) * N);
  auto forward = [&](Vec& y) {
    y.assign(size_t(M) * N, 0.0);
    GemmArgs<double> g;
    g.trans_b = true;
    g.m = M, g.n = N, g.k = K;
    g.a = x.data(), g.lda = K, g.b = W.data(), g.ldb = K, g.c = y.data(), g.ldc = N;
    g.bias = b.data(), g.relu = relu;
    cpu::gemm(g);
  };
  auto loss = [&] {
    Vec y;
    forward(y);
    return weighted_sum(w, y);
  };
  Vec y;
  forward(y);
  Vec dz(w.size());
  if (relu) {
    cpu::relu_backward(ReluBackward<double>{y.data(), w.data(), dz.data(), w.size()});
  } else {
    dz = w;
  }
  Vec dx(x.size()), dW(W.size()), db(N, 0.5);  // db accumulates: starts at 0.5
  GemmArgs<double> gx;  // dx[M, K] = dz[M, N] @ W[N, K]
  gx.m = M, gx.n = K, gx.k = N, gx.a = dz.data(), gx.lda = N, gx.b = W.data(), gx.ldb = K, gx.c = dx.data(), gx.ldc = K;
  cpu::gemm(gx);
  GemmArgs<double> gw;  // dW[N, K] = dz^T[N, M] @ x[M, K]
  gw.trans_a = true;
  gw.m = N, gw.n = K, gw.k = M, gw.a = dz.data(), gw.lda = N, gw.b = x.data(), gw.ldb = K, gw.c = dW.data(), gw.ldc = K;
  cpu::gemm(gw);
  cpu::bias_grad(BiasGrad<double>{dz.data(), db.data(), M, N});
  for (auto& v : db) v -= 0.5;
  expect_gradient(x, dx, loss, "dx");
  expect_gradient(W, dW, loss, "dW");
  expect_gradient(b, db, loss, "db");
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearGrad,
                         ::testing::Values(LinearCase{1, 1, 1, false}, LinearCase{1, 1, 1, true},
                                           LinearCase{3, 5, 4, true}, LinearCase{7, 2, 9, false},
                                           LinearCase{5, 9, 70, true}));

TEST(ReluGrad, MatchesFiniteDifferences) {
  Rng rng(7);
  Vec x(37);
  for (auto& v : x) v = rng.uniform(0.1, 1.0) * (rng.integer(0, 1) ? 1 : -1);  // away from the kink
  const Vec w = rng.vec<double>(x.size());
  auto relu = [](const Vec& in) {
    Vec out(in.size());
    for (size_t i = 0; i < in.size(); ++i) out[i] = in[i] > 0 ? in[i] : 0;
    return out;
  };
  const Vec y = relu(x);
  Vec dx = w;  // in place: dx may equal dy
  cpu::relu_backward(ReluBackward<double>{y.data(), dx.data(), dx.data(), dx.size()});
  expect_gradient(x, dx, [&] { return weighted_sum(w, relu(x)); }, "relu dx");
}

// ---- embedding --------------------------------------------------------------------------------------------

TEST(EmbedGrad, MatchesFiniteDifferencesWithRepeatedIds) {
  const int V = 6, D = 5, N = 7, seq_len = 4;
  Rng rng(11);
  Vec table = rng.vec<double>(size_t(V) * D);
  const std::vector<int32_t> ids = {3, 1, 3, 0, 5, 3, 1};  // 2 and 4 unused, 3 three times
  const Vec w = rng.vec<double>(size_t(N) * D);
  const double scale = std::sqrt(double(D));
  auto loss = [&] {
    Vec out(size_t(N) * D);
    EmbedForward<double> f;
    f.ids = ids.data(), f.table = table.data(), f.out = out.data(), f.N = N, f.D = D, f.V = V;
    f.seq_len = seq_len, f.scale = float(scale);
    cpu::embed_forward(f);
    return weighted_sum(w, out);
  };
  const Vec prefill = rng.vec<double>(table.size());
  Vec dtable = prefill;  // backward accumulates
  EmbedBackward<double> bwd{ids.data(), w.data(), dtable.data(), N, D, V, float(scale), {}};
  cpu::embed_backward(bwd);
  for (size_t i = 0; i < dtable.size(); ++i) dtable[i] -= prefill[i];
  expect_gradient(table, dtable, loss, "dtable");
}

// Embedding with its dropout fused in: the mask multiplies the gradient on the way back.
TEST(EmbedGrad, MatchesFiniteDifferencesWithFusedDropout) {
  const int V = 6, D = 9, B = 2, seq_len = 4, N = B * seq_len;
  Rng rng(12);
  Vec table = rng.vec<double>(size_t(V) * D);
  const std::vector<int32_t> ids = {3, 1, 3, 0, 5, 3, 1, 2};
  const std::vector<int64_t> pair = {40, 7};
  const Vec w = rng.vec<double>(size_t(N) * D);
  DropoutMask drop;
  drop.p = 0.3f, drop.seq_len = seq_len, drop.pair = pair.data(), drop.seed = 9, drop.step = 4, drop.site = 2;
  auto loss = [&] {
    Vec out(size_t(N) * D);
    EmbedForward<double> f;
    f.ids = ids.data(), f.table = table.data(), f.out = out.data(), f.N = N, f.D = D, f.V = V;
    f.seq_len = seq_len, f.scale = 3.0f, f.drop = drop;
    cpu::embed_forward(f);
    return weighted_sum(w, out);
  };
  Vec dtable(table.size(), 0.0);
  EmbedBackward<double> bwd{ids.data(), w.data(), dtable.data(), N, D, V, 3.0f, drop};
  cpu::embed_backward(bwd);
  expect_gradient(table, dtable, loss, "dtable with dropout");
}

// ---- residual + dropout + layer norm, fused (post-norm sub-layer output) ----------------------------------

struct ResNormCase { int B, T, cols; float p; };
class ResidualNormGrad : public ::testing::TestWithParam<ResNormCase> {};

TEST_P(ResidualNormGrad, MatchesFiniteDifferences) {
  const auto [B, T, cols, p] = GetParam();
  const int rows = B * T;
  Rng rng(23 + rows * 13 + cols);
  Vec x = rng.vec<double>(size_t(rows) * cols, -2, 2), f = rng.vec<double>(size_t(rows) * cols, -2, 2);
  Vec gamma = rng.vec<double>(cols, 0.5, 1.5), beta = rng.vec<double>(cols);
  const Vec w = rng.vec<double>(x.size());
  std::vector<int64_t> pair(B);
  for (int b = 0; b < B; ++b) pair[b] = 1000 + 3 * b;
  DropoutMask drop;
  drop.p = p, drop.seq_len = T, drop.pair = pair.data(), drop.seed = 3, drop.step = 8, drop.site = 5;
  Vec s(x.size()), mean(rows), rstd(rows);
  auto forward = [&](Vec& y) {
    y.assign(x.size(), 0.0);
    ResidualNormForward<double> a;
    a.x = x.data(), a.f = f.data(), a.gamma = gamma.data(), a.beta = beta.data(), a.s = s.data(), a.y = y.data();
    a.mean = mean.data(), a.rstd = rstd.data(), a.rows = rows, a.cols = cols, a.drop = drop;
    cpu::residual_norm_forward(a);
  };
  auto loss = [&] {
    Vec y;
    forward(y);
    return weighted_sum(w, y);
  };
  Vec y;
  forward(y);
  const Vec g_prefill = rng.vec<double>(cols), b_prefill = rng.vec<double>(cols);
  Vec dx(x.size(), kNaN), df(x.size(), kNaN), dgamma = g_prefill, dbeta = b_prefill;
  ResidualNormBackward<double> bwd;
  bwd.dy = w.data(), bwd.s = s.data(), bwd.gamma = gamma.data(), bwd.mean = mean.data(), bwd.rstd = rstd.data();
  bwd.dx = dx.data(), bwd.df = df.data(), bwd.dgamma = dgamma.data(), bwd.dbeta = dbeta.data();
  bwd.rows = rows, bwd.cols = cols, bwd.drop = drop;
  cpu::residual_norm_backward(bwd);
  for (int c = 0; c < cols; ++c) dgamma[c] -= g_prefill[c], dbeta[c] -= b_prefill[c];
  if (p > 0) {
    int dropped = 0;
    for (size_t i = 0; i < df.size(); ++i) dropped += df[i] == 0.0 && dx[i] != 0.0;
    EXPECT_GT(dropped, 0) << "the check must see dropped elements";
  }
  // dx may alias dy: same results in place.
  Vec inplace = w, df2(x.size(), kNaN), dgamma2(cols, 0.0), dbeta2(cols, 0.0);
  ResidualNormBackward<double> alias = bwd;
  alias.dy = inplace.data(), alias.dx = inplace.data(), alias.df = df2.data();
  alias.dgamma = dgamma2.data(), alias.dbeta = dbeta2.data();
  cpu::residual_norm_backward(alias);
  for (size_t i = 0; i < dx.size(); ++i) ASSERT_EQ(inplace[i], dx[i]) << i;
  for (size_t i = 0; i < df.size(); ++i) ASSERT_EQ(df2[i], df[i]) << i;

  expect_gradient(x, dx, loss, "residual_norm dx");
  expect_gradient(f, df, loss, "residual_norm df");
  expect_gradient(gamma, dgamma, loss, "residual_norm dgamma");
  expect_gradient(beta, dbeta, loss, "residual_norm dbeta");
}

INSTANTIATE_TEST_SUITE_P(Shapes, ResidualNormGrad,
                         ::testing::Values(ResNormCase{1, 1, 1, 0.0f}, ResNormCase{1, 3, 2, 0.0f},
                                           ResNormCase{2, 3, 7, 0.4f}, ResNormCase{3, 2, 33, 0.1f}));

// ---- dropout ----------------------------------------------------------------------------------------------

TEST(DropoutGrad, MatchesFiniteDifferences) {
  const int B = 3, T = 4, C = 9;
  Rng rng(13);
  Vec x = rng.vec<double>(size_t(B) * T * C);
  const Vec w = rng.vec<double>(x.size());
  const std::vector<int64_t> pair = {17, 4, 1000003};
  DropoutArgs<double> a;
  a.rows = B * T, a.cols = C, a.seq_len = T, a.pair = pair.data(), a.seed = 5, a.step = 2, a.site = 3, a.p = 0.4f;
  auto loss = [&] {
    Vec y(x.size());
    DropoutArgs<double> f = a;
    f.x = x.data(), f.y = y.data();
    cpu::dropout_forward(f);
    return weighted_sum(w, y);
  };
  Vec dx(x.size(), kNaN);
  DropoutArgs<double> bwd = a;
  bwd.x = w.data(), bwd.y = dx.data();
  cpu::dropout_backward(bwd);
  int dropped = 0;
  for (double v : dx) dropped += v == 0.0;
  EXPECT_GT(dropped, 0);  // the check below must see both kept and dropped elements
  EXPECT_LT(dropped, int(dx.size()));
  expect_gradient(x, dx, loss, "dropout dx");
}

// ---- layer norm -------------------------------------------------------------------------------------------

struct LnCase { int rows, cols; };
class LayerNormGrad : public ::testing::TestWithParam<LnCase> {};

TEST_P(LayerNormGrad, MatchesFiniteDifferences) {
  const auto [rows, cols] = GetParam();
  Rng rng(17 + rows * 31 + cols);
  Vec x = rng.vec<double>(size_t(rows) * cols, -2, 2), gamma = rng.vec<double>(cols, 0.5, 1.5),
      beta = rng.vec<double>(cols);
  const Vec w = rng.vec<double>(x.size());
  Vec mean(rows), rstd(rows);
  auto forward = [&](Vec& y) {
    y.assign(x.size(), 0.0);
    LayerNormForward<double> f;
    f.x = x.data(), f.gamma = gamma.data(), f.beta = beta.data(), f.y = y.data(), f.mean = mean.data();
    f.rstd = rstd.data(), f.rows = rows, f.cols = cols;
    cpu::layer_norm_forward(f);
  };
  auto loss = [&] {
    Vec y;
    forward(y);
    return weighted_sum(w, y);
  };
  Vec y;
  forward(y);
  const Vec g_prefill = rng.vec<double>(cols), b_prefill = rng.vec<double>(cols);
  Vec dx(x.size(), kNaN), dgamma = g_prefill, dbeta = b_prefill;
  LayerNormBackward<double> bwd;
  bwd.dy = w.data(), bwd.x = x.data(), bwd.gamma = gamma.data(), bwd.mean = mean.data(), bwd.rstd = rstd.data();
  bwd.dx = dx.data(), bwd.dgamma = dgamma.data(), bwd.dbeta = dbeta.data(), bwd.rows = rows, bwd.cols = cols;
  cpu::layer_norm_backward(bwd);
  for (int c = 0; c < cols; ++c) dgamma[c] -= g_prefill[c], dbeta[c] -= b_prefill[c];

  // dx may alias dy: same results in place.
  Vec dx_inplace = w, dgamma2(cols, 0.0), dbeta2(cols, 0.0);
  LayerNormBackward<double> inplace = bwd;
  inplace.dy = dx_inplace.data(), inplace.dx = dx_inplace.data(), inplace.dgamma = dgamma2.data();
  inplace.dbeta = dbeta2.data();
  cpu::layer_norm_backward(inplace);
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_EQ(dx_inplace[i], dx[i]) << i;
  for (int c = 0; c < cols; ++c) EXPECT_NEAR(dgamma2[c], dgamma[c], 1e-12) << c;

  expect_gradient(x, dx, loss, "layer_norm dx");
  expect_gradient(gamma, dgamma, loss, "layer_norm dgamma");
  expect_gradient(beta, dbeta, loss, "layer_norm dbeta");
}

INSTANTIATE_TEST_SUITE_P(Shapes, LayerNormGrad,
                         ::testing::Values(LnCase{1, 1}, LnCase{1, 2}, LnCase{3, 7}, LnCase{5, 16}, LnCase{2, 67}));

// ---- attention --------------------------------------------------------------------------------------------

// fused: self-attention with q, k, v the column slices of one [B*T, 3D] buffer (the fused projection).
// Otherwise cross-attention layout: q in its own [B*Tq, D+2] buffer (padded rows), k and v the slices of
// one [B*Tk, 2D] buffer, out with row stride D+1.
struct AttnCase {
  const char* name;
  int B, Tq, Tk, H, Dh;
  bool fused, causal;
  float p_drop;
  std::vector<int32_t> k_len;
};

class AttentionGrad : public ::testing::TestWithParam<AttnCase> {};

TEST_P(AttentionGrad, MatchesFiniteDifferences) {
  const AttnCase& c = GetParam();
  const int D = c.H * c.Dh;
  Rng rng(23 + c.B * 5 + c.Tq * 7 + c.Tk * 11 + c.H * 13 + c.Dh);
  AttentionShape<double> s;
  s.B = c.B, s.Tq = c.Tq, s.Tk = c.Tk, s.H = c.H, s.Dh = c.Dh;
  s.k_len = c.k_len.data(), s.causal = c.causal, s.scale = float(1.0 / std::sqrt(double(c.Dh)));
  const std::vector<int64_t> pair = {41, 7, 123456789, 3};
  s.p_drop = c.p_drop, s.pair = pair.data(), s.seed = 99, s.step = 12, s.site = 5;

  // Buffers: qbuf holds q (and k, v when fused); kvbuf holds k and v otherwise.
  int q_cols, kv_cols;
  if (c.fused) {
    q_cols = 3 * D, kv_cols = 0;
    s.q_stride = s.kv_stride = 3 * D;
    s.q_bstride = s.kv_bstride = long(c.Tq) * 3 * D;
    s.o_stride = D, s.o_bstride = long(c.Tq) * D;
  } else {
    q_cols = D + 2, kv_cols = 2 * D;
    s.q_stride = q_cols, s.q_bstride = long(c.Tq) * q_cols;
    s.kv_stride = kv_cols, s.kv_bstride = long(c.Tk) * kv_cols;
    s.o_stride = D + 1, s.o_bstride = long(c.Tq) * (D + 1);
  }
  Vec qbuf = rng.vec<double>(size_t(c.B) * c.Tq * q_cols, -1.5, 1.5);
  Vec kvbuf = rng.vec<double>(size_t(c.B) * c.Tk * kv_cols, -1.5, 1.5);
  const size_t out_size = size_t(c.B) * c.Tq * s.o_stride;
  Vec w(out_size, 0.0);  // weights only on the D channels of each output row
  for (size_t r = 0; r < size_t(c.B) * c.Tq; ++r)
    for (int ch = 0; ch < D; ++ch) w[r * s.o_stride + ch] = rng.uniform(-1, 1);

  auto pointers = [&](auto& qb, auto& kvb, auto& f) {
    f.q = qb.data();
    f.k = c.fused ? qb.data() + D : kvb.data();
    f.v = c.fused ? qb.data() + 2 * D : kvb.data() + D;
  };
  Vec probs(size_t(c.B) * c.H * c.Tq * c.Tk);
  auto forward = [&](Vec& out) {
    out.assign(out_size, 0.0);
    AttentionForward<double> f;
    f.shape = s;
    pointers(qbuf, kvbuf, f);
    f.out = out.data(), f.saved = probs.data();
    cpu::attention_forward(f);
  };
  auto loss = [&] {
    Vec out;
    forward(out);
    return weighted_sum(w, out);
  };
  Vec out;
  forward(out);

  // Rows with no valid key give zero output.
  for (int b = 0; b < c.B; ++b)
    for (int t = 0; t < c.Tq; ++t)
      if (c.k_len[b] == 0) {
        for (int ch = 0; ch < D; ++ch) EXPECT_EQ(out[b * s.o_bstride + long(t) * s.o_stride + ch], 0.0);
      }

  // Gradient buffers start as NaN: backward must overwrite every q/k/v entry and nothing else.
  Vec dqbuf(qbuf.size(), kNaN), dkvbuf(kvbuf.size(), kNaN);
  AttentionBackward<double> bwd;
  bwd.shape = s;
  pointers(qbuf, kvbuf, bwd);
  bwd.dout = w.data(), bwd.out = out.data(), bwd.saved = probs.data();
  bwd.dq = dqbuf.data();
  bwd.dk = c.fused ? dqbuf.data() + D : dkvbuf.data();
  bwd.dv = c.fused ? dqbuf.data() + 2 * D : dkvbuf.data() + D;
  cpu::attention_backward(bwd);
  for (size_t i = 0; i < dqbuf.size(); ++i) {
    const bool pad_column = int(i % q_cols) >= (c.fused ? 3 * D : D);
    if (pad_column) {
      EXPECT_TRUE(std::isnan(dqbuf[i])) << "backward wrote outside q's channels at " << i;
      dqbuf[i] = 0.0;  // the loss does not depend on padding columns
    } else {
      EXPECT_FALSE(std::isnan(dqbuf[i])) << "backward left dq/dk/dv entry " << i << " unwritten";
    }
  }
  for (size_t i = 0; i < dkvbuf.size(); ++i) EXPECT_FALSE(std::isnan(dkvbuf[i])) << i;

  expect_gradient(qbuf, dqbuf, loss, std::string(c.name) + (c.fused ? " d(qkv)" : " dq"));
  if (!c.fused) expect_gradient(kvbuf, dkvbuf, loss, std::string(c.name) + " d(kv)");
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionGrad,
    ::testing::Values(
        AttnCase{"single", 1, 1, 1, 1, 1, true, false, 0.0f, {1}},
        AttnCase{"self_padded", 3, 5, 5, 2, 3, true, false, 0.0f, {5, 3, 0}},
        AttnCase{"self_causal_padded", 3, 5, 5, 2, 3, true, true, 0.0f, {5, 2, 0}},
        AttnCase{"self_causal_dropout", 2, 6, 6, 3, 2, true, true, 0.3f, {6, 4}},
        AttnCase{"cross_padded_dropout", 2, 4, 7, 3, 2, false, false, 0.25f, {7, 0}},
        AttnCase{"cross_odd", 3, 3, 5, 1, 5, false, false, 0.0f, {1, 5, 4}},
        AttnCase{"cross_causal", 2, 3, 5, 2, 2, false, true, 0.0f, {5, 2}}),
    [](const ::testing::TestParamInfo<AttnCase>& info) { return std::string(info.param.name); });

// ---- cross entropy ----------------------------------------------------------------------------------------

struct CeCase { int N, V; float smoothing; std::vector<int32_t> targets; };
class CrossEntropyGrad : public ::testing::TestWithParam<CeCase> {};

TEST_P(CrossEntropyGrad, MatchesFiniteDifferencesAndDirectStats) {
  const CeCase& c = GetParam();
  const int pad = 0;
  const float grad_scale = 0.5f;
  Rng rng(29 + c.N * 3 + c.V);
  Vec logits = rng.vec<double>(size_t(c.N) * c.V, -3, 3);
  auto args = [&](const Vec& x, double* dx) {
    CrossEntropyArgs<double> a;
    a.logits = x.data(), a.dlogits = dx, a.targets = c.targets.data(), a.N = c.N, a.V = c.V, a.pad_id = pad;
    a.smoothing = c.smoothing, a.grad_scale = grad_scale;
    return a;
  };
  Vec dlogits(logits.size(), kNaN);
  const CrossEntropyStats stats = cpu::cross_entropy(args(logits, dlogits.data()));

  // Direct computation of the statistics, straight from the definitions (in double, like the kernel).
  const double eps = c.smoothing;
  double loss = 0, nll = 0;
  int64_t tokens = 0, correct = 0;
  for (int n = 0; n < c.N; ++n) {
    const int y = c.targets[n];
    if (y == pad) continue;
    const double* x = &logits[size_t(n) * c.V];
    double z = 0;
    for (int j = 0; j < c.V; ++j) z += std::exp(x[j]);
    double mean_neg_logp = 0;
    for (int j = 0; j < c.V; ++j) mean_neg_logp += -std::log(std::exp(x[j]) / z) / c.V;
    const double neg_logp_y = -std::log(std::exp(x[y]) / z);
    loss += (1 - eps) * neg_logp_y + eps * mean_neg_logp;
    nll += neg_logp_y;
    ++tokens;
    int best = 0;
    for (int j = 0; j < c.V; ++j)
      if (x[j] > x[best]) best = j;
    correct += best == y;
  }
  EXPECT_NEAR(stats.loss, loss, 1e-10 * (1 + std::fabs(loss)));
  EXPECT_NEAR(stats.nll, nll, 1e-10 * (1 + std::fabs(nll)));
  EXPECT_EQ(stats.tokens, tokens);
  EXPECT_EQ(stats.correct, correct);

  // Pad rows get zero gradient; the gradient is grad_scale * dloss/dlogits.
  for (int n = 0; n < c.N; ++n)
    if (c.targets[n] == pad) {
      for (int j = 0; j < c.V; ++j) EXPECT_EQ(dlogits[size_t(n) * c.V + j], 0.0);
    }
  expect_gradient(logits, dlogits, [&] { return grad_scale * cpu::cross_entropy(args(logits, nullptr)).loss; },
                  "dlogits");

  // dlogits may alias logits.
  Vec inplace = logits;
  const CrossEntropyStats stats2 = cpu::cross_entropy(args(inplace, inplace.data()));
  EXPECT_EQ(stats2.loss, stats.loss);
  for (size_t i = 0; i < inplace.size(); ++i) EXPECT_EQ(inplace[i], dlogits[i]) << i;
}

INSTANTIATE_TEST_SUITE_P(Shapes, CrossEntropyGrad,
                         ::testing::Values(CeCase{1, 1, 0.0f, {0}},           // one pad row
                                           CeCase{1, 2, 0.1f, {1}},
                                           CeCase{3, 5, 0.1f, {0, 0, 0}},     // all pad
                                           CeCase{4, 7, 0.0f, {3, 0, 6, 1}},
                                           CeCase{5, 9, 0.1f, {8, 2, 0, 2, 5}},
                                           CeCase{2, 33, 0.3f, {32, 1}}));

}  // namespace
}  // namespace aiayn::kernels
