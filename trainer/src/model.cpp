// The model's forward and backward over both stacks, layer by layer, in the order the paper draws them; the
// layers themselves are layers.hpp's, shared with the incremental decoder.
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
#include "kernels/ops.hpp"
#include "layers.hpp"

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

// The layer stack of a Model<T>: the arena layout for a batch shape, the forward pass over both stacks, the loss
// and the backward pass. The layers themselves are layers::TransformerLayers (layers.hpp), the code the
// incremental decoder runs too. T: the parameters' type (float32 master weights and gradients, or double);
// A: the activations' type (A = T on the CPU and in fp32 on CUDA; bf16 in CUDA mixed precision).
template <class T, class A>
struct ModelStack final : Model<T>::Impl {
  using Residual = layers::ResidualTensors<A, T>;
  using EncoderLayer = layers::EncoderLayerTensors<A, T>;
  using DecoderLayer = layers::DecoderLayerTensors<A, T>;

  const ModelSpec spec;
  const Device dev;
  layers::TransformerLayers<T, A> net;
  const int D, F, V, L;
  const int Vp;  // the logits' row stride: V rounded up to spec.vocab_align (ModelSpec)
  const bool pre_norm;
  // The gradient ranges the backward pass reports as finished (Model::GradsReady), in the order it does.
  using Range = std::pair<size_t, size_t>;
  std::vector<Range> encoder_ranges, decoder_ranges;  // [L]
  Range embedding_range, encoder_final_range, decoder_final_range;

  k::DeviceArray<A> arena;
  k::DeviceArray<int32_t> ints;
  k::DeviceArray<int64_t> longs;

  // ---- the current batch and its layout in the arena ----
  int B = 0, source_len = 0, target_len = 0;  // sentences, padded source length S, padded target length T
  int32_t* src = nullptr;      // [B*S] source tokens
  int32_t* tgt_in = nullptr;   // [B*T] decoder input tokens (BOS first)
  int32_t* tgt_out = nullptr;  // [B*T] the tokens to predict
  int32_t* src_lens = nullptr;  // [B] source lengths (valid keys of the encoder and cross-attention)
  int32_t* tgt_lens = nullptr;  // [B] target lengths
  int64_t* pair = nullptr;      // [B] the pairs' indices in the corpus (dropout keys)
  A* encoder_input = nullptr;   // [B*S, D] embedded source
  A* decoder_input = nullptr;   // [B*T, D] embedded target input
  A* logits = nullptr;          // [B*T, Vp] (only the first V columns of each row are written); dlogits in place
  A* f_out = nullptr;           // [max(B*S, B*T), D] scratch: a sub-layer function's output
  std::vector<EncoderLayer> encoder;  // [L] everything each encoder layer saves
  std::vector<DecoderLayer> decoder;  // [L]
  Residual encoder_final, decoder_final;  // pre-norm: the final LayerNorms (out, mean, rstd)
  // backward only
  A* d_stream = nullptr;          // [max(B*S, B*T), D] the gradient w.r.t. the decoder's running activation
  A* d_encoder_stream = nullptr;  // [B*S, D] the same for the encoder
  layers::GradientScratch<A> activation_grads;

  ModelStack(Model<T>& m, const ModelSpec& s, Device d)
      : spec(s), dev(d), net(m), D(s.arch.d_model), F(s.arch.d_ff), V(s.vocab), L(s.arch.layers),
        Vp((s.vocab + std::max(1, s.vocab_align) - 1) / std::max(1, s.vocab_align) * std::max(1, s.vocab_align)),
        pre_norm(s.arch.pre_norm) {
    const ParamTable& t = m.table();
    for (int l = 0; l < L; ++l) {
      encoder_ranges.push_back(t.range(fmt::format("encoder/layers/{}/", l)));
      decoder_ranges.push_back(t.range(fmt::format("decoder/layers/{}/", l)));
    }
    embedding_range = t.range("embedding/");
    if (pre_norm) {
      encoder_final_range = t.range("encoder/final_norm/");
      decoder_final_range = t.range("decoder/final_norm/");
    }
  }

