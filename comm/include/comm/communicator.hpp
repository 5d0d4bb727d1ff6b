#pragma once
// Communication between ranks behind one interface, passed explicitly (never global).
//
// Implementations: Local (one rank, every collective is the identity), MPI (host buffers; the CPU backend),
// NCCL (device buffers for the float all-reduce; the unique id travels by MPI_Bcast). Small host-side
// collectives (flags, statistics, broadcast of a cursor, gathering strings) go through MPI on both MPI and
// NCCL communicators. Every failure throws aiayn::Error naming this rank and the call; the caller adds the
// step and ends the job (MPI_Abort through abort_job) so no peer hangs.
//
// Deadlines: every collective, MPI and NCCL alike, is started non-blocking and waited for until
// timeout_seconds() (train.comm_timeout_s in training) have passed; then it throws an error naming the operation, the
// timeout and the ranks that did not answer a short roll call (a dead, frozen or cut-off peer), instead of
// hanging. A collective that cannot complete cannot be cancelled either: after such an error the communicator
// is unusable and the job must end.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace aiayn::comm {

enum class Backend { Local, MPI, NCCL };
const char* backend_name(Backend b);

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual Backend backend() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual int local_rank() const = 0;  // index among the ranks on this node (GPU selection)

  // In-place sum across ranks. NCCL: `data` is a device pointer, enqueued on `stream` (nullptr: default),
  // waited for with a deadline. Local and MPI: host pointer, `stream` ignored.
  virtual void all_reduce_sum(float* data, size_t n, void* stream = nullptr) = 0;
  // The same sum, started and not waited for: NCCL enqueues it on `stream` and returns; wait(stream) then
  // blocks (with the deadline) until everything enqueued on that stream is done. Local and MPI run the sum
  // at once and wait is a no-op. Every rank must start the same sums in the same order.
  virtual void all_reduce_sum_async(float* data, size_t n, void* stream) { all_reduce_sum(data, n, stream); }
  virtual void wait(void* stream) { (void)stream; }
  // Abandons whatever sums are still in flight, at once and without waiting for peers (NCCL: ncclCommAbort),
  // so that device memory they read or write can be freed; the communicator is unusable afterwards. Called
  // while an error unwinds past sums in flight (GradientReducer's destructor). Local and MPI: nothing to do.
  virtual void abort() noexcept {}
  // Host-memory collectives on every backend.
  virtual void all_reduce_sum_host(double* data, size_t n) = 0;
  virtual void all_reduce_sum_host(int64_t* data, size_t n) = 0;
  virtual void all_reduce_max_host(int64_t* data, size_t n) = 0;
  virtual void broadcast_host(void* data, size_t bytes, int root) = 0;
  virtual std::vector<std::string> all_gather_host(const std::string& mine) = 0;  // index = rank
  virtual void barrier() = 0;

  // The deadline of every later collective, in seconds; 0 (the MPI communicator's default, so commands other
  // than train wait as long as their peers compute) means none. Local: ignored.
  virtual void set_timeout(double seconds) { (void)seconds; }
  virtual double timeout_seconds() const { return 0; }
};

// The start-up check: before the first step every rank takes part in a small all-reduce and a gather of
// `mine` (its host and device) with the short deadline `timeout_seconds` (the communicator's own deadline is
// restored afterwards). Returns every rank's `mine`, index = rank; a rank that is missing or mis-wired fails
// every rank within seconds with an error naming the ranks that did not answer.
std::vector<std::string> check_all_ranks_present(Communicator& comm, const std::string& mine, double timeout_seconds);
// This machine's host name (what the start-up check reports).
std::string host_name();

// MPI's lifetime. Initialises MPI (MPI_THREAD_FUNNELED) when the process was started by mpirun/mpiexec or
// srun (detected from the launcher's environment), so that a plain `aiayn ...` runs as one rank without MPI.
// Finalises on destruction.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  bool active() const { return active_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }
  static bool launched_by_mpi();

 private:
  bool active_ = false;
  bool owns_ = false;  // MPI was initialised here (not by someone before us), so finalise it here
  int rank_ = 0, size_ = 1, local_rank_ = 0;
};

// Ends every rank of the job at once after a fatal error on one (MPI_Abort when MPI is active; otherwise
// std::exit). Only main calls it.
[[noreturn]] void abort_job(int status);

std::unique_ptr<Communicator> make_local_communicator();
// Requires an active MpiSession. size() == 1 under MPI is fine.
std::unique_ptr<Communicator> make_mpi_communicator();
// Requires an active MpiSession (or size 1) and the CUDA backend; `timeout_seconds` bounds every collective
// (ncclCommGetAsyncError polling, then ncclCommAbort and an error naming the rank and call).
std::unique_ptr<Communicator> make_nccl_communicator(int cuda_device, double timeout_seconds = 600.0);
bool nccl_compiled();
// "NCCL 2.x.y" of the library this process loaded (ncclGetVersion), or why there is none.
std::string nccl_version();

}  // namespace aiayn::comm
