#pragma once
// A micro-batch as the model consumes it, built on the host from corpus pairs.
//
// Sentences are laid out [B, S] (source) and [B, T] (target), padded at the end with pad_id. A corpus target
// y1..yn EOS becomes decoder input BOS y1..yn and decoder output y1..yn EOS (both length n + 1 = T for the
// longest). pair[b] is the sentence's corpus index: it keys the dropout masks.
#include <cstdint>
#include <vector>

namespace aiayn::data {
struct Pair;
}

namespace aiayn::trainer {

struct Batch {
  int B = 0, S = 0, T = 0;
  std::vector<int32_t> src;      // [B * S]
  std::vector<int32_t> tgt_in;   // [B * T]
  std::vector<int32_t> tgt_out;  // [B * T], pad beyond each sentence
  std::vector<int32_t> src_len;  // [B]
  std::vector<int32_t> tgt_len;  // [B]
  std::vector<int64_t> pair;     // [B]
  int64_t src_tokens = 0, tgt_tokens = 0;  // real tokens (non-pad)
};

Batch make_batch(const std::vector<data::Pair>& pairs, const std::vector<int64_t>& pair_index, int pad_id, int bos_id);

}  // namespace aiayn::trainer
