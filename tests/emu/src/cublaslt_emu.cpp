// A fake cuBLASLt for emulated test binaries: the calls kernels/cuda/gemm.cu makes, with the signatures of
// cublasLt.h and the semantics NVIDIA documents for them, computed on the host. Anything outside the subset below
// returns a non-success status (and says so on stderr) instead of being guessed.
//
//   D = epilogue(alpha * op(A) op(B) + beta * C)        column-major, one matrix (batch count 1)
//   epilogue: DEFAULT | BIAS (+ bias[i] on row i of D, the vector has rows(D) entries) | RELU | RELU_BIAS (bias,
//   then max(x, 0)); op: N or T; compute CUBLAS_COMPUTE_32F with scale type CUDA_R_32F (alpha, beta host floats);
//   A, B of one type and C, D of one type: 32F/32F, 16BF/16BF or 16BF/32F; the bias of D's type.
// C is not read when beta == 0. C and D may be the same matrix only with identical layouts (in place); otherwise
// they must have the same type and shape. Products are accumulated in double and rounded once to D's type, so
// results are at least as accurate as the GPU's fp32 accumulation (not bit-identical to it).
// The heuristic returns one algorithm that records the problem it was chosen for and the pointer alignments the
// preference promised (and the bias pointer's, on which the heuristic may depend); cublasLtMatmul rejects an
// algorithm used for another problem or with less aligned pointers. Every matrix must lie inside one device
// allocation (rows, columns and leading dimension checked against it).
#include <cublasLt.h>
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <set>
#include <string>

#include "emu_internal.hpp"

struct cublasLtContext {
  uint32_t magic;
};

namespace aiayn::emu {
namespace {

constexpr uint32_t kHandleMagic = 0x4c544844, kDescMagic = 0x4c544453, kLayoutMagic = 0x4c544c59,
                   kPrefMagic = 0x4c545046, kAlgoMagic = 0x4c54414c;
constexpr uint64_t kWorkspaceWanted = uint64_t(4) << 20;  // what the heuristic asks for (capped by the preference)

struct Desc {
  uint32_t magic;
  int32_t compute, scale, pointer_mode, transa, transb;
  uint32_t epilogue;
  const void* bias;
  int32_t bias_type;
};
struct Layout {
  uint32_t magic;
  int32_t type, order, batch;
  uint64_t rows, cols;
  int64_t ld, batch_stride;
};
struct Pref {
  uint32_t magic, search_mode;
  uint64_t max_workspace;
  uint32_t align_a, align_b, align_c, align_d;
};
struct Algo {
  uint32_t magic;
  int32_t ab_type, cd_type, transa, transb;
  uint32_t epilogue;
  uint32_t align_a, align_b, align_c, align_d, align_bias;
  uint64_t workspace;
};
static_assert(sizeof(Desc) <= sizeof(cublasLtMatmulDescOpaque_t), "descriptor storage");
static_assert(sizeof(Layout) <= sizeof(cublasLtMatrixLayoutOpaque_t), "layout storage");
static_assert(sizeof(Pref) <= sizeof(cublasLtMatmulPreferenceOpaque_t), "preference storage");
static_assert(sizeof(Algo) <= sizeof(cublasLtMatmulAlgo_t), "algorithm storage");

std::mutex g_mu;
std::set<const void*> g_handles;

thread_local cublasStatus_t t_detail_code = CUBLAS_STATUS_SUCCESS;
thread_local std::string t_detail, t_message;

cublasStatus_t fail(cublasStatus_t code, const std::string& detail) {
  report("cuBLASLt: " + detail);
  t_detail_code = code;
  t_detail = detail;
  return code;
}
cublasStatus_t outside(const std::string& what) { return fail(CUBLAS_STATUS_NOT_SUPPORTED, what + " is outside the emulated subset"); }

Desc* desc_of(cublasLtMatmulDesc_t d) {
  auto* p = d ? reinterpret_cast<Desc*>(d->data) : nullptr;
  return p && p->magic == kDescMagic ? p : nullptr;
}
Layout* layout_of(cublasLtMatrixLayout_t l) {
  auto* p = l ? reinterpret_cast<Layout*>(l->data) : nullptr;
  return p && p->magic == kLayoutMagic ? p : nullptr;
}
Pref* pref_of(cublasLtMatmulPreference_t q) {
  auto* p = q ? reinterpret_cast<Pref*>(q->data) : nullptr;
  return p && p->magic == kPrefMagic ? p : nullptr;
}
bool valid_handle(cublasLtHandle_t h) {
  std::lock_guard<std::mutex> lock(g_mu);
  return h && g_handles.count(h) && h->magic == kHandleMagic;
}

size_t type_size(int32_t t) { return t == CUDA_R_32F ? 4 : t == CUDA_R_16BF ? 2 : 0; }
const char* type_name(int32_t t) { return t == CUDA_R_32F ? "CUDA_R_32F" : t == CUDA_R_16BF ? "CUDA_R_16BF" : "another type"; }

uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && a % align) align >>= 1;
  return align;
}

