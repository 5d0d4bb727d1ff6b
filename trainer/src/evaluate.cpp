// `aiayn eval` and `aiayn translate` over the incremental decoder (see evaluate.hpp for the determinism rule).
#include "trainer/evaluate.hpp"

#include <fmt/format.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <istream>
#include <numeric>
#include <ostream>

#include "aiayn/error.hpp"
#include "comm/communicator.hpp"
#include "data/batch_planner.hpp"
#include "data/corpus.hpp"
#include "trainer/batch.hpp"
#include "trainer/bleu.hpp"
#include "trainer/runtime.hpp"

namespace aiayn::trainer {

namespace fs = std::filesystem;
namespace k = aiayn::kernels;

InferenceModel load_inference_model(const std::string& checkpoint, k::Device device) {
  AIAYN_CHECK(!checkpoint.empty(), "--checkpoint: no file given");
  AIAYN_CHECK(fs::exists(checkpoint), fmt::format("{}: no such checkpoint file", checkpoint));
  AIAYN_CHECK(fs::is_regular_file(checkpoint), fmt::format("{}: not a file (expected an aiayn checkpoint)", checkpoint));
  InferenceModel im;
  im.path = checkpoint;
  try {
    im.meta = checkpoints::read_meta(checkpoint);
  } catch (const std::exception& e) {
    AIAYN_FAIL(fmt::format("{}: not a readable aiayn checkpoint ({})", checkpoint, e.what()));
  }
  im.config = Config::parse(im.meta.config, checkpoint + " (saved config)");
  std::string tok_bytes, vocab_text;
  AIAYN_CHECK(checkpoints::read_extra(checkpoint, "tokenizer.model", &tok_bytes),
              fmt::format("{}: /extra/tokenizer.model is missing (the checkpoint carries no tokenizer)", checkpoint));
  AIAYN_CHECK(checkpoints::read_extra(checkpoint, "vocab.yaml", &vocab_text),
              fmt::format("{}: /extra/vocab.yaml is missing", checkpoint));
  im.vocab = parse_vocab_yaml(vocab_text, checkpoint + ":/extra/vocab.yaml");
  im.tokenizer = std::make_unique<data::Tokenizer>(data::Tokenizer::from_bytes(tok_bytes));
  ModelSpec spec;
  spec.arch = im.config.model;
  spec.vocab = im.vocab.vocab_size;
  spec.pad_id = im.vocab.pad_id;
  spec.bos_id = im.vocab.bos_id;
  spec.eos_id = im.vocab.eos_id;
  im.model = std::make_unique<Model<float>>(spec, device);
  std::vector<float> host(im.model->num_params());
  checkpoints::load_checkpoint(checkpoint, model_tensors(im.model->table(), host.data()), nullptr, nullptr);
  k::device_copy(device, im.model->params(), k::Device::CPU, host.data(), host.size() * sizeof(float));
  return im;
}

namespace {

// Sentences sorted by (length, index) and cut into batches whose decoder state stays within batch_tokens
// positions: sentences * beam * (longest source + max_len_b + 1) (the self-attention cache rows per layer).
std::vector<std::vector<int64_t>> decode_batches(const std::vector<int32_t>& lengths, const BeamOptions& beam,
                                                 int64_t batch_tokens) {
  std::vector<int64_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lengths[a] < lengths[b]; });
  std::vector<std::vector<int64_t>> batches;
  std::vector<int64_t> cur;
  int64_t longest = 0;
  for (int64_t i : order) {
    const int64_t l = std::max<int64_t>(lengths[i], 1) + beam.max_len_b + 1;
    if (!cur.empty() && static_cast<int64_t>(cur.size() + 1) * std::max(longest, l) * beam.beam > batch_tokens) {
      batches.push_back(std::move(cur));
      cur.clear();
      longest = 0;
    }
    cur.push_back(i);
    longest = std::max(longest, l);
  }
  if (!cur.empty()) batches.push_back(std::move(cur));
  return batches;
}

