#include "trainer/params.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "aiayn/error.hpp"
#include "kernels/dropout_hash.hpp"
#include "trainer/config.hpp"

namespace aiayn::trainer {

void ParamTable::add(const std::string& name, std::vector<int64_t> shape, ParamView::Init init, double scale) {
  ParamView v;
  v.name = name;
  v.shape = std::move(shape);
  v.size = 1;
  for (auto d : v.shape) v.size *= static_cast<size_t>(d);
  v.offset = total_;
  v.init = init;
  v.init_scale = scale;
  total_ += v.size;
  index_[name] = views_.size();
  views_.push_back(std::move(v));
}

std::pair<size_t, size_t> ParamTable::range(const std::string& prefix) const {
  size_t begin = total_, end = 0, covered = 0;
  for (const ParamView& v : views_) {
    if (v.name.compare(0, prefix.size(), prefix) != 0) continue;
    begin = std::min(begin, v.offset);
    end = std::max(end, v.offset + v.size);
    covered += v.size;
  }
  AIAYN_CHECK(covered > 0, "parameter table: no parameter named '" + prefix + "...'");
  AIAYN_CHECK(covered == end - begin, "parameter table: the parameters '" + prefix + "...' are not contiguous");
  return {begin, end};
}

const ParamView& ParamTable::at(const std::string& name) const {
  auto it = index_.find(name);
  AIAYN_CHECK(it != index_.end(), fmt::format("no parameter named '{}'", name));
  return views_[it->second];
}

ParamTable ParamTable::transformer(const ModelSection& m, int vocab) {
  using I = ParamView::Init;
  const int64_t D = m.d_model, F = m.d_ff;
  ParamTable t;
  t.add("embedding/weight", {vocab, D}, I::Normal, std::pow(static_cast<double>(D), -0.5));
  auto linear = [&](const std::string& p, int64_t out, int64_t in) {
    t.add(p + "/weight", {out, in}, I::XavierUniform);
    t.add(p + "/bias", {out}, I::Zero);
  };
  auto norm = [&](const std::string& p) {
    t.add(p + "/weight", {D}, I::One);
    t.add(p + "/bias", {D}, I::Zero);
  };
  // q, k, v weights adjacent (one fused [3D, D] GEMM; cross-attention: k and v adjacent, [2D, D]). As in
  // tensor2tensor, the paper's reference implementation, the q, k and v projections have no bias: a key bias
  // has an identically zero gradient (softmax is shift-invariant), and Adam would turn its rounding noise into
  // full-size random steps.
  auto attention = [&](const std::string& p, bool fused_qkv) {
    if (fused_qkv) {
      for (const char* w : {"q", "k", "v"}) t.add(p + "/" + w + "/weight", {D, D}, I::XavierUniform);
    } else {
      t.add(p + "/q/weight", {D, D}, I::XavierUniform);
      for (const char* w : {"k", "v"}) t.add(p + "/" + w + "/weight", {D, D}, I::XavierUniform);
    }
    linear(p + "/out", D, D);
  };
  for (int l = 0; l < m.layers; ++l) {
    const std::string p = fmt::format("encoder/layers/{}", l);
    attention(p + "/self_attn", true);
    norm(p + "/self_attn_norm");
    linear(p + "/ffn/fc1", F, D);
    linear(p + "/ffn/fc2", D, F);
    norm(p + "/ffn_norm");
  }
  if (m.pre_norm) norm("encoder/final_norm");
  for (int l = 0; l < m.layers; ++l) {
    const std::string p = fmt::format("decoder/layers/{}", l);
    attention(p + "/self_attn", true);
    norm(p + "/self_attn_norm");
    attention(p + "/cross_attn", false);
    norm(p + "/cross_attn_norm");
    linear(p + "/ffn/fc1", F, D);
    linear(p + "/ffn/fc2", D, F);
    norm(p + "/ffn_norm");
  }
  if (m.pre_norm) norm("decoder/final_norm");
  return t;
}

template <class T>
void ParamTable::initialize(T* params, uint64_t seed) const {
  // A counter-based generator (the dropout hash): value i of tensor k depends only on (seed, k, i).
  for (size_t k = 0; k < views_.size(); ++k) {
    const ParamView& v = views_[k];
    T* p = params + v.offset;
    const uint64_t key = kernels::mix64(kernels::mix64(seed ^ 0x5EEDull) ^ k);
    auto uniform = [&](size_t i, uint32_t stream) {  // (0, 1)
      const uint64_t r = kernels::mix64(key ^ kernels::mix64(i * 2 + stream));
      return (static_cast<double>(r >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    };
    switch (v.init) {
      case ParamView::Init::Zero:
        for (size_t i = 0; i < v.size; ++i) p[i] = T(0);
        break;
      case ParamView::Init::One:
        for (size_t i = 0; i < v.size; ++i) p[i] = T(1);
        break;
      case ParamView::Init::XavierUniform: {
        const double fan_out = static_cast<double>(v.shape[0]), fan_in = static_cast<double>(v.shape[1]);
        const double limit = std::sqrt(6.0 / (fan_in + fan_out));
        for (size_t i = 0; i < v.size; ++i) p[i] = static_cast<T>((2.0 * uniform(i, 0) - 1.0) * limit);
        break;
      }
      case ParamView::Init::Normal:  // Box-Muller
        for (size_t i = 0; i < v.size; ++i) {
          const double u1 = uniform(i, 0), u2 = uniform(i, 1);
          p[i] = static_cast<T>(v.init_scale * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
        }
        break;
    }
  }
}

template void ParamTable::initialize<float>(float*, uint64_t) const;
template void ParamTable::initialize<double>(double*, uint64_t) const;

}  // namespace aiayn::trainer
