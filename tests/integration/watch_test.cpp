// Watching a run as fairseq and Marian users do: validation BLEU during training (equal to `aiayn eval --bleu`),
// best.h5, early stopping, TensorBoard events read back by TensorBoard's own reader, the progress line.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>

#include "checkpoints/checkpoint.hpp"
#include "run_helpers.hpp"
#include "test_env.hpp"

namespace aiayn::testing {
namespace {
namespace fs = std::filesystem;

class Watch : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new TempDir();
    const int rc = run_command(aiayn_exe() + " prepare --synthetic --pairs 3000 --seed 5 --out " + data_->path() + "/d",
                               data_->path() + "/prepare.log");
    ASSERT_EQ(rc, 0) << read_file(data_->path() + "/prepare.log");
  }
  static void TearDownTestSuite() { delete data_; }

  static std::string data() { return data_->path() + "/d"; }
  std::string train(int ranks, const std::string& run, const std::string& extra, const std::string& data_dir = data()) const {
    return launcher(ranks) + aiayn_exe() + " train --config " + source_dir() + "/launch/configs/tiny.yaml --data " +
           data_dir + " --run-dir " + run +
           " --set train.batch_tokens=600 --set train.max_tokens_per_rank=600 --set checkpoint.every_minutes=0"
           " --set train.threads=1 " + extra;
  }
  // The validation lines of metrics.jsonl by step.
  static std::map<int64_t, nlohmann::json> validations(const std::string& run) {
    std::map<int64_t, nlohmann::json> out;
    for (const auto& j : read_jsonl(run + "/metrics.jsonl"))
      if (j.contains("valid_loss") || j.contains("valid_bleu")) out[j["step"].get<int64_t>()] = j;
    return out;
  }
  // The JSON line `aiayn eval` prints.
  nlohmann::json eval(const std::string& args, const std::string& name) const {
    const std::string out = tmp_ / (name + ".json"), err = tmp_ / (name + ".err");
    const int rc = run_command(aiayn_exe() + " eval " + args + " > " + out + " 2> " + err, tmp_ / (name + ".log"));
    EXPECT_EQ(rc, 0) << read_file(err);
    return nlohmann::json::parse(read_file(out), nullptr, false);
  }
  static std::map<std::string, std::string> best_record(const std::string& path) {
    std::string text;
    EXPECT_TRUE(checkpoints::read_extra(path, "best.yaml", &text)) << path;
    std::map<std::string, std::string> out;
    std::regex line("(\\w+): (.*)");
    for (std::sregex_iterator it(text.begin(), text.end(), line), end; it != end; ++it) out[(*it)[1]] = (*it)[2];
    return out;
  }
  TempDir tmp_;

 private:
  static TempDir* data_;
};
TempDir* Watch::data_ = nullptr;

