#pragma once
// Interfaces between the emulator's parts: device memory (device_memory.cpp), the fiber scheduler (fibers.cpp),
// the fake CUDA runtime (cuda_runtime_emu.cpp) and the fake cuBLASLt (cublaslt_emu.cpp). Not for kernels.
//
// Device memory is host memory that the emulator keeps inaccessible (PROT_NONE) except while a DeviceAccess is
// open: a kernel runs, a cudaMemcpy/cudaMemset copies, or an emulated library computes. Each allocation is
// 256-byte aligned, ends within 256 bytes of a guard page, and is surrounded by canary bytes checked when the
// access closes, so overruns either fault at once or are reported by the operation that made them.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace aiayn::emu {

// ---- device memory ----
// Returns null for bytes == 0. Contents are poison (0xff bytes: NaN as floats, -1 as integers).
void* device_alloc(size_t bytes);
enum class FreeResult { Ok, NotDevice, NotBase, AlreadyFreed };
FreeResult device_free(void* p);

// The live allocation containing p (base <= p < base + bytes); false when there is none.
bool find_allocation(const void* p, uintptr_t* base = nullptr, size_t* bytes = nullptr);
bool is_device_pointer(const void* p);
// True when [p, p + bytes) lies inside one live allocation; otherwise `why` says what is wrong with p.
bool device_range_ok(const void* p, size_t bytes, std::string* why);
// A human description of p: "device allocation of N bytes at 0x.. (offset k)", "freed device memory", "host".
std::string describe_pointer(const void* p);

// Makes device memory accessible while alive (nested accesses are fine). close() re-protects it and checks the
// canaries of every allocation, throwing aiayn::Error that names `who` when one was overwritten.
class DeviceAccess {
 public:
  explicit DeviceAccess(const char* who);
  ~DeviceAccess();
  DeviceAccess(const DeviceAccess&) = delete;
  DeviceAccess& operator=(const DeviceAccess&) = delete;
  void close();

 private:
  const char* who_;
  bool open_ = true;
};

// ---- faults ----
// Installs the SIGSEGV/SIGBUS reporter (once per process) and an alternate signal stack for this thread.
void install_fault_handler();
// Filled by the scheduler: what runs now, for messages written from the fault handler (no allocation there).
// Returns the number of characters written to buf (0 when no kernel is running).
size_t describe_running_kernel(char* buf, size_t size);
// Classifies an address that belongs to the scheduler's own memory (fiber stack guards, the guard page after
// dynamic shared memory); writes a message and returns true when it does.
bool describe_scheduler_fault(uintptr_t address, char* buf, size_t size);

// ---- runtime state shared with the launcher and the libraries ----
bool valid_stream(cudaStream_t s);

// ---- work in flight on a stream ----
// Kernels, copies and the fake cuBLASLt and CUB are complete when their call returns. The fake NCCL's
// collectives (nccl_emu.cpp) stay in flight, as on a GPU, until every peer has joined: such work is kept with
// its stream and completed in stream order. `advance(wait)` completes it if it can (waiting for it when `wait`
// is true) and returns whether it is complete; it runs on the calling thread, without the runtime's lock.
using StreamWork = std::function<bool(bool wait)>;
void stream_add_work(cudaStream_t s, StreamWork work);
// What everything newly enqueued on `s` first waits for: the work in flight on s (and, CUDA's implicit
// synchronisation, on every blocking stream when s is the legacy default stream, or on the legacy stream when
// s is a blocking stream). Blocks until it is complete.
void stream_order(cudaStream_t s);

// ---- which operations are ordered before which (vector clocks over streams) ----
// Every operation enqueued on a stream (a kernel, a copy, a library call) is numbered per stream and noted as
// the last to touch the allocations holding `ptrs` (a kernel: each pointer argument). A stream knows the
// operations ordered before its next one: its own, those of events it waited for, those the host synchronised
// with before enqueueing (cudaStreamSynchronize, cudaEventSynchronize, a successful query, cudaMemcpy,
// cudaDeviceSynchronize, cudaFree), and CUDA's implicit ordering between the legacy and blocking streams.
// `what` is kept, not copied: a string literal (the launch's or the API's name).
void order_operation(cudaStream_t s, const char* what, const void* const* ptrs, size_t n);
// Empty when the last operation that touched the allocation holding p is ordered before work enqueued on s now;
// otherwise says which operation is not (used where an operation would read memory another stream may still be
// writing: the fake NCCL's input).
std::string unordered_touch(cudaStream_t s, const void* p);
// Operations enqueued on every stream so far.
uint64_t operations_issued();
// Maximum dynamic shared memory a kernel may request (48 KiB unless raised by cudaFuncSetAttribute).
size_t max_dynamic_shared(const void* kernel);
constexpr size_t kDefaultDynamicShared = 48 * 1024;
constexpr size_t kMaxDynamicSharedOptIn = 227 * 1024;  // sm_90

// Prints "aiayn emu: <message>" to stderr (every misuse is reported there as well as through the API's result).
void report(const std::string& message);

}  // namespace aiayn::emu
