// The choice of the gradient communicator (comm/gradient_communicator.hpp) on its inputs: no GPU needed.
#include <gtest/gtest.h>

#include <string>

#include "aiayn/error.hpp"
#include "comm/gradient_communicator.hpp"

namespace aiayn::comm {
namespace {

constexpr auto kNccl = GradientCommRequest::NcclWherePossible;
constexpr auto kMpi = GradientCommRequest::Mpi;

TEST(GradientCommRequest, UnsetEmptyAndNcclPreferNcclMpiKeepsTheRunsCommunicator) {
  EXPECT_EQ(parse_gradient_comm_request(nullptr), kNccl);
  EXPECT_EQ(parse_gradient_comm_request(""), kNccl);
  EXPECT_EQ(parse_gradient_comm_request("nccl"), kNccl);
  EXPECT_EQ(parse_gradient_comm_request("mpi"), kMpi);
}

TEST(GradientCommRequest, AnUnknownValueIsAnErrorNamingTheVariableAndTheValue) {
  for (const char* bad : {"MPI", "gloo", "mpi ", "1"}) {
    try {
      parse_gradient_comm_request(bad);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("AIAYN_GRADIENT_COMM='" + std::string(bad) + "'"), std::string::npos) << what;
      EXPECT_NE(what.find("'mpi'"), std::string::npos) << what;
    }
  }
}

GradientCommChoice choose(bool gpu, Backend backend, int ranks, GradientCommRequest request, bool nccl) {
  return choose_gradient_comm({gpu, backend, ranks, request, nccl});
}

TEST(ChooseGradientComm, GpuRanksUnderMpiUseNcclWhenCompiledAndNotRefused) {
  for (int ranks : {1, 2, 8}) {
    const auto c = choose(true, Backend::MPI, ranks, kNccl, true);
    EXPECT_TRUE(c.use_nccl) << ranks;
    EXPECT_FALSE(c.host_staged) << ranks;  // NCCL sums device buffers
  }
}

TEST(ChooseGradientComm, GpuRanksWithoutNcclOrWithMpiRequestedAreHostStagedAcrossRanks) {
  for (const bool compiled : {true, false}) {
    for (const auto request : {kNccl, kMpi}) {
      if (compiled && request == kNccl) continue;  // the NCCL case above
      const auto two = choose(true, Backend::MPI, 2, request, compiled);
      EXPECT_FALSE(two.use_nccl);
      EXPECT_TRUE(two.host_staged);
      const auto one = choose(true, Backend::MPI, 1, request, compiled);  // `mpirun -np 1`: nothing to move
      EXPECT_FALSE(one.use_nccl);
      EXPECT_FALSE(one.host_staged);
    }
  }
}

TEST(ChooseGradientComm, APlainProcessKeepsTheLocalCommunicator) {
  // NCCL's unique id travels by MPI: without an MPI session there is no NCCL, and one rank stages nothing.
  for (const bool gpu : {true, false}) {
    const auto c = choose(gpu, Backend::Local, 1, kNccl, true);
    EXPECT_FALSE(c.use_nccl);
    EXPECT_FALSE(c.host_staged);
  }
}

TEST(ChooseGradientComm, CpuGradientsAlwaysUseTheRunsCommunicatorInPlace) {
  for (const auto backend : {Backend::Local, Backend::MPI})
    for (const auto request : {kNccl, kMpi})
      for (const bool compiled : {true, false})
        for (int ranks : {1, 2}) {
          const auto c = choose(false, backend, ranks, request, compiled);
          EXPECT_FALSE(c.use_nccl);
          EXPECT_FALSE(c.host_staged);
        }
}

TEST(MakeGradientCommunicator, WithoutNcclItIsTheRunsOwnCommunicator) {
  auto run = make_local_communicator();
  for (const bool gpu : {true, false}) {
    const GradientCommunicator g = make_gradient_communicator(*run, gpu, 0, 10.0, kNccl);
    EXPECT_EQ(&g.comm(), run.get());
    EXPECT_FALSE(g.host_staged());
  }
}

}  // namespace
}  // namespace aiayn::comm
