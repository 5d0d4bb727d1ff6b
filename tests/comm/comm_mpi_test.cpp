// The MPI communicator on several ranks (run under mpiexec -np 2). Inputs are small integers, so every
// float/double sum is exact in any order of reduction (as in nccl-tests) and compared with ==.
//
// Each rank runs the whole gtest suite; main combines the results with MPI_MAX so that a failure on any rank
// makes every rank exit non-zero. Tests never skip a collective on one rank only (that would hang).
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <thread>
#include <string>
#include <vector>

#include "aiayn/error.hpp"
#include "comm/communicator.hpp"

namespace aiayn::comm {
namespace {

// r-th rank's value at index i: small integers, distinct per rank and index.
int64_t value(int r, size_t i) { return static_cast<int64_t>((r + 1) * 3 + static_cast<int64_t>(i % 17) - 8); }
int64_t expected_sum(int size, size_t i) {
  int64_t s = 0;
  for (int r = 0; r < size; ++r) s += value(r, i);
  return s;
}

class MpiCommTest : public ::testing::Test {
 protected:
  void SetUp() override { comm_ = make_mpi_communicator(); }
  std::unique_ptr<Communicator> comm_;
};

TEST_F(MpiCommTest, RankAndSizeMatchTheWorld) {
  int world_rank = -1, world_size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  EXPECT_EQ(comm_->backend(), Backend::MPI);
  EXPECT_EQ(comm_->rank(), world_rank);
  EXPECT_EQ(comm_->size(), world_size);
  EXPECT_GE(comm_->local_rank(), 0);
  EXPECT_LT(comm_->local_rank(), world_size);
  // All ranks of this test run on one node, so the local rank is the world rank.
  EXPECT_EQ(comm_->local_rank(), world_rank);
}

TEST_F(MpiCommTest, FloatAllReduceSumIsExactOnSmallIntegers) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}, size_t{1} << 20}) {
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>(value(comm_->rank(), i));
    comm_->all_reduce_sum(x.data(), n);
    size_t wrong = 0;
    for (size_t i = 0; i < n; ++i) wrong += x[i] != static_cast<float>(expected_sum(comm_->size(), i));
    EXPECT_EQ(wrong, 0u) << "n=" << n;
  }
}

TEST_F(MpiCommTest, HostSumsAndMax) {
  const size_t n = 33;
  std::vector<double> d(n);
  std::vector<int64_t> s(n), m(n);
  for (size_t i = 0; i < n; ++i) {
    d[i] = static_cast<double>(value(comm_->rank(), i)) * 0.5;  // halves are exact too
    s[i] = value(comm_->rank(), i) + (int64_t{1} << 40);         // beyond 32 bits
    m[i] = value(comm_->rank(), i) * (i % 2 ? 1 : -1);
  }
  comm_->all_reduce_sum_host(d.data(), n);
  comm_->all_reduce_sum_host(s.data(), n);
  comm_->all_reduce_max_host(m.data(), n);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(d[i], static_cast<double>(expected_sum(comm_->size(), i)) * 0.5) << i;
    EXPECT_EQ(s[i], expected_sum(comm_->size(), i) + comm_->size() * (int64_t{1} << 40)) << i;
    int64_t mx = INT64_MIN;
    for (int r = 0; r < comm_->size(); ++r) mx = std::max(mx, value(r, i) * (i % 2 ? 1 : -1));
    EXPECT_EQ(m[i], mx) << i;
  }
}

TEST_F(MpiCommTest, BroadcastFromEachRoot) {
  for (int root = 0; root < comm_->size(); ++root) {
    struct Cursor {
      int64_t epoch, batch;
    } c{comm_->rank() == root ? 11 + root : -1, comm_->rank() == root ? 1234 : -1};
    comm_->broadcast_host(&c, sizeof(c), root);
    EXPECT_EQ(c.epoch, 11 + root);
    EXPECT_EQ(c.batch, 1234);
  }
}

