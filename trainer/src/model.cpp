// The model's forward and backward, layer by layer, in the order the paper draws them.
//
// Invariants: every parameter gradient is accumulated (+=), activation gradients are overwritten; the
// arena holds every activation the backward pass needs, laid out afresh for each micro-batch shape; the
// trainer never sees a raw device call, only kernels:: ops and device_copy.
#include "trainer/model.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <type_traits>
#include <vector>

#include "aiayn/error.hpp"
#include "kernels/dropout_hash.hpp"
#include "kernels/ops.hpp"

namespace aiayn::trainer {

namespace k = aiayn::kernels;
using k::Device;

template <class T>
struct Model<T>::Impl {
  virtual ~Impl() = default;
  virtual kernels::CrossEntropyStats forward_backward(const Batch& batch, const DropoutContext& dc, float grad_scale,
                                                      const typename Model<T>::GradsReady* ready) = 0;
  virtual kernels::CrossEntropyStats forward_loss(const Batch& batch, float smoothing) = 0;
  virtual std::vector<T> forward_log_probs(const Batch& batch) = 0;
};

namespace {

// The layer-by-layer code for parameters of type T (float32 master weights and gradients, or double) and
// activations of type A: A = T on the CPU and in fp32 on CUDA; A = bf16 in CUDA mixed precision, where the
// matrix products read the bf16 copy of the weights (W) and everything else the float32 parameters (P).
template <class T, class A>
struct Core final : Model<T>::Impl {
  // ---- parameter offsets (the same offsets index params and grads) ----
  struct Norm { size_t w = 0, b = 0; };
  struct Ffn { size_t fc1_w = 0, fc1_b = 0, fc2_w = 0, fc2_b = 0; };
  static constexpr size_t kNoBias = ~size_t{0};
  struct EncLayer { size_t qkv_w, out_w, out_b; Norm attn_norm; Ffn ffn; Norm ffn_norm; };
  struct DecLayer {
    size_t qkv_w, out_w, out_b; Norm self_norm;
    size_t q_w, kv_w, cout_w, cout_b; Norm cross_norm;
    Ffn ffn; Norm ffn_norm;
  };

  // ---- saved activations of one residual sub-layer ----
  // post-norm: ln_x = x + Dropout(F(x)) (the LayerNorm input), out = LayerNorm(ln_x)
  // pre-norm:  ln_x = LayerNorm(x) (F's input),                  out = x + Dropout(F(ln_x))
  struct Sub { A* ln_x = nullptr; T* mean = nullptr; T* rstd = nullptr; A* out = nullptr; };
  // attn_saved: what the attention op keeps for its backward (its own layout, attention_saved_bytes)
  struct EncAct { A* qkv; A* ctx; void* attn_saved; Sub attn; A* h; A* hd; Sub ffn; };
  struct DecAct {
    A* qkv; A* ctx; void* self_saved; Sub self;
    A* q; A* kv; A* cctx; void* cross_saved; Sub cross;
    A* h; A* hd; Sub ffn;
  };

  Model<T>& owner;
  const ModelSpec spec;
  const Device dev;
  const int D, H, Dh, F, V, L;
  const int Vp;  // the logits' row stride: V rounded up to spec.vocab_align (ModelSpec)
  const bool pre;
  size_t emb = 0;
  Norm enc_final, dec_final;
  std::vector<EncLayer> enc_p;
  std::vector<DecLayer> dec_p;
  // The gradient ranges the backward pass reports as finished (Model::GradsReady), in the order it does.
  using Range = std::pair<size_t, size_t>;
  std::vector<Range> enc_range, dec_range;
  Range emb_range, enc_final_range, dec_final_range;

  k::DeviceArray<A> arena;
  k::DeviceArray<int32_t> ints;
  k::DeviceArray<int64_t> longs;

  // current layout
  int B = 0, S = 0, Tt = 0;
  int32_t *src = nullptr, *tgt_in = nullptr, *tgt_out = nullptr, *src_len = nullptr, *tgt_len = nullptr;
  int64_t* pair = nullptr;
  A *enc_x0 = nullptr, *dec_x0 = nullptr, *logits = nullptr, *tmp = nullptr;
  std::vector<EncAct> enc;
  std::vector<DecAct> dec;
  Sub enc_fin, dec_fin;
  A *d_stream = nullptr, *d_f = nullptr, *d_fin = nullptr, *d_h = nullptr, *d_ctx = nullptr, *d_qkv = nullptr;
  A *d_enc = nullptr, *d_kv = nullptr, *d_stream_s = nullptr;

