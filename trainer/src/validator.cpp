// Validation during training (see validator.hpp).
#include "trainer/validator.hpp"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>

#include "aiayn/error.hpp"
#include "comm/communicator.hpp"
#include "data/batch_planner.hpp"
#include "trainer/batch.hpp"

namespace aiayn::trainer {
namespace fs = std::filesystem;

Validator::Validator(const Config& cfg, const std::string& data_dir, const std::string& tokenizer_bytes)
    : every_loss_(cfg.train.valid_every),
      every_bleu_(cfg.train.valid_bleu_every),
      bleu_sentences_(cfg.train.valid_bleu_sentences),
      batch_tokens_(cfg.train.batch_tokens),
      max_tokens_per_rank_(cfg.train.max_tokens_per_rank),
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

// The validation set split across ranks as training splits a batch; sums all-reduced.
ValidLoss Validator::loss(Model<float>& model, comm::Communicator& comm) const {
  const data::CorpusInfo& info = valid_->info();
  const auto& src_len = valid_->src_lengths();
  const auto& tgt_len = valid_->tgt_lengths();
  const data::BatchPlan plan = data::BatchPlan::build(src_len, tgt_len, 0, 0, batch_tokens_);
  double sums[3] = {0, 0, 0};  // nll, tokens, correct
  for (const auto& gb : plan.batches()) {
    for (const auto& mb : data::split_for_rank(gb, src_len, tgt_len, comm.rank(), comm.size(), max_tokens_per_rank_)) {
      const Batch b = make_batch(valid_->read_pairs(mb), mb, info.pad_id, info.bos_id);
      const auto st = model.forward_loss(b, 0.0f);
      sums[0] += st.nll, sums[1] += static_cast<double>(st.tokens), sums[2] += static_cast<double>(st.correct);
    }
  }
  comm.all_reduce_sum_host(sums, 3);
  ValidLoss v;
  v.loss = sums[0] / std::max(1.0, sums[1]);
  v.ppl = std::exp(v.loss);
  v.acc = sums[2] / std::max(1.0, sums[1]);
  return v;
}

BleuEvaluation Validator::bleu(Model<float>& model, comm::Communicator& comm) const {
  return decode_and_score(model, *tokenizer_, *valid_, bleu_sentences_, beam_, kEvalBatchTokens, comm);
}

}  // namespace aiayn::trainer
