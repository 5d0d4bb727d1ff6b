#pragma once
// One definition of the Transformer's layers, serving training (Model's forward and backward, model.cpp),
// teacher-forced evaluation (the same forward without dropout) and incremental decoding (decoder.cpp): the
// parameter offsets of the whole network, the building blocks, and the sub-layer sequences of an encoder layer
// and a decoder layer, forward and backward. model.cpp and decoder.cpp lay out tensors and loop over layers;
// neither holds a layer of its own.
//
// Invariants:
//  - T is the parameters' and gradients' type (float; double in tests), A the activations' type: A = T, or bf16
//    in CUDA mixed precision, where the matrix products read the bf16 copy of the weights and everything else
//    the float32 parameters. The decoder runs with A = T.
//  - The paths differ only in where tensors lie, and the caller says where: the *Tensors structs point at
//    tensors saved per layer for the backward pass (training) or at scratch that every layer reuses (decoding),
//    and AttentionTensors says where q, k and v come from and go to.
//  - Every parameter gradient is accumulated (+=); activation gradients are overwritten unless said otherwise.
//  - Dimension letters as everywhere (B sentences, S source length, T target length, D model width, H heads,
//    Dh = D / H, F feed-forward width, V vocabulary, L layers); N is the number of rows of one call: B*S in the
//    encoder, B*T in the training decoder, R hypotheses in a decoding step.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/dropout_hash.hpp"
#include "kernels/ops.hpp"
#include "trainer/model.hpp"
#include "trainer/params.hpp"