  Core(Model<T>& m, const ModelSpec& s, Device d)
      : owner(m), spec(s), dev(d), D(s.arch.d_model), H(s.arch.heads), Dh(s.arch.d_model / s.arch.heads),
        F(s.arch.d_ff), V(s.vocab), L(s.arch.layers),
        Vp((s.vocab + std::max(1, s.vocab_align) - 1) / std::max(1, s.vocab_align) * std::max(1, s.vocab_align)),
        pre(s.arch.pre_norm) {
    const ParamTable& t = m.table();
    auto off = [&](const std::string& n) { return t.at(n).offset; };
    auto norm = [&](const std::string& p) { return Norm{off(p + "/weight"), off(p + "/bias")}; };
    auto ffn = [&](const std::string& p) {
      return Ffn{off(p + "/fc1/weight"), off(p + "/fc1/bias"), off(p + "/fc2/weight"), off(p + "/fc2/bias")};
    };
    emb = off("embedding/weight");
    for (int l = 0; l < L; ++l) {
      const std::string p = fmt::format("encoder/layers/{}", l);
      enc_p.push_back(EncLayer{off(p + "/self_attn/q/weight"), off(p + "/self_attn/out/weight"), off(p + "/self_attn/out/bias"),
                               norm(p + "/self_attn_norm"), ffn(p + "/ffn"), norm(p + "/ffn_norm")});
    }
    for (int l = 0; l < L; ++l) {
      const std::string p = fmt::format("decoder/layers/{}", l);
      dec_p.push_back(DecLayer{off(p + "/self_attn/q/weight"), off(p + "/self_attn/out/weight"),
                               off(p + "/self_attn/out/bias"), norm(p + "/self_attn_norm"),
                               off(p + "/cross_attn/q/weight"), off(p + "/cross_attn/k/weight"),
                               off(p + "/cross_attn/out/weight"), off(p + "/cross_attn/out/bias"),
                               norm(p + "/cross_attn_norm"), ffn(p + "/ffn"), norm(p + "/ffn_norm")});
    }
    if (pre) {
      enc_final = norm("encoder/final_norm");
      dec_final = norm("decoder/final_norm");
    }
    for (int l = 0; l < L; ++l) {
      enc_range.push_back(t.range(fmt::format("encoder/layers/{}/", l)));
      dec_range.push_back(t.range(fmt::format("decoder/layers/{}/", l)));
    }
    emb_range = t.range("embedding/");
    if (pre) {
      enc_final_range = t.range("encoder/final_norm/");
      dec_final_range = t.range("decoder/final_norm/");
    }
  }

  T* P(size_t o) { return owner.params() + o; }
  T* G(size_t o) { return owner.grads() + o; }
  // The weights a matrix product reads: the parameters themselves, or their bf16 copy.
  const A* W(size_t o) {
    if constexpr (std::is_same_v<A, T>) {
      return owner.params() + o;
    } else {
      return owner.params_bf16() + o;
    }
  }

  // ---- arena layout for a batch shape: measure, grow if needed, assign ----
  void layout(int b, int s, int t, bool backward) {
    B = b, S = s, Tt = t;
    const size_t Ns = static_cast<size_t>(B) * S, Nt = static_cast<size_t>(B) * Tt, Nmax = std::max(Ns, Nt);
    size_t used = 0;
    A* base = arena.data();
    bool measuring = true;
    auto take = [&](size_t n) -> A* {
      const size_t at = used;
      used += (n + 15) / 16 * 16;
      return measuring ? nullptr : base + at;
    };
    auto take_as = [&](auto* type, size_t n) {  // n values of another type (statistics) in the arena
      using V = std::remove_pointer_t<decltype(type)>;
      return reinterpret_cast<V*>(take((n * sizeof(V) + sizeof(A) - 1) / sizeof(A)));
    };
    auto take_bytes = [&](size_t n) -> void* { return take_as(static_cast<char*>(nullptr), n); };
    // what the attention op saves for [B, H, tq, tk] (sized by the op, whatever the backend keeps)
    auto attn_saved = [&](int tq, int tk) {
      k::AttentionShape<A> shape;
      shape.B = B, shape.Tq = tq, shape.Tk = tk, shape.H = H, shape.Dh = Dh;
      return take_bytes(k::attention_saved_bytes(dev, shape));
    };
    auto take_t = [&](size_t n) { return take_as(static_cast<T*>(nullptr), n); };      // LayerNorm statistics
    auto sub = [&](size_t rows) { return Sub{take(rows * D), take_t(rows), take_t(rows), take(rows * D)}; };
    const bool relu_drop = spec.arch.relu_dropout > 0;
    for (int pass = 0; pass < 2; ++pass) {
      used = 0;
      enc.clear();
      dec.clear();
      enc_x0 = take(Ns * D);
      for (int l = 0; l < L; ++l) {
        EncAct a{};
        a.qkv = take(Ns * 3 * D);
        a.ctx = take(Ns * D);
        a.attn_saved = attn_saved(S, S);
        a.attn = sub(Ns);
        a.h = take(Ns * F);
        a.hd = relu_drop ? take(Ns * F) : a.h;
        a.ffn = sub(Ns);
        enc.push_back(a);
      }
      if (pre) enc_fin = sub(Ns);
      dec_x0 = take(Nt * D);
      for (int l = 0; l < L; ++l) {
        DecAct a{};
        a.qkv = take(Nt * 3 * D);
        a.ctx = take(Nt * D);
        a.self_saved = attn_saved(Tt, Tt);
        a.self = sub(Nt);
        a.q = take(Nt * D);
        a.kv = take(Ns * 2 * D);
        a.cctx = take(Nt * D);
        a.cross_saved = attn_saved(Tt, S);
        a.cross = sub(Nt);
        a.h = take(Nt * F);
        a.hd = relu_drop ? take(Nt * F) : a.h;
        a.ffn = sub(Nt);
        dec.push_back(a);
      }
      if (pre) dec_fin = sub(Nt);
      logits = take(Nt * static_cast<size_t>(Vp));
      tmp = take(Nmax * D);
      if (backward) {
        d_stream = take(Nmax * D);
        d_f = take(Nmax * D);
        d_fin = take(Nmax * D);
        d_h = take(Nmax * F);
        d_ctx = take(Nmax * D);
        d_qkv = take(Nmax * 3 * D);
        d_enc = take(Ns * D);
        d_kv = take(Ns * 2 * D);
        d_stream_s = take(Ns * D);
      }
      if (pass == 0) {
        if (used > arena.size()) arena = k::DeviceArray<A>(dev, used);
        base = arena.data();
        measuring = false;
      }
    }
  }

