// Token embedding (scaled by `scale`) plus sinusoidal positions, with the dropout on the sum fused in, and its
// backward into the shared table.
//   forward:  out[n, c] = drop(table[ids[n], c] * scale + PE(pos(n), c))     one block per token row
//   backward: dtable[ids[n], c] += drop(dout[n, c]) * scale                  deterministic, see below
// drop is the dropout op's map (dropout_map.cuh) with rows = tokens [B, seq_len], or the identity when p = 0.
// Shapes: ids [N], table/dtable [V, D] float32, out/dout [N, D] float32 or bf16 (out rounded once, at the end).
//
// The ids are the caller's to check (check_token_ids; the model checks them on the host): the ops themselves
// never synchronise. check_token_ids on the device finds the first bad index and synchronises to report it.
// Backward is deterministic without float atomics: a stable radix sort (CUB) groups token indices by id
// keeping the original order; one block per group walks its tokens in that order and adds into its row, so
// each row of dtable receives exactly the sequence of additions the CPU reference performs. The dropout row
// keys of the tokens are hashed once into scratch [N] (the group walks tokens out of order).
// Products use __fmul_rn so that nvcc does not contract them into FMAs (bit parity with the CPU for the
// table term; the sinusoid differs from the host only by the math libraries' last-place errors).
#if !AIAYN_CUDA_EMULATION
#include <cub/device/device_radix_sort.cuh>
#endif

#include <climits>
#include <cstdint>
#include <string>

#include "common.cuh"
#include "dropout_map.cuh"
#include "kernels/ops/embedding.hpp"
#include "kernels/positional.hpp"

namespace aiayn::kernels {
namespace {

using cuda_detail::as_cuda;
using cuda_detail::as_device;
using cuda_detail::dropout_value;
using cuda_detail::from_f32;
using cuda_detail::to_f32;
constexpr int kThreads = 128;

// first_bad = min n with ids[n] outside [0, V).
__global__ void find_bad_id_kernel(const int32_t* __restrict__ ids, int N, int V, int* __restrict__ first_bad) {
  for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < N; n += gridDim.x * blockDim.x)
    if (ids[n] < 0 || ids[n] >= V) atomicMin(first_bad, n);  // integer min: order-independent
}

template <class T>
__global__ void embed_forward_kernel(const int32_t* __restrict__ ids, const float* __restrict__ table,
                                     T* __restrict__ out, const int32_t* __restrict__ positions, int D, int V,
                                     int seq_len, float scale, bool add_positions, DropoutMask drop) {
  const int n = blockIdx.x;
  const int id = ids[n];
  if (id < 0 || id >= V) return;  // outside the contract: the row is left as it was
  const int pos = positions ? positions[n] : n % seq_len;
  const bool dropout = drop.p > 0.0f;
  const uint64_t key = dropout ? dropout_row_key(drop, n) : 0;
  const float keep_prob = 1.0f - drop.p;
  const float* emb = table + size_t(id) * D;  // [D]
  T* o = out + size_t(n) * D;                 // [D]
  for (int c = threadIdx.x; c < D; c += blockDim.x) {
    float e = __fmul_rn(emb[c], scale) + (add_positions ? sinusoid(pos, c, D) : 0.0f);
    if (dropout) e = dropout_value(key, c, drop.p, keep_prob, e);
    o[c] = from_f32<T>(e);
  }
}

// keys[n] = the dropout row key of token n.
__global__ void row_key_kernel(DropoutMask drop, int N, uint64_t* __restrict__ keys) {
  for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < N; n += gridDim.x * blockDim.x)
    keys[n] = dropout_row_key(drop, n);
}

__global__ void iota_kernel(int32_t* __restrict__ x, int N) {
  for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < N; n += gridDim.x * blockDim.x) x[n] = n;
}