// [first, last) of n items for `rank` of `world`, contiguous and balanced.
std::pair<size_t, size_t> block_of(size_t n, int rank, int world) {
  return {n * rank / world, n * (rank + 1) / world};
}

std::string hexfloat(double x) { return fmt::format("{:a}", x); }

std::shared_ptr<spdlog::logger> stderr_logger(bool console) {
  std::vector<spdlog::sink_ptr> sinks;
  if (console) sinks.push_back(std::make_shared<spdlog::sinks::stderr_sink_mt>());
  auto log = std::make_shared<spdlog::logger>("eval", sinks.begin(), sinks.end());
  log->set_pattern("%v");
  return log;
}

}  // namespace

BeamOptions resolve_beam(const Config& cfg, int64_t beam, double lenpen, int64_t max_len_b) {
  BeamOptions o;
  o.beam = static_cast<int>(beam > 0 ? beam : cfg.eval.beam);
  o.lenpen = lenpen >= 0 ? lenpen : cfg.eval.lenpen;
  o.max_len_b = static_cast<int>(max_len_b >= 0 ? max_len_b : cfg.eval.max_len_b);
  AIAYN_CHECK(o.beam >= 1, fmt::format("--beam must be at least 1 (got {})", o.beam));
  return o;
}

LossEvaluation teacher_forced_loss(Model<float>& model, data::CorpusReader& corpus, int64_t batch_tokens,
                                   comm::Communicator& comm) {
  const data::CorpusInfo& info = corpus.info();
  const data::BatchPlan plan = data::BatchPlan::build(corpus.src_lengths(), corpus.tgt_lengths(), 0, 0, batch_tokens);
  const auto [b0, b1] = block_of(plan.size(), comm.rank(), comm.size());
  nlohmann::json mine = nlohmann::json::array();
  for (size_t i = b0; i < b1; ++i) {
    const auto& pairs = plan.batch(i).pairs;
    const Batch b = make_batch(corpus.read_pairs(pairs), pairs, info.pad_id, info.bos_id);
    const auto st = model.forward_loss(b, 0.0f);
    mine.push_back({hexfloat(st.nll), st.tokens, st.correct});
  }
  double nll = 0;
  int64_t tokens = 0, correct = 0;
  for (const std::string& part : comm.all_gather_host(mine.dump())) {  // rank order = batch order
    for (const auto& row : nlohmann::json::parse(part)) {
      nll += std::strtod(row[0].get<std::string>().c_str(), nullptr);
      tokens += row[1].get<int64_t>();
      correct += row[2].get<int64_t>();
    }
  }
  LossEvaluation out;
  out.tokens = tokens;
  out.loss = nll / static_cast<double>(std::max<int64_t>(tokens, 1));
  out.ppl = std::exp(out.loss);
  out.acc = static_cast<double>(correct) / static_cast<double>(std::max<int64_t>(tokens, 1));
  return out;
}

