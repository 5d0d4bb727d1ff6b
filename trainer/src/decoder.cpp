// The incremental decoder and beam search (see decoder.hpp for the invariants and the search rule).
//
// The layer code mirrors Model<T>::Impl (model.cpp) call for call, without dropout and without saving
// anything for a backward pass. Buffers are sized in start() for the batch and reused across steps.
#include "trainer/decoder.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "aiayn/error.hpp"
#include "kernels/fast_math.hpp"
#include "kernels/ops.hpp"

namespace aiayn::trainer {

namespace k = aiayn::kernels;
using k::Device;

double length_penalty(int length, double alpha) { return std::pow((5.0 + length) / 6.0, alpha); }

namespace {

// log sum_j exp(x[j]) in double, for one row of logits [n]. target_clones: an AVX-512 clone beside the
// portable one (as the CPU kernels), so the exponentials run eight to a vector where the machine has it.
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

}  // namespace

template <class T>
struct IncrementalDecoder<T>::Impl {
  struct Norm { size_t w = 0, b = 0; };
  struct Ffn { size_t fc1_w = 0, fc1_b = 0, fc2_w = 0, fc2_b = 0; };
  struct EncLayer { size_t qkv_w, qkv_b, out_w, out_b; Norm attn_norm; Ffn ffn; Norm ffn_norm; };
  struct DecLayer {
    size_t qkv_w, qkv_b, out_w, out_b; Norm self_norm;
    size_t q_w, q_b, kv_w, kv_b, cout_w, cout_b; Norm cross_norm;
    Ffn ffn; Norm ffn_norm;
  };

  static constexpr size_t kNoBias = ~size_t{0};
  Model<T>& model;
  const Device dev;
  const int D, H, Dh, F, V, L;
  const bool pre;
  const int pad_id;
  size_t emb = 0;
  Norm enc_final, dec_final;
  std::vector<EncLayer> enc_p;
  std::vector<DecLayer> dec_p;

  // ---- the current batch ----
  int B = 0, S = 0;      // sentences at start(), padded source length
  int K = 1;             // rows per sentence
  int Sn = 0, R = 0;     // live sentences, rows (= Sn * K)
  int Tmax = 0, t = 0;   // cache rows per hypothesis, steps taken
  std::vector<int32_t> src_len_host;  // [Sn] of the live sentences

  // ---- device buffers ----
  k::DeviceArray<int32_t> ints;  // src [B*S] | src_len [B] | tokens [R0] | positions [R0] | row_len [R0]
  int32_t *src = nullptr, *src_len = nullptr, *tokens = nullptr, *positions = nullptr, *row_len = nullptr;
  k::DeviceArray<T> enc_buf, memory, cross_kv, cache[2], step_buf;  // cache[1 - cache_cur]: reorder's spare rows
  int cache_cur = 0;
  std::vector<char> saved_rows;  // [R] reorder: rows saved to the spare buffer before being rewritten
  size_t rows_cap = 0;  // R0: rows the caches were laid out for (layer stride)
  // encoder scratch [B*S, ...]
  T *ex = nullptr, *ey = nullptr, *esum = nullptr, *eln = nullptr, *eqkv = nullptr, *ectx = nullptr, *etmp = nullptr,
    *eh = nullptr, *emean = nullptr, *erstd = nullptr;
  // step scratch [R0, ...]
  T *sx = nullptr, *sy = nullptr, *ssum = nullptr, *sln = nullptr, *sq = nullptr, *sctx = nullptr, *stmp = nullptr,
    *sh = nullptr, *smean = nullptr, *srstd = nullptr, *slogits = nullptr;
  std::vector<T> logits_host;   // [R0, V] a host copy of the logits (devices other than the CPU)
  std::vector<double> log_norm;  // [R0] per row log-sum-exp of the logits
  std::vector<double> logp;      // [R, V] step()'s full log-probabilities
  std::vector<int32_t> step_positions, step_lengths;  // [R] host staging of the step's positions, key counts

