#pragma once
// Host math that hot CPU loops (the kernels, the decoder's log-softmax) need in a form GCC vectorises (libm's
// scalar calls do not).
#include <cstdint>
#include <cstring>

namespace aiayn::kernels::cpu {

// exp(x) for x <= 0 to within a few ulp, in a form the compiler vectorises: x = n ln2 + r with |r| <= ln2 / 2,
// exp(r) by its Taylor series to r^13 (truncation < 1e-17 relative), times 2^n built from exponent bits. n is
// rounded by adding 1.5 * 2^52, which leaves it in the low bits of the sum (no float-to-int conversion, which
// SSE cannot vectorise). x below -708 gives exp(-708) ~ 3e-308 instead of a denormal or 0: against the row
// maximum's exp(0) = 1 it is nothing either way.
inline double exp_nonpositive(double x) {
  constexpr double kLog2e = 1.4426950408889634, kLn2Hi = 0.6931471803691238, kLn2Lo = 1.9082149292705877e-10;
  constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52
  x = x < -708.0 ? -708.0 : x;
  const double shifted = x * kLog2e + kRound;
  const double n = shifted - kRound;  // round(x / ln2), in [-1022, 0]
  const double r = (x - n * kLn2Hi) - n * kLn2Lo;
  double p = 1.0 / 6227020800;  // 1/13!, then Horner down to 1/0!
  p = p * r + 1.0 / 479001600;
  p = p * r + 1.0 / 39916800;
  p = p * r + 1.0 / 3628800;
  p = p * r + 1.0 / 362880;
  p = p * r + 1.0 / 40320;
  p = p * r + 1.0 / 5040;
  p = p * r + 1.0 / 720;
  p = p * r + 1.0 / 120;
  p = p * r + 1.0 / 24;
  p = p * r + 1.0 / 6;
  p = p * r + 1.0 / 2;
  p = p * r + 1.0;
  p = p * r + 1.0;
  uint64_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  bits = (bits + 1023) << 52;  // the low 12 bits hold n + 1023 in [1, 1023]: the exponent field of 2^n
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

}  // namespace aiayn::kernels::cpu
