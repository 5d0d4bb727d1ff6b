// prepare: Multi30k round trip (text -> SentencePiece -> HDF5 -> reader -> decode == text), the synthetic
// corpus (deterministic per seed, through the same path), and prepare's own errors.
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <gtest/gtest.h>

#include "aiayn/error.hpp"
#include "data/corpus.hpp"
#include "data/prepare.hpp"
#include "data/tokenizer.hpp"
#include "test_env.hpp"

using namespace aiayn::data;
using aiayn::testing::TempDir;

namespace {

std::vector<std::string> gz_lines(const std::string& path, size_t max_lines) {
  std::vector<std::string> lines;
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) return lines;
  std::string line;
  char buf[8192];
  while (lines.size() < max_lines && gzgets(f, buf, sizeof buf)) {
    line += buf;
    if (!line.empty() && line.back() == '\n') {
      line.pop_back();
      lines.push_back(line);
      line.clear();
    }
  }
  gzclose(f);
  return lines;
}

void write_lines(const std::string& path, const std::vector<std::string>& lines) {
  std::ofstream out(path);
  for (const auto& l : lines) out << l << '\n';
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// SentencePiece's nmt_nfkc normalisation as it affects this text: NFKC maps the no-break space U+00A0 to a
// space, runs of spaces collapse, ends are trimmed.
std::string squeeze_spaces(std::string s) {
  for (size_t at; (at = s.find("\xC2\xA0")) != std::string::npos;) s.replace(at, 2, " ");
  std::string out;
  for (char c : s) {
    if (c == ' ' && (out.empty() || out.back() == ' ')) continue;
    out += c;
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

std::vector<int32_t> strip_eos(std::vector<int32_t> ids) {
  EXPECT_FALSE(ids.empty());
  EXPECT_EQ(ids.back(), kEosId);
  ids.pop_back();
  return ids;
}

}  // namespace

TEST(Prepare, Multi30kRoundTrip) {
  const std::string m30k = aiayn::testing::shared_dir() + "/data/multi30k";
  if (!std::filesystem::exists(m30k + "/train.en.gz"))
    AIAYN_SKIP_OR_FAIL("Multi30k not found under " + m30k + " (set AIAYN_SHARED_DIR to the shared/ folder)");
  TempDir dir;
  // A 5000-pair training sample as plain text (exercises the plain path), the full validation set as .gz.
  const auto en = gz_lines(m30k + "/train.en.gz", 5000), de = gz_lines(m30k + "/train.de.gz", 5000);
  ASSERT_EQ(en.size(), 5000u);
  write_lines(dir / "train.en", en);
  write_lines(dir / "train.de", de);
  PrepareOptions o;
  o.train_src = dir / "train.en";
  o.train_tgt = dir / "train.de";
  o.valid_src = m30k + "/val.en.gz";
  o.valid_tgt = m30k + "/val.de.gz";
  o.out_dir = dir / "out";
  o.vocab_size = 4000;
  const PrepareReport report = prepare_corpus(o);
  std::cout << report.to_string();
  ASSERT_EQ(report.splits.size(), 2u);
  EXPECT_FALSE(std::filesystem::exists(dir / "out/test.h5"));
  for (const auto& f : std::filesystem::directory_iterator(dir / "out"))
    EXPECT_EQ(f.path().string().find(".tmp"), std::string::npos) << f.path();

  const Tokenizer tok = Tokenizer::from_file(dir / "out/tokenizer.model");
  EXPECT_EQ(tok.vocab_size(), report.vocab_size);
  EXPECT_EQ(tok.vocab_size(), 4000);

  // Held-out: every pair kept, raw lines exact, tokens decode to the line.
  const auto val_en = gz_lines(o.valid_src, 1u << 30), val_de = gz_lines(o.valid_tgt, 1u << 30);
  CorpusReader valid(dir / "out/valid.h5");
  ASSERT_EQ(valid.info().pairs, int64_t(val_en.size()));
  EXPECT_EQ(valid.info().vocab_size, 4000);
  EXPECT_EQ(valid.info().tokenizer_sha256, tok.sha256());
  ASSERT_TRUE(valid.info().has_text);
  EXPECT_EQ(valid.read_text("src", 0, valid.info().pairs), val_en);
  EXPECT_EQ(valid.read_text("tgt", 0, valid.info().pairs), val_de);
  std::vector<int64_t> all;
  for (int64_t i = 0; i < valid.info().pairs; ++i) all.push_back(i);
  const auto pairs = valid.read_pairs(all);
  for (size_t i = 0; i < pairs.size(); ++i) {
    ASSERT_EQ(tok.decode(strip_eos(pairs[i].src)), squeeze_spaces(val_en[i])) << "valid pair " << i;
    ASSERT_EQ(tok.decode(strip_eos(pairs[i].tgt)), squeeze_spaces(val_de[i])) << "valid pair " << i;
  }

  // Training: kept + dropped = read, and the kept pairs are the original lines in order (a subsequence).
  const SplitReport& tr = report.splits[0];
  EXPECT_EQ(tr.read, 5000);
  EXPECT_EQ(tr.kept + tr.dropped_empty + tr.dropped_too_long + tr.dropped_ratio, tr.read);
  EXPECT_GT(tr.kept, 4900);
  CorpusReader train(dir / "out/train.h5");
  ASSERT_EQ(train.info().pairs, tr.kept);
  EXPECT_FALSE(train.info().has_text);
  all.clear();
  for (int64_t i = 0; i < train.info().pairs; ++i) all.push_back(i);
  const auto tp = train.read_pairs(all);
  size_t line = 0;
  int64_t src_tokens = 0;
  for (size_t i = 0; i < tp.size(); ++i) {
    const std::string s = tok.decode(strip_eos(tp[i].src)), t = tok.decode(strip_eos(tp[i].tgt));
    while (line < en.size() && !(squeeze_spaces(en[line]) == s && squeeze_spaces(de[line]) == t)) ++line;
    ASSERT_LT(line, en.size()) << "training pair " << i << " is not an input line in order: " << s;
    ++line;
    EXPECT_LE(int64_t(tp[i].src.size()), o.max_len);
    src_tokens += int64_t(tp[i].src.size());
  }
  EXPECT_EQ(src_tokens, tr.src_tokens);
}

// The corpus does not depend on the number of encoding threads, the tokenizer trains on the fixed-seed
// sample it is given, and nothing but the outputs is left behind (no spool or temporary files).
TEST(Prepare, SameCorpusWhateverTheThreadsAndASampledTokenizer) {
  const std::string m30k = aiayn::testing::shared_dir() + "/data/multi30k";
  if (!std::filesystem::exists(m30k + "/train.en.gz"))
    AIAYN_SKIP_OR_FAIL("Multi30k not found under " + m30k + " (set AIAYN_SHARED_DIR to the shared/ folder)");
  TempDir dir;
  const auto en = gz_lines(m30k + "/train.en.gz", 3000), de = gz_lines(m30k + "/train.de.gz", 3000);
  write_lines(dir / "train.en", en);
  write_lines(dir / "train.de", de);
  write_lines(dir / "valid.en", {en.begin(), en.begin() + 100});
  write_lines(dir / "valid.de", {de.begin(), de.begin() + 100});
  std::string model[2];
  std::vector<std::string> fingerprints[2];
  std::vector<std::vector<int32_t>> tokens[2];
  std::vector<std::string> text[2];
  for (int k = 0; k < 2; ++k) {
    const int threads = k == 0 ? 1 : 3;
    PrepareOptions o;
    o.train_src = dir / "train.en";
    o.train_tgt = dir / "train.de";
    o.valid_src = dir / "valid.en";
    o.valid_tgt = dir / "valid.de";
    o.out_dir = dir / ("out" + std::to_string(threads));
    o.vocab_size = 1000;
    o.spm_sample = 2500;  // of 6000 sentences
    o.num_threads = threads;
    const PrepareReport report = prepare_corpus(o);
    EXPECT_EQ(report.tokenizer_sentences, 2500);
    EXPECT_EQ(report.training_sentences, 6000);
    model[k] = slurp(o.out_dir + "/tokenizer.model");
    std::set<std::string> names;
    for (const auto& f : std::filesystem::directory_iterator(o.out_dir)) names.insert(f.path().filename().string());
    EXPECT_EQ(names, (std::set<std::string>{"tokenizer.model", "train.h5", "valid.h5"}));
    for (const char* split : {"train.h5", "valid.h5"}) {
      CorpusReader r(o.out_dir + "/" + split);
      EXPECT_TRUE(r.info().has_checksum);
      fingerprints[k].push_back(r.fingerprint());
      std::vector<int64_t> all;
      for (int64_t i = 0; i < r.info().pairs; ++i) all.push_back(i);
      for (const Pair& p : r.read_pairs(all)) {
        tokens[k].push_back(p.src);
        tokens[k].push_back(p.tgt);
      }
      if (r.info().has_text) text[k] = r.read_text("tgt", 0, r.info().pairs);
    }
    EXPECT_EQ(fingerprints[k].size(), 2u);
  }
  EXPECT_TRUE(model[0] == model[1]) << "the tokenizer differs between 1 and 3 threads";
  EXPECT_EQ(fingerprints[0], fingerprints[1]);
  EXPECT_TRUE(tokens[0] == tokens[1]) << "the tokens differ between 1 and 3 threads";
  EXPECT_EQ(text[0], text[1]);
}

// Lines end at "\n" with an optional "\r" before it; a last line without a newline counts.
TEST(Prepare, ReadsCrLfAndAFinalLineWithoutNewline) {
  TempDir dir;
  std::ofstream(dir / "a", std::ios::binary) << "one two\r\nthree four five\r\nsix";
  std::ofstream(dir / "b", std::ios::binary) << "eins zwei\ndrei vier fuenf\nsechs\n";
  PrepareOptions o;
  o.train_src = dir / "a";
  o.train_tgt = dir / "b";
  o.valid_src = dir / "a";
  o.valid_tgt = dir / "b";
  o.out_dir = dir / "out";
  o.vocab_size = 30;
  const PrepareReport report = prepare_corpus(o);
  ASSERT_EQ(report.splits.size(), 2u);
  EXPECT_EQ(report.splits[0].read, 3);
  CorpusReader valid(dir / "out/valid.h5");
  EXPECT_EQ(valid.read_text("src", 0, 3), (std::vector<std::string>{"one two", "three four five", "six"}));
  EXPECT_EQ(valid.read_text("tgt", 0, 3), (std::vector<std::string>{"eins zwei", "drei vier fuenf", "sechs"}));
}

TEST(Prepare, MisalignedAndMissingInputs) {
  TempDir dir;
  write_lines(dir / "a", {"one", "two", "three"});
  write_lines(dir / "b", {"eins", "zwei"});
  PrepareOptions o;
  o.train_src = dir / "a";
  o.train_tgt = dir / "b";
  o.out_dir = dir / "out";
  try {
    prepare_corpus(o);
    ADD_FAILURE() << "misaligned files accepted";
  } catch (const aiayn::Error& e) {
    EXPECT_NE(std::string(e.what()).find("aligned"), std::string::npos) << e.what();
  }
  o.train_tgt = dir / "missing.de";
  try {
    prepare_corpus(o);
    ADD_FAILURE() << "missing file accepted";
  } catch (const aiayn::Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir / "missing.de"), std::string::npos) << e.what();
  }
}

