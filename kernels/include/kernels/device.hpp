#pragma once
// Devices and streams as the rest of the program sees them: no CUDA types, so every header compiles without
// CUDA. A Stream is an opaque handle (a cudaStream_t on the CUDA backend, ignored on the CPU).
#include <string>

#include "aiayn/error.hpp"

#if defined(__CUDACC__)
#define AIAYN_HD __host__ __device__
#else
#define AIAYN_HD
#endif

namespace aiayn::kernels {

enum class Device { CPU, CUDA };
using Stream = void*;

inline const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

// True when this binary was built with the CUDA backend.
bool cuda_compiled();

// Number of usable GPUs; 0 when CUDA is not compiled in or any CUDA call fails (no driver, no device).
// `why` receives the reason when the answer is 0.
int cuda_device_count(std::string* why = nullptr);

// "CUDA driver X.Y, runtime X.Y, cuBLASLt X.Y.Z" of the libraries this process loaded (no GPU needed), or
// "no CUDA backend in this build".
std::string cuda_versions();

// Selects the GPU for this process (local rank -> device) and synchronises it.
void cuda_set_device(int index);
void cuda_synchronize();

// Streams and events, for work that overlaps on a GPU (the gradient all-reduce beside the backward pass).
// On the CPU every call is a no-op and handles are null. A created stream does not synchronise with the
// default stream (Stream nullptr, which the ops use unless told otherwise); order across streams comes only
// from events: event_record(e, s1) then stream_wait_event(s2, e) makes later work on s2 wait for s1's work.
using Event = void*;
Stream stream_create(Device d);
void stream_destroy(Device d, Stream s) noexcept;
Event event_create(Device d);
void event_destroy(Device d, Event e) noexcept;
void event_record(Device d, Event e, Stream s);
void stream_wait_event(Device d, Stream s, Event e);

// Threads the CPU backend uses per process (OpenMP loops and BLAS); n >= 1.
void set_cpu_threads(int n);
int cpu_threads();
// Blocks `signals` in the CPU backend's worker threads (every OpenMP thread but the caller), so that a
// process-directed signal is taken by the calling thread, never inside a worker's BLAS code.
void cpu_workers_block_signals(const int* signals, size_t n);
// One line for logs: the BLAS library and core type in use.
std::string cpu_backend_description();

[[noreturn]] inline void no_cuda_backend(const char* op) {
  AIAYN_FAIL(std::string("op '") + op + "' was asked to run on CUDA, but this build has no CUDA backend");
}

}  // namespace aiayn::kernels
