// The batch planner: every pair once per epoch, token caps respected, deterministic, epoch-dependent order,
// and the same pairs per optimizer step for any number of ranks.
#include <algorithm>
#include <set>

#include <gtest/gtest.h>

#include "aiayn/error.hpp"
#include "kernels/dropout_hash.hpp"
#include "data/batch_planner.hpp"
#include "kernels/dropout_hash.hpp"

using namespace aiayn::data;

namespace {

// splitmix64, shared with the dropout masks and the initialisation.
using aiayn::kernels::mix64;

struct Lengths {
  std::vector<int32_t> src, tgt;
};

// Lengths 1..120 with a few long outliers (300, beyond a small batch_tokens).
Lengths make_lengths(size_t n) {
  Lengths l;
  for (size_t i = 0; i < n; ++i) {
    const uint64_t h = mix64(i);
    int32_t s = int32_t(1 + h % 60 + (h >> 20) % 60);
    int32_t t = int32_t(std::max<int64_t>(1, s + int64_t((h >> 40) % 21) - 10));
    if (i % 997 == 0) s = t = 300;
    l.src.push_back(s);
    l.tgt.push_back(t);
  }
  return l;
}

int64_t padded(const std::vector<int64_t>& pairs, const std::vector<int32_t>& len) {
  int32_t m = 0;
  for (int64_t i : pairs) m = std::max(m, len[size_t(i)]);
  return int64_t(pairs.size()) * m;
}

}  // namespace

TEST(BatchPlanner, EveryPairOncePerEpochWithinCaps) {
  const Lengths l = make_lengths(5000);
  const int64_t cap = 1000;
  for (int64_t epoch : {0, 1, 5}) {
    const BatchPlan plan = BatchPlan::build(l.src, l.tgt, 42, epoch, cap);
    std::vector<int> seen(l.src.size(), 0);
    for (const GlobalBatch& b : plan.batches()) {
      ASSERT_FALSE(b.pairs.empty());
      int64_t s = 0, t = 0;
      for (int64_t i : b.pairs) {
        ++seen[size_t(i)];
        s += l.src[size_t(i)];
        t += l.tgt[size_t(i)];
      }
      EXPECT_EQ(s, b.src_tokens);
      EXPECT_EQ(t, b.tgt_tokens);
      if (b.pairs.size() > 1) {
        EXPECT_LE(padded(b.pairs, l.src), cap);
        EXPECT_LE(padded(b.pairs, l.tgt), cap);
      }
    }
    for (size_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i], 1) << "pair " << i << " epoch " << epoch;
  }
}

TEST(BatchPlanner, DeterministicAndEpochDependent) {
  const Lengths l = make_lengths(3000);
  const BatchPlan a = BatchPlan::build(l.src, l.tgt, 7, 3, 2000);
  const BatchPlan b = BatchPlan::build(l.src, l.tgt, 7, 3, 2000);
  const BatchPlan c = BatchPlan::build(l.src, l.tgt, 7, 4, 2000);
  const BatchPlan d = BatchPlan::build(l.src, l.tgt, 8, 3, 2000);
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) EXPECT_EQ(a.batch(k).pairs, b.batch(k).pairs);
  auto order = [](const BatchPlan& p) {
    std::vector<int64_t> o;
    for (const auto& g : p.batches()) o.insert(o.end(), g.pairs.begin(), g.pairs.end());
    return o;
  };
  EXPECT_NE(order(a), order(c));
  EXPECT_NE(order(a), order(d));
}

TEST(BatchPlanner, SameUnionForAnyWorldSize) {
  const Lengths l = make_lengths(4000);
  const int64_t cap = 3000, per_rank = 700;
  const BatchPlan plan = BatchPlan::build(l.src, l.tgt, 1, 0, cap);
  for (size_t k = 0; k < plan.size(); ++k) {
    const GlobalBatch& g = plan.batch(k);
    std::multiset<int64_t> expected(g.pairs.begin(), g.pairs.end());
    for (int world : {1, 2, 3, 4}) {
      std::multiset<int64_t> got;
      for (int rank = 0; rank < world; ++rank) {
        const auto micro = split_for_rank(g, l.src, l.tgt, rank, world, per_rank);
        const auto again = split_for_rank(g, l.src, l.tgt, rank, world, per_rank);
        EXPECT_EQ(micro, again);
        for (const auto& m : micro) {
          ASSERT_FALSE(m.empty());
          if (m.size() > 1) {
            EXPECT_LE(padded(m, l.src), per_rank);
            EXPECT_LE(padded(m, l.tgt), per_rank);
          }
          got.insert(m.begin(), m.end());
        }
      }
      ASSERT_EQ(got, expected) << "batch " << k << " world " << world;
    }
  }
}

TEST(BatchPlanner, SmallBatchesAndErrors) {
  const std::vector<int32_t> s = {5, 3}, t = {4, 6};
  const BatchPlan plan = BatchPlan::build(s, t, 0, 0, 100);
  ASSERT_EQ(plan.size(), 1u);
  // Two pairs over four ranks: ranks 0 and 1 get one pair each, 2 and 3 nothing.
  size_t total = 0;
  for (int r = 0; r < 4; ++r) {
    const auto m = split_for_rank(plan.batch(0), s, t, r, 4, 0);
    if (r >= 2) {
      EXPECT_TRUE(m.empty());
    }
    for (const auto& x : m) total += x.size();
  }
  EXPECT_EQ(total, 2u);
  EXPECT_THROW(BatchPlan::build(s, {1}, 0, 0, 100), aiayn::Error);
  EXPECT_THROW(BatchPlan::build(s, t, 0, 0, 0), aiayn::Error);
  EXPECT_THROW(BatchPlan::build({0, 1}, t, 0, 0, 10), aiayn::Error);
  EXPECT_THROW(split_for_rank(plan.batch(0), s, t, 4, 4, 0), aiayn::Error);
  EXPECT_EQ(BatchPlan::build({}, {}, 0, 0, 10).size(), 0u);
}
