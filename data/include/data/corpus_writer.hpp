#pragma once
// Writing a corpus file in the format corpus.hpp describes. The writer stores exactly what it is given (it
// validates nothing, so tests can also write damaged files); `prepare` builds valid content with add_pair.
// The file is written to PATH.tmp, flushed, fsynced and renamed to PATH, so PATH is either absent or complete.
#include <cstdint>
#include <string>
#include <vector>

namespace aiayn::data {

constexpr int64_t kCorpusVersion = 1;
constexpr const char* kCorpusFormat = "aiayn-corpus";

struct CorpusContent {
  std::vector<int32_t> src_tokens{}, tgt_tokens{};
  std::vector<int64_t> src_offsets{0}, tgt_offsets{0};  // [pairs + 1]
  bool has_text = false;                                // held-out splits keep the raw lines
  std::string src_text, tgt_text;                       // concatenated UTF-8 bytes, no separators
  std::vector<int64_t> src_text_offsets{0}, tgt_text_offsets{0};
  // Attributes.
  std::string format = kCorpusFormat;
  int64_t version = kCorpusVersion;
  int32_t vocab_size = 0, pad_id = 0, bos_id = 2, eos_id = 3, unk_id = 1;
  std::string tokenizer_sha256;
  int64_t pairs = 0;

  // Appends one pair; `src` and `tgt` must already end in EOS. Text is stored when has_text is set.
  void add_pair(const std::vector<int32_t>& src, const std::vector<int32_t>& tgt, const std::string& src_line = {},
                const std::string& tgt_line = {});
};

void write_corpus_file(const std::string& path, const CorpusContent& content);

}  // namespace aiayn::data
