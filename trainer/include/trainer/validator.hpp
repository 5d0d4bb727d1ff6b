#pragma once
// Validation during training: the teacher-forced loss on the whole validation set every train.valid_every
// steps, and BLEU on its first train.valid_bleu_sentences pairs every train.valid_bleu_every steps (beam
// search with the config's eval section, decoded exactly as `aiayn eval --bleu --sentences N` decodes them).
// Every rank takes part and gets the same numbers.
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

struct ValidLoss {
  double loss = 0, ppl = 0, acc = 0;  // nats per target token (no smoothing), exp(loss), token accuracy
};

class Validator {
 public:
  // Opens DATA/valid.h5 when the config asks for any validation. Throws, naming the file or key, when
  // validation BLEU or early stopping is configured but the file (or its raw text) is missing.
  Validator(const Config& cfg, const std::string& data_dir, const std::string& tokenizer_bytes);

  bool loss_due(int64_t step) const { return valid_ && every_loss_ > 0 && step % every_loss_ == 0; }
  bool bleu_due(int64_t step) const { return valid_ && every_bleu_ > 0 && step % every_bleu_ == 0; }

  ValidLoss loss(Model<float>& model, comm::Communicator& comm) const;
  BleuEvaluation bleu(Model<float>& model, comm::Communicator& comm) const;

 private:
  std::unique_ptr<data::CorpusReader> valid_;
  std::unique_ptr<data::Tokenizer> tokenizer_;
  int64_t every_loss_ = 0, every_bleu_ = 0, bleu_sentences_ = 0, batch_tokens_ = 0, max_tokens_per_rank_ = 0;
  BeamOptions beam_;
};

}  // namespace aiayn::trainer
