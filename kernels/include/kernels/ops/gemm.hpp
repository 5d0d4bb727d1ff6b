#pragma once
// Matrix product with optional bias and ReLU epilogue, row-major:
//
//   C[m, n] = act(alpha * op(A)[m, k] @ op(B)[k, n] + beta * C[m, n] + bias[n])
//
// op(X) = X^T when trans_X. Leading dimensions are row strides in elements. act is identity or ReLU.
// Linear layers store weights [out, in] (as PyTorch does), so y = x @ W^T + b is trans_b = true.
// The CPU backend calls BLAS (kernels/cpu/blas.hpp); the CUDA backend cuBLASLt. Mixed precision (CUDA):
// A and B bf16 with float32 accumulation, C (and bias) bf16 for activations or float32 for weight gradients
// (GemmArgs<bf16, float>, beta = 1 accumulating into the float32 gradient buffer).
//
// Helpers for the backward pass of an epilogue:
//   relu_backward:  dx = dy * (y > 0)            (dx may equal dy)
//   bias_grad:      db[c] += sum_r dy[r, c]       (sum in float32 or wider; db float32 when dy is bf16)
//   add:            y = a + b                     (y may equal a or b)
#include <cstddef>

#include "kernels/ops/dispatch.hpp"

namespace aiayn::kernels {

template <class T, class TC = T>
struct GemmArgs {
  using scalar = T;
  bool trans_a = false, trans_b = false;
  int m = 0, n = 0, k = 0;
  const T* a = nullptr;
  int lda = 0;
  const T* b = nullptr;
  int ldb = 0;
  TC* c = nullptr;
  int ldc = 0;
  float alpha = 1.0f, beta = 0.0f;
  const TC* bias = nullptr;  // [n] or null
  bool relu = false;
};

template <class T>
struct ReluBackward {
  using scalar = T;
  const T* y = nullptr;   // forward output [n]
  const T* dy = nullptr;  // [n]
  T* dx = nullptr;        // [n]
  size_t n = 0;
};

template <class T, class G = T>
struct BiasGrad {
  using scalar = T;
  const T* dy = nullptr;  // [rows, cols]
  G* db = nullptr;        // [cols], accumulated (+=)
  int rows = 0, cols = 0;
};

template <class T>
struct AddArgs {
  using scalar = T;
  const T* a = nullptr;
  const T* b = nullptr;
  T* y = nullptr;
  size_t n = 0;
};

namespace cpu {
template <class T> void gemm(const GemmArgs<T>& a);
template <class T> void relu_backward(const ReluBackward<T>& a);
template <class T> void bias_grad(const BiasGrad<T>& a);
template <class T> void add(const AddArgs<T>& a);
}  // namespace cpu
namespace cuda {
void gemm(const GemmArgs<float>& a, Stream s);
void gemm(const GemmArgs<bf16>& a, Stream s);         // activations: bf16 out
void gemm(const GemmArgs<bf16, float>& a, Stream s);  // weight gradients: float32 out
void relu_backward(const ReluBackward<float>& a, Stream s);
void relu_backward(const ReluBackward<bf16>& a, Stream s);
void bias_grad(const BiasGrad<float>& a, Stream s);
void bias_grad(const BiasGrad<bf16, float>& a, Stream s);
void add(const AddArgs<float>& a, Stream s);
void add(const AddArgs<bf16>& a, Stream s);
}  // namespace cuda

template <class T, class TC> void gemm(Device d, const GemmArgs<T, TC>& a, Stream s = nullptr) { AIAYN_DISPATCH(gemm, d, a, s); }
template <class T> void relu_backward(Device d, const ReluBackward<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(relu_backward, d, a, s); }
template <class T, class G> void bias_grad(Device d, const BiasGrad<T, G>& a, Stream s = nullptr) { AIAYN_DISPATCH(bias_grad, d, a, s); }
template <class T> void add(Device d, const AddArgs<T>& a, Stream s = nullptr) { AIAYN_DISPATCH(add, d, a, s); }

}  // namespace aiayn::kernels