  // Token ids are checked here, on the host, once per batch (the embedding ops leave them to the caller).
  void upload(const Batch& b) {
    const size_t Ns = static_cast<size_t>(b.B) * b.S, Nt = static_cast<size_t>(b.B) * b.T;
    auto check_ids = [&](const std::vector<int32_t>& ids, const char* what) {
      k::check_token_ids(Device::CPU, k::TokenIdCheck{ids.data(), static_cast<long>(ids.size()), V, what});
    };
    check_ids(b.src, "model: source token");
    check_ids(b.tgt_in, "model: target input token");
    const size_t need = Ns + 2 * Nt + 2 * static_cast<size_t>(b.B);
    if (need > ints.size()) ints = k::DeviceArray<int32_t>(dev, need);
    if (static_cast<size_t>(b.B) > longs.size()) longs = k::DeviceArray<int64_t>(dev, b.B);
    src = ints.data();
    tgt_in = src + Ns;
    tgt_out = tgt_in + Nt;
    src_len = tgt_out + Nt;
    tgt_len = src_len + b.B;
    pair = longs.data();
    auto put = [&](void* dst, const void* from, size_t bytes) { k::device_copy(dev, dst, Device::CPU, from, bytes); };
    put(src, b.src.data(), Ns * 4);
    put(tgt_in, b.tgt_in.data(), Nt * 4);
    put(tgt_out, b.tgt_out.data(), Nt * 4);
    put(src_len, b.src_len.data(), b.B * 4);
    put(tgt_len, b.tgt_len.data(), b.B * 4);
    put(pair, b.pair.data(), b.B * 8);
  }

  // ---- building blocks ----
  // y[N, out] = x[N, in] @ W[out, in]^T + b   (bias == kNoBias: no bias)
  void linear(const A* x, int N, int in, size_t w, size_t bias, int out, A* y, bool relu = false) {
    k::GemmArgs<A> g;
    g.trans_b = true;
    g.m = N, g.n = out, g.k = in;
    g.a = x, g.lda = in;
    g.b = W(w), g.ldb = in;
    g.c = y, g.ldc = out;
    g.bias = bias == kNoBias ? nullptr : W(bias);
    g.relu = relu;
    k::gemm(dev, g);
  }
  // dx (= or +=) dy @ W;  dW += dy^T @ x;  db += colsum(dy). dx may be null.
  void linear_backward(const A* dy, const A* x, int N, int in, int out, size_t w, size_t bias, A* dx, bool accumulate) {
    if (dx) {
      k::GemmArgs<A> g;
      g.m = N, g.n = in, g.k = out;
      g.a = dy, g.lda = out;
      g.b = W(w), g.ldb = in;
      g.c = dx, g.ldc = in;
      g.beta = accumulate ? 1.0f : 0.0f;
      k::gemm(dev, g);
    }
    k::GemmArgs<A, T> gw;
    gw.trans_a = true;
    gw.m = out, gw.n = in, gw.k = N;
    gw.a = dy, gw.lda = out;
    gw.b = x, gw.ldb = in;
    gw.c = G(w), gw.ldc = in;
    gw.beta = 1.0f;
    k::gemm(dev, gw);
    if (bias != kNoBias) k::bias_grad(dev, k::BiasGrad<A, T>{dy, G(bias), N, out});
  }
  void copy(A* dst, const A* from, size_t n) { k::device_copy(dev, dst, dev, from, n * sizeof(A)); }
  void add(const A* a, const A* b, A* y, size_t n) { k::add(dev, k::AddArgs<A>{a, b, y, n}); }
  void norm_fwd(const A* x, const Norm& n, A* y, T* mean, T* rstd, int rows) {
    k::layer_norm_forward(dev, k::LayerNormForward<A, T>{x, P(n.w), P(n.b), y, mean, rstd, rows, D, kLayerNormEpsilon});
  }
  void norm_bwd(A* dy_dx, const A* x, const Norm& n, const T* mean, const T* rstd, int rows) {
    k::layer_norm_backward(dev, k::LayerNormBackward<A, T>{dy_dx, x, P(n.w), mean, rstd, dy_dx, G(n.w), G(n.b), rows, D});
  }
  // The mask of one dropout site over rows laid out [B, seq_len] (p = 0 when not training).
  k::DropoutMask mask(int seq_len, uint32_t site, float p, const DropoutContext& dc) const {
    k::DropoutMask m;
    m.p = dc.train ? p : 0.0f, m.seq_len = seq_len, m.pair = pair;
    m.seed = dc.seed, m.step = dc.step, m.site = site;
    return m;
  }
  k::DropoutArgs<A> drop_args(A* x, int rows, int cols, int seq_len, uint32_t site, float p, const DropoutContext& dc) {
    k::DropoutArgs<A> a;
    static_cast<k::DropoutMask&>(a) = mask(seq_len, site, p, dc);
    a.x = x, a.y = x, a.rows = rows, a.cols = cols;
    return a;
  }
  void drop_fwd(A* x, int rows, int cols, int seq_len, uint32_t site, float p, const DropoutContext& dc) {
    if (dc.train && p > 0) k::dropout_forward(dev, drop_args(x, rows, cols, seq_len, site, p, dc));
  }
  void drop_bwd(A* dx, int rows, int cols, int seq_len, uint32_t site, float p, const DropoutContext& dc) {
    if (dc.train && p > 0) k::dropout_backward(dev, drop_args(dx, rows, cols, seq_len, site, p, dc));
  }
  float p_out() const { return static_cast<float>(spec.arch.dropout); }
  static uint32_t site(uint32_t stack, int layer, k::DropoutKind kind) {
    return k::dropout_site(stack, static_cast<uint32_t>(layer), kind);
  }

