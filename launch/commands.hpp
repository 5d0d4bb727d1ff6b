#pragma once
// The subcommands of `aiayn`. Each lives in its own cmd_<name>.cpp and registers itself on the app; its
// callback runs the command and stores the exit status in ctx.status. Errors are thrown as aiayn::Error and
// turned into "aiayn: error: ..." and exit status 1 by main.
#include <CLI/CLI.hpp>

namespace aiayn::launch {

struct Context {
  int status = 0;
  int* argc = nullptr;
  char*** argv = nullptr;
};

void add_prepare_command(CLI::App& app, Context& ctx);
void add_train_command(CLI::App& app, Context& ctx);
void add_eval_command(CLI::App& app, Context& ctx);
void add_translate_command(CLI::App& app, Context& ctx);
void add_average_command(CLI::App& app, Context& ctx);
void add_bleu_command(CLI::App& app, Context& ctx);
void add_bench_command(CLI::App& app, Context& ctx);
void add_export_command(CLI::App& app, Context& ctx);
void add_check_data_command(CLI::App& app, Context& ctx);

}  // namespace aiayn::launch