bool has_bias(uint32_t e) { return e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_RELU_BIAS; }
bool has_relu(uint32_t e) { return e == CUBLASLT_EPILOGUE_RELU || e == CUBLASLT_EPILOGUE_RELU_BIAS; }

template <class T>
cublasStatus_t set_value(T& field, const void* buf, size_t size, const char* attr) {
  if (!buf || size != sizeof(T))
    return fail(CUBLAS_STATUS_INVALID_VALUE, std::string(attr) + ": value of " + std::to_string(size) + " bytes, expected " +
                                                 std::to_string(sizeof(T)));
  std::memcpy(&field, buf, sizeof(T));
  return CUBLAS_STATUS_SUCCESS;
}

// The problem the descriptors describe: m x n output, inner dimension k. Checks shapes and types.
struct Problem {
  uint64_t m = 0, n = 0, k = 0;
  int32_t ab_type = 0, cd_type = 0;
};
cublasStatus_t problem_of(const Desc& d, const Layout& a, const Layout& b, const Layout& c, const Layout& dl,
                          Problem* p) {
  for (const Layout* l : {&a, &b, &c, &dl}) {
    if (l->order != CUBLASLT_ORDER_COL) return outside("a matrix order other than CUBLASLT_ORDER_COL");
    if (l->batch != 1) return outside("a batch count other than 1");
    if (l->ld < 1 || uint64_t(l->ld) < l->rows)
      return fail(CUBLAS_STATUS_INVALID_VALUE, "leading dimension " + std::to_string(l->ld) + " < rows " +
                                                   std::to_string(l->rows) + " (column-major)");
  }
  p->m = dl.rows, p->n = dl.cols;
  p->k = d.transa == CUBLAS_OP_N ? a.cols : a.rows;
  const uint64_t am = d.transa == CUBLAS_OP_N ? a.rows : a.cols;
  const uint64_t bk = d.transb == CUBLAS_OP_N ? b.rows : b.cols, bn = d.transb == CUBLAS_OP_N ? b.cols : b.rows;
  if (am != p->m || bn != p->n || bk != p->k)
    return fail(CUBLAS_STATUS_INVALID_VALUE,
                "shapes do not chain: op(A) is " + std::to_string(am) + "x" + std::to_string(p->k) + ", op(B) " +
                    std::to_string(bk) + "x" + std::to_string(bn) + ", D " + std::to_string(p->m) + "x" + std::to_string(p->n));
  if (c.rows != dl.rows || c.cols != dl.cols || c.type != dl.type)
    return fail(CUBLAS_STATUS_INVALID_VALUE, "C and D differ in type or shape");
  if (a.type != b.type) return outside("A and B of different types");
  p->ab_type = a.type, p->cd_type = dl.type;
  const bool ok = (a.type == CUDA_R_32F && dl.type == CUDA_R_32F) || (a.type == CUDA_R_16BF && dl.type == CUDA_R_16BF) ||
                  (a.type == CUDA_R_16BF && dl.type == CUDA_R_32F);
  if (!ok) return outside(std::string("A/B ") + type_name(a.type) + " with C/D " + type_name(dl.type));
  if (has_bias(d.epilogue) && d.bias_type != -1 && d.bias_type != dl.type)
    return outside(std::string("a bias of type ") + type_name(d.bias_type) + " with D of type " + type_name(dl.type));
  return CUBLAS_STATUS_SUCCESS;
}

double load(const void* p, int32_t type, size_t i) {
  if (type == CUDA_R_32F) return static_cast<const float*>(p)[i];
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}
void store(void* p, int32_t type, size_t i, double v) {
  if (type == CUDA_R_32F) static_cast<float*>(p)[i] = static_cast<float>(v);
  else static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16(static_cast<float>(v));
}

