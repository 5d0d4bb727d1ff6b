#include "trainer/bench.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "aiayn/error.hpp"
#include "kernels/dropout_hash.hpp"
#include "kernels/op_profile.hpp"
#include "kernels/ops.hpp"
#include "trainer/config.hpp"
#include "trainer/model.hpp"
#include "trainer/runtime.hpp"
#include "trainer/schedule.hpp"

namespace aiayn::trainer {
namespace k = aiayn::kernels;

double train_flops_per_step(int layers, int d, int dff, int vocab, int sentences, int s, int t) {
  const double L = layers, D = d, Fd = dff, V = vocab, B = sentences, S = s, T = t;
  const double src_tok = B * S, tgt_tok = B * T;
  const double enc = L * (4 * D * D + 2 * D * Fd) * src_tok + L * 2 * D * D * src_tok;
  const double dec = L * (6 * D * D + 2 * D * Fd) * tgt_tok + V * D * tgt_tok;
  const double attn = L * B * (2 * S * S * D + 2 * T * T * D + 2 * T * S * D);
  return 3 * 2 * (enc + dec + attn);
}

nlohmann::ordered_json run_bench(const BenchOptions& o) {
  AIAYN_CHECK(o.vocab > 4 && o.sentences > 0 && o.src_len > 0 && o.tgt_len > 0 && o.steps > 0,
              "bench: --vocab must exceed 4 and --sentences, --src-len, --tgt-len, --steps must be positive");
  const Config cfg = Config::load(o.config_path, o.overrides);
  auto log = make_logger("bench", false, "");
  const k::Device device = choose_device(cfg.device, 0, *log);
  const bool bf16 = choose_bf16(cfg, device, *log);
  const int threads = setup_cpu_threads(cfg.train.threads, nullptr);

  ModelSpec spec;
  spec.arch = cfg.model;
  spec.vocab = o.vocab;
  spec.bf16 = bf16;
  Model<float> model(spec, device);
  model.initialize(static_cast<uint64_t>(cfg.train.seed));
  const size_t n = model.num_params();
  k::DeviceArray<float> m(device, n), v(device, n);

  // Batches of exactly B x S and B x T real tokens: ids uniform in [4, V) (as the PyTorch baseline draws
  // them), or Zipf-like with BOS/EOS (--token-dist zipf): the inverse of the cumulative 1/rank weights.
  AIAYN_CHECK(o.token_dist == "uniform" || o.token_dist == "zipf",
              "bench: --token-dist must be uniform or zipf, got '" + o.token_dist + "'");
  const bool zipf = o.token_dist == "zipf";
  std::vector<double> cdf;
  if (zipf) {
    cdf.resize(static_cast<size_t>(o.vocab - 4));
    double sum = 0;
    for (size_t r = 0; r < cdf.size(); ++r) cdf[r] = sum += 1.0 / static_cast<double>(r + 1);
    for (double& c : cdf) c /= sum;
  }
  constexpr int32_t kBos = 2, kEos = 3;  // the ids `aiayn prepare` gives them (ModelSpec's defaults)
  uint64_t counter = 0;
  auto next_batch = [&]() {
    Batch b;
    b.B = o.sentences, b.S = o.src_len, b.T = o.tgt_len;
    auto draw = [&]() {
      const uint64_t bits = k::mix64(++counter);
      if (!zipf) return 4 + static_cast<int32_t>(bits % static_cast<uint64_t>(o.vocab - 4));
      const double u = static_cast<double>(bits >> 11) * 0x1.0p-53;
      const size_t r = static_cast<size_t>(std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
      return 4 + static_cast<int32_t>(std::min(r, cdf.size() - 1));
    };
    b.src.resize(static_cast<size_t>(b.B) * b.S);
    for (auto& x : b.src) x = draw();
    if (zipf)
      for (int i = 0; i < b.B; ++i) b.src[static_cast<size_t>(i + 1) * b.S - 1] = kEos;
    b.tgt_in.resize(static_cast<size_t>(b.B) * b.T);
    b.tgt_out.resize(b.tgt_in.size());
    for (int i = 0; i < b.B; ++i) {
      std::vector<int32_t> y(b.T + 1);
      for (auto& x : y) x = draw();
      if (zipf) y.front() = kBos, y.back() = kEos;
      for (int t = 0; t < b.T; ++t) {
        b.tgt_in[static_cast<size_t>(i) * b.T + t] = y[t];
        b.tgt_out[static_cast<size_t>(i) * b.T + t] = y[t + 1];
      }
      b.src_len.push_back(b.S);
      b.tgt_len.push_back(b.T);
      b.pair.push_back(i);
    }
    b.src_tokens = static_cast<int64_t>(b.B) * b.S;
    b.tgt_tokens = static_cast<int64_t>(b.B) * b.T;
    return b;
  };

  double last_loss = 0;
  auto step = [&](int64_t s) {
    const Batch b = next_batch();
    model.zero_grads();
    const auto st = model.forward_backward(b, DropoutContext{true, 1, static_cast<uint64_t>(s)}, 1.0f / b.tgt_tokens);
    last_loss = st.loss / std::max<int64_t>(1, st.tokens);
    k::adam(device, adam_update(cfg, s, model.params(), model.grads(), m.data(), v.data(), n, 1.0f, model.params_bf16()));
  };
  int64_t s = 0;
  auto sync = [&] { if (device == k::Device::CUDA) k::cuda_synchronize(); };
  for (int i = 0; i < o.warmup_steps; ++i) step(++s);
  sync();
  k::reset_op_profile();
  k::enable_op_profile(o.profile);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < o.steps; ++i) step(++s);
  sync();
  k::enable_op_profile(false);
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / o.steps;
  const double flops = train_flops_per_step(cfg.model.layers, cfg.model.d_model, cfg.model.d_ff, o.vocab, o.sentences,
                                            o.src_len, o.tgt_len);
  auto round_to = [](double x, int digits) { const double f = std::pow(10.0, digits); return std::round(x * f) / f; };
  nlohmann::ordered_json out;
  out["system"] = "aiayn";
  out["device"] = k::device_name(device);
  out["dtype"] = bf16 ? "bf16" : "fp32";
  out["layers"] = cfg.model.layers;
  out["d_model"] = cfg.model.d_model;
  out["vocab"] = o.vocab;
  out["sentences"] = o.sentences;
  out["src_len"] = o.src_len;
  out["tgt_len"] = o.tgt_len;
  out["token_dist"] = o.token_dist;
  out["threads"] = threads;
  out["ms_per_step"] = round_to(dt * 1e3, 3);
  out["tgt_tok_s"] = round_to(o.sentences * o.tgt_len / dt, 1);
  out["tflops"] = round_to(flops / dt / 1e12, 4);
  out["loss"] = round_to(last_loss, 4);
  if (device == k::Device::CUDA) out["mfu"] = round_to(flops / dt / 1e12 / o.peak_tflops, 4);
  return out;
}

std::string bench_profile_table(int steps) {
  const auto entries = k::op_profile();
  double total = 0;
  for (const auto& e : entries) total += e.seconds;
  std::string out = fmt::format("{:<24} {:>6} {:>10} {:>7}\n", "op", "calls", "ms/step", "share");
  for (const auto& e : entries)
    out += fmt::format("{:<24} {:>6} {:>10.3f} {:>6.1f}%\n", std::string(e.op) + (e.device == k::Device::CUDA ? " (cuda)" : ""),
                       e.calls / steps, e.seconds * 1e3 / steps, 100.0 * e.seconds / std::max(total, 1e-30));
  out += fmt::format("{:<24} {:>6} {:>10.3f}\n", "all ops", "", total * 1e3 / steps);
  return out;
}

}  // namespace aiayn::trainer
