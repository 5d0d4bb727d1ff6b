// Row-major GEMM through cuBLASLt, and the epilogue helpers (relu_backward, bias_grad, add).
//
//   C[m, n] = act(alpha * op(A) @ op(B) + beta * C + bias[n])          CUBLAS_COMPUTE_32F (no TF32), float scale
//
// Types (A and B share one type; C and bias share one): fp32 A, B, C; bf16 A, B, C, bias (activations); bf16 A, B
// with fp32 C and bias (weight gradients accumulated with beta = 1). cuBLASLt lists all three for
// CUBLAS_COMPUTE_32F; the bias must have the output's type (CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE is set to it).
//
// Row-major is handled by swapping operands: a row-major X with leading dimension ld is the column-major X^T
// with the same ld, so cuBLASLt computes the column-major C^T [n, m] = op(B)^T @ op(A)^T. The bias then runs
// along the rows of the column-major result, which is what CUBLASLT_EPILOGUE_BIAS broadcasts.
// Bias and ReLU go through the epilogue when beta == 0 and the bias pointer is 16-byte aligned; otherwise a
// small kernel applies them after the product (beta != 0 would otherwise need the epilogue to see C).
// One cuBLASLt handle per device and one 32 MiB workspace per (device, stream), created on first use and
// kept for the life of the process; the chosen algorithm is cached per problem description.
// bias_grad reduces columns in two fixed-order passes (row chunks, then the chunk sums): deterministic; float
// sums whatever dy's storage. relu_backward and add are element-wise (bf16: float compare / add, one rounding).
#include <cublasLt.h>

#include <array>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "common.cuh"
#include "kernels/ops/gemm.hpp"

#define AIAYN_CUBLAS_CHECK(expr)                                                                              \
  do {                                                                                                        \
    const cublasStatus_t aiayn_cublas_st_ = (expr);                                                           \
    if (aiayn_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                                            \
      throw ::aiayn::Error(std::string("cuBLASLt error in ") + #expr + ": " +                                 \
                               cublasLtGetStatusName(aiayn_cublas_st_) + " (" +                               \
                               cublasLtGetStatusString(aiayn_cublas_st_) + ")",                               \
                           __FILE__, __LINE__);                                                               \
  } while (0)

namespace aiayn::kernels {
namespace {

using cuda_detail::as_cuda;
using cuda_detail::as_device;
using cuda_detail::device_t;
using cuda_detail::from_f32;
using cuda_detail::grid_for;
using cuda_detail::to_f32;

template <class T> constexpr cudaDataType_t cuda_data_type();
template <> constexpr cudaDataType_t cuda_data_type<float>() { return CUDA_R_32F; }
template <> constexpr cudaDataType_t cuda_data_type<bf16>() { return CUDA_R_16BF; }

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

struct LtContext {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
};

// Key: one entry per (device, stream); never destroyed (handles live as long as the process).
LtContext lt_context(cudaStream_t st) {
  static std::mutex mu;
  static std::map<std::pair<int, cudaStream_t>, LtContext> contexts;
  static std::map<int, cublasLtHandle_t> handles;
  int dev = 0;
  AIAYN_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  auto it = contexts.find({dev, st});
  if (it != contexts.end()) return it->second;
  cublasLtHandle_t& h = handles[dev];
  if (!h) AIAYN_CUBLAS_CHECK(cublasLtCreate(&h));
  LtContext ctx;
  ctx.handle = h;
  AIAYN_CUDA_CHECK(cudaMalloc(&ctx.workspace, kWorkspaceBytes));
  contexts[{dev, st}] = ctx;
  return ctx;
}

// The largest power of two (256 at most, the element size at least) dividing the address and the row pitch.
int alignment_bytes(const void* p, long ld_elems, int elem_bytes) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  int align = 256;
  while (align > elem_bytes && ((addr % align) != 0 || ((ld_elems * elem_bytes) % align) != 0)) align >>= 1;
  return align;
}

// RAII for the cuBLASLt descriptors of one call.
struct MatmulDescs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~MatmulDescs() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

// c[r, col] = act((beta == 0 ? 0 : beta * c[r, col]) + bias[col]) over an [m, n] matrix with row stride ldc.
template <class TC>
__global__ void bias_act_kernel(TC* __restrict__ c, int m, int n, int ldc, float beta, const TC* __restrict__ bias,
                                bool relu) {
  const size_t total = size_t(m) * n;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
    const int r = static_cast<int>(i / n), col = static_cast<int>(i % n);
    TC& x = c[size_t(r) * ldc + col];
    float v = beta == 0.0f ? 0.0f : beta * to_f32(x);
    if (bias) v += to_f32(bias[col]);
    x = from_f32<TC>(relu ? fmaxf(v, 0.0f) : v);
  }
}

template <class TC>
void launch_bias_act(TC* c, int m, int n, int ldc, float beta, const TC* bias, bool relu, cudaStream_t st) {
  cuda_detail::launch("bias_act_kernel", bias_act_kernel<TC>, grid_for(size_t(m) * n, 256), 256, 0, st, c, m, n, ldc, beta, bias, relu);
}

// dx may alias dy.
template <class T>
__global__ void relu_backward_kernel(const T* __restrict__ y, const T* dy, T* dx, size_t n) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    dx[i] = to_f32(y[i]) > 0.0f ? dy[i] : from_f32<T>(0.0f);
}

