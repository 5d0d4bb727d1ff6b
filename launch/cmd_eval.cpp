// aiayn eval --checkpoint FILE --data FILE.h5 [--bleu [--tokenize 13a|intl|none]] [--beam K] [--lenpen A] [--max-len-b N]
//            [--device cpu|cuda|auto] [--batch-tokens N] [--sentences N]
// One JSON object on stdout (rank 0), the human summary on stderr. Under mpirun the set is split across ranks.
#include <cstdio>
#include <memory>

#include "comm/communicator.hpp"
#include "aiayn/error.hpp"
#include "commands.hpp"
#include "ranks.hpp"
#include "trainer/evaluate.hpp"

namespace aiayn::launch {

void add_eval_command(CLI::App& app, Context& ctx) {
  auto opts = std::make_shared<trainer::EvalOptions>();
  CLI::App* cmd = app.add_subcommand("eval", "Score a checkpoint on a held-out set: loss, perplexity, accuracy, BLEU");
  cmd->add_option("--checkpoint", opts->checkpoint, "checkpoint file (e.g. RUN/averaged.h5)")->required();
  cmd->add_option("--data", opts->data, "prepared corpus file (e.g. DATA/test.h5)")->required();
  cmd->add_flag("--bleu", opts->bleu, "also beam-search the sources and score BLEU against the raw references");
  cmd->add_option("--tokenize", opts->bleu_tokenize, "BLEU tokenizer, as sacreBLEU's --tokenize: 13a | intl | none")
      ->capture_default_str()
      ->check(CLI::IsMember({"13a", "intl", "none"}));
  CLI::Option* beam_opt = cmd->add_option("--beam", opts->beam, "beam size (1 = greedy; default: the checkpoint's eval.beam)");
  cmd->add_option("--lenpen", opts->lenpen, "length penalty alpha (default: the checkpoint's eval.lenpen)");
  cmd->add_option("--max-len-b", opts->max_len_b, "maximum output length = source length + N (default: eval.max_len_b)");
  cmd->add_option("--device", opts->device, "auto | cpu | cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd->add_option("--batch-tokens", opts->batch_tokens, "loss: padded tokens per batch; decoding: sentences x beam x (source length + max_len_b + 1)");
  cmd->add_option("--sentences", opts->sentences, "BLEU on the first N pairs only (0 = all; training's validation BLEU uses train.valid_bleu_sentences)");
  cmd->add_option("--threads", opts->threads, "CPU threads per rank (0 = cores / ranks on the node)");
  cmd->callback([opts, beam_opt, &ctx]() {
    AIAYN_CHECK(beam_opt->count() == 0 || opts->beam >= 1, "--beam must be at least 1 (got " + std::to_string(opts->beam) + ")");
    run_on_ranks(ctx, [&](comm::Communicator& comm) {
      const auto result = trainer::run_eval(*opts, comm);
      if (comm.rank() == 0) {
        std::printf("%s\n", result.dump().c_str());
        std::fflush(stdout);
      }
      return 0;
    });
  });
}

}  // namespace aiayn::launch
