#pragma once
// Shared by every CUDA translation unit of the op table: the one CUDA check macro, the Stream cast, grid
// sizing, deterministic warp/block reductions, and the storage types (float32 or bf16).
//
// Invariants: launchers take the opaque Stream last and cast it with as_cuda(); every CUDA runtime call and
// every launch is checked with AIAYN_CUDA_CHECK (throws aiayn::Error with file, line and CUDA's message).
// Reductions here combine values in a fixed tree order, so results do not depend on timing.
// Under AIAYN_CUDA_EMULATION (g++ builds of these files for tests, tests/emu/) launches and dynamic shared memory
// go to the CPU emulator instead; the nvcc build never defines it.
#if AIAYN_CUDA_EMULATION
#include "aiayn_emu/cuda_emu.hpp"
#endif
// Kernels are templated on the storage type T (float or __nv_bfloat16): they load with to_f32, compute in
// float and store with from_f32<T>, which rounds to nearest even (as kernels::to_bf16 does on the host).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>

#include "aiayn/error.hpp"
#include "kernels/bf16.hpp"
#include "kernels/device.hpp"

#define AIAYN_CUDA_CHECK(expr)                                                                              \
  do {                                                                                                      \
    const cudaError_t aiayn_cuda_err_ = (expr);                                                             \
    if (aiayn_cuda_err_ != cudaSuccess)                                                                     \
      throw ::aiayn::Error(std::string("CUDA error in ") + #expr + ": " + cudaGetErrorString(aiayn_cuda_err_), \
                           __FILE__, __LINE__);                                                             \
  } while (0)

// Dynamic shared memory of a kernel: `AIAYN_DYNAMIC_SHARED(float, smem);` declares `float* smem`-like storage
// sized by the launch.
#if AIAYN_CUDA_EMULATION
#define AIAYN_DYNAMIC_SHARED(type, name) AIAYN_EMU_DYNAMIC_SHARED(type, name)
#else
#define AIAYN_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

namespace aiayn::kernels::cuda_detail {

inline cudaStream_t as_cuda(Stream s) { return static_cast<cudaStream_t>(s); }

// kernels::bf16 (the headers' plain struct) and __nv_bfloat16 are the same 16 bits; as_device is the one place
// where a host-side pointer type becomes the device type (float stays float).
static_assert(sizeof(bf16) == sizeof(__nv_bfloat16) && alignof(bf16) == alignof(__nv_bfloat16),
              "kernels::bf16 must be layout-compatible with __nv_bfloat16");
template <class T> struct device_type { using type = T; };
template <> struct device_type<bf16> { using type = __nv_bfloat16; };
template <class T> using device_t = typename device_type<T>::type;
template <class T> device_t<T>* as_device(T* p) { return reinterpret_cast<device_t<T>*>(p); }
template <class T> const device_t<T>* as_device(const T* p) { return reinterpret_cast<const device_t<T>*>(p); }

// Element conversions of the storage types: exact to float; from float rounded to nearest even.
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T>
__device__ __forceinline__ T from_f32(float x) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>, "storage is float or bf16");
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    return x;
  }
}

// Every kernel launch goes through here: the kernel, its grid, block, dynamic shared memory and stream, then
// its arguments. Configuration errors surface at once as an aiayn::Error naming `what` (execution errors at
// the next synchronisation).
template <class... Params, class... Args>
void launch(const char* what, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t st,
            Args&&... args) {
#if AIAYN_CUDA_EMULATION
  ::aiayn::emu::launch(what, kernel, grid, block, smem, st, std::forward<Args>(args)...);  // throws on misuse
#else
  kernel<<<grid, block, smem, st>>>(std::forward<Args>(args)...);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw ::aiayn::Error(std::string("CUDA launch of ") + what + " failed: " + cudaGetErrorString(err), __FILE__,
                         __LINE__);
#endif
}

// Blocks for a grid-stride loop over n elements (capped: the loop covers the rest).
inline unsigned grid_for(size_t n, int threads, unsigned cap = 65535u * 8u) {
  const size_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks == 0 ? 1 : (blocks < cap ? blocks : cap));
}

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 values. Fixed order: warp butterflies, then warp 0 over the warp sums.
template <class T>
__device__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : T(0);
  return warp_sum(v);
}

}  // namespace aiayn::kernels::cuda_detail