// One block per sorted position i; only the first position of each run of equal ids does the work.
// keys [N] (the tokens' dropout row keys) is null when p = 0.
template <class T>
__global__ void embed_backward_kernel(const int32_t* __restrict__ sorted_ids, const int32_t* __restrict__ order,
                                      const T* __restrict__ dout, float* __restrict__ dtable, int N, int D, int V,
                                      float scale, const uint64_t* __restrict__ keys, float p) {
  const int i = blockIdx.x;
  const int id = sorted_ids[i];
  if (id < 0 || id >= V) return;  // outside the contract: never written outside the table
  if (i > 0 && sorted_ids[i - 1] == id) return;
  int end = i + 1;
  while (end < N && sorted_ids[end] == id) ++end;
  const float keep_prob = 1.0f - p;
  float* row = dtable + size_t(id) * D;  // [D]
  for (int c = threadIdx.x; c < D; c += blockDim.x) {
    float acc = row[c];
    for (int k = i; k < end; ++k) {
      const int n = order[k];
      float g = to_f32(dout[size_t(n) * D + c]);
      if (keys) g = dropout_value(keys[n], c, p, keep_prob, g);
      acc += __fmul_rn(g, scale);
    }
    row[c] = acc;
  }
}

// Stable sort of (key, value) pairs by bits [0, end_bit) of the keys (CUB's radix sort; under emulation the
// emulator's host sort with the same semantics). With temp == nullptr only temp_bytes is set.
cudaError_t stable_sort_pairs_by_key(void* temp, size_t& temp_bytes, const int32_t* keys_in, int32_t* keys_out,
                                     const int32_t* values_in, int32_t* values_out, int n, int end_bit,
                                     cudaStream_t st) {
#if AIAYN_CUDA_EMULATION
  return ::aiayn::emu::radix_sort_pairs(temp, temp_bytes, keys_in, keys_out, values_in, values_out, n, 0, end_bit, st);
#else
  return cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, values_in, values_out, n, 0, end_bit, st);
#endif
}

}  // namespace

namespace cuda {
void check_token_ids(const TokenIdCheck& a, Stream s) {
  AIAYN_CHECK(a.N >= 0 && a.V > 0, "check_token_ids: bad shape");
  if (a.N == 0) return;
  AIAYN_CHECK(a.N <= INT_MAX, "check_token_ids: more than 2^31 ids");
  const int N = static_cast<int>(a.N);
  const cudaStream_t st = as_cuda(s);
  int* first_bad = nullptr;
  AIAYN_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&first_bad), sizeof(int), st));
  AIAYN_CUDA_CHECK(cudaMemsetAsync(first_bad, 0x7f, sizeof(int), st));  // 0x7f7f7f7f > any N
  cuda_detail::launch("find_bad_id_kernel", find_bad_id_kernel, cuda_detail::grid_for(N, 256, 1024), 256, 0, st, a.ids,
                      N, a.V, first_bad);
  int host_bad = INT_MAX;
  AIAYN_CUDA_CHECK(cudaMemcpyAsync(&host_bad, first_bad, sizeof(int), cudaMemcpyDeviceToHost, st));
  AIAYN_CUDA_CHECK(cudaFreeAsync(first_bad, st));
  AIAYN_CUDA_CHECK(cudaStreamSynchronize(st));
  if (host_bad < N) {
    int32_t bad_id = 0;
    AIAYN_CUDA_CHECK(cudaMemcpy(&bad_id, a.ids + host_bad, sizeof(int32_t), cudaMemcpyDeviceToHost));
    AIAYN_FAIL(std::string(a.what) + " id " + std::to_string(bad_id) + " at index " + std::to_string(host_bad) +
               " is outside the vocabulary [0, " + std::to_string(a.V) + ")");
  }
}
}  // namespace cuda