// Two ranks decode their halves of the sample; `aiayn eval --bleu --sentences N` on one rank scores the saved
// checkpoint of the same step: the BLEU (and the validation loss) must be the same number, not just close.
TEST_F(Watch, ValidationBleuEqualsEvalAndTheBestCheckpointIsKept) {
  const std::string run = tmp_ / "run";
  const int rc = run_command(train(2, run, "--set train.max_steps=200 --set train.log_every=25 --set train.valid_every=50 "
                                           "--set train.valid_bleu_every=50 --set train.valid_bleu_sentences=60 "
                                           "--set checkpoint.every_steps=50 --set checkpoint.keep_last=1 "
                                           "--set checkpoint.average_last=1"),
                             tmp_ / "train.log");
  ASSERT_EQ(rc, 0) << read_file(tmp_ / "train.log");
  const auto valid = validations(run);
  ASSERT_EQ(valid.size(), 4u);
  int64_t best_step = -1;
  double best_bleu = -1;
  for (const auto& [step, j] : valid) {
    ASSERT_TRUE(j.contains("valid_bleu")) << j.dump();
    EXPECT_TRUE(j.contains("valid_loss")) << j.dump();
    EXPECT_EQ(j["valid_bleu_signature"], "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0");
    if (j["valid_bleu"].get<double>() > best_bleu) best_bleu = j["valid_bleu"].get<double>(), best_step = step;
  }
  EXPECT_GT(valid.at(200)["valid_bleu"].get<double>(), 20.0) << "the model should have learnt something";

  // best.h5: the step with the highest BLEU, kept although retention keeps only the last checkpoint.
  const std::string best = run + "/checkpoints/best.h5";
  ASSERT_TRUE(fs::exists(best));
  EXPECT_EQ(checkpoints::list_checkpoints(run + "/checkpoints").size(), 1u);
  EXPECT_TRUE(checkpoints::verify_checkpoint(best));
  EXPECT_EQ(checkpoints::read_meta(best).step, best_step);
  const auto record = best_record(best);
  EXPECT_EQ(record.at("metric"), "bleu");
  EXPECT_EQ(record.at("step"), std::to_string(best_step));
  EXPECT_EQ(std::stod(record.at("score")), best_bleu);

  // The BLEU logged during training is what `aiayn eval --bleu` prints for that checkpoint on those sentences.
  const std::string args = " --data " + data() + "/valid.h5 --bleu --sentences 60 --threads 1";
  const auto of_best = eval("--checkpoint " + best + args, "best");
  EXPECT_EQ(of_best["bleu"].get<double>(), best_bleu);
  EXPECT_EQ(of_best["signature"], valid.at(best_step)["valid_bleu_signature"]);
  EXPECT_EQ(of_best["sentences"], 60);
  const auto of_last = eval("--checkpoint " + run + "/checkpoints/step-00000200.h5" + args, "last");
  EXPECT_EQ(of_last["bleu"].get<double>(), valid.at(200)["valid_bleu"].get<double>());
  // So is the validation loss, in batches of min(16384, train.max_tokens_per_rank) = 600 tokens.
  const auto loss = eval("--checkpoint " + run + "/checkpoints/step-00000200.h5 --data " + data() +
                             "/valid.h5 --batch-tokens 600 --threads 1", "loss");
  EXPECT_EQ(loss["loss"].get<double>(), valid.at(200)["valid_loss"].get<double>());
  EXPECT_EQ(loss["ppl"].get<double>(), valid.at(200)["valid_ppl"].get<double>());
  EXPECT_EQ(loss["acc"].get<double>(), valid.at(200)["valid_acc"].get<double>());

  // The progress line says what a user asks first.
  const std::string log = read_file(run + "/log/rank-0.log");
  EXPECT_TRUE(std::regex_search(log, std::regex("step 200/200 \\| epoch \\d+ \\| loss [0-9.]+ \\| lr [0-9.e+-]+ \\| "
                                                "\\d+ tgt tok/s \\| eta \\w+ \\| bleu [0-9.]+ \\(best [0-9.]+ @ \\d+\\)")))
      << log;
  EXPECT_NE(log.find("BLEU "), std::string::npos);
  EXPECT_NE(log.find("tok:13a"), std::string::npos);
}

// train.patience validations without improvement end the run: exit 0, the reason in the log, the final
// checkpoint, the average and best.h5 in place. With lr_scale 0 the weights never change, so no validation
// after the first improves on it.
TEST_F(Watch, EarlyStoppingEndsTheRunCleanly) {
  const std::string run = tmp_ / "run";
  const int rc = run_command(train(1, run, "--set train.max_steps=1000 --set train.lr_scale=0 --set train.log_every=5 "
                                           "--set train.valid_every=5 --set train.patience=2 --set checkpoint.every_steps=100"),
                             tmp_ / "train.log");
  ASSERT_EQ(rc, 0) << read_file(tmp_ / "train.log");
  const std::string log = read_file(run + "/log/rank-0.log");
  EXPECT_NE(log.find("early stopping at step 15: 2 validations of the loss without improvement (train.patience = 2)"),
            std::string::npos) << log;
  EXPECT_EQ(validations(run).size(), 3u);
  EXPECT_TRUE(fs::exists(run + "/checkpoints/step-00000015.h5"));
  EXPECT_EQ(read_file(run + "/checkpoints/LATEST"), "step-00000015.h5\n");
  EXPECT_TRUE(fs::exists(run + "/averaged.h5"));
  EXPECT_EQ(checkpoints::read_meta(run + "/checkpoints/best.h5").step, 5);
  EXPECT_EQ(best_record(run + "/checkpoints/best.h5").at("metric"), "loss");
}

