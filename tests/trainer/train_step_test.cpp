// TrainStep, one optimizer step on one rank, against the same step written out by hand from the parts it is
// made of (make_batch, Model::forward_backward, adam_update): the update, the statistics it reports, a skip on
// a non-finite gradient, clipping, and the stop flags it agrees on.
#include "trainer/train_step.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "comm/communicator.hpp"
#include "comm/gradient_communicator.hpp"
#include "data/batch_planner.hpp"
#include "data/corpus.hpp"
#include "data/corpus_writer.hpp"
#include "kernels/ops.hpp"
#include "test_env.hpp"
#include "trainer/batch.hpp"
#include "trainer/runtime.hpp"
#include "trainer/schedule.hpp"

namespace aiayn::trainer {
namespace {

namespace k = aiayn::kernels;
constexpr int kVocab = 23;

class TrainStepTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // 40 pairs of 1-9 tokens plus EOS; ids from 4 (pad 0, unk 1, bos 2, eos 3).
    data::CorpusContent c;
    c.vocab_size = kVocab;
    std::mt19937 rng(7);
    auto sentence = [&] {
      std::vector<int32_t> s(1 + rng() % 9);
      for (auto& id : s) id = static_cast<int32_t>(4 + rng() % (kVocab - 4));
      s.push_back(3);
      return s;
    };
    for (int i = 0; i < 40; ++i) c.add_pair(sentence(), sentence());
    data::write_corpus_file(dir_ / "train.h5", c);
    corpus_ = std::make_unique<data::CorpusReader>(dir_ / "train.h5");
    log_ = make_logger("train-step-test", false, "");
  }

  Config config(std::vector<std::string> sets) const {
    std::vector<std::string> all = {"model.d_model=16", "model.heads=2", "model.layers=1", "model.d_ff=24",
                                    "model.dropout=0.1", "train.batch_tokens=120", "train.max_tokens_per_rank=50",
                                    "train.warmup=4", "train.seed=11", "train.threads=1"};
    all.insert(all.end(), sets.begin(), sets.end());
    return Config::parse("", "test", all);
  }

  // A model, its Adam state and a TrainStep over the run's (local) communicator.
  struct Run {
    Run(const TrainStepTest& t, const Config& c, const FaultInjection& f)
        : cfg(c), faults(f), model(spec(c), k::Device::CPU), m(k::Device::CPU, model.num_params()),
          v(k::Device::CPU, model.num_params()), comm(comm::make_local_communicator()),
          grad_comm(*comm, nullptr, false),
          step(cfg, *t.corpus_, model, m, v, *comm, grad_comm, faults, *t.log_) {
      model.initialize(static_cast<uint64_t>(cfg.train.seed));
      m.zero(), v.zero();
    }
    static ModelSpec spec(const Config& c) {
      ModelSpec s;
      s.arch = c.model;
      s.vocab = kVocab;
      return s;
    }
    Config cfg;
    FaultInjection faults;
    Model<float> model;
    k::DeviceArray<float> m, v;
    std::unique_ptr<comm::Communicator> comm;
    comm::GradientCommunicator grad_comm;
    TrainStep step;
  };

  data::BatchPlan plan(const Config& cfg) const {
    return data::BatchPlan::build(corpus_->src_lengths(), corpus_->tgt_lengths(),
                                  static_cast<uint64_t>(cfg.train.seed), 0, cfg.train.batch_tokens);
  }
  static std::vector<float> copy(const k::DeviceArray<float>& a) {
    return std::vector<float>(a.data(), a.data() + a.size());
  }

  aiayn::testing::TempDir dir_;
  std::unique_ptr<data::CorpusReader> corpus_;
  std::shared_ptr<spdlog::logger> log_;
};

const StopRequests kNoStop{[] { return false; }, [] { return false; }};

// Step `step` of `batch` written out: the batch cut into train.shards shares (at most 2 here), each share's
// micro-batches accumulated on their own, the shares added, the gradient of the global mean loss, then Adam;
// returns the statistics TrainStep should report.
StepTotals reference_step(Model<float>& model, k::DeviceArray<float>& m, k::DeviceArray<float>& v, const Config& cfg,
                          const data::CorpusReader& corpus, const data::GlobalBatch& batch, int64_t step,
                          double* gnorm) {
  StepTotals totals;
  const float scale = 1.0f / static_cast<float>(batch.tgt_tokens);
  const int shards = static_cast<int>(cfg.train.shards);
  std::vector<float> sum(model.num_params(), 0.0f);
  for (int shard = 0; shard < shards; ++shard) {
    model.zero_grads();
    for (const auto& micro : data::split_for_rank(batch, corpus.src_lengths(), corpus.tgt_lengths(), shard, shards,
                                                  cfg.train.max_tokens_per_rank)) {
      const Batch b = make_batch(corpus.read_pairs(micro), micro, corpus.info().pad_id, corpus.info().bos_id);
      const auto st = model.forward_backward(b, DropoutContext{true, static_cast<uint64_t>(cfg.train.seed),
                                                               static_cast<uint64_t>(step)}, scale);
      totals.loss += st.loss, totals.nll += st.nll, totals.tokens += st.tokens, totals.correct += st.correct;
    }
    for (size_t i = 0; i < sum.size(); ++i) sum[i] = shard == 0 ? model.grads()[i] : sum[i] + model.grads()[i];
  }
  std::copy(sum.begin(), sum.end(), model.grads());
  const size_t n = model.num_params();
  *gnorm = std::sqrt(k::sum_squares(k::Device::CPU, k::SumSquaresArgs<float>{model.grads(), n}));
  float clip = 1.0f;
  if (cfg.train.clip_norm > 0 && *gnorm > cfg.train.clip_norm) clip = static_cast<float>(cfg.train.clip_norm / *gnorm);
  k::adam(k::Device::CPU, adam_update(cfg, step, model.params(), model.grads(), m.data(), v.data(), n, clip, nullptr));
  return totals;
}