namespace {

template <class T>
void embed_forward_impl(const EmbedForward<T, float>& a, Stream s) {
  AIAYN_CHECK(a.N >= 0 && a.D >= 0 && a.V > 0, "embed_forward: bad shape");
  AIAYN_CHECK(a.positions || a.seq_len > 0, "embed_forward: seq_len must be positive");
  cuda_detail::check_dropout_mask(a.drop, a.N, "embed_forward");
  AIAYN_CHECK(a.drop.p == 0.0f || (!a.positions && a.drop.seq_len == a.seq_len),
              "embed_forward: dropout needs the [B, seq_len] layout (no explicit positions, drop.seq_len == seq_len)");
  if (a.N == 0 || a.D == 0) return;
  const cudaStream_t st = as_cuda(s);
  cuda_detail::launch("embed_forward_kernel", embed_forward_kernel<cuda_detail::device_t<T>>, a.N, kThreads, 0, st,
                      a.ids, a.table, as_device(a.out), a.positions, a.D, a.V, a.seq_len, a.scale, a.add_positions,
                      a.drop);
}

template <class T>
void embed_backward_impl(const EmbedBackward<T, float>& a, Stream s) {
  AIAYN_CHECK(a.N >= 0 && a.D >= 0 && a.V > 0, "embed_backward: bad shape");
  cuda_detail::check_dropout_mask(a.drop, a.N, "embed_backward");
  if (a.N == 0 || a.D == 0) return;
  const cudaStream_t st = as_cuda(s);
  int end_bit = 1;
  while (end_bit < 31 && (int64_t(1) << end_bit) < a.V) ++end_bit;  // ids < V < 2^end_bit
  size_t cub_bytes = 0;
  AIAYN_CUDA_CHECK(stable_sort_pairs_by_key(nullptr, cub_bytes, nullptr, nullptr, nullptr, nullptr, a.N, end_bit, st));
  // Scratch: dropout row keys [N] (when p > 0; first, for 8-byte alignment), then sorted ids, token order in,
  // token order out [N] each, then CUB's temporary storage.
  const bool dropout = a.drop.p > 0.0f;
  const size_t key_bytes = dropout ? size_t(a.N) * sizeof(uint64_t) : 0;
  const size_t ints = size_t(a.N) * 3;
  char* scratch = nullptr;
  AIAYN_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&scratch), key_bytes + ints * sizeof(int32_t) + cub_bytes, st));
  uint64_t* keys = dropout ? reinterpret_cast<uint64_t*>(scratch) : nullptr;
  int32_t* sorted_ids = reinterpret_cast<int32_t*>(scratch + key_bytes);
  int32_t* order_in = sorted_ids + a.N;
  int32_t* order = order_in + a.N;
  void* cub_tmp = scratch + key_bytes + ints * sizeof(int32_t);
  if (dropout)
    cuda_detail::launch("row_key_kernel", row_key_kernel, cuda_detail::grid_for(a.N, 256, 1024), 256, 0, st, a.drop, a.N, keys);
  cuda_detail::launch("iota_kernel", iota_kernel, cuda_detail::grid_for(a.N, 256, 1024), 256, 0, st, order_in, a.N);
  AIAYN_CUDA_CHECK(stable_sort_pairs_by_key(cub_tmp, cub_bytes, a.ids, sorted_ids, order_in, order, a.N, end_bit, st));
  cuda_detail::launch("embed_backward_kernel", embed_backward_kernel<cuda_detail::device_t<T>>, a.N, kThreads, 0, st,
                      sorted_ids, order, as_device(a.dout), a.dtable, a.N, a.D, a.V, a.scale,
                      static_cast<const uint64_t*>(keys), a.drop.p);
  AIAYN_CUDA_CHECK(cudaFreeAsync(scratch, st));
}

}  // namespace

namespace cuda {
void embed_forward(const EmbedForward<float>& a, Stream s) { embed_forward_impl(a, s); }
void embed_backward(const EmbedBackward<float>& a, Stream s) { embed_backward_impl(a, s); }
void embed_forward(const EmbedForward<bf16, float>& a, Stream s) { embed_forward_impl(a, s); }
void embed_backward(const EmbedBackward<bf16, float>& a, Stream s) { embed_backward_impl(a, s); }
}  // namespace cuda
}  // namespace aiayn::kernels
