// Device discovery and memory for the CUDA backend (declared in kernels/cpu/device.cpp, namespace
// cuda_runtime). Any CUDA error while counting devices means "no GPU": the answer is 0 with CUDA's reason.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "common.cuh"
#include "kernels/device.hpp"

namespace aiayn::kernels::cuda_runtime {

using cuda_detail::as_cuda;

int device_count(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky error so later calls start clean
    if (why) *why = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err);
    return 0;
  }
  if (count <= 0) {
    if (why) *why = "the CUDA runtime reports no devices";
    return 0;
  }
  return count;
}

// "CUDA driver 13.0, runtime 13.0, cuBLASLt 13.1.0": what this process loaded (issue 15: every GPU log says it).
std::string versions() {
  int driver = 0, runtime = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
  if (cudaRuntimeGetVersion(&runtime) != cudaSuccess) runtime = 0;
  (void)cudaGetLastError();
  const size_t lt = cublasLtGetVersion();
  auto cuda = [](int v) { return v > 0 ? std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10) : std::string("none"); };
  return "CUDA driver " + cuda(driver) + ", runtime " + cuda(runtime) + ", cuBLASLt " + std::to_string(lt / 10000) +
         "." + std::to_string(lt / 100 % 100) + "." + std::to_string(lt % 100);
}

// Also keeps freed stream-ordered memory in the device's default pool: the ops take their scratch with
// cudaMallocAsync on every call, which should not go back to the driver at each synchronisation.
void set_device(int index) {
  AIAYN_CUDA_CHECK(cudaSetDevice(index));
  cudaMemPool_t pool = nullptr;
  AIAYN_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, index));
  uint64_t keep = UINT64_MAX;
  AIAYN_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  AIAYN_CUDA_CHECK(cudaDeviceSynchronize());
}

void synchronize() { AIAYN_CUDA_CHECK(cudaDeviceSynchronize()); }

void* alloc(size_t bytes) {
  void* p = nullptr;
  if (bytes == 0) return nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    AIAYN_FAIL("cudaMalloc of " + std::to_string(bytes) + " bytes failed: " + cudaGetErrorString(err));
  }
  AIAYN_CUDA_CHECK(cudaMemset(p, 0, bytes));
  return p;
}

void free(void* p) noexcept {
  if (p) (void)cudaFree(p);  // errors here (e.g. a dead context at exit) cannot be acted on
}

void zero(void* p, size_t bytes, Stream s) { AIAYN_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, as_cuda(s))); }

namespace {
bool on_device(const void* p) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}
}  // namespace

// cudaMemcpyDefault: unified addressing knows the direction. A copy that touches host memory completes
// before returning (the caller may read or free the host buffer); device-to-device copies stay async.
void copy(void* dst, const void* src, size_t bytes, Stream s) {
  if (bytes == 0) return;
  if (s == nullptr) {
    AIAYN_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
    return;
  }
  AIAYN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, as_cuda(s)));
  if (!on_device(dst) || !on_device(src)) AIAYN_CUDA_CHECK(cudaStreamSynchronize(as_cuda(s)));
}

// cudaStreamNonBlocking: no implicit synchronisation with the legacy default stream the ops run on, so work
// on this stream (NCCL's all-reduce) overlaps them; order comes from events only.
Stream stream_create() {
  cudaStream_t s = nullptr;
  AIAYN_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}

void stream_destroy(Stream s) noexcept { (void)cudaStreamDestroy(as_cuda(s)); }

// Timing off: an event used for ordering only is cheaper to record and wait on.
Event event_create() {
  cudaEvent_t e = nullptr;
  AIAYN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

void event_destroy(Event e) noexcept { (void)cudaEventDestroy(static_cast<cudaEvent_t>(e)); }

void event_record(Event e, Stream s) { AIAYN_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(e), as_cuda(s))); }

void stream_wait_event(Stream s, Event e) {
  AIAYN_CUDA_CHECK(cudaStreamWaitEvent(as_cuda(s), static_cast<cudaEvent_t>(e), 0));
}

}  // namespace aiayn::kernels::cuda_runtime