  // ---- arena layout for a batch shape: measure, grow if needed, assign ----
  // After upload() (the attention geometries point at the batch's lengths).
  void layout(int b, int s, int t, bool backward) {
    B = b, source_len = s, target_len = t;
    const size_t Ns = static_cast<size_t>(B) * source_len, Nt = static_cast<size_t>(B) * target_len;
    const size_t Nmax = std::max(Ns, Nt);
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
    auto take_stats = [&](size_t n) { return take_as(static_cast<T*>(nullptr), n); };  // LayerNorm statistics
    auto residual = [&](size_t rows) {
      return Residual{take(rows * D), take_stats(rows), take_stats(rows), take(rows * D)};
    };
    // q|k|v [B*len, 3D] of a self-attention over sentences of `len` tokens, its output, what the op saves
    auto self_attention = [&](int len, const int32_t* lens, bool causal) {
      const size_t rows = static_cast<size_t>(B) * len;
      A* qkv = take(rows * 3 * D);
      layers::AttentionTensors<A> a = net.self_attention_tensors(qkv, take(rows * D), B, len, lens, causal);
      a.saved = take_as(static_cast<char*>(nullptr), k::attention_saved_bytes(dev, a.shape));
      return a;
    };
    auto feed_forward = [&](size_t rows) {
      layers::FeedForwardTensors<A> f;
      f.hidden = take(rows * F);
      f.hidden_dropped = spec.arch.relu_dropout > 0 ? take(rows * F) : f.hidden;
      return f;
    };
    for (int pass = 0; pass < 2; ++pass) {
      used = 0;
      encoder.clear();
      decoder.clear();
      encoder_input = take(Ns * D);
      for (int l = 0; l < L; ++l) {
        EncoderLayer e;
        e.self_attn = self_attention(source_len, src_lens, /*causal=*/false);
        e.self_attn_res = residual(Ns);
        e.ffn = feed_forward(Ns);
        e.ffn_res = residual(Ns);
        encoder.push_back(e);
      }
      if (pre_norm) encoder_final = residual(Ns);
      decoder_input = take(Nt * D);
      for (int l = 0; l < L; ++l) {
        DecoderLayer d;
        d.self_attn = self_attention(target_len, tgt_lens, /*causal=*/true);
        d.self_attn_res = residual(Nt);
        // cross-attention: q [B*T, D] against k|v [B*S, 2D] of the encoder output
        A* q = take(Nt * D);
        A* kv = take(Ns * 2 * D);
        d.cross_attn = net.cross_attention_tensors(q, kv, take(Nt * D), B, target_len, source_len, src_lens);
        d.cross_attn.saved = take_as(static_cast<char*>(nullptr), k::attention_saved_bytes(dev, d.cross_attn.shape));
        d.cross_attn_res = residual(Nt);
        d.ffn = feed_forward(Nt);
        d.ffn_res = residual(Nt);
        decoder.push_back(d);
      }
      if (pre_norm) decoder_final = residual(Nt);
      logits = take(Nt * static_cast<size_t>(Vp));
      f_out = take(Nmax * D);
      if (backward) {
        d_stream = take(Nmax * D);
        activation_grads.d_f = take(Nmax * D);
        activation_grads.d_fn_in = take(Nmax * D);
        activation_grads.d_hidden = take(Nmax * F);
        activation_grads.d_ctx = take(Nmax * D);
        activation_grads.d_qkv = take(Nmax * 3 * D);
        activation_grads.d_memory = take(Ns * D);
        activation_grads.d_cross_kv = take(Ns * 2 * D);
        d_encoder_stream = take(Ns * D);
      }
      if (pass == 0) {
        if (used > arena.size()) arena = k::DeviceArray<A>(dev, used);
        base = arena.data();
        measuring = false;
      }
    }
    for (auto& e : encoder) e.f_out = f_out;
    for (auto& d : decoder) d.f_out = f_out;
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
    src_lens = tgt_out + Nt;
    tgt_lens = src_lens + b.B;
    pair = longs.data();
    auto put = [&](void* dst, const void* from, size_t bytes) { k::device_copy(dev, dst, Device::CPU, from, bytes); };
    put(src, b.src.data(), Ns * 4);
    put(tgt_in, b.tgt_in.data(), Nt * 4);
    put(tgt_out, b.tgt_out.data(), Nt * 4);
    put(src_lens, b.src_len.data(), b.B * 4);
    put(tgt_lens, b.tgt_len.data(), b.B * 4);
    put(pair, b.pair.data(), b.B * 8);
  }