namespace aiayn::trainer::layers {

namespace k = aiayn::kernels;

// ---- parameter offsets (the same offsets index params, grads and the bf16 weight copy) ----
inline constexpr size_t kNoBias = ~size_t{0};

struct NormOffsets {
  size_t weight = 0, bias = 0;  // [D], [D]
};
struct FeedForwardOffsets {
  size_t fc1_weight = 0, fc1_bias = 0;  // [F, D], [F]
  size_t fc2_weight = 0, fc2_bias = 0;  // [D, F], [D]
};
// q_weight [D, D]; kv_weight [2D, D] (k then v, adjacent); out [D, D] with a bias. No q, k, v biases.
// Self-attention: kv_weight = q_weight + D*D, so q|k|v is one [3D, D] matrix (one GEMM in training).
struct AttentionOffsets {
  size_t q_weight = 0, kv_weight = 0, out_weight = 0, out_bias = 0;
};
struct EncoderLayerOffsets {
  AttentionOffsets self_attn;
  NormOffsets self_attn_norm;
  FeedForwardOffsets ffn;
  NormOffsets ffn_norm;
};
struct DecoderLayerOffsets {
  AttentionOffsets self_attn;
  NormOffsets self_attn_norm;
  AttentionOffsets cross_attn;
  NormOffsets cross_attn_norm;
  FeedForwardOffsets ffn;
  NormOffsets ffn_norm;
};
struct NetworkOffsets {
  size_t embedding = 0;                                // [V, D], shared by both inputs and the output projection
  std::vector<EncoderLayerOffsets> encoder;            // [L]
  std::vector<DecoderLayerOffsets> decoder;            // [L]
  NormOffsets encoder_final_norm, decoder_final_norm;  // pre-norm only
  // Checks what the fused projections rely on (q|k|v and cross k|v adjacent, no q/k/v biases); throws
  // aiayn::Error naming the parameters otherwise.
  static NetworkOffsets from_table(const ParamTable& table, const ModelSection& arch);
};

// ---- where the tensors of one layer lie ----

// One residual sub-layer around a function F (attention or feed-forward), over N rows:
//  post-norm: norm_io = x + Dropout(F(x)), the LayerNorm's input;  out = LayerNorm(norm_io)
//  pre-norm:  norm_io = LayerNorm(x), F's input;                   out = x + Dropout(F(norm_io))
template <class A, class T>
struct ResidualTensors {
  A* norm_io = nullptr;  // [N, D]
  T* mean = nullptr;     // [N] LayerNorm statistics (float32 in mixed precision)
  T* rstd = nullptr;     // [N]
  A* out = nullptr;      // [N, D] the sub-layer's output: the next sub-layer's input
};

// How an attention sub-layer projects its input.
enum class Projection {
  QkvTogether,  // one GEMM writes q|k|v [N, 3D] at q; keys = q + D
  QThenKv,      // q [N, D] at q, then this call's k|v [N, 2D] at new_kv with row stride kv_ld
  QOnly,        // q [N, D] at q; k|v lie ready at keys (project_cross_kv wrote them)
};

// Where one attention sub-layer's q, k and v come from and go to: the one place the paths really differ.
//  training, self-attention:  q|k|v one [B*T, 3D] block (QkvTogether), saved for the backward pass; the encoder
//                             (training and decoding) likewise over [B*S, 3D];
//  decoding, self-attention:  q [R, D] scratch; step t's k|v go into row t of each hypothesis' cache
//                             [R, Tmax, 2D] (QThenKv, new_kv = cache + t*2D, kv_ld = Tmax*2D); the keys are the
//                             whole cache, t + 1 of them per hypothesis;
//  cross-attention:           q [N, D]; k|v [B, S, 2D] of the encoder output (QOnly), projected by
//                             project_cross_kv once per batch (training) or once per sentence (decoding, where
//                             the K hypotheses of a sentence are one batch entry of K queries).
template <class A>
struct AttentionTensors {
  Projection projection = Projection::QkvTogether;
  A* q = nullptr;         // queries: element (b, t) at q + b * shape.q_bstride + t * shape.q_stride
  A* new_kv = nullptr;    // QThenKv only: this call's k|v [N, 2D], row stride kv_ld
  long kv_ld = 0;
  A* keys = nullptr;      // k at keys, v at keys + D (strides shape.kv_bstride, shape.kv_stride)
  A* ctx = nullptr;       // [N, D] the heads' outputs side by side (strides shape.o_bstride, shape.o_stride)
  void* saved = nullptr;  // what the attention op keeps for its backward (attention_saved_bytes); null: nothing
  // The geometry: batch entries, query and key lengths, strides, key lengths, causal. The scale and the
  // attention dropout are filled in by the layer.
  k::AttentionShape<A> shape;
};

template <class A>
struct FeedForwardTensors {
  A* hidden = nullptr;          // [N, F] ReLU(x W1^T + b1)
  A* hidden_dropped = nullptr;  // [N, F] ReLU dropout of hidden; the same pointer when no copy is kept
};

template <class A, class T>
struct EncoderLayerTensors {
  AttentionTensors<A> self_attn;
  ResidualTensors<A, T> self_attn_res;
  FeedForwardTensors<A> ffn;
  ResidualTensors<A, T> ffn_res;  // ffn_res.out: the layer's output [N, D]
  A* f_out = nullptr;             // [N, D] scratch: a sub-layer function's output before the residual
};

template <class A, class T>
struct DecoderLayerTensors {
  AttentionTensors<A> self_attn;
  ResidualTensors<A, T> self_attn_res;
  AttentionTensors<A> cross_attn;
  ResidualTensors<A, T> cross_attn_res;
  FeedForwardTensors<A> ffn;
  ResidualTensors<A, T> ffn_res;  // ffn_res.out: the layer's output [N, D]
  A* f_out = nullptr;             // [N, D] scratch: a sub-layer function's output before the residual
};

// The activation gradients of the backward pass: scratch, overwritten sub-layer by sub-layer, except d_memory.
template <class A>
struct GradientScratch {
  A* d_f = nullptr;         // [N, D] w.r.t. a sub-layer function's output
  A* d_fn_in = nullptr;     // [N, D] w.r.t. that function's input
  A* d_hidden = nullptr;    // [N, F] w.r.t. the feed-forward's hidden layer
  A* d_ctx = nullptr;       // [N, D] w.r.t. an attention's output
  A* d_qkv = nullptr;       // [N, 3D] w.r.t. q|k|v (cross-attention: q only, [N, D])
  A* d_cross_kv = nullptr;  // [B*S, 2D] w.r.t. the cross-attention's k|v
  A* d_memory = nullptr;    // [B*S, D] w.r.t. the encoder output, accumulated (+=) over the decoder layers
};

// What keys the dropout masks of one pass. DropoutContext{} (train = false) turns every dropout off, as in
// evaluation and decoding.
struct DropoutKeys {
  DropoutContext context;
  const int64_t* pair = nullptr;  // [B] the pairs' indices in the corpus (device)
};

inline constexpr uint32_t kEncoderStack = 0, kDecoderStack = 1;

// The building blocks and the layers, for the parameters of one Model<T> and activations of type A.
template <class T, class A>
struct TransformerLayers {
  TransformerLayers(Model<T>& model);