  explicit Impl(Model<T>& m)
      : model(m), dev(m.device()), D(m.spec().arch.d_model), H(m.spec().arch.heads),
        Dh(m.spec().arch.d_model / m.spec().arch.heads), F(m.spec().arch.d_ff), V(m.spec().vocab),
        L(m.spec().arch.layers), pre(m.spec().arch.pre_norm), pad_id(m.spec().pad_id) {
    const ParamTable& tb = m.table();
    auto off = [&](const std::string& n) { return tb.at(n).offset; };
    // The q, k, v projections may or may not carry biases (the table decides; none as in tensor2tensor).
    auto opt = [&](const std::string& n) { return tb.contains(n) ? tb.at(n).offset : kNoBias; };
    auto norm = [&](const std::string& p) { return Norm{off(p + "/weight"), off(p + "/bias")}; };
    auto ffn = [&](const std::string& p) {
      return Ffn{off(p + "/fc1/weight"), off(p + "/fc1/bias"), off(p + "/fc2/weight"), off(p + "/fc2/bias")};
    };
    // The fused projections rely on the table's adjacency (params.hpp): q|k|v and cross k|v are one block.
    auto adjacent = [&](const std::string& a, const std::string& b) {
      AIAYN_CHECK(tb.at(a).offset + tb.at(a).size == tb.at(b).offset,
                  fmt::format("decoder: parameters {} and {} are not adjacent in the table", a, b));
    };
    emb = off("embedding/weight");
    for (int l = 0; l < L; ++l) {
      const std::string p = fmt::format("encoder/layers/{}", l);
      adjacent(p + "/self_attn/q/weight", p + "/self_attn/k/weight");
      adjacent(p + "/self_attn/k/weight", p + "/self_attn/v/weight");
      if (tb.contains(p + "/self_attn/q/bias")) {
        adjacent(p + "/self_attn/q/bias", p + "/self_attn/k/bias");
        adjacent(p + "/self_attn/k/bias", p + "/self_attn/v/bias");
      }
      enc_p.push_back(EncLayer{off(p + "/self_attn/q/weight"), opt(p + "/self_attn/q/bias"),
                               off(p + "/self_attn/out/weight"), off(p + "/self_attn/out/bias"),
                               norm(p + "/self_attn_norm"), ffn(p + "/ffn"), norm(p + "/ffn_norm")});
    }
    for (int l = 0; l < L; ++l) {
      const std::string p = fmt::format("decoder/layers/{}", l);
      adjacent(p + "/self_attn/q/weight", p + "/self_attn/k/weight");
      adjacent(p + "/self_attn/k/weight", p + "/self_attn/v/weight");
      adjacent(p + "/cross_attn/k/weight", p + "/cross_attn/v/weight");
      if (tb.contains(p + "/self_attn/q/bias")) {
        adjacent(p + "/self_attn/q/bias", p + "/self_attn/k/bias");
        adjacent(p + "/self_attn/k/bias", p + "/self_attn/v/bias");
        adjacent(p + "/cross_attn/k/bias", p + "/cross_attn/v/bias");
      }
      dec_p.push_back(DecLayer{off(p + "/self_attn/q/weight"), opt(p + "/self_attn/q/bias"),
                               off(p + "/self_attn/out/weight"), off(p + "/self_attn/out/bias"),
                               norm(p + "/self_attn_norm"),
                               off(p + "/cross_attn/q/weight"), opt(p + "/cross_attn/q/bias"),
                               off(p + "/cross_attn/k/weight"), opt(p + "/cross_attn/k/bias"),
                               off(p + "/cross_attn/out/weight"), off(p + "/cross_attn/out/bias"),
                               norm(p + "/cross_attn_norm"), ffn(p + "/ffn"), norm(p + "/ffn_norm")});
    }
    if (pre) {
      enc_final = norm("encoder/final_norm");
      dec_final = norm("decoder/final_norm");
    }
  }

  const T* P(size_t o) { return model.params() + o; }
  const T* bias_at(size_t o, size_t shift = 0) { return o == kNoBias ? nullptr : P(o) + shift; }

  static void ensure(k::DeviceArray<T>& a, Device d, size_t n) {
    if (a.size() < n) a = k::DeviceArray<T>(d, n);
  }