// Every scalar of metrics.jsonl is in RUN/tensorboard with its step, as TensorBoard's own reader sees it; a run
// that crashed after its last checkpoint and resumed has each step once.
TEST_F(Watch, TensorBoardHoldsEveryMetricAndAResumeAppendsWithoutDuplicates) {
  const std::string python = python_with_tools();
  if (python.empty()) AIAYN_SKIP_OR_FAIL("AIAYN_PYTHON is not set (tests/python_env.sh could not install tensorboard)");
  const std::string run = tmp_ / "run";
  const std::string common = "--set train.log_every=1 --set train.valid_every=10 --set checkpoint.every_steps=10 ";
  ASSERT_EQ(run_command(train(1, run, common + "--set train.max_steps=30"), tmp_ / "a.log"), 0) << read_file(tmp_ / "a.log");
  // As if the job died right after step 30's validation, before its checkpoint was committed.
  fs::remove(run + "/checkpoints/step-00000030.h5");
  fs::remove(run + "/averaged.h5");
  {
    std::ofstream(run + "/checkpoints/LATEST") << "step-00000020.h5\n";
  }
  ASSERT_EQ(checkpoints::read_meta(run + "/checkpoints/best.h5").step, 30);
  ASSERT_EQ(run_command(train(1, run, common + "--set train.max_steps=40 --resume"), tmp_ / "b.log"), 0)
      << read_file(tmp_ / "b.log");
  EXPECT_TRUE(fs::exists(run + "/checkpoints/best.h5.stale"));  // step 30's, from the abandoned run
  EXPECT_EQ(checkpoints::read_meta(run + "/checkpoints/best.h5").step, 40);

  // metrics.jsonl: every step once, in order.
  std::vector<int64_t> train_steps;
  for (const auto& j : read_jsonl(run + "/metrics.jsonl"))
    if (j.contains("loss")) train_steps.push_back(j["step"].get<int64_t>());
  std::vector<int64_t> expected(40);
  for (int i = 0; i < 40; ++i) expected[i] = i + 1;
  EXPECT_EQ(train_steps, expected);

  const std::string dump = tmp_ / "tb.json";
  ASSERT_EQ(run_command(python + " " + source_dir() + "/tests/integration/tensorboard_dump.py " + run + "/tensorboard > " + dump,
                        tmp_ / "dump.log"), 0)
      << read_file(tmp_ / "dump.log");
  const auto tb = nlohmann::json::parse(read_file(dump));
  // Every numeric field of every metrics line, with its step, exactly once (float32 as TensorBoard stores it).
  std::map<std::string, std::map<int64_t, double>> want;
  for (const auto& j : read_jsonl(run + "/metrics.jsonl")) {
    const bool validation = j.contains("valid_loss");
    for (const auto& [key, value] : j.items()) {
      if (key == "step" || !value.is_number()) continue;
      const std::string tag = validation ? "valid/" + key.substr(6) : "train/" + key;
      want[tag][j["step"].get<int64_t>()] = value.get<double>();
    }
  }
  for (const char* tag : {"train/loss", "train/nll", "train/lr", "train/gnorm", "train/tok_s", "train/skipped",
                          "train/epoch", "train/tgt_tokens", "train/elapsed_s", "valid/loss", "valid/ppl", "valid/acc"})
    EXPECT_TRUE(want.count(tag)) << tag;
  ASSERT_EQ(tb["scalars"].size(), want.size()) << tb["scalars"].dump();
  for (const auto& [tag, by_step] : want) {
    ASSERT_TRUE(tb["scalars"].contains(tag)) << tag;
    const auto& events = tb["scalars"][tag];
    ASSERT_EQ(events.size(), by_step.size()) << tag << ": " << events.dump();
    std::set<int64_t> seen;
    for (const auto& e : events) {
      const int64_t step = e[0].get<int64_t>();
      EXPECT_TRUE(seen.insert(step).second) << tag << " step " << step << " twice";
      ASSERT_TRUE(by_step.count(step)) << tag << " step " << step;
      EXPECT_EQ(e[1].get<double>(), static_cast<double>(static_cast<float>(by_step.at(step)))) << tag << " step " << step;
    }
  }
}