TEST_F(TrainStepTest, TwoStepsAreTheGradientOfTheGlobalMeanLossThenAdam) {
  for (const std::string clip : {"train.clip_norm=0", "train.clip_norm=0.05"})
  for (const std::string shards : {"train.shards=1", "train.shards=2"}) {
    SCOPED_TRACE(clip + " " + shards);
    const Config cfg = config({clip, shards});
    Run run(*this, cfg, FaultInjection{});
    Run ref(*this, cfg, FaultInjection{});
    const data::BatchPlan p = plan(cfg);
    ASSERT_GE(p.size(), 3u);
    for (int64_t step = 1; step <= 2; ++step) {
      const StepOutcome out = run.step.run(step, step, p, 0, step - 1, kNoStop);
      double gnorm = 0;
      const StepTotals want = reference_step(ref.model, ref.m, ref.v, cfg, *corpus_, p.batch(step - 1), step, &gnorm);
      EXPECT_FALSE(out.skipped || out.stop_signal || out.time_up);
      EXPECT_EQ(out.totals.tokens, p.batch(step - 1).tgt_tokens);
      EXPECT_EQ(out.totals.tokens, want.tokens);
      EXPECT_EQ(out.totals.correct, want.correct);
      EXPECT_EQ(out.totals.loss, want.loss);
      EXPECT_EQ(out.totals.nll, want.nll);
      EXPECT_EQ(out.gnorm, gnorm);  // before clipping
      EXPECT_EQ(out.lr, learning_rate(step, cfg.model.d_model, cfg.train.warmup, cfg.train.lr_scale));
      const size_t n = run.model.num_params();
      EXPECT_EQ(std::memcmp(run.model.params(), ref.model.params(), n * sizeof(float)), 0) << "step " << step;
      EXPECT_EQ(copy(run.m), copy(ref.m)) << "step " << step;
      EXPECT_EQ(copy(run.v), copy(ref.v)) << "step " << step;
    }
    if (clip != "train.clip_norm=0") EXPECT_GT(run.step.run(3, 3, p, 0, 2, kNoStop).gnorm, 0.05);  // clipping did bite
  }
}

TEST_F(TrainStepTest, ANonFiniteGradientSkipsTheUpdateAndLeavesTheStateAlone) {
  const Config cfg = config({});
  FaultInjection faults;
  faults.nan_at = {{0, 2}};
  Run run(*this, cfg, faults);
  const data::BatchPlan p = plan(cfg);
  EXPECT_FALSE(run.step.run(1, 1, p, 0, 0, kNoStop).skipped);
  const auto params = std::vector<float>(run.model.params(), run.model.params() + run.model.num_params());
  const auto m = copy(run.m), v = copy(run.v);
  const StepOutcome out = run.step.run(2, 2, p, 0, 1, kNoStop);
  EXPECT_TRUE(out.skipped);
  EXPECT_TRUE(std::isnan(out.gnorm));
  EXPECT_EQ(out.lr, 0.0);
  EXPECT_EQ(std::memcmp(run.model.params(), params.data(), params.size() * sizeof(float)), 0);
  EXPECT_EQ(copy(run.m), m);
  EXPECT_EQ(copy(run.v), v);
  // The next step is a normal one again (Adam's update count is the caller's: 2, the skipped step not counted).
  const StepOutcome next = run.step.run(3, 2, p, 0, 2, kNoStop);
  EXPECT_FALSE(next.skipped);
  EXPECT_TRUE(std::isfinite(next.gnorm));
}

TEST_F(TrainStepTest, StopRequestsAreReportedAfterTheUpdate) {
  const Config cfg = config({});
  Run run(*this, cfg, FaultInjection{});
  const data::BatchPlan p = plan(cfg);
  const StepOutcome signal = run.step.run(1, 1, p, 0, 0, StopRequests{[] { return true; }, [] { return false; }});
  EXPECT_TRUE(signal.stop_signal);
  EXPECT_FALSE(signal.time_up);
  EXPECT_FALSE(signal.skipped);
  EXPECT_GT(signal.lr, 0.0);  // the step itself is taken; stopping is the loop's business
  const StepOutcome time = run.step.run(2, 2, p, 0, 1, StopRequests{[] { return false; }, [] { return true; }});
  EXPECT_TRUE(time.time_up);
  EXPECT_FALSE(time.stop_signal);
}

}  // namespace
}  // namespace aiayn::trainer
