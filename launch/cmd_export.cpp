// aiayn export --checkpoint FILE --format ctranslate2 --out DIR [--python PY] [--quantization Q] [--force]
// A directory that ctranslate2.Translator(DIR) loads, with the SentencePiece model beside it (see export.hpp).
#include <memory>

#include "commands.hpp"
#include "trainer/export.hpp"

namespace aiayn::launch {

void add_export_command(CLI::App& app, Context& ctx) {
  auto opts = std::make_shared<trainer::ExportOptions>();
  CLI::App* cmd = app.add_subcommand("export", "Export a checkpoint for a serving engine (CTranslate2)");
  cmd->add_option("--checkpoint", opts->checkpoint, "checkpoint file (e.g. RUN/averaged.h5)")->required();
  cmd->add_option("--format", opts->format, "target format (ctranslate2)");
  cmd->add_option("--out", opts->out, "output model directory (written only when the export completes)")->required();
  cmd->add_option("--python", opts->python, "Python with the ctranslate2 package (default: $AIAYN_PYTHON, else python3)");
  cmd->add_option("--quantization", opts->quantization, "weight type saved (default float32; e.g. int8, float16)");
  cmd->add_option("--max-positions", opts->max_positions, "rows of the positional table written into the model");
  cmd->add_flag("--force", opts->force, "replace an existing non-empty --out");
  cmd->callback([opts, &ctx]() {
    trainer::run_export(*opts);
    ctx.status = 0;
  });
}

}  // namespace aiayn::launch
