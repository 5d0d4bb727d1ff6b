#pragma once
// CPU emulation of the CUDA subset that kernels/cuda/*.cu use, so that the unchanged kernel sources compile with
// g++ and run in tests on machines without a GPU. Included (through kernels/cuda/common.cuh) only by translation
// units compiled with AIAYN_CUDA_EMULATION=1; never part of the aiayn executable. tests/emu/README.md says what is
// modelled and what is not.
//
// Execution model: a launch runs its blocks one after another (in the order AIAYN_EMU_ORDER picks); the threads of
// a block are cooperative fibers, each with its own stack, resumed one at a time until they reach a synchronisation
// point (__syncthreads, a warp intrinsic, or the end of the kernel). __syncthreads is a real barrier over the block;
// warp intrinsics exchange values between the named lanes of a warp at a per-warp barrier. Because only one fiber
// runs at any moment and blocks run sequentially, `__shared__` can be `static` storage shared by the block's
// threads, and atomics are plain read-modify-writes.
//
// Invariants (each violation throws aiayn::Error naming the kernel, block and thread, or aborts with such a
// message when detected by a memory fault): every thread of a block reaches the same __syncthreads; every lane
// named in a warp intrinsic's mask reaches the same intrinsic with the same mask; blocks have at most 1024 threads;
// dynamic shared memory stays within the bytes the launch requested (a guard page follows them); pointer
// arguments of a kernel are null or point into live device allocations; host code never dereferences device
// memory (device allocations are inaccessible outside kernels, cudaMemcpy and the emulated libraries).
#if !defined(AIAYN_CUDA_EMULATION) || !AIAYN_CUDA_EMULATION
#error "aiayn_emu/cuda_emu.hpp is only for translation units compiled with AIAYN_CUDA_EMULATION=1"
#endif
#if defined(__CUDACC__)
#error "aiayn_emu/cuda_emu.hpp must be compiled by the host compiler, not nvcc"
#endif

// The toolkit headers first, before the keyword macros below change what `__shared__` and friends mean.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- keywords -------------------------------------------------------------------------------------------------
// Host compilation already defines __global__, __device__, __host__ as nothing and __forceinline__ as inline.
// Static shared arrays go to one section, so that the emulator can poison them (NaN bytes) before every block;
// GCC places those of templates in their own COMDAT sections instead (not poisoned, still shared).
#undef __shared__
#define __shared__ static __attribute__((section("aiayn_emu_shared"), aligned(16)))
#define __launch_bounds__(...)
#define __syncthreads() ::aiayn::emu::syncthreads(__FILE__, __LINE__)

namespace aiayn::emu {

namespace detail {
// State of the running emulated thread. The first member is what threadIdx reads.
struct FiberState {
  uint3 thread_idx;
};
extern FiberState* g_fiber;         // the fiber running now (null outside kernels)
extern uint3 g_block_idx;           // the block running now
extern dim3 g_block_dim, g_grid_dim;
extern unsigned char* g_dynamic_shared;  // this launch's dynamic shared memory, followed by a guard page
}  // namespace detail

// ---- synchronisation ------------------------------------------------------------------------------------------
void syncthreads(const char* file, int line);

enum class WarpOp : int { Sync, Shfl, ShflUp, ShflDown, ShflXor, Ballot, Any, All };
// Deposits `bits` for this lane, waits until every lane of `mask` has called the same intrinsic with the same mask
// and width, and returns the lane's result (the source lane's bits for shuffles, the vote for ballot/any/all).
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t bits, int arg, int width);

template <class T>
T warp_shuffle(WarpOp op, unsigned mask, T var, int arg, int width) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "warp shuffles move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = warp_collective(op, mask, bits, arg, width);
  T out;
  std::memcpy(static_cast<void*>(&out), &bits, sizeof(T));
  return out;
}