TEST_F(Watch, ValidationBleuSignatureReachesTensorBoard) {
  const std::string python = python_with_tools();
  if (python.empty()) AIAYN_SKIP_OR_FAIL("AIAYN_PYTHON is not set (tests/python_env.sh could not install tensorboard)");
  const std::string run = tmp_ / "run";
  ASSERT_EQ(run_command(train(1, run, "--set train.max_steps=20 --set train.valid_every=0 --set train.valid_bleu_every=10 "
                                      "--set train.valid_bleu_sentences=20 --set train.log_every=10"),
                        tmp_ / "a.log"), 0)
      << read_file(tmp_ / "a.log");
  const std::string dump = tmp_ / "tb.json";
  ASSERT_EQ(run_command(python + " " + source_dir() + "/tests/integration/tensorboard_dump.py " + run + "/tensorboard > " + dump,
                        tmp_ / "dump.log"), 0)
      << read_file(tmp_ / "dump.log");
  const auto tb = nlohmann::json::parse(read_file(dump));
  ASSERT_EQ(tb["scalars"]["valid/bleu"].size(), 2u) << tb.dump();
  ASSERT_EQ(tb["texts"]["valid/bleu_signature"].size(), 1u) << tb.dump();
  EXPECT_EQ(tb["texts"]["valid/bleu_signature"][0][1], "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0");
  // BLEU only (valid_every 0): best.h5 by BLEU, and the validation lines carry no loss.
  for (const auto& [step, j] : validations(run)) EXPECT_FALSE(j.contains("valid_loss")) << step;
  EXPECT_EQ(best_record(run + "/checkpoints/best.h5").at("metric"), "bleu");
}

// Bad values are refused before any work, with one line naming the key (or file); a damaged best.h5 is
// reported like any checkpoint, and a resumed run sets it aside and writes a new one.
TEST_F(Watch, BadValuesAndADamagedBestCheckpointAreReported) {
  const auto refused = [&](const std::string& extra, const std::string& needle, const std::string& data_dir) {
    const std::string run = tmp_ / "refused", log = tmp_ / "refused.log";
    fs::remove_all(run);
    EXPECT_EQ(run_command(train(1, run, "--set train.max_steps=10 " + extra, data_dir), log), 1) << extra;
    const std::string text = read_file(log);
    EXPECT_NE(text.find(needle), std::string::npos) << extra << ": " << text;
    EXPECT_FALSE(fs::exists(run + "/checkpoints/step-00000001.h5"));
  };
  refused("--set train.valid_bleu_every=-1", "'train.valid_bleu_every'", data());
  refused("--set train.patience=3 --set train.valid_every=0", "'train.patience'", data());
  refused("--set checkpoint.best_metric=bleu", "'checkpoint.best_metric'", data());
  // validation BLEU with no validation set
  const std::string no_valid = tmp_ / "no-valid";
  fs::create_directories(no_valid);
  for (const char* f : {"train.h5", "tokenizer.model"}) fs::copy_file(data() + "/" + f, no_valid + "/" + f);
  refused("--set train.valid_bleu_every=5", no_valid + "/valid.h5", no_valid);
  refused("--set train.patience=2 --set train.valid_every=5", no_valid + "/valid.h5", no_valid);

  // A damaged best.h5.
  const std::string run = tmp_ / "run";
  const std::string common = "--set train.log_every=5 --set train.valid_every=5 --set checkpoint.every_steps=5 ";
  ASSERT_EQ(run_command(train(1, run, common + "--set train.max_steps=10"), tmp_ / "a.log"), 0) << read_file(tmp_ / "a.log");
  const std::string best = run + "/checkpoints/best.h5";
  {  // junk over seven places past the first eighth: the model's tensors, the optimizer's, the extras
    std::fstream f(best, std::ios::in | std::ios::out | std::ios::binary);
    const char junk[64] = "damaged damaged damaged damaged damaged damaged damaged damage";
    for (int i = 1; i < 8; ++i) {
      f.seekp(static_cast<std::streamoff>(fs::file_size(best) * i / 8));
      f.write(junk, sizeof(junk));
    }
  }
  const std::string err = tmp_ / "eval.err";
  EXPECT_EQ(run_command(aiayn_exe() + " eval --checkpoint " + best + " --data " + data() + "/valid.h5 2> " + err,
                        tmp_ / "eval.log"), 1);
  EXPECT_NE(read_file(err).find(best), std::string::npos) << read_file(err);
  ASSERT_EQ(run_command(train(1, run, common + "--set train.max_steps=15 --resume"), tmp_ / "b.log"), 0)
      << read_file(tmp_ / "b.log");
  EXPECT_NE(read_file(run + "/log/rank-0.log").find("best.h5 is damaged"), std::string::npos);
  EXPECT_TRUE(fs::exists(best + ".damaged"));
  EXPECT_TRUE(checkpoints::verify_checkpoint(best));
  EXPECT_EQ(checkpoints::read_meta(best).step, 15);
}

}  // namespace
}  // namespace aiayn::testing