// y may alias a or b.
template <class T>
__global__ void add_kernel(const T* a, const T* b, T* y, size_t n) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    y[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}

// bias_grad pass 1: block (column tile of 32, row chunk) -> partial[chunk, col], rows summed in order by
// each of 8 row lanes, then the 8 lanes in order.
constexpr int kColTile = 32, kRowLanes = 8, kRowChunk = 256;
template <class T>
__global__ void column_sum_partial_kernel(const T* __restrict__ dy, float* __restrict__ partial, int rows,
                                          int cols) {
  __shared__ float sums[kRowLanes][kColTile];
  const int col = blockIdx.x * kColTile + threadIdx.x;
  const int r0 = blockIdx.y * kRowChunk, r1 = min(rows, r0 + kRowChunk);
  float acc = 0.0f;
  if (col < cols)
    for (int r = r0 + threadIdx.y; r < r1; r += kRowLanes) acc += to_f32(dy[size_t(r) * cols + col]);
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float total = 0.0f;
    for (int l = 0; l < kRowLanes; ++l) total += sums[l][threadIdx.x];
    partial[size_t(blockIdx.y) * cols + col] = total;
  }
}

// bias_grad pass 2: db[col] += sum over chunks in order.
__global__ void column_sum_final_kernel(const float* __restrict__ partial, float* __restrict__ db, int chunks,
                                        int cols) {
  const int col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  float total = 0.0f;
  for (int ch = 0; ch < chunks; ++ch) total += partial[size_t(ch) * cols + col];
  db[col] += total;
}