  // ---- building blocks (as in model.cpp) ----
  // y[N, out] (row stride ldc) = x[N, in] @ W[out, in]^T + b
  void linear(const T* x, int N, int in, const T* w, const T* bias, int out, T* y, int ldc, bool relu = false) {
    k::GemmArgs<T> g;
    g.trans_b = true;
    g.m = N, g.n = out, g.k = in;
    g.a = x, g.lda = in;
    g.b = w, g.ldb = in;
    g.c = y, g.ldc = ldc;
    g.bias = bias;
    g.relu = relu;
    k::gemm(dev, g);
  }
  void linear(const T* x, int N, int in, size_t w, size_t bias, int out, T* y, bool relu = false) {
    linear(x, N, in, P(w), bias_at(bias), out, y, out, relu);
  }
  void norm_fwd(const T* x, const Norm& n, T* y, T* mean, T* rstd, int rows) {
    k::layer_norm_forward(dev, k::LayerNormForward<T>{x, P(n.w), P(n.b), y, mean, rstd, rows, D, kLayerNormEpsilon});
  }
  // pre-norm: F's input is LayerNorm(x) (into ln); post-norm: x itself.
  const T* sub_in(const T* x, const Norm& n, T* ln, T* mean, T* rstd, int rows) {
    if (!pre) return x;
    norm_fwd(x, n, ln, mean, rstd, rows);
    return ln;
  }
  // pre-norm: out = x + f; post-norm: out = LayerNorm(x + f).
  void sub_out(const T* x, const T* f, const Norm& n, T* out, T* sum, T* mean, T* rstd, int rows) {
    const size_t count = static_cast<size_t>(rows) * D;
    if (pre) {
      k::add(dev, k::AddArgs<T>{x, f, out, count});
      return;
    }
    // One fused op, as Model's post-norm sub_out (the same arithmetic as add then layer_norm_forward).
    k::ResidualNormForward<T> r;
    r.x = x, r.f = f, r.gamma = P(n.w), r.beta = P(n.b), r.s = sum, r.y = out, r.mean = mean, r.rstd = rstd;
    r.rows = rows, r.cols = D, r.eps = kLayerNormEpsilon;
    k::residual_norm_forward(dev, r);
  }
  void attention(const k::AttentionShape<T>& shape, const T* q, const T* kk, const T* v, T* out) {
    k::AttentionForward<T> a;
    a.shape = shape, a.q = q, a.k = kk, a.v = v, a.out = out;
    k::attention_forward(dev, a);
  }
  k::AttentionShape<T> shape(int b, int tq, int tk, const int32_t* lens) const {
    k::AttentionShape<T> a;
    a.B = b, a.Tq = tq, a.Tk = tk, a.H = H, a.Dh = Dh;
    a.k_len = lens;
    a.scale = 1.0f / std::sqrt(static_cast<float>(Dh));
    return a;
  }
  void ffn(const T* fin, int rows, const Ffn& f, T* h, T* out) {
    linear(fin, rows, D, f.fc1_w, f.fc1_b, F, h, /*relu=*/true);
    linear(h, rows, F, f.fc2_w, f.fc2_b, D, out);
  }

  T* layer_cache(int buf, int l) { return cache[buf].data() + static_cast<size_t>(l) * rows_cap * Tmax * 2 * D; }
  T* layer_ckv(int l) { return cross_kv.data() + static_cast<size_t>(l) * B * S * 2 * D; }

  // ---- start: layout, encoder, cross-attention K/V ----
  void start(const std::vector<std::vector<int32_t>>& sources, int rows_per_sentence, int max_steps) {
    AIAYN_CHECK(rows_per_sentence >= 1, "decoder: rows per sentence must be at least 1");
    AIAYN_CHECK(max_steps >= 1, "decoder: max_steps must be at least 1");
    B = static_cast<int>(sources.size());
    AIAYN_CHECK(B >= 1, "decoder: no sentences to decode");
    K = rows_per_sentence;
    Sn = B, R = B * K;
    Tmax = max_steps, t = 0;
    S = 1;
    for (const auto& s : sources) {
      AIAYN_CHECK(!s.empty(), "decoder: an empty source (every source ends in EOS)");
      // the embedding ops leave the ids to the caller: checked here, on the host
      k::check_token_ids(Device::CPU, k::TokenIdCheck{s.data(), static_cast<long>(s.size()), V, "decoder: source token"});
      S = std::max(S, static_cast<int>(s.size()));
    }
    rows_cap = static_cast<size_t>(R);
    const size_t Ns = static_cast<size_t>(B) * S;
    std::vector<int32_t> src_host(Ns, pad_id);
    src_len_host.assign(B, 0);
    for (int b = 0; b < B; ++b) {
      std::copy(sources[b].begin(), sources[b].end(), src_host.begin() + static_cast<size_t>(b) * S);
      src_len_host[b] = static_cast<int32_t>(sources[b].size());
    }
    const size_t n_ints = Ns + B + 3 * rows_cap;
    if (ints.size() < n_ints) ints = k::DeviceArray<int32_t>(dev, n_ints);
    src = ints.data();
    src_len = src + Ns;
    tokens = src_len + B;
    positions = tokens + rows_cap;
    row_len = positions + rows_cap;
    k::device_copy(dev, src, Device::CPU, src_host.data(), Ns * 4);
    k::device_copy(dev, src_len, Device::CPU, src_len_host.data(), static_cast<size_t>(B) * 4);

    // encoder scratch
    const size_t e_need = Ns * (6 * D + 3 * D + F) + 2 * Ns;
    ensure(enc_buf, dev, e_need);
    T* p = enc_buf.data();
    auto take = [&](size_t n) { T* at = p; p += n; return at; };
    ex = take(Ns * D), ey = take(Ns * D), esum = take(Ns * D), eln = take(Ns * D), ectx = take(Ns * D);
    etmp = take(Ns * D), eqkv = take(Ns * 3 * D), eh = take(Ns * F), emean = take(Ns), erstd = take(Ns);
    ensure(memory, dev, Ns * D);
    ensure(cross_kv, dev, static_cast<size_t>(L) * Ns * 2 * D);
    for (auto& c : cache) ensure(c, dev, static_cast<size_t>(L) * rows_cap * Tmax * 2 * D);
    cache_cur = 0;

    // step scratch
    const size_t s_need = rows_cap * (7 * D + F + static_cast<size_t>(V)) + 2 * rows_cap;
    ensure(step_buf, dev, s_need);
    p = step_buf.data();
    sx = take(rows_cap * D), sy = take(rows_cap * D), ssum = take(rows_cap * D), sln = take(rows_cap * D);
    sq = take(rows_cap * D), sctx = take(rows_cap * D), stmp = take(rows_cap * D), sh = take(rows_cap * F);
    smean = take(rows_cap), srstd = take(rows_cap), slogits = take(rows_cap * V);

    encode();
  }

