// A fake CUDA runtime for emulated test binaries: the subset of cuda_runtime_api.h that kernels/cuda/*.cu call,
// plus streams and events, defined with the header's own signatures and C linkage (libcudart is never linked).
//
// One device (an sm_90 with 227 KiB of opt-in shared memory; AIAYN_EMU_DEVICES=0 pretends there is none). The
// runtime's own work is synchronous: kernels and copies are complete when their call returns. Only an emulated
// library's work may stay in flight (the fake NCCL's collectives, waiting for their peers): it is kept with its
// stream (stream_add_work), queries report it (cudaStreamQuery, cudaEventQuery: cudaErrorNotReady), and anything
// ordered after it completes it first (stream_order: new work on the stream, synchronising calls, an event
// waited for; CUDA's implicit synchronisation between the legacy stream and blocking streams included). Device
// memory comes from device_memory.cpp; copies and sets check that each pointer is what the direction says and that
// the bytes lie inside one allocation. Every failure is printed ("aiayn emu: ...") and kept as the last error, and
// cudaGetErrorString appends that detail to CUDA's text for the failing code.
#include <cuda_runtime_api.h>
#include <link.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "emu_internal.hpp"

namespace aiayn::emu {
namespace {
struct InFlight {
  StreamWork advance;
  bool done = false;
};
using Works = std::vector<std::shared_ptr<InFlight>>;
// Per stream (the legacy default stream is nullptr): how many of its operations are ordered before a point.
using VectorClock = std::map<cudaStream_t, uint64_t>;
}  // namespace
}  // namespace aiayn::emu

struct CUstream_st {
  uint32_t magic;
  unsigned flags;
};
struct CUevent_st {
  uint32_t magic;
  unsigned flags;
  bool recorded;
  std::chrono::steady_clock::time_point when;
  aiayn::emu::Works waits;         // the work in flight that the recorded point follows
  aiayn::emu::VectorClock clock;   // the operations ordered before the recorded point
};
struct CUmemPoolHandle_st {
  uint64_t release_threshold;
  int reuse_follow, reuse_opportunistic, reuse_internal;
};

