#pragma once
// Internal to comm: the MPI communicator, also the host-collective half of the NCCL communicator.
// It works on its own duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN, so library traffic never mixes
// with anyone else's and every failure is an aiayn::Error naming the rank and the call.
//
// Every collective is non-blocking (MPI_Iallreduce, MPI_Ibcast, MPI_Iallgather(v), MPI_Ibarrier), polled with
// MPI_Test against the deadline. A collective that misses it cannot be cancelled (MPI has no way to), so the
// communicator is then broken: the error names the ranks that did not answer a roll call on a second
// communicator, and every later call repeats it at once, so the job ends instead of waiting again.
#include <mpi.h>

#include <chrono>
#include <string>

#include "comm/communicator.hpp"

namespace aiayn::comm::detail {

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator();  // collective over MPI_COMM_WORLD
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  Backend backend() const override { return Backend::MPI; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  void all_reduce_sum(float* data, size_t n, void* stream) override;
  void all_reduce_sum_host(double* data, size_t n) override;
  void all_reduce_sum_host(int64_t* data, size_t n) override;
  void all_reduce_max_host(int64_t* data, size_t n) override;
  void broadcast_host(void* data, size_t bytes, int root) override;
  std::vector<std::string> all_gather_host(const std::string& mine) override;
  void barrier() override;
  void set_timeout(double seconds) override;
  double timeout_seconds() const override { return timeout_.count(); }

  MPI_Comm comm() const { return comm_; }

 private:
  void all_reduce(void* data, size_t n, size_t elem_bytes, MPI_Datatype type, MPI_Op op, const char* what);
  // Throws at once when an earlier collective missed its deadline (the communicator is unusable).
  void check_usable() const;
  // Waits for `request` (started by `call`; `what` describes the operation) until the deadline.
  void wait(MPI_Request* request, const char* call, const std::string& what);
  // Ranks that do not answer a roll call on watch_ within a grace period: "rank 1", "ranks 1, 3", or "".
  std::string unanswered_ranks();

  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Comm watch_ = MPI_COMM_NULL;  // the roll call after a missed deadline, apart from the stuck collective
  int rank_ = 0, size_ = 1, local_rank_ = 0;
  std::chrono::duration<double> timeout_{0.0};  // 0: none, until set_timeout (train sets train.comm_timeout_s)
  std::string broken_;  // the error of the collective that missed its deadline, or ""
};

}  // namespace aiayn::comm::detail
