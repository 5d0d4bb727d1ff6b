#pragma once
// Inference: an incremental decoder over a Model (encode once, cross-attention K/V once per sentence, cached
// self-attention K/V per layer, one token per hypothesis per step) and the paper's beam search on top of it.
//
// Invariants:
//  - The decoder runs the model's own layers (trainer/src/layers.hpp: same code, same kernels, same parameter
//    views), so its log-probabilities equal Model::forward_log_probs on the same prefix up to float rounding.
//  - Rows are hypotheses, grouped by sentence: rows [s * K, (s + 1) * K) belong to live sentence s, K = rows per
//    sentence (the beam). Cross-attention runs per sentence with Tq = K queries, so the encoder memory and its
//    K/V are stored once per sentence, never per hypothesis.
//  - Self-attention cache of layer l: [R, Tmax, 2D] (k in columns [0, D), v in [D, 2D)); step t writes row t of
//    every hypothesis directly from the projection GEMM (ldc = Tmax * 2D).
//  - reorder() rewrites the caches in place by parent row (beam reordering; only rows whose parent is another
//    row are copied) and drops finished sentences (compaction).
//
// Beam search (fairseq's rule): each step takes the 2K best (cumulative log-prob) extensions of a sentence's
// K hypotheses; an EOS among the first K of them finishes a hypothesis with score = log p(Y) / lp(|Y|),
// lp(n) = ((5 + n) / 6)^alpha, |Y| counting EOS; the first K non-EOS extensions are the next beam. A sentence
// stops when it has K finished hypotheses; at the maximum length (source length incl. EOS + max_len_b output
// tokens before EOS) only EOS is allowed. The answer is the finished hypothesis with the best score (the first
// finished on ties). Ties between extensions go to the lower (row, token id). K = 1 is greedy search.
#include <cstdint>
#include <memory>
#include <vector>

#include "trainer/model.hpp"

namespace aiayn::trainer {

struct BeamOptions {
  int beam = 4;
  double lenpen = 0.6;
  int max_len_b = 50;
};

// GNMT's length penalty ((5 + length) / 6)^alpha.
double length_penalty(int length, double alpha);

struct Hypothesis {
  std::vector<int32_t> tokens;  // without BOS and EOS
  double log_prob = 0;          // sum of log p over the tokens and the final EOS
  double score = 0;             // log_prob / length_penalty(tokens.size() + 1, alpha)
};

template <class T>
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(Model<T>& model);
  ~IncrementalDecoder();
  IncrementalDecoder(const IncrementalDecoder&) = delete;
  IncrementalDecoder& operator=(const IncrementalDecoder&) = delete;

  // Encodes the sources (each ending in EOS, no padding) and prepares `rows_per_sentence` hypotheses per
  // sentence, for at most `max_steps` decoder steps.
  void start(const std::vector<std::vector<int32_t>>& sources, int rows_per_sentence, int max_steps);
  // Feeds one token per row at the next position; returns the log-probabilities [rows, V] (host, double).
  const std::vector<double>& step(const std::vector<int32_t>& tokens);
  // The same step without materialising [rows, V] doubles (what the searches use): log p(v | row r) =
  // double(logits[r * V + v]) - log_norm[r], the value step() returns. Host pointers, valid until the next call.
  struct StepScores {
    const T* logits = nullptr;        // [rows, V]
    const double* log_norm = nullptr;  // [rows] log-sum-exp of the row
  };
  StepScores step_scores(const std::vector<int32_t>& tokens);
  // New row r continues old row parent[r]; parent.size() is a multiple of rows_per_sentence, and each block of
  // rows_per_sentence new rows comes from one old sentence's rows (blocks of finished sentences are dropped).
  void reorder(const std::vector<int>& parent);

  const ModelSpec& spec() const;
  int rows() const;
  int position() const;  // the number of steps taken
  // The encoder output [B, S, D] of the last start() (host copy, tests).
  std::vector<T> encoder_output() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Beam search over a batch of sources (each ending in EOS); one hypothesis per source, in order.
template <class T>
std::vector<Hypothesis> beam_search(IncrementalDecoder<T>& decoder, const std::vector<std::vector<int32_t>>& sources,
                                    const BeamOptions& options);

// Greedy argmax decoding (lowest id on ties), written separately from beam_search as its reference.
template <class T>
std::vector<Hypothesis> greedy_decode(IncrementalDecoder<T>& decoder, const std::vector<std::vector<int32_t>>& sources,
                                      int max_len_b, double lenpen);

}  // namespace aiayn::trainer