  Model<T>& model;
  const ModelSpec& spec;
  const k::Device dev;
  const int D, H, Dh, F, V, L;
  const bool pre_norm;
  const NetworkOffsets offsets;

  T* param(size_t offset) { return model.params() + offset; }
  T* grad(size_t offset) { return model.grads() + offset; }
  // The weights a matrix product reads: the parameters themselves, or their bf16 copy.
  const A* matmul_weight(size_t offset);

  // ---- building blocks ----
  // y[N, out] (row stride ldc, default out) = x[N, in] @ W[out, in]^T + b   (bias == kNoBias: no bias)
  void linear(const A* x, int N, int in, size_t weight, size_t bias, int out, A* y, int ldc = 0, bool relu = false);
  // dx (= or +=) dy @ W;  dW += dy^T @ x;  db += colsum(dy). dx may be null.
  void linear_backward(const A* dy, const A* x, int N, int in, int out, size_t weight, size_t bias, A* dx,
                       bool accumulate);
  void copy(A* dst, const A* from, size_t n);
  void add(const A* a, const A* b, A* y, size_t n);
  void norm_forward(const A* x, const NormOffsets& n, A* y, T* mean, T* rstd, int rows);
  // dy_dx: the gradient w.r.t. y in, w.r.t. x out (in place).
  void norm_backward(A* dy_dx, const A* x, const NormOffsets& n, const T* mean, const T* rstd, int rows);

  // Dropout over rows laid out [B, seq_len]; p = 0 when not training.
  k::DropoutMask mask(int seq_len, uint32_t site, float p, const DropoutKeys& keys) const;
  void dropout_forward(A* x, int rows, int cols, int seq_len, uint32_t site, float p, const DropoutKeys& keys);
  void dropout_backward(A* dx, int rows, int cols, int seq_len, uint32_t site, float p, const DropoutKeys& keys);
  float residual_dropout() const { return static_cast<float>(spec.arch.dropout); }
  float relu_dropout() const { return static_cast<float>(spec.arch.relu_dropout); }
  static uint32_t site(uint32_t stack, int layer, k::DropoutKind kind) {
    return k::dropout_site(stack, static_cast<uint32_t>(layer), kind);
  }

  // Residual sub-layer, before F: the input F sees (pre-norm normalises x into r.norm_io first).
  const A* residual_in(const A* x, ResidualTensors<A, T>& r, const NormOffsets& n, int rows);
  // After F, whose output f is dropped in place (pre-norm); post-norm is one fused op.
  void residual_out(const A* x, A* f, ResidualTensors<A, T>& r, const NormOffsets& n, int rows, int seq_len,
                    uint32_t drop_site, const DropoutKeys& keys);
  // Backward of residual_out: d_out (w.r.t. r.out) becomes, in place, the residual part of the gradient w.r.t.
  // x; df receives the gradient w.r.t. F's output.
  void residual_out_backward(A* d_out, A* df, ResidualTensors<A, T>& r, const NormOffsets& n, int rows, int seq_len,
                             uint32_t drop_site, const DropoutKeys& keys);
  // Backward of residual_in: d_fn_in (w.r.t. F's input, clobbered) is added into d_x.
  void residual_in_backward(const A* x, A* d_fn_in, A* d_x, ResidualTensors<A, T>& r, const NormOffsets& n, int rows);
  // The input F saw in the forward pass, recovered from what was kept.
  const A* function_input(const A* x, const ResidualTensors<A, T>& r) const { return pre_norm ? r.norm_io : x; }

  // fn_in [N, D] -> out [N, D] through F = fc2(Dropout(ReLU(fc1(fn_in)))).
  void feed_forward(const A* fn_in, int rows, int seq_len, const FeedForwardOffsets& p, FeedForwardTensors<A>& t,
                    A* out, uint32_t relu_site, const DropoutKeys& keys);
  // dout [N, D] -> d_fn_in [N, D]; uses g.d_hidden.
  void feed_forward_backward(const A* fn_in, int rows, int seq_len, const FeedForwardOffsets& p,
                             const FeedForwardTensors<A>& t, const A* dout, A* d_fn_in, GradientScratch<A>& g,
                             uint32_t relu_site, const DropoutKeys& keys);