TEST_F(MpiCommTest, AllGatherStringsOfDifferentLengths) {
  // Rank r contributes r+... characters, rank 0 an empty string.
  auto mine = [](int r) { return r == 0 ? std::string() : std::string(static_cast<size_t>(r * 5), char('a' + r)); };
  auto all = comm_->all_gather_host(mine(comm_->rank()));
  ASSERT_EQ(all.size(), static_cast<size_t>(comm_->size()));
  for (int r = 0; r < comm_->size(); ++r) EXPECT_EQ(all[r], mine(r)) << r;
  comm_->barrier();
}

TEST_F(MpiCommTest, MpiFailureBecomesAnErrorNamingRankAndCall) {
  // Every rank passes the same invalid root, so every rank fails locally and nobody waits for a peer.
  int64_t x = 0;
  try {
    comm_->broadcast_host(&x, sizeof(x), comm_->size() + 3);
    ADD_FAILURE() << "broadcast with an invalid root succeeded";
  } catch (const aiayn::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("rank " + std::to_string(comm_->rank()) + ": MPI_Ibcast failed: "), std::string::npos)
        << what;
  }
  // The communicator is still usable afterwards.
  int64_t one = 1;
  comm_->all_reduce_sum_host(&one, 1);
  EXPECT_EQ(one, comm_->size());
}

// The last rank joins an all-reduce only after the others' deadline: they fail with an error naming it (it did
// not answer the roll call), the communicator refuses further collectives at once, and nobody hangs. The late
// rank's own all-reduce still completes (the others' request stays alive in MPI), so the suite goes on.
TEST_F(MpiCommTest, ACollectiveMissingAPeerTimesOutNamingIt) {
  const int late = comm_->size() - 1;
  int64_t x = 1;
  if (comm_->rank() == late) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // past the deadline and the roll call
    comm_->all_reduce_sum_host(&x, 1);
    EXPECT_EQ(x, comm_->size());
  } else {
    comm_->set_timeout(1.0);
    EXPECT_EQ(comm_->timeout_seconds(), 1.0);
    const auto t0 = std::chrono::steady_clock::now();
    try {
      comm_->all_reduce_sum_host(&x, 1);
      ADD_FAILURE() << "an all-reduce without rank " << late << " succeeded";
    } catch (const aiayn::Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("MPI_Iallreduce (int64 sum of 1 values) timed out after 1 s (train.comm_timeout_s): no "
                          "answer from rank " + std::to_string(late) + " "),
                std::string::npos)
          << what;
    }
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_GE(took, 1.0);
    EXPECT_LT(took, 2.4);  // the deadline plus the roll call's 0.5 s, before the late rank arrives
    try {
      comm_->barrier();
      ADD_FAILURE() << "a barrier on a communicator whose collective timed out succeeded";
    } catch (const aiayn::Error& e) {
      EXPECT_NE(std::string(e.what()).find("unusable"), std::string::npos) << e.what();
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);  // progresses the abandoned all-reduce until the late rank's completes
}

TEST_F(MpiCommTest, StartUpCheckGathersEveryRank) {
  comm_->set_timeout(100);
  const auto all = check_all_ranks_present(*comm_, "rank " + std::to_string(comm_->rank()) + " on " + host_name(), 5);
  ASSERT_EQ(all.size(), static_cast<size_t>(comm_->size()));
  for (int r = 0; r < comm_->size(); ++r) EXPECT_EQ(all[r].rfind("rank " + std::to_string(r) + " on ", 0), 0u) << all[r];
  EXPECT_EQ(comm_->timeout_seconds(), 100);  // restored
}

}  // namespace
}  // namespace aiayn::comm

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  aiayn::comm::MpiSession session(&argc, &argv);
  if (!session.active() || session.size() < 2) {
    std::fprintf(stderr, "comm_mpi_test must run under mpiexec with at least 2 ranks\n");
    return 1;
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any_failed = failed;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any_failed && !failed) std::fprintf(stderr, "rank %d: another rank failed\n", session.rank());
  return any_failed;
}
