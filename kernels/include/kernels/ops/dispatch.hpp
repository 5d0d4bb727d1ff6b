#pragma once
// The dispatcher: every op has cpu::op(args) (templated on the scalar, float and double) and
// cuda::op(args, stream) (float; bf16 variants are declared where they exist). The trainer calls only
// the device-taking wrappers declared beside each op, which route through AIAYN_DISPATCH.
#include <type_traits>

#include "kernels/device.hpp"

#if AIAYN_HAVE_CUDA
#define AIAYN_DISPATCH(op, dev, args, stream)                                                   \
  do {                                                                                          \
    if ((dev) == ::aiayn::kernels::Device::CPU) return cpu::op(args);                           \
    if constexpr (std::is_same_v<typename std::decay_t<decltype(args)>::scalar, float>) {       \
      return cuda::op(args, stream);                                                            \
    } else {                                                                                    \
      AIAYN_FAIL(std::string("op '") + #op + "' on CUDA supports float only, not double");      \
    }                                                                                           \
  } while (0)
#else
#define AIAYN_DISPATCH(op, dev, args, stream)                          \
  do {                                                                 \
    if ((dev) == ::aiayn::kernels::Device::CPU) return cpu::op(args);  \
    (void)(stream);                                                    \
    ::aiayn::kernels::no_cuda_backend(#op);                            \
  } while (0)
#endif
