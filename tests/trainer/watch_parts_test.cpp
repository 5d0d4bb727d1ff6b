// The parts behind watching a run: the best-checkpoint tracker, the loop state a checkpoint saves, metrics.jsonl
// after a resume, and TensorBoard's record format.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "aiayn/error.hpp"
#include "test_env.hpp"
#include "trainer/best_tracker.hpp"
#include "trainer/run_files.hpp"
#include "trainer/tensorboard.hpp"

namespace aiayn::trainer {
namespace {
namespace fs = std::filesystem;

TEST(BestTracker, BleuHigherIsBetterAndPatienceCountsValidationsWithoutImprovement) {
  BestTracker t("bleu", 2);
  EXPECT_FALSE(t.has_best());
  EXPECT_TRUE(t.observe(100, 10.0));   // the first is always the best
  EXPECT_TRUE(t.observe(200, 12.5));
  EXPECT_FALSE(t.observe(300, 12.5));  // equal is no improvement
  EXPECT_FALSE(t.exhausted());
  EXPECT_TRUE(t.observe(400, 13.0));   // an improvement resets the count
  EXPECT_EQ(t.without_improvement(), 0);
  EXPECT_FALSE(t.observe(500, 1.0));
  EXPECT_FALSE(t.observe(600, 12.9));
  EXPECT_TRUE(t.exhausted());
  EXPECT_EQ(t.best_step(), 400);
  EXPECT_EQ(t.best_score(), 13.0);
}

TEST(BestTracker, LossLowerIsBetterAndZeroPatienceNeverStops) {
  BestTracker t("loss", 0);
  EXPECT_TRUE(t.observe(10, 3.0));
  EXPECT_TRUE(t.observe(20, 2.0));
  for (int i = 0; i < 50; ++i) EXPECT_FALSE(t.observe(30 + i, 2.5));
  EXPECT_FALSE(t.exhausted());
  EXPECT_EQ(t.best_step(), 20);
  EXPECT_THROW(BestTracker("ppl", 1), Error);
}

TEST(BestTracker, SurvivesACheckpointAndDropsAnotherMetricsRecord) {
  BestTracker t("bleu", 3);
  t.observe(100, 20.0);
  t.observe(200, 19.0);
  TrainerState saved;
  saved.skipped_steps = 4;
  t.save_to(&saved);
  const TrainerState back = parse_trainer_state(trainer_state_yaml(saved), "test");
  EXPECT_EQ(back.skipped_steps, 4);
  EXPECT_EQ(back.best_metric, "bleu");
  EXPECT_EQ(back.best_step, 100);
  EXPECT_EQ(back.best_score, 20.0);
  EXPECT_EQ(back.validations_without_improvement, 1);
  BestTracker resumed("bleu", 3);
  EXPECT_TRUE(resumed.restore(back));
  EXPECT_FALSE(resumed.observe(300, 19.5));
  EXPECT_FALSE(resumed.observe(400, 19.5));
  EXPECT_TRUE(resumed.exhausted());  // 3 in a row across the resume
  BestTracker by_loss("loss", 3);
  EXPECT_FALSE(by_loss.restore(back));
  EXPECT_FALSE(by_loss.has_best());
  // An old checkpoint's state (before best checkpoints) still reads.
  const TrainerState old = parse_trainer_state("skipped_steps: 2\n", "old");
  EXPECT_EQ(old.skipped_steps, 2);
  EXPECT_EQ(old.best_step, -1);
  // A score keeps every bit through the YAML.
  TrainerState exact;
  exact.best_metric = "loss", exact.best_step = 7, exact.best_score = 0.1 + 0.2;
  EXPECT_EQ(parse_trainer_state(trainer_state_yaml(exact), "x").best_score, 0.1 + 0.2);
}

TEST(RunFiles, MetricsAfterTheResumeStepAreDropped) {
  testing::TempDir tmp;
  const std::string path = tmp / "metrics.jsonl";
  {
    std::ofstream out(path);
    out << R"({"step":1,"loss":3})" "\n" R"({"step":2,"loss":2})" "\n" R"({"step":2,"valid_loss":2.5})" "\n"
        << R"({"step":3,"loss":1})" "\n" R"({"step":4,"lo)";  // the last line cut short by a crash
  }
  drop_metrics_after(path, 2);
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(ss.str(), "{\"step\":1,\"loss\":3}\n{\"step\":2,\"loss\":2}\n{\"step\":2,\"valid_loss\":2.5}\n");
  drop_metrics_after(tmp / "absent.jsonl", 2);
  EXPECT_FALSE(fs::exists(tmp / "absent.jsonl"));
}

TEST(TensorBoard, MaskedCrc32cMatchesTheReferenceValues) {
  // CRC-32C("123456789") = 0xE3069283 (RFC 3720's check value), masked as TFRecord does.
  const uint32_t crc = 0xE3069283u;
  EXPECT_EQ(masked_crc32c("123456789", 9), ((crc >> 15) | (crc << 17)) + 0xa282ead8u);
  // And against a bitwise CRC-32C (reflected polynomial 0x82F63B78) over bytes of every value.
  std::string bytes;
  for (int i = 0; i < 777; ++i) bytes.push_back(static_cast<char>(i * 37 + 11));
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : bytes) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
  }
  c ^= 0xFFFFFFFFu;
  EXPECT_EQ(masked_crc32c(bytes.data(), bytes.size()), ((c >> 15) | (c << 17)) + 0xa282ead8u);
}

