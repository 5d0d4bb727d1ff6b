// Pairwise summation of per-shard gradients (see shard_sums.hpp).
#include "trainer/shard_sums.hpp"

#include "kernels/ops.hpp"

namespace aiayn::trainer {
namespace k = aiayn::kernels;

void ShardSums::push(const float* grads) {
  auto cur = take();
  k::device_copy(device_, cur->data(), device_, grads, n_ * sizeof(float));
  int level = 0;
  while (!stack_.empty() && stack_.back().level == level) {  // left (older) + right (newer)
    float* left = stack_.back().buf->data();
    k::add(device_, k::AddArgs<float>{left, cur->data(), left, n_});
    free_.push_back(std::move(cur));
    cur = std::move(stack_.back().buf);
    stack_.pop_back();
    ++level;
  }
  stack_.push_back({std::move(cur), level});
}

void ShardSums::finish(float* grads) {
  for (size_t i = stack_.size(); i-- > 1;) {
    float* left = stack_[i - 1].buf->data();
    k::add(device_, k::AddArgs<float>{left, stack_[i].buf->data(), left, n_});
  }
  if (!stack_.empty()) k::device_copy(device_, grads, device_, stack_.front().buf->data(), n_ * sizeof(float));
  for (auto& e : stack_) free_.push_back(std::move(e.buf));
  stack_.clear();
}

std::unique_ptr<k::DeviceArray<float>> ShardSums::take() {
  if (free_.empty()) return std::make_unique<k::DeviceArray<float>>(device_, n_);
  auto b = std::move(free_.back());
  free_.pop_back();
  return b;
}

}  // namespace aiayn::trainer