namespace aiayn::emu {
namespace {

constexpr uint32_t kStreamMagic = 0x5354524d, kEventMagic = 0x4556454e;

struct Runtime {
  std::mutex mu;
  std::set<cudaStream_t> streams;
  std::set<cudaEvent_t> events;
  std::map<const void*, int> max_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize per kernel
  CUmemPoolHandle_st pool{0, 1, 1, 1};
  std::map<cudaStream_t, Works> in_flight;  // by stream; the legacy default stream is nullptr
  Works orphans;                            // in flight on streams destroyed since
  // Stream order (order_operation): operations issued per stream, what each stream's next operation follows,
  // what the host has synchronised with, and the last operation to touch each allocation (by base address).
  struct Touch {
    cudaStream_t stream;
    uint64_t op;
    const char* what;  // a launch's or an API's name: a string literal
  };
  VectorClock issued, host;
  std::map<cudaStream_t, VectorClock> seen;
  std::map<uintptr_t, Touch> touched;
  int devices = 1;
  Runtime() {
    if (const char* d = std::getenv("AIAYN_EMU_DEVICES")) devices = std::atoi(d) > 0 ? 1 : 0;
  }
};

Runtime& rt() {
  static Runtime* r = new Runtime;
  return *r;
}

thread_local cudaError_t t_last = cudaSuccess;
thread_local cudaError_t t_detail_code = cudaSuccess;
thread_local std::string t_detail;
thread_local std::string t_message;

cudaError_t fail(cudaError_t code, const std::string& detail) {
  report(detail);
  t_last = code;
  t_detail_code = code;
  t_detail = detail;
  return code;
}

cudaStream_t stream_key(cudaStream_t s) { return s == cudaStreamLegacy || s == cudaStreamPerThread ? nullptr : s; }

// The work in flight that new work on s follows: s's own, plus (implicit = true) that of the streams CUDA
// synchronises it with. Completed entries are dropped on the way.
Works pending_for(cudaStream_t s, bool implicit) {
  std::lock_guard<std::mutex> lock(rt().mu);
  Works out;
  auto add = [&](cudaStream_t k) {
    auto it = rt().in_flight.find(k);
    if (it == rt().in_flight.end()) return;
    Works& w = it->second;
    w.erase(w.begin(), std::find_if(w.begin(), w.end(), [](const auto& x) { return !x->done; }));
    out.insert(out.end(), w.begin(), w.end());
  };
  s = stream_key(s);
  add(s);
  if (implicit) {
    if (s == nullptr) {
      for (const auto& [k, w] : rt().in_flight)
        if (k != nullptr && !(k->flags & cudaStreamNonBlocking)) add(k);
    } else if (!(s->flags & cudaStreamNonBlocking)) {
      add(nullptr);
    }
  }
  return out;
}

// Completes `works` in order (waiting for each when `wait`); false at the first one still in flight.
bool finish(const Works& works, bool wait) {
  for (const auto& w : works) {
    if (w->done) continue;
    if (!w->advance(wait)) return false;
    w->done = true;
  }
  return true;
}

Works all_in_flight() {
  std::lock_guard<std::mutex> lock(rt().mu);
  Works out = rt().orphans;
  for (const auto& [k, w] : rt().in_flight) out.insert(out.end(), w.begin(), w.end());
  return out;
}

// ---- stream order (the lock held) ----
void merge(VectorClock& into, const VectorClock& from) {
  for (const auto& [k, n] : from) into[k] = std::max(into[k], n);
}
bool blocking_stream(cudaStream_t k) { return k != nullptr && !(k->flags & cudaStreamNonBlocking); }

// What an operation enqueued on stream k now follows.
VectorClock& clock_now(cudaStream_t k) {
  Runtime& r = rt();
  VectorClock& c = r.seen[k];
  merge(c, r.host);
  if (k == nullptr) {
    for (const auto& [b, cb] : r.seen)
      if (blocking_stream(b)) merge(c, cb);
  } else if (blocking_stream(k)) {
    merge(c, r.seen[nullptr]);
  }
  return c;
}
void host_knows(const VectorClock& c) { merge(rt().host, c); }
std::string stream_name(cudaStream_t k) {
  if (k == nullptr) return "the legacy default stream";
  char text[48];
  std::snprintf(text, sizeof text, "stream %p", static_cast<void*>(k));
  return text;
}

bool valid_event(cudaEvent_t e) {
  std::lock_guard<std::mutex> lock(rt().mu);
  return e && rt().events.count(e) && e->magic == kEventMagic;
}

const char* base_string(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorNotReady: return "device not ready";
    default: return "unrecognized error code";
  }
}

const char* base_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    default: return "cudaErrorUnknown";
  }
}

const char* kind_name(cudaMemcpyKind k) {
  switch (k) {
    case cudaMemcpyHostToHost: return "cudaMemcpyHostToHost";
    case cudaMemcpyHostToDevice: return "cudaMemcpyHostToDevice";
    case cudaMemcpyDeviceToHost: return "cudaMemcpyDeviceToHost";
    case cudaMemcpyDeviceToDevice: return "cudaMemcpyDeviceToDevice";
    case cudaMemcpyDefault: return "cudaMemcpyDefault";
  }
  return "an unknown cudaMemcpyKind";
}

cudaError_t check_stream(cudaStream_t s, const char* api) {
  if (valid_stream(s)) return cudaSuccess;
  return fail(cudaErrorInvalidResourceHandle, std::string(api) + ": the stream is not a live stream");
}

