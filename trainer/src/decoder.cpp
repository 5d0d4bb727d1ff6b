// The incremental decoder and beam search (see decoder.hpp for the invariants and the search rule).
//
// The layers are the model's own (layers.hpp), run without dropout and without saving anything for a backward
// pass: scratch sized in start() for the batch and reused by every layer and step.
#include "trainer/decoder.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "aiayn/error.hpp"
#include "kernels/ops.hpp"
#include "layers.hpp"

namespace aiayn::trainer {

namespace k = aiayn::kernels;
using k::Device;

double length_penalty(int length, double alpha) { return std::pow((5.0 + length) / 6.0, alpha); }

template <class T>
struct IncrementalDecoder<T>::Impl {
  using Residual = layers::ResidualTensors<T, T>;
  Model<T>& model;
  const Device dev;
  layers::TransformerLayers<T, T> net;
  const int D, F, V, L;
  const bool pre_norm;
  const int pad_id;
  const layers::DropoutKeys no_dropout{};

  // ---- the current batch ----
  int B = 0, S = 0;      // sentences at start(), padded source length
  int K = 1;             // rows per sentence
  int Sn = 0, R = 0;     // live sentences, rows (= Sn * K)
  int Tmax = 0, t = 0;   // cache rows per hypothesis, steps taken
  std::vector<int32_t> src_len_host;  // [Sn] of the live sentences

  // ---- device buffers ----
  k::DeviceArray<int32_t> ints;  // src [B*S] | src_len [B] | tokens [R0] | positions [R0] | row_len [R0]
  int32_t *src = nullptr, *src_len = nullptr, *tokens = nullptr, *positions = nullptr, *row_len = nullptr;
  k::DeviceArray<T> encoder_buf, memory, cross_kv, cache[2], step_buf;  // cache[1 - cache_cur]: reorder's spare rows
  int cache_cur = 0;
  std::vector<char> saved_rows;  // [R] reorder: rows saved to the spare buffer before being rewritten
  size_t rows_cap = 0;  // R0: rows the caches were laid out for (layer stride)
  // What one layer computes with and writes to, reused by every layer (nothing is kept for a backward pass).
  // N rows: B*S in the encoder, R0 in a step.
  struct Scratch {
    T* stream[2] = {};     // [N, D] the running activation: a sub-layer's input and output, in turns
    T* norm_io = nullptr;  // [N, D] a sub-layer's LayerNorm input (post-norm) or output (pre-norm)
    T* mean = nullptr;     // [N] LayerNorm statistics
    T* rstd = nullptr;     // [N]
    T* q = nullptr;        // [N, 3D] in the encoder (q|k|v), [R0, D] in a step (k|v go to the cache)
    T* ctx = nullptr;      // [N, D] attention output
    T* f_out = nullptr;    // [N, D] a sub-layer function's output
    T* hidden = nullptr;   // [N, F] the feed-forward's hidden layer
    Residual residual(int out) const { return Residual{norm_io, mean, rstd, stream[out]}; }
  };
  Scratch encoder_scratch;  // [B*S, ...]
  Scratch step_scratch;     // [R0, ...]
  T* step_logits = nullptr;      // [R0, V]
  std::vector<T> logits_host;    // [R0, V] a host copy of the logits (devices other than the CPU)
  std::vector<double> log_norm;  // [R0] per row log-sum-exp of the logits
  std::vector<double> logp;      // [R, V] step()'s full log-probabilities
  std::vector<int32_t> step_positions, step_lengths;  // [R] host staging of the step's positions, key counts

  explicit Impl(Model<T>& m)
      : model(m), dev(m.device()), net(m), D(m.spec().arch.d_model), F(m.spec().arch.d_ff), V(m.spec().vocab),
        L(m.spec().arch.layers), pre_norm(m.spec().arch.pre_norm), pad_id(m.spec().pad_id) {}

  static void ensure(k::DeviceArray<T>& a, Device d, size_t n) {
    if (a.size() < n) a = k::DeviceArray<T>(d, n);
  }

  T* layer_cache(int buf, int l) { return cache[buf].data() + static_cast<size_t>(l) * rows_cap * Tmax * 2 * D; }
  T* layer_cross_kv(int l) { return cross_kv.data() + static_cast<size_t>(l) * B * S * 2 * D; }

  // Scratch for `rows` rows at p (q_width: the queries' columns, 3D or D), advancing p.
  Scratch take_scratch(T*& p, size_t rows, int q_width) {
    auto take = [&](size_t n) { T* at = p; p += n; return at; };
    Scratch s;
    s.stream[0] = take(rows * D), s.stream[1] = take(rows * D), s.norm_io = take(rows * D);
    s.ctx = take(rows * D), s.f_out = take(rows * D), s.q = take(rows * q_width), s.hidden = take(rows * F);
    s.mean = take(rows), s.rstd = take(rows);
    return s;
  }
  static size_t scratch_size(size_t rows, int D, int F, int q_width) { return rows * (5 * D + q_width + F + 2); }

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

