// aiayn average --out F CKPT... | aiayn average --run-dir RUN --last N [--out F]
// The element-wise mean of the inputs' /model tensors (accumulated in float64, names and shapes checked),
// written atomically as a model-only checkpoint with the last input's metadata and /extra (the tokenizer).
// With --run-dir the inputs are the newest N of RUN/checkpoints and the output defaults to RUN/averaged.h5.
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "aiayn/error.hpp"
#include "checkpoints/checkpoint.hpp"
#include "commands.hpp"

namespace aiayn::launch {
namespace {

struct AverageArgs {
  std::string out;
  std::vector<std::string> inputs;
  std::string run_dir;
  int last = 0;
};

void run_average(const AverageArgs& a) {
  std::vector<std::string> inputs = a.inputs;
  std::string out = a.out;
  if (!a.run_dir.empty()) {
    AIAYN_CHECK(inputs.empty(), "average: give either checkpoint files or --run-dir, not both");
    AIAYN_CHECK(a.last >= 1, "average: --run-dir needs --last N with N >= 1");
    const std::string dir = a.run_dir + "/checkpoints";
    const std::vector<std::string> all = checkpoints::list_checkpoints(dir);
    AIAYN_CHECK(all.size() >= static_cast<size_t>(a.last),
                "average: --last " + std::to_string(a.last) + " but " + dir + " holds only " +
                    std::to_string(all.size()) + " checkpoint(s)");
    inputs.assign(all.end() - a.last, all.end());
    if (out.empty()) out = a.run_dir + "/averaged.h5";
  } else {
    AIAYN_CHECK(a.last == 0, "average: --last needs --run-dir");
    AIAYN_CHECK(!inputs.empty(), "average: no checkpoints given (aiayn average --out F CKPT...)");
  }
  AIAYN_CHECK(!out.empty(), "average: --out is required");
  checkpoints::average_checkpoints(inputs, out);
  std::cerr << "averaged " << inputs.size() << " checkpoint(s) into " << out << ":\n";
  for (const std::string& in : inputs) std::cerr << "  " << in << " (step " << checkpoints::read_meta(in).step << ")\n";
  std::cout << out << std::endl;
}

}  // namespace

void add_average_command(CLI::App& app, Context& ctx) {
  auto args = std::make_shared<AverageArgs>();
  CLI::App* cmd = app.add_subcommand("average", "Average checkpoints: the element-wise mean of their model tensors (a model-only file)");
  cmd->add_option("--out", args->out, "output file (default with --run-dir: RUN/averaged.h5)");
  cmd->add_option("--run-dir", args->run_dir, "run directory: average the newest --last N of RUN/checkpoints");
  cmd->add_option("--last", args->last, "how many of the newest checkpoints to average (with --run-dir)");
  cmd->add_option("checkpoints", args->inputs, "checkpoint files to average");
  cmd->callback([args, &ctx] {
    run_average(*args);
    ctx.status = 0;
  });
}

}  // namespace aiayn::launch
