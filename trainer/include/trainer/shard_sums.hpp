#pragma once
// Pairwise summation of per-shard gradients, so that 1 rank and N ranks add the same numbers in the same order.
//
// Each global batch is cut into the same shards whatever the number of ranks; a rank computes its shards one
// by one and push()es each gradient. The sums form a binary counter of partial sums: shards pushed in order
// combine as ((g0 + g1) + (g2 + g3)) + ..., the same tree whichever ranks hold them. With two ranks the
// all-reduce makes the last addition, g_left + g_right, exactly as one rank does: the float results agree
// bit for bit. finish() folds what is left (an odd count), right to left.
#include <cstddef>
#include <memory>
#include <vector>

#include "kernels/device.hpp"
#include "kernels/memory.hpp"

namespace aiayn::trainer {

class ShardSums {
 public:
  // `n`: floats per gradient, on `device`.
  ShardSums(kernels::Device device, size_t n) : device_(device), n_(n) {}

  // Takes a copy of the next shard's gradient.
  void push(const float* grads);
  // Writes the total of the shards pushed since the last finish() to `grads` (nothing when none were pushed).
  void finish(float* grads);

 private:
  struct Entry {
    std::unique_ptr<kernels::DeviceArray<float>> buf;
    int level;  // this partial sum covers 2^level shards
  };
  std::unique_ptr<kernels::DeviceArray<float>> take();  // a free buffer, reused across steps
  kernels::Device device_;
  size_t n_;
  std::vector<Entry> stack_;
  std::vector<std::unique_ptr<kernels::DeviceArray<float>>> free_;
};

}  // namespace aiayn::trainer