  void encode() {
    const int N = B * S;
    k::EmbedForward<T> e;
    e.ids = src, e.table = P(emb), e.out = ex, e.N = N, e.D = D, e.V = V, e.seq_len = S;
    e.scale = std::sqrt(static_cast<float>(D));
    k::embed_forward(dev, e);
    T* x = ex;
    T* y = ey;
    for (int l = 0; l < L; ++l) {
      const EncLayer& pl = enc_p[l];
      const T* fin = sub_in(x, pl.attn_norm, eln, emean, erstd, N);
      linear(fin, N, D, pl.qkv_w, pl.qkv_b, 3 * D, eqkv);
      k::AttentionShape<T> a = shape(B, S, S, src_len);
      a.q_bstride = a.kv_bstride = static_cast<long>(S) * 3 * D;
      a.o_bstride = static_cast<long>(S) * D;
      a.q_stride = a.kv_stride = 3 * D;
      a.o_stride = D;
      attention(a, eqkv, eqkv + D, eqkv + 2 * D, ectx);
      linear(ectx, N, D, pl.out_w, pl.out_b, D, etmp);
      sub_out(x, etmp, pl.attn_norm, y, esum, emean, erstd, N);
      std::swap(x, y);
      fin = sub_in(x, pl.ffn_norm, eln, emean, erstd, N);
      ffn(fin, N, pl.ffn, eh, etmp);
      sub_out(x, etmp, pl.ffn_norm, y, esum, emean, erstd, N);
      std::swap(x, y);
    }
    const size_t count = static_cast<size_t>(N) * D;
    if (pre)
      norm_fwd(x, enc_final, memory.data(), emean, erstd, N);
    else
      k::device_copy(dev, memory.data(), dev, x, count * sizeof(T));
    // cross-attention K/V of every decoder layer, once per sentence: [B, S, 2D]
    for (int l = 0; l < L; ++l)
      linear(memory.data(), N, D, dec_p[l].kv_w, dec_p[l].kv_b, 2 * D, layer_ckv(l));
  }

