#pragma once
// `aiayn bench`: training steps on synthetic batches of exactly B pairs of S source and T target tokens (no
// padding), the same work as ../shared/bench/torch_baseline.py with the same flags.
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace aiayn::trainer {

struct BenchOptions {
  std::string config_path;
  std::vector<std::string> overrides;
  int vocab = 8000, sentences = 64, src_len = 24, tgt_len = 24, steps = 10, warmup_steps = 3;
  double peak_tflops = 989.0;  // for MFU on a GPU (H100/H200 dense bf16)
  bool profile = false;        // also time every op of the timed steps (table on stderr)
  // Token ids: "uniform" over [4, V) (as torch_baseline.py draws them), or "zipf": as real corpora, every
  // target starts with BOS and ends with EOS, every source ends with EOS, the rest drawn with probability
  // proportional to 1 / rank over [4, V) (id 4 the most frequent), so the embedding backward sums thousands
  // of rows into the same few ids as in training.
  std::string token_dist = "uniform";
};

// Matmul FLOPs of one training step (forward + backward = 3 x forward), as torch_baseline.py counts them.
double train_flops_per_step(int layers, int d, int dff, int vocab, int sentences, int s, int t);

nlohmann::ordered_json run_bench(const BenchOptions& options);

// The per-op table of the last run_bench with profile = true: op, calls and milliseconds per step, share.
std::string bench_profile_table(int steps);

}  // namespace aiayn::trainer
