// The corpus reader: a valid file reads back exactly (pairs in any order, text, lengths, fingerprint), and every
// kind of damage in the bad-file matrix is refused with an aiayn::Error naming the file and the dataset.
#include <hdf5.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include <gtest/gtest.h>

#include "aiayn/error.hpp"
#include "data/corpus.hpp"
#include "data/corpus_writer.hpp"
#include "test_env.hpp"

using namespace aiayn::data;
using aiayn::testing::TempDir;

namespace {

constexpr int32_t kVocab = 50;

// Pair i: source of 1 + i % 5 tokens, target of 1 + (i * 3) % 7, each ending in EOS (3).
CorpusContent make_content(int64_t pairs, bool text) {
  CorpusContent c;
  c.vocab_size = kVocab;
  c.tokenizer_sha256 = std::string(64, 'a');
  c.has_text = text;
  for (int64_t i = 0; i < pairs; ++i) {
    std::vector<int32_t> s, t;
    for (int64_t k = 0; k < i % 5; ++k) s.push_back(int32_t(4 + (i + k) % (kVocab - 4)));
    for (int64_t k = 0; k < (i * 3) % 7; ++k) t.push_back(int32_t(4 + (2 * i + k) % (kVocab - 4)));
    s.push_back(3);
    t.push_back(3);
    c.add_pair(s, t, "source line " + std::to_string(i), i % 4 == 0 ? "" : "zielsatz " + std::to_string(i));
  }
  return c;
}

void read_everything(const std::string& path) {
  CorpusReader r(path);
  std::vector<int64_t> all;
  for (int64_t i = 0; i < r.info().pairs; ++i) all.push_back(i);
  r.read_pairs(all);
}

// Expects that opening and reading every pair of `path` throws an Error mentioning each of `needles`.
void expect_refused(const std::string& path, const std::vector<std::string>& needles) {
  try {
    read_everything(path);
    ADD_FAILURE() << path << " was accepted";
  } catch (const aiayn::Error& e) {
    const std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line expected: " << msg;
  }
}

void with_file(const std::string& path, const std::function<void(hid_t)>& edit) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  edit(f);
  H5Fclose(f);
}

void replace_dataset(hid_t f, const char* name, hid_t type, hsize_t n) {
  ASSERT_GE(H5Ldelete(f, name, H5P_DEFAULT), 0);
  hid_t space = H5Screate_simple(1, &n, nullptr);
  hid_t d = H5Dcreate2(f, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(d, 0);
  H5Dclose(d);
  H5Sclose(space);
}

}  // namespace

TEST(CorpusReader, ValidFileReadsBack) {
  TempDir dir;
  const std::string path = dir / "valid.h5";
  const CorpusContent c = make_content(40, true);
  write_corpus_file(path, c);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  CorpusReader r(path);
  EXPECT_EQ(r.info().pairs, 40);
  EXPECT_EQ(r.info().vocab_size, kVocab);
  EXPECT_EQ(r.info().eos_id, 3);
  EXPECT_EQ(r.info().version, 1);
  EXPECT_TRUE(r.info().has_text);
  EXPECT_EQ(r.info().tokenizer_sha256, std::string(64, 'a'));
  ASSERT_EQ(r.src_lengths().size(), 40u);
  for (int64_t i = 0; i < 40; ++i) {
    EXPECT_EQ(r.src_lengths()[size_t(i)], 1 + i % 5);
    EXPECT_EQ(r.tgt_lengths()[size_t(i)], 1 + (i * 3) % 7);
  }
  const std::vector<int64_t> idx = {7, 3, 39, 0, 7, 8, 9, 20};  // unordered, repeated, contiguous runs
  const auto pairs = r.read_pairs(idx);
  ASSERT_EQ(pairs.size(), idx.size());
  for (size_t k = 0; k < idx.size(); ++k) {
    const int64_t i = idx[k];
    const auto s0 = c.src_tokens.begin() + c.src_offsets[size_t(i)];
    const auto t0 = c.tgt_tokens.begin() + c.tgt_offsets[size_t(i)];
    EXPECT_EQ(pairs[k].src, std::vector<int32_t>(s0, c.src_tokens.begin() + c.src_offsets[size_t(i) + 1]));
    EXPECT_EQ(pairs[k].tgt, std::vector<int32_t>(t0, c.tgt_tokens.begin() + c.tgt_offsets[size_t(i) + 1]));
  }
  const auto src_text = r.read_text("src", 2, 3);
  EXPECT_EQ(src_text, (std::vector<std::string>{"source line 2", "source line 3", "source line 4"}));
  EXPECT_EQ(r.read_text("tgt", 3, 2), (std::vector<std::string>{"zielsatz 3", ""}));
  EXPECT_THROW(r.read_text("tgt", 39, 2), aiayn::Error);
  EXPECT_THROW(r.read_pairs({40}), aiayn::Error);
  EXPECT_THROW(r.read_pairs({-1}), aiayn::Error);

  const std::string fp = r.fingerprint();
  EXPECT_EQ(fp.size(), 64u);
  CorpusReader again(path);
  EXPECT_EQ(again.fingerprint(), fp);
  const std::string other = dir / "other.h5";
  write_corpus_file(other, make_content(41, false));
  CorpusReader r2(other);
  EXPECT_NE(r2.fingerprint(), fp);
  EXPECT_FALSE(r2.info().has_text);
  EXPECT_THROW(r2.read_text("src", 0, 1), aiayn::Error);
}

