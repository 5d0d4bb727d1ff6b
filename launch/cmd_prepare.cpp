// aiayn prepare --train-src F --train-tgt F [--valid-src F --valid-tgt F] [--test-src F --test-tgt F]
//               [--vocab-size N] [--max-len N] [--max-ratio R] [--spm-sample N] [--threads N] --out DIR
// aiayn prepare --synthetic [--pairs N] [--seed S] [--vocab-size N] --out DIR
// A thin wrapper over data/prepare.hpp: the report goes to stderr, the output directory to stdout.
#include <iostream>
#include <memory>
#include <string>

#include "aiayn/error.hpp"
#include "commands.hpp"
#include "data/prepare.hpp"

namespace aiayn::launch {
namespace {

struct PrepareArgs {
  data::PrepareOptions options;
  bool synthetic = false;
  int64_t pairs = data::SyntheticOptions().train_pairs;
  uint64_t seed = data::SyntheticOptions().seed;
  int vocab_size = 0;  // 0: 37000 for text, 1000 for --synthetic
};

void run_prepare(PrepareArgs& a) {
  AIAYN_CHECK(!a.options.out_dir.empty(), "prepare: --out DIR is required");
  data::PrepareReport report;
  if (a.synthetic) {
    AIAYN_CHECK(a.options.train_src.empty() && a.options.train_tgt.empty() && a.options.valid_src.empty() &&
                    a.options.test_src.empty(),
                "prepare: --synthetic generates its own text; do not give --train-src/--valid-src/--test-src");
    data::SyntheticOptions s;
    s.train_pairs = a.pairs;
    s.seed = a.seed;
    report = data::prepare_synthetic(s, a.options.out_dir, a.vocab_size > 0 ? a.vocab_size : 1000);
  } else {
    AIAYN_CHECK(!a.options.train_src.empty() && !a.options.train_tgt.empty(),
                "prepare: --train-src and --train-tgt are required (or --synthetic)");
    if (a.vocab_size > 0) a.options.vocab_size = a.vocab_size;
    report = data::prepare_corpus(a.options);
  }
  std::cerr << report.to_string();
  std::cout << a.options.out_dir << std::endl;
}

}  // namespace

void add_prepare_command(CLI::App& app, Context& ctx) {
  auto args = std::make_shared<PrepareArgs>();
  data::PrepareOptions& o = args->options;
  CLI::App* cmd = app.add_subcommand("prepare", "Train the SentencePiece BPE model and write the HDF5 corpus files");
  cmd->add_option("--train-src", o.train_src, "training source text (plain or .gz, one sentence a line)");
  cmd->add_option("--train-tgt", o.train_tgt, "training target text, aligned with --train-src");
  cmd->add_option("--valid-src", o.valid_src, "validation source text");
  cmd->add_option("--valid-tgt", o.valid_tgt, "validation target text");
  cmd->add_option("--test-src", o.test_src, "test source text");
  cmd->add_option("--test-tgt", o.test_tgt, "test target text");
  cmd->add_option("--vocab-size", args->vocab_size, "SentencePiece vocabulary size (default 37000; 1000 synthetic)")
      ->check(CLI::Range(9, 1 << 24));
  cmd->add_option("--max-len", o.max_len, "drop training pairs with a side over N tokens, EOS included")
      ->capture_default_str()
      ->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--max-ratio", o.max_ratio, "drop training pairs whose longer side exceeds R times the shorter")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 1e9));
  cmd->add_option("--spm-sample", o.spm_sample,
                  "train SentencePiece on N training sentences (both sides), shuffled with a fixed seed; 0: all")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(0), int64_t(1) << 40));
  cmd->add_option("--threads", o.num_threads, "threads for SentencePiece training and encoding (0: every core)")
      ->capture_default_str()
      ->check(CLI::Range(0, 4096));
  cmd->add_option("--out", o.out_dir, "output directory: train.h5, valid.h5, test.h5, tokenizer.model")->required();
  cmd->add_flag("--synthetic", args->synthetic, "generate the synthetic language pair instead of reading text");
  cmd->add_option("--pairs", args->pairs, "synthetic training pairs (500 valid and 500 test come with them)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(1), int64_t(1) << 32));
  cmd->add_option("--seed", args->seed, "synthetic generator seed")->capture_default_str();
  cmd->callback([args, &ctx] {
    run_prepare(*args);
    ctx.status = 0;
  });
}

}  // namespace aiayn::launch
