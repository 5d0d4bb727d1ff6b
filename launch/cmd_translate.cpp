// aiayn translate --checkpoint FILE [--beam K] [--lenpen A] [--max-len-b N] [--device ...] < src > hyp
// Raw text lines in, detokenized translations out, one line per line.
#include <iostream>
#include <memory>

#include "aiayn/error.hpp"
#include "commands.hpp"
#include "trainer/evaluate.hpp"

namespace aiayn::launch {

void add_translate_command(CLI::App& app, Context& ctx) {
  auto opts = std::make_shared<trainer::TranslateOptions>();
  CLI::App* cmd = app.add_subcommand("translate", "Translate raw text lines from stdin to stdout with beam search");
  cmd->add_option("--checkpoint", opts->checkpoint, "checkpoint file (e.g. RUN/averaged.h5)")->required();
  CLI::Option* beam_opt = cmd->add_option("--beam", opts->beam, "beam size (1 = greedy; default: the checkpoint's eval.beam)");
  cmd->add_option("--lenpen", opts->lenpen, "length penalty alpha (default: the checkpoint's eval.lenpen)");
  cmd->add_option("--max-len-b", opts->max_len_b, "maximum output length = source length + N (default: eval.max_len_b)");
  cmd->add_option("--device", opts->device, "auto | cpu | cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd->add_option("--batch-lines", opts->batch_lines, "lines read before they are decoded together");
  cmd->add_option("--batch-tokens", opts->batch_tokens, "decoding batch size: sentences x beam x (source length + max_len_b + 1)");
  cmd->add_option("--threads", opts->threads, "CPU threads (0 = all cores)");
  cmd->callback([opts, beam_opt, &ctx]() {
    AIAYN_CHECK(beam_opt->count() == 0 || opts->beam >= 1, "--beam must be at least 1 (got " + std::to_string(opts->beam) + ")");
    std::ios::sync_with_stdio(false);
    trainer::run_translate(*opts, std::cin, std::cout);
    ctx.status = 0;
  });
}

}  // namespace aiayn::launch
