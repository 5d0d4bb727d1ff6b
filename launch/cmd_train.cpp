// aiayn train --config FILE.yaml [--set key=value ...] --data DIR --run-dir RUN [--resume]
#include <memory>

#include "comm/communicator.hpp"
#include "commands.hpp"
#include "ranks.hpp"
#include "trainer/train.hpp"

namespace aiayn::launch {

void add_train_command(CLI::App& app, Context& ctx) {
  auto opts = std::make_shared<trainer::TrainOptions>();
  CLI::App* cmd = app.add_subcommand("train", "Train a model (under mpirun: one rank per GPU or CPU share)");
  cmd->add_option("--config", opts->config_path, "YAML preset, e.g. launch/configs/base.yaml");
  cmd->add_option("--set", opts->overrides, "override a config key: section.key=value (repeatable)");
  cmd->add_option("--data", opts->data_dir, "prepared corpus directory (train.h5, valid.h5, tokenizer.model)")->required();
  cmd->add_option("--run-dir", opts->run_dir, "run directory (config, logs, metrics, checkpoints)")->required();
  cmd->add_flag("--resume", opts->resume, "continue the run in --run-dir from its last complete checkpoint");
  cmd->callback([opts, &ctx]() {
    run_on_ranks(ctx, [&](comm::Communicator& comm) { return trainer::run_training(*opts, comm); });
  });
}

}  // namespace aiayn::launch
