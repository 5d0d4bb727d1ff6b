// aiayn train --config FILE.yaml [--set key=value ...] --data DIR --run-dir RUN [--resume]
#include <cstdio>
#include <memory>

#include "comm/communicator.hpp"
#include "commands.hpp"
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
    comm::MpiSession mpi(ctx.argc, ctx.argv);
    auto comm = mpi.active() ? comm::make_mpi_communicator() : comm::make_local_communicator();
    try {
      ctx.status = trainer::run_training(*opts, *comm);
    } catch (const trainer::AgreedError& e) {
      if (comm->rank() == 0) std::fprintf(stderr, "aiayn: error: %s\n", e.what());
      ctx.status = 1;
    } catch (const std::exception& e) {
      if (comm->size() == 1) throw;
      // One rank failed on its own: end every rank now rather than leave peers waiting in a collective.
      std::fprintf(stderr, "aiayn: error: rank %d: %s\n", comm->rank(), e.what());
      std::fflush(stderr);
      comm::abort_job(1);
    }
  });
}

}  // namespace aiayn::launch
