// The CPU emulator's own semantics (tests/emu/README.md): what the emulated kernels may rely on, and every misuse
// it promises to report. Kernels here are written as the project's are (CUDA syntax, launched through
// aiayn::emu::launch as cuda_detail::launch does under emulation).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "aiayn/error.hpp"
#include "aiayn_emu/cuda_emu.hpp"
#include "src/emu_internal.hpp"  // stream_add_work: the fake NCCL's way of keeping work in flight

namespace emu = aiayn::emu;

namespace {

#define EXPECT_THROW_WITH(stmt, text)                                                         \
  do {                                                                                        \
    try {                                                                                     \
      stmt;                                                                                   \
      ADD_FAILURE() << "no exception from " #stmt;                                            \
    } catch (const aiayn::Error& e) {                                                         \
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();             \
    }                                                                                         \
  } while (0)

template <class T>
T* device_array(size_t n) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, n * sizeof(T)), cudaSuccess);
  return static_cast<T*>(p);
}
template <class T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}
template <class T>
void to_device(T* d, const std::vector<T>& h) {
  ASSERT_EQ(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
}

class Emu : public ::testing::Test {
 protected:
  void TearDown() override { emu::set_schedule(emu::Schedule::Forward); }
};

// ---- blocks, barriers, shared memory ----
__global__ void rotate_kernel(const int* in, int* out) {
  __shared__ int s[256];
  const int t = threadIdx.x;
  s[t] = in[blockIdx.x * blockDim.x + t];
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = s[(t + 1) % blockDim.x];
}

TEST_F(Emu, SyncthreadsIsABarrierAndSharedMemoryIsSharedPerBlock) {
  const int blocks = 3, threads = 256, n = blocks * threads;
  int* in = device_array<int>(n);
  int* out = device_array<int>(n);
  std::vector<int> h(n);
  std::iota(h.begin(), h.end(), 100);
  to_device(in, h);
  for (auto order : {emu::Schedule::Forward, emu::Schedule::Reverse, emu::Schedule::Shuffle}) {
    emu::set_schedule(order, 7);
    emu::launch("rotate_kernel", rotate_kernel, blocks, threads, 0, nullptr, in, out);
    const auto got = to_host(out, n);
    for (int b = 0; b < blocks; ++b)
      for (int t = 0; t < threads; ++t) ASSERT_EQ(got[b * threads + t], h[b * threads + (t + 1) % threads]);
  }
  cudaFree(in);
  cudaFree(out);
}

// The same kernel without its barrier: the result depends on the resume order, which is what the order switch is
// for (shared memory is NaN/-1 poison until written).
__global__ void racy_rotate_kernel(int* out) {
  __shared__ int s[64];
  const int t = threadIdx.x;
  s[t] = t;
  out[t] = s[(t + 1) % 64];
}

TEST_F(Emu, AMissingBarrierShowsUnderAnotherOrder) {
  int* out = device_array<int>(64);
  emu::set_schedule(emu::Schedule::Forward);
  emu::launch("racy_rotate_kernel", racy_rotate_kernel, 1, 64, 0, nullptr, out);
  const auto forward = to_host(out, 64);
  emu::set_schedule(emu::Schedule::Reverse);
  emu::launch("racy_rotate_kernel", racy_rotate_kernel, 1, 64, 0, nullptr, out);
  const auto reverse = to_host(out, 64);
  EXPECT_EQ(forward[0], -1);  // thread 1 had not written yet: poison
  EXPECT_EQ(reverse[0], 1);
  EXPECT_NE(forward, reverse);
  cudaFree(out);
}

// Warps run ahead of each other up to a __syncthreads (a shuffle only synchronises its own warp), so a barrier
// missing between warps shows too.
__global__ void racy_warps_kernel(int* out) {
  __shared__ int s[2];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) s[warp] = warp + 1;
  const int zero = __shfl_sync(0xffffffffu, 0, 0);
  out[threadIdx.x] = s[1 - warp] + zero;
}

TEST_F(Emu, AMissingBarrierBetweenWarpsShows) {
  int* out = device_array<int>(64);
  emu::set_schedule(emu::Schedule::Forward);
  emu::launch("racy_warps_kernel", racy_warps_kernel, 1, 64, 0, nullptr, out);
  const auto forward = to_host(out, 64);
  emu::set_schedule(emu::Schedule::Reverse);
  emu::launch("racy_warps_kernel", racy_warps_kernel, 1, 64, 0, nullptr, out);
  const auto reverse = to_host(out, 64);
  EXPECT_EQ(forward[0], -1);  // warp 0 ran to its end before warp 1 wrote
  EXPECT_EQ(forward[32], 1);
  EXPECT_EQ(reverse[0], 2);
  EXPECT_EQ(reverse[32], -1);
  cudaFree(out);
}

