#pragma once
// Checkpoint files: format, atomic save, verified load, retention, averaging.
//
// File (HDF5): /model/<parameter name> float32 with its shape, /optim/m/<name>, /optim/v/<name> (absent in
// averaged files), /extra/<key> uint8 blobs (the tokenizer model travels here, so eval and translate need no
// other file). Attributes on the root: format="aiayn-checkpoint", version, step, epoch, batch_in_epoch,
// seed, config (resolved YAML text), config_hash, corpus_fingerprint, world_size; each dataset carries a
// "checksum" attribute (64-bit FNV-1a of its bytes, hex). Names contain '/', which HDF5 stores as groups.
//
// Save protocol (rank 0 only): write dir/step-NNNNNNNN.h5.tmp, fsync, rename to step-NNNNNNNN.h5, fsync the
// directory, then write LATEST.tmp with the file name, fsync, rename over LATEST, fsync the directory. Only
// after that may old checkpoints be pruned. A failed write leaves no temporary file and throws.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace aiayn::checkpoints {

struct TensorRef {  // host memory, float32
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
};
struct MutableTensorRef {
  std::string name;
  std::vector<int64_t> shape;
  float* data = nullptr;
};

struct Meta {
  int64_t step = 0;
  int64_t epoch = 0;
  int64_t batch_in_epoch = 0;  // the data cursor: the next global batch to run
  uint64_t seed = 0;
  std::string config;             // resolved YAML
  std::string config_hash;
  std::string corpus_fingerprint;
  int64_t world_size = 1;
  int64_t version = 0;            // filled on read
};

struct SaveRequest {
  Meta meta;
  std::vector<TensorRef> model;
  std::vector<TensorRef> adam_m;  // same names and shapes as model; both empty for model-only files
  std::vector<TensorRef> adam_v;
  std::map<std::string, std::string> extra;  // key -> bytes
};

// Writes the checkpoint for meta.step into `dir` (created if missing) and commits LATEST. Returns the path.
std::string save_checkpoint(const std::string& dir, const SaveRequest& request);

// Writes a full checkpoint (optimizer state too, when given) atomically to `path` (tmp + fsync + rename) without
// touching LATEST: the training run's best.h5.
void save_checkpoint_file(const std::string& path, const SaveRequest& request);

// Writes a model-only file (averaging output) atomically to `path` (tmp + fsync + rename).
void save_model_file(const std::string& path, const SaveRequest& request);

// Reads attributes without touching tensors (read-only open).
Meta read_meta(const std::string& path);

// Loads a checkpoint read-only: verifies format/version, every dataset's checksum, names and shapes against
// the given tensors (every requested name must exist with exactly that shape), and fills them.
// adam_m / adam_v may be null (eval, translate, average). Throws aiayn::Error naming the file and dataset.
Meta load_checkpoint(const std::string& path, const std::vector<MutableTensorRef>& model,
                     const std::vector<MutableTensorRef>* adam_m = nullptr,
                     const std::vector<MutableTensorRef>* adam_v = nullptr);

// Reads /extra/<key>; empty optional-like: returns false when absent.
bool read_extra(const std::string& path, const std::string& key, std::string* bytes);

// Full verification (all checksums) without a model: true when the file is a complete, undamaged checkpoint.
// `why` receives the first problem.
bool verify_checkpoint(const std::string& path, std::string* why = nullptr);

// step-NNNNNNNN.h5 files in dir, ascending by step (temporaries ignored).
std::vector<std::string> list_checkpoints(const std::string& dir);

// The checkpoint to resume from: the file LATEST names if it verifies; otherwise (reported through `warn`)
// the newest one that verifies. Empty when there is none.
std::string find_resume_checkpoint(const std::string& dir, const std::function<void(const std::string&)>& warn);

// Retention: keeps the newest max(keep_last, min_keep) checkpoints and the file LATEST names; deletes the rest.
// Returns the deleted paths.
std::vector<std::string> prune_checkpoints(const std::string& dir, int keep_last, int min_keep);

// Element-wise mean of /model over the inputs, accumulated in double, streamed tensor by tensor. Names and
// shapes must match exactly. Metadata and /extra come from the last input. Writes a model-only file.
void average_checkpoints(const std::vector<std::string>& inputs, const std::string& out_path);

// Test hook: called at named stages of a save ("write", "fsync", "rename", "latest"); throwing from it
// simulates a failed write at that stage.
void set_save_fault_hook(std::function<void(const std::string& stage)> hook);

}  // namespace aiayn::checkpoints
