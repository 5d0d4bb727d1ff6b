// Corpus BLEU against sacreBLEU 2.6.0's own numbers on the shared fixtures, plus the edge cases the
// fixtures do not reach (sharded statistics, errors, empty corpus pieces).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "aiayn/error.hpp"
#include "bleu_fixtures.hpp"
#include "trainer/bleu.hpp"

namespace {

using aiayn::trainer::BleuResult;
using aiayn::trainer::BleuStats;
using aiayn::trainer::corpus_bleu;
using aiayn::trainer::split_lines;
using namespace aiayn::testing;

TEST(Bleu, MatchesSacrebleuOnEveryFixture) {
  if (!bleu_fixtures_present()) AIAYN_SKIP_OR_FAIL("no BLEU fixtures at " + bleu_fixture_dir() + " (set AIAYN_SHARED_DIR)");
  const nlohmann::json expected = bleu_expected();
  ASSERT_FALSE(expected.empty());
  for (const auto& [name, e] : expected.items()) {
    const std::string base = bleu_fixture_dir() + "/" + name;
    ASSERT_TRUE(std::filesystem::exists(base + ".hyp")) << base << ".hyp";
    ASSERT_TRUE(std::filesystem::exists(base + ".ref")) << base << ".ref";
    const auto hyps = split_lines(read_bytes(base + ".hyp"), true);
    const auto refs = split_lines(read_bytes(base + ".ref"), false);
    SCOPED_TRACE(name);
    expect_bleu_matches(corpus_bleu(hyps, refs), e);
  }
}

TEST(Bleu, ShardedStatisticsSumToTheCorpusScore) {
  if (!bleu_fixtures_present()) AIAYN_SKIP_OR_FAIL("no BLEU fixtures at " + bleu_fixture_dir() + " (set AIAYN_SHARED_DIR)");
  const std::string base = bleu_fixture_dir() + "/val300_perturbed";
  const auto hyps = split_lines(read_bytes(base + ".hyp"), true);
  const auto refs = split_lines(read_bytes(base + ".ref"), false);
  const BleuResult whole = corpus_bleu(hyps, refs);
  BleuStats summed;
  for (std::size_t i = 0; i < hyps.size(); ++i) {
    if (i % 3 == 0) summed += aiayn::trainer::sentence_bleu_stats(hyps[i], refs[i]);
  }
  for (std::size_t i = 0; i < hyps.size(); ++i) {
    if (i % 3 != 0) summed += aiayn::trainer::sentence_bleu_stats(hyps[i], refs[i]);
  }
  const BleuResult sharded = aiayn::trainer::bleu_from_stats(summed);
  EXPECT_EQ(sharded.counts, whole.counts);
  EXPECT_EQ(sharded.totals, whole.totals);
  EXPECT_EQ(sharded.score, whole.score);  // same integers in, same operations: bitwise equal
}

TEST(Bleu, IdenticalCorpusScoresOneHundred) {
  const std::vector<std::string> lines = {"The cat sat on the mat.", "A dog runs in the park, quickly."};
  const BleuResult r = corpus_bleu(lines, lines);
  EXPECT_NEAR(r.score, 100.00000000000004, 1e-9);  // sacreBLEU 2.6.0 gives 100.00000000000004
  EXPECT_EQ(r.bp, 1.0);
  EXPECT_EQ(r.summary_line(),
            "BLEU = 100.00 100.0/100.0/100.0/100.0 (BP = 1.000 ratio = 1.000 hyp_len = 16 ref_len = 16)");
}

TEST(Bleu, LineCountMismatchNamesBothCounts) {
  try {
    corpus_bleu({"a", "b", "c"}, {"a", "b"});
    FAIL() << "expected aiayn::Error";
  } catch (const aiayn::Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find('3'), std::string::npos) << message;
    EXPECT_NE(message.find('2'), std::string::npos) << message;
  }
}

TEST(Bleu, EmptyCorpusIsAnError) { EXPECT_THROW(corpus_bleu({}, {}), aiayn::Error); }

TEST(Bleu, AllHypothesesEmpty) {
  // sys_len 0 < ref_len: bp 0; no matches: sacreBLEU's early stop gives 0 and zero precisions.
  const BleuResult r = corpus_bleu({"", "  "}, {"A dog.", "Two cats"});
  EXPECT_EQ(r.score, 0.0);
  EXPECT_EQ(r.bp, 0.0);
  EXPECT_EQ(r.sys_len, 0);
  EXPECT_EQ(r.ref_len, 5);
  EXPECT_EQ(r.summary_line(), "BLEU = 0.00 0.0/0.0/0.0/0.0 (BP = 0.000 ratio = 0.000 hyp_len = 0 ref_len = 5)");
}

TEST(Bleu, ShortHypothesisWithoutHigherOrdersScoresZero) {
  // One matching unigram, no bigrams at all: precision of orders 2..4 stays 0 and its log is floored.
  const BleuResult r = corpus_bleu({"cat"}, {"cat"});
  EXPECT_EQ(r.counts[0], 1);
  EXPECT_EQ(r.totals[1], 0);
  EXPECT_EQ(r.score, 0.0);
  EXPECT_EQ(r.summary_line(), "BLEU = 0.00 100.0/0.0/0.0/0.0 (BP = 1.000 ratio = 1.000 hyp_len = 1 ref_len = 1)");
}

TEST(Bleu, ReferenceNgramsClipHypothesisCounts) {
  const BleuResult r = corpus_bleu({"the the the the"}, {"the cat"});
  EXPECT_EQ(r.counts[0], 1);
  EXPECT_EQ(r.totals[0], 4);
  // sacreBLEU 2.6.0: counts [1,0,0,0], totals [4,3,2,1]; orders 2..4 smoothed to 100/(2*3), 100/(4*2), 100/(8*1).
  EXPECT_NEAR(r.score, 15.97357760615681, 1e-9);
  EXPECT_EQ(r.summary_line(), "BLEU = 15.97 25.0/16.7/12.5/12.5 (BP = 1.000 ratio = 2.000 hyp_len = 4 ref_len = 2)");
}

TEST(Bleu, TrailingWhitespaceIsStrippedBeforeTokenizing) {
  // sacreBLEU rstrips each line first, so a trailing "-\n" is not joined away and a trailing NBSP vanishes.
  const BleuStats a = aiayn::trainer::sentence_bleu_stats("well-\n", "well-");
  EXPECT_EQ(a.counts[0], 1);
  const BleuStats b = aiayn::trainer::sentence_bleu_stats("word\u00a0\u3000", "word");
  EXPECT_EQ(b.sys_len, 1);
  EXPECT_EQ(b.counts[0], 1);
}

TEST(Bleu, SplitLinesReadsAsSacrebleuDoes) {
  EXPECT_EQ(split_lines("", true), std::vector<std::string>{});
  EXPECT_EQ(split_lines("a\nb", false), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(split_lines("a\nb\n", false), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(split_lines("\n\n", false), (std::vector<std::string>{"", ""}));
  EXPECT_EQ(split_lines("a\r\nb\rc", false), (std::vector<std::string>{"a\r", "b\rc"}));
  EXPECT_EQ(split_lines("a\r\nb\rc\r", true), (std::vector<std::string>{"a", "b", "c"}));
}

}  // namespace