  // Residual sub-layer: the input F sees (pre-norm normalises first).
  const A* sub_in(const A* x, Sub& s, const Norm& n, int rows) {
    if (!pre) return x;
    norm_fwd(x, n, s.ln_x, s.mean, s.rstd, rows);
    return s.ln_x;
  }
  // f: F's output (pre-norm: dropped in place). Post-norm is one fused op: ln_x = x + Dropout(f), out = LN(ln_x).
  void sub_out(const A* x, A* f, Sub& s, const Norm& n, int rows, int seq_len, uint32_t st, const DropoutContext& dc) {
    if (pre) {
      drop_fwd(f, rows, D, seq_len, st, p_out(), dc);
      add(x, f, s.out, static_cast<size_t>(rows) * D);
      return;
    }
    k::ResidualNormForward<A, T> r;
    r.x = x, r.f = f, r.gamma = P(n.w), r.beta = P(n.b), r.s = s.ln_x, r.y = s.out, r.mean = s.mean, r.rstd = s.rstd;
    r.rows = rows, r.cols = D, r.eps = kLayerNormEpsilon, r.drop = mask(seq_len, st, p_out(), dc);
    k::residual_norm_forward(dev, r);
  }
  // Backward of sub_out: d_out (gradient w.r.t. s.out) becomes, in place, the residual part of the
  // gradient w.r.t. x; df receives the gradient w.r.t. F's output.
  void sub_out_bwd(A* d_out, A* df, Sub& s, const Norm& n, int rows, int seq_len, uint32_t st, const DropoutContext& dc) {
    if (pre) {
      copy(df, d_out, static_cast<size_t>(rows) * D);
      drop_bwd(df, rows, D, seq_len, st, p_out(), dc);
      return;
    }
    k::ResidualNormBackward<A, T> r;
    r.dy = d_out, r.s = s.ln_x, r.gamma = P(n.w), r.mean = s.mean, r.rstd = s.rstd, r.dx = d_out, r.df = df;
    r.dgamma = G(n.w), r.dbeta = G(n.b), r.rows = rows, r.cols = D, r.drop = mask(seq_len, st, p_out(), dc);
    k::residual_norm_backward(dev, r);
  }
  // Backward of sub_in: d_fin (gradient w.r.t. F's input, clobbered) is added into d_x.
  void sub_in_bwd(const A* x, A* d_fin, A* d_x, Sub& s, const Norm& n, int rows) {
    if (pre) norm_bwd(d_fin, x, n, s.mean, s.rstd, rows);
    add(d_x, d_fin, d_x, static_cast<size_t>(rows) * D);
  }

