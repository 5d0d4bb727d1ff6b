// prepare_corpus: read aligned text (plain or gzip), train the joint SentencePiece BPE model in memory, encode
// every split with EOS appended, filter training pairs, write the HDF5 splits and the tokenizer atomically.
#include "data/prepare.hpp"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>
#include <unordered_map>

#include <fmt/format.h>
#include <sentencepiece_trainer.h>

#include "aiayn/error.hpp"
#include "kernels/dropout_hash.hpp"
#include "data/corpus_writer.hpp"
#include "data/sha256.hpp"
#include "data/tokenizer.hpp"

namespace aiayn::data {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// All lines of a plain or gzip-compressed text file (zlib reads both), without their line endings.
std::vector<std::string> read_lines(const std::string& path) {
  std::error_code ec;
  AIAYN_CHECK(std::filesystem::is_regular_file(path, ec), fmt::format("{}: no such file", path));
  gzFile f = gzopen(path.c_str(), "rb");
  AIAYN_CHECK(f != nullptr, fmt::format("{}: cannot open", path));
  gzbuffer(f, 1 << 18);
  std::vector<std::string> lines;
  std::string partial;
  std::vector<char> buf(1 << 18);
  for (;;) {
    const int n = gzread(f, buf.data(), unsigned(buf.size()));
    if (n < 0) {
      int code = 0;
      const std::string message = gzerror(f, &code);
      gzclose(f);
      AIAYN_FAIL(fmt::format("{}: read error: {}", path, message));
    }
    if (n == 0) break;
    size_t start = 0;
    for (int i = 0; i < n; ++i) {
      if (buf[size_t(i)] == '\n') {
        partial.append(buf.data() + start, size_t(i) - start);
        if (!partial.empty() && partial.back() == '\r') partial.pop_back();
        lines.push_back(std::move(partial));
        partial.clear();
        start = size_t(i) + 1;
      }
    }
    partial.append(buf.data() + start, size_t(n) - start);
  }
  gzclose(f);
  if (!partial.empty()) {
    if (partial.back() == '\r') partial.pop_back();
    lines.push_back(std::move(partial));
  }
  return lines;
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    AIAYN_CHECK(out, fmt::format("{}: cannot create", tmp));
    out.write(bytes.data(), std::streamsize(bytes.size()));
    out.flush();
    AIAYN_CHECK(out, fmt::format("{}: cannot write", tmp));
  }
  const int fd = ::open(tmp.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  AIAYN_CHECK(!ec, fmt::format("{}: cannot rename to {}: {}", tmp, path, ec.message()));
}

class LinesIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LinesIterator(std::vector<const std::string*> lines) : lines_(std::move(lines)) {}
  bool done() const override { return next_ >= lines_.size(); }
  void Next() override { ++next_; }
  const std::string& value() const override { return *lines_[next_]; }
  sentencepiece::util::Status status() const override { return sentencepiece::util::Status(); }

 private:
  std::vector<const std::string*> lines_;
  size_t next_ = 0;
};


std::string train_tokenizer(const std::vector<std::string>& src, const std::vector<std::string>& tgt,
                            const PrepareOptions& o) {
  std::vector<const std::string*> lines;
  lines.reserve(src.size() + tgt.size());
  for (const auto* side : {&src, &tgt})
    for (const auto& line : *side)
      if (!line.empty()) lines.push_back(&line);
  AIAYN_CHECK(!lines.empty(), fmt::format("{} / {}: the training text is empty", o.train_src, o.train_tgt));
  // A deterministic sample for big corpora (SentencePiece's own sampling is seeded from the clock).
  if (o.max_tokenizer_sentences > 0 && int64_t(lines.size()) > o.max_tokenizer_sentences) {
    std::vector<std::pair<uint64_t, const std::string*>> keyed(lines.size());
    for (size_t i = 0; i < lines.size(); ++i) keyed[i] = {kernels::mix64(i), lines[i]};
    std::nth_element(keyed.begin(), keyed.begin() + o.max_tokenizer_sentences, keyed.end());
    keyed.resize(size_t(o.max_tokenizer_sentences));
    std::sort(keyed.begin(), keyed.end());
    lines.clear();
    for (const auto& [key, line] : keyed) lines.push_back(line);
  }
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(o.vocab_size)},
      {"character_coverage", "1.0"},
      {"pad_id", std::to_string(kPadId)},
      {"unk_id", std::to_string(kUnkId)},
      {"bos_id", std::to_string(kBosId)},
      {"eos_id", std::to_string(kEosId)},
      {"pad_piece", "<pad>"},
      {"unk_piece", "<unk>"},
      {"bos_piece", "<s>"},
      {"eos_piece", "</s>"},
      {"hard_vocab_limit", "false"},
      {"input_sentence_size", "0"},
      {"num_threads", std::to_string(std::max(1, o.num_threads))},
      {"minloglevel", "2"},
  };
  LinesIterator it(std::move(lines));
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &it, &model);
  AIAYN_CHECK(status.ok(), fmt::format("SentencePiece training on {} / {} with vocab_size {} failed: {}{}",
                                       o.train_src, o.train_tgt, o.vocab_size, status.ToString(),
                                       status.ToString().find("ocab") != std::string::npos
                                           ? " (try a smaller --vocab-size)"
                                           : ""));
  return model;
}