// ---- launches -------------------------------------------------------------------------------------------------
struct LaunchConfig {
  const char* what;    // the name the launcher gave (cuda_detail::launch's first argument)
  const void* kernel;  // the kernel's address (key of cudaFuncSetAttribute)
  dim3 grid, block;
  size_t dynamic_shared;
  cudaStream_t stream;
};

// Checks that argument `index` (a pointer) of the launch is null or points into live device memory.
void check_pointer_argument(const LaunchConfig& cfg, int index, const void* p);
// Runs body(ctx) once per thread of the grid, as described in the file comment. Throws aiayn::Error on misuse.
// `touched` (n pointers, null ones ignored): the pointer arguments, noted as memory the launch may write.
void run_grid(const LaunchConfig& cfg, void (*body)(void*), void* ctx, const void* const* touched = nullptr,
              size_t n = 0);

// Checks the pointer arguments and returns them (others as null).
template <class Tuple, size_t... I>
std::array<const void*, sizeof...(I)> check_pointer_arguments(const LaunchConfig& cfg, const Tuple& t,
                                                             std::index_sequence<I...>) {
  std::array<const void*, sizeof...(I)> pointers{};
  auto one = [&](int index, const auto& value) {
    if constexpr (std::is_pointer_v<std::decay_t<decltype(value)>>) {
      check_pointer_argument(cfg, index, value);
      pointers[size_t(index)] = value;
    }
  };
  (one(int(I), std::get<I>(t)), ...);
  return pointers;
}

// The emulated kernel<<<grid, block, smem, stream>>>(args...): arguments are converted to the kernel's parameter
// types once (as a launch copies them to the device), and every thread receives its own copy.
template <class... Params, class... Args>
void launch(const char* what, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t st,
            Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "kernel launched with the wrong number of arguments");
  using Tuple = std::tuple<std::decay_t<Params>...>;
  struct Ctx {
    void (*kernel)(Params...);
    Tuple params;
  };
  Ctx ctx{kernel, Tuple(std::forward<Args>(args)...)};
  const LaunchConfig cfg{what, reinterpret_cast<const void*>(kernel), grid, block, smem, st};
  const auto pointers = check_pointer_arguments(cfg, ctx.params, std::index_sequence_for<Params...>{});
  run_grid(cfg, [](void* p) { std::apply(static_cast<Ctx*>(p)->kernel, static_cast<Ctx*>(p)->params); }, &ctx,
           pointers.data(), pointers.size());
}

// The order in which runnable fibers (and blocks) are resumed; AIAYN_EMU_ORDER and AIAYN_EMU_SEED set it at start.
enum class Schedule { Forward, Reverse, Shuffle };
void set_schedule(Schedule order, uint64_t seed = 1);

// ---- libraries the kernels call on the host -------------------------------------------------------------------
// cub::DeviceRadixSort::SortPairs for int32 keys and values: stable, ordered by bits [begin_bit, end_bit) of the
// keys (signed keys compare with the sign bit flipped, as CUB does). With temp == nullptr only temp_bytes is set.
cudaError_t radix_sort_pairs(void* temp, size_t& temp_bytes, const int32_t* keys_in, int32_t* keys_out,
                             const int32_t* values_in, int32_t* values_out, int n, int begin_bit, int end_bit,
                             cudaStream_t stream);

}  // namespace aiayn::emu

// The C++ overloads cuda_runtime.h declares only for nvcc (the C functions are in the fake runtime).
template <class T>
inline cudaError_t cudaFuncSetAttribute(T* func, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}

// ---- built-in variables ---------------------------------------------------------------------------------------
#define threadIdx (static_cast<const uint3&>(::aiayn::emu::detail::g_fiber->thread_idx))
#define blockIdx (static_cast<const uint3&>(::aiayn::emu::detail::g_block_idx))
#define blockDim (static_cast<const dim3&>(::aiayn::emu::detail::g_block_dim))
#define gridDim (static_cast<const dim3&>(::aiayn::emu::detail::g_grid_dim))
#define warpSize 32