cudaError_t copy(void* dst, const void* src, size_t count, cudaMemcpyKind kind, const char* api) {
  if (count == 0) return cudaSuccess;
  if (!dst || !src) return fail(cudaErrorInvalidValue, std::string(api) + ": null pointer");
  const bool dst_dev = is_device_pointer(dst), src_dev = is_device_pointer(src);
  bool want_dst = dst_dev, want_src = src_dev;
  switch (kind) {
    case cudaMemcpyHostToHost: want_dst = want_src = false; break;
    case cudaMemcpyHostToDevice: want_dst = true, want_src = false; break;
    case cudaMemcpyDeviceToHost: want_dst = false, want_src = true; break;
    case cudaMemcpyDeviceToDevice: want_dst = want_src = true; break;
    case cudaMemcpyDefault: break;  // unified addressing: the pointers say where they live
    default: return fail(cudaErrorInvalidMemcpyDirection, std::string(api) + ": " + kind_name(kind));
  }
  std::string why;
  if (want_dst != dst_dev)
    return fail(cudaErrorInvalidValue, std::string(api) + " (" + kind_name(kind) + "): the destination is " +
                                           describe_pointer(dst));
  if (want_src != src_dev)
    return fail(cudaErrorInvalidValue,
                std::string(api) + " (" + kind_name(kind) + "): the source is " + describe_pointer(src));
  if (dst_dev && !device_range_ok(dst, count, &why))
    return fail(cudaErrorInvalidValue, std::string(api) + ": destination: " + why);
  if (src_dev && !device_range_ok(src, count, &why))
    return fail(cudaErrorInvalidValue, std::string(api) + ": source: " + why);
  const auto d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
  if (d < s + count && s < d + count && d != s)
    return fail(cudaErrorInvalidValue, std::string(api) + ": source and destination overlap");
  try {
    DeviceAccess access(api);
    if (d != s) std::memcpy(dst, src, count);
    access.close();
  } catch (const std::exception& e) {
    return fail(cudaErrorIllegalAddress, e.what());
  }
  return cudaSuccess;
}

cudaError_t set(void* p, int value, size_t count, const char* api) {
  if (count == 0) return cudaSuccess;
  std::string why;
  if (!device_range_ok(p, count, &why)) return fail(cudaErrorInvalidValue, std::string(api) + ": " + why);
  try {
    DeviceAccess access(api);
    std::memset(p, value, count);
    access.close();
  } catch (const std::exception& e) {
    return fail(cudaErrorIllegalAddress, e.what());
  }
  return cudaSuccess;
}

cudaError_t alloc(void** p, size_t size, const char* api) {
  if (!p) return fail(cudaErrorInvalidValue, std::string(api) + ": null result pointer");
  *p = nullptr;
  if (size == 0) return cudaSuccess;
  *p = device_alloc(size);
  if (!*p) return fail(cudaErrorMemoryAllocation, std::string(api) + ": cannot map " + std::to_string(size) + " bytes");
  return cudaSuccess;
}

cudaError_t release(void* p, const char* api) {
  if (!p) return cudaSuccess;
  switch (device_free(p)) {
    case FreeResult::Ok: {
      std::lock_guard<std::mutex> lock(rt().mu);
      rt().touched.erase(reinterpret_cast<uintptr_t>(p));  // the address may come back for new memory
      return cudaSuccess;
    }
    case FreeResult::NotBase:
      return fail(cudaErrorInvalidValue, std::string(api) + ": " + describe_pointer(p) + " is not the start of an allocation");
    case FreeResult::AlreadyFreed:
      return fail(cudaErrorInvalidValue, std::string(api) + ": " + describe_pointer(p) + " (double free)");
    case FreeResult::NotDevice: break;
  }
  return fail(cudaErrorInvalidValue, std::string(api) + ": " + describe_pointer(p));
}