  // ---- forward ----
  const A* encoder_output() const { return pre_norm ? encoder_final.out : encoder.back().ffn_res.out; }
  const A* decoder_output() const { return pre_norm ? decoder_final.out : decoder.back().ffn_res.out; }

  void encode(const layers::DropoutKeys& keys) {
    const int N = B * source_len;
    net.embed(src, nullptr, N, source_len, encoder_input, layers::kEncoderStack, keys);
    const A* x = encoder_input;
    for (int l = 0; l < L; ++l) {
      net.encoder_layer(l, x, encoder[l], N, source_len, keys);
      x = encoder[l].ffn_res.out;
    }
    if (pre_norm)
      net.norm_forward(x, net.offsets.encoder_final_norm, encoder_final.out, encoder_final.mean, encoder_final.rstd, N);
  }

  void decode(const layers::DropoutKeys& keys) {
    const int N = B * target_len;
    // the cross-attention's k|v of every layer, from the encoder output
    for (int l = 0; l < L; ++l) net.project_cross_kv(l, encoder_output(), B * source_len, decoder[l].cross_attn.keys);
    net.embed(tgt_in, nullptr, N, target_len, decoder_input, layers::kDecoderStack, keys);
    const A* x = decoder_input;
    for (int l = 0; l < L; ++l) {
      net.decoder_layer(l, x, decoder[l], N, target_len, keys);
      x = decoder[l].ffn_res.out;
    }
    if (pre_norm)
      net.norm_forward(x, net.offsets.decoder_final_norm, decoder_final.out, decoder_final.mean, decoder_final.rstd, N);
    net.output_logits(decoder_output(), N, logits, Vp);  // rows of Vp: the padding is left alone
  }

  // ---- backward ----
  void backward(const layers::DropoutKeys& keys, const typename Model<T>::GradsReady* ready) {
    auto done = [&](const Range& r) {
      if (ready) (*ready)(r.first, r.second);
    };
    const int Nt = B * target_len, Ns = B * source_len;
    // logits -> decoder output: d_stream = dlogits @ E; dE += dlogits^T @ out
    {
      k::GemmArgs<A> g;
      g.m = Nt, g.n = D, g.k = V;
      g.a = logits, g.lda = Vp;
      g.b = net.matmul_weight(net.offsets.embedding), g.ldb = D;
      g.c = d_stream, g.ldc = D;
      k::gemm(dev, g);
      k::GemmArgs<A, T> gw;
      gw.trans_a = true;
      gw.m = V, gw.n = D, gw.k = Nt;
      gw.a = logits, gw.lda = Vp;
      gw.b = decoder_output(), gw.ldb = D;
      gw.c = net.grad(net.offsets.embedding), gw.ldc = D;
      gw.beta = 1.0f;
      k::gemm(dev, gw);
    }
    if (pre_norm) {
      net.norm_backward(d_stream, decoder.back().ffn_res.out, net.offsets.decoder_final_norm, decoder_final.mean,
                        decoder_final.rstd, Nt);
      done(decoder_final_range);
    }
    k::device_zero(dev, activation_grads.d_memory, static_cast<size_t>(Ns) * D * sizeof(A));
    for (int l = L - 1; l >= 0; --l) {
      const A* x = l == 0 ? decoder_input : decoder[l - 1].ffn_res.out;
      net.decoder_layer_backward(l, x, decoder[l], Nt, target_len, encoder_output(), Ns, keys, d_stream,
                                 activation_grads);
      done(decoder_ranges[l]);
    }
    net.embed_backward(tgt_in, Nt, target_len, d_stream, layers::kDecoderStack, keys);

    // encoder
    A* ds = d_encoder_stream;
    net.copy(ds, activation_grads.d_memory, static_cast<size_t>(Ns) * D);
    if (pre_norm) {
      net.norm_backward(ds, encoder.back().ffn_res.out, net.offsets.encoder_final_norm, encoder_final.mean,
                        encoder_final.rstd, Ns);
      done(encoder_final_range);
    }
    for (int l = L - 1; l >= 0; --l) {
      const A* x = l == 0 ? encoder_input : encoder[l - 1].ffn_res.out;
      net.encoder_layer_backward(l, x, encoder[l], Ns, source_len, keys, ds, activation_grads);
      done(encoder_ranges[l]);
    }
    net.embed_backward(src, Ns, source_len, ds, layers::kEncoderStack, keys);
    done(embedding_range);
  }

