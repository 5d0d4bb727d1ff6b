#include "trainer/batch.hpp"

#include <algorithm>

#include "aiayn/error.hpp"
#include "data/corpus.hpp"

namespace aiayn::trainer {

Batch make_batch(const std::vector<data::Pair>& pairs, const std::vector<int64_t>& pair_index, int pad_id, int bos_id) {
  AIAYN_CHECK(pairs.size() == pair_index.size(), "make_batch: pairs and indices differ in number");
  Batch b;
  b.B = static_cast<int>(pairs.size());
  for (const auto& p : pairs) {
    AIAYN_CHECK(!p.src.empty() && !p.tgt.empty(), "make_batch: empty sentence (a corpus sentence ends in EOS)");
    b.S = std::max(b.S, static_cast<int>(p.src.size()));
    b.T = std::max(b.T, static_cast<int>(p.tgt.size()));
  }
  b.src.assign(static_cast<size_t>(b.B) * b.S, pad_id);
  b.tgt_in.assign(static_cast<size_t>(b.B) * b.T, pad_id);
  b.tgt_out.assign(static_cast<size_t>(b.B) * b.T, pad_id);
  b.pair = pair_index;
  for (int i = 0; i < b.B; ++i) {
    const auto& p = pairs[i];
    std::copy(p.src.begin(), p.src.end(), b.src.begin() + static_cast<size_t>(i) * b.S);
    int32_t* in = b.tgt_in.data() + static_cast<size_t>(i) * b.T;
    int32_t* out = b.tgt_out.data() + static_cast<size_t>(i) * b.T;
    in[0] = bos_id;
    for (size_t t = 0; t + 1 < p.tgt.size(); ++t) in[t + 1] = p.tgt[t];
    std::copy(p.tgt.begin(), p.tgt.end(), out);
    b.src_len.push_back(static_cast<int32_t>(p.src.size()));
    b.tgt_len.push_back(static_cast<int32_t>(p.tgt.size()));
    b.src_tokens += static_cast<int64_t>(p.src.size());
    b.tgt_tokens += static_cast<int64_t>(p.tgt.size());
  }
  return b;
}

}  // namespace aiayn::trainer