  // Self-attention over q|k|v [B*len, 3D] (QkvTogether) of `entries` sentences of `len` rows, output ctx
  // [B*len, D]; lens [B]: valid keys per sentence. Nothing saved (set .saved to keep what the op saves).
  AttentionTensors<A> self_attention_tensors(A* qkv, A* ctx, int entries, int len, const int32_t* lens,
                                             bool causal) const;
  // Cross-attention (QOnly) of `entries` batch entries, each `queries` rows of q [entries*queries, D] against
  // key_len rows of k|v [entries*key_len, 2D]; output ctx [entries*queries, D]; lens [entries]: valid keys.
  AttentionTensors<A> cross_attention_tensors(A* q, A* kv, A* ctx, int entries, int queries, int key_len,
                                              const int32_t* lens) const;
  // The attention op's full shape: the caller's geometry plus the scale and this site's dropout.
  k::AttentionShape<A> attention_shape(const AttentionTensors<A>& t, uint32_t probs_site,
                                       const DropoutKeys& keys) const;
  // fn_in [N, D] -> out [N, D]: the projection (as t.projection says), attention, the output projection.
  void attention(const A* fn_in, int rows, const AttentionOffsets& p, AttentionTensors<A>& t, A* out,
                 uint32_t probs_site, const DropoutKeys& keys);
  // dout [N, D] -> d_fn_in [N, D]. QOnly (cross-attention): also d_memory += the k|v projection's input
  // gradient, memory [memory_rows, D] being what project_cross_kv read.
  void attention_backward(const A* fn_in, int rows, const AttentionOffsets& p, const AttentionTensors<A>& t,
                          const A* dout, A* d_fn_in, GradientScratch<A>& g, uint32_t probs_site,
                          const DropoutKeys& keys, const A* memory = nullptr, int memory_rows = 0);
  // kv [rows, 2D] = memory [rows, D] @ Wkv^T: decoder layer `layer`'s cross-attention keys and values.
  void project_cross_kv(int layer, const A* memory, int rows, A* kv);

  // out [rows, D] = Dropout(sqrt(D) * E[ids] + positional encoding); positions null: row r of a sentence is
  // position r % seq_len, else positions[r] (decoding, seq_len = 1).
  void embed(const int32_t* ids, const int32_t* positions, int rows, int seq_len, A* out, uint32_t stack,
             const DropoutKeys& keys);
  void embed_backward(const int32_t* ids, int rows, int seq_len, const A* dout, uint32_t stack,
                      const DropoutKeys& keys);
  // logits [rows, V] (row stride ld) = out [rows, D] @ E^T (the shared embedding, no bias).
  void output_logits(const A* out, int rows, A* logits, int ld);

  // ---- the layers: x [N, D] -> t.ffn_res.out [N, D]; seq_len: the dropout masks' rows per sentence ----
  void encoder_layer(int layer, const A* x, EncoderLayerTensors<A, T>& t, int rows, int seq_len,
                     const DropoutKeys& keys);
  // d_stream: w.r.t. the layer's output in, w.r.t. x out (in place).
  void encoder_layer_backward(int layer, const A* x, EncoderLayerTensors<A, T>& t, int rows, int seq_len,
                              const DropoutKeys& keys, A* d_stream, GradientScratch<A>& g);
  // The cross-attention's k|v (t.cross_attn.keys) come from project_cross_kv beforehand.
  void decoder_layer(int layer, const A* x, DecoderLayerTensors<A, T>& t, int rows, int seq_len,
                     const DropoutKeys& keys);
  // memory [memory_rows, D]: the encoder output; g.d_memory accumulates its gradient.
  void decoder_layer_backward(int layer, const A* x, DecoderLayerTensors<A, T>& t, int rows, int seq_len,
                              const A* memory, int memory_rows, const DropoutKeys& keys, A* d_stream,
                              GradientScratch<A>& g);
};

// ---- log-softmax on the host ----
// log sum_j exp(x[j]) in double for one row x[n] (vectorised exponentials, a few ulp from libm's; the sum in a
// fixed order for a given build).
template <class T>
double log_sum_exp(const T* x, int n);
// log_norm[r] = log_sum_exp(x + r * n, n) for rows r in [0, rows), the rows in parallel.
template <class T>
void log_sum_exp_rows(const T* x, int rows, int n, double* log_norm);

}  // namespace aiayn::trainer::layers