// [p, p + extent of the matrix) inside one allocation, and p aligned as the algorithm assumed.
cublasStatus_t check_matrix(const char* name, const void* p, const Layout& l, uint32_t promised) {
  if (!p) return fail(CUBLAS_STATUS_INVALID_VALUE, std::string("matrix ") + name + " is null");
  const size_t bytes = ((l.cols - 1) * size_t(l.ld) + l.rows) * type_size(l.type);
  std::string why;
  if (!device_range_ok(p, bytes, &why))
    return fail(CUBLAS_STATUS_INVALID_VALUE, std::string("matrix ") + name + " (" + std::to_string(l.rows) + "x" +
                                                 std::to_string(l.cols) + ", ld " + std::to_string(l.ld) + "): " + why);
  if (alignment_of(p) < promised)
    return fail(CUBLAS_STATUS_INVALID_VALUE, std::string("matrix ") + name + " is " + std::to_string(alignment_of(p)) +
                                                 "-byte aligned, but the algorithm was chosen for the " +
                                                 std::to_string(promised) + "-byte alignment the preference promised");
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace
}  // namespace aiayn::emu

using namespace aiayn::emu;

size_t cublasLtGetVersion(void) { return CUBLAS_VER_MAJOR * 10000 + CUBLAS_VER_MINOR * 100 + CUBLAS_VER_PATCH; }

cublasStatus_t cublasLtCreate(cublasLtHandle_t* lightHandle) {
  if (!lightHandle) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtCreate: null pointer");
  auto* h = new cublasLtContext{kHandleMagic};
  std::lock_guard<std::mutex> lock(g_mu);
  g_handles.insert(h);
  *lightHandle = h;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t lightHandle) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!lightHandle || !g_handles.erase(lightHandle))
    return fail(CUBLAS_STATUS_NOT_INITIALIZED, "cublasLtDestroy: not a live handle");
  lightHandle->magic = 0;
  delete lightHandle;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasLtGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

const char* cublasLtGetStatusString(cublasStatus_t status) {
  const char* base = "unknown status";
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: base = "success"; break;
    case CUBLAS_STATUS_NOT_INITIALIZED: base = "the library or handle was not initialized"; break;
    case CUBLAS_STATUS_ALLOC_FAILED: base = "resource allocation failed"; break;
    case CUBLAS_STATUS_INVALID_VALUE: base = "an invalid value was passed"; break;
    case CUBLAS_STATUS_ARCH_MISMATCH: base = "the device does not support the operation"; break;
    case CUBLAS_STATUS_MAPPING_ERROR: base = "access to GPU memory failed"; break;
    case CUBLAS_STATUS_EXECUTION_FAILED: base = "the GPU program failed to execute"; break;
    case CUBLAS_STATUS_INTERNAL_ERROR: base = "an internal operation failed"; break;
    case CUBLAS_STATUS_NOT_SUPPORTED: base = "the requested functionality is not supported"; break;
    case CUBLAS_STATUS_LICENSE_ERROR: base = "license error"; break;
  }
  if (status != CUBLAS_STATUS_SUCCESS && status == t_detail_code && !t_detail.empty()) {
    t_message = std::string(base) + " [aiayn emu: " + t_detail + "]";
    return t_message.c_str();
  }
  return base;
}

