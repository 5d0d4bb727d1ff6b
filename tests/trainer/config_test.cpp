#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>

#include "aiayn/error.hpp"
#include "test_env.hpp"
#include "trainer/config.hpp"
#include "trainer/runtime.hpp"
#include "trainer/schedule.hpp"

namespace aiayn::trainer {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const aiayn::Error& e) {
    return e.what();
  }
  return "";
}

TEST(Config, PresetsLoadAndSmallMatchesTheIssue) {
  for (const char* p : {"tiny", "small", "base", "big"}) {
    const std::string path = testing::source_dir() + "/launch/configs/" + p + ".yaml";
    EXPECT_NO_THROW(Config::load(path)) << path;
  }
  const Config s = Config::load(testing::source_dir() + "/launch/configs/small.yaml");
  EXPECT_EQ(s.model.layers, 3);
  EXPECT_EQ(s.model.d_model, 256);
  EXPECT_EQ(s.model.heads, 4);
  EXPECT_EQ(s.model.d_ff, 1024);
  const Config b = Config::load(testing::source_dir() + "/launch/configs/base.yaml");
  EXPECT_EQ(b.model.d_model, 512);
  EXPECT_EQ(b.train.warmup, 4000);
  EXPECT_DOUBLE_EQ(b.train.adam_beta2, 0.98);
  EXPECT_DOUBLE_EQ(b.train.adam_eps, 1e-9);
  EXPECT_EQ(b.checkpoint.average_last, 5);
  EXPECT_EQ(Config::load(testing::source_dir() + "/launch/configs/big.yaml").checkpoint.average_last, 20);
}

TEST(Config, OverridesApplyAndRoundTrip) {
  const Config c = Config::parse("model:\n  d_model: 64\n  heads: 4\n", "inline",
                                 {"train.max_steps=17", "model.pre_norm=true", "device=cpu", "train.comm_timeout_s=45"});
  EXPECT_EQ(c.train.max_steps, 17);
  EXPECT_EQ(c.train.comm_timeout_s, 45.0);
  EXPECT_TRUE(c.model.pre_norm);
  EXPECT_EQ(c.device, "cpu");
  const Config again = Config::parse(c.to_yaml(), "resolved");
  EXPECT_EQ(again.to_yaml(), c.to_yaml());
  EXPECT_EQ(again.hash(), c.hash());
}

TEST(Config, BadValuesNameTheKey) {
  EXPECT_NE(error_of([] { Config::parse("model:\n  d_modle: 3\n", "f.yaml"); }).find("'model.d_modle'"), std::string::npos);
  EXPECT_NE(error_of([] { Config::parse("", "f.yaml", {"train.warmup=-1"}); }).find("'train.warmup'"), std::string::npos);
  EXPECT_NE(error_of([] { Config::parse("", "f.yaml", {"train.lr_scale=abc"}); }).find("'train.lr_scale'"), std::string::npos);
  EXPECT_NE(error_of([] { Config::parse("", "f.yaml", {"model.heads=7"}); }).find("'model.heads'"), std::string::npos);
  EXPECT_NE(error_of([] { Config::parse("", "f.yaml", {"device=tpu"}); }).find("'device'"), std::string::npos);
  EXPECT_NE(error_of([] { Config::parse("", "f.yaml", {"train.comm_timeout_s=0"}); }).find("'train.comm_timeout_s'"),
            std::string::npos);
  EXPECT_NE(error_of([] { Config::parse("", "f.yaml", {"nonsense"}); }).find("nonsense"), std::string::npos);
  EXPECT_NE(error_of([] { Config::parse("model: [1, 2\n", "broken.yaml"); }).find("broken.yaml"), std::string::npos);
  EXPECT_NE(error_of([] { Config::load("/nonexistent/x.yaml"); }).find("/nonexistent/x.yaml"), std::string::npos);
}

// Validation BLEU, the best checkpoint and early stopping: ranges and the rules across keys.
TEST(Config, ValidationKeysAndTheirRules) {
  const Config d = Config::parse("", "defaults");
  EXPECT_EQ(d.train.valid_bleu_every, 0);
  EXPECT_EQ(d.train.valid_bleu_sentences, 500);
  EXPECT_EQ(d.train.patience, 0);
  EXPECT_TRUE(d.checkpoint.keep_best);
  EXPECT_EQ(d.best_metric(), "loss");
  EXPECT_EQ(Config::parse("", "x", {"train.valid_bleu_every=100"}).best_metric(), "bleu");
  EXPECT_EQ(Config::parse("", "x", {"train.valid_bleu_every=100", "checkpoint.best_metric=loss"}).best_metric(), "loss");
  const Config c = Config::parse("", "x", {"train.valid_bleu_every=100", "train.patience=3", "checkpoint.keep_best=false"});
  EXPECT_EQ(Config::parse(c.to_yaml(), "resolved").to_yaml(), c.to_yaml());
  EXPECT_NE(error_of([] { Config::parse("", "f.yaml", {"train.valid_bleu_every=-1"}); }).find("'train.valid_bleu_every'"),
            std::string::npos);
  EXPECT_NE(error_of([] { Config::parse("", "f.yaml", {"train.valid_bleu_sentences=0"}); }).find("'train.valid_bleu_sentences'"),
            std::string::npos);
  EXPECT_NE(error_of([] { Config::parse("", "f.yaml", {"train.patience=-2"}); }).find("'train.patience'"), std::string::npos);
  EXPECT_NE(error_of([] { Config::parse("", "f.yaml", {"checkpoint.best_metric=ppl"}); }).find("'checkpoint.best_metric'"),
            std::string::npos);
  // patience without any validation of its metric
  EXPECT_NE(error_of([] { Config::parse("", "f.yaml", {"train.patience=3", "train.valid_every=0"}); }).find("'train.patience'"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              Config::parse("", "f.yaml", {"train.patience=3", "checkpoint.best_metric=bleu"});
            }).find("'checkpoint.best_metric'"),
            std::string::npos);
  EXPECT_NO_THROW(Config::parse("", "f.yaml", {"train.patience=3", "train.valid_every=0", "train.valid_bleu_every=50"}));
}

