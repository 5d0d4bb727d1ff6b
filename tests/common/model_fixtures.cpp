#include "model_fixtures.hpp"

#include "data/corpus.hpp"
#include "kernels/dropout_hash.hpp"

namespace aiayn::testing {

trainer::ModelSpec tiny_spec(const TinyModel& t) {
  trainer::ModelSpec s;
  s.arch.layers = 2;
  s.arch.d_model = t.d_model;
  s.arch.heads = 4;
  s.arch.d_ff = t.d_ff;
  s.arch.dropout = t.dropout;
  s.arch.attention_dropout = t.inner_dropout;
  s.arch.relu_dropout = t.inner_dropout;
  s.arch.label_smoothing = 0.1;
  s.arch.pre_norm = t.pre_norm;
  s.vocab = t.vocab;
  return s;
}

trainer::Batch test_batch(int V, const std::vector<std::pair<int, int>>& lens, uint64_t seed, int64_t first_index,
                          int64_t index_step) {
  std::vector<data::Pair> pairs;
  std::vector<int64_t> index;
  uint64_t c = seed;
  for (size_t i = 0; i < lens.size(); ++i) {
    data::Pair p;
    for (int t = 0; t + 1 < lens[i].first; ++t) p.src.push_back(4 + static_cast<int>(kernels::mix64(++c) % (V - 4)));
    p.src.push_back(3);
    for (int t = 0; t + 1 < lens[i].second; ++t) p.tgt.push_back(4 + static_cast<int>(kernels::mix64(++c) % (V - 4)));
    p.tgt.push_back(3);
    pairs.push_back(p);
    index.push_back(first_index + index_step * static_cast<int64_t>(i));
  }
  return trainer::make_batch(pairs, index, 0, 2);
}

}  // namespace aiayn::testing
