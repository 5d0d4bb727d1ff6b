#pragma once
// Reading a prepared corpus file (train.h5, valid.h5, test.h5) safely.
//
//   /src/tokens  int32 [total source tokens]   all sentences concatenated, each ending in EOS
//   /src/offsets int64 [pairs + 1]             sentence i is tokens[offsets[i] : offsets[i+1]]
//   /tgt/tokens, /tgt/offsets                  the same for the target side
//   /src/text, /tgt/text uint8 + /src/text_offsets, /tgt/text_offsets int64   raw UTF-8 lines (held-out)
//   /src/tokens_crc32, /tgt/tokens_crc32 uint32 [ceil(tokens / checksum_block)]  CRC-32 of each token block
//   attributes: format="aiayn-corpus", version, vocab_size, pad_id, bos_id, eos_id, unk_id,
//               tokenizer_sha256, pairs, checksum_block (tokens per CRC block; absent in older files)
//
// The constructor opens the file read-only and validates it before any work: format, version, datasets, dtypes
// and ranks, offsets from 0, strictly increasing, ending at the token count, equal pair counts, a non-empty
// corpus, and then (check_tokens, the default) every token of both sides in blocks of bounded memory: each id
// in [0, vocab_size), each sentence ending in EOS, and each block's CRC-32 against /src/tokens_crc32 and
// /tgt/tokens_crc32 (see corpus_writer.hpp), so that damage keeping ids in range is caught too. Files written
// before the checksums existed have no `checksum_block` attribute: everything else is checked and
// info().has_checksum is false (callers warn). Ids are checked again on every read. The first problem throws
// aiayn::Error "FILE: DATASET[index]: what is wrong". HDF5's own error printing is off.
// Offsets are read once (the lengths for planning); reads fetch only the pairs asked for (hyperslabs).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace aiayn::data {

struct CorpusInfo {
  std::string path;
  int64_t version = 0;
  int32_t vocab_size = 0, pad_id = 0, bos_id = 0, eos_id = 0, unk_id = 0;
  int64_t pairs = 0;
  std::string tokenizer_sha256;
  bool has_text = false;
  bool has_checksum = false;   // the file carries token checksums (written by prepare since they exist)
  bool tokens_checked = false; // every token was checked at open (ids, EOS, and checksums when present)
  int64_t src_tokens = 0, tgt_tokens = 0;
  double check_seconds = 0;    // time the checks at open took
};

struct Pair {
  std::vector<int32_t> src;  // ends in EOS
  std::vector<int32_t> tgt;  // ends in EOS
};

class CorpusReader {
 public:
  explicit CorpusReader(const std::string& path, bool check_tokens = true);
  ~CorpusReader();
  CorpusReader(const CorpusReader&) = delete;
  CorpusReader& operator=(const CorpusReader&) = delete;

  const CorpusInfo& info() const;
  const std::vector<int32_t>& src_lengths() const;  // tokens per sentence, EOS included
  const std::vector<int32_t>& tgt_lengths() const;

  // The pairs with these corpus indices, in the given order.
  std::vector<Pair> read_pairs(const std::vector<int64_t>& indices) const;
  // Raw text lines [first, first + count) of one side ("src" or "tgt"); requires info().has_text.
  std::vector<std::string> read_text(const std::string& side, int64_t first, int64_t count) const;

  // Identifies the corpus for resume checks: sha256 of the attributes, the offsets and the tokenizer hash.
  std::string fingerprint() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace aiayn::data