__global__ void index_kernel(int* out) {
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int threads = blockDim.x * blockDim.y * blockDim.z;
  out[b * threads + t] = b * 1000 + t;
}

TEST_F(Emu, BuiltinIndicesCoverThreeDimensionalGridsAndBlocks) {
  const dim3 grid(2, 3, 2), block(4, 3, 2);
  const int n = 12 * 24;
  int* out = device_array<int>(n);
  emu::launch("index_kernel", index_kernel, grid, block, 0, nullptr, out);
  const auto got = to_host(out, n);
  for (int b = 0; b < 12; ++b)
    for (int t = 0; t < 24; ++t) ASSERT_EQ(got[b * 24 + t], b * 1000 + t);
  cudaFree(out);
}

__global__ void own_copy_kernel(int n, int* out) {
  n += threadIdx.x;  // each thread has its own copy of the parameters
  out[threadIdx.x] = n;
}

TEST_F(Emu, EachThreadHasItsOwnParameters) {
  int* out = device_array<int>(8);
  emu::launch("own_copy_kernel", own_copy_kernel, 1, 8, 0, nullptr, 10, out);
  const auto got = to_host(out, 8);
  for (int t = 0; t < 8; ++t) EXPECT_EQ(got[t], 10 + t);
  cudaFree(out);
}

__global__ void early_exit_kernel(int* out) {
  if (threadIdx.x >= 16) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void two_barriers_kernel(int* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

TEST_F(Emu, DivergentBarriersAreReported) {
  int* out = device_array<int>(64);
  EXPECT_THROW_WITH(emu::launch("early_exit_kernel", early_exit_kernel, 2, 64, 0, nullptr, out),
                    "is reached by 16 of 64 threads");
  EXPECT_THROW_WITH(emu::launch("two_barriers_kernel", two_barriers_kernel, 1, 64, 0, nullptr, out),
                    "different __syncthreads");
  cudaFree(out);
}

// ---- warp intrinsics ----
__global__ void warp_kernel(const int* in, int* out) {
  const int t = threadIdx.x, lane = t & 31;
  int v = in[t];
  int sum = v;
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  out[5 * t + 0] = sum;
  out[5 * t + 1] = __shfl_sync(0xffffffffu, v, 3);
  out[5 * t + 2] = __shfl_down_sync(0xffffffffu, v, 2, 16);
  out[5 * t + 3] = __shfl_up_sync(0xffffffffu, v, 1);
  out[5 * t + 4] = int(__ballot_sync(0xffffffffu, lane % 3 == 0));
}

TEST_F(Emu, WarpShufflesExchangeBetweenLanes) {
  const int n = 64;
  int* in = device_array<int>(n);
  int* out = device_array<int>(5 * n);
  std::vector<int> h(n);
  for (int i = 0; i < n; ++i) h[i] = i * i + 1;
  to_device(in, h);
  emu::launch("warp_kernel", warp_kernel, 1, n, 0, nullptr, in, out);
  const auto got = to_host(out, 5 * n);
  unsigned ballot = 0;
  for (int l = 0; l < 32; l += 3) ballot |= 1u << l;
  for (int t = 0; t < n; ++t) {
    const int w = t / 32 * 32, lane = t % 32;
    int sum = 0;
    for (int l = 0; l < 32; ++l) sum += h[w + l];
    EXPECT_EQ(got[5 * t + 0], sum);
    EXPECT_EQ(got[5 * t + 1], h[w + 3]);
    EXPECT_EQ(got[5 * t + 2], (lane % 16) + 2 < 16 ? h[t + 2] : h[t]);  // width 16: no reads across segments
    EXPECT_EQ(got[5 * t + 3], lane >= 1 ? h[t - 1] : h[t]);
    EXPECT_EQ(unsigned(got[5 * t + 4]), ballot);
  }
  cudaFree(in);
  cudaFree(out);
}

__global__ void partial_shuffle_kernel(int* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 1);
}

__global__ void shuffle_vs_barrier_kernel(int* out) {
  if (threadIdx.x == 7) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0);
    __syncthreads();
  }
}

__global__ void short_warp_kernel(int* out) { out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0); }

