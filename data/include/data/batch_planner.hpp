#pragma once
// The batch planner: a pure function of (corpus lengths, seed, epoch, batch_tokens).
//
// Sentences are sorted into length buckets (by target then source length, ties broken by a seeded hash of the
// index so the order within a bucket changes per epoch), packed greedily into global batches whose padded
// source tokens (pairs * max source length) and padded target tokens (pairs * max target length) both stay
// within batch_tokens, and the batch order is shuffled per epoch with a seeded permutation. Every pair appears
// exactly once per epoch (a single pair longer than batch_tokens gets a batch of its own).
//
// A global batch is split across ranks deterministically (contiguous, balanced by padded tokens) and a
// rank's share is cut into accumulation micro-batches of at most max_tokens_per_rank padded tokens per side.
// The set of pairs per optimizer step therefore does not depend on the number of ranks. The cursor
// (epoch, batch index) is all that resume needs.
#include <cstddef>
#include <cstdint>
#include <vector>

namespace aiayn::data {

struct GlobalBatch {
  std::vector<int64_t> pairs;   // corpus indices
  int64_t src_tokens = 0;       // real (unpadded) tokens, summed over pairs
  int64_t tgt_tokens = 0;
};

class BatchPlan {
 public:
  static BatchPlan build(const std::vector<int32_t>& src_len, const std::vector<int32_t>& tgt_len, uint64_t seed,
                         int64_t epoch, int64_t batch_tokens);
  size_t size() const { return batches_.size(); }
  const GlobalBatch& batch(size_t i) const { return batches_.at(i); }
  const std::vector<GlobalBatch>& batches() const { return batches_; }

 private:
  std::vector<GlobalBatch> batches_;
};

// This rank's micro-batches of one global batch (possibly none when the batch has fewer pairs than ranks).
std::vector<std::vector<int64_t>> split_for_rank(const GlobalBatch& batch, const std::vector<int32_t>& src_len,
                                                 const std::vector<int32_t>& tgt_len, int rank, int world_size,
                                                 int64_t max_tokens_per_rank);

}  // namespace aiayn::data