// T: the host type of A and B, TC: of C and bias (float or bf16).
template <class T, class TC>
void gemm_impl(const GemmArgs<T, TC>& g, Stream s) {
  AIAYN_CHECK(g.m >= 0 && g.n >= 0 && g.k >= 0, "gemm: negative dimension");
  if (g.m == 0 || g.n == 0) return;
  const cudaStream_t st = as_cuda(s);
  if (g.k == 0) {  // empty product: C = act(beta * C + bias)
    launch_bias_act(as_device(g.c), g.m, g.n, g.ldc, g.beta, as_device(g.bias), g.relu, st);
    return;
  }
  const bool epilogue_ok = g.beta == 0.0f && (!g.bias || reinterpret_cast<uintptr_t>(g.bias) % 16 == 0);
  bool use_epilogue = epilogue_ok && (g.bias || g.relu);
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  if (use_epilogue)
    epilogue = g.bias ? (g.relu ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS) : CUBLASLT_EPILOGUE_RELU;
  const cublasLtEpilogue_t wanted_epilogue = epilogue;
  constexpr cudaDataType_t ab_type = cuda_data_type<T>(), c_type = cuda_data_type<TC>();
  constexpr int ab_bytes = sizeof(T), c_bytes = sizeof(TC);

  const LtContext ctx = lt_context(st);
  MatmulDescs d;
  AIAYN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // Column-major view: first operand comes from B, second from A (see the file comment).
  const cublasOperation_t op_first = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  AIAYN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
  AIAYN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
  AIAYN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
  if (use_epilogue && g.bias) {
    const void* bias = g.bias;
    AIAYN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    const int32_t bias_type = c_type;  // the attribute is an int32_t holding a cudaDataType
    AIAYN_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
  }
  // Layouts describe the stored (pre-op) matrices in column-major terms.
  AIAYN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.a, ab_type, g.trans_b ? g.k : g.n, g.trans_b ? g.n : g.k, g.ldb));
  AIAYN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.b, ab_type, g.trans_a ? g.m : g.k, g.trans_a ? g.k : g.m, g.lda));
  AIAYN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.c, c_type, g.n, g.m, g.ldc));

  // Algorithm cache: the heuristic depends only on the problem description (types included) and alignments.
  const int align_a = alignment_bytes(g.b, g.ldb, ab_bytes), align_b = alignment_bytes(g.a, g.lda, ab_bytes),
            align_c = alignment_bytes(g.c, g.ldc, c_bytes);
  int dev = 0;
  AIAYN_CUDA_CHECK(cudaGetDevice(&dev));
  // The heuristic also depends on the bias pointer's alignment (cuBLASLt docs, CUBLASLT_MATMUL_DESC_BIAS_POINTER).
  const long align_bias = use_epilogue && g.bias ? alignment_bytes(g.bias, 0, c_bytes) : 0;
  const std::array<long, 15> key = {dev, g.trans_a, g.trans_b, g.m, g.n, g.k, g.lda, g.ldb, g.ldc,
                                    long(epilogue), align_a + 1000L * align_b, align_c, g.beta != 0.0f,
                                    long(ab_type) * 1000L + long(c_type), align_bias};
  // Each entry: the algorithm, and whether it runs the epilogue (false: the heuristic had none for it).
  static std::mutex mu;
  static std::map<std::array<long, 15>, std::pair<cublasLtMatmulAlgo_t, bool>> algos;
  cublasLtMatmulAlgo_t algo{};
  bool cached = false;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = algos.find(key);
    if (it != algos.end()) {
      algo = it->second.first;
      use_epilogue = it->second.second;
      cached = true;
    }
  }
  auto drop_epilogue = [&] {
    use_epilogue = false;
    epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    AIAYN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
  };
  if (cached && !use_epilogue && wanted_epilogue != CUBLASLT_EPILOGUE_DEFAULT) drop_epilogue();
  if (!cached) {
    AIAYN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&d.pref));
    const size_t ws = kWorkspaceBytes;
    AIAYN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                            sizeof(ws)));
    const uint32_t aa = align_a, ab = align_b, ac = align_c;
    AIAYN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof(aa)));
    AIAYN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof(ab)));
    AIAYN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof(ac)));
    AIAYN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof(ac)));
    // No algorithm shows as CUBLAS_STATUS_NOT_SUPPORTED or as no result; without the epilogue (bias and ReLU
    // then run in bias_act_kernel) the heuristic is asked once more.
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(ctx.handle, d.op, d.a, d.b, d.c, d.c, d.pref, 1, &result, &found);
    if ((status == CUBLAS_STATUS_NOT_SUPPORTED || (status == CUBLAS_STATUS_SUCCESS && found == 0)) && use_epilogue) {
      drop_epilogue();
      found = 0;
      status = cublasLtMatmulAlgoGetHeuristic(ctx.handle, d.op, d.a, d.b, d.c, d.c, d.pref, 1, &result, &found);
    }
    AIAYN_CHECK(status == CUBLAS_STATUS_SUCCESS && found > 0,
                "gemm: cuBLASLt found no algorithm for m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) +
                    " k=" + std::to_string(g.k) + " (A/B type " + std::to_string(int(ab_type)) + ", C type " +
                    std::to_string(int(c_type)) + ", alignments " + std::to_string(align_a) + "/" +
                    std::to_string(align_b) + "/" + std::to_string(align_c) + " bytes): " +
                    cublasLtGetStatusString(status));
    algo = result.algo;
    std::lock_guard<std::mutex> lock(mu);
    algos[key] = {algo, use_epilogue};
  }
  const float alpha = g.alpha, beta = g.beta;
  AIAYN_CUBLAS_CHECK(cublasLtMatmul(ctx.handle, d.op, &alpha, g.b, d.a, g.a, d.b, &beta, g.c, d.c, g.c, d.c, &algo,
                                    ctx.workspace, kWorkspaceBytes, st));
  if ((g.bias || g.relu) && !use_epilogue)
    launch_bias_act(as_device(g.c), g.m, g.n, g.ldc, 1.0f, as_device(g.bias), g.relu, st);
}

