// launch/examples/wmt14_en_de.sh end to end on small local files laid out as the official WMT14 archives
// unpack (plain and gzip, SGML test set with entities), made here from the synthetic language pair: text
// collection, prepare with the recipe's filters, a few training steps of a shrunken base preset on the CPU,
// averaging, and newstest2014 BLEU. Also: a missing or misaligned file is named, exit status 1.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "data/prepare.hpp"
#include "run_helpers.hpp"
#include "test_env.hpp"

namespace aiayn::testing {
namespace {
namespace fs = std::filesystem;

void write_lines(const std::string& path, const std::vector<std::string>& lines) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  for (const auto& l : lines) out << l << '\n';
}

// `count` synthetic pairs of split `stream`, starting at `first`.
void corpus(int stream, int first, int count, std::vector<std::string>* en, std::vector<std::string>* de) {
  for (int i = first; i < first + count; ++i) {
    const auto [s, t] = data::synthetic_pair(11, uint64_t(stream), uint64_t(i));
    en->push_back(s);
    de->push_back(t);
  }
}

std::string sgml(const std::string& lang, const std::vector<std::string>& segments) {
  std::string s = "<srcset setid=\"newstest2014\" srclang=\"any\">\n<doc sysid=\"ref\" docid=\"1\" genre=\"news\" "
                  "origlang=\"" + lang + "\">\n<h1>x</h1>\n";
  for (size_t i = 0; i < segments.size(); ++i)
    s += "<seg id=\"" + std::to_string(i + 1) + "\">" + segments[i] + "</seg>\n";
  return s + "</doc>\n</srcset>\n";
}

class Wmt14Recipe : public ::testing::Test {
 protected:
  // The WMT14 layout under tmp_/wmt14: 1500 + 1000 + 500 training pairs (plain, .gz, one side .gz), 100 dev
  // pairs, and a 20-segment SGML test set whose source and reference use entities.
  std::string make_data() {
    const std::string d = tmp_ / "wmt14";
    std::vector<std::string> en, de;
    corpus(0, 0, 1500, &en, &de);
    en[7] = "";   // dropped: empty
    de[9] = "ka ka ka ka ka ka ka ka ka ka ka ka ka ka ka ka ka ka ka ka ka ka ka ka ka";  // dropped: ratio
    write_lines(d + "/training/europarl-v7.de-en.en", en);
    write_lines(d + "/training/europarl-v7.de-en.de", de);
    en.clear(), de.clear();
    corpus(0, 1500, 1000, &en, &de);
    write_lines(d + "/commoncrawl.de-en.en", en);
    write_lines(d + "/commoncrawl.de-en.de", de);
    EXPECT_EQ(run_command("gzip " + d + "/commoncrawl.de-en.en " + d + "/commoncrawl.de-en.de", tmp_ / "gz.log"), 0);
    en.clear(), de.clear();
    corpus(0, 2500, 500, &en, &de);
    write_lines(d + "/training/news-commentary-v9.de-en.en", en);
    write_lines(d + "/training/news-commentary-v9.de-en.de", de);
    EXPECT_EQ(run_command("gzip " + d + "/training/news-commentary-v9.de-en.de", tmp_ / "gz.log"), 0);
    en.clear(), de.clear();
    corpus(1, 0, 100, &en, &de);
    write_lines(d + "/dev/newstest2013.en", en);
    write_lines(d + "/dev/newstest2013.de", de);
    en.clear(), de.clear();
    corpus(2, 0, 20, &en, &de);
    en[0] += " &amp; &quot;x&quot; &lt;y&gt; &#39;z&#x27; &amp;amp;";
    de[0] += " &amp; &quot;x&quot;";
    en[1] = "  " + en[1] + "   with    spaces ";
    write_lines(d + "/test-full/newstest2014-deen-src.en.sgm", {sgml("en", en)});
    write_lines(d + "/test-full/newstest2014-deen-ref.de.sgm", {sgml("de", de)});
    test_src_ = en;
    test_ref_ = de;
    return d;
  }
  std::string recipe(const std::string& data, const std::string& run) const {
    return "env AIAYN=" + aiayn_exe() + " VOCAB=300 RANKS=1 " + source_dir() + "/launch/examples/wmt14_en_de.sh " + data +
           " " + run +
           " --set device=cpu --set train.max_steps=4 --set train.threads=2 --set model.layers=1"
           " --set model.d_model=32 --set model.heads=2 --set model.d_ff=64 --set train.batch_tokens=400"
           " --set train.max_tokens_per_rank=400 --set train.warmup=10 --set checkpoint.every_steps=2"
           " --set checkpoint.every_minutes=0 --set train.valid_every=2 --set eval.max_len_b=3";
  }