  // ---- one decoder step for every row ----
  typename IncrementalDecoder<T>::StepScores step_scores(const std::vector<int32_t>& toks) {
    AIAYN_CHECK(static_cast<int>(toks.size()) == R,
                fmt::format("decoder: step got {} tokens for {} rows", toks.size(), R));
    AIAYN_CHECK(t < Tmax, fmt::format("decoder: step {} is beyond the {} steps prepared", t + 1, Tmax));
    k::check_token_ids(Device::CPU, k::TokenIdCheck{toks.data(), R, V, "decoder: step token"});
    step_positions.assign(R, t);
    step_lengths.assign(R, t + 1);
    k::device_copy(dev, tokens, Device::CPU, toks.data(), static_cast<size_t>(R) * 4);
    k::device_copy(dev, positions, Device::CPU, step_positions.data(), static_cast<size_t>(R) * 4);
    k::device_copy(dev, row_len, Device::CPU, step_lengths.data(), static_cast<size_t>(R) * 4);

    k::EmbedForward<T> e;
    e.ids = tokens, e.table = P(emb), e.out = sx, e.positions = positions, e.N = R, e.D = D, e.V = V, e.seq_len = 1;
    e.scale = std::sqrt(static_cast<float>(D));
    k::embed_forward(dev, e);
    T* x = sx;
    T* y = sy;
    for (int l = 0; l < L; ++l) {
      const DecLayer& pl = dec_p[l];
      // self-attention over the cache: this step's k, v go straight into row t of each hypothesis' cache
      T* kv = layer_cache(cache_cur, l);
      const T* fin = sub_in(x, pl.self_norm, sln, smean, srstd, R);
      linear(fin, R, D, P(pl.qkv_w), bias_at(pl.qkv_b), D, sq, D);
      linear(fin, R, D, P(pl.qkv_w) + static_cast<size_t>(D) * D, bias_at(pl.qkv_b, D), 2 * D,
             kv + static_cast<size_t>(t) * 2 * D, Tmax * 2 * D);
      k::AttentionShape<T> a = shape(R, 1, t + 1, row_len);
      a.q_bstride = D, a.q_stride = D;
      a.kv_bstride = static_cast<long>(Tmax) * 2 * D, a.kv_stride = 2 * D;
      a.o_bstride = D, a.o_stride = D;
      attention(a, sq, kv, kv + D, sctx);
      linear(sctx, R, D, pl.out_w, pl.out_b, D, stmp);
      sub_out(x, stmp, pl.self_norm, y, ssum, smean, srstd, R);
      std::swap(x, y);
      // cross-attention: one attention batch entry per sentence, its K rows as the queries
      fin = sub_in(x, pl.cross_norm, sln, smean, srstd, R);
      linear(fin, R, D, pl.q_w, pl.q_b, D, sq);
      const T* ckv = layer_ckv(l);
      k::AttentionShape<T> c = shape(Sn, K, S, src_len);
      c.q_bstride = static_cast<long>(K) * D, c.q_stride = D;
      c.kv_bstride = static_cast<long>(S) * 2 * D, c.kv_stride = 2 * D;
      c.o_bstride = static_cast<long>(K) * D, c.o_stride = D;
      attention(c, sq, ckv, ckv + D, sctx);
      linear(sctx, R, D, pl.cout_w, pl.cout_b, D, stmp);
      sub_out(x, stmp, pl.cross_norm, y, ssum, smean, srstd, R);
      std::swap(x, y);
      // feed-forward
      fin = sub_in(x, pl.ffn_norm, sln, smean, srstd, R);
      ffn(fin, R, pl.ffn, sh, stmp);
      sub_out(x, stmp, pl.ffn_norm, y, ssum, smean, srstd, R);
      std::swap(x, y);
    }
    const T* out = x;
    if (pre) {
      norm_fwd(x, dec_final, y, smean, srstd, R);
      out = y;
    }
    k::GemmArgs<T> g;  // logits[R, V] = out @ E^T (the shared embedding, no bias)
    g.trans_b = true;
    g.m = R, g.n = V, g.k = D;
    g.a = out, g.lda = D;
    g.b = P(emb), g.ldb = D;
    g.c = slogits, g.ldc = V;
    k::gemm(dev, g);
    ++t;

    // On the CPU the logits are read where the GEMM wrote them; other devices copy them to the host.
    const size_t n = static_cast<size_t>(R) * V;
    const T* logits = slogits;
    if (dev != Device::CPU) {
      logits_host.resize(n);
      k::device_copy(Device::CPU, logits_host.data(), dev, slogits, n * sizeof(T));
      logits = logits_host.data();
    }
    // log-sum-exp per row in double (log p = logit - log_norm), over rows in parallel; the exponentials are
    // the vectorised exp_nonpositive (a few ulp from libm's), the sum in a fixed order for a given build.
    log_norm.resize(R);
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; ++r) log_norm[r] = log_sum_exp(logits + static_cast<size_t>(r) * V, V);
    return {logits, log_norm.data()};
  }

  const std::vector<double>& step(const std::vector<int32_t>& toks) {
    const auto scores = step_scores(toks);
    logp.resize(static_cast<size_t>(R) * V);
    for (int r = 0; r < R; ++r) {
      const T* row = scores.logits + static_cast<size_t>(r) * V;
      double* o = logp.data() + static_cast<size_t>(r) * V;
      for (int j = 0; j < V; ++j) o[j] = static_cast<double>(row[j]) - scores.log_norm[r];
    }
    return logp;
  }