  k::AttentionShape<A> self_shape(int len, const int32_t* lens, bool causal, uint32_t st, const DropoutContext& dc) {
    k::AttentionShape<A> a;
    a.B = B, a.Tq = len, a.Tk = len, a.H = H, a.Dh = Dh;
    a.q_bstride = a.kv_bstride = static_cast<long>(len) * 3 * D;
    a.o_bstride = static_cast<long>(len) * D;
    a.q_stride = a.kv_stride = 3 * D;
    a.o_stride = D;
    a.k_len = lens;
    a.causal = causal;
    a.scale = 1.0f / std::sqrt(static_cast<float>(Dh));
    a.p_drop = dc.train ? static_cast<float>(spec.arch.attention_dropout) : 0.0f;
    a.pair = pair, a.seed = dc.seed, a.step = dc.step, a.site = st;
    return a;
  }
  k::AttentionShape<A> cross_shape(uint32_t st, const DropoutContext& dc) {
    k::AttentionShape<A> a = self_shape(Tt, src_len, false, st, dc);
    a.Tk = S;
    a.q_bstride = static_cast<long>(Tt) * D, a.q_stride = D;
    a.kv_bstride = static_cast<long>(S) * 2 * D, a.kv_stride = 2 * D;
    return a;
  }
  void attention(const k::AttentionShape<A>& shape, const A* q, const A* kk, const A* v, A* out, void* saved) {
    k::AttentionForward<A> a;
    a.shape = shape, a.q = q, a.k = kk, a.v = v, a.out = out, a.saved = saved;
    k::attention_forward(dev, a);
  }
  void attention_bwd(const k::AttentionShape<A>& shape, const A* dout, const A* q, const A* kk, const A* v,
                     const A* out, const void* saved, A* dq, A* dk, A* dv) {
    k::AttentionBackward<A> a;
    a.shape = shape, a.dout = dout, a.q = q, a.k = kk, a.v = v, a.out = out, a.saved = saved;
    a.dq = dq, a.dk = dk, a.dv = dv;
    k::attention_backward(dev, a);
  }

  void embed(const int32_t* ids, int len, A* out, uint32_t stack, const DropoutContext& dc) {
    k::EmbedForward<A, T> e;
    e.ids = ids, e.table = P(emb), e.out = out, e.N = B * len, e.D = D, e.V = V, e.seq_len = len;
    e.scale = std::sqrt(static_cast<float>(D));
    e.drop = mask(len, site(stack, 0, k::DropoutKind::Embedding), p_out(), dc);
    k::embed_forward(dev, e);
  }
  void embed_bwd(const int32_t* ids, int len, const A* dout, uint32_t stack, const DropoutContext& dc) {
    k::EmbedBackward<A, T> e;
    e.ids = ids, e.dout = dout, e.dtable = G(emb), e.N = B * len, e.D = D, e.V = V;
    e.scale = std::sqrt(static_cast<float>(D));
    e.drop = mask(len, site(stack, 0, k::DropoutKind::Embedding), p_out(), dc);
    k::embed_backward(dev, e);
  }

  // ---- forward ----
  const A* encoder_output() const { return pre ? enc_fin.out : enc.back().ffn.out; }
  const A* decoder_output() const { return pre ? dec_fin.out : dec.back().ffn.out; }

  void ffn_fwd(const A* fin, int rows, int seq_len, const Ffn& f, A* h, A* hd, uint32_t relu_site, const DropoutContext& dc) {
    linear(fin, rows, D, f.fc1_w, f.fc1_b, F, h, /*relu=*/true);
    if (hd != h) {
      copy(hd, h, static_cast<size_t>(rows) * F);
      drop_fwd(hd, rows, F, seq_len, relu_site, static_cast<float>(spec.arch.relu_dropout), dc);
    }
    linear(hd, rows, F, f.fc2_w, f.fc2_b, D, tmp);
  }

  void encode(const DropoutContext& dc) {
    const int N = B * S;
    embed(src, S, enc_x0, 0, dc);
    const A* x = enc_x0;
    for (int l = 0; l < L; ++l) {
      EncLayer& p = enc_p[l];
      EncAct& a = enc[l];
      const A* fin = sub_in(x, a.attn, p.attn_norm, N);
      linear(fin, N, D, p.qkv_w, kNoBias, 3 * D, a.qkv);
      attention(self_shape(S, src_len, false, site(0, l, k::DropoutKind::SelfAttnProbs), dc), a.qkv, a.qkv + D,
                a.qkv + 2 * D, a.ctx, a.attn_saved);
      linear(a.ctx, N, D, p.out_w, p.out_b, D, tmp);
      sub_out(x, tmp, a.attn, p.attn_norm, N, S, site(0, l, k::DropoutKind::SelfAttnOut), dc);
      x = a.attn.out;
      fin = sub_in(x, a.ffn, p.ffn_norm, N);
      ffn_fwd(fin, N, S, p.ffn, a.h, a.hd, site(0, l, k::DropoutKind::Relu), dc);
      sub_out(x, tmp, a.ffn, p.ffn_norm, N, S, site(0, l, k::DropoutKind::FfnOut), dc);
      x = a.ffn.out;
    }
    if (pre) norm_fwd(x, enc_final, enc_fin.out, enc_fin.mean, enc_fin.rstd, N);
  }