// Dynamic shared memory (common.cuh's AIAYN_DYNAMIC_SHARED under emulation).
#define AIAYN_EMU_DYNAMIC_SHARED(type, name) \
  type* const name = reinterpret_cast<type*>(::aiayn::emu::detail::g_dynamic_shared)

// ---- warp intrinsics (CUDA's names and argument order) --------------------------------------------------------
template <class T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  return ::aiayn::emu::warp_shuffle(::aiayn::emu::WarpOp::Shfl, mask, var, src_lane, width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return ::aiayn::emu::warp_shuffle(::aiayn::emu::WarpOp::ShflUp, mask, var, int(delta), width);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return ::aiayn::emu::warp_shuffle(::aiayn::emu::WarpOp::ShflDown, mask, var, int(delta), width);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  return ::aiayn::emu::warp_shuffle(::aiayn::emu::WarpOp::ShflXor, mask, var, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return unsigned(::aiayn::emu::warp_collective(::aiayn::emu::WarpOp::Ballot, mask, predicate != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int predicate) {
  return int(::aiayn::emu::warp_collective(::aiayn::emu::WarpOp::Any, mask, predicate != 0, 0, 32));
}
inline int __all_sync(unsigned mask, int predicate) {
  return int(::aiayn::emu::warp_collective(::aiayn::emu::WarpOp::All, mask, predicate != 0, 0, 32));
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  (void)::aiayn::emu::warp_collective(::aiayn::emu::WarpOp::Sync, mask, 0, 0, 32);
}
inline void __threadfence() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

// ---- atomics: plain read-modify-write (fibers are cooperative, blocks sequential) -----------------------------
namespace aiayn::emu::detail {
template <class T>
struct same { using type = T; };  // keeps the value argument out of template deduction, as CUDA's overloads do
}  // namespace aiayn::emu::detail
template <class T>
inline T atomicAdd(T* address, typename ::aiayn::emu::detail::same<T>::type v) {
  const T old = *address;
  *address = old + v;
  return old;
}
template <class T>
inline T atomicSub(T* address, typename ::aiayn::emu::detail::same<T>::type v) {
  const T old = *address;
  *address = old - v;
  return old;
}
template <class T>
inline T atomicMin(T* address, typename ::aiayn::emu::detail::same<T>::type v) {
  const T old = *address;
  if (v < old) *address = v;
  return old;
}
template <class T>
inline T atomicMax(T* address, typename ::aiayn::emu::detail::same<T>::type v) {
  const T old = *address;
  if (v > old) *address = v;
  return old;
}
template <class T>
inline T atomicExch(T* address, typename ::aiayn::emu::detail::same<T>::type v) {
  const T old = *address;
  *address = v;
  return old;
}
template <class T>
inline T atomicCAS(T* address, typename ::aiayn::emu::detail::same<T>::type compare,
                   typename ::aiayn::emu::detail::same<T>::type v) {
  const T old = *address;
  if (old == compare) *address = v;
  return old;
}

// ---- math: the host's functions (the device's differ in the last bits; see tests/emu/README.md) ---------------
// Emulated translation units are compiled with -ffp-contract=off, so the _rn forms really are single roundings.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f)); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline int __float2int_rn(float x) { return int(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return int(x); }
inline float __int2float_rn(int x) { return float(x); }
template <class T>
inline T __ldg(const T* p) { return *p; }

// bf16 intrinsics that cuda_bf16.h declares for device code only (its conversions and operators compile on the
// host as they are). a * b + c rounded once (via double, exact unless the exponents are far apart), as on the
// device. Add others here as kernels need them.
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  return __double2bfloat16(std::fma(double(__bfloat162float(a)), double(__bfloat162float(b)), double(__bfloat162float(c))));
}
inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) {
  return __nv_bfloat162(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y));
}

// CUDA's integer and floating min/max overloads (the device headers declare them for device code only).
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
