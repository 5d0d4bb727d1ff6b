// The joint SentencePiece tokenizer, loaded from the model file's bytes (so a checkpoint can carry it).
#include "data/tokenizer.hpp"

#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <sentencepiece_processor.h>

#include "aiayn/error.hpp"
#include "data/sha256.hpp"

namespace aiayn::data {

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  std::string serialized;
};

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  AIAYN_CHECK(in, fmt::format("{}: cannot open the tokenizer model", path));
  std::ostringstream bytes;
  bytes << in.rdbuf();
  AIAYN_CHECK(!in.bad(), fmt::format("{}: cannot read the tokenizer model", path));
  try {
    return from_bytes(bytes.str());
  } catch (const Error& e) {
    AIAYN_FAIL(fmt::format("{}: {}", path, e.what()));
  }
}

Tokenizer Tokenizer::from_bytes(const std::string& serialized_model) {
  Tokenizer t;
  const auto status = t.impl_->sp.LoadFromSerializedProto(serialized_model);
  AIAYN_CHECK(status.ok(), fmt::format("not a SentencePiece model: {}", status.ToString()));
  const auto& sp = t.impl_->sp;
  AIAYN_CHECK(sp.pad_id() == kPadId && sp.unk_id() == kUnkId && sp.bos_id() == kBosId && sp.eos_id() == kEosId,
              fmt::format("tokenizer has ids pad={} unk={} bos={} eos={}, expected 0 1 2 3", sp.pad_id(),
                          sp.unk_id(), sp.bos_id(), sp.eos_id()));
  t.impl_->serialized = serialized_model;
  return t;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  const auto status = impl_->sp.Encode(text, &ids);
  AIAYN_CHECK(status.ok(), fmt::format("SentencePiece encode failed: {}", status.ToString()));
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  const int v = vocab_size();
  std::vector<int> in;
  in.reserve(ids.size());
  for (int32_t id : ids) {
    AIAYN_CHECK(id >= 0 && id < v, fmt::format("token id {} outside the vocabulary [0, {})", id, v));
    in.push_back(id);
  }
  std::string text;
  const auto status = impl_->sp.Decode(in, &text);
  AIAYN_CHECK(status.ok(), fmt::format("SentencePiece decode failed: {}", status.ToString()));
  return text;
}

int Tokenizer::vocab_size() const { return impl_->sp.GetPieceSize(); }
std::string Tokenizer::piece(int id) const {
  AIAYN_CHECK(id >= 0 && id < vocab_size(), fmt::format("token id {} outside the vocabulary [0, {})", id, vocab_size()));
  return impl_->sp.IdToPiece(id);
}
const std::string& Tokenizer::serialized() const { return impl_->serialized; }
std::string Tokenizer::sha256() const { return sha256_hex(impl_->serialized); }

}  // namespace aiayn::data
