// The build of the NCCL communicator for machines without NCCL (aiayn_comm_no_nccl): it says so instead of
// failing later. Linked against that build explicitly, so the test runs in every build, CUDA or not.
#include <gtest/gtest.h>

#include <string>

#include "aiayn/error.hpp"
#include "comm/communicator.hpp"

namespace aiayn::comm {
namespace {

TEST(Nccl, UnavailableWithoutCudaSaysSo) {
  EXPECT_FALSE(nccl_compiled());
  try {
    make_nccl_communicator(0);
    ADD_FAILURE() << "make_nccl_communicator succeeded in a build without NCCL";
  } catch (const aiayn::Error& e) {
    EXPECT_NE(std::string(e.what()).find("without CUDA/NCCL"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace aiayn::comm
