// A fake NCCL for emulated test binaries: the subset of nccl.h that comm/src/nccl_communicator.cpp calls, with
// nccl.h's own signatures and C linkage (libnccl is never linked), carried by MPI between the ranks of an
// `mpirun` job, each with its own emulated device.
//
// It keeps NCCL's documented contract where the communicator code depends on it:
// - Non-blocking communicators (ncclConfig_t.blocking = 0): ncclCommInitRankConfig returns ncclInProgress and
//   ncclCommGetAsyncError reports ncclInProgress until the init has completed (an MPI_Comm_idup); every
//   ncclAllReduce returns ncclInProgress and its enqueue completes at the next ncclCommGetAsyncError. A call on
//   a communicator still in progress is refused (ncclInvalidUsage), as NCCL requires.
// - ncclAllReduce is stream-ordered and asynchronous: it reads its input when enqueued (everything before it on
//   the stream is complete then, the emulator's runtime being synchronous), starts an MPI_Iallreduce and stays in
//   flight on its stream (stream_add_work) until every peer has joined; only then is the sum written to the
//   output. cudaStreamQuery says cudaErrorNotReady meanwhile, so a missing wait shows as unreduced gradients.
// - Every rank must pass the same ncclUniqueId (checked at init), its own MPI rank and the job's size.
// - ncclCommAbort frees the communicator at once; operations in flight are abandoned (their output is left as
//   it was). ncclCommFinalize reports ncclInProgress until the operations in flight have completed.
// - Only ncclFloat with ncclSum, on device memory (each buffer inside one emulated allocation); anything else is
//   ncclInvalidArgument naming what is outside this subset.
//
// Fault injection (test-only), each "RANK:CALL" (the CALL-th ncclAllReduce of that rank, from 1):
//   AIAYN_EMU_NCCL_HANG   that rank stops inside the call for good, as a rank stuck in a driver call or a kernel:
//                         its peers' operations never complete (their deadline must end the job);
//   AIAYN_EMU_NCCL_ERROR  that operation fails with ncclRemoteError, as after a dropped connection: it never
//                         reaches the peers, its stream completes at once (output untouched), and only
//                         ncclCommGetAsyncError tells (the peers wait until the job is ended).
#include <mpi.h>
#include <nccl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "emu_internal.hpp"

namespace aiayn::emu {
namespace {

constexpr uint32_t kCommMagic = 0x4e43434c;
constexpr int kMaxMpiCount = 1 << 30;  // MPI counts are ints: longer buffers go in several requests

// What operations in flight need of their communicator; it outlives the handle (abort frees the handle at once).
struct CommState {
  MPI_Comm mpi = MPI_COMM_NULL;
  int rank = 0, nranks = 0;
  bool blocking = true;
  bool aborted = false;
  ncclResult_t async = ncclSuccess;  // ncclInProgress, or the first asynchronous error
  std::string last_error;
  // What overlapped the all-reduces (reported when the communicator is destroyed): how many were in flight at
  // once, and how many other operations (kernels, copies, library calls) were enqueued while any was.
  int64_t calls = 0, in_flight = 0, most_in_flight = 0;
  uint64_t busy_since = 0, overlapped = 0, own_during = 0;
  void started() {
    ++calls;
    if (in_flight++ == 0) busy_since = operations_issued(), own_during = 0;
    ++own_during;
    most_in_flight = std::max(most_in_flight, in_flight);
  }
  void ended() {
    if (--in_flight == 0) overlapped += operations_issued() - busy_since - own_during;
  }
};

struct Op {
  std::shared_ptr<CommState> comm;
  std::vector<float> staged;  // the input, read when enqueued; the sum once the requests complete
  std::vector<MPI_Request> requests;
  float* out = nullptr;
  bool fail = false;  // AIAYN_EMU_NCCL_ERROR
  bool done = false;

