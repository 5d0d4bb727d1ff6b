// --tokenize intl and none against sacreBLEU 2.6.0: the intl tokenizer line by line on Unicode text of many
// scripts (tests/bleu/fixtures, made by make_fixtures.py there), and corpus BLEU with each of 13a, intl and
// none on every fixture, in the library and through `aiayn bleu --tokenize`.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "aiayn/error.hpp"
#include "bleu_fixtures.hpp"
#include "trainer/bleu.hpp"

namespace {

using namespace aiayn::testing;
using aiayn::trainer::BleuTokenize;
using aiayn::trainer::split_lines;

std::string own_fixtures() { return source_dir() + "/tests/bleu/fixtures"; }

// The fixture's hypothesis and reference files: "unicode" is ours, the others are the shared ones.
std::string stem_of(const std::string& name) {
  return name == "unicode" ? own_fixtures() + "/unicode" : bleu_fixture_dir() + "/" + name;
}

nlohmann::json expected() {
  return nlohmann::json::parse(read_bytes(own_fixtures() + "/expected_tokenize.json"))["fixtures"];
}

TEST(BleuTokenize, IntlTokenizerMatchesSacrebleuLineByLine) {
  std::vector<std::string> lines = split_lines(read_bytes(own_fixtures() + "/unicode.hyp"), false);
  const auto refs = split_lines(read_bytes(own_fixtures() + "/unicode.ref"), false);
  lines.insert(lines.end(), refs.begin(), refs.end());
  const auto tokens = split_lines(read_bytes(own_fixtures() + "/intl_tokens.txt"), false);
  ASSERT_EQ(lines.size(), tokens.size());
  ASSERT_GT(lines.size(), 400u);
  for (size_t i = 0; i < lines.size(); ++i)
    EXPECT_EQ(aiayn::trainer::tokenize_intl(lines[i]), tokens[i]) << "line " << i << ": " << lines[i];
}

TEST(BleuTokenize, CorpusBleuMatchesSacrebleuForEachTokenizer) {
  const bool shared = bleu_fixtures_present();
  int checked = 0;
  const nlohmann::json all = expected();
  for (auto it = all.begin(); it != all.end(); ++it) {
    const std::string name = it.key();
    const nlohmann::json& by_tok = it.value();
    if (name != "unicode" && !shared) continue;
    const auto hyps = split_lines(read_bytes(stem_of(name) + ".hyp"), true);
    const auto refs = split_lines(read_bytes(stem_of(name) + ".ref"), false);
    for (auto jt = by_tok.begin(); jt != by_tok.end(); ++jt) {
      const std::string tok = jt.key();
      const nlohmann::json& e = jt.value();
      SCOPED_TRACE(name + " tokenize=" + tok);
      expect_bleu_matches(aiayn::trainer::corpus_bleu(hyps, refs, aiayn::trainer::parse_bleu_tokenize(tok)), e);
      ++checked;
    }
  }
  EXPECT_GE(checked, 3);
  if (!shared) AIAYN_SKIP_OR_FAIL("checked our own fixture only: no shared BLEU fixtures at " + bleu_fixture_dir());
}

TEST(BleuTokenize, UnknownTokenizerIsAnError) {
  EXPECT_THROW(aiayn::trainer::parse_bleu_tokenize("char"), aiayn::Error);
}

TEST(BleuTokenize, CommandLineTakesTokenize) {
  if (!std::filesystem::exists(aiayn_exe())) AIAYN_SKIP_OR_FAIL("no aiayn executable at " + aiayn_exe() + " (set AIAYN_EXE)");
  const nlohmann::json e = expected()["unicode"];
  for (const char* tok : {"13a", "intl", "none"}) {
    SCOPED_TRACE(tok);
    TempDir tmp;
    const CommandResult r = run_captured("'" + aiayn_exe() + "' bleu --tokenize " + tok + " --ref '" +
                                             stem_of("unicode") + ".ref' < '" + stem_of("unicode") + ".hyp'",
                                         tmp.path());
    ASSERT_EQ(r.status, 0) << r.err;
    const nlohmann::json got = nlohmann::json::parse(r.out);
    EXPECT_EQ(got["counts"], e[tok]["counts"]);
    EXPECT_EQ(got["totals"], e[tok]["totals"]);
    EXPECT_EQ(got["signature"], e[tok]["signature"]);
    EXPECT_NEAR(got["score"].get<double>(), e[tok]["score"].get<double>(), 1e-9);
    EXPECT_EQ(r.err, e[tok]["line"].get<std::string>() + "\n");
  }
  TempDir tmp;
  const CommandResult bad = run_captured("'" + aiayn_exe() + "' bleu --tokenize char --ref '" + stem_of("unicode") +
                                             ".ref' < '" + stem_of("unicode") + ".hyp'",
                                         tmp.path());
  EXPECT_EQ(bad.status, 2) << bad.err;
}

}  // namespace