// Encodes lines[i] for i in [0, n) on up to `threads` threads; the result is independent of the thread count.
std::vector<std::vector<int32_t>> encode_all(const Tokenizer& tok, const std::vector<std::string>& lines,
                                            int threads) {
  std::vector<std::vector<int32_t>> out(lines.size());
  const size_t n = lines.size(), t = size_t(std::max(1, threads));
  std::vector<std::thread> workers;
  std::vector<std::exception_ptr> errors(t);
  for (size_t w = 0; w < t; ++w)
    workers.emplace_back([&, w] {
      try {
        for (size_t i = w * n / t; i < (w + 1) * n / t; ++i) out[i] = tok.encode(lines[i]);
      } catch (...) {
        errors[w] = std::current_exception();
      }
    });
  for (auto& worker : workers) worker.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

SplitReport prepare_split(const std::string& name, const std::string& src_path, const std::string& tgt_path,
                          const Tokenizer& tok, const std::string& tok_sha, const PrepareOptions& o,
                          const std::vector<std::string>* src_lines, const std::vector<std::string>* tgt_lines) {
  const auto start = Clock::now();
  SplitReport r;
  r.name = name;
  r.path = (std::filesystem::path(o.out_dir) / (name + ".h5")).string();
  std::vector<std::string> src_read, tgt_read;
  if (!src_lines) {
    src_read = read_lines(src_path);
    tgt_read = read_lines(tgt_path);
    src_lines = &src_read;
    tgt_lines = &tgt_read;
  }
  AIAYN_CHECK(src_lines->size() == tgt_lines->size(),
              fmt::format("{} has {} lines but {} has {}: the {} files must be aligned line by line", src_path,
                          src_lines->size(), tgt_path, tgt_lines->size(), name));
  AIAYN_CHECK(!src_lines->empty(), fmt::format("{}: the {} split is empty", src_path, name));
  const bool held_out = name != "train";
  const auto src_ids = encode_all(tok, *src_lines, o.num_threads);
  const auto tgt_ids = encode_all(tok, *tgt_lines, o.num_threads);

  CorpusContent c;
  c.has_text = held_out;
  c.vocab_size = tok.vocab_size();
  c.pad_id = kPadId;
  c.bos_id = kBosId;
  c.eos_id = kEosId;
  c.unk_id = kUnkId;
  c.tokenizer_sha256 = tok_sha;
  r.read = int64_t(src_lines->size());
  std::vector<int32_t> s, t;
  for (size_t i = 0; i < src_lines->size(); ++i) {
    const int64_t ls = int64_t(src_ids[i].size()), lt = int64_t(tgt_ids[i].size());
    if (!held_out) {
      if (ls == 0 || lt == 0) {
        ++r.dropped_empty;
        continue;
      }
      if (ls + 1 > o.max_len || lt + 1 > o.max_len) {
        ++r.dropped_too_long;
        continue;
      }
      if (double(std::max(ls, lt)) > o.max_ratio * double(std::min(ls, lt))) {
        ++r.dropped_ratio;
        continue;
      }
    }
    s.assign(src_ids[i].begin(), src_ids[i].end());
    s.push_back(kEosId);
    t.assign(tgt_ids[i].begin(), tgt_ids[i].end());
    t.push_back(kEosId);
    c.add_pair(s, t, (*src_lines)[i], (*tgt_lines)[i]);
  }
  r.kept = c.pairs;
  r.src_tokens = int64_t(c.src_tokens.size());
  r.tgt_tokens = int64_t(c.tgt_tokens.size());
  AIAYN_CHECK(r.kept > 0, fmt::format("{} / {}: no {} pair survived filtering (max_len {}, max_ratio {})", src_path,
                                      tgt_path, name, o.max_len, o.max_ratio));
  write_corpus_file(r.path, c);
  r.seconds = seconds_since(start);
  return r;
}

}  // namespace

