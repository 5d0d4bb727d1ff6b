// `aiayn export` (see export.hpp for the bundle and the staging rule).
#include "trainer/export.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "aiayn/error.hpp"
#include "kernels/positional.hpp"
#include "trainer/evaluate.hpp"

extern char** environ;

namespace aiayn::trainer {

namespace fs = std::filesystem;

namespace {

// The converter script: $AIAYN_EXPORT_SCRIPT, else the one in this source tree (set by CMake).
std::string converter_script() {
  const char* env = std::getenv("AIAYN_EXPORT_SCRIPT");
  if (env && *env) return env;
  return AIAYN_EXPORT_SCRIPT;
}

// Runs argv[0] (looked up on PATH) and returns its exit status; -1 when it could not be started, 128 + signal
// when a signal ended it. `quiet` sends its stdout and stderr to /dev/null.
int run_program(const std::vector<std::string>& args, bool quiet) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (quiet) {
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  }
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return -1;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
}

// Removes the staging folder unless released (any failure after it was made).
struct StagingFolder {
  fs::path path;
  bool keep = false;
  ~StagingFolder() {
    std::error_code ec;
    if (!keep && !path.empty()) fs::remove_all(path, ec);
  }
};

void write_file(const fs::path& path, const void* data, size_t bytes) {
  std::ofstream f(path, std::ios::binary);
  AIAYN_CHECK(f, fmt::format("{}: cannot create", path.string()));
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  f.close();
  AIAYN_CHECK(f, fmt::format("{}: write failed (disk full?)", path.string()));
}

// weights.f32, manifest.json and tokenizer.model of `im` into `dir`.
void write_bundle(const InferenceModel& im, int64_t max_positions, const std::string& quantization, const fs::path& dir) {
  const Model<float>& model = *im.model;
  const int D = model.spec().arch.d_model;
  const size_t n_params = model.num_params();
  std::vector<float> flat(n_params + static_cast<size_t>(max_positions) * D);
  std::copy(model.params(), model.params() + n_params, flat.begin());  // the model lives on the CPU here
  float* pe = flat.data() + n_params;  // [P, D]
  for (int64_t t = 0; t < max_positions; ++t)
    for (int c = 0; c < D; ++c) pe[t * D + c] = kernels::sinusoid(static_cast<int>(t), c, D);
  write_file(dir / "weights.f32", flat.data(), flat.size() * sizeof(float));

  nlohmann::ordered_json m;
  m["format"] = "aiayn-export-bundle";
  m["version"] = 1;
  m["checkpoint"] = im.path;
  m["step"] = im.meta.step;
  m["layers"] = im.config.model.layers;
  m["d_model"] = D;
  m["heads"] = im.config.model.heads;
  m["d_ff"] = im.config.model.d_ff;
  m["pre_norm"] = im.config.model.pre_norm;
  m["layer_norm_epsilon"] = kLayerNormEpsilon;
  m["vocab_size"] = im.vocab.vocab_size;
  m["pad_id"] = im.vocab.pad_id;
  m["unk_id"] = im.vocab.unk_id;
  m["bos_id"] = im.vocab.bos_id;
  m["eos_id"] = im.vocab.eos_id;
  m["quantization"] = quantization;
  nlohmann::json pieces = nlohmann::json::array();
  for (int id = 0; id < im.vocab.vocab_size; ++id) pieces.push_back(im.tokenizer->piece(id));
  m["vocabulary"] = std::move(pieces);
  nlohmann::ordered_json tensors = nlohmann::ordered_json::object();
  for (const ParamView& v : model.table().views()) tensors[v.name] = {{"shape", v.shape}, {"offset", v.offset}};
  m["tensors"] = std::move(tensors);
  m["positions"] = {{"shape", {max_positions, static_cast<int64_t>(D)}}, {"offset", n_params}};
  const std::string text = m.dump(1);
  write_file(dir / "manifest.json", text.data(), text.size());
  const std::string& spm = im.tokenizer->serialized();
  write_file(dir / "tokenizer.model", spm.data(), spm.size());
}

}  // namespace

std::string export_python(const ExportOptions& o) {
  if (!o.python.empty()) return o.python;
  const char* env = std::getenv("AIAYN_PYTHON");
  return env && *env ? std::string(env) : std::string("python3");
}