// An emulated binary must not also load the real libraries: their symbols would shadow or mix with these.
void refuse_real_libraries() {
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void*) -> int {
        const char* name = info->dlpi_name ? info->dlpi_name : "";
        if (std::strstr(name, "libcudart.so") || std::strstr(name, "libcublasLt.so") || std::strstr(name, "libcublas.so") ||
            std::strstr(name, "libnccl.so")) {
          report(std::string("fatal: the real ") + name +
                 " is loaded into an emulated binary; link aiayn_kernels_cuda_emu instead of the CUDA libraries "
                 "(set the AIAYN_CUDA_EMULATION target property)");
          std::abort();
        }
        return 0;
      },
      nullptr);
}
const bool g_checked = (refuse_real_libraries(), true);

}  // namespace

bool valid_stream(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return true;
  std::lock_guard<std::mutex> lock(rt().mu);
  return rt().streams.count(s) && s->magic == kStreamMagic;
}

void stream_add_work(cudaStream_t s, StreamWork work) {
  std::lock_guard<std::mutex> lock(rt().mu);
  rt().in_flight[stream_key(s)].push_back(std::make_shared<InFlight>(InFlight{std::move(work)}));
}

void stream_order(cudaStream_t s) { finish(pending_for(s, true), true); }

void order_operation(cudaStream_t s, const char* what, const void* const* ptrs, size_t n) {
  std::lock_guard<std::mutex> lock(rt().mu);
  const cudaStream_t k = stream_key(s);
  VectorClock& c = clock_now(k);
  const uint64_t op = ++rt().issued[k];
  c[k] = op;
  for (size_t i = 0; i < n; ++i) {
    uintptr_t base = 0;
    if (ptrs[i] && find_allocation(ptrs[i], &base)) rt().touched[base] = Runtime::Touch{k, op, what};
  }
}

uint64_t operations_issued() {
  std::lock_guard<std::mutex> lock(rt().mu);
  uint64_t total = 0;
  for (const auto& [k, n] : rt().issued) total += n;
  return total;
}

std::string unordered_touch(cudaStream_t s, const void* p) {
  std::lock_guard<std::mutex> lock(rt().mu);
  uintptr_t base = 0;
  if (!find_allocation(p, &base)) return "";
  auto it = rt().touched.find(base);
  const cudaStream_t k = stream_key(s);
  if (it == rt().touched.end() || it->second.stream == k) return "";
  const Runtime::Touch& t = it->second;
  if (clock_now(k)[t.stream] >= t.op) return "";
  return "its memory was last touched by " + std::string(t.what) + " (operation " + std::to_string(t.op) + " on " +
         stream_name(t.stream) + "), which nothing orders before " + stream_name(k) +
         " (no event recorded after it and waited for, no synchronisation)";
}

size_t max_dynamic_shared(const void* kernel) {
  std::lock_guard<std::mutex> lock(rt().mu);
  auto it = rt().max_smem.find(kernel);
  return it == rt().max_smem.end() ? kDefaultDynamicShared : size_t(it->second);
}

}  // namespace aiayn::emu

using namespace aiayn::emu;

// ---- errors ----
cudaError_t cudaGetLastError(void) {
  const cudaError_t e = t_last;
  t_last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return t_last; }
const char* cudaGetErrorName(cudaError_t error) { return base_name(error); }
const char* cudaGetErrorString(cudaError_t error) {
  if (error != cudaSuccess && error == t_detail_code && !t_detail.empty()) {
    t_message = std::string(base_string(error)) + " [aiayn emu: " + t_detail + "]";
    return t_message.c_str();
  }
  return base_string(error);
}

// ---- versions: the toolkit's headers (the emulator stands in for driver and runtime alike) ----
cudaError_t cudaDriverGetVersion(int* version) {
  if (!version) return fail(cudaErrorInvalidValue, "cudaDriverGetVersion: null pointer");
  *version = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* version) {
  if (!version) return fail(cudaErrorInvalidValue, "cudaRuntimeGetVersion: null pointer");
  *version = CUDART_VERSION;
  return cudaSuccess;
}

