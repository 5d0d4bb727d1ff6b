// prepare_corpus: stream aligned text (plain or gzip), train the joint SentencePiece BPE model on a fixed-seed
// sample of the training lines, encode every split block by block on every core with EOS appended, filter
// training pairs, and write the HDF5 splits (through spool files, see CorpusStreamWriter) and the tokenizer
// atomically. Memory: the tokenizer sample, two blocks of text, the offsets; not the corpus.
#include "data/prepare.hpp"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <future>
#include <limits>
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

// Reads a plain or gzip-compressed text file (zlib reads both) line by line, without line endings ("\n", and a
// "\r" before it). A last line without a newline counts; an empty last "line" after the final newline does not.
class LineReader {
 public:
  explicit LineReader(std::string path) : path_(std::move(path)), buffer_(size_t(1) << 20) {
    std::error_code ec;
    AIAYN_CHECK(std::filesystem::is_regular_file(path_, ec), fmt::format("{}: no such file", path_));
    file_ = gzopen(path_.c_str(), "rb");
    AIAYN_CHECK(file_ != nullptr, fmt::format("{}: cannot open", path_));
    gzbuffer(file_, 1 << 18);
  }
  ~LineReader() {
    if (file_) gzclose(file_);
  }
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  const std::string& path() const { return path_; }
  int64_t lines_read() const { return lines_; }

  bool next(std::string* line) {
    line->clear();
    bool partial = false;
    for (;;) {
      if (pos_ == end_) {
        if (eof_) break;
        const int n = gzread(file_, buffer_.data(), unsigned(buffer_.size()));
        if (n < 0) {
          int code = 0;
          AIAYN_FAIL(fmt::format("{}: read error after line {}: {}", path_, lines_, gzerror(file_, &code)));
        }
        if (n == 0) {
          eof_ = true;
          break;
        }
        pos_ = 0;
        end_ = size_t(n);
      }
      const char* from = buffer_.data() + pos_;
      const auto* newline = static_cast<const char*>(std::memchr(from, '\n', end_ - pos_));
      if (newline) {
        line->append(from, size_t(newline - from));
        pos_ = size_t(newline - buffer_.data()) + 1;
        return finish_line(line);
      }
      line->append(from, end_ - pos_);
      pos_ = end_;
      partial = true;
    }
    return partial ? finish_line(line) : false;
  }

 private:
  bool finish_line(std::string* line) {
    if (!line->empty() && line->back() == '\r') line->pop_back();
    ++lines_;
    return true;
  }
  std::string path_;
  gzFile file_ = nullptr;
  std::vector<char> buffer_;
  size_t pos_ = 0, end_ = 0;
  bool eof_ = false;
  int64_t lines_ = 0;
};

// Reads the next pair from two aligned files; false at the end of both. Files of different lengths are an
// error naming both files and their line counts (the longer one is counted to its end).
bool next_pair(LineReader& src, LineReader& tgt, std::string* s, std::string* t, const char* split) {
  const bool has_s = src.next(s), has_t = tgt.next(t);
  if (has_s == has_t) return has_s;
  LineReader& longer = has_s ? src : tgt;
  std::string rest;
  while (longer.next(&rest)) {
  }
  AIAYN_FAIL(fmt::format("{} has {} lines but {} has {}: the {} files must be aligned line by line", src.path(),
                         src.lines_read(), tgt.path(), tgt.lines_read(), split));
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
  explicit LinesIterator(const std::vector<std::string>& lines) : lines_(lines) {}
  bool done() const override { return next_ >= lines_.size(); }
  void Next() override { ++next_; }
  const std::string& value() const override { return lines_[next_]; }
  sentencepiece::util::Status status() const override { return sentencepiece::util::Status(); }

 private:
  const std::vector<std::string>& lines_;
  size_t next_ = 0;
};

// The tokenizer's training sentences: the non-empty training lines of both sides, shuffled with a fixed seed,
// the first `sample` of them (all when sample <= 0). Line j of side k gets the key mix64(seed ^ (2j + k)); the
// `sample` smallest keys are kept in a bounded max-heap while the files stream past, so memory holds the sample
// only. The sample is handed over in file order (all source lines, then all target lines), so a corpus smaller
// than the sample trains the tokenizer exactly as before sampling existed. Also counts the training pairs and
// checks that the files are aligned.
struct TokenizerSample {
  std::vector<std::string> lines;  // source lines then target lines, each side in file order
  int64_t pairs = 0, nonempty = 0;
};