  void decode(const DropoutContext& dc) {
    const int N = B * Tt;
    embed(tgt_in, Tt, dec_x0, 1, dc);
    const A* x = dec_x0;
    const A* memory = encoder_output();
    for (int l = 0; l < L; ++l) {
      DecLayer& p = dec_p[l];
      DecAct& a = dec[l];
      const A* fin = sub_in(x, a.self, p.self_norm, N);
      linear(fin, N, D, p.qkv_w, kNoBias, 3 * D, a.qkv);
      attention(self_shape(Tt, tgt_len, true, site(1, l, k::DropoutKind::SelfAttnProbs), dc), a.qkv, a.qkv + D,
                a.qkv + 2 * D, a.ctx, a.self_saved);
      linear(a.ctx, N, D, p.out_w, p.out_b, D, tmp);
      sub_out(x, tmp, a.self, p.self_norm, N, Tt, site(1, l, k::DropoutKind::SelfAttnOut), dc);
      x = a.self.out;

      fin = sub_in(x, a.cross, p.cross_norm, N);
      linear(fin, N, D, p.q_w, kNoBias, D, a.q);
      linear(memory, B * S, D, p.kv_w, kNoBias, 2 * D, a.kv);
      attention(cross_shape(site(1, l, k::DropoutKind::CrossAttnProbs), dc), a.q, a.kv, a.kv + D, a.cctx, a.cross_saved);
      linear(a.cctx, N, D, p.cout_w, p.cout_b, D, tmp);
      sub_out(x, tmp, a.cross, p.cross_norm, N, Tt, site(1, l, k::DropoutKind::CrossAttnOut), dc);
      x = a.cross.out;

      fin = sub_in(x, a.ffn, p.ffn_norm, N);
      ffn_fwd(fin, N, Tt, p.ffn, a.h, a.hd, site(1, l, k::DropoutKind::Relu), dc);
      sub_out(x, tmp, a.ffn, p.ffn_norm, N, Tt, site(1, l, k::DropoutKind::FfnOut), dc);
      x = a.ffn.out;
    }
    if (pre) norm_fwd(x, dec_final, dec_fin.out, dec_fin.mean, dec_fin.rstd, N);
    // logits[N, V] = out @ E^T (the shared embedding, no bias); rows of Vp (the padding is left alone)
    k::GemmArgs<A> g;
    g.trans_b = true;
    g.m = N, g.n = V, g.k = D;
    g.a = decoder_output(), g.lda = D;
    g.b = W(emb), g.ldb = D;
    g.c = logits, g.ldc = Vp;
    k::gemm(dev, g);
  }

  // ---- backward ----
  void ffn_bwd(const A* fin, int rows, int seq_len, const Ffn& f, const A* h, const A* hd, A* df, A* dfin,
               uint32_t relu_site, const DropoutContext& dc) {
    linear_backward(df, hd, rows, F, D, f.fc2_w, f.fc2_b, d_h, false);
    if (hd != h) drop_bwd(d_h, rows, F, seq_len, relu_site, static_cast<float>(spec.arch.relu_dropout), dc);
    k::relu_backward(dev, k::ReluBackward<A>{h, d_h, d_h, static_cast<size_t>(rows) * F});
    linear_backward(d_h, fin, rows, D, F, f.fc1_w, f.fc1_b, dfin, false);
  }

  // The input F saw in the forward pass, recovered from what was saved.
  const A* fin_of(const A* x, const Sub& s) const { return pre ? s.ln_x : x; }

