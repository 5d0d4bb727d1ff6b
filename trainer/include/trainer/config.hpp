#pragma once
// The run configuration: YAML presets (launch/configs/*.yaml) plus `--set section.key=value` overrides.
//
// Every key has a type and a valid range in one schema table (config.cpp). Loading rejects unknown keys,
// wrong types and out-of-range values before any work, with a message naming the key (and the file).
// The resolved configuration is written back as YAML in a fixed order (RUN/config.yaml, every checkpoint)
// and hashed, so a checkpoint knows exactly what produced it.
#include <cstdint>
#include <string>
#include <vector>

namespace aiayn::trainer {

struct ModelSection {
  int layers = 6, d_model = 512, heads = 8, d_ff = 2048;
  double dropout = 0.1, attention_dropout = 0.0, relu_dropout = 0.0, label_smoothing = 0.1;
  bool pre_norm = false;
};

struct TrainSection {
  int64_t batch_tokens = 25000;        // global, per optimizer step, per side (padded)
  int64_t max_tokens_per_rank = 25000; // memory cap per micro-batch; accumulation is derived
  int64_t max_steps = 100000, max_epochs = 0;  // 0 = no limit
  double max_minutes = 0;                      // 0 = no limit
  double lr_scale = 1.0;
  int64_t warmup = 4000;
  double adam_beta1 = 0.9, adam_beta2 = 0.98, adam_eps = 1e-9;
  double clip_norm = 0;  // 0 = off (the paper)
  int64_t seed = 1;
  int64_t log_every = 100, valid_every = 1000;
  int64_t valid_bleu_every = 0;        // steps between validation BLEU (beam search); 0 = off
  int64_t valid_bleu_sentences = 500;  // the first N pairs of the validation set, the same every time
  int64_t patience = 0;                // validations of the best metric without improvement that end the run; 0 = off
  int64_t max_consecutive_skips = 5;
  int64_t threads = 0;  // CPU threads per rank; 0 = cores / ranks on the node
  double bucket_mb = 8.0;  // gradient all-reduce bucket (MiB of float32), started from the backward pass
  double comm_timeout_s = 600.0;  // deadline of each collective, MPI and NCCL (a dead or hung peer ends the job)
  int64_t shards = 2;   // shares of each global batch, summed pairwise: 1 and `shards` ranks agree bit for bit
};

struct CheckpointSection {
  int64_t every_steps = 0;      // 0 = off
  double every_minutes = 10.0;  // 0 = off
  int64_t keep_last = 5;
  int64_t average_last = 5;
  bool keep_best = true;              // RUN/checkpoints/best.h5, the best checkpoint by best_metric
  std::string best_metric = "auto";   // auto (bleu when valid_bleu_every > 0, else loss) | bleu | loss
};

struct EvalSection {
  int64_t beam = 4;
  double lenpen = 0.6;
  int64_t max_len_b = 50;
};

struct Config {
  ModelSection model;
  TrainSection train;
  CheckpointSection checkpoint;
  EvalSection eval;
  std::string device = "auto";     // auto | cpu | cuda
  std::string precision = "fp32";  // fp32 | bf16

  // Loads a YAML file, then applies overrides "section.key=value" in order; validates everything.
  static Config load(const std::string& yaml_path, const std::vector<std::string>& overrides = {});
  // Parses YAML text (a resolved config from a run or a checkpoint); `origin` names it in errors.
  static Config parse(const std::string& yaml_text, const std::string& origin,
                      const std::vector<std::string>& overrides = {});
  std::string to_yaml() const;  // resolved, fixed key order
  std::string hash() const;     // hex FNV-1a 64 of to_yaml()
  // The first architecture key that differs ("model.d_model"), or "" when the architectures match.
  std::string architecture_difference(const Config& other) const;
  // The metric that picks best.h5 and counts patience: "bleu" or "loss" (checkpoint.best_metric resolved).
  std::string best_metric() const;
};

}  // namespace aiayn::trainer