  // Uploads the batch, lays out the arena for it (with room for the backward pass if asked), runs both stacks.
  layers::DropoutKeys forward(const Batch& batch, const DropoutContext& dc, bool backward) {
    upload(batch);
    layout(batch.B, batch.S, batch.T, backward);
    const layers::DropoutKeys keys{dc, pair};
    encode(keys);
    decode(keys);
    return keys;
  }

  k::CrossEntropyStats loss(float smoothing, bool grad, float grad_scale) {
    k::CrossEntropyArgs<A> c;
    c.logits = logits;
    c.dlogits = grad ? logits : nullptr;
    c.targets = tgt_out;
    c.N = B * target_len, c.V = V, c.ld = Vp;
    c.pad_id = spec.pad_id;
    c.smoothing = smoothing;
    c.grad_scale = grad_scale;
    return k::cross_entropy(dev, c);
  }

  k::CrossEntropyStats forward_backward(const Batch& batch, const DropoutContext& dc, float grad_scale,
                                        const typename Model<T>::GradsReady* ready) override {
    const layers::DropoutKeys keys = forward(batch, dc, /*backward=*/true);
    const auto stats = loss(static_cast<float>(spec.arch.label_smoothing), true, grad_scale);
    backward(keys, ready);
    return stats;
  }

  k::CrossEntropyStats forward_loss(const Batch& batch, float smoothing) override {
    forward(batch, DropoutContext{}, /*backward=*/false);
    return loss(smoothing, false, 1.0f);
  }

  // Log-softmax on the host (decoding and tests only), with the decoder's log-sum-exp.
  std::vector<T> forward_log_probs(const Batch& batch) override {
    forward(batch, DropoutContext{}, /*backward=*/false);
    const size_t rows = static_cast<size_t>(batch.B) * batch.T;
    std::vector<A> raw(rows * Vp);
    k::device_copy(Device::CPU, raw.data(), dev, logits, raw.size() * sizeof(A));
    std::vector<T> out(rows * V);
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
    std::vector<double> log_norm(rows);
    layers::log_sum_exp_rows(out.data(), static_cast<int>(rows), V, log_norm.data());
    for (size_t r = 0; r < rows; ++r) {
      T* row = out.data() + r * V;
      for (int j = 0; j < V; ++j) row[j] = static_cast<T>(row[j] - log_norm[r]);
    }
    return out;
  }
};

// The cores a Model<T> can run: float32 parameters with float32 or bf16 activations, or double throughout.
template <class T>
std::unique_ptr<typename Model<T>::Impl> make_core(Model<T>& m, const ModelSpec& s, Device d) {
  if constexpr (std::is_same_v<T, float>) {
    if (s.bf16) return std::make_unique<ModelStack<float, k::bf16>>(m, s, d);
  }
  return std::make_unique<ModelStack<T, T>>(m, s, d);
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