  void backward(const DropoutContext& dc, const typename Model<T>::GradsReady* ready) {
    auto done = [&](const Range& r) {
      if (ready) (*ready)(r.first, r.second);
    };
    const int Nt = B * Tt, Ns = B * S;
    // logits -> decoder output: d_stream = dlogits @ E; dE += dlogits^T @ out
    {
      k::GemmArgs<A> g;
      g.m = Nt, g.n = D, g.k = V;
      g.a = logits, g.lda = Vp;
      g.b = W(emb), g.ldb = D;
      g.c = d_stream, g.ldc = D;
      k::gemm(dev, g);
      k::GemmArgs<A, T> gw;
      gw.trans_a = true;
      gw.m = V, gw.n = D, gw.k = Nt;
      gw.a = logits, gw.lda = Vp;
      gw.b = decoder_output(), gw.ldb = D;
      gw.c = G(emb), gw.ldc = D;
      gw.beta = 1.0f;
      k::gemm(dev, gw);
    }
    if (pre) {
      norm_bwd(d_stream, dec.back().ffn.out, dec_final, dec_fin.mean, dec_fin.rstd, Nt);
      done(dec_final_range);
    }
    k::device_zero(dev, d_enc, static_cast<size_t>(Ns) * D * sizeof(A));
    const A* memory = encoder_output();
    for (int l = L - 1; l >= 0; --l) {
      DecLayer& p = dec_p[l];
      DecAct& a = dec[l];
      const A* x_self = l == 0 ? dec_x0 : dec[l - 1].ffn.out;
      const A* x_cross = a.self.out;
      const A* x_ffn = a.cross.out;
      // feed-forward
      sub_out_bwd(d_stream, d_f, a.ffn, p.ffn_norm, Nt, Tt, site(1, l, k::DropoutKind::FfnOut), dc);
      ffn_bwd(fin_of(x_ffn, a.ffn), Nt, Tt, p.ffn, a.h, a.hd, d_f, d_fin, site(1, l, k::DropoutKind::Relu), dc);
      sub_in_bwd(x_ffn, d_fin, d_stream, a.ffn, p.ffn_norm, Nt);
      // cross-attention
      sub_out_bwd(d_stream, d_f, a.cross, p.cross_norm, Nt, Tt, site(1, l, k::DropoutKind::CrossAttnOut), dc);
      linear_backward(d_f, a.cctx, Nt, D, D, p.cout_w, p.cout_b, d_ctx, false);
      attention_bwd(cross_shape(site(1, l, k::DropoutKind::CrossAttnProbs), dc), d_ctx, a.q, a.kv, a.kv + D, a.cctx,
                    a.cross_saved, d_qkv, d_kv, d_kv + D);
      linear_backward(d_qkv, fin_of(x_cross, a.cross), Nt, D, D, p.q_w, kNoBias, d_fin, false);
      linear_backward(d_kv, memory, Ns, D, 2 * D, p.kv_w, kNoBias, d_enc, true);
      sub_in_bwd(x_cross, d_fin, d_stream, a.cross, p.cross_norm, Nt);
      // self-attention
      sub_out_bwd(d_stream, d_f, a.self, p.self_norm, Nt, Tt, site(1, l, k::DropoutKind::SelfAttnOut), dc);
      linear_backward(d_f, a.ctx, Nt, D, D, p.out_w, p.out_b, d_ctx, false);
      attention_bwd(self_shape(Tt, tgt_len, true, site(1, l, k::DropoutKind::SelfAttnProbs), dc), d_ctx, a.qkv,
                    a.qkv + D, a.qkv + 2 * D, a.ctx, a.self_saved, d_qkv, d_qkv + D, d_qkv + 2 * D);
      linear_backward(d_qkv, fin_of(x_self, a.self), Nt, D, 3 * D, p.qkv_w, kNoBias, d_fin, false);
      sub_in_bwd(x_self, d_fin, d_stream, a.self, p.self_norm, Nt);
      done(dec_range[l]);
    }
    embed_bwd(tgt_in, Tt, d_stream, 1, dc);

    // encoder
    A* ds = d_stream_s;
    copy(ds, d_enc, static_cast<size_t>(Ns) * D);
    if (pre) {
      norm_bwd(ds, enc.back().ffn.out, enc_final, enc_fin.mean, enc_fin.rstd, Ns);
      done(enc_final_range);
    }
    for (int l = L - 1; l >= 0; --l) {
      EncLayer& p = enc_p[l];
      EncAct& a = enc[l];
      const A* x_attn = l == 0 ? enc_x0 : enc[l - 1].ffn.out;
      const A* x_ffn = a.attn.out;
      sub_out_bwd(ds, d_f, a.ffn, p.ffn_norm, Ns, S, site(0, l, k::DropoutKind::FfnOut), dc);
      ffn_bwd(fin_of(x_ffn, a.ffn), Ns, S, p.ffn, a.h, a.hd, d_f, d_fin, site(0, l, k::DropoutKind::Relu), dc);
      sub_in_bwd(x_ffn, d_fin, ds, a.ffn, p.ffn_norm, Ns);
      sub_out_bwd(ds, d_f, a.attn, p.attn_norm, Ns, S, site(0, l, k::DropoutKind::SelfAttnOut), dc);
      linear_backward(d_f, a.ctx, Ns, D, D, p.out_w, p.out_b, d_ctx, false);
      attention_bwd(self_shape(S, src_len, false, site(0, l, k::DropoutKind::SelfAttnProbs), dc), d_ctx, a.qkv,
                    a.qkv + D, a.qkv + 2 * D, a.ctx, a.attn_saved, d_qkv, d_qkv + D, d_qkv + 2 * D);
      linear_backward(d_qkv, fin_of(x_attn, a.attn), Ns, D, 3 * D, p.qkv_w, kNoBias, d_fin, false);
      sub_in_bwd(x_attn, d_fin, ds, a.attn, p.attn_norm, Ns);
      done(enc_range[l]);
    }
    embed_bwd(src, S, ds, 0, dc);
    done(emb_range);
  }

  // Lays out the arena for the batch (with room for the backward pass if asked), uploads it, runs both stacks.
  void forward(const Batch& batch, const DropoutContext& dc, bool backward) {
    layout(batch.B, batch.S, batch.T, backward);
    upload(batch);
    encode(dc);
    decode(dc);
  }