TEST_F(Emu, ShufflesNotReachedByEveryLaneAreReported) {
  int* out = device_array<int>(64);
  EXPECT_THROW_WITH(emu::launch("partial_shuffle_kernel", partial_shuffle_kernel, 1, 32, 0, nullptr, out),
                    "lane 5) exited");
  EXPECT_THROW_WITH(emu::launch("shuffle_vs_barrier_kernel", shuffle_vs_barrier_kernel, 1, 32, 0, nullptr, out),
                    "waits at __syncthreads");
  EXPECT_THROW_WITH(emu::launch("short_warp_kernel", short_warp_kernel, 1, 40, 0, nullptr, out),
                    "names lanes beyond the 8 threads");
  cudaFree(out);
}

// bf16 in kernels: cuda_bf16.h's host conversions and operators, the emulator's __hfma, shuffles of 2-byte values.
__global__ void bf16_kernel(const __nv_bfloat16* x, float* out) {
  const int t = threadIdx.x;
  const __nv_bfloat16 a = x[t], b = __float2bfloat16(0.5f);
  const __nv_bfloat16 s = __hfma(a, b, a * b);  // a
  out[t] = __bfloat162float(__shfl_xor_sync(0xffffffffu, s, 1));
}

TEST_F(Emu, Bf16WorksInKernels) {
  std::vector<__nv_bfloat16> h(32);
  for (int i = 0; i < 32; ++i) h[i] = __float2bfloat16(float(i) - 7.5f);
  auto* x = device_array<__nv_bfloat16>(32);
  float* out = device_array<float>(32);
  to_device(x, h);
  emu::launch("bf16_kernel", bf16_kernel, 1, 32, 0, nullptr, x, out);
  const auto got = to_host(out, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(got[i], __bfloat162float(h[i ^ 1]));
  cudaFree(x);
  cudaFree(out);
}

// ---- atomics ----
__global__ void atomic_kernel(const int* in, int* first, int* total) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (in[t] < 0) atomicMin(first, t);
  atomicAdd(total, in[t]);
}

TEST_F(Emu, AtomicsAreReadModifyWrite) {
  const int n = 300;
  int* in = device_array<int>(n);
  int* res = device_array<int>(2);
  std::vector<int> h(n, 1);
  h[77] = h[201] = -1;
  to_device(in, h);
  to_device(res, std::vector<int>{1 << 30, 0});
  emu::set_schedule(emu::Schedule::Shuffle, 3);
  emu::launch("atomic_kernel", atomic_kernel, 3, 100, 0, nullptr, in, res, res + 1);
  const auto got = to_host(res, 2);
  EXPECT_EQ(got[0], 77);
  EXPECT_EQ(got[1], n - 4);
  cudaFree(in);
  cudaFree(res);
}

// ---- launch configuration and memory misuse ----
__global__ void dynamic_kernel(float* out, int n) {
  AIAYN_EMU_DYNAMIC_SHARED(float, smem);
  for (int i = threadIdx.x; i < n; i += blockDim.x) smem[i] = float(i);
  __syncthreads();
  if (threadIdx.x == 0) out[0] = smem[n - 1];
}