BleuEvaluation decode_and_score(Model<float>& model, const data::Tokenizer& tokenizer, data::CorpusReader& corpus,
                                int64_t sentences, const BeamOptions& beam, int64_t batch_tokens,
                                comm::Communicator& comm, BleuTokenize tokenize) {
  const int rank = comm.rank(), world = comm.size();
  const data::CorpusInfo& info = corpus.info();
  AIAYN_CHECK(info.has_text, "the corpus has no raw reference text (/tgt/text) to score BLEU against");
  const int64_t n = sentences > 0 ? std::min<int64_t>(sentences, info.pairs) : info.pairs;
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int32_t> src_len(corpus.src_lengths().begin(), corpus.src_lengths().begin() + n);
  const auto batches = decode_batches(src_len, beam, batch_tokens);
  const auto [d0, d1] = block_of(batches.size(), rank, world);
  IncrementalDecoder<float> decoder(model);
  nlohmann::json hyps_mine = nlohmann::json::array();
  for (size_t i = d0; i < d1; ++i) {
    std::vector<std::vector<int32_t>> srcs;
    for (auto& p : corpus.read_pairs(batches[i])) srcs.push_back(std::move(p.src));
    const auto hyps = beam_search(decoder, srcs, beam);
    for (size_t j = 0; j < hyps.size(); ++j) hyps_mine.push_back({batches[i][j], tokenizer.decode(hyps[j].tokens)});
  }
  std::vector<std::string> hyps(static_cast<size_t>(n));
  for (const std::string& part : comm.all_gather_host(hyps_mine.dump()))
    for (const auto& row : nlohmann::json::parse(part)) hyps.at(row[0].get<int64_t>()) = row[1].get<std::string>();
  BleuEvaluation out;
  out.sentences = n;
  out.decode_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  out.bleu = corpus_bleu(hyps, corpus.read_text("tgt", 0, n), tokenize);
  return out;
}

std::vector<Hypothesis> decode_in_batches(IncrementalDecoder<float>& decoder,
                                          const std::vector<std::vector<int32_t>>& sources,
                                          const BeamOptions& options, int64_t batch_tokens) {
  std::vector<int32_t> lengths;
  for (const auto& s : sources) lengths.push_back(static_cast<int32_t>(s.size()));
  std::vector<Hypothesis> out(sources.size());
  for (const auto& batch : decode_batches(lengths, options, batch_tokens)) {
    std::vector<std::vector<int32_t>> srcs;
    for (int64_t i : batch) srcs.push_back(sources[i]);
    auto hyps = beam_search(decoder, srcs, options);
    for (size_t j = 0; j < batch.size(); ++j) out[batch[j]] = std::move(hyps[j]);
  }
  return out;
}

nlohmann::ordered_json run_eval(const EvalOptions& opt, comm::Communicator& comm) {
  const int rank = comm.rank(), world = comm.size();
  auto log = stderr_logger(rank == 0);
  AIAYN_CHECK(opt.beam >= 0, fmt::format("--beam must be at least 1 (got {})", opt.beam));
  AIAYN_CHECK(opt.batch_tokens > 0, fmt::format("--batch-tokens must be positive (got {})", opt.batch_tokens));
  AIAYN_CHECK(!opt.data.empty() && fs::exists(opt.data), fmt::format("{}: no such data file", opt.data));
  const k::Device device = choose_device(opt.device, comm.local_rank(), *log);
  setup_cpu_threads(opt.threads, &comm);
  InferenceModel im = load_inference_model(opt.checkpoint, device);
  const BeamOptions beam = resolve_beam(im.config, opt.beam, opt.lenpen, opt.max_len_b);

  data::CorpusReader corpus(opt.data);
  const data::CorpusInfo& info = corpus.info();
  if (!info.has_checksum)
    log->warn("{}: no token checksums (prepared by an older aiayn): damage that keeps ids in range cannot be "
              "detected; run `aiayn prepare` again to add them", opt.data);
  const std::string tok_sha = im.tokenizer->sha256();
  AIAYN_CHECK(info.tokenizer_sha256 == tok_sha,
              fmt::format("{}: tokenized with a different tokenizer (sha256 {}) than checkpoint {} carries ({})",
                          opt.data, info.tokenizer_sha256, opt.checkpoint, tok_sha));
  AIAYN_CHECK(info.vocab_size == im.vocab.vocab_size,
              fmt::format("{}: vocab_size {} differs from checkpoint {} ({})", opt.data, info.vocab_size,
                          opt.checkpoint, im.vocab.vocab_size));
  Model<float>& model = *im.model;

  // ---- teacher-forced loss ----
  const LossEvaluation lv = teacher_forced_loss(model, corpus, opt.batch_tokens, comm);
  const double loss = lv.loss;
  const int64_t tokens = lv.tokens;
  nlohmann::ordered_json out;
  out["checkpoint_step"] = im.meta.step;
  out["loss"] = lv.loss;
  out["ppl"] = lv.ppl;
  out["acc"] = lv.acc;
  out["tokens"] = lv.tokens;
  if (rank == 0)
    log->info("eval {} on {}: loss {:.4f} nats/token, ppl {:.3f}, accuracy {:.4f} ({} target tokens, {} pairs)",
              opt.checkpoint, opt.data, loss, std::exp(loss), out["acc"].get<double>(), tokens, info.pairs);
  if (!opt.bleu) return out;

  // ---- beam search and BLEU ----
  AIAYN_CHECK(info.has_text, fmt::format("{}: has no raw reference text (/tgt/text); BLEU needs a held-out split "
                                         "written by `aiayn prepare`", opt.data));
  AIAYN_CHECK(opt.sentences >= 0, fmt::format("--sentences must not be negative (got {})", opt.sentences));
  const BleuEvaluation eval = decode_and_score(model, *im.tokenizer, corpus, opt.sentences, beam, opt.batch_tokens, comm,
                                               parse_bleu_tokenize(opt.bleu_tokenize));
  const BleuResult& bleu = eval.bleu;
  const double decode_s = eval.decode_s;
  out["bleu"] = bleu.score;
  out["signature"] = bleu.signature;
  out["beam"] = beam.beam;
  out["lenpen"] = beam.lenpen;
  out["max_len_b"] = beam.max_len_b;
  out["sentences"] = eval.sentences;
  out["decode_s"] = decode_s;
  if (rank == 0) {
    log->info("{}", bleu.summary_line());
    log->info("{}", bleu.signature);
    log->info("decoded {} sentences in {:.2f} s ({:.1f} sentences/s) with beam {}, lenpen {}, max_len_b {} on {} rank(s)",
              eval.sentences, decode_s, static_cast<double>(eval.sentences) / std::max(decode_s, 1e-9), beam.beam, beam.lenpen,
              beam.max_len_b, world);
  }
  return out;
}

