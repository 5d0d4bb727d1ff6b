// One optimizer step on this rank (see train_step.hpp).
#include "trainer/train_step.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "aiayn/error.hpp"
#include "kernels/ops.hpp"
#include "trainer/batch.hpp"
#include "trainer/schedule.hpp"

namespace aiayn::trainer {
namespace k = aiayn::kernels;

namespace {

// Each global batch is cut into `shards` shares the same way whatever the number of ranks (train.shards,
// rounded up to a multiple of the ranks); rank r computes shares [r * per_rank, (r + 1) * per_rank), each on
// its own, summed pairwise (ShardSums). One rank and train.shards ranks then add the same numbers in the same
// order: their steps agree bit for bit, not just up to summation order.
int shard_count(const Config& cfg, int world) {
  return static_cast<int>(((std::max<int64_t>(cfg.train.shards, world) + world - 1) / world) * world);
}

}  // namespace

TrainStep::TrainStep(const Config& cfg, const data::CorpusReader& corpus, Model<float>& model,
                     k::DeviceArray<float>& adam_m, k::DeviceArray<float>& adam_v, comm::Communicator& comm,
                     const comm::GradientCommunicator& grad_comm, const FaultInjection& faults, spdlog::logger& log)
    : cfg_(cfg),
      corpus_(corpus),
      model_(model),
      adam_m_(adam_m),
      adam_v_(adam_v),
      comm_(comm),
      faults_(faults),
      log_(log),
      device_(model.device()),
      n_params_(model.num_params()),
      bucket_(std::max<size_t>(1, static_cast<size_t>(cfg.train.bucket_mb * (1 << 20) / sizeof(float)))),
      shards_(shard_count(cfg, comm.size())),
      shards_per_rank_(shards_ / comm.size()),
      first_shard_(comm.rank() * shards_per_rank_),
      // With one shard per rank the last backward pass of a step starts the all-reduce bucket by bucket as it
      // finishes them (on a GPU with NCCL, beside the rest of the pass); several shards are summed locally
      // first. faults.force_overlap (tests, the GPU check's nccl-1 with train.shards=1): the same with one
      // rank, so that a NCCL communicator of one runs the side-stream path that two GPUs would.
      overlap_(shards_per_rank_ == 1 && (grad_comm.comm().size() > 1 || faults.force_overlap)),
      shard_sums_(device_, n_params_),
      reducer_(grad_comm.comm(), device_, model.grads(), n_params_, bucket_, grad_comm.host_staged(),
               faults.backward_failure_step(comm.rank())),
      prefetcher_(corpus) {
  on_grads_ready_ = [this](size_t begin, size_t end) {
    if (poison_this_step_ && begin == 0) poison_gradients();  // test-only, as if the backward pass produced it
    reducer_.ready(begin, end);
  };
}

data::BatchPrefetcher::Lists TrainStep::rank_share(const data::GlobalBatch& batch, std::vector<size_t>* per_shard) const {
  data::BatchPrefetcher::Lists lists;
  for (int shard = first_shard_; shard < first_shard_ + shards_per_rank_; ++shard) {
    auto micro_batches = data::split_for_rank(batch, corpus_.src_lengths(), corpus_.tgt_lengths(), shard, shards_,
                                              cfg_.train.max_tokens_per_rank);
    if (per_shard) per_shard->push_back(micro_batches.size());
    for (auto& mb : micro_batches) lists.push_back(std::move(mb));
  }
  return lists;
}

void TrainStep::poison_gradients() {
  const float nan = std::nanf("");
  k::device_copy(device_, model_.grads(), k::Device::CPU, &nan, sizeof(float));
  poisoned_ = true;
}

StepOutcome TrainStep::run(int64_t step, int64_t update, const data::BatchPlan& plan, int64_t epoch,
                           int64_t batch_in_epoch, const StopRequests& stops) {
  StepOutcome out = compute_gradients(step, plan, epoch, batch_in_epoch, stops);
  if (!out.skipped) out.lr = apply_update(update, out.gnorm);
  return out;
}

StepOutcome TrainStep::compute_gradients(int64_t step, const data::BatchPlan& plan, int64_t epoch,
                                         int64_t batch_in_epoch, const StopRequests& stops) {
  const data::GlobalBatch& batch = plan.batch(static_cast<size_t>(batch_in_epoch));
  model_.zero_grads();
  StepTotals local;
  const float grad_scale = 1.0f / static_cast<float>(std::max<int64_t>(1, batch.tgt_tokens));
  const DropoutContext dropout{true, static_cast<uint64_t>(cfg_.train.seed), static_cast<uint64_t>(step)};
  StepOutcome out;
  try {
    reducer_.begin_step();
    poison_this_step_ = faults_.poison_gradients(comm_.rank(), step), poisoned_ = false;
    // This rank's share of the batch (read while the previous step computed); then the next batch's share
    // starts reading while this one computes.
    std::vector<size_t> per_shard;
    const data::BatchPrefetcher::Lists lists = rank_share(batch, &per_shard);
    std::vector<std::vector<data::Pair>> pairs = prefetcher_.take({epoch, batch_in_epoch}, lists);
    if (batch_in_epoch + 1 < static_cast<int64_t>(plan.size()))
      prefetcher_.start({epoch, batch_in_epoch + 1}, rank_share(plan.batch(static_cast<size_t>(batch_in_epoch + 1)), nullptr));
    // ---- forward, loss, backward: this rank's shards, each on its own, combined pairwise ----
    for (int shard = first_shard_, list = 0; shard < first_shard_ + shards_per_rank_; ++shard) {
      if (shard > first_shard_) model_.zero_grads();
      const size_t n_micro = per_shard[static_cast<size_t>(shard - first_shard_)];
      for (size_t i = 0; i < n_micro; ++i, ++list) {
        const Batch b = make_batch(std::move(pairs[static_cast<size_t>(list)]), lists[static_cast<size_t>(list)],
                                   corpus_.info().pad_id, corpus_.info().bos_id);
        const bool last = i + 1 == n_micro;
        const auto st = model_.forward_backward(b, dropout, grad_scale, overlap_ && last ? &on_grads_ready_ : nullptr);
        local.loss += st.loss, local.nll += st.nll, local.tokens += st.tokens, local.correct += st.correct;
      }
      if (shards_per_rank_ > 1) shard_sums_.push(model_.grads());
    }
    if (shards_per_rank_ > 1) shard_sums_.finish(model_.grads());
    prefetcher_.wait();  // no HDF5 call (validation, checkpoint) may run beside the read
    if (poison_this_step_ && !poisoned_) poison_gradients();

    // ---- all-reduce the gradients (what the backward pass has not started yet), agree on statistics and faults ----
    reducer_.finish();
    if (!logged_buckets_) {
      log_.info("gradient all-reduce: {} bucket(s) of up to {} floats, {} started during the backward pass",
                reducer_.buckets(), bucket_, reducer_.started_early());
      logged_buckets_ = true;
    }
    double sums[2] = {local.loss, local.nll};
    int64_t counts[2] = {local.tokens, local.correct};
    comm_.all_reduce_sum_host(sums, 2);
    comm_.all_reduce_sum_host(counts, 2);
    out.totals = {sums[0], sums[1], counts[0], counts[1]};
    out.gnorm = std::sqrt(k::sum_squares(device_, k::SumSquaresArgs<float>{model_.grads(), n_params_}));
    const bool time_up = stops.time_up();
    int64_t flags[3] = {(!std::isfinite(sums[0]) || !std::isfinite(out.gnorm)) ? 1 : 0,
                        stops.signal_received() ? 1 : 0, time_up ? 1 : 0};
    comm_.all_reduce_max_host(flags, 3);
    out.skipped = flags[0] != 0, out.stop_signal = flags[1] != 0, out.time_up = flags[2] != 0;
  } catch (const Error& e) {
    try {
      prefetcher_.wait();  // nothing may read HDF5 beside whatever handles this error
    } catch (...) {
    }
    throw Error(fmt::format("step {}: {}", step, e.what()));
  }
  return out;
}

double TrainStep::apply_update(int64_t update, double gnorm) {
  // Optional clipping (off in the paper) scales the gradient inside Adam's pass.
  float clip_scale = 1.0f;
  if (cfg_.train.clip_norm > 0 && gnorm > cfg_.train.clip_norm) clip_scale = static_cast<float>(cfg_.train.clip_norm / gnorm);
  const auto adam = adam_update(cfg_, update, model_.params(), model_.grads(), adam_m_.data(), adam_v_.data(), n_params_,
                                clip_scale, model_.params_bf16());
  k::adam(device_, adam);
  return learning_rate(update, cfg_.model.d_model, cfg_.train.warmup, cfg_.train.lr_scale);
}

}  // namespace aiayn::trainer
