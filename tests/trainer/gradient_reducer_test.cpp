// The gradient reducer's bookkeeping on the CPU with a recording communicator: which buckets start when, in
// which order, and what it refuses. (The end-to-end property, that starting buckets from the backward pass
// changes no number, is tests/integration/train_test.cpp's BucketsStartedDuringTheBackwardPassGiveTheSameSteps.)
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "aiayn/error.hpp"
#include "trainer/gradient_reducer.hpp"

namespace aiayn::trainer {
namespace {

// Records every float all-reduce as (offset into the buffer, count); doubles each element so a test can see
// that a sum happened exactly once.
class RecordingComm final : public comm::Communicator {
 public:
  explicit RecordingComm(const float* base) : base_(base) {}
  comm::Backend backend() const override { return comm::Backend::MPI; }
  int rank() const override { return 0; }
  int size() const override { return 2; }
  int local_rank() const override { return 0; }
  void all_reduce_sum(float* data, size_t n, void*) override {
    calls.emplace_back(size_t(data - base_), n);
    for (size_t i = 0; i < n; ++i) data[i] *= 2;
  }
  void all_reduce_sum_host(double*, size_t) override {}
  void all_reduce_sum_host(int64_t*, size_t) override {}
  void all_reduce_max_host(int64_t*, size_t) override {}
  void broadcast_host(void*, size_t, int) override {}
  std::vector<std::string> all_gather_host(const std::string& mine) override { return {mine, mine}; }
  void barrier() override {}
  std::vector<std::pair<size_t, size_t>> calls;

 private:
  const float* base_;
};

using Calls = std::vector<std::pair<size_t, size_t>>;

TEST(GradientReducer, StartsBucketsFromTheTopDownAsTheyComplete) {
  std::vector<float> g(25, 1.0f);
  RecordingComm comm(g.data());
  GradientReducer r(comm, kernels::Device::CPU, g.data(), g.size(), 10, false);  // buckets [0,10) [10,20) [20,25)
  ASSERT_EQ(r.buckets(), 3u);
  r.begin_step();
  r.ready(22, 25);
  EXPECT_TRUE(comm.calls.empty()) << "bucket 2 is not complete yet";
  r.ready(12, 22);  // completes bucket 2, part of bucket 1
  EXPECT_EQ(comm.calls, (Calls{{20, 5}}));
  r.ready(0, 5);  // bucket 0 complete, but bucket 1 above it is not: it waits, so every rank keeps one order
  EXPECT_EQ(comm.calls, (Calls{{20, 5}}));
  r.ready(5, 12);  // bucket 1 complete: 1, then the waiting 0
  EXPECT_EQ(comm.calls, (Calls{{20, 5}, {10, 10}, {0, 10}}));
  EXPECT_EQ(r.started_early(), 3u);
  r.finish();  // nothing left
  EXPECT_EQ(comm.calls.size(), 3u);
  for (float x : g) EXPECT_EQ(x, 2.0f) << "each element summed exactly once";
}

TEST(GradientReducer, FinishStartsWhatIsLeftInTheSameOrder) {
  std::vector<float> g(25, 1.0f);
  RecordingComm comm(g.data());
  GradientReducer r(comm, kernels::Device::CPU, g.data(), g.size(), 10, false);
  r.begin_step();
  r.ready(20, 25);
  r.finish();
  EXPECT_EQ(comm.calls, (Calls{{20, 5}, {10, 10}, {0, 10}}));
  // A rank with nothing to report (an empty share) starts the same sums in the same order.
  comm.calls.clear();
  r.begin_step();
  r.finish();
  EXPECT_EQ(comm.calls, (Calls{{20, 5}, {10, 10}, {0, 10}}));
  EXPECT_EQ(r.started_early(), 0u);
}

TEST(GradientReducer, RefusesARangeReportedTwiceOrOutside) {
  std::vector<float> g(25, 1.0f);
  RecordingComm comm(g.data());
  GradientReducer r(comm, kernels::Device::CPU, g.data(), g.size(), 10, false);
  r.begin_step();
  r.ready(0, 5);
  EXPECT_THROW(r.ready(3, 8), Error);
  EXPECT_THROW(r.ready(20, 26), Error);
  r.begin_step();
  r.ready(20, 25);  // bucket 2 starts
  EXPECT_THROW(r.ready(24, 25), Error);
  EXPECT_THROW(r.ready(7, 7), Error);  // empty
}

}  // namespace
}  // namespace aiayn::trainer