TEST(Synthetic, DeterministicPerSeed) {
  for (uint64_t i = 0; i < 200; ++i) {
    EXPECT_EQ(synthetic_pair(5, 0, i), synthetic_pair(5, 0, i));
  }
  int differ = 0;
  std::set<std::string> src_words;
  for (uint64_t i = 0; i < 2000; ++i) {
    const auto a = synthetic_pair(5, 0, i), b = synthetic_pair(6, 0, i);
    differ += a != b;
    std::istringstream s(a.first), t(a.second);
    std::string w;
    int ns = 0, nt = 0;
    while (s >> w) {
      ++ns;
      src_words.insert(w);
    }
    while (t >> w) ++nt;
    EXPECT_GE(ns, 3);
    EXPECT_LE(ns, 15) << a.first;
    EXPECT_EQ(ns, nt) << a.first << " | " << a.second;  // one target word per source word
  }
  EXPECT_GT(differ, 1900);
  EXPECT_GE(src_words.size(), 60u);
  EXPECT_LE(src_words.size(), 300u);
  // A pinned example: the generator must not drift between builds or platforms.
  const auto pinned = synthetic_pair(1, 0, 0);
  std::cout << "synthetic_pair(1, 0, 0) = " << pinned.first << " ||| " << pinned.second << "\n";

  TempDir a, b, c;
  SyntheticOptions o;
  o.train_pairs = 300;
  o.valid_pairs = 20;
  o.test_pairs = 20;
  o.seed = 11;
  const auto fa = generate_synthetic(o, a.path()), fb = generate_synthetic(o, b.path());
  EXPECT_EQ(slurp(fa.train_src), slurp(fb.train_src));
  EXPECT_EQ(slurp(fa.test_tgt), slurp(fb.test_tgt));
  o.seed = 12;
  const auto fc = generate_synthetic(o, c.path());
  EXPECT_NE(slurp(fa.train_src), slurp(fc.train_src));
  EXPECT_NE(slurp(fa.valid_src), slurp(fa.test_src));  // splits come from different streams
}

TEST(Synthetic, PreparesThroughTheSamePath) {
  TempDir dir;
  SyntheticOptions o;
  o.train_pairs = 3000;
  o.valid_pairs = 100;
  o.test_pairs = 100;
  const PrepareReport r = prepare_synthetic(o, dir.path(), 1000);
  std::cout << r.to_string();
  ASSERT_EQ(r.splits.size(), 3u);
  EXPECT_EQ(r.splits[0].kept, 3000);
  for (const char* split : {"train", "valid", "test"}) EXPECT_TRUE(std::filesystem::exists(dir / (std::string(split) + ".h5")));
  const Tokenizer tok = Tokenizer::from_file(dir / "tokenizer.model");
  CorpusReader test(dir / "test.h5");
  EXPECT_EQ(test.info().pairs, 100);
  const auto lines = test.read_text("tgt", 0, 100);
  const auto pairs = test.read_pairs({0, 50, 99});
  EXPECT_EQ(tok.decode(strip_eos(pairs[1].tgt)), lines[50]);
  EXPECT_EQ(lines[50], synthetic_pair(o.seed, 2, 50).second);
}