  k::CrossEntropyStats loss(float smoothing, bool grad, float grad_scale) {
    k::CrossEntropyArgs<A> c;
    c.logits = logits;
    c.dlogits = grad ? logits : nullptr;
    c.targets = tgt_out;
    c.N = B * Tt, c.V = V, c.ld = Vp;
    c.pad_id = spec.pad_id;
    c.smoothing = smoothing;
    c.grad_scale = grad_scale;
    return k::cross_entropy(dev, c);
  }

  k::CrossEntropyStats forward_backward(const Batch& batch, const DropoutContext& dc, float grad_scale,
                                        const typename Model<T>::GradsReady* ready) override {
    forward(batch, dc, /*backward=*/true);
    const auto stats = loss(static_cast<float>(spec.arch.label_smoothing), true, grad_scale);
    backward(dc, ready);
    return stats;
  }

  k::CrossEntropyStats forward_loss(const Batch& batch, float smoothing) override {
    forward(batch, DropoutContext{}, /*backward=*/false);
    return loss(smoothing, false, 1.0f);
  }

  // Log-softmax on the host (decoding and tests only).
  std::vector<T> forward_log_probs(const Batch& batch) override {
    forward(batch, DropoutContext{}, /*backward=*/false);
    const size_t rows = static_cast<size_t>(batch.B) * batch.T, n = rows * V;
    std::vector<A> raw(rows * Vp);
    k::device_copy(Device::CPU, raw.data(), dev, logits, raw.size() * sizeof(A));
    std::vector<T> out(n);
    for (size_t r = 0; r < rows; ++r) {  // the padding columns of each row are dropped, never read
      for (int j = 0; j < V; ++j) {
        const A x = raw[r * Vp + j];
        if constexpr (std::is_same_v<A, T>) {
          out[r * V + j] = x;
        } else {
          out[r * V + j] = static_cast<T>(k::to_float(x));
        }
      }
    }
    for (size_t r = 0; r < n / V; ++r) {
      T* row = out.data() + r * V;
      double mx = row[0];
      for (int j = 1; j < V; ++j) mx = std::max(mx, static_cast<double>(row[j]));
      double sum = 0;
      for (int j = 0; j < V; ++j) sum += std::exp(static_cast<double>(row[j]) - mx);
      const double lse = mx + std::log(sum);
      for (int j = 0; j < V; ++j) row[j] = static_cast<T>(row[j] - lse);
    }
    return out;
  }
};

// The cores a Model<T> can run: float32 parameters with float32 or bf16 activations, or double throughout.
template <class T>
std::unique_ptr<typename Model<T>::Impl> make_core(Model<T>& m, const ModelSpec& s, Device d) {
  if constexpr (std::is_same_v<T, float>) {
    if (s.bf16) return std::make_unique<Core<float, k::bf16>>(m, s, d);
  }
  return std::make_unique<Core<T, T>>(m, s, d);
}

}  // namespace

template <class T>
Model<T>::Model(const ModelSpec& spec, Device device)
    : spec_(spec), device_(device), table_(ParamTable::transformer(spec.arch, spec.vocab)) {
  AIAYN_CHECK(spec.vocab > 0, "model: vocabulary size must be positive");
  AIAYN_CHECK(spec.arch.d_model % spec.arch.heads == 0, "model: d_model must be divisible by heads");
  AIAYN_CHECK(!spec.bf16 || (device == Device::CUDA && std::is_same_v<T, float>),
              "model: bf16 mixed precision needs device=cuda (the CPU backend computes in float32)");
  params_ = kernels::DeviceArray<T>(device, table_.total());
  grads_ = kernels::DeviceArray<T>(device, table_.total());
  if (spec.bf16) params_bf16_ = kernels::DeviceArray<kernels::bf16>(device, table_.total());
  impl_ = make_core(*this, spec_, device);
}

template <class T>
Model<T>::~Model() = default;

template <class T>
void Model<T>::initialize(uint64_t seed) {
  std::vector<T> host(table_.total());
  table_.initialize(host.data(), seed);
  kernels::device_copy(device_, params_.data(), Device::CPU, host.data(), host.size() * sizeof(T));
  params_changed();
}

template <class T>
void Model<T>::params_changed() {
  if constexpr (std::is_same_v<T, float>) {
    if (params_bf16_.size())
      kernels::cast(device_, kernels::CastArgs<float, kernels::bf16>{params_.data(), params_bf16_.data(), params_.size()});
  }
}

template <class T>
void Model<T>::zero_grads() {
  grads_.zero();
}

template <class T>
kernels::CrossEntropyStats Model<T>::forward_backward(const Batch& batch, const DropoutContext& dropout, float grad_scale,
                                                     const GradsReady* ready) {
  return impl_->forward_backward(batch, dropout, grad_scale, ready);
}

template <class T>
kernels::CrossEntropyStats Model<T>::forward_loss(const Batch& batch, float smoothing) {
  return impl_->forward_loss(batch, smoothing);
}

template <class T>
std::vector<T> Model<T>::forward_log_probs(const Batch& batch) {
  return impl_->forward_log_probs(batch);
}

template class Model<float>;
template class Model<double>;

}  // namespace aiayn::trainer
