// The whole model's gradient against finite differences in double, and an overfitting check in float.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>

#include "aiayn/error.hpp"
#include "data/corpus.hpp"
#include "kernels/dropout_hash.hpp"
#include "kernels/ops/adam.hpp"
#include "model_fixtures.hpp"
#include "trainer/model.hpp"

namespace aiayn::trainer {
namespace {

// A batch of `lens` pairs with ids in [4, V): sentences of different lengths, so padding is exercised.
Batch random_batch(int V, const std::vector<std::pair<int, int>>& lens, uint64_t seed) {
  return testing::test_batch(V, lens, seed, 100, 7);
}

ModelSpec tiny_spec(bool pre_norm, double dropout) {
  return testing::tiny_spec({/*d_model=*/64, /*d_ff=*/256, /*vocab=*/23, pre_norm, dropout, dropout});
}

// The scaled loss of `batch` and its central difference in parameter i, in double: truncation O(h^2) ~ 1e-10
// and rounding ~1e-16/h ~ 1e-11, so an analytic gradient must agree to 1e-7 + 1e-5 |fd| (fd_tolerance).
struct FiniteDifferences {
  Model<double>& model;
  const Batch& batch;
  DropoutContext dropout;
  double scale;  // 1 / target tokens

  double loss() {
    model.zero_grads();
    return model.forward_backward(batch, dropout, static_cast<float>(scale)).loss * scale;
  }
  double derivative(size_t i, double h = 1e-5) {
    double& p = model.params()[i];
    const double saved = p;
    p = saved + h;
    const double up = loss();
    p = saved - h;
    const double down = loss();
    p = saved;
    return (up - down) / (2 * h);
  }
};
double fd_tolerance(double fd) { return 1e-7 + 1e-5 * std::fabs(fd); }

struct GradCase {
  bool pre_norm;
  double dropout;
};

class WholeModelGrad : public ::testing::TestWithParam<GradCase> {};

// Every parameter tensor: a sample of entries (first, last and some in between) against central differences
// of the scaled loss. Double precision makes the finite differences accurate to ~1e-8 relative.
TEST_P(WholeModelGrad, MatchesFiniteDifferences) {
  const GradCase gc = GetParam();
  Model<double> model(tiny_spec(gc.pre_norm, gc.dropout), kernels::Device::CPU);
  model.initialize(7);
  // Nudge LayerNorm and bias parameters away from their initial 1/0 so every term is exercised.
  for (const auto& v : model.table().views())
    if (v.shape.size() == 1)
      for (size_t i = 0; i < v.size; ++i) model.params()[v.offset + i] += 0.05 * std::sin(1.0 + v.offset + 3.0 * i);
  const Batch batch = random_batch(23, {{5, 6}, {3, 2}, {1, 4}}, 11);
  const DropoutContext dc{gc.dropout > 0, 5, 9};
  const double scale = 1.0 / static_cast<double>(batch.tgt_tokens);
  model.zero_grads();
  model.forward_backward(batch, dc, static_cast<float>(scale));
  std::vector<double> analytic(model.grads(), model.grads() + model.num_params());

  FiniteDifferences fd{model, batch, dc, scale};
  int checked = 0;
  for (const auto& v : model.table().views()) {
    std::set<size_t> picks = {0, v.size - 1, v.size / 2, v.size / 3, (v.size * 7) / 9};
    for (size_t i : picks) {
      const double d = fd.derivative(v.offset + i);
      EXPECT_NEAR(analytic[v.offset + i], d, fd_tolerance(d)) << v.name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 100);
}

INSTANTIATE_TEST_SUITE_P(Variants, WholeModelGrad,
                         ::testing::Values(GradCase{false, 0.0}, GradCase{false, 0.2}, GradCase{true, 0.0},
                                           GradCase{true, 0.2}));

// The output and input embedding are one matrix: its gradient has a term from each use (encoder input,
// decoder input, output projection). The batch is built so that token 5 occurs only in the source, BOS (2)
// only in the decoder's input (it is never a target), and token 9 nowhere (the output projection's term
// alone); the whole row of each is checked against finite differences. A missing encoder or decoder term
// would leave that row with the output projection's term only: the rows' gradients are thousands of times
// the tolerance, so no term can be missing unnoticed. (The former version drew a random batch and asserted
// only when its first source token happened not to occur in the target; with its seed it asserted nothing.)
TEST(Model, SharedEmbeddingGetsAllThreeGradientTerms) {
  ModelSpec spec = tiny_spec(false, 0.0);
  Model<double> model(spec, kernels::Device::CPU);
  model.initialize(3);
  data::Pair pair;
  pair.src = {5, 10, 11, 3};     // 5: source only
  pair.tgt = {12, 7, 13, 3};
  const Batch batch = make_batch({pair}, {100}, 0, 2);  // pad 0, BOS 2: the decoder reads 2, 12, 7, 13
  const int src_only = 5, dec_only = 2, nowhere = 9;
  for (int t : batch.tgt_out) ASSERT_NE(t, dec_only);
  for (int t : batch.tgt_in) ASSERT_NE(t, src_only);
  const double scale = 1.0 / static_cast<double>(batch.tgt_tokens);
  model.zero_grads();
  model.forward_backward(batch, {}, static_cast<float>(scale));
  const std::vector<double> analytic(model.grads(), model.grads() + model.num_params());
  const auto& emb = model.table().at("embedding/weight");
  const int D = spec.arch.d_model;
  FiniteDifferences fd{model, batch, {}, scale};
  const auto row = [&](int token) {
    return std::vector<double>(analytic.begin() + static_cast<long>(emb.offset + size_t(token) * D),
                               analytic.begin() + static_cast<long>(emb.offset + size_t(token + 1) * D));
  };
  const auto norm = [](const std::vector<double>& a) {
    double d = 0;
    for (double x : a) d += x * x;
    return std::sqrt(d);
  };
  for (int token : {src_only, dec_only, nowhere}) {
    for (int c = 0; c < D; ++c) {
      const size_t i = emb.offset + size_t(token) * D + c;
      const double d = fd.derivative(i);
      ASSERT_NEAR(analytic[i], d, fd_tolerance(d)) << "token " << token << " channel " << c;
    }
  }
  // Each row's gradient is far above the finite-difference tolerance (~1e-7): the check has the power to see
  // a missing term.
  for (int token : {src_only, dec_only, nowhere}) EXPECT_GT(norm(row(token)), 1e-4) << "token " << token;
}

// Issue 15: the logits rows lie padded to a multiple of vocab_align in the arena (V = 23 -> 32). The layout
// changes no result: loss, every gradient and the log-probabilities equal those of the unpadded layout
// (vocab_align = 1), also after a batch of another shape left other activations where the padding now lies.
TEST(Model, PaddedLogitsRowsChangeNothing) {
  const Batch other = random_batch(23, {{9, 7}, {3, 8}}, 9), batch = random_batch(23, {{5, 4}, {2, 6}, {7, 3}}, 5);
  auto run = [&](int align, bool stale) {
    ModelSpec spec = tiny_spec(false, 0.1);
    spec.vocab_align = align;
    Model<double> model(spec, kernels::Device::CPU);
    model.initialize(8);
    if (stale) {
      model.zero_grads();
      model.forward_backward(other, {true, 4, 1}, 0.5f);
    }
    model.zero_grads();
    const auto st = model.forward_backward(batch, {true, 4, 2}, 0.25f);
    std::vector<double> out(model.grads(), model.grads() + model.num_params());
    out.push_back(st.loss);
    out.push_back(st.nll);
    out.push_back(double(st.correct));
    const auto lp = model.forward_log_probs(batch);
    out.insert(out.end(), lp.begin(), lp.end());
    return out;
  };
  const auto plain = run(1, false), padded = run(16, true), padded_fresh = run(16, false);
  ASSERT_EQ(padded.size(), plain.size());
  size_t differ = 0;
  for (size_t i = 0; i < plain.size(); ++i) differ += std::fabs(padded[i] - plain[i]) > 1e-12 * std::max(1.0, std::fabs(plain[i]));
  EXPECT_EQ(differ, 0u) << "values of the padded layout that differ from the unpadded one";
  EXPECT_EQ(padded, padded_fresh) << "what lay in the padding before changed a result";
}

TEST(Model, InitialisationIsDeterministicAndScaled) {
  Model<float> a(tiny_spec(false, 0.1), kernels::Device::CPU), b(tiny_spec(false, 0.1), kernels::Device::CPU);
  a.initialize(42);
  b.initialize(42);
  for (size_t i = 0; i < a.num_params(); ++i) ASSERT_EQ(a.params()[i], b.params()[i]);
  const auto& emb = a.table().at("embedding/weight");
  double sq = 0;
  for (size_t i = 0; i < emb.size; ++i) sq += a.params()[emb.offset + i] * a.params()[emb.offset + i];
  EXPECT_NEAR(std::sqrt(sq / emb.size), 1.0 / 8.0, 0.01);  // N(0, d^-1/2), d = 64
  const auto& w = a.table().at("encoder/layers/0/ffn/fc1/weight");
  const double limit = std::sqrt(6.0 / (64 + 256));
  for (size_t i = 0; i < w.size; ++i) ASSERT_LE(std::fabs(a.params()[w.offset + i]), limit);
}

// On one fixed batch, Adam drives the smoothed loss down to (near) its floor: the entropy of the smoothed
// target distribution, which no model can beat.
TEST(Model, OverfitsOneBatchToTheLabelSmoothingFloor) {
  ModelSpec spec = tiny_spec(false, 0.0);
  Model<float> model(spec, kernels::Device::CPU);
  model.initialize(1);
  const Batch batch = random_batch(23, {{6, 7}, {5, 5}, {8, 6}, {4, 3}}, 99);
  kernels::DeviceArray<float> m(kernels::Device::CPU, model.num_params()), v(kernels::Device::CPU, model.num_params());
  double loss = 0;
  for (int step = 1; step <= 300; ++step) {
    model.zero_grads();
    const auto st = model.forward_backward(batch, {}, 1.0f / batch.tgt_tokens);
    loss = st.loss / st.tokens;
    kernels::AdamArgs<float> a;
    a.param = model.params(), a.grad = model.grads(), a.m = m.data(), a.v = v.data(), a.n = model.num_params();
    a.lr = 3e-3f, a.beta1 = 0.9f, a.beta2 = 0.98f, a.eps = 1e-9f;
    a.bias1 = 1 - std::pow(0.9, step), a.bias2 = 1 - std::pow(0.98, step);
    kernels::adam(kernels::Device::CPU, a);
  }
  const double eps = 0.1, V = 23;
  const double q_hit = 1 - eps + eps / V, q_miss = eps / V;
  const double floor = -(q_hit * std::log(q_hit) + (V - 1) * q_miss * std::log(q_miss));
  EXPECT_LT(loss, floor + 0.05) << "floor " << floor;
  EXPECT_GE(loss, floor - 1e-3);
}

// Token ids are checked once per batch on the host (the embedding ops are then told not to check on the
// device): an id outside the vocabulary is an error naming it and its index, before any work.
TEST(Model, RejectsAnOutOfVocabularyIdWithItsIndex) {
  const int V = 20;
  Model<float> model(tiny_spec(false, 0.0), kernels::Device::CPU);
  model.initialize(3);
  Batch b = random_batch(V, {{4, 3}, {2, 5}}, 9);
  b.src[5] = V + 7;
  try {
    model.forward_loss(b, 0.0f);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("source token id 27 at index 5"), std::string::npos) << e.what();
  }
  b = random_batch(V, {{4, 3}, {2, 5}}, 9);
  b.tgt_in[2] = -1;
  EXPECT_THROW(model.forward_backward(b, DropoutContext{}, 1.0f), Error);
}

// bf16 needs CUDA; asking for it on the CPU is an error, not a silent fp32 run.
TEST(Model, Bf16OnTheCpuIsRefused) {
  ModelSpec spec = tiny_spec(false, 0.0);
  spec.bf16 = true;
  EXPECT_THROW(Model<float>(spec, kernels::Device::CPU), Error);
}

}  // namespace
}  // namespace aiayn::trainer