  bool advance(bool wait) {
    if (done) return true;
    if (comm->aborted) return done = true;  // abandoned: the output keeps what it had
    if (!complete(wait)) return false;
    comm->ended();
    return done = true;
  }
  bool complete(bool wait) {
    if (wait) {
      MPI_Waitall(int(requests.size()), requests.data(), MPI_STATUSES_IGNORE);
    } else {
      int flag = 0;
      MPI_Testall(int(requests.size()), requests.data(), &flag, MPI_STATUSES_IGNORE);
      if (!flag) return false;
    }
    if (fail) {
      set_error(ncclRemoteError, "emulated failure (AIAYN_EMU_NCCL_ERROR): the connection to a peer closed");
      return true;
    }
    std::string why;
    if (!staged.empty() && !device_range_ok(out, staged.size() * sizeof(float), &why)) {
      report("ncclAllReduce: the output is no longer device memory when the operation completes: " + why);
      set_error(ncclInvalidUsage, "ncclAllReduce: the output buffer was freed while the operation was in flight");
    } else if (!staged.empty()) {
      DeviceAccess access("ncclAllReduce");
      std::memcpy(out, staged.data(), staged.size() * sizeof(float));
      access.close();
    }
    return true;
  }
  void set_error(ncclResult_t r, const std::string& why) {
    if (comm->async == ncclSuccess || comm->async == ncclInProgress) comm->async = r;
    comm->last_error = why;
  }
};

}  // namespace
}  // namespace aiayn::emu

struct ncclComm {
  uint32_t magic = 0;
  std::shared_ptr<aiayn::emu::CommState> state;
  MPI_Request init = MPI_REQUEST_NULL;  // the MPI_Comm_idup of a non-blocking init
  uint64_t id_hash = 0;
  bool finalizing = false;
  std::vector<std::shared_ptr<aiayn::emu::Op>> ops;
};

namespace aiayn::emu {
namespace {

std::string g_last_error;  // for ncclGetLastError(nullptr) and failed inits

ncclResult_t fail(ncclComm_t comm, ncclResult_t r, const std::string& why) {
  report(why);
  (comm ? comm->state->last_error : g_last_error) = why;
  return r;
}

bool live(ncclComm_t comm) { return comm != nullptr && comm->magic == kCommMagic; }

// "RANK:CALL" from the environment variable `name` matches this rank's call?
bool injected(const char* name, int rank, int64_t call) {
  const char* spec = std::getenv(name);
  if (!spec) return false;
  int r = -1;
  long long c = -1;
  return std::sscanf(spec, "%d:%lld", &r, &c) == 2 && r == rank && c == call;
}

uint64_t hash_id(const ncclUniqueId& id) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (char ch : id.internal) h = (h ^ uint8_t(ch)) * 1099511628211ull;
  return h;
}

// After the communicator's MPI_Comm_idup: every rank must have passed the same id (a collective, reached by all).
void check_same_id(ncclComm_t comm) {
  uint64_t mine[2] = {comm->id_hash, ~comm->id_hash}, top[2] = {0, 0};
  MPI_Allreduce(mine, top, 2, MPI_UINT64_T, MPI_MAX, comm->state->mpi);
  if (top[0] != mine[0] || top[1] != mine[1]) {
    comm->state->async = ncclInvalidUsage;
    fail(comm, ncclInvalidUsage, "ncclCommInitRank: the ranks passed different ncclUniqueIds (every rank needs the "
                                 "one id that rank 0's ncclGetUniqueId made)");
  }
}

// Drops completed operations; true when none is left in flight.
bool settle(ncclComm_t comm) {
  auto& ops = comm->ops;
  for (auto it = ops.begin(); it != ops.end();) it = (*it)->advance(false) ? ops.erase(it) : it + 1;
  return ops.empty();
}

}  // namespace
}  // namespace aiayn::emu

using namespace aiayn::emu;

