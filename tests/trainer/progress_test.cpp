// The progress line's time helpers (trainer/progress.hpp): durations as a person reads them, and the time
// to the nearest stop condition.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "trainer/progress.hpp"

namespace aiayn::trainer {
namespace {

TEST(FormatDuration, SecondsMinutesHoursRoundedToTheSecond) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(44.4), "44s");
  EXPECT_EQ(format_duration(59.4), "59s");
  EXPECT_EQ(format_duration(59.5), "1m00s");
  EXPECT_EQ(format_duration(192), "3m12s");
  EXPECT_EQ(format_duration(3599.4), "59m59s");
  EXPECT_EQ(format_duration(3599.5), "1h00m");
  EXPECT_EQ(format_duration(7500), "2h05m");
  EXPECT_EQ(format_duration(100 * 3600 + 59), "100h00m");  // hours do not roll over into days
}

TEST(FormatDuration, NegativeOrNonFiniteIsADash) {
  EXPECT_EQ(format_duration(-0.1), "-");
  EXPECT_EQ(format_duration(std::numeric_limits<double>::infinity()), "-");
  EXPECT_EQ(format_duration(std::nan("")), "-");
}

TEST(SecondsLeft, NothingBoundsTheRun) {
  EXPECT_TRUE(std::isinf(seconds_left(RunBounds{}, 0.5)));
}

TEST(SecondsLeft, TheNearestOfStepsEpochsAndTheTimeLimit) {
  RunBounds b;
  b.max_steps = 100, b.step = 40;
  EXPECT_DOUBLE_EQ(seconds_left(b, 0.5), 30.0);  // 60 steps
  b.max_epochs = 2, b.epoch = 1, b.batches_per_epoch = 10, b.batch_in_epoch = 4;
  EXPECT_DOUBLE_EQ(seconds_left(b, 0.5), 3.0);  // 6 batches left in the last epoch
  b.max_minutes = 1, b.elapsed_s = 58.5;
  EXPECT_DOUBLE_EQ(seconds_left(b, 0.5), 1.5);  // the time limit counts in seconds
  b.elapsed_s = 61;
  EXPECT_LT(seconds_left(b, 0.5), 0.0);  // passed: the caller shows 0s
}

TEST(SecondsLeft, EpochsAloneCountEveryEpochStillToRun) {
  RunBounds b;
  b.max_epochs = 3, b.epoch = 0, b.batches_per_epoch = 10, b.batch_in_epoch = 10;
  EXPECT_DOUBLE_EQ(seconds_left(b, 2.0), 40.0);  // 30 - 10 batches
}

}  // namespace
}  // namespace aiayn::trainer
