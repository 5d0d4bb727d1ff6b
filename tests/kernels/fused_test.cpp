// The fused ops of the CPU op table against the unfused composition they replace, bit for bit (their
// contract says the same operations run in the same order); the CPU variants reorganised for speed against
// the plain reference loops (kernels/cpu/reference.hpp); and the bf16 storage type the CUDA backend's mixed
// precision uses (rounding, special values, cast, Adam's refreshed copy).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernel_test_util.hpp"
#include "numerics.hpp"
#include "kernels/bf16.hpp"
#include "kernels/ops.hpp"
#include "reference.hpp"

namespace aiayn::kernels {
namespace {

using aiayn::testing::Rng;

DropoutMask mask(const std::vector<int64_t>& pair, int seq_len, float p) {
  DropoutMask m;
  m.p = p, m.seq_len = seq_len, m.pair = pair.data(), m.seed = 77, m.step = 12, m.site = 6;
  return m;
}

template <class T>
void expect_same(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << what << "[" << i << "]";
}

template <class T>
void check_residual_norm(int B, int T_len, int cols, float p) {
  const int rows = B * T_len;
  Rng rng(5 + rows + cols);
  const auto x = rng.vec<T>(size_t(rows) * cols, -2, 2), f = rng.vec<T>(size_t(rows) * cols, -2, 2);
  const auto gamma = rng.vec<T>(cols, 0.5, 1.5), beta = rng.vec<T>(cols), dy = rng.vec<T>(size_t(rows) * cols);
  std::vector<int64_t> pair(B);
  for (int b = 0; b < B; ++b) pair[b] = 31 * b + 2;
  const DropoutMask m = mask(pair, T_len, p);

  // Unfused: dropout f in place, s = x + f, y = LayerNorm(s); backward: LayerNorm backward, df = dropout(dx).
  std::vector<T> f1 = f, s1(x.size()), y1(x.size()), mean1(rows), rstd1(rows);
  DropoutArgs<T> d;
  static_cast<DropoutMask&>(d) = m;
  d.x = f1.data(), d.y = f1.data(), d.rows = rows, d.cols = cols;
  cpu::dropout_forward(d);
  cpu::add(AddArgs<T>{x.data(), f1.data(), s1.data(), x.size()});
  cpu::layer_norm_forward(LayerNormForward<T>{s1.data(), gamma.data(), beta.data(), y1.data(), mean1.data(),
                                              rstd1.data(), rows, cols, 1e-5f});
  std::vector<T> dx1 = dy, df1(x.size()), dg1(cols, T(0.5)), db1(cols, T(-0.25));
  cpu::layer_norm_backward(LayerNormBackward<T>{dx1.data(), s1.data(), gamma.data(), mean1.data(), rstd1.data(),
                                                dx1.data(), dg1.data(), db1.data(), rows, cols});
  DropoutArgs<T> db = d;
  db.x = dx1.data(), db.y = df1.data();
  cpu::dropout_backward(db);

  std::vector<T> s2(x.size()), y2(x.size()), mean2(rows), rstd2(rows);
  ResidualNormForward<T> fw;
  fw.x = x.data(), fw.f = f.data(), fw.gamma = gamma.data(), fw.beta = beta.data(), fw.s = s2.data();
  fw.y = y2.data(), fw.mean = mean2.data(), fw.rstd = rstd2.data(), fw.rows = rows, fw.cols = cols, fw.drop = m;
  cpu::residual_norm_forward(fw);
  expect_same(s2, s1, "s");
  expect_same(y2, y1, "y");
  expect_same(mean2, mean1, "mean");
  expect_same(rstd2, rstd1, "rstd");

  std::vector<T> dx2 = dy, df2(x.size()), dg2(cols, T(0.5)), db2(cols, T(-0.25));
  ResidualNormBackward<T> bw;
  bw.dy = dx2.data(), bw.s = s2.data(), bw.gamma = gamma.data(), bw.mean = mean2.data(), bw.rstd = rstd2.data();
  bw.dx = dx2.data(), bw.df = df2.data(), bw.dgamma = dg2.data(), bw.dbeta = db2.data(), bw.rows = rows;
  bw.cols = cols, bw.drop = m;
  cpu::residual_norm_backward(bw);
  expect_same(dx2, dx1, "dx");
  expect_same(df2, df1, "df");
  expect_same(dg2, dg1, "dgamma");
  expect_same(db2, db1, "dbeta");
}

TEST(ResidualNorm, EqualsDropoutAddLayerNormBitForBit) {
  for (float p : {0.0f, 0.1f, 0.5f}) {
    check_residual_norm<float>(3, 5, 37, p);
    check_residual_norm<float>(1, 1, 1, p);
    check_residual_norm<double>(2, 4, 19, p);
  }
}

TEST(ResidualNorm, DfMayNotAliasDy) {
  std::vector<float> buf(4), s(4), gamma(4, 1.0f), mean(1), rstd(1, 1.0f);
  ResidualNormBackward<float> bw;
  bw.dy = buf.data(), bw.s = s.data(), bw.gamma = gamma.data(), bw.mean = mean.data(), bw.rstd = rstd.data();
  bw.dx = buf.data(), bw.df = buf.data(), bw.rows = 1, bw.cols = 4;
  EXPECT_THROW(cpu::residual_norm_backward(bw), Error);
}

template <class T>
void check_embed_dropout(float p) {
  const int V = 11, D = 13, B = 3, S = 5, N = B * S;
  Rng rng(9);
  const auto table = rng.vec<T>(size_t(V) * D), dout = rng.vec<T>(size_t(N) * D);
  std::vector<int32_t> ids(N);
  for (auto& id : ids) id = rng.integer(0, V - 1);
  const std::vector<int64_t> pair = {5, 900, 12};
  const DropoutMask m = mask(pair, S, p);

  std::vector<T> out1(size_t(N) * D), out2(out1.size());
  EmbedForward<T> e;
  e.ids = ids.data(), e.table = table.data(), e.out = out1.data(), e.N = N, e.D = D, e.V = V, e.seq_len = S;
  e.scale = 3.5f;
  cpu::embed_forward(e);
  DropoutArgs<T> d;
  static_cast<DropoutMask&>(d) = m;
  d.x = out1.data(), d.y = out1.data(), d.rows = N, d.cols = D;
  cpu::dropout_forward(d);
  EmbedForward<T> fused = e;
  fused.out = out2.data(), fused.drop = m;
  cpu::embed_forward(fused);
  expect_same(out2, out1, "embed_forward");

  std::vector<T> dropped(dout.size()), dt1(table.size(), T(0.125)), dt2 = dt1;
  DropoutArgs<T> db = d;
  db.x = dout.data(), db.y = dropped.data();
  cpu::dropout_backward(db);
  cpu::embed_backward(EmbedBackward<T>{ids.data(), dropped.data(), dt1.data(), N, D, V, 3.5f, {}});
  cpu::embed_backward(EmbedBackward<T>{ids.data(), dout.data(), dt2.data(), N, D, V, 3.5f, m});
  expect_same(dt2, dt1, "embed_backward");
}

TEST(Embed, FusedDropoutEqualsEmbedThenDropoutBitForBit) {
  for (float p : {0.0f, 0.1f, 0.6f}) {
    check_embed_dropout<float>(p);
    check_embed_dropout<double>(p);
  }
}

TEST(Embed, DropoutWithExplicitPositionsIsRefused) {
  const std::vector<float> table(4, 1.0f);
  const std::vector<int32_t> ids = {0, 1}, pos = {3, 4};
  const std::vector<int64_t> pair = {0, 1};
  std::vector<float> out(4);
  EmbedForward<float> e;
  e.ids = ids.data(), e.table = table.data(), e.out = out.data(), e.positions = pos.data(), e.N = 2, e.D = 2;
  e.V = 2, e.drop = mask(pair, 1, 0.1f);
  EXPECT_THROW(cpu::embed_forward(e), Error);
}

// ---- attention: the vectorised variant against the reference loops ---------------------------------------

using aiayn::testing::max_rel_diff;  // tests/common/numerics.hpp

struct AttnVariantCase {
  int B, Tq, Tk, H, Dh;
  bool causal;
  float p_drop;
  std::vector<int32_t> k_len;
};

template <class T>
void check_attention_variant(const AttnVariantCase& c, double tol) {
  const int D = c.H * c.Dh;
  Rng rng(700 + c.Tq * 11 + c.Tk + c.Dh);
  // q in its own [B*Tq, D] buffer, k and v the column slices of one [B*Tk, 2D] buffer (cross-attention layout).
  const auto q = rng.vec<T>(size_t(c.B) * c.Tq * D, -2, 2), kv = rng.vec<T>(size_t(c.B) * c.Tk * 2 * D, -2, 2);
  const auto dout = rng.vec<T>(size_t(c.B) * c.Tq * D);
  std::vector<int64_t> pair(c.B);
  for (int b = 0; b < c.B; ++b) pair[b] = 5 + b;
  AttentionShape<T> s;
  s.B = c.B, s.Tq = c.Tq, s.Tk = c.Tk, s.H = c.H, s.Dh = c.Dh;
  s.q_bstride = long(c.Tq) * D, s.q_stride = D, s.kv_bstride = long(c.Tk) * 2 * D, s.kv_stride = 2 * D;
  s.o_bstride = long(c.Tq) * D, s.o_stride = D, s.k_len = c.k_len.empty() ? nullptr : c.k_len.data();
  s.causal = c.causal, s.scale = 0.3f, s.p_drop = c.p_drop, s.pair = pair.data(), s.seed = 4, s.step = 2, s.site = 9;
  std::vector<T> outs[2], probs[2], dq[2], dkv[2];
  for (int variant = 0; variant < 2; ++variant) {
    outs[variant].assign(q.size(), T(NAN)), probs[variant].assign(size_t(c.B) * c.H * c.Tq * c.Tk, T(NAN));
    AttentionForward<T> f;
    f.shape = s, f.q = q.data(), f.k = kv.data(), f.v = kv.data() + D, f.out = outs[variant].data();
    f.saved = probs[variant].data();
    variant == 0 ? cpu::attention_forward(f) : cpu::reference::attention_forward(f);
    dq[variant].assign(q.size(), T(NAN)), dkv[variant].assign(kv.size(), T(NAN));
    AttentionBackward<T> bw;
    bw.shape = s, bw.dout = dout.data(), bw.q = q.data(), bw.k = kv.data(), bw.v = kv.data() + D;
    bw.out = outs[variant].data(), bw.saved = probs[variant].data(), bw.dq = dq[variant].data();
    bw.dk = dkv[variant].data(), bw.dv = dkv[variant].data() + D;
    variant == 0 ? cpu::attention_backward(bw) : cpu::reference::attention_backward(bw);
  }
  EXPECT_LE(max_rel_diff(outs[0], outs[1]), tol) << "out";
  EXPECT_LE(max_rel_diff(probs[0], probs[1]), tol) << "probs";
  EXPECT_LE(max_rel_diff(dq[0], dq[1]), tol) << "dq";
  EXPECT_LE(max_rel_diff(dkv[0], dkv[1]), tol) << "dk, dv";
}

TEST(AttentionVariant, MatchesReferenceLoops) {
  const std::vector<AttnVariantCase> cases = {
      {1, 1, 1, 1, 1, false, 0.0f, {}},            {2, 5, 5, 2, 3, true, 0.0f, {5, 2}},
      {3, 17, 33, 4, 16, false, 0.2f, {33, 1, 0}}, {2, 31, 31, 3, 64, true, 0.1f, {31, 17}},
      {1, 40, 16, 2, 8, false, 0.0f, {16}},        {2, 3, 47, 1, 65, false, 0.3f, {}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE("Tq=" + std::to_string(c.Tq) + " Tk=" + std::to_string(c.Tk) + " Dh=" + std::to_string(c.Dh));
    // Double: the two differ only in summation order and exp's last bits (~1e-16 each, grown by the sums).
    check_attention_variant<double>(c, 1e-12);
    // Float: scores of |q.k| up to ~40 carry ~4e-6 absolute rounding either way; softmax keeps it ~1e-5.
    check_attention_variant<float>(c, 2e-5);
  }
}

// ---- bf16 ---------------------------------------------------------------------------------------------------

float from_bits(uint32_t u) { return bits_float(u); }

TEST(Bf16, RoundsToNearestEvenAndKeepsSpecialValues) {
  EXPECT_EQ(to_bf16(1.0f).bits, 0x3f80);
  EXPECT_EQ(to_float(to_bf16(1.0f)), 1.0f);
  // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
  EXPECT_EQ(to_bf16(from_bits(0x3f808000u)).bits, 0x3f80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): rounds up to even.
  EXPECT_EQ(to_bf16(from_bits(0x3f818000u)).bits, 0x3f82);
  EXPECT_EQ(to_bf16(from_bits(0x3f808001u)).bits, 0x3f81);  // just above halfway: up
  EXPECT_EQ(to_bf16(from_bits(0x3f807fffu)).bits, 0x3f80);  // just below: down
  EXPECT_EQ(to_bf16(-2.5f).bits, 0xc020);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(to_float(to_bf16(inf)), inf);
  EXPECT_EQ(to_float(to_bf16(-inf)), -inf);
  EXPECT_TRUE(std::isnan(to_float(to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(to_float(to_bf16(from_bits(0x7f800001u)))));  // a signalling NaN with low bits only
  EXPECT_EQ(to_float(to_bf16(std::numeric_limits<float>::max())), inf);  // rounds past the largest bf16
  EXPECT_EQ(to_float(to_bf16(0.0f)), 0.0f);
  EXPECT_TRUE(std::signbit(to_float(to_bf16(-0.0f))));
}

TEST(Bf16, RelativeErrorAtMostHalfAnUlp) {
  Rng rng(3);
  for (int i = 0; i < 100000; ++i) {
    const float x = static_cast<float>(rng.uniform(-1e6, 1e6));
    const float r = to_float(to_bf16(x));
    ASSERT_LE(std::fabs(double(r) - double(x)), std::ldexp(std::fabs(double(x)), -8)) << x;
  }
}

TEST(Cast, RoundTripsAndAdamRefreshesTheBf16Copy) {
  Rng rng(4);
  const auto x = rng.vec<float>(1000, -3, 3);
  std::vector<bf16> h(x.size());
  std::vector<float> back(x.size());
  cast(Device::CPU, CastArgs<float, bf16>{x.data(), h.data(), x.size()});
  cast(Device::CPU, CastArgs<bf16, float>{h.data(), back.data(), h.size()});
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(back[i], to_float(to_bf16(x[i]))) << i;

  std::vector<float> param = x, grad = rng.vec<float>(x.size()), m(x.size()), v(x.size());
  std::vector<bf16> copy(x.size());
  AdamArgs<float> a;
  a.param = param.data(), a.grad = grad.data(), a.m = m.data(), a.v = v.data(), a.n = x.size(), a.lr = 0.01f;
  a.bias1 = 0.1, a.bias2 = 0.02, a.param_bf16 = copy.data();
  cpu::adam(a);
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_NE(param[i], x[i]) << i;
    ASSERT_EQ(copy[i].bits, to_bf16(param[i]).bits) << i;
  }
}

}  // namespace
}  // namespace aiayn::kernels
