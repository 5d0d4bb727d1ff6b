// The one-rank communicator: every collective over a single rank is the identity.
#include "comm/communicator.hpp"

#include "aiayn/error.hpp"

namespace aiayn::comm {

namespace {

class LocalCommunicator final : public Communicator {
 public:
  Backend backend() const override { return Backend::Local; }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  void all_reduce_sum(float*, size_t, void*) override {}
  void all_reduce_sum_host(double*, size_t) override {}
  void all_reduce_sum_host(int64_t*, size_t) override {}
  void all_reduce_max_host(int64_t*, size_t) override {}
  void broadcast_host(void*, size_t, int root) override {
    AIAYN_CHECK(root == 0, "rank 0: broadcast_host: root " + std::to_string(root) + " out of range (size 1)");
  }
  std::vector<std::string> all_gather_host(const std::string& mine) override { return {mine}; }
  void barrier() override {}
};

}  // namespace

std::unique_ptr<Communicator> make_local_communicator() { return std::make_unique<LocalCommunicator>(); }

}  // namespace aiayn::comm
