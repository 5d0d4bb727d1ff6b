#pragma once
// The gradient all-reduce of a training step, bucket by bucket over the flat gradient buffer.
//
// With overlap, the backward pass reports each range of the buffer it has finished (Model::GradsReady) and a
// bucket starts as soon as all of it is reported: on a GPU with NCCL, on a stream of its own that first waits
// for an event recorded on the compute stream, so the all-reduce runs beside the rest of the backward pass;
// elsewhere (MPI on the CPU, or host-staged from a GPU) the bucket is summed there and then. finish() starts
// whatever is left, waits for all of it (NCCL: with the communicator's deadline) and orders the compute stream
// after it. Buckets always start from the last one down (the backward pass finishes the buffer from its end:
// decoder layers, encoder layers, the embedding at offset 0 last), each once it and every bucket above it are
// complete, so every rank starts the same sums in the same order even when one has nothing to report (an
// empty share of a tiny batch). A range that overlaps one reported before is an error.
//
// Errors: when the reducer is destroyed with sums still in flight (an error unwinding out of the step between
// the first start and finish()), it aborts the communicator first (Communicator::abort: ncclCommAbort), so
// that the device memory those sums use is freed only after NCCL has let go of it and the failing rank exits
// at once instead of waiting in a cudaFree for peers that may never join (issue 15).
// Test-only (FaultInjection, AIAYN_TEST_FAIL_IN_BACKWARD=RANK:STEP): with `fail_at_step` = STEP, ready()
// throws in the reducer's STEP-th step (counted from 1 in this process) right after a bucket has started
// there: an error with sums in flight.
#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

#include "comm/communicator.hpp"
#include "kernels/device.hpp"
#include "trainer/model.hpp"

namespace aiayn::trainer {

class GradientReducer {
 public:
  // `host_staged`: grads live on a GPU but the communicator sums host buffers (MPI): each bucket is copied
  // to the host and back.
  GradientReducer(comm::Communicator& comm, kernels::Device device, float* grads, size_t n, size_t bucket,
                  bool host_staged, int64_t fail_at_step = -1);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Starts a step: nothing reported, nothing started.
  void begin_step();
  // The backward pass has finished grads[begin, end).
  void ready(size_t begin, size_t end);
  // Starts the buckets not started yet (in order), waits for every one; grads then hold the sum over ranks.
  void finish();

  size_t buckets() const { return size_.size(); }
  // Buckets started from ready() (before finish()) in the last step: how much could overlap.
  size_t started_early() const { return started_early_; }

 private:
  void start(size_t bucket);
  bool complete(size_t bucket) const;  // every element of the bucket reported

  comm::Communicator& comm_;
  const kernels::Device device_;
  float* const grads_;
  const size_t n_, bucket_;
  const bool host_staged_, async_;  // async_: NCCL on a GPU (the bucket is enqueued, not waited for)
  kernels::Stream stream_ = nullptr;
  std::vector<kernels::Event> events_;
  kernels::Event done_ = nullptr;
  std::vector<size_t> size_;
  std::map<size_t, size_t> covered_;  // reported ranges, merged: begin -> end
  size_t next_ = 0;  // buckets [0, next_) have not started
  size_t started_early_ = 0;
  bool in_flight_ = false;  // async sums started and not yet waited for by finish()
  int64_t step_ = 0;        // begin_step() calls (the test fault's STEP)
  const int64_t fail_step_;  // test-only: the step whose ready() throws, -1: none
  std::vector<float> host_;
};

}  // namespace aiayn::trainer