// ---- matmul descriptor ----
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* matmulDesc, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType) {
  if (!matmulDesc) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulDescCreate: null pointer");
  if (computeType != CUBLAS_COMPUTE_32F) return outside("compute type " + std::to_string(int(computeType)) + " (only CUBLAS_COMPUTE_32F)");
  if (scaleType != CUDA_R_32F) return outside("scale type " + std::to_string(int(scaleType)) + " (only CUDA_R_32F)");
  auto* d = new cublasLtMatmulDescOpaque_t{};
  new (d->data) Desc{kDescMagic, int32_t(computeType), int32_t(scaleType), CUBLASLT_POINTER_MODE_HOST, CUBLAS_OP_N,
                     CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT, nullptr, -1};
  *matmulDesc = d;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
  Desc* d = desc_of(matmulDesc);
  if (!d) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulDescDestroy: not a live descriptor");
  d->magic = 0;
  delete matmulDesc;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t sizeInBytes) {
  Desc* d = desc_of(matmulDesc);
  if (!d) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulDescSetAttribute: not a live descriptor");
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB: {
      int32_t op = 0;
      if ((st = set_value(op, buf, sizeInBytes, "TRANSA/TRANSB"))) return st;
      if (op != CUBLAS_OP_N && op != CUBLAS_OP_T) return outside("a transpose other than CUBLAS_OP_N/CUBLAS_OP_T");
      (attr == CUBLASLT_MATMUL_DESC_TRANSA ? d->transa : d->transb) = op;
      return st;
    }
    case CUBLASLT_MATMUL_DESC_EPILOGUE: {
      uint32_t e = 0;
      if ((st = set_value(e, buf, sizeInBytes, "EPILOGUE"))) return st;
      if (e != CUBLASLT_EPILOGUE_DEFAULT && e != CUBLASLT_EPILOGUE_BIAS && e != CUBLASLT_EPILOGUE_RELU &&
          e != CUBLASLT_EPILOGUE_RELU_BIAS)
        return outside("epilogue " + std::to_string(e) + " (only DEFAULT, BIAS, RELU, RELU_BIAS)");
      d->epilogue = e;
      return st;
    }
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return set_value(d->bias, buf, sizeInBytes, "BIAS_POINTER");
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: {
      int32_t t = 0;
      if ((st = set_value(t, buf, sizeInBytes, "BIAS_DATA_TYPE"))) return st;
      if (t != -1 && t != CUDA_R_32F && t != CUDA_R_16BF) return outside("bias data type " + std::to_string(t));
      d->bias_type = t;
      return st;
    }
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: {
      int32_t m = 0;
      if ((st = set_value(m, buf, sizeInBytes, "POINTER_MODE"))) return st;
      if (m != CUBLASLT_POINTER_MODE_HOST) return outside("a pointer mode other than CUBLASLT_POINTER_MODE_HOST");
      return st;
    }
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: {
      int32_t t = 0;
      if ((st = set_value(t, buf, sizeInBytes, "SCALE_TYPE"))) return st;
      if (t != CUDA_R_32F) return outside("a scale type other than CUDA_R_32F");
      return st;
    }
    default: break;
  }
  return outside("matmul descriptor attribute " + std::to_string(int(attr)));
}

// ---- matrix layouts ----
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* matLayout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  if (!matLayout) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatrixLayoutCreate: null pointer");
  if (type != CUDA_R_32F && type != CUDA_R_16BF) return outside("matrix type " + std::to_string(int(type)));
  auto* l = new cublasLtMatrixLayoutOpaque_t{};
  new (l->data) Layout{kLayoutMagic, int32_t(type), CUBLASLT_ORDER_COL, 1, rows, cols, ld, 0};
  *matLayout = l;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
  Layout* l = layout_of(matLayout);
  if (!l) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatrixLayoutDestroy: not a live layout");
  l->magic = 0;
  delete matLayout;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t matLayout, cublasLtMatrixLayoutAttribute_t attr,
                                                const void* buf, size_t sizeInBytes) {
  Layout* l = layout_of(matLayout);
  if (!l) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatrixLayoutSetAttribute: not a live layout");
  switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_ORDER: return set_value(l->order, buf, sizeInBytes, "ORDER");
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: return set_value(l->batch, buf, sizeInBytes, "BATCH_COUNT");
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: return set_value(l->batch_stride, buf, sizeInBytes, "STRIDED_BATCH_OFFSET");
    default: break;
  }
  return outside("matrix layout attribute " + std::to_string(int(attr)));
}

