#pragma once
// Tiny models and batches for the model-level tests (tests/trainer, tests/decode, tests/cuda).
#include <cstdint>
#include <utility>
#include <vector>

#include "trainer/batch.hpp"
#include "trainer/model.hpp"

namespace aiayn::testing {

// The tiny Transformer of the model-level tests: 2 encoder + 2 decoder layers, 4 heads, label smoothing 0.1.
struct TinyModel {
  int d_model = 32, d_ff = 64, vocab = 50;
  bool pre_norm = false;
  double dropout = 0.1;        // residual (and embedding) dropout
  double inner_dropout = 0.1;  // attention and ReLU dropout
};
trainer::ModelSpec tiny_spec(const TinyModel& t);

// One batch of pairs with the given (source, target) lengths: ids in [4, V) from a counter-based hash started
// at `seed`, each sentence ending in EOS (3); pair i has corpus index first_index + index_step * i (the
// dropout masks hash it); pad 0, BOS 2.
trainer::Batch test_batch(int V, const std::vector<std::pair<int, int>>& lens, uint64_t seed, int64_t first_index,
                          int64_t index_step);

}  // namespace aiayn::testing
