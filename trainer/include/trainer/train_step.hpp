#pragma once
// One optimizer step (the paper's sections 5.1-5.4) on this rank, in the order every rank keeps:
//
//   1. this rank's micro-batches of the global batch, shard by shard: forward, label-smoothed loss, backward
//      (gradients accumulate; dlogits scaled by 1 / target tokens of the whole global batch); each shard's
//      gradient summed pairwise with the others (ShardSums), so 1 and N ranks add the same numbers in one order
//   2. the gradient all-reduce in buckets (GradientReducer), started from the last backward pass when each rank
//      computes one shard (overlap), else after it
//   3. agreement between ranks: loss statistics summed, and the max of three flags: a non-finite loss or
//      gradient on some rank (every rank then skips the update), a stop signal, the time limit
//   4. unless skipped: optional clipping (train.clip_norm; off in the paper), Adam with the warmup schedule
//
// The next batch's share is read (BatchPrefetcher) while this one computes, and that read is finished before
// run() returns: HDF5 may then be used for validation and checkpoints. An error inside 1-3 is rethrown with
// the step number.
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <spdlog/logger.h>

#include "comm/gradient_communicator.hpp"
#include "data/batch_planner.hpp"
#include "data/corpus.hpp"
#include "data/prefetch.hpp"
#include "kernels/memory.hpp"
#include "trainer/config.hpp"
#include "trainer/fault_injection.hpp"
#include "trainer/gradient_reducer.hpp"
#include "trainer/model.hpp"
#include "trainer/shard_sums.hpp"

namespace aiayn::trainer {

struct StepTotals {  // summed over ranks and micro-batches
  double loss = 0, nll = 0;  // label-smoothed loss and negative log-likelihood, summed over target tokens
  int64_t tokens = 0, correct = 0;
};

// What every rank agreed on in a step.
struct StepOutcome {
  StepTotals totals;
  double gnorm = 0;          // L2 norm of the summed gradient, before clipping
  double lr = 0;             // the learning rate of the update (0 when skipped)
  bool skipped = false;      // a non-finite loss or gradient on some rank: no update anywhere
  bool stop_signal = false;  // some rank received SIGUSR1 or SIGTERM
  bool time_up = false;      // some rank reached train.max_minutes
};

// This rank's view of the stop conditions, asked once the step's gradients are summed.
struct StopRequests {
  std::function<bool()> signal_received;
  std::function<bool()> time_up;
};

class TrainStep {
 public:
  // `comm`: the run's communicator (statistics, flags); `grad_comm`: the gradients' (see
  // comm/gradient_communicator.hpp). Every reference must outlive the TrainStep.
  TrainStep(const Config& cfg, const data::CorpusReader& corpus, Model<float>& model,
            kernels::DeviceArray<float>& adam_m, kernels::DeviceArray<float>& adam_v, comm::Communicator& comm,
            const comm::GradientCommunicator& grad_comm, const FaultInjection& faults, spdlog::logger& log);

  // Optimizer step `step` (1-based, skipped steps included) on global batch `batch_in_epoch` of `plan` (epoch
  // `epoch`); `update`: Adam's update count (1-based, skipped steps excluded) should this step not be skipped.
  StepOutcome run(int64_t step, int64_t update, const data::BatchPlan& plan, int64_t epoch, int64_t batch_in_epoch,
                  const StopRequests& stops);

  // Each global batch is cut into this many shares whatever the number of ranks.
  int shards() const { return shards_; }

 private:
  // This rank's micro-batches of `batch`, shard by shard (per_shard: how many each shard has).
  data::BatchPrefetcher::Lists rank_share(const data::GlobalBatch& batch, std::vector<size_t>* per_shard) const;
  // Steps 1-3 above; the outcome's lr is left 0.
  StepOutcome compute_gradients(int64_t step, const data::BatchPlan& plan, int64_t epoch, int64_t batch_in_epoch,
                                const StopRequests& stops);
  // Step 4: clip and Adam. Returns the learning rate.
  double apply_update(int64_t update, double gnorm);
  void poison_gradients();  // test-only (FaultInjection::nan_at)

  const Config& cfg_;
  const data::CorpusReader& corpus_;
  Model<float>& model_;
  kernels::DeviceArray<float>& adam_m_;
  kernels::DeviceArray<float>& adam_v_;
  comm::Communicator& comm_;
  const FaultInjection& faults_;
  spdlog::logger& log_;
  const kernels::Device device_;
  const size_t n_params_, bucket_;
  const int shards_, shards_per_rank_, first_shard_;
  const bool overlap_;
  ShardSums shard_sums_;
  GradientReducer reducer_;
  data::BatchPrefetcher prefetcher_;
  Model<float>::GradsReady on_grads_ready_;
  bool poison_this_step_ = false, poisoned_ = false, logged_buckets_ = false;
};

}  // namespace aiayn::trainer