void run_export(const ExportOptions& o) {
  AIAYN_CHECK(o.format == "ctranslate2", fmt::format("--format: unknown format '{}' (known: ctranslate2)", o.format));
  AIAYN_CHECK(!o.out.empty(), "--out: no directory given");
  AIAYN_CHECK(o.max_positions >= 1, fmt::format("--max-positions must be positive (got {})", o.max_positions));
  fs::path out = fs::path(o.out).lexically_normal();
  if (!out.has_filename() && out.has_parent_path()) out = out.parent_path();  // "DIR/" names DIR
  AIAYN_CHECK(out.has_filename() && out.filename() != "." && out.filename() != "..",
              fmt::format("--out {}: give the model directory's own name", o.out));
  std::error_code ec;
  const bool out_exists = fs::exists(out, ec);
  if (out_exists) {
    AIAYN_CHECK(fs::is_directory(out, ec), fmt::format("--out {}: exists and is not a directory", o.out));
    AIAYN_CHECK(o.force || fs::is_empty(out, ec),
                fmt::format("--out {}: exists and is not empty (--force replaces it)", o.out));
  }

  InferenceModel im = load_inference_model(o.checkpoint, kernels::Device::CPU);
  AIAYN_CHECK(!im.config.model.pre_norm,
              fmt::format("{}: a pre-norm model (model.pre_norm: true); the CTranslate2 export supports the paper's "
                          "post-norm Transformer only",
                          o.checkpoint));
  AIAYN_CHECK(im.tokenizer->vocab_size() == im.vocab.vocab_size,
              fmt::format("{}: the tokenizer has {} pieces but /extra/vocab.yaml says vocab_size {}", o.checkpoint,
                          im.tokenizer->vocab_size(), im.vocab.vocab_size));

  const std::string python = export_python(o);
  const std::string script = converter_script();
  AIAYN_CHECK(fs::is_regular_file(script, ec),
              fmt::format("{}: the converter script is missing (set AIAYN_EXPORT_SCRIPT)", script));
  const int probe = run_program({python, "-c", "import ctranslate2, numpy"}, /*quiet=*/true);
  AIAYN_CHECK(probe != -1, fmt::format("export: cannot run '{}' (set --python or AIAYN_PYTHON to a Python 3 with "
                                       "the ctranslate2 package)", python));
  AIAYN_CHECK(probe == 0, fmt::format("export: '{}' cannot import ctranslate2 (pip install ctranslate2 into it, or "
                                      "point --python / AIAYN_PYTHON at an interpreter that has it)", python));

  // Staging beside --out, so that the final rename stays on one file system.
  const fs::path parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
  AIAYN_CHECK(fs::is_directory(parent, ec), fmt::format("--out {}: the folder {} does not exist", o.out, parent.string()));
  StagingFolder staging;
  staging.path = parent / fmt::format(".{}.export-{}", out.filename().string(), static_cast<long>(getpid()));
  fs::remove_all(staging.path, ec);
  fs::create_directories(staging.path / "bundle", ec);
  AIAYN_CHECK(!ec, fmt::format("{}: cannot create the staging folder ({})", staging.path.string(), ec.message()));
  write_bundle(im, o.max_positions, o.quantization, staging.path / "bundle");

  const fs::path model_dir = staging.path / "model";
  const int rc = run_program({python, script, "--bundle", (staging.path / "bundle").string(), "--out", model_dir.string()},
                             /*quiet=*/false);
  AIAYN_CHECK(rc == 0, fmt::format("export: the converter {} failed (exit status {}); {} was not written", script, rc,
                                   o.out));
  AIAYN_CHECK(fs::is_regular_file(model_dir / "model.bin", ec),
              fmt::format("export: the converter {} wrote no model.bin; {} was not written", script, o.out));
  fs::copy_file(staging.path / "bundle" / "tokenizer.model", model_dir / "tokenizer.model", ec);
  AIAYN_CHECK(!ec, fmt::format("{}: cannot copy the tokenizer model ({})", (model_dir / "tokenizer.model").string(),
                               ec.message()));

  // Commit: move an old --out aside, rename the new model in, then delete the old one.
  fs::path old;
  if (out_exists) {
    old = staging.path / "old";
    fs::rename(out, old, ec);
    AIAYN_CHECK(!ec, fmt::format("--out {}: cannot move the old directory aside ({})", o.out, ec.message()));
  }
  fs::rename(model_dir, out, ec);
  if (ec) {
    std::error_code ec2;
    if (!old.empty()) fs::rename(old, out, ec2);
    AIAYN_FAIL(fmt::format("--out {}: cannot rename the exported model into place ({})", o.out, ec.message()));
  }
}

}  // namespace aiayn::trainer