std::string PrepareReport::to_string() const {
  std::string s = fmt::format("tokenizer: {} ({} pieces{}, sha256 {}), trained in {:.1f} s\n", tokenizer_path,
                              vocab_size,
                              vocab_size < requested_vocab_size
                                  ? fmt::format("; {} requested, the corpus supports fewer", requested_vocab_size)
                                  : std::string(),
                              tokenizer_sha256.substr(0, 16), tokenizer_seconds);
  for (const auto& r : splits) {
    s += fmt::format("{:5}: {} pairs read, {} kept, dropped {} (empty {}, too long {}, ratio {}); "
                     "{} src + {} tgt tokens; {:.1f} s -> {}\n",
                     r.name, r.read, r.kept, r.dropped_empty + r.dropped_too_long + r.dropped_ratio, r.dropped_empty,
                     r.dropped_too_long, r.dropped_ratio, r.src_tokens, r.tgt_tokens, r.seconds, r.path);
  }
  s += fmt::format("total: {:.1f} s\n", total_seconds);
  return s;
}

PrepareReport prepare_corpus(const PrepareOptions& o) {
  const auto start = Clock::now();
  AIAYN_CHECK(!o.train_src.empty() && !o.train_tgt.empty(), "prepare: --train-src and --train-tgt are required");
  AIAYN_CHECK(o.valid_src.empty() == o.valid_tgt.empty(), "prepare: give both --valid-src and --valid-tgt or neither");
  AIAYN_CHECK(o.test_src.empty() == o.test_tgt.empty(), "prepare: give both --test-src and --test-tgt or neither");
  AIAYN_CHECK(!o.out_dir.empty(), "prepare: --out is required");
  AIAYN_CHECK(o.vocab_size > 8, fmt::format("prepare: vocab_size must be above 8 (got {})", o.vocab_size));
  AIAYN_CHECK(o.max_len >= 2, fmt::format("prepare: max_len must be at least 2 (got {})", o.max_len));
  AIAYN_CHECK(o.max_ratio >= 1.0, fmt::format("prepare: max_ratio must be at least 1 (got {})", o.max_ratio));
  std::error_code ec;
  std::filesystem::create_directories(o.out_dir, ec);
  AIAYN_CHECK(std::filesystem::is_directory(o.out_dir), fmt::format("{}: cannot create the output directory{}",
                                                                    o.out_dir, ec ? ": " + ec.message() : ""));

  PrepareReport report;
  report.requested_vocab_size = o.vocab_size;
  const auto train_src = read_lines(o.train_src);
  const auto train_tgt = read_lines(o.train_tgt);
  AIAYN_CHECK(train_src.size() == train_tgt.size(),
              fmt::format("{} has {} lines but {} has {}: the training files must be aligned line by line",
                          o.train_src, train_src.size(), o.train_tgt, train_tgt.size()));

  const auto tok_start = Clock::now();
  const std::string model = train_tokenizer(train_src, train_tgt, o);
  Tokenizer tok = Tokenizer::from_bytes(model);
  report.tokenizer_seconds = seconds_since(tok_start);
  report.vocab_size = tok.vocab_size();
  report.tokenizer_sha256 = tok.sha256();
  report.tokenizer_path = (std::filesystem::path(o.out_dir) / "tokenizer.model").string();
  write_file_atomically(report.tokenizer_path, model);

  report.splits.push_back(
      prepare_split("train", o.train_src, o.train_tgt, tok, report.tokenizer_sha256, o, &train_src, &train_tgt));
  if (!o.valid_src.empty())
    report.splits.push_back(
        prepare_split("valid", o.valid_src, o.valid_tgt, tok, report.tokenizer_sha256, o, nullptr, nullptr));
  if (!o.test_src.empty())
    report.splits.push_back(
        prepare_split("test", o.test_src, o.test_tgt, tok, report.tokenizer_sha256, o, nullptr, nullptr));
  report.total_seconds = seconds_since(start);
  return report;
}

}  // namespace aiayn::data