TEST_F(Emu, LaunchLimitsAreEnforced) {
  float* out = device_array<float>(1);
  EXPECT_THROW_WITH(emu::launch("dynamic_kernel", dynamic_kernel, 1, 1025, 0, nullptr, out, 1), "at most 1024");
  EXPECT_THROW_WITH(emu::launch("dynamic_kernel", dynamic_kernel, 0, 32, 0, nullptr, out, 1), "empty grid");
  const int big = 20000;  // 80 000 bytes: above 48 KiB
  EXPECT_THROW_WITH(emu::launch("dynamic_kernel", dynamic_kernel, 1, 128, big * 4, nullptr, out, big),
                    "dynamic shared memory");
  ASSERT_EQ(cudaFuncSetAttribute(reinterpret_cast<const void*>(dynamic_kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 big * 4),
            cudaSuccess);
  emu::launch("dynamic_kernel", dynamic_kernel, 1, 128, big * 4, nullptr, out, big);
  EXPECT_EQ(to_host(out, 1)[0], float(big - 1));
  EXPECT_NE(cudaFuncSetAttribute(reinterpret_cast<const void*>(dynamic_kernel),
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, 300 * 1024),
            cudaSuccess);
  cudaFree(out);
}

TEST_F(Emu, HostPointerArgumentsAreRejected) {
  std::vector<float> host(4);
  EXPECT_THROW_WITH(emu::launch("dynamic_kernel", dynamic_kernel, 1, 32, 64, nullptr, host.data(), 1),
                    "a host pointer");
  float* d = device_array<float>(4);
  ASSERT_EQ(cudaFree(d), cudaSuccess);
  EXPECT_THROW_WITH(emu::launch("dynamic_kernel", dynamic_kernel, 1, 32, 64, nullptr, d, 1), "freed device memory");
}

using EmuDeathTest = Emu;

TEST_F(EmuDeathTest, DynamicSharedOverrunFaults) {
  float* out = device_array<float>(1);
  EXPECT_DEATH(emu::launch("dynamic_kernel", dynamic_kernel, 1, 32, 64 * 4, nullptr, out, 64 + 1024 + 8),
               "dynamic shared memory overrun.*kernel 'dynamic_kernel'");
  cudaFree(out);
}

__global__ void write_kernel(float* p, int i) {
  if (threadIdx.x == 0) p[i] = 1.0f;
}

TEST_F(EmuDeathTest, HostAccessToDeviceMemoryFaults) {
  float* d = device_array<float>(16);
  EXPECT_DEATH(d[3] = 1.0f, "host code accessed device memory");
  cudaFree(d);
}

TEST_F(EmuDeathTest, OutOfBoundsDeviceAccessIsReported) {
  float* d = device_array<float>(10);
  EXPECT_THROW_WITH(emu::launch("write_kernel", write_kernel, 1, 32, 0, nullptr, d, 12), "past the end of the 40-byte");
  EXPECT_DEATH(emu::launch("write_kernel", write_kernel, 1, 32, 0, nullptr, d, 100),  // into the guard page
               "out-of-bounds device access.*kernel 'write_kernel' block \\(0,0,0\\) thread \\(0,0,0\\)");
  cudaFree(d);
}

// ---- the fake runtime ----
TEST_F(Emu, MemcpyChecksDirectionsAndBounds) {
  float* d = device_array<float>(8);
  std::vector<float> h(8, 1.0f), h2(8);
  EXPECT_EQ(cudaMemcpy(d, h.data(), 32, cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(h2.data(), d, 32, cudaMemcpyDefault), cudaSuccess);
  EXPECT_EQ(h, h2);
  EXPECT_EQ(cudaMemcpy(h2.data(), h.data(), 32, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  EXPECT_NE(std::string(cudaGetErrorString(cudaGetLastError())).find("the destination is"), std::string::npos);
  EXPECT_EQ(cudaMemcpy(d, h.data(), 32, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(d, h.data(), 36, cudaMemcpyHostToDevice), cudaErrorInvalidValue);  // past the allocation
  EXPECT_EQ(cudaMemset(h.data(), 0, 4), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // reading the last error resets it
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, d + 3), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeDevice);
  ASSERT_EQ(cudaPointerGetAttributes(&attr, h.data()), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeUnregistered);
  EXPECT_EQ(cudaFree(h.data()), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(d), cudaSuccess);
  EXPECT_EQ(cudaFree(d), cudaErrorInvalidValue);  // double free
  (void)cudaGetLastError();
}

TEST_F(Emu, StreamsAndEventsAreSynchronousButChecked) {
  cudaStream_t s = nullptr;
  cudaEvent_t e = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), cudaSuccess);
  float* d = nullptr;
  ASSERT_EQ(cudaMallocAsync(reinterpret_cast<void**>(&d), 64, s), cudaSuccess);
  emu::launch("write_kernel", write_kernel, 1, 32, 0, s, d, 2);
  EXPECT_EQ(cudaEventRecord(e, s), cudaSuccess);
  EXPECT_EQ(cudaStreamWaitEvent(nullptr, e, 0), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(e), cudaSuccess);
  EXPECT_EQ(cudaEventSynchronize(e), cudaSuccess);
  EXPECT_EQ(cudaFreeAsync(d, s), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(cudaEventDestroy(e), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(s), cudaErrorInvalidResourceHandle);  // destroyed
  EXPECT_EQ(cudaEventRecord(e, nullptr), cudaErrorInvalidResourceHandle);
  float* d2 = device_array<float>(4);
  EXPECT_THROW_WITH(emu::launch("write_kernel", write_kernel, 1, 32, 0, s, d2, 0), "not a live stream");
  cudaFree(d2);
  (void)cudaGetLastError();
  int n = 0;
  EXPECT_EQ(cudaGetDeviceCount(&n), cudaSuccess);
  EXPECT_EQ(n, 1);
  EXPECT_EQ(cudaSetDevice(1), cudaErrorInvalidDevice);
  (void)cudaGetLastError();
}

// ---- work in flight (the fake NCCL's collectives, nccl_emu.cpp) ----
// Work an emulated library leaves in flight is reported by queries and completed, in order, by whatever CUDA
// orders after it: new work on its stream, synchronisation, an event waited for; not by independent streams.
TEST_F(Emu, WorkInFlightIsCompletedInStreamOrder) {
  cudaStream_t comm = nullptr, blocking = nullptr;
  cudaEvent_t e = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&comm, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamCreate(&blocking), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), cudaSuccess);
  float* d = device_array<float>(32);
  int polls = 0;
  bool complete = false;
  // Completes when waited for, or at its third poll.
  const emu::StreamWork work = [&](bool wait) { return complete = complete || wait || ++polls >= 3; };
  auto restart = [&] { complete = false, polls = -1000; };

  emu::stream_add_work(comm, work);
  EXPECT_EQ(cudaStreamQuery(comm), cudaErrorNotReady);  // poll 1
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "cudaErrorNotReady is not kept as an error";
  EXPECT_EQ(cudaEventRecord(e, comm), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(e), cudaErrorNotReady);  // poll 2
  // The legacy stream and a blocking stream do not wait for a non-blocking stream.
  emu::launch("write_kernel", write_kernel, 1, 32, 0, nullptr, d, 1);
  emu::launch("write_kernel", write_kernel, 1, 32, 0, blocking, d, 1);
  EXPECT_EQ(cudaMemsetAsync(d, 0, 4, blocking), cudaSuccess);
  EXPECT_FALSE(complete);
  EXPECT_EQ(cudaStreamQuery(comm), cudaSuccess);  // poll 3
  EXPECT_TRUE(complete);
  EXPECT_EQ(cudaEventQuery(e), cudaSuccess);

  restart();  // new work on the stream follows what is in flight there
  emu::stream_add_work(comm, work);
  emu::launch("write_kernel", write_kernel, 1, 32, 0, comm, d, 1);
  EXPECT_TRUE(complete);
  restart();
  emu::stream_add_work(comm, work);
  EXPECT_EQ(cudaMemcpyAsync(d, d + 8, 4, cudaMemcpyDeviceToDevice, comm), cudaSuccess);
  EXPECT_TRUE(complete);
  restart();
  emu::stream_add_work(comm, work);
  EXPECT_EQ(cudaStreamSynchronize(comm), cudaSuccess);
  EXPECT_TRUE(complete);

  restart();  // CUDA's implicit synchronisation: the legacy stream waits for blocking streams
  emu::stream_add_work(blocking, work);
  emu::launch("write_kernel", write_kernel, 1, 32, 0, nullptr, d, 1);
  EXPECT_TRUE(complete);
  restart();  // and a blocking stream for the legacy stream
  emu::stream_add_work(nullptr, work);
  emu::launch("write_kernel", write_kernel, 1, 32, 0, blocking, d, 1);
  EXPECT_TRUE(complete);

  restart();  // an event waited for by another stream: here the host waits (a GPU would hold that stream)
  emu::stream_add_work(comm, work);
  EXPECT_EQ(cudaEventRecord(e, comm), cudaSuccess);
  bool later = false;
  emu::stream_add_work(comm, [&](bool) { return later = true; });  // after the event: not waited for
  EXPECT_EQ(cudaStreamWaitEvent(nullptr, e, 0), cudaSuccess);
  EXPECT_TRUE(complete);
  EXPECT_FALSE(later);
  EXPECT_EQ(cudaStreamSynchronize(comm), cudaSuccess);
  EXPECT_TRUE(later);

  restart();  // a destroyed stream returns at once; its work completes by cudaDeviceSynchronize (or cudaFree)
  emu::stream_add_work(comm, work);
  EXPECT_EQ(cudaStreamDestroy(comm), cudaSuccess);
  EXPECT_FALSE(complete);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_TRUE(complete);
  EXPECT_EQ(cudaEventDestroy(e), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(blocking), cudaSuccess);
  EXPECT_EQ(cudaFree(d), cudaSuccess);
}

// The stream order behind the fake NCCL's input check: an operation on another stream is ordered before new
// work on stream c only by an event recorded after it and waited for by c, by the host synchronising with it
// first, or by CUDA's implicit ordering between the legacy stream and blocking streams.
TEST_F(Emu, StreamOrderFollowsEventsAndSynchronisation) {
  cudaStream_t c = nullptr, blocking = nullptr;
  cudaEvent_t e = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&c, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamCreate(&blocking), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), cudaSuccess);
  float* d = device_array<float>(32);
  float* other = device_array<float>(32);
  EXPECT_EQ(emu::unordered_touch(c, d + 4), "");  // nothing touched it yet

  emu::launch("write_kernel", write_kernel, 1, 32, 0, nullptr, d, 1);
  EXPECT_NE(emu::unordered_touch(c, d + 4).find("write_kernel (operation"), std::string::npos);
  EXPECT_EQ(emu::unordered_touch(nullptr, d), "") << "the same stream is ordered";
  EXPECT_EQ(cudaEventRecord(e, nullptr), cudaSuccess);
  EXPECT_NE(emu::unordered_touch(c, d), "") << "recorded, not yet waited for";
  EXPECT_EQ(cudaStreamWaitEvent(c, e, 0), cudaSuccess);
  EXPECT_EQ(emu::unordered_touch(c, d), "");

  emu::launch("write_kernel", write_kernel, 1, 32, 0, nullptr, d, 1);  // after the event: not ordered
  EXPECT_NE(emu::unordered_touch(c, d), "");
  EXPECT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);  // the host waited: everything it enqueues follows
  EXPECT_EQ(emu::unordered_touch(c, d), "");

  emu::launch("write_kernel", write_kernel, 1, 32, 0, nullptr, d, 1);
  std::vector<float> h(32);
  EXPECT_EQ(cudaMemcpy(h.data(), other, 4, cudaMemcpyDeviceToHost), cudaSuccess);  // synchronous, legacy stream
  EXPECT_EQ(emu::unordered_touch(c, d), "");

  emu::launch("write_kernel", write_kernel, 1, 32, 0, blocking, d, 1);
  EXPECT_NE(emu::unordered_touch(c, d).find("write_kernel"), std::string::npos);
  emu::launch("write_kernel", write_kernel, 1, 32, 0, nullptr, other, 1);  // the legacy stream waits for `blocking`
  EXPECT_EQ(cudaEventRecord(e, nullptr), cudaSuccess);
  EXPECT_EQ(cudaStreamWaitEvent(c, e, 0), cudaSuccess);
  EXPECT_EQ(emu::unordered_touch(c, d), "");

  EXPECT_EQ(cudaMemsetAsync(d, 0, 8, blocking), cudaSuccess);  // copies and sets count as operations too
  EXPECT_NE(emu::unordered_touch(c, d).find("cudaMemsetAsync"), std::string::npos);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(emu::unordered_touch(c, d), "");

  EXPECT_EQ(cudaEventDestroy(e), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(c), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(blocking), cudaSuccess);
  EXPECT_EQ(cudaFree(d), cudaSuccess);
  EXPECT_EQ(cudaFree(other), cudaSuccess);
}

