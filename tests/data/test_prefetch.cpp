// BatchPrefetcher: what take() returns is what read_pairs returns, prefetched or not; a mismatched key or list
// reads synchronously; a failed background read surfaces as the reader's error.
#include <gtest/gtest.h>

#include "aiayn/error.hpp"
#include "data/corpus_writer.hpp"
#include "data/prefetch.hpp"
#include "test_env.hpp"

using namespace aiayn::data;
using aiayn::testing::TempDir;

namespace {

std::string write_corpus(const TempDir& dir) {
  CorpusContent c;
  c.vocab_size = 40;
  c.tokenizer_sha256 = std::string(64, 'b');
  for (int i = 0; i < 200; ++i) {
    std::vector<int32_t> s(size_t(1 + i % 7), 4 + i % 30), t(size_t(2 + i % 5), 5 + i % 30);
    s.push_back(3);
    t.push_back(3);
    c.add_pair(s, t);
  }
  const std::string path = dir / "c.h5";
  write_corpus_file(path, c);
  return path;
}

void expect_same(const std::vector<std::vector<Pair>>& got, const CorpusReader& r, const BatchPrefetcher::Lists& lists) {
  ASSERT_EQ(got.size(), lists.size());
  for (size_t k = 0; k < lists.size(); ++k) {
    const auto want = r.read_pairs(lists[k]);
    ASSERT_EQ(got[k].size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(got[k][i].src, want[i].src);
      EXPECT_EQ(got[k][i].tgt, want[i].tgt);
    }
  }
}

}  // namespace

TEST(BatchPrefetcher, TakesWhatReadPairsReads) {
  TempDir dir;
  const CorpusReader r(write_corpus(dir));
  BatchPrefetcher p(r);
  const BatchPrefetcher::Lists a = {{5, 3, 190}, {7}}, b = {{0, 1, 2}, {199, 100}};
  p.start({0, 1}, a);
  expect_same(p.take({0, 1}, a), r, a);  // prefetched
  EXPECT_EQ(p.hits(), 1);
  p.start({0, 2}, b);
  expect_same(p.take({0, 3}, a), r, a);  // another batch was asked for: read now
  p.start({0, 4}, a);
  expect_same(p.take({0, 4}, b), r, b);  // same key, other lists: read now
  expect_same(p.take({0, 5}, a), r, a);  // nothing started
  EXPECT_EQ(p.hits(), 1);
}

TEST(BatchPrefetcher, BackgroundErrorsSurface) {
  TempDir dir;
  const CorpusReader r(write_corpus(dir));
  BatchPrefetcher p(r);
  p.start({0, 1}, {{3, 1000}});
  EXPECT_THROW(p.take({0, 1}, {{3, 1000}}), aiayn::Error);
  p.start({0, 2}, {{3, 1000}});
  EXPECT_THROW(p.wait(), aiayn::Error);
  expect_same(p.take({0, 2}, {{3, 4}}), r, {{3, 4}});
}