  TempDir tmp_;
  std::vector<std::string> test_src_, test_ref_;
};

TEST_F(Wmt14Recipe, RunsEndToEndOnLocalFiles) {
  const std::string data = make_data(), run = tmp_ / "run", log = tmp_ / "recipe.log";
  ASSERT_EQ(run_command(recipe(data, run), log), 0) << read_file(log);
  const std::string text = read_file(log);
  for (const char* step : {"training/europarl-v7.de-en: 1500 pairs", "commoncrawl.de-en: 1000 pairs",
                           "newstest2014 (full): 20 segments", "train: 3000 pairs read", "(empty 1,", "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"})
    EXPECT_NE(text.find(step), std::string::npos) << "'" << step << "' not in:\n" << text;
  std::smatch ratio;
  ASSERT_TRUE(std::regex_search(text, ratio, std::regex("ratio ([0-9]+)\\); "))) << text;
  EXPECT_GE(std::stoi(ratio[1]), 1) << "the pair made 2.5 times longer was kept";
  // The test set: entities decoded in the source, the reference as sacreBLEU extracts it.
  const std::vector<std::string> src = [&] {
    std::vector<std::string> v;
    std::ifstream in(run + "/text/test.en");
    for (std::string l; std::getline(in, l);) v.push_back(l);
    return v;
  }();
  ASSERT_EQ(src.size(), 20u);
  EXPECT_EQ(src[0], test_src_[0].substr(0, test_src_[0].find(" &amp;")) + " & \"x\" <y> 'z' &amp;");
  EXPECT_EQ(src[1], test_src_[1].substr(2, test_src_[1].find("   with") - 2) + " with spaces");
  EXPECT_EQ(read_file(run + "/text/test.de").substr(0, test_ref_[0].size() + 1), test_ref_[0] + "\n");
  const auto result = nlohmann::json::parse(read_file(run + "/newstest2014.json"));
  EXPECT_TRUE(result.contains("bleu")) << result.dump();
  EXPECT_TRUE(fs::exists(run + "/run/averaged.h5"));
  // eval --bleu takes sacreBLEU's other tokenizers.
  for (const char* tok : {"intl", "none"}) {
    const std::string out = tmp_ / "eval.json";
    ASSERT_EQ(run_command(aiayn_exe() + " eval --checkpoint " + run + "/run/averaged.h5 --data " + run +
                              "/data/test.h5 --bleu --tokenize " + tok + " >" + out,
                          tmp_ / "eval.log"),
              0)
        << read_file(tmp_ / "eval.log");
    const auto j = nlohmann::json::parse(read_file(out));
    EXPECT_NE(j["signature"].get<std::string>().find(std::string("|tok:") + tok + "|"), std::string::npos) << j.dump();
  }
  // Everything but training is skipped when run again; training resumes and has nothing left to do.
  const std::string again = tmp_ / "again.log";
  ASSERT_EQ(run_command(recipe(data, run), again), 0) << read_file(again);
  EXPECT_EQ(read_file(again).find("==> preparing"), std::string::npos) << read_file(again);
}

TEST_F(Wmt14Recipe, NamesAMissingOrMisalignedFile) {
  const std::string data = make_data(), log = tmp_ / "recipe.log";
  fs::remove(data + "/dev/newstest2013.de");
  EXPECT_EQ(run_command(recipe(data, tmp_ / "run1"), log), 1) << read_file(log);
  EXPECT_NE(read_file(log).find(data + "/dev/newstest2013.de (or dev/newstest2013.de.gz) not found"), std::string::npos)
      << read_file(log);
  write_lines(data + "/dev/newstest2013.de", {"nur eine Zeile"});
  std::ofstream(data + "/training/europarl-v7.de-en.de", std::ios::app) << "one more line\n";
  const std::string log2 = tmp_ / "recipe2.log";
  EXPECT_EQ(run_command(recipe(data, tmp_ / "run2"), log2), 1) << read_file(log2);
  EXPECT_NE(read_file(log2).find(data + "/training/europarl-v7.de-en.en has 1500 lines but"), std::string::npos)
      << read_file(log2);
}

}  // namespace
}  // namespace aiayn::testing