template <class T>
void relu_backward_impl(const ReluBackward<T>& a, Stream s) {
  if (a.n == 0) return;
  cuda_detail::launch("relu_backward_kernel", relu_backward_kernel<device_t<T>>, grid_for(a.n, 256), 256, 0, as_cuda(s), as_device(a.y), as_device(a.dy), as_device(a.dx), a.n);
}

template <class T>
void bias_grad_impl(const BiasGrad<T, float>& a, Stream s) {
  AIAYN_CHECK(a.rows >= 0 && a.cols >= 0, "bias_grad: bad shape");
  if (a.rows == 0 || a.cols == 0) return;
  const cudaStream_t st = as_cuda(s);
  const int chunks = (a.rows + kRowChunk - 1) / kRowChunk;
  AIAYN_CHECK(chunks <= 65535, "bias_grad: too many rows (" + std::to_string(a.rows) + ")");
  float* partial = nullptr;
  AIAYN_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partial), size_t(chunks) * a.cols * sizeof(float), st));
  const dim3 grid((a.cols + kColTile - 1) / kColTile, chunks);
  cuda_detail::launch("column_sum_partial_kernel", column_sum_partial_kernel<device_t<T>>, grid, dim3(kColTile, kRowLanes), 0, st, as_device(a.dy), partial, a.rows, a.cols);
  cuda_detail::launch("column_sum_final_kernel", column_sum_final_kernel, (a.cols + 255) / 256, 256, 0, st, partial, a.db, chunks, a.cols);
  AIAYN_CUDA_CHECK(cudaFreeAsync(partial, st));
}

template <class T>
void add_impl(const AddArgs<T>& a, Stream s) {
  if (a.n == 0) return;
  cuda_detail::launch("add_kernel", add_kernel<device_t<T>>, grid_for(a.n, 256), 256, 0, as_cuda(s), as_device(a.a), as_device(a.b), as_device(a.y), a.n);
}

}  // namespace

namespace cuda {
void gemm(const GemmArgs<float>& g, Stream s) { gemm_impl(g, s); }
void gemm(const GemmArgs<bf16>& g, Stream s) { gemm_impl(g, s); }
void gemm(const GemmArgs<bf16, float>& g, Stream s) { gemm_impl(g, s); }
void relu_backward(const ReluBackward<float>& a, Stream s) { relu_backward_impl(a, s); }
void relu_backward(const ReluBackward<bf16>& a, Stream s) { relu_backward_impl(a, s); }
void bias_grad(const BiasGrad<float>& a, Stream s) { bias_grad_impl(a, s); }
void bias_grad(const BiasGrad<bf16, float>& a, Stream s) { bias_grad_impl(a, s); }
void add(const AddArgs<float>& a, Stream s) { add_impl(a, s); }
void add(const AddArgs<bf16>& a, Stream s) { add_impl(a, s); }
}  // namespace cuda
}  // namespace aiayn::kernels