TEST(CorpusReader, BadFileMatrix) {
  TempDir dir;
  int n = 0;
  // A damaged variant of a valid file: `mutate` edits the content before writing, `edit` the HDF5 file after.
  auto variant = [&](const std::function<void(CorpusContent&)>& mutate,
                     const std::function<void(hid_t)>& edit = nullptr) {
    const std::string path = dir / ("bad" + std::to_string(n++) + ".h5");
    CorpusContent c = make_content(30, true);
    if (mutate) mutate(c);
    write_corpus_file(path, c);
    if (edit) with_file(path, edit);
    return path;
  };

  {  // missing path
    SCOPED_TRACE("missing");
    expect_refused(dir / "nope.h5", {dir / "nope.h5", "no such file"});
  }
  {  // not HDF5
    SCOPED_TRACE("not hdf5");
    const std::string p = dir / "text.h5";
    std::ofstream(p) << "this is not an HDF5 file\n";
    expect_refused(p, {p, "not an HDF5 file"});
  }
  {  // truncated
    SCOPED_TRACE("truncated");
    const std::string p = variant(nullptr);
    std::filesystem::resize_file(p, std::filesystem::file_size(p) / 2);
    expect_refused(p, {p});
  }
  {
    SCOPED_TRACE("missing dataset");
    const std::string p = variant(nullptr, [](hid_t f) { H5Ldelete(f, "/tgt/offsets", H5P_DEFAULT); });
    expect_refused(p, {p, "/tgt/offsets", "missing"});
  }
  {
    SCOPED_TRACE("missing group");
    const std::string p = variant(nullptr, [](hid_t f) { H5Ldelete(f, "/src", H5P_DEFAULT); });
    expect_refused(p, {p, "/src/tokens", "missing"});
  }
  {
    SCOPED_TRACE("float tokens");
    const std::string p = variant(nullptr, [](hid_t f) { replace_dataset(f, "/src/tokens", H5T_IEEE_F32LE, 10); });
    expect_refused(p, {p, "/src/tokens", "dtype"});
  }
  {
    SCOPED_TRACE("int32 offsets");
    const std::string p = variant(nullptr, [](hid_t f) { replace_dataset(f, "/tgt/offsets", H5T_STD_I32LE, 31); });
    expect_refused(p, {p, "/tgt/offsets", "dtype"});
  }
  {
    SCOPED_TRACE("2-d tokens");
    const std::string p = variant(nullptr, [](hid_t f) {
      H5Ldelete(f, "/src/tokens", H5P_DEFAULT);
      hsize_t dims[2] = {2, 3};
      hid_t space = H5Screate_simple(2, dims, nullptr);
      H5Dclose(H5Dcreate2(f, "/src/tokens", H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
      H5Sclose(space);
    });
    expect_refused(p, {p, "/src/tokens", "one-dimensional"});
  }
  {
    SCOPED_TRACE("offsets decreasing");
    const std::string p = variant([](CorpusContent& c) { std::swap(c.src_offsets[12], c.src_offsets[13]); });
    expect_refused(p, {p, "/src/offsets[13]", "strictly increasing"});
  }
  {
    SCOPED_TRACE("offsets not from 0");
    const std::string p = variant([](CorpusContent& c) { c.tgt_offsets[0] = 1; });
    expect_refused(p, {p, "/tgt/offsets[0]", "start at 0"});
  }
  {
    SCOPED_TRACE("offsets past the end");
    const std::string p = variant([](CorpusContent& c) { c.tgt_offsets.back() += 5; });
    expect_refused(p, {p, "/tgt/offsets[30]", "past the end"});
  }
  {
    SCOPED_TRACE("offsets short of the end");
    const std::string p = variant([](CorpusContent& c) { c.src_tokens.push_back(3); });
    expect_refused(p, {p, "/src/offsets[30]", "must equal the data size"});
  }
  {
    SCOPED_TRACE("id too large");
    const std::string p = variant([](CorpusContent& c) { c.tgt_tokens[17] = kVocab; });
    expect_refused(p, {p, "/tgt/tokens[17]", "outside"});
  }
  {
    SCOPED_TRACE("id negative");
    const std::string p = variant([](CorpusContent& c) { c.src_tokens[5] = -4; });
    expect_refused(p, {p, "/src/tokens[5]", "outside"});
  }
  {
    SCOPED_TRACE("no EOS");
    const std::string p = variant([](CorpusContent& c) { c.src_tokens[0] = 7; });
    expect_refused(p, {p, "/src/tokens[0]", "EOS"});
  }
  {
    SCOPED_TRACE("pairs attribute mismatch");
    const std::string p = variant([](CorpusContent& c) { c.pairs = 29; });
    expect_refused(p, {p, "/src/offsets", "pairs"});
  }
  {
    SCOPED_TRACE("src/tgt pair counts differ");
    const std::string p = variant([](CorpusContent& c) {
      c.tgt_offsets.pop_back();
      c.tgt_offsets.back() = int64_t(c.tgt_tokens.size());
    });
    expect_refused(p, {p, "/tgt/offsets", "pairs"});
  }
  {
    SCOPED_TRACE("empty corpus");
    const std::string p = variant([](CorpusContent& c) { c = make_content(0, false); });
    expect_refused(p, {p, "pairs", "empty"});
  }
  {
    SCOPED_TRACE("wrong format");
    const std::string p = variant([](CorpusContent& c) { c.format = "aiayn-checkpoint"; });
    expect_refused(p, {p, "format", "aiayn-checkpoint"});
  }
  {
    SCOPED_TRACE("future version");
    const std::string p = variant([](CorpusContent& c) { c.version = 2; });
    expect_refused(p, {p, "version", "newer"});
  }
  {
    SCOPED_TRACE("missing attribute");
    const std::string p = variant(nullptr, [](hid_t f) { H5Adelete(f, "vocab_size"); });
    expect_refused(p, {p, "vocab_size", "missing"});
  }
  {
    SCOPED_TRACE("text offsets decreasing");
    const std::string p = variant([](CorpusContent& c) { c.tgt_text_offsets[4] = 1000; });
    expect_refused(p, {p, "/tgt/text_offsets[4]"});
  }
  {
    SCOPED_TRACE("text on one side only");
    const std::string p = variant(nullptr, [](hid_t f) { H5Ldelete(f, "/src/text", H5P_DEFAULT); });
    expect_refused(p, {p, "/src/text", "missing"});
  }
}

// Single-byte damage anywhere in a file either goes unnoticed (padding, raw text) or is refused with an
// aiayn::Error; it never crashes. (Relies on the checksummed 1.8+ metadata format the writer selects.)
TEST(CorpusReader, ByteFlipsAreRefusedOrHarmless) {
  TempDir dir;
  const std::string good = dir / "good.h5", bad = dir / "bad.h5";
  write_corpus_file(good, make_content(30, true));
  std::ifstream in(good, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  int refused = 0, accepted = 0;
  for (size_t pos = 0; pos < bytes.size(); pos += 5) {
    std::string damaged = bytes;
    damaged[pos] = char(damaged[pos] ^ 0x5a);
    std::ofstream(bad, std::ios::binary | std::ios::trunc) << damaged;
    try {
      CorpusReader r(bad);
      std::vector<int64_t> all;
      for (int64_t i = 0; i < r.info().pairs; ++i) all.push_back(i);
      r.read_pairs(all);
      r.read_text("src", 0, r.info().pairs);
      ++accepted;
    } catch (const aiayn::Error& e) {
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
      ++refused;
    }
  }
  EXPECT_GT(refused, accepted);  // most bytes are checksummed metadata, offsets or ids
}