TEST_F(Emu, RadixSortIsStableOnTheLowBits) {
  const int n = 50;
  std::vector<int32_t> keys(n), vals(n);
  for (int i = 0; i < n; ++i) keys[i] = (i * 37) % 11 + ((i % 3) << 8), vals[i] = i;  // bit 8 and up: ignored
  int32_t* d = device_array<int32_t>(4 * n);
  to_device(d, keys);
  to_device(d + 2 * n, vals);
  size_t bytes = 0;
  ASSERT_EQ(emu::radix_sort_pairs(nullptr, bytes, nullptr, nullptr, nullptr, nullptr, n, 0, 4, nullptr), cudaSuccess);
  void* tmp = nullptr;
  ASSERT_EQ(cudaMalloc(&tmp, bytes), cudaSuccess);
  ASSERT_EQ(emu::radix_sort_pairs(tmp, bytes, d, d + n, d + 2 * n, d + 3 * n, n, 0, 4, nullptr), cudaSuccess);
  const auto got = to_host(d, 4 * n);
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return (keys[a] & 15) < (keys[b] & 15); });
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(got[n + i], keys[order[i]]);
    EXPECT_EQ(got[3 * n + i], order[i]);
  }
  EXPECT_EQ(emu::radix_sort_pairs(tmp, bytes, d, d, d + 2 * n, d + 3 * n, n, 0, 4, nullptr), cudaErrorInvalidValue);
  cudaFree(tmp);
  cudaFree(d);
}