// ---- devices ----
cudaError_t cudaGetDeviceCount(int* count) {
  if (!count) return fail(cudaErrorInvalidValue, "cudaGetDeviceCount: null pointer");
  *count = rt().devices;
  if (rt().devices == 0) return fail(cudaErrorNoDevice, "cudaGetDeviceCount: AIAYN_EMU_DEVICES=0");
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= rt().devices)
    return fail(cudaErrorInvalidDevice, "cudaSetDevice(" + std::to_string(device) + "): the emulator has one device");
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  if (!device) return fail(cudaErrorInvalidValue, "cudaGetDevice: null pointer");
  *device = 0;
  return cudaSuccess;
}
// Everything in flight completes, and the host has waited for every operation so far.
static void synchronize_device() {
  finish(all_in_flight(), true);
  std::lock_guard<std::mutex> lock(rt().mu);
  host_knows(rt().issued);
}
// The host has waited for everything enqueued on s so far.
static void host_syncs_with(cudaStream_t s) {
  std::lock_guard<std::mutex> lock(rt().mu);
  host_knows(clock_now(stream_key(s)));
}
static void note(cudaStream_t s, const char* what, const void* a, const void* b = nullptr) {
  const void* p[2] = {a, b};
  order_operation(s, what, p, 2);
}
cudaError_t cudaDeviceSynchronize(void) {
  synchronize_device();
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (!value || device != 0) return fail(cudaErrorInvalidValue, "cudaDeviceGetAttribute: bad arguments");
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = 132; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = int(kDefaultDynamicShared); return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = int(kMaxDynamicSharedOptIn); return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    default: break;
  }
  return fail(cudaErrorNotSupported, "cudaDeviceGetAttribute: attribute " + std::to_string(int(attr)) +
                                         " is outside the emulated subset");
}