// ---- preference and heuristic ----
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  if (!pref) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulPreferenceCreate: null pointer");
  auto* p = new cublasLtMatmulPreferenceOpaque_t{};
  new (p->data) Pref{kPrefMagic, 0, 0, 256, 256, 256, 256};  // documented defaults: no workspace, 256-byte alignment
  *pref = p;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  Pref* p = pref_of(pref);
  if (!p) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulPreferenceDestroy: not a live preference");
  p->magic = 0;
  delete pref;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                    size_t sizeInBytes) {
  Pref* p = pref_of(pref);
  if (!p) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulPreferenceSetAttribute: not a live preference");
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE: {
      uint32_t m = 0;
      if (const cublasStatus_t st = set_value(m, buf, sizeInBytes, "SEARCH_MODE")) return st;
      if (m != CUBLASLT_SEARCH_BEST_FIT) return outside("a search mode other than CUBLASLT_SEARCH_BEST_FIT");
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: return set_value(p->max_workspace, buf, sizeInBytes, "MAX_WORKSPACE_BYTES");
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: return set_value(p->align_a, buf, sizeInBytes, "MIN_ALIGNMENT_A_BYTES");
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: return set_value(p->align_b, buf, sizeInBytes, "MIN_ALIGNMENT_B_BYTES");
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: return set_value(p->align_c, buf, sizeInBytes, "MIN_ALIGNMENT_C_BYTES");
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: return set_value(p->align_d, buf, sizeInBytes, "MIN_ALIGNMENT_D_BYTES");
    default: break;
  }
  return outside("preference attribute " + std::to_string(int(attr)));
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                              cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                              int* returnAlgoCount) {
  if (!valid_handle(lightHandle)) return fail(CUBLAS_STATUS_NOT_INITIALIZED, "cublasLtMatmulAlgoGetHeuristic: not a live handle");
  const Desc* d = desc_of(operationDesc);
  const Layout *a = layout_of(Adesc), *b = layout_of(Bdesc), *c = layout_of(Cdesc), *dl = layout_of(Ddesc);
  const Pref* p = pref_of(preference);
  if (!d || !a || !b || !c || !dl || !p || !heuristicResultsArray || !returnAlgoCount)
    return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulAlgoGetHeuristic: a descriptor or output is missing");
  if (requestedAlgoCount <= 0) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulAlgoGetHeuristic: requestedAlgoCount <= 0");
  Problem prob;
  if (const cublasStatus_t st = problem_of(*d, *a, *b, *c, *dl, &prob)) return st;
  // AIAYN_EMU_LT_NO_EPILOGUE=1: no algorithm for any epilogue but DEFAULT, as the real heuristic may answer for
  // some types and alignments (CUBLAS_STATUS_NOT_SUPPORTED, no result).
  const char* no_epilogue = std::getenv("AIAYN_EMU_LT_NO_EPILOGUE");
  if (no_epilogue && std::string(no_epilogue) == "1" && d->epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    *returnAlgoCount = 0;
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  cublasLtMatmulHeuristicResult_t& r = heuristicResultsArray[0];
  std::memset(&r, 0, sizeof r);
  const uint64_t ws = p->max_workspace < kWorkspaceWanted ? p->max_workspace : kWorkspaceWanted;
  new (r.algo.data) Algo{kAlgoMagic, prob.ab_type, prob.cd_type, d->transa, d->transb, d->epilogue,
                         p->align_a, p->align_b, p->align_c, p->align_d,
                         has_bias(d->epilogue) ? alignment_of(d->bias) : 0u, ws};
  r.workspaceSize = ws;
  r.state = CUBLAS_STATUS_SUCCESS;
  r.wavesCount = 1.0f;
  *returnAlgoCount = 1;
  return CUBLAS_STATUS_SUCCESS;
}

// ---- the product ----
cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc, const void* alpha,
                              const void* A, cublasLtMatrixLayout_t Adesc, const void* B, cublasLtMatrixLayout_t Bdesc,
                              const void* beta, const void* C, cublasLtMatrixLayout_t Cdesc, void* D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t* algo, void* workspace,
                              size_t workspaceSizeInBytes, cudaStream_t stream) {
  if (!valid_handle(lightHandle)) return fail(CUBLAS_STATUS_NOT_INITIALIZED, "cublasLtMatmul: not a live handle");
  const Desc* d = desc_of(computeDesc);
  const Layout *a = layout_of(Adesc), *b = layout_of(Bdesc), *dl = layout_of(Ddesc);
  const Layout* c = Cdesc ? layout_of(Cdesc) : dl;  // documented: an omitted Cdesc means Ddesc
  if (!d || !a || !b || !c || !dl) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmul: a descriptor is missing or dead");
  if (!alpha || !beta) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmul: alpha or beta is null");
  if (!algo) return outside("cublasLtMatmul without an algorithm (implicit heuristic)");
  const auto* al = reinterpret_cast<const Algo*>(algo->data);
  if (al->magic != kAlgoMagic)
    return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmul: the algorithm was not filled in by cublasLtMatmulAlgoGetHeuristic");
  if (!valid_stream(stream)) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmul: the stream is not a live stream");
  stream_order(stream);
  const void* touched[5] = {A, B, C, D, workspace};
  order_operation(stream, "cublasLtMatmul", touched, 5);
  Problem prob;
  if (const cublasStatus_t st = problem_of(*d, *a, *b, *c, *dl, &prob)) return st;
  if (al->ab_type != prob.ab_type || al->cd_type != prob.cd_type || al->transa != d->transa ||
      al->transb != d->transb || al->epilogue != d->epilogue)
    return fail(CUBLAS_STATUS_INVALID_VALUE,
                "cublasLtMatmul: the algorithm was chosen for another problem (types, transposes or epilogue differ)");
  if (workspaceSizeInBytes < al->workspace)
    return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmul: workspace of " + std::to_string(workspaceSizeInBytes) +
                                                 " bytes, the algorithm needs " + std::to_string(al->workspace));
  std::string why;
  if (workspaceSizeInBytes > 0 && !device_range_ok(workspace, workspaceSizeInBytes, &why))
    return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmul: workspace: " + why);
  const float fa = *static_cast<const float*>(alpha), fb = *static_cast<const float*>(beta);
  const bool in_place = C == D;
  if (in_place && (c->type != dl->type || c->rows != dl->rows || c->cols != dl->cols || c->ld != dl->ld))
    return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmul: C == D (in place) needs identical C and D layouts");
  if (const cublasStatus_t st = check_matrix("A", A, *a, al->align_a)) return st;
  if (const cublasStatus_t st = check_matrix("B", B, *b, al->align_b)) return st;
  if (fb != 0.0f)
    if (const cublasStatus_t st = check_matrix("C", C, *c, al->align_c)) return st;
  if (const cublasStatus_t st = check_matrix("D", D, *dl, al->align_d)) return st;
  const bool bias = has_bias(d->epilogue), relu = has_relu(d->epilogue);
  const int32_t bias_type = d->bias_type == -1 ? dl->type : d->bias_type;
  if (bias) {
    if (!d->bias) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmul: a BIAS epilogue without a bias pointer");
    if (!device_range_ok(d->bias, dl->rows * type_size(bias_type), &why))
      return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmul: bias (rows(D) = " + std::to_string(dl->rows) + "): " + why);
    if (alignment_of(d->bias) < al->align_bias)
      return fail(CUBLAS_STATUS_INVALID_VALUE,
                  "cublasLtMatmul: the bias is " + std::to_string(alignment_of(d->bias)) +
                      "-byte aligned, but the algorithm was chosen (by cublasLtMatmulAlgoGetHeuristic, which depends "
                      "on the bias pointer's alignment) for a " + std::to_string(al->align_bias) + "-byte aligned one");
  }

  try {
    DeviceAccess access("cublasLtMatmul");
    const bool ta = d->transa == CUBLAS_OP_T, tb = d->transb == CUBLAS_OP_T;
    for (uint64_t j = 0; j < prob.n; ++j)
      for (uint64_t i = 0; i < prob.m; ++i) {
        double acc = 0.0;
        for (uint64_t p = 0; p < prob.k; ++p) {
          const size_t ai = ta ? p + i * size_t(a->ld) : i + p * size_t(a->ld);
          const size_t bi = tb ? j + p * size_t(b->ld) : p + j * size_t(b->ld);
          acc += load(A, a->type, ai) * load(B, b->type, bi);
        }
        double v = double(fa) * acc;
        if (fb != 0.0f) v += double(fb) * load(C, c->type, i + j * size_t(c->ld));
        if (bias) v += load(d->bias, bias_type, i);
        if (relu) v = v > 0.0 ? v : 0.0;
        store(D, dl->type, i + j * size_t(dl->ld), v);
      }
    // Scratch holds garbage after: the part the algorithm asked for, all that cuBLASLt may write (poisoning the
    // whole 32 MiB the caller offers cost more than the product, and kept all its pages mapped for mprotect).
    if (al->workspace > 0) std::memset(workspace, 0xff, al->workspace);
    access.close();
  } catch (const std::exception& e) {
    return fail(CUBLAS_STATUS_EXECUTION_FAILED, e.what());
  }
  return CUBLAS_STATUS_SUCCESS;
}
