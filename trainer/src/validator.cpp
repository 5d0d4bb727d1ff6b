// Validation during training (see validator.hpp).
#include "trainer/validator.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>

#include "aiayn/error.hpp"
#include "comm/communicator.hpp"

namespace aiayn::trainer {
namespace fs = std::filesystem;

Validator::Validator(const Config& cfg, const std::string& data_dir, const std::string& tokenizer_bytes)
    : every_loss_(cfg.train.valid_every),
      every_bleu_(cfg.train.valid_bleu_every),
      bleu_sentences_(cfg.train.valid_bleu_sentences),
      loss_batch_tokens_(std::min(kEvalBatchTokens, cfg.train.max_tokens_per_rank)),
      beam_(resolve_beam(cfg, 0, -1, -1)) {
  if (every_loss_ == 0 && every_bleu_ == 0) return;
  const fs::path path = fs::path(data_dir) / "valid.h5";
  if (!fs::exists(path)) {
    // A loss-only validation without a validation set is skipped (as before); BLEU and early stopping need it.
    AIAYN_CHECK(every_bleu_ == 0, fmt::format("{}: no such file, but config key 'train.valid_bleu_every' is {} "
                                              "(prepare a validation split, or set it to 0)", path.string(), every_bleu_));
    AIAYN_CHECK(cfg.train.patience == 0, fmt::format("{}: no such file, but config key 'train.patience' is {} "
                                                     "(early stopping needs validation)", path.string(), cfg.train.patience));
    return;
  }
  valid_ = std::make_unique<data::CorpusReader>(path.string());
  if (every_bleu_ > 0) {
    AIAYN_CHECK(valid_->info().has_text,
                fmt::format("{}: has no raw reference text (/tgt/text), but config key 'train.valid_bleu_every' is {}",
                            path.string(), every_bleu_));
    tokenizer_ = std::make_unique<data::Tokenizer>(data::Tokenizer::from_bytes(tokenizer_bytes));
    AIAYN_CHECK(valid_->info().tokenizer_sha256 == tokenizer_->sha256(),
                fmt::format("{}: tokenized with a different tokenizer than the training corpus", path.string()));
  }
}

LossEvaluation Validator::loss(Model<float>& model, comm::Communicator& comm) const {
  return teacher_forced_loss(model, *valid_, loss_batch_tokens_, comm);
}

BleuEvaluation Validator::bleu(Model<float>& model, comm::Communicator& comm) const {
  return decode_and_score(model, *tokenizer_, *valid_, bleu_sentences_, beam_, kEvalBatchTokens, comm);
}

}  // namespace aiayn::trainer
