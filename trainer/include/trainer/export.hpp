#pragma once
// `aiayn export`: a checkpoint to a serving engine's model directory (CTranslate2).
//
// The C++ side verifies the checkpoint (checksums, saved config, the architecture the engine can run) and writes
// a plain bundle into a staging folder beside --out:
//   weights.f32     the flat float32 parameters as the table lays them out, then the positional table [P, D]
//                   computed by the training kernels' own sinusoid (interleaved sin/cos from position 0)
//   manifest.json   architecture, LayerNorm epsilon, special ids, the vocabulary's pieces, and each tensor's
//                   (shape, offset) in weights.f32
// launch/export_ctranslate2.py builds CTranslate2's TransformerSpec from the bundle with CTranslate2's own
// Python package and saves it; the tokenizer model is copied beside it. Only a complete model is renamed onto
// --out (with --force an old --out is replaced only then); on any failure the staging folder is removed and
// --out is untouched.
#include <cstdint>
#include <string>

namespace aiayn::trainer {

struct ExportOptions {
  std::string checkpoint;
  std::string format = "ctranslate2";
  std::string out;
  std::string python;        // empty: $AIAYN_PYTHON, else python3
  std::string quantization;  // empty: float32 weights; else CTranslate2's names (int8, int8_float32, float16, ...)
  int64_t max_positions = 1024;  // rows of the positional table (longest source, and longest output + 1)
  bool force = false;            // replace an existing non-empty --out
};

// The interpreter `aiayn export` runs: options.python, else $AIAYN_PYTHON, else python3.
std::string export_python(const ExportOptions& options);

// Runs the export; throws aiayn::Error (one line naming the file or option) and leaves --out untouched on failure.
void run_export(const ExportOptions& options);

}  // namespace aiayn::trainer
