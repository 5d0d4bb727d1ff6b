// `aiayn bleu --ref R < H` end to end: the built executable (AIAYN_EXE) on the shared fixtures, and its
// errors. Skips when the executable or the fixtures are absent.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "bleu_fixtures.hpp"
#include "process.hpp"

namespace {

using namespace aiayn::testing;

using RunResult = CommandResult;

RunResult run_bleu(const std::string& ref, const std::string& hyp, const TempDir& tmp) {
  return run_captured("'" + aiayn_exe() + "' bleu --ref '" + ref + "' < '" + hyp + "'", tmp.path());
}

class BleuCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(aiayn_exe())) AIAYN_SKIP_OR_FAIL("no aiayn executable at " + aiayn_exe() + " (set AIAYN_EXE)");
    if (!bleu_fixtures_present()) AIAYN_SKIP_OR_FAIL("no BLEU fixtures at " + bleu_fixture_dir() + " (set AIAYN_SHARED_DIR)");
  }
};

TEST_F(BleuCli, PrintsSacrebleuStatisticsForEveryFixture) {
  const nlohmann::json expected = bleu_expected();
  ASSERT_FALSE(expected.empty());
  for (const auto& [name, e] : expected.items()) {
    SCOPED_TRACE(name);
    TempDir tmp;
    const std::string base = bleu_fixture_dir() + "/" + name;
    const RunResult r = run_bleu(base + ".ref", base + ".hyp", tmp);
    ASSERT_EQ(r.status, 0) << r.err;
    const nlohmann::json got = nlohmann::json::parse(r.out);  // exactly one JSON object on stdout
    EXPECT_EQ(got["counts"], e["counts"]);
    EXPECT_EQ(got["totals"], e["totals"]);
    EXPECT_EQ(got["sys_len"], e["sys_len"]);
    EXPECT_EQ(got["ref_len"], e["ref_len"]);
    EXPECT_EQ(got["signature"], e["signature"]);
    // The JSON carries the unrounded double; the fixture's promise is 1e-9.
    EXPECT_NEAR(got["score"].get<double>(), e["score"].get<double>(), 1e-9);
    EXPECT_NEAR(got["bp"].get<double>(), e["bp"].get<double>(), 1e-9);
    EXPECT_EQ(r.err, e["line"].get<std::string>() + "\n");
  }
}

TEST_F(BleuCli, MissingReferenceFileIsAnErrorNamingIt) {
  TempDir tmp;
  const std::string missing = tmp / "no_such.ref";
  const RunResult r = run_bleu(missing, bleu_fixture_dir() + "/basic.hyp", tmp);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find(missing), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST_F(BleuCli, LineCountMismatchIsAnErrorNamingBothCounts) {
  TempDir tmp;
  std::ofstream(tmp / "three.hyp") << "a\nb\nc\n";
  std::ofstream(tmp / "two.ref") << "a\nb\n";
  const RunResult r = run_bleu(tmp / "two.ref", tmp / "three.hyp", tmp);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("3 hypothesis lines"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("has 2 lines"), std::string::npos) << r.err;
}

}  // namespace
