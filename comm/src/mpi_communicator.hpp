#pragma once
// Internal to comm: the MPI communicator, also the host-collective half of the NCCL communicator.
// It works on its own duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN, so library traffic never mixes
// with anyone else's and every failure is an aiayn::Error naming the rank and the call.
#include <mpi.h>

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

  MPI_Comm comm() const { return comm_; }

 private:
  void all_reduce(void* data, size_t n, size_t elem_bytes, MPI_Datatype type, MPI_Op op);
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1, local_rank_ = 0;
};

}  // namespace aiayn::comm::detail
