// The Transformer's layers (see layers.hpp for the invariants): one code for training, evaluation and decoding.
#include "layers.hpp"

#include <fmt/format.h>

#include <cmath>
#include <string>
#include <type_traits>

#include "aiayn/error.hpp"
#include "kernels/fast_math.hpp"
#include "trainer/config.hpp"

namespace aiayn::trainer::layers {

using k::Device;

// ---- parameter offsets ----

NetworkOffsets NetworkOffsets::from_table(const ParamTable& table, const ModelSection& arch) {
  auto offset = [&](const std::string& name) { return table.at(name).offset; };
  auto norm = [&](const std::string& p) { return NormOffsets{offset(p + "/weight"), offset(p + "/bias")}; };
  auto ffn = [&](const std::string& p) {
    return FeedForwardOffsets{offset(p + "/fc1/weight"), offset(p + "/fc1/bias"), offset(p + "/fc2/weight"),
                              offset(p + "/fc2/bias")};
  };
  // The fused projections rely on the table's adjacency (params.hpp): q|k|v and cross k|v are one block each,
  // and none of them has a bias.
  auto adjacent = [&](const std::string& a, const std::string& b) {
    AIAYN_CHECK(table.at(a).offset + table.at(a).size == table.at(b).offset,
                fmt::format("model: parameters {} and {} are not adjacent in the table", a, b));
  };
  auto no_bias = [&](const std::string& p) {
    AIAYN_CHECK(!table.contains(p + "/bias"), fmt::format("model: {}/bias: the q, k, v projections have no bias", p));
  };
  // p: ".../self_attn" or ".../cross_attn"; self: q|k|v adjacent, cross: k|v adjacent.
  auto attention = [&](const std::string& p, bool self) {
    if (self) adjacent(p + "/q/weight", p + "/k/weight");
    adjacent(p + "/k/weight", p + "/v/weight");
    for (const char* w : {"/q", "/k", "/v"}) no_bias(p + w);
    return AttentionOffsets{offset(p + "/q/weight"), offset(p + "/k/weight"), offset(p + "/out/weight"),
                            offset(p + "/out/bias")};
  };
  NetworkOffsets n;
  n.embedding = offset("embedding/weight");
  for (int l = 0; l < arch.layers; ++l) {
    const std::string p = fmt::format("encoder/layers/{}", l);
    n.encoder.push_back(EncoderLayerOffsets{attention(p + "/self_attn", true), norm(p + "/self_attn_norm"),
                                            ffn(p + "/ffn"), norm(p + "/ffn_norm")});
  }
  for (int l = 0; l < arch.layers; ++l) {
    const std::string p = fmt::format("decoder/layers/{}", l);
    n.decoder.push_back(DecoderLayerOffsets{attention(p + "/self_attn", true), norm(p + "/self_attn_norm"),
                                            attention(p + "/cross_attn", false), norm(p + "/cross_attn_norm"),
                                            ffn(p + "/ffn"), norm(p + "/ffn_norm")});
  }
  if (arch.pre_norm) {
    n.encoder_final_norm = norm("encoder/final_norm");
    n.decoder_final_norm = norm("decoder/final_norm");
  }
  return n;
}

// ---- building blocks ----

template <class T, class A>
TransformerLayers<T, A>::TransformerLayers(Model<T>& m)
    : model(m), spec(m.spec()), dev(m.device()), D(spec.arch.d_model), H(spec.arch.heads),
      Dh(spec.arch.d_model / spec.arch.heads), F(spec.arch.d_ff), V(spec.vocab), L(spec.arch.layers),
      pre_norm(spec.arch.pre_norm), offsets(NetworkOffsets::from_table(m.table(), spec.arch)) {}

template <class T, class A>
const A* TransformerLayers<T, A>::matmul_weight(size_t offset) {
  if constexpr (std::is_same_v<A, T>) {
    return model.params() + offset;
  } else {
    return model.params_bf16() + offset;
  }
}

template <class T, class A>
void TransformerLayers<T, A>::linear(const A* x, int N, int in, size_t weight, size_t bias, int out, A* y, int ldc,
                                     bool relu) {
  k::GemmArgs<A> g;
  g.trans_b = true;
  g.m = N, g.n = out, g.k = in;
  g.a = x, g.lda = in;
  g.b = matmul_weight(weight), g.ldb = in;
  g.c = y, g.ldc = ldc ? ldc : out;
  g.bias = bias == kNoBias ? nullptr : matmul_weight(bias);
  g.relu = relu;
  k::gemm(dev, g);
}

template <class T, class A>
void TransformerLayers<T, A>::linear_backward(const A* dy, const A* x, int N, int in, int out, size_t weight,
                                              size_t bias, A* dx, bool accumulate) {
  if (dx) {
    k::GemmArgs<A> g;
    g.m = N, g.n = in, g.k = out;
    g.a = dy, g.lda = out;
    g.b = matmul_weight(weight), g.ldb = in;
    g.c = dx, g.ldc = in;
    g.beta = accumulate ? 1.0f : 0.0f;
    k::gemm(dev, g);
  }
  k::GemmArgs<A, T> gw;
  gw.trans_a = true;
  gw.m = out, gw.n = in, gw.k = N;
  gw.a = dy, gw.lda = out;
  gw.b = x, gw.ldb = in;
  gw.c = grad(weight), gw.ldc = in;
  gw.beta = 1.0f;
  k::gemm(dev, gw);
  if (bias != kNoBias) k::bias_grad(dev, k::BiasGrad<A, T>{dy, grad(bias), N, out});
}

template <class T, class A>
void TransformerLayers<T, A>::copy(A* dst, const A* from, size_t n) {
  k::device_copy(dev, dst, dev, from, n * sizeof(A));
}

template <class T, class A>
void TransformerLayers<T, A>::add(const A* a, const A* b, A* y, size_t n) {
  k::add(dev, k::AddArgs<A>{a, b, y, n});
}

template <class T, class A>
void TransformerLayers<T, A>::norm_forward(const A* x, const NormOffsets& n, A* y, T* mean, T* rstd, int rows) {
  k::layer_norm_forward(
      dev, k::LayerNormForward<A, T>{x, param(n.weight), param(n.bias), y, mean, rstd, rows, D, kLayerNormEpsilon});
}

template <class T, class A>
void TransformerLayers<T, A>::norm_backward(A* dy_dx, const A* x, const NormOffsets& n, const T* mean, const T* rstd,
                                            int rows) {
  k::layer_norm_backward(dev, k::LayerNormBackward<A, T>{dy_dx, x, param(n.weight), mean, rstd, dy_dx, grad(n.weight),
                                                         grad(n.bias), rows, D});
}

template <class T, class A>
k::DropoutMask TransformerLayers<T, A>::mask(int seq_len, uint32_t site, float p, const DropoutKeys& keys) const {
  k::DropoutMask m;
  m.p = keys.context.train ? p : 0.0f, m.seq_len = seq_len, m.pair = keys.pair;
  m.seed = keys.context.seed, m.step = keys.context.step, m.site = site;
  return m;
}

namespace {
template <class A>
k::DropoutArgs<A> dropout_args(const k::DropoutMask& m, A* x, int rows, int cols) {
  k::DropoutArgs<A> a;
  static_cast<k::DropoutMask&>(a) = m;
  a.x = x, a.y = x, a.rows = rows, a.cols = cols;
  return a;
}
}  // namespace

template <class T, class A>
void TransformerLayers<T, A>::dropout_forward(A* x, int rows, int cols, int seq_len, uint32_t site, float p,
                                              const DropoutKeys& keys) {
  if (keys.context.train && p > 0)
    k::dropout_forward(dev, dropout_args(mask(seq_len, site, p, keys), x, rows, cols));
}

template <class T, class A>
void TransformerLayers<T, A>::dropout_backward(A* dx, int rows, int cols, int seq_len, uint32_t site, float p,
                                               const DropoutKeys& keys) {
  if (keys.context.train && p > 0)
    k::dropout_backward(dev, dropout_args(mask(seq_len, site, p, keys), dx, rows, cols));
}

// ---- residual sub-layers ----

template <class T, class A>
const A* TransformerLayers<T, A>::residual_in(const A* x, ResidualTensors<A, T>& r, const NormOffsets& n, int rows) {
  if (!pre_norm) return x;
  norm_forward(x, n, r.norm_io, r.mean, r.rstd, rows);
  return r.norm_io;
}

template <class T, class A>
void TransformerLayers<T, A>::residual_out(const A* x, A* f, ResidualTensors<A, T>& r, const NormOffsets& n, int rows,
                                           int seq_len, uint32_t drop_site, const DropoutKeys& keys) {
  if (pre_norm) {
    dropout_forward(f, rows, D, seq_len, drop_site, residual_dropout(), keys);
    add(x, f, r.out, static_cast<size_t>(rows) * D);
    return;
  }
  k::ResidualNormForward<A, T> a;
  a.x = x, a.f = f, a.gamma = param(n.weight), a.beta = param(n.bias), a.s = r.norm_io, a.y = r.out;
  a.mean = r.mean, a.rstd = r.rstd;
  a.rows = rows, a.cols = D, a.eps = kLayerNormEpsilon, a.drop = mask(seq_len, drop_site, residual_dropout(), keys);
  k::residual_norm_forward(dev, a);
}

template <class T, class A>
void TransformerLayers<T, A>::residual_out_backward(A* d_out, A* df, ResidualTensors<A, T>& r, const NormOffsets& n,
                                                    int rows, int seq_len, uint32_t drop_site,
                                                    const DropoutKeys& keys) {
  if (pre_norm) {
    copy(df, d_out, static_cast<size_t>(rows) * D);
    dropout_backward(df, rows, D, seq_len, drop_site, residual_dropout(), keys);
    return;
  }
  k::ResidualNormBackward<A, T> a;
  a.dy = d_out, a.s = r.norm_io, a.gamma = param(n.weight), a.mean = r.mean, a.rstd = r.rstd, a.dx = d_out, a.df = df;
  a.dgamma = grad(n.weight), a.dbeta = grad(n.bias), a.rows = rows, a.cols = D;
  a.drop = mask(seq_len, drop_site, residual_dropout(), keys);
  k::residual_norm_backward(dev, a);
}

template <class T, class A>
void TransformerLayers<T, A>::residual_in_backward(const A* x, A* d_fn_in, A* d_x, ResidualTensors<A, T>& r,
                                                   const NormOffsets& n, int rows) {
  if (pre_norm) norm_backward(d_fn_in, x, n, r.mean, r.rstd, rows);
  add(d_x, d_fn_in, d_x, static_cast<size_t>(rows) * D);
}

// ---- feed-forward ----

template <class T, class A>
void TransformerLayers<T, A>::feed_forward(const A* fn_in, int rows, int seq_len, const FeedForwardOffsets& p,
                                           FeedForwardTensors<A>& t, A* out, uint32_t relu_site,
                                           const DropoutKeys& keys) {
  linear(fn_in, rows, D, p.fc1_weight, p.fc1_bias, F, t.hidden, 0, /*relu=*/true);
  if (t.hidden_dropped != t.hidden) {
    copy(t.hidden_dropped, t.hidden, static_cast<size_t>(rows) * F);
    dropout_forward(t.hidden_dropped, rows, F, seq_len, relu_site, relu_dropout(), keys);
  }
  linear(t.hidden_dropped, rows, F, p.fc2_weight, p.fc2_bias, D, out);
}

template <class T, class A>
void TransformerLayers<T, A>::feed_forward_backward(const A* fn_in, int rows, int seq_len, const FeedForwardOffsets& p,
                                                    const FeedForwardTensors<A>& t, const A* dout, A* d_fn_in,
                                                    GradientScratch<A>& g, uint32_t relu_site,
                                                    const DropoutKeys& keys) {
  linear_backward(dout, t.hidden_dropped, rows, F, D, p.fc2_weight, p.fc2_bias, g.d_hidden, false);
  if (t.hidden_dropped != t.hidden) dropout_backward(g.d_hidden, rows, F, seq_len, relu_site, relu_dropout(), keys);
  k::relu_backward(dev, k::ReluBackward<A>{t.hidden, g.d_hidden, g.d_hidden, static_cast<size_t>(rows) * F});
  linear_backward(g.d_hidden, fn_in, rows, D, F, p.fc1_weight, p.fc1_bias, d_fn_in, false);
}

// ---- attention ----

template <class T, class A>
AttentionTensors<A> TransformerLayers<T, A>::self_attention_tensors(A* qkv, A* ctx, int entries, int len,
                                                                    const int32_t* lens, bool causal) const {
  AttentionTensors<A> t;
  t.projection = Projection::QkvTogether;
  t.q = qkv, t.keys = qkv ? qkv + D : nullptr, t.ctx = ctx;
  k::AttentionShape<A>& g = t.shape;
  g.B = entries, g.Tq = len, g.Tk = len, g.H = H, g.Dh = Dh, g.k_len = lens, g.causal = causal;
  g.q_bstride = g.kv_bstride = static_cast<long>(len) * 3 * D, g.q_stride = g.kv_stride = 3 * D;
  g.o_bstride = static_cast<long>(len) * D, g.o_stride = D;
  return t;
}

template <class T, class A>
AttentionTensors<A> TransformerLayers<T, A>::cross_attention_tensors(A* q, A* kv, A* ctx, int entries, int queries,
                                                                     int key_len, const int32_t* lens) const {
  AttentionTensors<A> t;
  t.projection = Projection::QOnly;
  t.q = q, t.keys = kv, t.ctx = ctx;
  k::AttentionShape<A>& g = t.shape;
  g.B = entries, g.Tq = queries, g.Tk = key_len, g.H = H, g.Dh = Dh, g.k_len = lens;
  g.q_bstride = static_cast<long>(queries) * D, g.q_stride = D;
  g.kv_bstride = static_cast<long>(key_len) * 2 * D, g.kv_stride = 2 * D;
  g.o_bstride = static_cast<long>(queries) * D, g.o_stride = D;
  return t;
}

template <class T, class A>
k::AttentionShape<A> TransformerLayers<T, A>::attention_shape(const AttentionTensors<A>& t, uint32_t probs_site,
                                                              const DropoutKeys& keys) const {
  k::AttentionShape<A> s = t.shape;
  s.H = H, s.Dh = Dh;
  s.scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  s.p_drop = keys.context.train ? static_cast<float>(spec.arch.attention_dropout) : 0.0f;
  s.pair = keys.pair, s.seed = keys.context.seed, s.step = keys.context.step, s.site = probs_site;
  return s;
}

template <class T, class A>
void TransformerLayers<T, A>::attention(const A* fn_in, int rows, const AttentionOffsets& p, AttentionTensors<A>& t,
                                        A* out, uint32_t probs_site, const DropoutKeys& keys) {
  switch (t.projection) {
    case Projection::QkvTogether:
      linear(fn_in, rows, D, p.q_weight, kNoBias, 3 * D, t.q);
      break;
    case Projection::QThenKv:
      linear(fn_in, rows, D, p.q_weight, kNoBias, D, t.q, t.shape.q_stride);
      linear(fn_in, rows, D, p.kv_weight, kNoBias, 2 * D, t.new_kv, static_cast<int>(t.kv_ld));
      break;
    case Projection::QOnly:
      linear(fn_in, rows, D, p.q_weight, kNoBias, D, t.q, t.shape.q_stride);
      break;
  }
  k::AttentionForward<A> a;
  a.shape = attention_shape(t, probs_site, keys);
  a.q = t.q, a.k = t.keys, a.v = t.keys + D, a.out = t.ctx, a.saved = t.saved;
  k::attention_forward(dev, a);
  linear(t.ctx, rows, D, p.out_weight, p.out_bias, D, out);
}

template <class T, class A>
void TransformerLayers<T, A>::attention_backward(const A* fn_in, int rows, const AttentionOffsets& p,
                                                 const AttentionTensors<A>& t, const A* dout, A* d_fn_in,
                                                 GradientScratch<A>& g, uint32_t probs_site, const DropoutKeys& keys,
                                                 const A* memory, int memory_rows) {
  AIAYN_CHECK(t.projection != Projection::QThenKv, "model: no backward pass through the decoding cache");
  linear_backward(dout, t.ctx, rows, D, D, p.out_weight, p.out_bias, g.d_ctx, false);
  k::AttentionBackward<A> a;
  a.shape = attention_shape(t, probs_site, keys);
  a.dout = g.d_ctx, a.q = t.q, a.k = t.keys, a.v = t.keys + D, a.out = t.ctx, a.saved = t.saved;
  if (t.projection == Projection::QkvTogether) {
    a.dq = g.d_qkv, a.dk = g.d_qkv + D, a.dv = g.d_qkv + 2 * D;
    k::attention_backward(dev, a);
    linear_backward(g.d_qkv, fn_in, rows, D, 3 * D, p.q_weight, kNoBias, d_fn_in, false);
    return;
  }
  a.dq = g.d_qkv, a.dk = g.d_cross_kv, a.dv = g.d_cross_kv + D;
  k::attention_backward(dev, a);
  linear_backward(g.d_qkv, fn_in, rows, D, D, p.q_weight, kNoBias, d_fn_in, false);
  linear_backward(g.d_cross_kv, memory, memory_rows, D, 2 * D, p.kv_weight, kNoBias, g.d_memory, true);
}

template <class T, class A>
void TransformerLayers<T, A>::project_cross_kv(int layer, const A* memory, int rows, A* kv) {
  linear(memory, rows, D, offsets.decoder[layer].cross_attn.kv_weight, kNoBias, 2 * D, kv);
}

// ---- embedding and output projection ----

template <class T, class A>
void TransformerLayers<T, A>::embed(const int32_t* ids, const int32_t* positions, int rows, int seq_len, A* out,
                                    uint32_t stack, const DropoutKeys& keys) {
  k::EmbedForward<A, T> e;
  e.ids = ids, e.table = param(offsets.embedding), e.out = out, e.positions = positions;
  e.N = rows, e.D = D, e.V = V, e.seq_len = seq_len;
  e.scale = std::sqrt(static_cast<float>(D));
  e.drop = mask(seq_len, site(stack, 0, k::DropoutKind::Embedding), residual_dropout(), keys);
  k::embed_forward(dev, e);
}

template <class T, class A>
void TransformerLayers<T, A>::embed_backward(const int32_t* ids, int rows, int seq_len, const A* dout, uint32_t stack,
                                             const DropoutKeys& keys) {
  k::EmbedBackward<A, T> e;
  e.ids = ids, e.dout = dout, e.dtable = grad(offsets.embedding), e.N = rows, e.D = D, e.V = V;
  e.scale = std::sqrt(static_cast<float>(D));
  e.drop = mask(seq_len, site(stack, 0, k::DropoutKind::Embedding), residual_dropout(), keys);
  k::embed_backward(dev, e);
}

template <class T, class A>
void TransformerLayers<T, A>::output_logits(const A* out, int rows, A* logits, int ld) {
  k::GemmArgs<A> g;
  g.trans_b = true;
  g.m = rows, g.n = V, g.k = D;
  g.a = out, g.lda = D;
  g.b = matmul_weight(offsets.embedding), g.ldb = D;
  g.c = logits, g.ldc = ld;
  k::gemm(dev, g);
}

// ---- the layers ----

template <class T, class A>
void TransformerLayers<T, A>::encoder_layer(int layer, const A* x, EncoderLayerTensors<A, T>& t, int rows,
                                            int seq_len, const DropoutKeys& keys) {
  const EncoderLayerOffsets& p = offsets.encoder[layer];
  using Kind = k::DropoutKind;
  auto at = [&](Kind kind) { return site(kEncoderStack, layer, kind); };
  const A* fn_in = residual_in(x, t.self_attn_res, p.self_attn_norm, rows);
  attention(fn_in, rows, p.self_attn, t.self_attn, t.f_out, at(Kind::SelfAttnProbs), keys);
  residual_out(x, t.f_out, t.self_attn_res, p.self_attn_norm, rows, seq_len, at(Kind::SelfAttnOut), keys);
  x = t.self_attn_res.out;
  fn_in = residual_in(x, t.ffn_res, p.ffn_norm, rows);
  feed_forward(fn_in, rows, seq_len, p.ffn, t.ffn, t.f_out, at(Kind::Relu), keys);
  residual_out(x, t.f_out, t.ffn_res, p.ffn_norm, rows, seq_len, at(Kind::FfnOut), keys);
}

template <class T, class A>
void TransformerLayers<T, A>::encoder_layer_backward(int layer, const A* x, EncoderLayerTensors<A, T>& t, int rows,
                                                     int seq_len, const DropoutKeys& keys, A* d_stream,
                                                     GradientScratch<A>& g) {
  const EncoderLayerOffsets& p = offsets.encoder[layer];
  using Kind = k::DropoutKind;
  auto at = [&](Kind kind) { return site(kEncoderStack, layer, kind); };
  const A* x_ffn = t.self_attn_res.out;
  residual_out_backward(d_stream, g.d_f, t.ffn_res, p.ffn_norm, rows, seq_len, at(Kind::FfnOut), keys);
  feed_forward_backward(function_input(x_ffn, t.ffn_res), rows, seq_len, p.ffn, t.ffn, g.d_f, g.d_fn_in, g,
                        at(Kind::Relu), keys);
  residual_in_backward(x_ffn, g.d_fn_in, d_stream, t.ffn_res, p.ffn_norm, rows);
  residual_out_backward(d_stream, g.d_f, t.self_attn_res, p.self_attn_norm, rows, seq_len, at(Kind::SelfAttnOut), keys);
  attention_backward(function_input(x, t.self_attn_res), rows, p.self_attn, t.self_attn, g.d_f, g.d_fn_in, g,
                     at(Kind::SelfAttnProbs), keys);
  residual_in_backward(x, g.d_fn_in, d_stream, t.self_attn_res, p.self_attn_norm, rows);
}

template <class T, class A>
void TransformerLayers<T, A>::decoder_layer(int layer, const A* x, DecoderLayerTensors<A, T>& t, int rows,
                                            int seq_len, const DropoutKeys& keys) {
  const DecoderLayerOffsets& p = offsets.decoder[layer];
  using Kind = k::DropoutKind;
  auto at = [&](Kind kind) { return site(kDecoderStack, layer, kind); };
  const A* fn_in = residual_in(x, t.self_attn_res, p.self_attn_norm, rows);
  attention(fn_in, rows, p.self_attn, t.self_attn, t.f_out, at(Kind::SelfAttnProbs), keys);
  residual_out(x, t.f_out, t.self_attn_res, p.self_attn_norm, rows, seq_len, at(Kind::SelfAttnOut), keys);
  x = t.self_attn_res.out;
  fn_in = residual_in(x, t.cross_attn_res, p.cross_attn_norm, rows);
  attention(fn_in, rows, p.cross_attn, t.cross_attn, t.f_out, at(Kind::CrossAttnProbs), keys);
  residual_out(x, t.f_out, t.cross_attn_res, p.cross_attn_norm, rows, seq_len, at(Kind::CrossAttnOut), keys);
  x = t.cross_attn_res.out;
  fn_in = residual_in(x, t.ffn_res, p.ffn_norm, rows);
  feed_forward(fn_in, rows, seq_len, p.ffn, t.ffn, t.f_out, at(Kind::Relu), keys);
  residual_out(x, t.f_out, t.ffn_res, p.ffn_norm, rows, seq_len, at(Kind::FfnOut), keys);
}

template <class T, class A>
void TransformerLayers<T, A>::decoder_layer_backward(int layer, const A* x, DecoderLayerTensors<A, T>& t, int rows,
                                                     int seq_len, const A* memory, int memory_rows,
                                                     const DropoutKeys& keys, A* d_stream, GradientScratch<A>& g) {
  const DecoderLayerOffsets& p = offsets.decoder[layer];
  using Kind = k::DropoutKind;
  auto at = [&](Kind kind) { return site(kDecoderStack, layer, kind); };
  const A* x_cross = t.self_attn_res.out;
  const A* x_ffn = t.cross_attn_res.out;
  // feed-forward
  residual_out_backward(d_stream, g.d_f, t.ffn_res, p.ffn_norm, rows, seq_len, at(Kind::FfnOut), keys);
  feed_forward_backward(function_input(x_ffn, t.ffn_res), rows, seq_len, p.ffn, t.ffn, g.d_f, g.d_fn_in, g,
                        at(Kind::Relu), keys);
  residual_in_backward(x_ffn, g.d_fn_in, d_stream, t.ffn_res, p.ffn_norm, rows);
  // cross-attention
  residual_out_backward(d_stream, g.d_f, t.cross_attn_res, p.cross_attn_norm, rows, seq_len, at(Kind::CrossAttnOut),
                        keys);
  attention_backward(function_input(x_cross, t.cross_attn_res), rows, p.cross_attn, t.cross_attn, g.d_f, g.d_fn_in, g,
                     at(Kind::CrossAttnProbs), keys, memory, memory_rows);
  residual_in_backward(x_cross, g.d_fn_in, d_stream, t.cross_attn_res, p.cross_attn_norm, rows);
  // self-attention
  residual_out_backward(d_stream, g.d_f, t.self_attn_res, p.self_attn_norm, rows, seq_len, at(Kind::SelfAttnOut), keys);
  attention_backward(function_input(x, t.self_attn_res), rows, p.self_attn, t.self_attn, g.d_f, g.d_fn_in, g,
                     at(Kind::SelfAttnProbs), keys);
  residual_in_backward(x, g.d_fn_in, d_stream, t.self_attn_res, p.self_attn_norm, rows);
}

template struct TransformerLayers<float, float>;
template struct TransformerLayers<double, double>;
template struct TransformerLayers<float, k::bf16>;

// ---- log-softmax on the host ----

// target_clones: an AVX-512 clone beside the portable one (as the CPU kernels), so that the exponentials run
// eight to a vector where the machine has it.
template <class T>
__attribute__((target_clones("arch=x86-64-v4", "default"))) double log_sum_exp(const T* x, int n) {
  T mx = x[0];
  for (int j = 1; j < n; ++j) mx = x[j] > mx ? x[j] : mx;
  const double m = static_cast<double>(mx);
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < n; ++j) sum += kernels::cpu::exp_nonpositive(static_cast<double>(x[j]) - m);
  return m + std::log(sum);
}

template <class T>
void log_sum_exp_rows(const T* x, int rows, int n, double* log_norm) {
#pragma omp parallel for schedule(static)
  for (int r = 0; r < rows; ++r) log_norm[r] = log_sum_exp(x + static_cast<size_t>(r) * n, n);
}

template double log_sum_exp(const float*, int);
template double log_sum_exp(const double*, int);
template void log_sum_exp_rows(const float*, int, int, double*);
template void log_sum_exp_rows(const double*, int, int, double*);

}  // namespace aiayn::trainer::layers
