// aiayn: the command line. Parses, runs one subcommand, and turns errors into exit statuses:
// 0 done, 1 error (one line on stderr naming the cause), 2 usage; a training run stopped by a signal exits
// with kStoppedBySignal (see README).
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <string>

#include <CLI/CLI.hpp>

#include "aiayn/error.hpp"
#include "comm/communicator.hpp"
#include "kernels/device.hpp"
#include "commands.hpp"

namespace {

// What a new user meets first: `aiayn` alone, or with a word that is no command, names what was typed and
// lists the commands with one line each (as git does); exit status 2.
int command_list(const CLI::App& app, const char* typed) {
  if (typed != nullptr)
    std::fprintf(stderr, "aiayn: '%s' is not an aiayn command.\n\n", typed);
  else
    std::fprintf(stderr, "aiayn: a command is required.\n\n");
  std::fprintf(stderr, "usage: aiayn <command> [options]    (aiayn <command> --help for its options)\n\ncommands:\n");
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; }))
    std::fprintf(stderr, "  %-11s %s\n", sub->get_name().c_str(), sub->get_description().c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace aiayn::launch;
  CLI::App app{"aiayn: the Transformer of \"Attention Is All You Need\" for machine translation"};
  app.require_subcommand(1);
  // The libraries this binary loads, as the GPU check's first lines (no GPU needed: versions only).
  app.set_version_flag("--version", std::function<std::string()>([] {
    return "aiayn 0.1; " + aiayn::kernels::cuda_versions() + "; " + aiayn::comm::nccl_version();
  }));
  Context ctx;
  ctx.argc = &argc;
  ctx.argv = &argv;
  // Registration, one line per subcommand (cmd_<name>.cpp).
  // [commands]
  add_prepare_command(app, ctx);
  add_train_command(app, ctx);
  add_eval_command(app, ctx);
  add_translate_command(app, ctx);
  add_average_command(app, ctx);
  add_bleu_command(app, ctx);
  add_bench_command(app, ctx);
  add_export_command(app, ctx);
  add_check_data_command(app, ctx);
  // [/commands]
  if (argc < 2) return command_list(app, nullptr);
  if (argv[1][0] != '-' && app.get_subcommands([&](const CLI::App* sub) { return sub->check_name(argv[1]); }).empty())
    return command_list(app, argv[1]);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  } catch (const aiayn::Error& e) {
    std::fprintf(stderr, "aiayn: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "aiayn: error: %s\n", e.what());
    return 1;
  }
  return ctx.status;
}