  // ---- beam reordering and compaction ----
  void reorder(const std::vector<int>& parent) {
    const int newR = static_cast<int>(parent.size());
    AIAYN_CHECK(newR % K == 0 && newR <= R, fmt::format("decoder: reorder to {} rows from {} (K = {})", newR, R, K));
    const int newSn = newR / K;
    std::vector<int> sent(newSn);
    for (int s = 0; s < newSn; ++s) {
      sent[s] = parent[static_cast<size_t>(s) * K] / K;
      for (int j = 0; j < K; ++j) {
        const int pr = parent[static_cast<size_t>(s) * K + j];
        AIAYN_CHECK(pr >= 0 && pr < R && pr / K == sent[s],
                    fmt::format("decoder: reorder: row {} takes parent {} outside its sentence block", s * K + j, pr));
      }
    }
    bool identity = newR == R;
    for (int r = 0; identity && r < newR; ++r) identity = parent[r] == r;
    if (identity) return;
    if (t > 0) {
      // In place: a row whose parent is itself keeps its cache, a moving row copies its parent's t positions.
      // A parent that moves too and is read by another row is first saved to the spare buffer, so that no
      // row is read after it was rewritten (rows at or beyond newR are never rewritten).
      const int spare = 1 - cache_cur;
      const size_t row_elems = static_cast<size_t>(Tmax) * 2 * D;
      const size_t used = static_cast<size_t>(t) * 2 * D * sizeof(T);
      saved_rows.assign(static_cast<size_t>(R), 0);
      for (int r = 0; r < newR; ++r) {
        const int p = parent[r];
        if (p != r && p < newR && parent[p] != p) saved_rows[p] = 1;
      }
      for (int l = 0; l < L; ++l) {
        T* rows = layer_cache(cache_cur, l);
        T* saved = layer_cache(spare, l);
        for (int p = 0; p < newR; ++p)
          if (saved_rows[p]) k::device_copy(dev, saved + p * row_elems, dev, rows + p * row_elems, used);
        for (int r = 0; r < newR; ++r) {
          const int p = parent[r];
          if (p == r) continue;
          const T* from = (saved_rows[p] ? saved : rows) + p * row_elems;
          k::device_copy(dev, rows + r * row_elems, dev, from, used);
        }
      }
    }
    bool same_sentences = newSn == Sn;
    for (int s = 0; same_sentences && s < newSn; ++s) same_sentences = sent[s] == s;
    if (!same_sentences) {
      // Compaction in place: sent[] increases and sent[s] >= s, so block sent[s] is read before anything
      // is written over it.
      const size_t block = static_cast<size_t>(S) * 2 * D;
      for (int l = 0; l < L; ++l) {
        T* blocks = layer_ckv(l);
        for (int s = 0; s < newSn; ++s)
          if (sent[s] != s) k::device_copy(dev, blocks + s * block, dev, blocks + sent[s] * block, block * sizeof(T));
      }
      std::vector<int32_t> lens(newSn);
      for (int s = 0; s < newSn; ++s) lens[s] = src_len_host[sent[s]];
      src_len_host = lens;
      k::device_copy(dev, src_len, Device::CPU, lens.data(), static_cast<size_t>(newSn) * 4);
    }
    Sn = newSn, R = newR;
  }
};

template <class T>
IncrementalDecoder<T>::IncrementalDecoder(Model<T>& model) : impl_(std::make_unique<Impl>(model)) {}
template <class T>
IncrementalDecoder<T>::~IncrementalDecoder() = default;
template <class T>
void IncrementalDecoder<T>::start(const std::vector<std::vector<int32_t>>& sources, int rows_per_sentence, int max_steps) {
  impl_->start(sources, rows_per_sentence, max_steps);
}
template <class T>
const std::vector<double>& IncrementalDecoder<T>::step(const std::vector<int32_t>& tokens) {
  return impl_->step(tokens);
}
template <class T>
typename IncrementalDecoder<T>::StepScores IncrementalDecoder<T>::step_scores(const std::vector<int32_t>& tokens) {
  return impl_->step_scores(tokens);
}
template <class T>
void IncrementalDecoder<T>::reorder(const std::vector<int>& parent) {
  impl_->reorder(parent);
}
template <class T>
const ModelSpec& IncrementalDecoder<T>::spec() const {
  return impl_->model.spec();
}
template <class T>
int IncrementalDecoder<T>::rows() const {
  return impl_->R;
}
template <class T>
int IncrementalDecoder<T>::position() const {
  return impl_->t;
}
template <class T>
std::vector<T> IncrementalDecoder<T>::encoder_output() const {
  const size_t n = static_cast<size_t>(impl_->B) * impl_->S * impl_->D;
  std::vector<T> out(n);
  k::device_copy(Device::CPU, out.data(), impl_->dev, impl_->memory.data(), n * sizeof(T));
  return out;
}

