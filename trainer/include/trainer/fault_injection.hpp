#pragma once
// Test-only fault injection, read from the environment once when a run starts (FaultInjection::from_env) and
// handed to the parts it concerns; nothing reads these variables later. Every test that needs a fault sets one:
//
//   AIAYN_TEST_NAN_AT="rank:step[,rank:step...]"  poisons that rank's gradient at that step (as if its backward
//                                                  pass produced a NaN): every rank must skip the step
//   AIAYN_TEST_FAIL_SAVE_AT="step[,step...]"      the checkpoint save of those steps fails at its rename
//   AIAYN_TEST_FAIL_IN_BACKWARD="rank:step"       that rank throws from the gradient reducer in its STEP-th step
//                                                  (counted from 1 in this process) right after a bucket started
//   AIAYN_TEST_FORCE_OVERLAP=1                    one rank takes the two-rank path: the last backward pass starts
//                                                  the all-reduce bucket by bucket (NCCL: on its side stream)
//
// A malformed value is an error naming the variable (a test must not pass because its fault never fired).
// Ranks count from 0, steps from 1.
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace aiayn::trainer {

struct FaultInjection {
  std::vector<std::pair<int, int64_t>> nan_at;  // (rank, step)
  std::vector<int64_t> fail_save_at;            // steps
  int fail_in_backward_rank = -1;               // -1: none
  int64_t fail_in_backward_step = -1;
  bool force_overlap = false;

  bool poison_gradients(int rank, int64_t step) const;
  // The reducer step at which `rank` fails in the backward pass, -1: never.
  int64_t backward_failure_step(int rank) const;

  // `lookup(name)`: the variable's value, nullptr when unset. Throws aiayn::Error naming the variable.
  static FaultInjection parse(const std::function<const char*(const char*)>& lookup);
  static FaultInjection from_env();
};

}  // namespace aiayn::trainer
