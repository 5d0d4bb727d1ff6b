// The batch planner (see batch_planner.hpp for the contract). Randomness comes from a stateless hash
// (splitmix64 of seed, epoch and index), so the plan depends on nothing but its arguments.
#include "data/batch_planner.hpp"

#include <algorithm>
#include <utility>

#include <fmt/format.h>

#include "aiayn/error.hpp"
#include "kernels/dropout_hash.hpp"

namespace aiayn::data {
namespace {

// splitmix64, shared with the dropout masks and the initialisation.
using kernels::mix64;

uint64_t mix(uint64_t seed, uint64_t epoch, uint64_t stream) {
  return mix64(mix64(mix64(seed) ^ epoch) ^ (stream * 0xd6e8feb86659fd93ULL));
}

// Padded tokens per side of `count` pairs whose longest sentences are max_src and max_tgt.
bool fits(int64_t count, int64_t max_src, int64_t max_tgt, int64_t cap) {
  return count * max_src <= cap && count * max_tgt <= cap;
}

}  // namespace

BatchPlan BatchPlan::build(const std::vector<int32_t>& src_len, const std::vector<int32_t>& tgt_len, uint64_t seed,
                           int64_t epoch, int64_t batch_tokens) {
  AIAYN_CHECK(src_len.size() == tgt_len.size(),
              fmt::format("batch planner: {} source lengths but {} target lengths", src_len.size(), tgt_len.size()));
  AIAYN_CHECK(batch_tokens > 0, fmt::format("batch planner: batch_tokens must be positive (got {})", batch_tokens));
  AIAYN_CHECK(epoch >= 0, fmt::format("batch planner: epoch must be non-negative (got {})", epoch));
  const size_t n = src_len.size();

  // Sort key: target length, then source length (16 bits each, longer sentences share the top bucket), then a
  // per-epoch hash of the index; the index itself makes the order total.
  const uint64_t tie_seed = mix(seed, uint64_t(epoch), 1);
  std::vector<std::pair<uint64_t, int64_t>> keyed(n);
  for (size_t i = 0; i < n; ++i) {
    AIAYN_CHECK(src_len[i] > 0 && tgt_len[i] > 0,
                fmt::format("batch planner: pair {} has an empty side ({} / {} tokens)", i, src_len[i], tgt_len[i]));
    const uint64_t t = uint64_t(std::min<int32_t>(tgt_len[i], 0xffff));
    const uint64_t s = uint64_t(std::min<int32_t>(src_len[i], 0xffff));
    const uint64_t h = mix64(tie_seed ^ uint64_t(i)) >> 32;
    keyed[i] = {(t << 48) | (s << 32) | h, int64_t(i)};
  }
  std::sort(keyed.begin(), keyed.end());

  BatchPlan plan;
  GlobalBatch current;
  int64_t max_src = 0, max_tgt = 0;
  for (const auto& [key, i] : keyed) {
    const int64_t ls = src_len[size_t(i)], lt = tgt_len[size_t(i)];
    const int64_t new_src = std::max(max_src, ls), new_tgt = std::max(max_tgt, lt);
    if (!current.pairs.empty() && !fits(int64_t(current.pairs.size()) + 1, new_src, new_tgt, batch_tokens)) {
      plan.batches_.push_back(std::move(current));
      current = GlobalBatch();
      max_src = max_tgt = 0;
    }
    current.pairs.push_back(i);
    current.src_tokens += ls;
    current.tgt_tokens += lt;
    max_src = std::max(max_src, ls);
    max_tgt = std::max(max_tgt, lt);
  }
  if (!current.pairs.empty()) plan.batches_.push_back(std::move(current));

  // Fisher-Yates over the batches with a per-epoch stream.
  const uint64_t order_seed = mix(seed, uint64_t(epoch), 2);
  for (size_t k = plan.batches_.size(); k > 1; --k) {
    const size_t j = size_t(mix64(order_seed ^ uint64_t(k)) % k);
    std::swap(plan.batches_[k - 1], plan.batches_[j]);
  }
  return plan;
}

std::vector<std::vector<int64_t>> split_for_rank(const GlobalBatch& batch, const std::vector<int32_t>& src_len,
                                                 const std::vector<int32_t>& tgt_len, int rank, int world_size,
                                                 int64_t max_tokens_per_rank) {
  AIAYN_CHECK(world_size > 0 && rank >= 0 && rank < world_size,
              fmt::format("split_for_rank: rank {} outside world size {}", rank, world_size));
  AIAYN_CHECK(src_len.size() == tgt_len.size(), "split_for_rank: source and target length tables differ in size");
  const std::vector<int64_t>& pairs = batch.pairs;
  for (int64_t i : pairs)
    AIAYN_CHECK(i >= 0 && size_t(i) < src_len.size(),
                fmt::format("split_for_rank: pair index {} outside the corpus ({} pairs)", i, src_len.size()));

  // Contiguous shares balanced by cost (the longer side of each pair, a stand-in for its padded tokens since
  // the batch is length-sorted): rank r takes the pairs whose cumulative cost midpoint falls in its slice.
  const size_t n = pairs.size();
  std::vector<int64_t> cost(n);
  int64_t total = 0;
  for (size_t k = 0; k < n; ++k) {
    cost[k] = std::max(src_len[size_t(pairs[k])], tgt_len[size_t(pairs[k])]);
    total += cost[k];
  }
  // Boundary b(r) = the number of pairs whose cost midpoint lies below r/world of the total.
  auto boundary = [&](int r) {
    if (r <= 0) return size_t(0);
    if (r >= world_size) return n;
    size_t k = 0;
    int64_t before = 0;
    // Midpoint test in integers: 2*before + cost < 2*total*r/world  <=>  world*(2*before+cost) < 2*total*r
    while (k < n && int64_t(world_size) * (2 * before + cost[k]) < 2 * total * int64_t(r)) before += cost[k++];
    return k;
  };
  size_t begin = boundary(rank), end = boundary(rank + 1);
  // With fewer pairs than ranks (or very uneven costs) give every pair to exactly one rank and never leave a
  // rank empty while another holds more than one pair: fall back to one pair per rank in order.
  if (n <= size_t(world_size)) {
    begin = std::min(n, size_t(rank));
    end = std::min(n, size_t(rank) + 1);
  }

  std::vector<std::vector<int64_t>> micro;
  std::vector<int64_t> current;
  int64_t max_src = 0, max_tgt = 0;
  for (size_t k = begin; k < end; ++k) {
    const int64_t i = pairs[k];
    const int64_t ls = src_len[size_t(i)], lt = tgt_len[size_t(i)];
    const int64_t new_src = std::max(max_src, ls), new_tgt = std::max(max_tgt, lt);
    if (max_tokens_per_rank > 0 && !current.empty() &&
        !fits(int64_t(current.size()) + 1, new_src, new_tgt, max_tokens_per_rank)) {
      micro.push_back(std::move(current));
      current.clear();
      max_src = max_tgt = 0;
    }
    current.push_back(i);
    max_src = std::max(max_src, ls);
    max_tgt = std::max(max_tgt, lt);
  }
  if (!current.empty()) micro.push_back(std::move(current));
  return micro;
}

}  // namespace aiayn::data