int64_t run_translate(const TranslateOptions& opt, std::istream& in, std::ostream& out) {
  auto log = stderr_logger(true);
  AIAYN_CHECK(opt.beam >= 0, fmt::format("--beam must be at least 1 (got {})", opt.beam));
  AIAYN_CHECK(opt.batch_lines > 0, "--batch-lines must be positive");
  const k::Device device = choose_device(opt.device, 0, *log);
  setup_cpu_threads(opt.threads, nullptr);
  InferenceModel im = load_inference_model(opt.checkpoint, device);
  const BeamOptions beam = resolve_beam(im.config, opt.beam, opt.lenpen, opt.max_len_b);
  IncrementalDecoder<float> decoder(*im.model);
  int64_t count = 0;
  std::vector<std::string> lines;
  auto flush = [&]() {
    std::vector<std::vector<int32_t>> srcs;
    std::vector<size_t> where;
    for (size_t i = 0; i < lines.size(); ++i) {
      std::vector<int32_t> ids = im.tokenizer->encode(lines[i]);
      if (ids.empty()) continue;  // an empty line (or one that encodes to nothing) gives an empty line
      ids.push_back(im.vocab.eos_id);
      srcs.push_back(std::move(ids));
      where.push_back(i);
    }
    std::vector<std::string> text(lines.size());
    const auto hyps = decode_in_batches(decoder, srcs, beam, opt.batch_tokens);
    for (size_t j = 0; j < hyps.size(); ++j) text[where[j]] = im.tokenizer->decode(hyps[j].tokens);
    for (const auto& t : text) out << t << '\n';
    out.flush();
    count += static_cast<int64_t>(lines.size());
    lines.clear();
  };
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
    if (static_cast<int64_t>(lines.size()) >= opt.batch_lines) flush();
  }
  if (!lines.empty()) flush();
  return count;
}

}  // namespace aiayn::trainer
