// The one CUB algorithm the kernels use, cub::DeviceRadixSort::SortPairs on int32 keys and values, as a host
// stable sort with CUB's semantics: the first call (temp == nullptr) only reports the temporary storage it needs;
// the second sorts by bits [begin_bit, end_bit) of the keys, where a signed key is compared with its sign bit
// flipped (CUB's "twiddling", so negative keys come first), keeping equal keys in input order. Inputs and outputs
// must be device memory that does not overlap; the temporary storage is left holding garbage.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "aiayn_emu/cuda_emu.hpp"
#include "emu_internal.hpp"

namespace aiayn::emu {

cudaError_t radix_sort_pairs(void* temp, size_t& temp_bytes, const int32_t* keys_in, int32_t* keys_out,
                             const int32_t* values_in, int32_t* values_out, int n, int begin_bit, int end_bit,
                             cudaStream_t stream) {
  auto bad = [](const std::string& why) {
    report("cub::DeviceRadixSort::SortPairs: " + why);
    return cudaErrorInvalidValue;
  };
  const size_t needed = size_t(n > 0 ? n : 0) * 2 * sizeof(int32_t) + 256;
  if (!temp) {
    temp_bytes = needed;
    return cudaSuccess;
  }
  if (n < 0 || begin_bit < 0 || end_bit > 32 || begin_bit > end_bit) return bad("bad count or bit range");
  if (!valid_stream(stream)) return bad("the stream is not a live stream");
  stream_order(stream);
  const void* touched[5] = {temp, keys_in, keys_out, values_in, values_out};
  order_operation(stream, "cub::DeviceRadixSort::SortPairs", touched, 5);
  if (temp_bytes < needed) return bad("temporary storage of " + std::to_string(temp_bytes) + " bytes, needs " + std::to_string(needed));
  std::string why;
  const size_t bytes = size_t(n) * sizeof(int32_t);
  if (!device_range_ok(temp, temp_bytes, &why)) return bad("temporary storage: " + why);
  if (n == 0) return cudaSuccess;
  const void* ranges[4] = {keys_in, keys_out, values_in, values_out};
  const char* names[4] = {"keys_in", "keys_out", "values_in", "values_out"};
  for (int i = 0; i < 4; ++i)
    if (!device_range_ok(ranges[i], bytes, &why)) return bad(std::string(names[i]) + ": " + why);
  for (int i = 0; i < 4; ++i)
    for (int j = i + 1; j < 4; ++j) {
      const auto a = reinterpret_cast<uintptr_t>(ranges[i]), b = reinterpret_cast<uintptr_t>(ranges[j]);
      if (a < b + bytes && b < a + bytes) return bad(std::string(names[i]) + " and " + names[j] + " overlap");
    }
  try {
    DeviceAccess access("cub::DeviceRadixSort::SortPairs");
    const uint32_t mask = end_bit - begin_bit >= 32 ? 0xffffffffu : ((1u << (end_bit - begin_bit)) - 1u);
    auto digit = [&](int32_t k) { return ((uint32_t(k) ^ 0x80000000u) >> begin_bit) & mask; };
    std::vector<int> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return digit(keys_in[x]) < digit(keys_in[y]); });
    for (int i = 0; i < n; ++i) {
      keys_out[i] = keys_in[order[size_t(i)]];
      values_out[i] = values_in[order[size_t(i)]];
    }
    std::memset(temp, 0xff, temp_bytes);
    access.close();
  } catch (const std::exception& e) {
    report(e.what());
    return cudaErrorIllegalAddress;
  }
  return cudaSuccess;
}

}  // namespace aiayn::emu
