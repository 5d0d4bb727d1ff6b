// aiayn bench --config FILE.yaml [--set ...] --vocab V --sentences B --src-len S --tgt-len T [--steps N] [--token-dist uniform|zipf]
#include <cstdio>
#include <memory>

#include "commands.hpp"
#include "trainer/bench.hpp"

namespace aiayn::launch {

void add_bench_command(CLI::App& app, Context& ctx) {
  auto o = std::make_shared<trainer::BenchOptions>();
  CLI::App* cmd = app.add_subcommand("bench", "Time training steps on synthetic batches; prints one JSON line");
  cmd->add_option("--config", o->config_path, "YAML preset")->required();
  cmd->add_option("--set", o->overrides, "override a config key: section.key=value (repeatable)");
  cmd->add_option("--vocab", o->vocab, "vocabulary size")->capture_default_str();
  cmd->add_option("--sentences", o->sentences, "pairs per batch (B)")->capture_default_str();
  cmd->add_option("--src-len", o->src_len, "source tokens per pair (S)")->capture_default_str();
  cmd->add_option("--tgt-len", o->tgt_len, "target tokens per pair (T)")->capture_default_str();
  cmd->add_option("--steps", o->steps, "timed steps")->capture_default_str();
  cmd->add_option("--warmup-steps", o->warmup_steps, "untimed steps first")->capture_default_str();
  cmd->add_option("--peak-tflops", o->peak_tflops, "peak TFLOP/s for MFU on a GPU")->capture_default_str();
  cmd->add_option("--token-dist", o->token_dist, "token ids: uniform over [4, V), or zipf (BOS/EOS and 1/rank, as in real corpora)")
      ->check(CLI::IsMember({"uniform", "zipf"}))
      ->capture_default_str();
  cmd->add_flag("--profile", o->profile, "also time every op (a table on stderr; on a GPU each op is synchronised)");
  cmd->callback([o, &ctx]() {
    std::printf("%s\n", trainer::run_bench(*o).dump().c_str());
    if (o->profile) std::fprintf(stderr, "%s", trainer::bench_profile_table(o->steps).c_str());
    ctx.status = 0;
  });
}

}  // namespace aiayn::launch
