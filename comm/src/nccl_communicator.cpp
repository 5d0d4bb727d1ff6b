// The NCCL communicator: the float all-reduce runs on device buffers through NCCL; host collectives go
// through an MPI communicator (which also carries NCCL's unique id from rank 0).
//
// Nothing here may hang a job: the communicator is non-blocking (ncclCommInitRankConfig with blocking=0),
// and every operation is waited for by polling ncclCommGetAsyncError and cudaStreamQuery against a deadline.
// On an error or timeout the communicator is aborted (ncclCommAbort) and an aiayn::Error names the rank and
// the call; the caller then ends the job with abort_job so that no peer waits forever.
#include "comm/communicator.hpp"

#include "aiayn/error.hpp"

#if AIAYN_HAVE_NCCL
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "mpi_communicator.hpp"
#endif

namespace aiayn::comm {

#if AIAYN_HAVE_NCCL

namespace {

using Clock = std::chrono::steady_clock;

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(int cuda_device, double timeout_seconds);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  Backend backend() const override { return Backend::NCCL; }
  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  int local_rank() const override { return host_->local_rank(); }
  void all_reduce_sum(float* data, size_t n, void* stream) override;
  void all_reduce_sum_async(float* data, size_t n, void* stream) override;
  void wait(void* stream) override;
  void abort() noexcept override;
  void all_reduce_sum_host(double* data, size_t n) override { host_->all_reduce_sum_host(data, n); }
  void all_reduce_sum_host(int64_t* data, size_t n) override { host_->all_reduce_sum_host(data, n); }
  void all_reduce_max_host(int64_t* data, size_t n) override { host_->all_reduce_max_host(data, n); }
  void broadcast_host(void* data, size_t bytes, int root) override { host_->broadcast_host(data, bytes, root); }
  std::vector<std::string> all_gather_host(const std::string& mine) override {
    return host_->all_gather_host(mine);
  }
  void barrier() override { host_->barrier(); }
  void set_timeout(double seconds) override {
    AIAYN_CHECK(seconds > 0, "NCCL timeout must be positive, got " + std::to_string(seconds));
    host_->set_timeout(seconds);
    timeout_ = std::chrono::duration<double>(seconds);
  }
  double timeout_seconds() const override { return timeout_.count(); }

 private:
  [[noreturn]] void fail(const std::string& call, const std::string& why);
  void check_nccl(ncclResult_t r, const char* call);
  // Waits until the communicator has no operation in progress (non-blocking calls complete asynchronously).
  void wait_ready(const char* call, Clock::time_point deadline);

  std::unique_ptr<detail::MpiCommunicator> host_;
  ncclComm_t comm_ = nullptr;
  int device_ = 0;
  std::chrono::duration<double> timeout_;
};

std::string seconds(std::chrono::duration<double> d) {
  char text[32];
  std::snprintf(text, sizeof text, "%g s", d.count());
  return text;
}

std::string nccl_error_text(ncclComm_t comm, ncclResult_t r) {
  std::string text = ncclGetErrorString(r);
  if (comm != nullptr) {
    const char* last = ncclGetLastError(comm);
    if (last != nullptr && *last != '\0') text += " (" + std::string(last) + ")";
  }
  return text;
}

void NcclCommunicator::fail(const std::string& call, const std::string& why) {
  if (comm_ != nullptr) {
    ncclCommAbort(comm_);  // frees the communicator and unblocks any kernel still waiting for peers
    comm_ = nullptr;
  }
  throw ::aiayn::Error(call + " failed: " + why, __FILE__, __LINE__);
}

void NcclCommunicator::check_nccl(ncclResult_t r, const char* call) {
  if (r == ncclSuccess || r == ncclInProgress) return;
  fail(call, nccl_error_text(comm_, r));
}

void NcclCommunicator::wait_ready(const char* call, Clock::time_point deadline) {
  for (;;) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess) fail(std::string(call) + " (ncclCommGetAsyncError)", nccl_error_text(comm_, r));
    if (state == ncclSuccess) return;
    if (state != ncclInProgress) fail(call, nccl_error_text(comm_, state));
    if (Clock::now() > deadline)
      fail(call, "timed out after " + seconds(timeout_) + " (a peer may have died or hung; train.comm_timeout_s)");
    std::this_thread::yield();
  }
}

