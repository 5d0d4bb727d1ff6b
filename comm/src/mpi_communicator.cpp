// The MPI communicator: host buffers, in-place collectives on a private duplicate of MPI_COMM_WORLD.
// Counts above INT_MAX are split into chunks (MPI counts are int); every rank splits identically.
#include "mpi_communicator.hpp"

#include <algorithm>
#include <climits>
#include <cstdint>

#include "aiayn/error.hpp"
#include "mpi_check.hpp"

namespace aiayn::comm {
namespace detail {

namespace {
constexpr size_t kMaxChunk = static_cast<size_t>(INT_MAX);
}

MpiCommunicator::MpiCommunicator() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  AIAYN_CHECK(initialized && !finalized,
              "the MPI communicator needs an active MPI session (start the job with mpirun/mpiexec or srun)");
  AIAYN_MPI_CHECK(MPI_Comm_dup, (MPI_COMM_WORLD, &comm_));
  AIAYN_MPI_CHECK(MPI_Comm_set_errhandler, (comm_, MPI_ERRORS_RETURN));
  AIAYN_MPI_CHECK(MPI_Comm_rank, (comm_, &rank_));
  AIAYN_MPI_CHECK(MPI_Comm_size, (comm_, &size_));
  MPI_Comm node = MPI_COMM_NULL;
  AIAYN_MPI_CHECK(MPI_Comm_split_type, (comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
  AIAYN_MPI_CHECK(MPI_Comm_set_errhandler, (node, MPI_ERRORS_RETURN));
  AIAYN_MPI_CHECK(MPI_Comm_rank, (node, &local_rank_));
  AIAYN_MPI_CHECK(MPI_Comm_free, (&node));
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiCommunicator::all_reduce(void* data, size_t n, size_t elem_bytes, MPI_Datatype type, MPI_Op op) {
  auto* bytes = static_cast<char*>(data);
  for (size_t done = 0; done < n;) {
    const size_t chunk = std::min(kMaxChunk, n - done);
    AIAYN_MPI_CHECK(MPI_Allreduce,
                    (MPI_IN_PLACE, bytes + done * elem_bytes, static_cast<int>(chunk), type, op, comm_));
    done += chunk;
  }
}

void MpiCommunicator::all_reduce_sum(float* data, size_t n, void*) {
  all_reduce(data, n, sizeof(float), MPI_FLOAT, MPI_SUM);
}
void MpiCommunicator::all_reduce_sum_host(double* data, size_t n) {
  all_reduce(data, n, sizeof(double), MPI_DOUBLE, MPI_SUM);
}
void MpiCommunicator::all_reduce_sum_host(int64_t* data, size_t n) {
  all_reduce(data, n, sizeof(int64_t), MPI_INT64_T, MPI_SUM);
}
void MpiCommunicator::all_reduce_max_host(int64_t* data, size_t n) {
  all_reduce(data, n, sizeof(int64_t), MPI_INT64_T, MPI_MAX);
}

void MpiCommunicator::broadcast_host(void* data, size_t bytes, int root) {
  auto* p = static_cast<char*>(data);
  // At least one call, so a bad root is reported even for an empty buffer.
  size_t done = 0;
  do {
    const size_t chunk = std::min(kMaxChunk, bytes - done);
    AIAYN_MPI_CHECK(MPI_Bcast, (p + done, static_cast<int>(chunk), MPI_BYTE, root, comm_));
    done += chunk;
  } while (done < bytes);
}

std::vector<std::string> MpiCommunicator::all_gather_host(const std::string& mine) {
  AIAYN_CHECK(mine.size() <= kMaxChunk, "rank " + std::to_string(rank_) + ": all_gather_host: string of " +
                                            std::to_string(mine.size()) + " bytes is too long for MPI");
  int my_size = static_cast<int>(mine.size());
  std::vector<int> sizes(static_cast<size_t>(size_));
  AIAYN_MPI_CHECK(MPI_Allgather, (&my_size, 1, MPI_INT, sizes.data(), 1, MPI_INT, comm_));
  std::vector<int> offsets(sizes.size());
  int64_t total = 0;
  for (size_t r = 0; r < sizes.size(); ++r) {
    offsets[r] = static_cast<int>(total);
    total += sizes[r];
    AIAYN_CHECK(total <= INT_MAX, "rank " + std::to_string(rank_) +
                                      ": all_gather_host: gathered strings exceed 2 GiB, too long for MPI");
  }
  std::string all(static_cast<size_t>(total), '\0');
  AIAYN_MPI_CHECK(MPI_Allgatherv, (mine.data(), my_size, MPI_CHAR, all.data(), sizes.data(), offsets.data(),
                                   MPI_CHAR, comm_));
  std::vector<std::string> out(sizes.size());
  for (size_t r = 0; r < sizes.size(); ++r) out[r] = all.substr(static_cast<size_t>(offsets[r]), sizes[r]);
  return out;
}

void MpiCommunicator::barrier() { AIAYN_MPI_CHECK(MPI_Barrier, (comm_)); }

}  // namespace detail

std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<detail::MpiCommunicator>(); }

}  // namespace aiayn::comm
