#pragma once
// Validation during training: the teacher-forced loss on the whole validation set every train.valid_every
// steps, and BLEU on its first train.valid_bleu_sentences pairs every train.valid_bleu_every steps (beam
// search with the config's eval section). Both are computed by the functions `aiayn eval` calls, with the same
// batches: the loss equals `aiayn eval --batch-tokens N` with N = min(16384, train.max_tokens_per_rank) (the
// validation batches never grow the model's activation memory past training's), the BLEU equals
// `aiayn eval --bleu --sentences M` with M = train.valid_bleu_sentences. Every rank takes part and gets the
// same numbers, whatever the number of ranks.
#include <cstdint>
#include <memory>
#include <string>

#include "data/corpus.hpp"
#include "data/tokenizer.hpp"
#include "trainer/config.hpp"
#include "trainer/evaluate.hpp"
#include "trainer/model.hpp"

namespace aiayn::comm {
class Communicator;
}

namespace aiayn::trainer {

class Validator {
 public:
  // Opens DATA/valid.h5 when the config asks for any validation. Throws, naming the file or key, when
  // validation BLEU or early stopping is configured but the file (or its raw text) is missing.
  Validator(const Config& cfg, const std::string& data_dir, const std::string& tokenizer_bytes);

  bool loss_due(int64_t step) const { return valid_ && every_loss_ > 0 && step % every_loss_ == 0; }
  bool bleu_due(int64_t step) const { return valid_ && every_bleu_ > 0 && step % every_bleu_ == 0; }

  LossEvaluation loss(Model<float>& model, comm::Communicator& comm) const;
  int64_t loss_batch_tokens() const { return loss_batch_tokens_; }
  // The validation set, or null when no validation is configured or DATA/valid.h5 is absent.
  const data::CorpusReader* corpus() const { return valid_.get(); }
  BleuEvaluation bleu(Model<float>& model, comm::Communicator& comm) const;

 private:
  std::unique_ptr<data::CorpusReader> valid_;
  std::unique_ptr<data::Tokenizer> tokenizer_;
  int64_t every_loss_ = 0, every_bleu_ = 0, bleu_sentences_ = 0, loss_batch_tokens_ = 0;
  BeamOptions beam_;
};

}  // namespace aiayn::trainer
