// Device discovery and memory: the CPU side here, the CUDA side behind kernels/cuda/runtime.cu.
#include <pthread.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <new>

#include <omp.h>

#include "blas.hpp"

#include "kernels/device.hpp"
#include "kernels/memory.hpp"
#include "kernels/op_profile.hpp"

#if AIAYN_HAVE_CUDA
namespace aiayn::kernels::cuda_runtime {  // defined in kernels/cuda/runtime.cu
int device_count(std::string* why);
std::string versions();
void set_device(int index);
void synchronize();
void* alloc(size_t bytes);
void free(void* p) noexcept;
void zero(void* p, size_t bytes, Stream s);
void copy(void* dst, const void* src, size_t bytes, Stream s);
Stream stream_create();
void stream_destroy(Stream s) noexcept;
Event event_create();
void event_destroy(Event e) noexcept;
void event_record(Event e, Stream s);
void stream_wait_event(Stream s, Event e);
}  // namespace aiayn::kernels::cuda_runtime
#endif

namespace aiayn::kernels {

bool cuda_compiled() { return AIAYN_HAVE_CUDA != 0; }

int cuda_device_count(std::string* why) {
#if AIAYN_HAVE_CUDA
  return cuda_runtime::device_count(why);
#else
  if (why) *why = "this build has no CUDA backend";
  return 0;
#endif
}

std::string cuda_versions() {
#if AIAYN_HAVE_CUDA
  return cuda_runtime::versions();
#else
  return "no CUDA backend in this build";
#endif
}

void cuda_set_device(int index) {
#if AIAYN_HAVE_CUDA
  cuda_runtime::set_device(index);
#else
  no_cuda_backend("set_device");
#endif
}

void cuda_synchronize() {
#if AIAYN_HAVE_CUDA
  cuda_runtime::synchronize();
#endif
}

#if AIAYN_HAVE_CUDA
Stream stream_create(Device d) { return d == Device::CUDA ? cuda_runtime::stream_create() : nullptr; }
void stream_destroy(Device d, Stream s) noexcept {
  if (d == Device::CUDA && s) cuda_runtime::stream_destroy(s);
}
Event event_create(Device d) { return d == Device::CUDA ? cuda_runtime::event_create() : nullptr; }
void event_destroy(Device d, Event e) noexcept {
  if (d == Device::CUDA && e) cuda_runtime::event_destroy(e);
}
void event_record(Device d, Event e, Stream s) {
  if (d == Device::CUDA) cuda_runtime::event_record(e, s);
}
void stream_wait_event(Device d, Stream s, Event e) {
  if (d == Device::CUDA) cuda_runtime::stream_wait_event(s, e);
}
#else
// Without the CUDA backend only the CPU's null handles exist; asking for CUDA ones is the caller's error.
Stream stream_create(Device d) {
  if (d == Device::CUDA) no_cuda_backend("stream_create");
  return nullptr;
}
void stream_destroy(Device, Stream) noexcept {}
Event event_create(Device d) {
  if (d == Device::CUDA) no_cuda_backend("event_create");
  return nullptr;
}
void event_destroy(Device, Event) noexcept {}
void event_record(Device d, Event, Stream) {
  if (d == Device::CUDA) no_cuda_backend("event_record");
}
void stream_wait_event(Device d, Stream, Event) {
  if (d == Device::CUDA) no_cuda_backend("stream_wait_event");
}
#endif

void set_cpu_threads(int n) {
  AIAYN_CHECK(n >= 1, "set_cpu_threads: need at least one thread");
  omp_set_num_threads(n);  // BLAS too: blas_gemm splits over the OpenMP threads (cpu/blas.cpp)
}

int cpu_threads() { return omp_get_max_threads(); }

void cpu_workers_block_signals(const int* signals, size_t n) {
  sigset_t set;
  sigemptyset(&set);
  for (size_t i = 0; i < n; ++i) sigaddset(&set, signals[i]);
#pragma omp parallel
  if (omp_get_thread_num() != 0) pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

std::string cpu_backend_description() { return cpu::blas_description(); }

void* device_alloc(Device d, size_t bytes) {
  if (d == Device::CUDA) {
#if AIAYN_HAVE_CUDA
    return cuda_runtime::alloc(bytes);
#else
    no_cuda_backend("alloc");
#endif
  }
  // 64-byte alignment for vector loads; zero-filled like the CUDA side.
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded ? rounded : 64);
  AIAYN_CHECK(p != nullptr, "out of host memory allocating " + std::to_string(bytes) + " bytes");
  std::memset(p, 0, rounded);
  return p;
}

void device_free(Device d, void* p) noexcept {
  if (!p) return;
#if AIAYN_HAVE_CUDA
  if (d == Device::CUDA) return cuda_runtime::free(p);
#endif
  std::free(p);
}

void device_zero(Device d, void* p, size_t bytes, Stream s) {
  if (!bytes) return;
  const OpTimer timer("device_zero", d);
  if (d == Device::CUDA) {
#if AIAYN_HAVE_CUDA
    return cuda_runtime::zero(p, bytes, s);
#else
    no_cuda_backend("zero");
#endif
  }
  // Large buffers (the gradients, every step) are cleared by all threads, a slice each.
  constexpr size_t kSlice = size_t(1) << 22;
  if (bytes < 2 * kSlice || omp_in_parallel()) {
    std::memset(p, 0, bytes);
    return;
  }
  const long slices = static_cast<long>((bytes + kSlice - 1) / kSlice);
#pragma omp parallel for
  for (long i = 0; i < slices; ++i) {
    const size_t at = size_t(i) * kSlice;
    std::memset(static_cast<char*>(p) + at, 0, std::min(kSlice, bytes - at));
  }
}

void device_copy(Device to, void* dst, Device from, const void* src, size_t bytes, Stream s) {
  if (!bytes) return;
  const OpTimer timer("device_copy", to == Device::CUDA || from == Device::CUDA ? Device::CUDA : Device::CPU);
  if (to == Device::CPU && from == Device::CPU) {
    std::memmove(dst, src, bytes);
    return;
  }
#if AIAYN_HAVE_CUDA
  cuda_runtime::copy(dst, src, bytes, s);  // cudaMemcpyDefault: unified addressing knows the direction
#else
  no_cuda_backend("copy");
#endif
}

}  // namespace aiayn::kernels