NcclCommunicator::NcclCommunicator(int cuda_device, double timeout_seconds)
    : host_(std::make_unique<detail::MpiCommunicator>()), device_(cuda_device), timeout_(timeout_seconds) {
  AIAYN_CHECK(timeout_seconds > 0, "NCCL timeout must be positive, got " + std::to_string(timeout_seconds));
  host_->set_timeout(timeout_seconds);  // the host collectives (and this constructor's) share the deadline
  const cudaError_t ce = cudaSetDevice(device_);

  // Rank 0 makes the id; it travels with a status, and every rank's own readiness is agreed on before the
  // init, so that a rank that cannot start fails every rank at once (the others would otherwise wait in
  // ncclCommInitRank until the deadline).
  struct {
    int32_t status;
    ncclUniqueId id;
  } hello;
  std::memset(&hello, 0, sizeof(hello));
  if (host_->rank() == 0) hello.status = static_cast<int32_t>(ncclGetUniqueId(&hello.id));
  host_->broadcast_host(&hello, sizeof(hello), 0);
  int64_t unready = ce == cudaSuccess ? 0 : host_->rank() + 1;  // the last rank that cannot start, plus one
  host_->all_reduce_max_host(&unready, 1);
  if (ce != cudaSuccess)
    fail("cudaSetDevice(" + std::to_string(device_) + ")", cudaGetErrorString(ce));
  if (unready > 0) fail("NCCL init", "rank " + std::to_string(unready - 1) + " could not select its GPU");
  if (hello.status != ncclSuccess)
    fail("ncclGetUniqueId", "on rank 0: " + std::string(ncclGetErrorString(static_cast<ncclResult_t>(hello.status))));

  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(timeout_);
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t r = ncclCommInitRankConfig(&comm_, host_->size(), hello.id, host_->rank(), &config);
  if (r != ncclSuccess && r != ncclInProgress) fail("ncclCommInitRankConfig", nccl_error_text(comm_, r));
  wait_ready("ncclCommInitRankConfig", deadline);
#else
  ncclResult_t r = ncclCommInitRank(&comm_, host_->size(), hello.id, host_->rank());
  if (r != ncclSuccess) fail("ncclCommInitRank", nccl_error_text(comm_, r));
#endif
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ == nullptr) return;
  // Finalize flushes outstanding work; a destructor cannot throw, so any trouble ends in an abort.
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(timeout_);
  ncclResult_t r = ncclCommFinalize(comm_);
  bool clean = (r == ncclSuccess || r == ncclInProgress);
  while (clean) {
    ncclResult_t state = ncclSuccess;
    if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess || (state != ncclSuccess && state != ncclInProgress) ||
        Clock::now() > deadline) {
      clean = false;
      break;
    }
    if (state == ncclSuccess) break;
    std::this_thread::yield();
  }
  if (clean) {
    ncclCommDestroy(comm_);
  } else {
    ncclCommAbort(comm_);
  }
  comm_ = nullptr;
}

void NcclCommunicator::all_reduce_sum(float* data, size_t n, void* stream) {
  all_reduce_sum_async(data, n, stream);
  wait(stream);
}

void NcclCommunicator::all_reduce_sum_async(float* data, size_t n, void* stream) {
  AIAYN_CHECK(comm_ != nullptr, "ncclAllReduce: the NCCL communicator was aborted by an earlier error");
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(timeout_);
  check_nccl(ncclAllReduce(data, data, n, ncclFloat, ncclSum, comm_, static_cast<cudaStream_t>(stream)),
             "ncclAllReduce");
  // Non-blocking: the call is enqueued on the stream only once the communicator reports success.
  wait_ready("ncclAllReduce (enqueue)", deadline);
}

// Everything on the stream (the all-reduces and whatever it waits for) must finish before the deadline; a
// dead or hung peer shows up as the deadline passing or as NCCL's asynchronous error.
void NcclCommunicator::wait(void* stream) {
  AIAYN_CHECK(comm_ != nullptr, "ncclAllReduce: the NCCL communicator was aborted by an earlier error");
  auto s = static_cast<cudaStream_t>(stream);
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(timeout_);
  for (;;) {
    const cudaError_t q = cudaStreamQuery(s);
    if (q != cudaSuccess && q != cudaErrorNotReady) fail("ncclAllReduce (cudaStreamQuery)", cudaGetErrorString(q));
    // Checked after the stream too: an operation that failed may still have let the stream finish.
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess) fail("ncclAllReduce (ncclCommGetAsyncError)", nccl_error_text(comm_, r));
    if (state != ncclSuccess && state != ncclInProgress) fail("ncclAllReduce", nccl_error_text(comm_, state));
    if (q == cudaSuccess) break;
    if (Clock::now() > deadline)
      fail("ncclAllReduce", "timed out after " + seconds(timeout_) + " (a peer may have died or hung; train.comm_timeout_s)");
    std::this_thread::yield();
  }
}

// ncclCommAbort ends the operations in flight (their kernels stop waiting for peers), so the buffers they use
// may be freed next; without it a cudaFree (which waits for the device) would wait for a peer that may never
// come.
void NcclCommunicator::abort() noexcept {
  if (comm_ == nullptr) return;
  ncclCommAbort(comm_);
  comm_ = nullptr;
}

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(int cuda_device, double timeout_seconds) {
  return std::make_unique<NcclCommunicator>(cuda_device, timeout_seconds);
}
bool nccl_compiled() { return true; }
std::string nccl_version() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "NCCL version unknown (ncclGetVersion failed)";
  // NCCL_VERSION(X, Y, Z) = X * 10000 + Y * 100 + Z since 2.9 (X * 1000 + Y * 100 + Z before).
  const int major = v >= 10000 ? v / 10000 : v / 1000, minor = v >= 10000 ? (v / 100) % 100 : (v / 100) % 10;
  return "NCCL " + std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(v % 100);
}

#else  // !AIAYN_HAVE_NCCL

std::unique_ptr<Communicator> make_nccl_communicator(int, double) {
  AIAYN_FAIL("the NCCL communicator is unavailable: this build has no NCCL (built without CUDA/NCCL, or the CUDA "
             "emulator's test build; use the mpi backend)");
}
bool nccl_compiled() { return false; }
std::string nccl_version() { return "no NCCL in this build"; }

#endif

}  // namespace aiayn::comm