// ---- the fake cuBLASLt ----
struct Lt {
  cublasLtHandle_t h = nullptr;
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~Lt() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    for (auto l : {a, b, c})
      if (l) cublasLtMatrixLayoutDestroy(l);
    if (op) cublasLtMatmulDescDestroy(op);
    if (h) cublasLtDestroy(h);
  }
};

// Column-major D[m, n] = epi(alpha * op(A) op(B) + beta * C + bias) against a direct computation.
TEST_F(Emu, CublasLtMatmulFollowsTheDocumentedSemantics) {
  const int m = 5, n = 7, k = 3, lda = 8, ldb = 9, ldc = 6;
  for (int variant = 0; variant < 8; ++variant) {
    const bool ta = variant & 1, tb = variant & 2, with_bias = variant & 4;
    const float alpha = 0.5f, beta = variant == 3 ? 0.0f : 2.0f;
    const cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
    std::vector<float> A(size_t(lda) * a_cols), B(size_t(ldb) * b_cols), C(size_t(ldc) * n), bias(m);
    for (size_t i = 0; i < A.size(); ++i) A[i] = float(int(i % 7) - 3);
    for (size_t i = 0; i < B.size(); ++i) B[i] = float(int(i % 5) - 2);
    for (size_t i = 0; i < C.size(); ++i) C[i] = beta == 0.0f ? std::nanf("") : float(int(i % 4));
    for (int i = 0; i < m; ++i) bias[i] = float(i) - 2.0f;
    float *dA = device_array<float>(A.size() + 64), *dB = device_array<float>(B.size()), *dC = device_array<float>(C.size()),
          *dbias = device_array<float>(m), *ws = device_array<float>(1 << 20);
    to_device(dA, A), to_device(dB, B), to_device(dC, C), to_device(dbias, bias);
    Lt lt;
    ASSERT_EQ(cublasLtCreate(&lt.h), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasLtMatmulDescCreate(&lt.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasLtMatmulDescSetAttribute(lt.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasLtMatmulDescSetAttribute(lt.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb), CUBLAS_STATUS_SUCCESS);
    const cublasLtEpilogue_t epi = with_bias ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    ASSERT_EQ(cublasLtMatmulDescSetAttribute(lt.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi), CUBLAS_STATUS_SUCCESS);
    const void* bp = dbias;
    ASSERT_EQ(cublasLtMatmulDescSetAttribute(lt.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp), CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(cublasLtMatmulDescSetAttribute(lt.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, 4), CUBLAS_STATUS_INVALID_VALUE);
    ASSERT_EQ(cublasLtMatrixLayoutCreate(&lt.a, CUDA_R_32F, a_rows, a_cols, lda), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasLtMatrixLayoutCreate(&lt.b, CUDA_R_32F, b_rows, b_cols, ldb), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasLtMatrixLayoutCreate(&lt.c, CUDA_R_32F, m, n, ldc), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasLtMatmulPreferenceCreate(&lt.pref), CUBLAS_STATUS_SUCCESS);
    const size_t ws_bytes = 4 << 20;
    ASSERT_EQ(cublasLtMatmulPreferenceSetAttribute(lt.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof ws_bytes),
              CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulHeuristicResult_t r{};
    int found = 0;
    ASSERT_EQ(cublasLtMatmulAlgoGetHeuristic(lt.h, lt.op, lt.a, lt.b, lt.c, lt.c, lt.pref, 1, &r, &found), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(found, 1);
    ASSERT_EQ(cublasLtMatmul(lt.h, lt.op, &alpha, dA, lt.a, dB, lt.b, &beta, dC, lt.c, dC, lt.c, &r.algo, ws, ws_bytes,
                             nullptr),
              CUBLAS_STATUS_SUCCESS);
    const auto got = to_host(dC, C.size());
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) {
        double acc = 0;
        for (int p = 0; p < k; ++p)
          acc += double(ta ? A[p + i * lda] : A[i + p * lda]) * double(tb ? B[j + p * ldb] : B[p + j * ldb]);
        double want = alpha * acc + (beta != 0.0f ? beta * C[i + j * ldc] : 0.0);
        if (with_bias) want = std::max(0.0, want + bias[i]);
        ASSERT_EQ(got[i + j * ldc], float(want)) << "variant " << variant << " i " << i << " j " << j;
      }
    // Rows beyond m (padding of the leading dimension) are untouched.
    EXPECT_TRUE(beta == 0.0f ? std::isnan(got[m]) : got[m] == C[m]);
    // Misuse: a pointer less aligned than the preference promised (256 by default), a workspace too small.
    EXPECT_EQ(cublasLtMatmul(lt.h, lt.op, &alpha, dA + 1, lt.a, dB, lt.b, &beta, dC, lt.c, dC, lt.c, &r.algo, ws,
                             ws_bytes, nullptr),
              CUBLAS_STATUS_INVALID_VALUE);
    EXPECT_EQ(cublasLtMatmul(lt.h, lt.op, &alpha, dA, lt.a, dB, lt.b, &beta, dC, lt.c, dC, lt.c, &r.algo, ws, 16, nullptr),
              CUBLAS_STATUS_INVALID_VALUE);
    for (float* p : {dA, dB, dC, dbias, ws}) cudaFree(p);
  }
}

TEST_F(Emu, CublasLtRejectsWhatItDoesNotEmulate) {
  Lt lt;
  ASSERT_EQ(cublasLtCreate(&lt.h), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasLtMatmulDescCreate(&lt.op, CUBLAS_COMPUTE_32F_FAST_TF32, CUDA_R_32F), CUBLAS_STATUS_NOT_SUPPORTED);
  ASSERT_EQ(cublasLtMatmulDescCreate(&lt.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
  const cublasLtEpilogue_t gelu = CUBLASLT_EPILOGUE_GELU;
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(lt.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &gelu, sizeof gelu), CUBLAS_STATUS_NOT_SUPPORTED);
  const int32_t fill = 0;
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(lt.op, CUBLASLT_MATMUL_DESC_FILL_MODE, &fill, sizeof fill), CUBLAS_STATUS_NOT_SUPPORTED);
  EXPECT_NE(std::string(cublasLtGetStatusString(CUBLAS_STATUS_NOT_SUPPORTED)).find("outside the emulated subset"), std::string::npos);
  // Shapes that do not chain: op(A) 4x3, op(B) 2x5.
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&lt.a, CUDA_R_32F, 4, 3, 4), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&lt.b, CUDA_R_32F, 2, 5, 2), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&lt.c, CUDA_R_32F, 4, 5, 4), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatmulPreferenceCreate(&lt.pref), CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulHeuristicResult_t r{};
  int found = 0;
  EXPECT_EQ(cublasLtMatmulAlgoGetHeuristic(lt.h, lt.op, lt.a, lt.b, lt.c, lt.c, lt.pref, 1, &r, &found),
            CUBLAS_STATUS_INVALID_VALUE);
}

TEST_F(Emu, CublasLtComputesBf16InFloat) {
  // bf16 A and B, fp32 C/D: products of bf16 values are exact in float.
  const int m = 3, n = 2, k = 4;
  std::vector<__nv_bfloat16> A(m * k), B(k * n);
  for (int i = 0; i < m * k; ++i) A[i] = __float2bfloat16(0.25f * float(i - 5));
  for (int i = 0; i < k * n; ++i) B[i] = __float2bfloat16(float(i % 3) - 1.0f);
  auto* dA = device_array<__nv_bfloat16>(A.size());
  auto* dB = device_array<__nv_bfloat16>(B.size());
  float* dD = device_array<float>(m * n);
  to_device(dA, A), to_device(dB, B);
  Lt lt;
  ASSERT_EQ(cublasLtCreate(&lt.h), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatmulDescCreate(&lt.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&lt.a, CUDA_R_16BF, m, k, m), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&lt.b, CUDA_R_16BF, k, n, k), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&lt.c, CUDA_R_32F, m, n, m), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatmulPreferenceCreate(&lt.pref), CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulHeuristicResult_t r{};
  int found = 0;
  ASSERT_EQ(cublasLtMatmulAlgoGetHeuristic(lt.h, lt.op, lt.a, lt.b, lt.c, lt.c, lt.pref, 1, &r, &found), CUBLAS_STATUS_SUCCESS);
  const float alpha = 1.0f, beta = 0.0f;
  ASSERT_EQ(cublasLtMatmul(lt.h, lt.op, &alpha, dA, lt.a, dB, lt.b, &beta, dD, lt.c, dD, lt.c, &r.algo, nullptr, 0, nullptr),
            CUBLAS_STATUS_SUCCESS);
  const auto got = to_host(dD, m * n);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      float want = 0;
      for (int p = 0; p < k; ++p) want += __bfloat162float(A[i + p * m]) * __bfloat162float(B[p + j * k]);
      EXPECT_EQ(got[i + j * m], want);
    }
  cudaFree(dA), cudaFree(dB), cudaFree(dD);
}

}  // namespace
