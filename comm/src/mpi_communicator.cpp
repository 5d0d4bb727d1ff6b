// The MPI communicator: host buffers, in-place collectives on a private duplicate of MPI_COMM_WORLD, each one
// non-blocking and waited for with the deadline train.comm_timeout_s (see mpi_communicator.hpp).
// Counts above INT_MAX are split into chunks (MPI counts are int); every rank splits identically.
//
// Why not the blocking calls: a blocking MPI_Allreduce whose peer was frozen (SIGSTOP) or cut off waited
// forever: Open MPI's TCP transport has no timeout of its own, and its runtime only notices a node whose
// daemon's connection breaks (see README, "Several machines").
#include "mpi_communicator.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <thread>
#include <vector>

#include "aiayn/error.hpp"
#include "mpi_check.hpp"

namespace aiayn::comm {
namespace detail {

namespace {
using Clock = std::chrono::steady_clock;
constexpr size_t kMaxChunk = static_cast<size_t>(INT_MAX);
constexpr int kRollCallTag = 17;

Clock::duration to_clock(std::chrono::duration<double> d) { return std::chrono::duration_cast<Clock::duration>(d); }

// Between polls: busy for the first millisecond (a fast collective returns at once), then short sleeps, so a
// rank waiting for a slow peer leaves the core to the compute threads of others.
void pause_between_polls(Clock::time_point start) {
  if (Clock::now() - start > std::chrono::milliseconds(1)) std::this_thread::sleep_for(std::chrono::microseconds(50));
}
}  // namespace

MpiCommunicator::MpiCommunicator() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  AIAYN_CHECK(initialized && !finalized,
              "the MPI communicator needs an active MPI session (start the job with mpirun/mpiexec or srun)");
  AIAYN_MPI_CHECK(MPI_Comm_dup, (MPI_COMM_WORLD, &comm_));
  AIAYN_MPI_CHECK(MPI_Comm_set_errhandler, (comm_, MPI_ERRORS_RETURN));
  AIAYN_MPI_CHECK(MPI_Comm_dup, (MPI_COMM_WORLD, &watch_));
  AIAYN_MPI_CHECK(MPI_Comm_set_errhandler, (watch_, MPI_ERRORS_RETURN));
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
  if (finalized) return;
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  if (watch_ != MPI_COMM_NULL) MPI_Comm_free(&watch_);
}

void MpiCommunicator::set_timeout(double seconds) {
  AIAYN_CHECK(seconds >= 0, fmt::format("communication timeout must not be negative, got {}", seconds));
  timeout_ = std::chrono::duration<double>(seconds);
}

void MpiCommunicator::check_usable() const {
  if (!broken_.empty()) throw ::aiayn::Error(broken_ + " (the communicator is unusable after that)");
}

void MpiCommunicator::wait(MPI_Request* request, const char* call, const std::string& what) {
  const auto start = Clock::now();
  auto deadline = start + to_clock(timeout_);  // unused when timeout_ is 0 (no deadline)
  auto last_poll = start;
  for (;;) {
    int done = 0;
    const int rc = MPI_Test(request, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS)
      throw ::aiayn::Error(fmt::format("{} ({}) failed: {}", call, what, mpi_error_string(rc)), __FILE__, __LINE__);
    if (done) return;
    const auto now = Clock::now();
    // A gap of seconds between two polls means this process itself was stopped (SIGSTOP, then SIGCONT as the
    // job is ended): its peers did not keep it waiting, so that time does not count and it blames no one.
    if (now - last_poll > std::chrono::seconds(1)) deadline += now - last_poll;
    last_poll = now;
    if (timeout_.count() > 0 && now >= deadline) {
      const std::string missing = unanswered_ranks();
      broken_ = fmt::format("{} ({}) timed out after {:g} s (train.comm_timeout_s): {}", call, what, timeout_.count(),
                            missing.empty() ? std::string("every rank answered a roll call, so none is dead or frozen: "
                                                          "the ranks are not in the same collective")
                                            : "no answer from " + missing + " (dead, frozen or cut off)");
      throw ::aiayn::Error(broken_, __FILE__, __LINE__);
    }
    pause_between_polls(start);
  }
}

// Every rank whose collective missed the deadline sends its rank to every other on watch_ and listens for
// theirs. Live peers stuck in the same collective miss their deadlines within about a step of each other, so
// the grace period (a quarter of the deadline, 0.5 to 5 s) hears from all of them; a dead, frozen or cut-off
// peer stays silent. The requests are left pending: the job is about to end.
std::string MpiCommunicator::unanswered_ranks() {
  // Left allocated on purpose: the pending sends and receives may use them after this returns.
  auto* me = new int32_t(rank_);
  auto* theirs = new std::vector<int32_t>(static_cast<size_t>(size_), -1);
  std::vector<MPI_Request> recvs(static_cast<size_t>(size_), MPI_REQUEST_NULL);
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    MPI_Request send = MPI_REQUEST_NULL;
    MPI_Isend(me, 1, MPI_INT32_T, r, kRollCallTag, watch_, &send);
    MPI_Irecv(&(*theirs)[static_cast<size_t>(r)], 1, MPI_INT32_T, r, kRollCallTag, watch_, &recvs[static_cast<size_t>(r)]);
  }
  const auto grace = std::clamp(timeout_ / 4, std::chrono::duration<double>(0.5), std::chrono::duration<double>(5.0));
  const auto start = Clock::now();
  std::vector<bool> answered(static_cast<size_t>(size_), false);
  answered[static_cast<size_t>(rank_)] = true;
  while (Clock::now() - start < to_clock(grace)) {
    bool all = true;
    for (int r = 0; r < size_; ++r) {
      auto i = static_cast<size_t>(r);
      if (answered[i]) continue;
      int done = 0;
      if (MPI_Test(&recvs[i], &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && done) answered[i] = true;
      all = all && answered[i];
    }
    if (all) break;
    pause_between_polls(start);
  }
  std::vector<int> missing;
  for (int r = 0; r < size_; ++r)
    if (!answered[static_cast<size_t>(r)]) missing.push_back(r);
  if (missing.empty()) return "";
  return fmt::format("{} {}", missing.size() == 1 ? "rank" : "ranks", fmt::join(missing, ", "));
}

void MpiCommunicator::all_reduce(void* data, size_t n, size_t elem_bytes, MPI_Datatype type, MPI_Op op,
                                 const char* what) {
  check_usable();
  auto* bytes = static_cast<char*>(data);
  for (size_t done = 0; done < n;) {
    const size_t chunk = std::min(kMaxChunk, n - done);
    MPI_Request request = MPI_REQUEST_NULL;
    AIAYN_MPI_CHECK(MPI_Iallreduce,
                    (MPI_IN_PLACE, bytes + done * elem_bytes, static_cast<int>(chunk), type, op, comm_, &request));
    wait(&request, "MPI_Iallreduce", fmt::format("{} of {} values", what, n));
    done += chunk;
  }
}

void MpiCommunicator::all_reduce_sum(float* data, size_t n, void*) {
  all_reduce(data, n, sizeof(float), MPI_FLOAT, MPI_SUM, "float sum");
}
void MpiCommunicator::all_reduce_sum_host(double* data, size_t n) {
  all_reduce(data, n, sizeof(double), MPI_DOUBLE, MPI_SUM, "double sum");
}
void MpiCommunicator::all_reduce_sum_host(int64_t* data, size_t n) {
  all_reduce(data, n, sizeof(int64_t), MPI_INT64_T, MPI_SUM, "int64 sum");
}
void MpiCommunicator::all_reduce_max_host(int64_t* data, size_t n) {
  all_reduce(data, n, sizeof(int64_t), MPI_INT64_T, MPI_MAX, "int64 max");
}

void MpiCommunicator::broadcast_host(void* data, size_t bytes, int root) {
  check_usable();
  auto* p = static_cast<char*>(data);
  // At least one call, so a bad root is reported even for an empty buffer.
  size_t done = 0;
  do {
    const size_t chunk = std::min(kMaxChunk, bytes - done);
    MPI_Request request = MPI_REQUEST_NULL;
    AIAYN_MPI_CHECK(MPI_Ibcast, (p + done, static_cast<int>(chunk), MPI_BYTE, root, comm_, &request));
    wait(&request, "MPI_Ibcast", fmt::format("{} bytes from rank {}", bytes, root));
    done += chunk;
  } while (done < bytes);
}

std::vector<std::string> MpiCommunicator::all_gather_host(const std::string& mine) {
  check_usable();
  AIAYN_CHECK(mine.size() <= kMaxChunk, "rank " + std::to_string(rank_) + ": all_gather_host: string of " +
                                            std::to_string(mine.size()) + " bytes is too long for MPI");
  int my_size = static_cast<int>(mine.size());
  std::vector<int> sizes(static_cast<size_t>(size_));
  MPI_Request request = MPI_REQUEST_NULL;
  AIAYN_MPI_CHECK(MPI_Iallgather, (&my_size, 1, MPI_INT, sizes.data(), 1, MPI_INT, comm_, &request));
  wait(&request, "MPI_Iallgather", "string sizes");
  std::vector<int> offsets(sizes.size());
  int64_t total = 0;
  for (size_t r = 0; r < sizes.size(); ++r) {
    offsets[r] = static_cast<int>(total);
    total += sizes[r];
    AIAYN_CHECK(total <= INT_MAX, "rank " + std::to_string(rank_) +
                                      ": all_gather_host: gathered strings exceed 2 GiB, too long for MPI");
  }
  std::string all(static_cast<size_t>(total), '\0');
  AIAYN_MPI_CHECK(MPI_Iallgatherv, (mine.data(), my_size, MPI_CHAR, all.data(), sizes.data(), offsets.data(),
                                    MPI_CHAR, comm_, &request));
  wait(&request, "MPI_Iallgatherv", fmt::format("{} bytes of strings", total));
  std::vector<std::string> out(sizes.size());
  for (size_t r = 0; r < sizes.size(); ++r) out[r] = all.substr(static_cast<size_t>(offsets[r]), sizes[r]);
  return out;
}

void MpiCommunicator::barrier() {
  check_usable();
  MPI_Request request = MPI_REQUEST_NULL;
  AIAYN_MPI_CHECK(MPI_Ibarrier, (comm_, &request));
  wait(&request, "MPI_Ibarrier", "barrier");
}

}  // namespace detail

std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<detail::MpiCommunicator>(); }

}  // namespace aiayn::comm