    ensure(encoder_buf, dev, scratch_size(Ns, D, F, 3 * D));
    T* p = encoder_buf.data();
    encoder_scratch = take_scratch(p, Ns, 3 * D);
    ensure(memory, dev, Ns * D);
    ensure(cross_kv, dev, static_cast<size_t>(L) * Ns * 2 * D);
    for (auto& c : cache) ensure(c, dev, static_cast<size_t>(L) * rows_cap * Tmax * 2 * D);
    cache_cur = 0;

    ensure(step_buf, dev, scratch_size(rows_cap, D, F, D) + rows_cap * static_cast<size_t>(V));
    p = step_buf.data();
    step_scratch = take_scratch(p, rows_cap, D);
    step_logits = p;

    encode();
  }

  void encode() {
    const int N = B * S;
    const Scratch& sc = encoder_scratch;
    net.embed(src, nullptr, N, S, sc.stream[0], layers::kEncoderStack, no_dropout);
    // Each encoder layer reads stream[0], writes its self-attention sub-layer to stream[1], its output to stream[0].
    layers::EncoderLayerTensors<T, T> e;
    e.self_attn = net.self_attention_tensors(sc.q, sc.ctx, B, S, src_len, /*causal=*/false);
    e.self_attn_res = sc.residual(1);
    e.ffn.hidden = e.ffn.hidden_dropped = sc.hidden;
    e.ffn_res = sc.residual(0);
    e.f_out = sc.f_out;
    for (int l = 0; l < L; ++l) net.encoder_layer(l, sc.stream[0], e, N, S, no_dropout);
    if (pre_norm)
      net.norm_forward(sc.stream[0], net.offsets.encoder_final_norm, memory.data(), sc.mean, sc.rstd, N);
    else
      k::device_copy(dev, memory.data(), dev, sc.stream[0], static_cast<size_t>(N) * D * sizeof(T));
    // cross-attention K/V of every decoder layer, once per sentence: [B, S, 2D]
    for (int l = 0; l < L; ++l) net.project_cross_kv(l, memory.data(), N, layer_cross_kv(l));
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

    const Scratch& sc = step_scratch;
    net.embed(tokens, positions, R, 1, sc.stream[0], layers::kDecoderStack, no_dropout);
    layers::DecoderLayerTensors<T, T> d;
    // self-attention over the cache: this step's k, v go straight into row t of each hypothesis' cache
    d.self_attn.projection = layers::Projection::QThenKv;
    d.self_attn.q = sc.q, d.self_attn.ctx = sc.ctx;
    d.self_attn.kv_ld = static_cast<long>(Tmax) * 2 * D;
    auto& g = d.self_attn.shape;
    g.B = R, g.Tq = 1, g.Tk = t + 1, g.k_len = row_len;
    g.q_bstride = D, g.q_stride = D;
    g.kv_bstride = static_cast<long>(Tmax) * 2 * D, g.kv_stride = 2 * D;
    g.o_bstride = D, g.o_stride = D;
    // cross-attention: one attention batch entry per sentence, its K rows as the queries (keys: per layer)
    d.cross_attn = net.cross_attention_tensors(sc.q, nullptr, sc.ctx, Sn, K, S, src_len);
    d.ffn.hidden = d.ffn.hidden_dropped = sc.hidden;
    d.f_out = sc.f_out;
    // Three sub-layers a layer: the running activation changes buffers after each, so layers alternate.
    int in = 0;
    for (int l = 0; l < L; ++l) {
      T* kv = layer_cache(cache_cur, l);
      d.self_attn.keys = kv, d.self_attn.new_kv = kv + static_cast<size_t>(t) * 2 * D;
      d.cross_attn.keys = layer_cross_kv(l);
      d.self_attn_res = sc.residual(1 - in);
      d.cross_attn_res = sc.residual(in);
      d.ffn_res = sc.residual(1 - in);
      net.decoder_layer(l, sc.stream[in], d, R, 1, no_dropout);
      in = 1 - in;
    }
    const T* out = sc.stream[in];
    if (pre_norm) {
      net.norm_forward(out, net.offsets.decoder_final_norm, sc.stream[1 - in], sc.mean, sc.rstd, R);
      out = sc.stream[1 - in];
    }
    net.output_logits(out, R, step_logits, V);  // logits[R, V] = out @ E^T
    ++t;

    // On the CPU the logits are read where the GEMM wrote them; other devices copy them to the host.
    const size_t n = static_cast<size_t>(R) * V;
    const T* logits = step_logits;
    if (dev != Device::CPU) {
      logits_host.resize(n);
      k::device_copy(Device::CPU, logits_host.data(), dev, step_logits, n * sizeof(T));
      logits = logits_host.data();
    }
    // log-sum-exp per row in double (log p = logit - log_norm)
    log_norm.resize(R);
    layers::log_sum_exp_rows(logits, R, V, log_norm.data());
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
        T* blocks = layer_cross_kv(l);
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
