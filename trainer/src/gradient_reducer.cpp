// The gradient all-reduce in buckets, started from the backward pass (see gradient_reducer.hpp).
#include "trainer/gradient_reducer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <iterator>

#include "aiayn/error.hpp"
#include "kernels/memory.hpp"

namespace aiayn::trainer {
namespace k = aiayn::kernels;

GradientReducer::GradientReducer(comm::Communicator& comm, k::Device device, float* grads, size_t n, size_t bucket,
                                 bool host_staged, int64_t fail_at_step)
    : comm_(comm), device_(device), grads_(grads), n_(n), bucket_(bucket), host_staged_(host_staged),
      async_(device == k::Device::CUDA && comm.backend() == comm::Backend::NCCL), fail_step_(fail_at_step) {
  AIAYN_CHECK(bucket > 0, "gradient reducer: bucket size must be positive");
  for (size_t off = 0; off < n_; off += bucket_) size_.push_back(std::min(bucket_, n_ - off));
  next_ = size_.size();
  if (async_) {
    stream_ = k::stream_create(device_);
    for (size_t i = 0; i < size_.size(); ++i) events_.push_back(k::event_create(device_));
    done_ = k::event_create(device_);
  }
}

GradientReducer::~GradientReducer() {
  // Unwinding from an error with sums in flight: NCCL lets go of the buffers before anything frees them.
  if (in_flight_) comm_.abort();
  for (k::Event e : events_) k::event_destroy(device_, e);
  k::event_destroy(device_, done_);
  k::stream_destroy(device_, stream_);
}

void GradientReducer::begin_step() {
  covered_.clear();
  started_early_ = 0;
  next_ = size_.size();
  ++step_;
}

bool GradientReducer::complete(size_t b) const {
  const size_t lo = b * bucket_;
  auto it = covered_.upper_bound(lo);
  if (it == covered_.begin()) return false;
  --it;
  return it->first <= lo && it->second >= lo + size_[b];
}

void GradientReducer::ready(size_t begin, size_t end) {
  AIAYN_CHECK(begin < end && end <= n_, fmt::format("gradient reducer: range [{}, {}) outside [0, {})", begin, end, n_));
  // Reported ranges are kept merged; a new one may not overlap any (a range reported twice).
  auto next = covered_.upper_bound(begin);
  const bool after_prev = next == covered_.begin() || std::prev(next)->second <= begin;
  AIAYN_CHECK(after_prev && (next == covered_.end() || next->first >= end),
              fmt::format("gradient reducer: range [{}, {}) overlaps one reported before", begin, end));
  size_t lo = begin, hi = end;
  if (next != covered_.begin() && std::prev(next)->second == begin) {
    lo = std::prev(next)->first;
    covered_.erase(std::prev(next));
  }
  if (next != covered_.end() && next->first == end) {
    hi = next->second;
    covered_.erase(next);
  }
  covered_[lo] = hi;
  // Buckets start from the last one down, each as soon as it and all above it are complete: the order is the
  // same on every rank whatever the reports (and a rank with nothing to report starts them in finish()).
  while (next_ > 0 && complete(next_ - 1)) {
    start(--next_);
    ++started_early_;
    if (step_ == fail_step_)
      AIAYN_FAIL(fmt::format("test fault (AIAYN_TEST_FAIL_IN_BACKWARD): rank {} fails in the backward pass with {} "
                             "gradient sum(s) in flight", comm_.rank(), started_early_));
  }
}

void GradientReducer::start(size_t b) {
  // A sum over one rank is the identity: a host communicator (MPI under `mpirun -np 1`, gradients not
  // host-staged) is then not handed the device pointers of a GPU run. NCCL still runs (a one-GPU check of it).
  if (comm_.size() == 1 && !async_) return;
  float* data = grads_ + b * bucket_;
  const size_t count = size_[b];
  if (async_) {
    // The bucket's producers are on the compute (default) stream: the all-reduce waits for them, nothing more.
    k::event_record(device_, events_[b], nullptr);
    k::stream_wait_event(device_, stream_, events_[b]);
    in_flight_ = true;
    comm_.all_reduce_sum_async(data, count, stream_);
  } else if (host_staged_) {
    host_.resize(count);
    k::device_copy(k::Device::CPU, host_.data(), device_, data, count * sizeof(float));
    comm_.all_reduce_sum(host_.data(), count);
    k::device_copy(device_, data, k::Device::CPU, host_.data(), count * sizeof(float));
  } else {
    comm_.all_reduce_sum(data, count);
  }
}

void GradientReducer::finish() {
  while (next_ > 0) start(--next_);
  if (async_) {
    comm_.wait(stream_);
    in_flight_ = false;
    k::event_record(device_, done_, stream_);
    k::stream_wait_event(device_, nullptr, done_);  // whatever the compute stream does next sees the sums
  }
}

}  // namespace aiayn::trainer