TokenizerSample sample_training_lines(const PrepareOptions& o) {
  constexpr uint64_t kSeed = 0x5eed5a3b1e5ULL;
  const size_t cap = o.spm_sample > 0 ? size_t(o.spm_sample) : std::numeric_limits<size_t>::max();
  struct Sampled {
    uint64_t key, order;  // order: side * 2^62 + line
    std::string text;
  };
  std::vector<Sampled> heap;  // max-heap by key
  const auto by_key = [](const Sampled& a, const Sampled& b) { return a.key < b.key; };
  TokenizerSample out;
  LineReader src(o.train_src), tgt(o.train_tgt);
  std::string line[2];
  while (next_pair(src, tgt, &line[0], &line[1], "training")) {
    for (int side = 0; side < 2; ++side) {
      if (line[side].empty()) continue;
      ++out.nonempty;
      const uint64_t key = kernels::mix64(kSeed ^ (2 * uint64_t(out.pairs) + uint64_t(side)));
      const uint64_t order = (uint64_t(side) << 62) + uint64_t(out.pairs);
      if (heap.size() < cap) {
        heap.push_back({key, order, std::move(line[side])});
        std::push_heap(heap.begin(), heap.end(), by_key);
      } else if (key < heap.front().key) {
        std::pop_heap(heap.begin(), heap.end(), by_key);
        heap.back() = {key, order, std::move(line[side])};
        std::push_heap(heap.begin(), heap.end(), by_key);
      }
    }
    ++out.pairs;
  }
  std::sort(heap.begin(), heap.end(), [](const Sampled& a, const Sampled& b) { return a.order < b.order; });
  out.lines.reserve(heap.size());
  for (Sampled& sampled : heap) out.lines.push_back(std::move(sampled.text));
  return out;
}

// SentencePiece records num_threads in the model it writes (and so in its hash, which every corpus file
// carries); the pieces do not depend on it. A fixed value keeps the model, and every file, the same whatever
// --threads is; SentencePiece's BPE trainer does most of its work on one thread anyway. 2 is the value aiayn
// always used, so a corpus smaller than the sample gets the very tokenizer (same sha256) it got before.
constexpr int kSpmTrainerThreads = 2;

std::string train_tokenizer(const std::vector<std::string>& lines, const PrepareOptions& o) {
  AIAYN_CHECK(!lines.empty(), fmt::format("{} / {}: the training text is empty", o.train_src, o.train_tgt));
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
      {"num_threads", std::to_string(kSpmTrainerThreads)},
      {"minloglevel", "2"},
  };
  LinesIterator it(lines);
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &it, &model);
  AIAYN_CHECK(status.ok(), fmt::format("SentencePiece training on {} / {} with vocab_size {} failed: {}{}",
                                       o.train_src, o.train_tgt, o.vocab_size, status.ToString(),
                                       status.ToString().find("ocab") != std::string::npos
                                           ? " (try a smaller --vocab-size)"
                                           : ""));
  return model;
}

