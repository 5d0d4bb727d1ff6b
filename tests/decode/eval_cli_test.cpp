// `aiayn eval` and `aiayn translate` end to end: a synthetic corpus and a short training run built in the
// test, then determinism (twice, and 2 ranks vs 1), translate's line contract, and the error messages.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "process.hpp"
#include "test_env.hpp"

namespace {

using aiayn::testing::aiayn_exe;
using aiayn::testing::TempDir;

using Result = aiayn::testing::CommandResult;

// Runs a shell command, capturing stdout and stderr.
Result run(const std::string& cmd, const TempDir& dir) { return aiayn::testing::run_captured(cmd, dir.path()); }

class EvalCli : public ::testing::Test {
 protected:
  static TempDir* dir;
  static std::string data, ckpt;
  static void SetUpTestSuite() {
    dir = new TempDir();
    data = *dir / "data";
    const std::string run_dir = *dir / "run";
    Result p = run(aiayn_exe() + " prepare --synthetic --pairs 2000 --out " + data, *dir);
    ASSERT_EQ(p.status, 0) << p.err;
    Result t = run(aiayn_exe() + " train --config " + aiayn::testing::source_dir() + "/launch/configs/tiny.yaml" +
                       " --set train.max_steps=60 --set checkpoint.every_steps=20 --set device=cpu --set train.threads=1" +
                       " --data " + data + " --run-dir " + run_dir,
                   *dir);
    ASSERT_EQ(t.status, 0) << t.err << t.out;
    ckpt = run_dir + "/averaged.h5";
  }
  static void TearDownTestSuite() { delete dir; }
  std::string eval_cmd(const std::string& extra = "") const {
    return aiayn_exe() + " eval --checkpoint " + ckpt + " --data " + data + "/test.h5 --device cpu --threads 1 " + extra;
  }
  static nlohmann::json without_time(const std::string& text) {
    auto j = nlohmann::json::parse(text);
    j.erase("decode_s");
    return j;
  }
};
TempDir* EvalCli::dir = nullptr;
std::string EvalCli::data, EvalCli::ckpt;

TEST_F(EvalCli, LossOnlyPrintsOneJsonObject) {
  const Result r = run(eval_cmd(), *dir);
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  for (const char* key : {"loss", "ppl", "acc", "tokens"}) EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_FALSE(j.contains("bleu"));
  EXPECT_NEAR(j["ppl"].get<double>(), std::exp(j["loss"].get<double>()), 1e-9 * j["ppl"].get<double>());
  EXPECT_GT(j["tokens"].get<int64_t>(), 0);
  EXPECT_NE(r.err.find("loss"), std::string::npos);
}

TEST_F(EvalCli, BleuTwiceGivesIdenticalJson) {
  const Result a = run(eval_cmd("--bleu"), *dir);
  ASSERT_EQ(a.status, 0) << a.err;
  const Result b = run(eval_cmd("--bleu"), *dir);
  ASSERT_EQ(b.status, 0) << b.err;
  const auto ja = nlohmann::json::parse(a.out);
  for (const char* key : {"loss", "ppl", "acc", "tokens", "bleu", "signature", "beam", "lenpen", "decode_s", "sentences"})
    EXPECT_TRUE(ja.contains(key)) << key;
  EXPECT_EQ(ja["beam"].get<int>(), 4);
  EXPECT_EQ(ja["signature"].get<std::string>(), "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0");
  EXPECT_EQ(without_time(a.out).dump(), without_time(b.out).dump());
  EXPECT_NE(a.err.find("BLEU = "), std::string::npos) << a.err;
}

TEST_F(EvalCli, TwoRanksEqualOne) {
  const Result one = run(eval_cmd("--bleu --beam 2"), *dir);
  ASSERT_EQ(one.status, 0) << one.err;
  const Result two = run(std::string(AIAYN_MPIEXEC) + " --allow-run-as-root --oversubscribe -np 2 " + eval_cmd("--bleu --beam 2"), *dir);
  ASSERT_EQ(two.status, 0) << two.err;
  EXPECT_EQ(without_time(one.out).dump(), without_time(two.out).dump());
}

TEST_F(EvalCli, TranslateKeepsLinesAndMatchesBeamOneGreedyEval) {
  std::ofstream(*dir / "in.txt") << "the farmer builds a ball beside the small letters\n\nthe big horses help the goat\n";
  const Result r = run(aiayn_exe() + " translate --checkpoint " + ckpt + " --device cpu --threads 1 < " + (*dir / "in.txt"), *dir);
  ASSERT_EQ(r.status, 0) << r.err;
  std::vector<std::string> lines;
  std::stringstream ss(r.out);
  for (std::string l; std::getline(ss, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), 3u) << r.out;
  EXPECT_EQ(lines[1], "");
  // Deterministic and batch-independent: the lines one at a time give the same output.
  const Result again = run(aiayn_exe() + " translate --batch-lines 1 --checkpoint " + ckpt + " --device cpu --threads 1 < " +
                               (*dir / "in.txt"), *dir);
  EXPECT_EQ(again.out, r.out);
  // Greedy translations of the test set's raw source lines score exactly the BLEU that greedy `aiayn eval --bleu`
  // gives on the same corpus: the same decoder, whichever way the sentences are batched.
  const Result greedy = run(aiayn_exe() + " translate --beam 1 --checkpoint " + ckpt + " --device cpu --threads 1 < " +
                                data + "/text/test.src", *dir);
  ASSERT_EQ(greedy.status, 0) << greedy.err;
  std::ofstream(*dir / "test.hyp") << greedy.out;
  const Result scored = run(aiayn_exe() + " bleu --ref " + data + "/text/test.tgt < " + (*dir / "test.hyp"), *dir);
  ASSERT_EQ(scored.status, 0) << scored.err;
  const Result eval = run(eval_cmd("--bleu --beam 1"), *dir);
  ASSERT_EQ(eval.status, 0) << eval.err;
  const auto by_translate = nlohmann::json::parse(scored.out), by_eval = nlohmann::json::parse(eval.out);
  std::ifstream hyp(*dir / "test.hyp");
  int64_t lines_out = 0;
  for (std::string l; std::getline(hyp, l);) ++lines_out;
  EXPECT_EQ(lines_out, by_eval["sentences"].get<int64_t>());
  EXPECT_GT(by_eval["bleu"].get<double>(), 0.0);
  EXPECT_EQ(by_translate["score"].get<double>(), by_eval["bleu"].get<double>());
}

TEST_F(EvalCli, ErrorsNameTheCause) {
  auto expect_error = [&](const std::string& cmd, const std::string& needle) {
    const Result r = run(cmd, *dir);
    EXPECT_EQ(r.status, 1) << cmd << "\n" << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << cmd << "\n" << r.err;
    EXPECT_EQ(r.out, "") << cmd;
  };
  const std::string test_h5 = data + "/test.h5";
  expect_error(aiayn_exe() + " eval --checkpoint " + (*dir / "nope.h5") + " --data " + test_h5, "nope.h5");
  expect_error(aiayn_exe() + " eval --checkpoint " + test_h5 + " --data " + test_h5, test_h5);  // not a checkpoint
  expect_error(aiayn_exe() + " eval --checkpoint " + ckpt + " --data " + (*dir / "missing.h5"), "missing.h5");
  expect_error(eval_cmd("--bleu --beam 0"), "--beam");
  expect_error(aiayn_exe() + " translate --checkpoint " + ckpt + " --beam 0 < /dev/null", "--beam");
  // A corpus prepared with another tokenizer (a different synthetic seed trains a different BPE model).
  const std::string other = *dir / "other";
  const Result p = run(aiayn_exe() + " prepare --synthetic --pairs 300 --seed 7 --vocab-size 200 --out " + other, *dir);
  ASSERT_EQ(p.status, 0) << p.err;
  expect_error(aiayn_exe() + " eval --checkpoint " + ckpt + " --data " + other + "/test.h5", "tokenizer");
}

}  // namespace