// ---- memory ----
cudaError_t cudaMalloc(void** devPtr, size_t size) { return alloc(devPtr, size, "cudaMalloc"); }
cudaError_t cudaFree(void* devPtr) {
  synchronize_device();  // cudaFree synchronises the device
  return release(devPtr, "cudaFree");
}
cudaError_t cudaMallocAsync(void** devPtr, size_t size, cudaStream_t hStream) {
  if (const cudaError_t e = check_stream(hStream, "cudaMallocAsync")) return e;
  stream_order(hStream);
  return alloc(devPtr, size, "cudaMallocAsync");
}
cudaError_t cudaFreeAsync(void* devPtr, cudaStream_t hStream) {
  if (const cudaError_t e = check_stream(hStream, "cudaFreeAsync")) return e;
  stream_order(hStream);
  return release(devPtr, "cudaFreeAsync");
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  stream_order(nullptr);
  note(nullptr, "cudaMemcpy", dst, src);
  const cudaError_t e = copy(dst, src, count, kind, "cudaMemcpy");
  host_syncs_with(nullptr);
  return e;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  if (const cudaError_t e = check_stream(stream, "cudaMemcpyAsync")) return e;
  stream_order(stream);
  note(stream, "cudaMemcpyAsync", dst, src);
  return copy(dst, src, count, kind, "cudaMemcpyAsync");
}
cudaError_t cudaMemset(void* devPtr, int value, size_t count) {
  stream_order(nullptr);
  note(nullptr, "cudaMemset", devPtr);
  const cudaError_t e = set(devPtr, value, count, "cudaMemset");
  host_syncs_with(nullptr);
  return e;
}
cudaError_t cudaMemsetAsync(void* devPtr, int value, size_t count, cudaStream_t stream) {
  if (const cudaError_t e = check_stream(stream, "cudaMemsetAsync")) return e;
  stream_order(stream);
  note(stream, "cudaMemsetAsync", devPtr);
  return set(devPtr, value, count, "cudaMemsetAsync");
}
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attributes, const void* ptr) {
  if (!attributes) return fail(cudaErrorInvalidValue, "cudaPointerGetAttributes: null attributes");
  std::memset(attributes, 0, sizeof *attributes);
  if (ptr && is_device_pointer(ptr)) {
    attributes->type = cudaMemoryTypeDevice;
    attributes->device = 0;
    attributes->devicePointer = const_cast<void*>(ptr);
    attributes->hostPointer = nullptr;
  } else {  // CUDA >= 11: unregistered host memory is reported, not an error
    attributes->type = cudaMemoryTypeUnregistered;
    attributes->device = -2;
    attributes->devicePointer = nullptr;
    attributes->hostPointer = const_cast<void*>(ptr);
  }
  return cudaSuccess;
}
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* memPool, int device) {
  if (!memPool || device != 0) return fail(cudaErrorInvalidValue, "cudaDeviceGetDefaultMemPool: bad arguments");
  *memPool = &rt().pool;
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t memPool, cudaMemPoolAttr attr, void* value) {
  if (memPool != &rt().pool || !value) return fail(cudaErrorInvalidValue, "cudaMemPoolSetAttribute: bad arguments");
  switch (attr) {
    case cudaMemPoolAttrReleaseThreshold: std::memcpy(&memPool->release_threshold, value, 8); return cudaSuccess;
    case cudaMemPoolReuseFollowEventDependencies: std::memcpy(&memPool->reuse_follow, value, 4); return cudaSuccess;
    case cudaMemPoolReuseAllowOpportunistic: std::memcpy(&memPool->reuse_opportunistic, value, 4); return cudaSuccess;
    case cudaMemPoolReuseAllowInternalDependencies: std::memcpy(&memPool->reuse_internal, value, 4); return cudaSuccess;
    default: break;
  }
  return fail(cudaErrorInvalidValue, "cudaMemPoolSetAttribute: attribute " + std::to_string(int(attr)) + " cannot be set");
}
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t memPool, cudaMemPoolAttr attr, void* value) {
  if (memPool != &rt().pool || !value) return fail(cudaErrorInvalidValue, "cudaMemPoolGetAttribute: bad arguments");
  switch (attr) {
    case cudaMemPoolAttrReleaseThreshold: std::memcpy(value, &memPool->release_threshold, 8); return cudaSuccess;
    case cudaMemPoolReuseFollowEventDependencies: std::memcpy(value, &memPool->reuse_follow, 4); return cudaSuccess;
    case cudaMemPoolReuseAllowOpportunistic: std::memcpy(value, &memPool->reuse_opportunistic, 4); return cudaSuccess;
    case cudaMemPoolReuseAllowInternalDependencies: std::memcpy(value, &memPool->reuse_internal, 4); return cudaSuccess;
    default: break;
  }
  return fail(cudaErrorNotSupported, "cudaMemPoolGetAttribute: attribute " + std::to_string(int(attr)) +
                                         " is outside the emulated subset");
}

// ---- kernels ----
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (!func) return fail(cudaErrorInvalidDeviceFunction, "cudaFuncSetAttribute: null function");
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || size_t(value) > kMaxDynamicSharedOptIn)
      return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: " + std::to_string(value) +
                                             " bytes of dynamic shared memory exceed the sm_90 limit of " +
                                             std::to_string(kMaxDynamicSharedOptIn));
    std::lock_guard<std::mutex> lock(rt().mu);
    rt().max_smem[func] = value;
    return cudaSuccess;
  }
  if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) {
    if (value < -1 || value > 100) return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: carveout out of range");
    return cudaSuccess;
  }
  return fail(cudaErrorNotSupported, "cudaFuncSetAttribute: attribute " + std::to_string(int(attr)) +
                                         " is outside the emulated subset");
}

