#pragma once
// Sinusoidal positional encoding of the paper, one definition for host and device:
//   PE(pos, 2i) = sin(pos / 10000^(2i/D)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/D)).
#include <cmath>

#include "kernels/device.hpp"

namespace aiayn::kernels {

AIAYN_HD inline float sinusoid(int position, int channel, int D) {
  const int i2 = channel & ~1;  // 2i
  // exp(-ln(10000) * 2i / D), computed in double on the host and in float on the device is NOT identical;
  // both backends use this float expression so they agree bit for bit where the math library does.
  const float inv_freq = expf(static_cast<float>(i2) * (-9.210340371976184f / static_cast<float>(D)));
  const float angle = static_cast<float>(position) * inv_freq;
  return (channel & 1) ? cosf(angle) : sinf(angle);
}

}  // namespace aiayn::kernels
