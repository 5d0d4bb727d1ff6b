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
#include "trainer/config.hpp"
#include "trainer/decoder.hpp"
#include "trainer/model.hpp"
#include "trainer/run_files.hpp"

namespace aiayn::comm {
class Communicator;
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

struct EvalOptions {
  std::string checkpoint, data;
  bool bleu = false;
  std::string bleu_tokenize = "13a";  // sacreBLEU's --tokenize: 13a | intl | none
  int64_t beam = 0;        // 0: the checkpoint's eval.beam
  double lenpen = -1;      // < 0: the checkpoint's eval.lenpen
  int64_t max_len_b = -1;  // < 0: the checkpoint's eval.max_len_b
  std::string device = "auto";
  int64_t batch_tokens = 16384;  // loss: padded tokens per side; decoding: see decode_in_batches
  int64_t threads = 0;  // 0: cores / ranks on the node
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
  int64_t batch_lines = 256;  // lines read before decoding them
  int64_t batch_tokens = 16384;
  int64_t threads = 0;
};

// Raw text lines from `in`, detokenized translations to `out`, one line per line (empty in, empty out).
// Returns the number of lines translated.
int64_t run_translate(const TranslateOptions& options, std::istream& in, std::ostream& out);

}  // namespace aiayn::trainer
