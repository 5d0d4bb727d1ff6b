#pragma once
// Writing a corpus file in the format corpus.hpp describes. The writer stores exactly what it is given (it
// validates nothing, so tests can also write damaged files); `prepare` builds valid content with add_pair.
// The file is written to PATH.tmp, flushed, fsynced and renamed to PATH, so PATH is either absent or complete.
//
// Token checksums: /src/tokens_crc32 and /tgt/tokens_crc32 (uint32 [ceil(tokens / block)]) hold the zlib
// CRC-32 of each block of `checksum_block` tokens (a root attribute) as little-endian int32 bytes, so that the
// reader catches damage that keeps ids in range and names the block it is in. Corpora written before these
// existed lack the attribute; the reader then checks what it can (ids, offsets, EOS) and says so.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace aiayn::data {

constexpr int64_t kCorpusVersion = 1;
constexpr const char* kCorpusFormat = "aiayn-corpus";
constexpr int64_t kChecksumBlockTokens = int64_t(1) << 20;

// The CRC-32 of each block of `block` tokens (the last one may be short), over their little-endian bytes.
std::vector<uint32_t> token_block_crc32(const int32_t* tokens, int64_t count, int64_t block = kChecksumBlockTokens);
// Continues a CRC-32 over more tokens (little-endian bytes); start from crc32_tokens(0, nullptr, 0) == 0.
uint32_t crc32_tokens(uint32_t crc, const int32_t* tokens, int64_t count);

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
  bool write_checksums = true;  // false writes a file as aiayn did before token checksums existed

  // Appends one pair; `src` and `tgt` must already end in EOS. Text is stored when has_text is set.
  void add_pair(const std::vector<int32_t>& src, const std::vector<int32_t>& tgt, const std::string& src_line = {},
                const std::string& tgt_line = {});
};

void write_corpus_file(const std::string& path, const CorpusContent& content);

// The attributes of a corpus file other than the counts.
struct CorpusAttributes {
  int32_t vocab_size = 0, pad_id = 0, bos_id = 2, eos_id = 3, unk_id = 1;
  std::string tokenizer_sha256;
};

// Writes a valid corpus file pair by pair in memory bounded by a block, whatever the corpus size: tokens and
// raw text are appended to spool files beside PATH (PATH.<side>.<what>.spool; offsets stay in memory, 8 bytes
// a pair a side), and finish() copies them block by block into contiguous datasets of the now known size,
// with the token checksums, then renames PATH.tmp to PATH. Spool and temporary files are removed on success
// and on failure (by the destructor when finish() was not reached).
class CorpusStreamWriter {
 public:
  CorpusStreamWriter(std::string path, CorpusAttributes attributes, bool has_text);
  ~CorpusStreamWriter();
  CorpusStreamWriter(const CorpusStreamWriter&) = delete;
  CorpusStreamWriter& operator=(const CorpusStreamWriter&) = delete;

  // `src` and `tgt` must already end in EOS; the lines are stored when has_text.
  void add_pair(const std::vector<int32_t>& src, const std::vector<int32_t>& tgt, const std::string& src_line = {},
                const std::string& tgt_line = {});
  int64_t pairs() const;
  int64_t src_tokens() const;
  int64_t tgt_tokens() const;
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace aiayn::data
