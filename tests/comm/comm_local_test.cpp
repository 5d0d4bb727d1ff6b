// The one-rank paths: Local communicator identities, MpiSession without a launcher.
#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

#include "aiayn/error.hpp"
#include "comm/communicator.hpp"

namespace aiayn::comm {
namespace {

TEST(LocalCommunicator, EveryCollectiveIsTheIdentity) {
  auto c = make_local_communicator();
  EXPECT_EQ(c->backend(), Backend::Local);
  EXPECT_STREQ(backend_name(c->backend()), "local");
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->size(), 1);
  EXPECT_EQ(c->local_rank(), 0);

  std::vector<float> f{1.0f, -2.0f, 3.5f};
  c->all_reduce_sum(f.data(), f.size());
  EXPECT_EQ(f, (std::vector<float>{1.0f, -2.0f, 3.5f}));
  std::vector<double> d{0.25, 7.0};
  c->all_reduce_sum_host(d.data(), d.size());
  EXPECT_EQ(d, (std::vector<double>{0.25, 7.0}));
  std::vector<int64_t> i{5, -9};
  c->all_reduce_sum_host(i.data(), i.size());
  EXPECT_EQ(i, (std::vector<int64_t>{5, -9}));
  c->all_reduce_max_host(i.data(), i.size());
  EXPECT_EQ(i, (std::vector<int64_t>{5, -9}));
  int64_t cursor = 42;
  c->broadcast_host(&cursor, sizeof(cursor), 0);
  EXPECT_EQ(cursor, 42);
  EXPECT_THROW(c->broadcast_host(&cursor, sizeof(cursor), 1), aiayn::Error);
  EXPECT_EQ(c->all_gather_host("only"), (std::vector<std::string>{"only"}));
  c->barrier();
}

TEST(MpiSession, WithoutALauncherRunsAsOneRankWithoutMpi) {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_ID"})
    unsetenv(name);
  EXPECT_FALSE(MpiSession::launched_by_mpi());
  int argc = 1;
  char name[] = "comm_local_test";
  char* args[] = {name, nullptr};
  char** argv = args;
  MpiSession session(&argc, &argv);
  EXPECT_FALSE(session.active());
  EXPECT_EQ(session.rank(), 0);
  EXPECT_EQ(session.size(), 1);
  EXPECT_EQ(session.local_rank(), 0);
  // Without MPI the MPI communicator refuses with a message, rather than crashing inside MPI.
  try {
    make_mpi_communicator();
    ADD_FAILURE() << "make_mpi_communicator succeeded without MPI";
  } catch (const aiayn::Error& e) {
    EXPECT_NE(std::string(e.what()).find("mpirun"), std::string::npos) << e.what();
  }
}

TEST(MpiSession, LauncherEnvironmentIsDetected) {
  setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  EXPECT_TRUE(MpiSession::launched_by_mpi());
  unsetenv("OMPI_COMM_WORLD_SIZE");
  setenv("PMI_SIZE", "4", 1);
  EXPECT_TRUE(MpiSession::launched_by_mpi());
  unsetenv("PMI_SIZE");
}

}  // namespace
}  // namespace aiayn::comm