// ---- search ----
namespace {

// The maximum number of output tokens before EOS: source length + max_len_b, the source length counting its
// EOS (as fairseq's max_len_a * src_len + max_len_b does with max_len_a = 1).
int max_output_len(const std::vector<int32_t>& source, int max_len_b) {
  return static_cast<int>(source.size()) + max_len_b;
}

struct Candidate {
  double value;  // cumulative log-prob after the extension
  int row;
  int32_t token;
};
// Higher value first; ties to the lower row, then the lower token id.
bool better(const Candidate& a, const Candidate& b) {
  if (a.value != b.value) return a.value > b.value;
  if (a.row != b.row) return a.row < b.row;
  return a.token < b.token;
}

// The `take` best tokens of one row of logits by (logit descending, id ascending), best first, in one pass: a
// small sorted buffer that most tokens fail to enter with one comparison. Ranking the logits ranks the
// log-probabilities (log p = logit - log_norm, one shift for the whole row).
template <class T>
void best_tokens(const T* row, int V, int take, std::vector<int32_t>* best) {
  best->resize(static_cast<size_t>(take));
  int32_t* ids = best->data();
  int n = 0;
  T worst = T(0);  // row[ids[take - 1]] once the buffer is full
  for (int32_t v = 0; v < V; ++v) {
    const T x = row[v];
    if (n == take && !(x > worst)) continue;  // on a tie the lower id, already in, stays
    int pos = n < take ? n : take - 1;         // the slot x takes: after every entry whose logit is >= x
    while (pos > 0 && row[ids[pos - 1]] < x) {
      ids[pos] = ids[pos - 1];
      --pos;
    }
    ids[pos] = v;
    if (n < take) ++n;
    if (n == take) worst = row[ids[take - 1]];
  }
  best->resize(static_cast<size_t>(n));
}

// Every decoder row of every step as (token fed, parent row of the step before): a hypothesis' tokens are read
// back from its last row, so no per-row history is copied as the beam reorders. Level t holds the rows fed at
// step t; level 0 is the BOS rows.
struct Trail {
  std::vector<int32_t> token, parent;
  std::vector<size_t> level_start;
  void add_level(const std::vector<int32_t>& tokens, const std::vector<int>& parents) {
    level_start.push_back(token.size());
    token.insert(token.end(), tokens.begin(), tokens.end());
    parent.insert(parent.end(), parents.begin(), parents.end());
  }
  // The tokens after BOS of row `row` of level `level` (level tokens).
  std::vector<int32_t> tokens_of(int level, int row) const {
    std::vector<int32_t> out(static_cast<size_t>(level));
    for (int l = level; l > 0; --l) {
      const size_t at = level_start[static_cast<size_t>(l)] + static_cast<size_t>(row);
      out[static_cast<size_t>(l - 1)] = token[at];
      row = parent[at];
    }
    return out;
  }
};

}  // namespace

template <class T>
std::vector<Hypothesis> beam_search(IncrementalDecoder<T>& decoder, const std::vector<std::vector<int32_t>>& sources,
                                    const BeamOptions& options) {
  AIAYN_CHECK(options.beam >= 1, fmt::format("--beam must be at least 1 (got {})", options.beam));
  AIAYN_CHECK(options.max_len_b >= 0, fmt::format("max_len_b must be non-negative (got {})", options.max_len_b));
  const int B = static_cast<int>(sources.size());
  if (B == 0) return {};
  const int K = options.beam;
  const ModelSpec& spec = decoder.spec();
  const int V = spec.vocab;
  const int32_t eos = spec.eos_id;
  const double neg_inf = -std::numeric_limits<double>::infinity();

  std::vector<int> max_len(B);
  int steps = 1;
  for (int b = 0; b < B; ++b) {
    max_len[b] = max_output_len(sources[b], options.max_len_b);
    steps = std::max(steps, max_len[b] + 1);
  }
  decoder.start(sources, K, steps);

  struct Finished {
    double log_prob, score;
    int level, row;  // the hypothesis' last row in the trail (its EOS is not stored)
  };
  std::vector<int> live(B);  // live slot -> sentence
  for (int b = 0; b < B; ++b) live[b] = b;
  std::vector<std::vector<Finished>> finished(B);
  std::vector<double> cum(static_cast<size_t>(B) * K, neg_inf);
  for (int b = 0; b < B; ++b) cum[static_cast<size_t>(b) * K] = 0.0;  // the K copies of BOS count once
  std::vector<int32_t> tokens(static_cast<size_t>(B) * K, spec.bos_id);
  Trail trail;
  trail.add_level(tokens, std::vector<int>(tokens.size(), -1));

  // Reused across steps (no allocation once they have grown).
  std::vector<Candidate> cands;
  std::vector<int32_t> best, next_tokens;
  std::vector<int> next_live, parent;
  std::vector<double> next_cum;
  const int take = std::min(V, 2 * K);
  for (int t = 0; !live.empty(); ++t) {
    const auto scores = decoder.step_scores(tokens);
    next_live.clear(), parent.clear(), next_cum.clear(), next_tokens.clear();
    for (size_t s = 0; s < live.size(); ++s) {
      const int b = live[s];
      const bool force_eos = t >= max_len[b];
      cands.clear();
      for (int j = 0; j < K; ++j) {
        const int r = static_cast<int>(s) * K + j;
        if (cum[r] == neg_inf) continue;
        const T* row = scores.logits + static_cast<size_t>(r) * V;
        const double norm = scores.log_norm[r];
        if (force_eos) {
          cands.push_back({cum[r] + (static_cast<double>(row[eos]) - norm), r, eos});
          continue;
        }
        // this row's best 2K tokens (the sentence's best 2K are among the rows' best 2K)
        best_tokens(row, V, take, &best);
        for (const int32_t v : best) cands.push_back({cum[r] + (static_cast<double>(row[v]) - norm), r, v});
      }
      std::sort(cands.begin(), cands.end(), better);
      if (static_cast<int>(cands.size()) > 2 * K) cands.resize(2 * K);
      const size_t first_new = parent.size();
      int n_next = 0;
      for (size_t i = 0; i < cands.size(); ++i) {
        const Candidate& c = cands[i];
        if (c.token == eos) {
          // every row of step t carries t tokens, so |Y| = t and the EOS makes t + 1
          if (static_cast<int>(i) < K)
            finished[b].push_back({c.value, c.value / length_penalty(t + 1, options.lenpen), t, c.row});
        } else if (n_next < K) {
          parent.push_back(c.row);
          next_cum.push_back(c.value);
          next_tokens.push_back(c.token);
          ++n_next;
        }
      }
      if (force_eos || static_cast<int>(finished[b].size()) >= K || n_next == 0) {
        parent.resize(first_new), next_cum.resize(first_new), next_tokens.resize(first_new);
        continue;
      }
      for (; n_next < K; ++n_next) {  // dead rows keep the block full; they never produce candidates
        parent.push_back(static_cast<int>(s) * K);
        next_cum.push_back(neg_inf);
        next_tokens.push_back(eos);
      }
      next_live.push_back(b);
    }
    live.swap(next_live);
    if (live.empty()) break;
    decoder.reorder(parent);
    trail.add_level(next_tokens, parent);
    cum.swap(next_cum);
    tokens.swap(next_tokens);
  }

  std::vector<Hypothesis> out(B);
  for (int b = 0; b < B; ++b) {
    AIAYN_CHECK(!finished[b].empty(), fmt::format("beam search: sentence {} finished no hypothesis", b));
    size_t i_best = 0;
    for (size_t i = 1; i < finished[b].size(); ++i)
      if (finished[b][i].score > finished[b][i_best].score) i_best = i;
    const Finished& f = finished[b][i_best];
    out[b].tokens = trail.tokens_of(f.level, f.row);
    out[b].log_prob = f.log_prob;
    out[b].score = f.score;
  }
  return out;
}

