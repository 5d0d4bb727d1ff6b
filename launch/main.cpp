// aiayn: the command line. Parses, runs one subcommand, and turns errors into exit statuses:
// 0 done, 1 error (one line on stderr naming the cause), 2 usage; a training run stopped by a signal exits
// with kStoppedBySignal (see README).
#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>

#include "aiayn/error.hpp"
#include "commands.hpp"

int main(int argc, char** argv) {
  using namespace aiayn::launch;
  CLI::App app{"aiayn: the Transformer of \"Attention Is All You Need\" for machine translation"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "aiayn 0.1");
  Context ctx;
  ctx.argc = &argc;
  ctx.argv = &argv;
  // Registration, one line per subcommand (cmd_<name>.cpp).
  // [commands]
  add_bleu_command(app, ctx);
  add_average_command(app, ctx);
  add_train_command(app, ctx);
  add_bench_command(app, ctx);
  add_prepare_command(app, ctx);
  add_eval_command(app, ctx);
  add_translate_command(app, ctx);
  add_check_data_command(app, ctx);
  // [/commands]
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
