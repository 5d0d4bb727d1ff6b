#pragma once
// `aiayn eval` and `aiayn translate`: a checkpoint loaded for inference (model, resolved config, tokenizer
// and vocabulary all from the file), teacher-forced loss, beam search, BLEU.
//
// Determinism: the evaluation batches are a pure function of the data file and --batch-tokens, never of the
// number of ranks; ranks take contiguous blocks of batches, per-batch statistics are gathered and summed in
// batch order, hypotheses gathered back into corpus order. Hence the same checkpoint and data give the same
// JSON (decode_s aside) on any number of ranks.
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoints/checkpoint.hpp"
#include "data/tokenizer.hpp"
#include "kernels/device.hpp"
#include "trainer/bleu.hpp"
#include "trainer/config.hpp"
#include "trainer/decoder.hpp"
#include "trainer/model.hpp"
#include "trainer/run_files.hpp"

namespace aiayn::comm {
class Communicator;
}
namespace aiayn::data {
class CorpusReader;
}

namespace aiayn::trainer {

struct InferenceModel {
  std::string path;
  checkpoints::Meta meta;
  Config config;
  VocabInfo vocab;
  std::unique_ptr<data::Tokenizer> tokenizer;
  std::unique_ptr<Model<float>> model;
};

// Loads /model (verified, read-only, no optimizer state), the resolved config, /extra/tokenizer.model and
// /extra/vocab.yaml. Throws aiayn::Error naming the file (missing, not a checkpoint, missing extra, ...).
InferenceModel load_inference_model(const std::string& checkpoint, kernels::Device device);

// Decodes `sources` (each ending in EOS) in batches sorted by length (ties by index) whose decoder state,
// sentences * beam * (longest source + max_len_b + 1) cache rows, stays within `batch_tokens` (a single longer
// sentence gets a batch of its own); results in input order.
std::vector<Hypothesis> decode_in_batches(IncrementalDecoder<float>& decoder,
                                          const std::vector<std::vector<int32_t>>& sources,
                                          const BeamOptions& options, int64_t batch_tokens);

// Decoding batches hold at most this many decoder positions (see decode_in_batches); aiayn eval's default and
// what validation BLEU during training uses, so both decode the same batches.
constexpr int64_t kEvalBatchTokens = 16384;

struct BleuEvaluation {
  BleuResult bleu;
  int64_t sentences = 0;
  double decode_s = 0;
};

struct LossEvaluation {
  double loss = 0, ppl = 0, acc = 0;  // nats per target token (no label smoothing), exp(loss), token accuracy
  int64_t tokens = 0;
};

// Teacher-forced loss over the whole corpus in batches of at most `batch_tokens` padded tokens a side that
// depend on the corpus only; ranks take contiguous blocks of batches and the per-batch sums are added in batch
// order, so every rank count gives the same numbers. `aiayn eval` and validation during training call this.
LossEvaluation teacher_forced_loss(Model<float>& model, data::CorpusReader& corpus, int64_t batch_tokens,
                                   comm::Communicator& comm);

// BLEU of the first `sentences` pairs of `corpus` (all when larger; the corpus must hold the raw text):
// beam search in batches that depend on the sentences only, contiguous blocks of batches per rank,
// hypotheses gathered back into corpus order, scored against the raw reference text. Every rank gets the
// result. `aiayn eval --bleu` and validation BLEU during training both call this, so they agree.
BleuEvaluation decode_and_score(Model<float>& model, const data::Tokenizer& tokenizer, data::CorpusReader& corpus,
                                int64_t sentences, const BeamOptions& beam, int64_t batch_tokens,
                                comm::Communicator& comm, BleuTokenize tokenize = BleuTokenize::k13a);

// The beam options of a config's eval section, overridden where beam > 0, lenpen >= 0, max_len_b >= 0.
BeamOptions resolve_beam(const Config& cfg, int64_t beam, double lenpen, int64_t max_len_b);

struct EvalOptions {
  std::string checkpoint, data;
  bool bleu = false;
  std::string bleu_tokenize = "13a";  // sacreBLEU's --tokenize: 13a | intl | none
  int64_t beam = 0;        // 0: the checkpoint's eval.beam
  double lenpen = -1;      // < 0: the checkpoint's eval.lenpen
  int64_t max_len_b = -1;  // < 0: the checkpoint's eval.max_len_b
  std::string device = "auto";
  int64_t batch_tokens = kEvalBatchTokens;  // loss: padded tokens per side; decoding: see decode_in_batches
  int64_t threads = 0;  // 0: cores / ranks on the node
  int64_t sentences = 0;  // BLEU on the first N pairs only (0 = all), as validation BLEU during training does
};

// Runs the evaluation on every rank; returns the result JSON (the same on every rank) and writes the human
// summary to stderr on rank 0.
nlohmann::ordered_json run_eval(const EvalOptions& options, comm::Communicator& comm);

struct TranslateOptions {
  std::string checkpoint;
  int64_t beam = 0;
  double lenpen = -1;
  int64_t max_len_b = -1;
  std::string device = "auto";
  // Lines read before they are decoded together, and the decoding batch in decoder positions (sentences x beam x
  // (source length + max_len_b + 1)): large enough that a batch of 1000 short sentences is one batch. On 1000
  // sentences of the export test's model, 2 threads, beam 4: 1.17 s against 1.40 s with 256 lines and 16384.
  int64_t batch_lines = 1000;
  int64_t batch_tokens = 65536;
  int64_t threads = 0;
};

// Raw text lines from `in`, detokenized translations to `out`, one line per line (empty in, empty out).
// Returns the number of lines translated.
int64_t run_translate(const TranslateOptions& options, std::istream& in, std::ostream& out);

}  // namespace aiayn::trainer
