#pragma once
// The joint SentencePiece BPE tokenizer. Ids are fixed: pad 0, unk 1, bos 2, eos 3.
#include <memory>
#include <string>
#include <vector>

namespace aiayn::data {

constexpr int kPadId = 0, kUnkId = 1, kBosId = 2, kEosId = 3;

class Tokenizer {
 public:
  static Tokenizer from_file(const std::string& path);
  static Tokenizer from_bytes(const std::string& serialized_model);  // e.g. read from a checkpoint's /extra
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  std::vector<int32_t> encode(const std::string& text) const;   // without EOS
  std::string decode(const std::vector<int32_t>& ids) const;     // stops at nothing: strip EOS/pad first
  int vocab_size() const;
  std::string piece(int id) const;                                // the vocabulary entry of an id ("<s>", "\u2581the")
  const std::string& serialized() const;                          // the model file's bytes
  std::string sha256() const;

 private:
  Tokenizer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace aiayn::data
