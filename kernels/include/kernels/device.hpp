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

// Selects the GPU for this process (local rank -> device) and synchronises it.
void cuda_set_device(int index);
void cuda_synchronize();

// Threads the CPU backend uses per process (OpenMP loops and BLAS); n >= 1.
void set_cpu_threads(int n);
int cpu_threads();
// One line for logs: the BLAS library and core type in use.
std::string cpu_backend_description();

[[noreturn]] inline void no_cuda_backend(const char* op) {
  AIAYN_FAIL(std::string("op '") + op + "' was asked to run on CUDA, but this build has no CUDA backend");
}

}  // namespace aiayn::kernels