// ---- streams and events (only an emulated library's work can still be in flight) ----
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* pStream, unsigned int flags) {
  if (!pStream) return fail(cudaErrorInvalidValue, "cudaStreamCreate: null pointer");
  if (flags & ~unsigned(cudaStreamNonBlocking)) return fail(cudaErrorInvalidValue, "cudaStreamCreateWithFlags: bad flags");
  auto* s = new CUstream_st{kStreamMagic, flags};
  std::lock_guard<std::mutex> lock(rt().mu);
  rt().streams.insert(s);
  *pStream = s;
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* pStream) { return cudaStreamCreateWithFlags(pStream, cudaStreamDefault); }
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(rt().mu);
  if (!stream || !rt().streams.erase(stream))
    return fail(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: not a live stream (destroyed twice, or never created)");
  // CUDA returns at once; work still in flight completes later (cudaDeviceSynchronize waits for it).
  auto it = rt().in_flight.find(stream);
  if (it != rt().in_flight.end()) {
    rt().orphans.insert(rt().orphans.end(), it->second.begin(), it->second.end());
    rt().in_flight.erase(it);
  }
  stream->magic = 0;
  delete stream;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (const cudaError_t e = check_stream(stream, "cudaStreamSynchronize")) return e;
  finish(pending_for(stream, false), true);
  host_syncs_with(stream);
  return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t stream) {
  if (const cudaError_t e = check_stream(stream, "cudaStreamQuery")) return e;
  if (!finish(pending_for(stream, false), false)) return cudaErrorNotReady;  // not an error: not kept
  host_syncs_with(stream);
  return cudaSuccess;
}
// The one place the emulator blocks where a GPU would not: the waiting stream's later work runs when it is
// enqueued, so the host waits here for the event's work in flight (a GPU would hold only that stream).
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  if (const cudaError_t e = check_stream(stream, "cudaStreamWaitEvent")) return e;
  if (!valid_event(event)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: not a live event");
  (void)flags;
  finish(event->waits, true);  // never recorded: no dependency
  std::lock_guard<std::mutex> lock(rt().mu);
  merge(clock_now(stream_key(stream)), event->clock);
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  if (!event) return fail(cudaErrorInvalidValue, "cudaEventCreate: null pointer");
  auto* e = new CUevent_st{kEventMagic, flags, false, {}, {}, {}};
  std::lock_guard<std::mutex> lock(rt().mu);
  rt().events.insert(e);
  *event = e;
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (const cudaError_t e = check_stream(stream, "cudaEventRecord")) return e;
  if (!valid_event(event)) return fail(cudaErrorInvalidResourceHandle, "cudaEventRecord: not a live event");
  event->waits = pending_for(stream, true);
  {
    std::lock_guard<std::mutex> lock(rt().mu);
    event->clock = clock_now(stream_key(stream));
  }
  event->recorded = true;
  event->when = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (!valid_event(event)) return fail(cudaErrorInvalidResourceHandle, "cudaEventSynchronize: not a live event");
  finish(event->waits, true);
  std::lock_guard<std::mutex> lock(rt().mu);
  host_knows(event->clock);
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t event) {
  if (!valid_event(event)) return fail(cudaErrorInvalidResourceHandle, "cudaEventQuery: not a live event");
  if (!finish(event->waits, false)) return cudaErrorNotReady;
  std::lock_guard<std::mutex> lock(rt().mu);
  host_knows(event->clock);
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!ms || !valid_event(start) || !valid_event(end))
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: not live events");
  if ((start->flags | end->flags) & cudaEventDisableTiming)
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: an event was created with cudaEventDisableTiming");
  if (!start->recorded || !end->recorded) return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: not recorded");
  *ms = std::chrono::duration<float, std::milli>(end->when - start->when).count();  // host time, not GPU time
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  std::lock_guard<std::mutex> lock(rt().mu);
  if (!event || !rt().events.erase(event))
    return fail(cudaErrorInvalidResourceHandle, "cudaEventDestroy: not a live event (destroyed twice, or never created)");
  event->magic = 0;
  delete event;
  return cudaSuccess;
}