extern "C" {

ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId) {
  if (!uniqueId) return fail(nullptr, ncclInvalidArgument, "ncclGetUniqueId: null pointer");
  std::memset(uniqueId->internal, 0, sizeof uniqueId->internal);
  std::random_device rd;
  const uint64_t bits[2] = {(uint64_t(rd()) << 32) ^ rd(), (uint64_t(getpid()) << 32) ^ rd()};
  std::snprintf(uniqueId->internal, sizeof uniqueId->internal, "aiayn-emu-nccl");
  std::memcpy(uniqueId->internal + 16, bits, sizeof bits);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank, ncclConfig_t* config) {
  if (!comm) return fail(nullptr, ncclInvalidArgument, "ncclCommInitRankConfig: null communicator pointer");
  *comm = nullptr;
  bool blocking = true;
  if (config) {
    if (config->size != sizeof(ncclConfig_t) || config->magic != 0xcafebeef)
      return fail(nullptr, ncclInvalidArgument, "ncclCommInitRankConfig: the config was not set from NCCL_CONFIG_INITIALIZER");
    if (config->blocking != NCCL_CONFIG_UNDEF_INT) blocking = config->blocking != 0;
  }
  int initialized = 0, world = 0, me = 0;
  MPI_Initialized(&initialized);
  if (!initialized)
    return fail(nullptr, ncclSystemError, "ncclCommInitRank: the emulated NCCL runs over MPI; start the job with mpirun");
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  if (nranks != world || rank != me)
    return fail(nullptr, ncclInvalidArgument, "ncclCommInitRank: rank " + std::to_string(rank) + " of " +
                                                  std::to_string(nranks) + "; the emulated NCCL needs the MPI rank (" +
                                                  std::to_string(me) + ") of the MPI job's size (" + std::to_string(world) + ")");
  auto* c = new ncclComm;
  c->magic = kCommMagic;
  c->state = std::make_shared<CommState>();
  c->state->rank = rank, c->state->nranks = nranks, c->state->blocking = blocking;
  c->id_hash = hash_id(commId);
  MPI_Comm_idup(MPI_COMM_WORLD, &c->state->mpi, &c->init);
  *comm = c;
  if (blocking) {
    MPI_Wait(&c->init, MPI_STATUS_IGNORE);
    check_same_id(c);
    return c->state->async;
  }
  c->state->async = ncclInProgress;
  return ncclInProgress;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank) {
  return ncclCommInitRankConfig(comm, nranks, commId, rank, nullptr);
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* asyncError) {
  if (!live(comm) || !asyncError) return fail(nullptr, ncclInvalidArgument, "ncclCommGetAsyncError: not a live communicator");
  CommState& s = *comm->state;
  if (s.async == ncclInProgress) {
    if (comm->init != MPI_REQUEST_NULL) {
      int flag = 0;
      MPI_Test(&comm->init, &flag, MPI_STATUS_IGNORE);
      if (flag) {
        s.async = ncclSuccess;
        check_same_id(comm);
      }
    } else if (comm->finalizing) {
      if (settle(comm)) s.async = ncclSuccess;
    } else {
      s.async = ncclSuccess;  // an enqueue: complete by now
    }
  }
  // Operations advance (and may fail) only as their stream is queried or waited for, as kernels do on a GPU.
  *asyncError = s.async;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
  if (!live(comm)) return fail(nullptr, ncclInvalidArgument, "ncclAllReduce: not a live communicator (aborted or destroyed?)");
  CommState& s = *comm->state;
  if (s.async == ncclInProgress)
    return fail(comm, ncclInvalidUsage, "ncclAllReduce: the communicator is still in progress (wait until "
                                        "ncclCommGetAsyncError reports ncclSuccess before the next call)");
  if (s.async != ncclSuccess) return s.async;
  if (comm->finalizing) return fail(comm, ncclInvalidUsage, "ncclAllReduce after ncclCommFinalize");
  if (datatype != ncclFloat || op != ncclSum)
    return fail(comm, ncclInvalidArgument, "ncclAllReduce: datatype " + std::to_string(int(datatype)) + ", op " +
                                               std::to_string(int(op)) + ": the emulated subset is ncclFloat with ncclSum");
  if (!valid_stream(stream)) return fail(comm, ncclInvalidArgument, "ncclAllReduce: the stream is not a live stream");
  std::string why;
  const size_t bytes = count * sizeof(float);
  if (count > 0 && !device_range_ok(sendbuff, bytes, &why))
    return fail(comm, ncclInvalidArgument, "ncclAllReduce: sendbuff: " + why);
  if (count > 0 && !device_range_ok(recvbuff, bytes, &why))
    return fail(comm, ncclInvalidArgument, "ncclAllReduce: recvbuff: " + why);
  // On a GPU the all-reduce reads its input when the stream reaches it: whatever writes the input on another
  // stream must be ordered before it (an event recorded after the producers and waited for by this stream).
  const std::string race = count > 0 ? unordered_touch(stream, sendbuff) : std::string();
  if (!race.empty())
    return fail(comm, ncclInvalidUsage, "ncclAllReduce: the input may not be complete when the stream reaches it: " + race);
  const int64_t call = s.calls + 1;  // s.started() counts it
  if (injected("AIAYN_EMU_NCCL_HANG", s.rank, call)) {
    report("ncclAllReduce: rank " + std::to_string(s.rank) + " hangs in call " + std::to_string(call) +
           " (AIAYN_EMU_NCCL_HANG)");
    for (;;) pause();
  }
  auto o = std::make_shared<Op>();
  o->comm = comm->state;
  o->out = static_cast<float*>(recvbuff);
  o->fail = injected("AIAYN_EMU_NCCL_ERROR", s.rank, call);
  o->staged.resize(count);
  if (count > 0) {
    DeviceAccess access("ncclAllReduce");
    std::memcpy(o->staged.data(), sendbuff, bytes);
    access.close();
  }
  for (size_t off = 0; off < count && !o->fail; off += kMaxMpiCount) {
    const int n = int(std::min<size_t>(kMaxMpiCount, count - off));
    o->requests.emplace_back();
    MPI_Iallreduce(MPI_IN_PLACE, o->staged.data() + off, n, MPI_FLOAT, MPI_SUM, s.mpi, &o->requests.back());
  }
  auto& ops = comm->ops;
  ops.erase(std::remove_if(ops.begin(), ops.end(), [](const auto& x) { return x->done; }), ops.end());
  ops.push_back(o);
  s.started();
  stream_add_work(stream, [o](bool wait) { return o->advance(wait); });
  const void* touched[2] = {sendbuff, recvbuff};
  order_operation(stream, "ncclAllReduce", touched, 2);
  if (s.blocking) return ncclSuccess;
  s.async = ncclInProgress;
  return ncclInProgress;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  if (!live(comm)) return fail(nullptr, ncclInvalidArgument, "ncclCommFinalize: not a live communicator");
  if (comm->state->async == ncclInProgress)
    return fail(comm, ncclInvalidUsage, "ncclCommFinalize: the communicator is still in progress");
  if (comm->state->async != ncclSuccess) return comm->state->async;
  comm->finalizing = true;
  if (comm->state->blocking) {
    for (auto& o : comm->ops) o->advance(true);
    comm->ops.clear();
    return comm->state->async;
  }
  comm->state->async = ncclInProgress;
  return ncclInProgress;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!live(comm)) return fail(nullptr, ncclInvalidArgument, "ncclCommDestroy: not a live communicator");
  if (!comm->finalizing && !comm->ops.empty()) {
    for (auto& o : comm->ops) o->advance(true);  // NCCL flushes them (ncclCommDestroy without finalize)
  }
  if (comm->init != MPI_REQUEST_NULL) MPI_Wait(&comm->init, MPI_STATUS_IGNORE);
  const CommState& s = *comm->state;
  report("ncclComm of rank " + std::to_string(s.rank) + ": " + std::to_string(s.calls) + " ncclAllReduce call(s), at most " +
         std::to_string(s.most_in_flight) + " in flight at once, " + std::to_string(s.overlapped) +
         " other operation(s) enqueued while one was in flight");
  MPI_Comm_free(&comm->state->mpi);
  comm->magic = 0;
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (!comm) return ncclSuccess;
  if (!live(comm)) return fail(nullptr, ncclInvalidArgument, "ncclCommAbort: not a live communicator");
  // Requests in flight cannot be cancelled (MPI has no cancel for collectives): the MPI communicator is left
  // to the process's end, which an abort precedes.
  comm->state->aborted = true;
  comm->magic = 0;
  delete comm;
  return ncclSuccess;
}

// The version of the nccl.h it was built against (the emulated binaries report it as NCCL's own).
ncclResult_t ncclGetVersion(int* version) {
  if (!version) return fail(nullptr, ncclInvalidArgument, "ncclGetVersion: null pointer");
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
  }
}

const char* ncclGetLastError(ncclComm_t comm) {
  return live(comm) ? comm->state->last_error.c_str() : g_last_error.c_str();
}

}  // extern "C"
