#pragma once
// The dispatcher: every op has cpu::op(args) (templated on the scalar; float and double are instantiated) and
// cuda::op(args, stream) (float, and bf16 for the mixed-precision variants). An args struct names its
// activation type `scalar`; where parameters or gradients have another type (bf16 activations with float32
// parameters), the struct takes it as a second template argument. The trainer calls only the device-taking
// wrappers declared beside each op, which route through AIAYN_DISPATCH.
#include <string>
#include <type_traits>

#include "kernels/bf16.hpp"
#include "kernels/device.hpp"
#include "kernels/op_profile.hpp"

namespace aiayn::kernels {
template <class S>
inline constexpr bool cpu_scalar_v = std::is_same_v<S, float> || std::is_same_v<S, double>;
template <class S>
inline constexpr bool cuda_scalar_v = std::is_same_v<S, float> || std::is_same_v<S, bf16>;
}  // namespace aiayn::kernels

#define AIAYN_DISPATCH_CPU(op, args)                                                                     \
  do {                                                                                                    \
    if constexpr (::aiayn::kernels::cpu_scalar_v<typename std::decay_t<decltype(args)>::scalar>) {       \
      return cpu::op(args);                                                                               \
    } else {                                                                                              \
      AIAYN_FAIL(std::string("op '") + #op + "' on the CPU supports float and double (bf16 is CUDA-only)"); \
    }                                                                                                     \
  } while (0)

#if AIAYN_HAVE_CUDA
#define AIAYN_DISPATCH(op, dev, args, stream)                                                          \
  do {                                                                                                 \
    const ::aiayn::kernels::OpTimer aiayn_op_timer_(#op, (dev));                                       \
    if ((dev) == ::aiayn::kernels::Device::CPU) AIAYN_DISPATCH_CPU(op, args);                          \
    if constexpr (::aiayn::kernels::cuda_scalar_v<typename std::decay_t<decltype(args)>::scalar>) {    \
      return cuda::op(args, stream);                                                                   \
    } else {                                                                                           \
      AIAYN_FAIL(std::string("op '") + #op + "' on CUDA supports float and bf16, not double");         \
    }                                                                                                  \
  } while (0)
#else
#define AIAYN_DISPATCH(op, dev, args, stream)                                   \
  do {                                                                          \
    const ::aiayn::kernels::OpTimer aiayn_op_timer_(#op, (dev));                \
    if ((dev) == ::aiayn::kernels::Device::CPU) AIAYN_DISPATCH_CPU(op, args);   \
    (void)(stream);                                                             \
    ::aiayn::kernels::no_cuda_backend(#op);                                     \
  } while (0)
#endif
