#pragma once
// `aiayn prepare`: train one joint SentencePiece BPE model on a fixed-seed sample of the training source and
// target text, encode every split (appending EOS), drop bad training pairs, and write DIR/{train,valid,test}.h5
// plus DIR/tokenizer.model. Held-out splits keep every pair and their raw lines. Every file goes to a temporary
// name first. The text streams: memory holds the tokenizer sample and a few blocks, not the corpus, and the
// result does not depend on the number of threads.
//
// Training pairs are dropped when a side is empty, when a side has more than max_len tokens (EOS included),
// or when the longer side has more than max_ratio times the tokens of the shorter one (EOS excluded).
//
// `aiayn prepare --synthetic`: generate_synthetic() writes a small artificial language pair as text, and
// prepare_synthetic() sends it through the same path.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace aiayn::data {

struct PrepareOptions {
  std::string train_src, train_tgt;  // required; plain or .gz text, one sentence a line, aligned
  std::string valid_src, valid_tgt;  // optional (both or neither)
  std::string test_src, test_tgt;    // optional (both or neither)
  std::string out_dir;               // created if missing
  int vocab_size = 37000;            // the requested size; the corpus may support fewer pieces (reported)
  int max_len = 256;                 // tokens per side, EOS included (training pairs only)
  double max_ratio = 3.0;            // longer / shorter side in tokens, EOS excluded (training pairs only)
  int64_t spm_sample = 2000000;  // the tokenizer trains on this many training sentences (both sides together),
                                 // shuffled with a fixed seed; <= 0: all of them
  int num_threads = 0;           // encoding and tokenizer training threads; 0: every core
};

struct SplitReport {
  std::string name;      // "train", "valid", "test"
  std::string path;      // the .h5 written
  int64_t read = 0;      // pairs read
  int64_t kept = 0;
  int64_t dropped_empty = 0, dropped_too_long = 0, dropped_ratio = 0;
  int64_t src_tokens = 0, tgt_tokens = 0;  // kept, EOS included
  double seconds = 0;
};

struct PrepareReport {
  int requested_vocab_size = 0;
  int vocab_size = 0;  // pieces in the trained model
  std::string tokenizer_path, tokenizer_sha256;
  int64_t tokenizer_sentences = 0, training_sentences = 0;  // the sample, and the non-empty training lines
  double tokenizer_seconds = 0, total_seconds = 0;
  std::vector<SplitReport> splits;
  std::string to_string() const;  // the human-readable report `aiayn prepare` prints
};

PrepareReport prepare_corpus(const PrepareOptions& options);

struct SyntheticOptions {
  int64_t train_pairs = 30000;
  int64_t valid_pairs = 500, test_pairs = 500;
  uint64_t seed = 1;
};

struct SyntheticFiles {
  std::string train_src, train_tgt, valid_src, valid_tgt, test_src, test_tgt;
};

// One generated pair of sentences: `stream` separates splits (0 train, 1 valid, 2 test), `index` the pair.
// Deterministic in (seed, stream, index) on every platform.
std::pair<std::string, std::string> synthetic_pair(uint64_t seed, uint64_t stream, uint64_t index);

// Writes TEXT_DIR/{train,valid,test}.{src,tgt} (created if missing), each file via a temporary name.
SyntheticFiles generate_synthetic(const SyntheticOptions& options, const std::string& text_dir);

// generate_synthetic into OUT_DIR/text, then prepare_corpus with the given vocabulary size into OUT_DIR.
PrepareReport prepare_synthetic(const SyntheticOptions& options, const std::string& out_dir, int vocab_size = 1000);

}  // namespace aiayn::data