TEST(TensorBoard, EventsRoundTripAndAResumeDropsTheAbandonedSteps) {
  testing::TempDir tmp;
  const std::string dir = tmp / "tb";
  std::string first;
  {
    TensorBoardWriter w(dir, -1);
    first = w.path();
    for (int step = 1; step <= 5; ++step)
      w.write_metrics({{"step", step}, {"loss", 1.0 / step}, {"lr", nullptr}, {"tok_s", 100 * step}});
    w.write_metrics({{"step", 4}, {"valid_loss", 0.5}, {"valid_bleu", 12.25}, {"valid_bleu_signature", "sig"}});
    w.write_text(4, "valid/bleu_signature", "nrefs:1|tok:13a");
  }
  ASSERT_EQ(list_event_files(dir), std::vector<std::string>{first});
  auto events = read_scalar_events(first);
  ASSERT_EQ(events.size(), 7u);
  EXPECT_EQ(events[0].step, 1);
  ASSERT_EQ(events[0].values.size(), 2u);  // null skipped
  EXPECT_EQ(events[0].values[0].first, "train/loss");
  EXPECT_EQ(events[0].values[0].second, 1.0f);
  EXPECT_EQ(events[0].values[1].first, "train/tok_s");
  EXPECT_EQ(events[5].values[0].first, "valid/loss");
  EXPECT_EQ(events[5].values[1].first, "valid/bleu");
  EXPECT_EQ(events[5].values[1].second, 12.25f);
  ASSERT_EQ(events[6].texts.size(), 1u);
  EXPECT_EQ(events[6].texts[0].second, "nrefs:1|tok:13a");

  // A crash cut the last record short: reading stops there; a resume from step 3 drops steps 4 and 5.
  fs::resize_file(first, fs::file_size(first) - 3);
  bool truncated = false;
  EXPECT_EQ(read_event_records(first, &truncated).size(), 7u);  // file_version + 6 whole events
  EXPECT_TRUE(truncated);
  {
    TensorBoardWriter w(dir, 3);
    EXPECT_NE(w.path(), first);
    w.write_metrics({{"step", 4}, {"loss", 0.2}});
  }
  events = read_scalar_events(first);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events.back().step, 3);
  const auto files = list_event_files(dir);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(read_scalar_events(files[1]).front().step, 4);

  // A damaged record is reported with the file and offset.
  {
    std::fstream f(first, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(20);
    f.put('\x7f');
  }
  try {
    read_event_records(first);
    FAIL() << "a damaged record was not detected";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(first), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace aiayn::trainer