// Encodes every line of `lines` on `threads` threads, which take chunks of 64 lines from a shared counter;
// each result goes to its line's slot, so the output does not depend on the thread count or the timing.
std::vector<std::vector<int32_t>> encode_all(const Tokenizer& tok, const std::vector<std::string>& lines,
                                            int threads) {
  std::vector<std::vector<int32_t>> out(lines.size());
  constexpr size_t kChunk = 64;
  std::atomic<size_t> next{0};
  std::vector<std::exception_ptr> errors(static_cast<size_t>(threads));
  const auto work = [&](size_t w) {
    try {
      for (size_t first; (first = next.fetch_add(kChunk)) < lines.size();)
        for (size_t i = first; i < std::min(first + kChunk, lines.size()); ++i) out[i] = tok.encode(lines[i]);
    } catch (...) {
      errors[w] = std::current_exception();
      next = lines.size();
    }
  };
  std::vector<std::thread> workers;
  for (size_t w = 1; w < size_t(threads); ++w) workers.emplace_back(work, w);
  work(0);
  for (auto& worker : workers) worker.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

// A block of pairs read from the aligned files: src lines then tgt lines.
struct Block {
  std::vector<std::string> lines;  // [0, n) source, [n, 2n) target
  size_t pairs = 0;
};

Block read_block(LineReader& src, LineReader& tgt, size_t max_pairs, const char* split) {
  Block b;
  std::vector<std::string> s, t;
  s.reserve(max_pairs);
  t.reserve(max_pairs);
  std::string a, c;
  while (s.size() < max_pairs && next_pair(src, tgt, &a, &c, split)) {
    s.push_back(std::move(a));
    t.push_back(std::move(c));
  }
  b.pairs = s.size();
  b.lines = std::move(s);
  b.lines.insert(b.lines.end(), std::make_move_iterator(t.begin()), std::make_move_iterator(t.end()));
  return b;
}

// Streams one split: blocks of kBlockPairs pairs are read (the next one on its own thread while this one is
// encoded on every core), filtered in order and appended to the streaming writer. Memory: two blocks.
SplitReport prepare_split(const std::string& name, const std::string& src_path, const std::string& tgt_path,
                          const Tokenizer& tok, const std::string& tok_sha, const PrepareOptions& o, int threads) {
  constexpr size_t kBlockPairs = 32768;
  const auto start = Clock::now();
  SplitReport r;
  r.name = name;
  r.path = (std::filesystem::path(o.out_dir) / (name + ".h5")).string();
  const bool held_out = name != "train";
  CorpusAttributes attributes;
  attributes.vocab_size = tok.vocab_size();
  attributes.pad_id = kPadId;
  attributes.bos_id = kBosId;
  attributes.eos_id = kEosId;
  attributes.unk_id = kUnkId;
  attributes.tokenizer_sha256 = tok_sha;
  CorpusStreamWriter writer(r.path, attributes, held_out);

  LineReader src(src_path), tgt(tgt_path);
  const auto read_next = [&] { return read_block(src, tgt, kBlockPairs, name.c_str()); };
  std::future<Block> pending = std::async(std::launch::async, read_next);
  std::vector<int32_t> s, t;
  for (;;) {
    Block block = pending.get();
    if (block.pairs == 0) break;
    pending = std::async(std::launch::async, read_next);
    const auto ids = encode_all(tok, block.lines, threads);
    const size_t n = block.pairs;
    for (size_t i = 0; i < n; ++i) {
      ++r.read;
      const std::vector<int32_t>& src_ids = ids[i];
      const std::vector<int32_t>& tgt_ids = ids[n + i];
      const int64_t ls = int64_t(src_ids.size()), lt = int64_t(tgt_ids.size());
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
      s.assign(src_ids.begin(), src_ids.end());
      s.push_back(kEosId);
      t.assign(tgt_ids.begin(), tgt_ids.end());
      t.push_back(kEosId);
      if (held_out)
        writer.add_pair(s, t, block.lines[i], block.lines[n + i]);
      else
        writer.add_pair(s, t);
    }
  }
  AIAYN_CHECK(r.read > 0, fmt::format("{}: the {} split is empty", src_path, name));
  r.kept = writer.pairs();
  r.src_tokens = writer.src_tokens();
  r.tgt_tokens = writer.tgt_tokens();
  AIAYN_CHECK(r.kept > 0, fmt::format("{} / {}: no {} pair survived filtering (max_len {}, max_ratio {})", src_path,
                                      tgt_path, name, o.max_len, o.max_ratio));
  writer.finish();
  r.seconds = seconds_since(start);
  return r;
}

}  // namespace

std::string PrepareReport::to_string() const {
  std::string s = fmt::format("tokenizer: {} ({} pieces{}, sha256 {}), trained on {} of {} sentences in {:.1f} s\n",
                              tokenizer_path, vocab_size,
                              vocab_size < requested_vocab_size
                                  ? fmt::format("; {} requested, the corpus supports fewer", requested_vocab_size)
                                  : std::string(),
                              tokenizer_sha256.substr(0, 16), tokenizer_sentences, training_sentences,
                              tokenizer_seconds);
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

  const int threads = o.num_threads > 0 ? o.num_threads : int(std::max(1u, std::thread::hardware_concurrency()));

  PrepareReport report;
  report.requested_vocab_size = o.vocab_size;
  const auto tok_start = Clock::now();
  std::string model;
  {  // the sample is freed before encoding starts
    const TokenizerSample sample = sample_training_lines(o);
    report.tokenizer_sentences = int64_t(sample.lines.size());
    report.training_sentences = sample.nonempty;
    model = train_tokenizer(sample.lines, o);
  }
  Tokenizer tok = Tokenizer::from_bytes(model);
  report.tokenizer_seconds = seconds_since(tok_start);
  report.vocab_size = tok.vocab_size();
  report.tokenizer_sha256 = tok.sha256();
  report.tokenizer_path = (std::filesystem::path(o.out_dir) / "tokenizer.model").string();
  write_file_atomically(report.tokenizer_path, model);

  report.splits.push_back(prepare_split("train", o.train_src, o.train_tgt, tok, report.tokenizer_sha256, o, threads));
  if (!o.valid_src.empty())
    report.splits.push_back(prepare_split("valid", o.valid_src, o.valid_tgt, tok, report.tokenizer_sha256, o, threads));
  if (!o.test_src.empty())
    report.splits.push_back(prepare_split("test", o.test_src, o.test_tgt, tok, report.tokenizer_sha256, o, threads));
  report.total_seconds = seconds_since(start);
  return report;
}

}  // namespace aiayn::data