template <class T>
std::vector<Hypothesis> greedy_decode(IncrementalDecoder<T>& decoder, const std::vector<std::vector<int32_t>>& sources,
                                      int max_len_b, double lenpen) {
  const int B = static_cast<int>(sources.size());
  if (B == 0) return {};
  const ModelSpec& spec = decoder.spec();
  const int V = spec.vocab;
  std::vector<int> max_len(B);
  int steps = 1;
  for (int b = 0; b < B; ++b) {
    max_len[b] = max_output_len(sources[b], max_len_b);
    steps = std::max(steps, max_len[b] + 1);
  }
  decoder.start(sources, 1, steps);
  std::vector<Hypothesis> out(B);
  std::vector<int> live(B);
  for (int b = 0; b < B; ++b) live[b] = b;
  std::vector<int32_t> tokens(B, spec.bos_id), next_tokens;
  std::vector<int> next_live, parent;
  for (int t = 0; !live.empty(); ++t) {
    const auto scores = decoder.step_scores(tokens);
    next_live.clear(), parent.clear(), next_tokens.clear();
    for (size_t s = 0; s < live.size(); ++s) {
      const int b = live[s];
      const T* row = scores.logits + s * V;
      int32_t tok = spec.eos_id;
      if (t < max_len[b]) {
        tok = 0;
        for (int v = 1; v < V; ++v)
          if (row[v] > row[tok]) tok = v;  // strict: the lowest id wins ties
      }
      out[b].log_prob += static_cast<double>(row[tok]) - scores.log_norm[s];
      if (tok == spec.eos_id) {
        out[b].score = out[b].log_prob / length_penalty(static_cast<int>(out[b].tokens.size()) + 1, lenpen);
        continue;
      }
      out[b].tokens.push_back(tok);
      next_live.push_back(b);
      parent.push_back(static_cast<int>(s));
      next_tokens.push_back(tok);
    }
    live.swap(next_live);
    if (live.empty()) break;
    decoder.reorder(parent);
    tokens.swap(next_tokens);
  }
  return out;
}

template class IncrementalDecoder<float>;
template class IncrementalDecoder<double>;
template std::vector<Hypothesis> beam_search(IncrementalDecoder<float>&, const std::vector<std::vector<int32_t>>&,
                                             const BeamOptions&);
template std::vector<Hypothesis> beam_search(IncrementalDecoder<double>&, const std::vector<std::vector<int32_t>>&,
                                             const BeamOptions&);
template std::vector<Hypothesis> greedy_decode(IncrementalDecoder<float>&, const std::vector<std::vector<int32_t>>&,
                                               int, double);
template std::vector<Hypothesis> greedy_decode(IncrementalDecoder<double>&, const std::vector<std::vector<int32_t>>&,
                                               int, double);

}  // namespace aiayn::trainer
