#pragma once
// The paper's encoder-decoder Transformer: straight-line forward and backward, no autograd engine.
//
// Post-norm sub-layers y = LayerNorm(x + Dropout(F(x))) by default, pre-norm y = x + Dropout(F(LayerNorm(x)))
// (with a final LayerNorm on each stack) as an option. Sinusoidal positions; one embedding matrix shared by
// encoder input, decoder input and the pre-softmax projection, scaled by sqrt(D) on input. Dropout on the
// embedding sums and every sub-layer output (attention and ReLU dropout optional), masks from the stateless
// hash keyed by (seed, step, pair, position, site, channel).
//
// Parameters, gradients: flat buffers laid out by the ParamTable (params.hpp). Activations: one arena per
// model, grown to the largest micro-batch seen and reused. Gradients accumulate (+=) across micro-batches
// until zero_grads(). Dimension letters: B sentences, S source length, T target length, D model width,
// H heads, Dh = D / H, F feed-forward width, V vocabulary, L layers.
#include <cstdint>
#include <functional>
#include <memory>

#include "kernels/bf16.hpp"
#include "kernels/device.hpp"
#include "kernels/memory.hpp"
#include "kernels/ops/cross_entropy.hpp"
#include "trainer/batch.hpp"
#include "trainer/config.hpp"
#include "trainer/params.hpp"

namespace aiayn::trainer {

// The epsilon of every LayerNorm of the network (training, decoding, and what `aiayn export` declares).
inline constexpr float kLayerNormEpsilon = 1e-5f;

struct ModelSpec {
  ModelSection arch;
  int vocab = 0;
  int pad_id = 0, bos_id = 2, eos_id = 3;
  bool bf16 = false;  // CUDA mixed precision: bf16 activations and weight copy, float32 master weights
  // The logits rows [V] lie vocab_align-aligned in the activation arena (row stride V rounded up), so that the
  // output projection's matrix products keep 16-byte-aligned leading dimensions whatever V is (SentencePiece
  // can give 37,001: an odd stride pushes cuBLASLt off its tensor-core kernels). Layout only: the parameters,
  // the checkpoints and every result are those of V; the padding columns are never written nor read.
  int vocab_align = 16;
};

// What keys the dropout masks of one optimizer step; `train = false` turns all dropout off.
struct DropoutContext {
  bool train = false;
  uint64_t seed = 0;
  uint64_t step = 0;
};

template <class T>
class Model {
 public:
  Model(const ModelSpec& spec, kernels::Device device);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelSpec& spec() const { return spec_; }
  const ParamTable& table() const { return table_; }
  kernels::Device device() const { return device_; }
  size_t num_params() const { return table_.total(); }
  T* params() { return params_.data(); }
  T* grads() { return grads_.data(); }
  const T* params() const { return params_.data(); }
  // bf16 precision: the copy of the weights the matrix products read (null otherwise). Adam refreshes it in
  // its own pass (AdamArgs::param_bf16); whoever else writes params() calls params_changed().
  kernels::bf16* params_bf16() { return params_bf16_.size() ? params_bf16_.data() : nullptr; }

  void initialize(uint64_t seed);  // deterministic, identical on every rank
  void params_changed();           // params() were written from outside (a checkpoint): refresh the bf16 copy
  void zero_grads();

  // Called during the backward pass with ranges [begin, end) of the flat gradient buffer (elements) as soon as
  // the pass has enqueued its last contribution to them (a layer, a final norm, the embedding last); one call
  // covers the buffer exactly once. The gradient all-reduce starts bucket by bucket from here.
  using GradsReady = std::function<void(size_t begin, size_t end)>;

  // Forward, label-smoothed loss and backward over one micro-batch. dlogits are scaled by grad_scale
  // (1 / non-pad target tokens of the whole global batch), so parameter gradients accumulate to the gradient
  // of the global mean loss.
  kernels::CrossEntropyStats forward_backward(const Batch& batch, const DropoutContext& dropout, float grad_scale,
                                              const GradsReady* ready = nullptr);

  // Forward only (no dropout, no gradients); the loss uses `smoothing` (0 for evaluation).
  kernels::CrossEntropyStats forward_loss(const Batch& batch, float smoothing);

  // Forward only: the log-probabilities [B * T, V] of the decoder outputs (host copy), for tests and decoding.
  std::vector<T> forward_log_probs(const Batch& batch);

  struct Impl;  // the layer stack (model.cpp, over layers.hpp's layers), one instantiation per activation type

 private:
  ModelSpec spec_;
  kernels::Device device_;
  ParamTable table_;
  kernels::DeviceArray<T> params_, grads_;
  kernels::DeviceArray<kernels::bf16> params_bf16_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace aiayn::trainer
