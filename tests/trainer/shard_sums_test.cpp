// ShardSums (trainer/shard_sums.hpp): the pairwise tree of shard gradients, bit for bit, on the CPU. Values whose
// float sums depend on the order make a sum in any other order fail these tests.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "trainer/shard_sums.hpp"

namespace aiayn::trainer {
namespace {

using Vec = std::vector<float>;

// Shard i's gradient: pseudo-random floats of both signs with exponents spread over 2^-20 .. 2^20, so that float
// sums in different association orders differ in some of the elements.
Vec shard(int i, size_t n) {
  uint64_t x = 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(i + 1);
  Vec g(n);
  for (auto& v : g) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    const float mantissa = 1.0f + static_cast<float>((x >> 40) & 0xFFFF) / 65536.0f;
    v = std::ldexp(mantissa, static_cast<int>((x >> 20) % 41) - 20) * ((x >> 63) ? -1.0f : 1.0f);
  }
  return g;
}

Vec add(const Vec& a, const Vec& b) {
  Vec c(a.size());
  for (size_t j = 0; j < a.size(); ++j) c[j] = a[j] + b[j];
  return c;
}

Vec sum_by_shard_sums(ShardSums& sums, int first, int count, size_t n) {
  for (int i = first; i < first + count; ++i) {
    const Vec g = shard(i, n);
    sums.push(g.data());
  }
  Vec out(n, -1.0f);
  sums.finish(out.data());
  return out;
}

void expect_bitwise_equal(const Vec& a, const Vec& b) {
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

constexpr size_t kN = 64;

TEST(ShardSums, ShardsCombineAsABinaryTreeOfPartialSums) {
  ShardSums sums(kernels::Device::CPU, kN);
  std::vector<Vec> g;
  for (int i = 0; i < 7; ++i) g.push_back(shard(i, kN));
  expect_bitwise_equal(sum_by_shard_sums(sums, 0, 1, kN), g[0]);
  expect_bitwise_equal(sum_by_shard_sums(sums, 0, 2, kN), add(g[0], g[1]));
  expect_bitwise_equal(sum_by_shard_sums(sums, 0, 3, kN), add(add(g[0], g[1]), g[2]));
  expect_bitwise_equal(sum_by_shard_sums(sums, 0, 4, kN), add(add(g[0], g[1]), add(g[2], g[3])));
  // What is left after the last full subtree is folded right to left: L2 + ((g4 + g5) + g6).
  expect_bitwise_equal(sum_by_shard_sums(sums, 0, 7, kN),
                       add(add(add(g[0], g[1]), add(g[2], g[3])), add(add(g[4], g[5]), g[6])));
  // The test can tell orders apart: a running sum differs.
  Vec running = g[0];
  for (int i = 1; i < 4; ++i) running = add(running, g[i]);
  EXPECT_NE(std::memcmp(running.data(), sum_by_shard_sums(sums, 0, 4, kN).data(), kN * sizeof(float)), 0);
}

TEST(ShardSums, OneRankEqualsTwoRanksWhoseSumsTheAllReduceAdds) {
  // 4 shards: one rank sums all four; two ranks sum two each and the all-reduce adds rank 0's + rank 1's.
  ShardSums one(kernels::Device::CPU, kN), rank0(kernels::Device::CPU, kN), rank1(kernels::Device::CPU, kN);
  const Vec all = sum_by_shard_sums(one, 0, 4, kN);
  expect_bitwise_equal(all, add(sum_by_shard_sums(rank0, 0, 2, kN), sum_by_shard_sums(rank1, 2, 2, kN)));
  // 8 shards, 2 per rank over 4 ranks: one rank's total is ((r0 + r1) + (r2 + r3)) of the ranks' sums, so 4
  // ranks agree with 1 where the all-reduce adds the ranks' sums in that tree.
  const Vec eight = sum_by_shard_sums(one, 0, 8, kN);
  std::vector<Vec> r;
  for (int k = 0; k < 4; ++k) r.push_back(sum_by_shard_sums(rank0, 2 * k, 2, kN));
  expect_bitwise_equal(eight, add(add(r[0], r[1]), add(r[2], r[3])));
}

TEST(ShardSums, FinishWithNothingPushedLeavesTheGradientAndBuffersAreReused) {
  ShardSums sums(kernels::Device::CPU, kN);
  Vec out(kN, 3.0f);
  sums.finish(out.data());
  EXPECT_EQ(out, Vec(kN, 3.0f));
  // A second step after a finished one starts afresh.
  const Vec first = sum_by_shard_sums(sums, 0, 3, kN);
  expect_bitwise_equal(sum_by_shard_sums(sums, 0, 3, kN), first);
  expect_bitwise_equal(sum_by_shard_sums(sums, 3, 1, kN), shard(3, kN));
}

}  // namespace
}  // namespace aiayn::trainer