// A head wider than the CUDA attention takes is refused before training starts on a GPU, naming the key.
TEST(Config, AHeadTooWideForTheCudaAttentionIsRefusedOnCuda) {
  const Config wide = Config::parse("", "x", {"model.d_model=512", "model.heads=2"});  // 256 channels a head
  EXPECT_NO_THROW(check_model_fits_device(wide, kernels::Device::CPU));
  const std::string e = error_of([&] { check_model_fits_device(wide, kernels::Device::CUDA); });
  EXPECT_NE(e.find("'model.heads'"), std::string::npos) << e;
  EXPECT_NE(e.find("use at least 4 heads"), std::string::npos) << e;
  EXPECT_NO_THROW(check_model_fits_device(Config::parse("", "x", {"model.d_model=512", "model.heads=4"}), kernels::Device::CUDA));
}

// Every rule across keys refuses the config before any work, naming the key it blames.
TEST(Config, EveryCrossKeyRuleNamesItsKey) {
  const auto blamed = [](std::vector<std::string> sets) {
    const std::string e = error_of([&] { Config::parse("", "f.yaml", sets); });
    const auto from = e.find("config key '");
    return from == std::string::npos ? "no error: " + e : e.substr(from + 12, e.find('\'', from + 12) - from - 12);
  };
  EXPECT_EQ(blamed({"model.d_model=64", "model.heads=3"}), "model.heads");
  EXPECT_EQ(blamed({"model.d_model=63", "model.heads=7"}), "model.d_model");  // sinusoids pair channels
  EXPECT_EQ(blamed({"train.batch_tokens=1000", "train.max_tokens_per_rank=1001"}), "train.max_tokens_per_rank");
  EXPECT_EQ(blamed({"train.max_steps=0", "train.max_epochs=0", "train.max_minutes=0"}), "train.max_steps");
  EXPECT_EQ(blamed({"checkpoint.best_metric=bleu"}), "checkpoint.best_metric");
  EXPECT_EQ(blamed({"train.patience=2", "train.valid_every=0"}), "train.patience");
  EXPECT_NO_THROW(Config::parse("", "f.yaml", {"train.max_steps=0", "train.max_minutes=5"}));
  EXPECT_NO_THROW(Config::parse("", "f.yaml", {"train.batch_tokens=1000", "train.max_tokens_per_rank=1000"}));
  // bf16 needs a GPU: an error when the config asked for the CPU, a fall-back to fp32 when device=auto found none
  auto log = make_logger("config-test", false, "");
  const std::string e = error_of([&] {
    choose_bf16(Config::parse("", "x", {"device=cpu", "precision=bf16"}), kernels::Device::CPU, *log);
  });
  EXPECT_NE(e.find("config key 'precision'"), std::string::npos) << e;
  EXPECT_FALSE(choose_bf16(Config::parse("", "x", {"device=auto", "precision=bf16"}), kernels::Device::CPU, *log));
  EXPECT_TRUE(choose_bf16(Config::parse("", "x", {"device=auto", "precision=bf16"}), kernels::Device::CUDA, *log));
}

TEST(Config, ArchitectureDifferenceNamesTheKey) {
  const Config a = Config::parse("", "a");
  EXPECT_EQ(a.architecture_difference(Config::parse("", "b", {"train.max_steps=5"})), "");
  EXPECT_EQ(a.architecture_difference(Config::parse("", "b", {"model.d_ff=100"})), "model.d_ff");
  EXPECT_EQ(a.architecture_difference(Config::parse("", "b", {"model.pre_norm=true"})), "model.pre_norm");
}

TEST(Schedule, MatchesThePaperAtChosenSteps) {
  // lr = d^-0.5 * min(step^-0.5, step * warmup^-1.5); the peak is at step == warmup.
  const double d = 512, w = 4000;
  EXPECT_DOUBLE_EQ(learning_rate(1, 512, 4000, 1.0), std::pow(d, -0.5) * 1 * std::pow(w, -1.5));
  EXPECT_DOUBLE_EQ(learning_rate(4000, 512, 4000, 1.0), std::pow(d, -0.5) * std::pow(w, -0.5));
  EXPECT_DOUBLE_EQ(learning_rate(16000, 512, 4000, 1.0), std::pow(d, -0.5) * std::pow(16000.0, -0.5));
  EXPECT_NEAR(learning_rate(4000, 512, 4000, 1.0), 6.987712429686844e-4, 1e-15);
  EXPECT_DOUBLE_EQ(learning_rate(100, 512, 4000, 2.0), 2 * learning_rate(100, 512, 4000, 1.0));
  EXPECT_LT(learning_rate(3999, 512, 4000, 1.0), learning_rate(4000, 512, 4000, 1.0));
  EXPECT_LT(learning_rate(4001, 512, 4000, 1.0), learning_rate(4000, 512, 4000, 1.0));
}

}  // namespace
}  // namespace aiayn::trainer
