// The training loop (see train.hpp). Reads like the paper's section 5: batches, optimizer, schedule,
// regularisation; around it the run directory, agreement between ranks, checkpoints and logs.
#include "trainer/train.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>

#include "aiayn/error.hpp"
#include "checkpoints/checkpoint.hpp"
#include "comm/communicator.hpp"
#include "comm/gradient_communicator.hpp"
#include "data/batch_planner.hpp"
#include "data/prefetch.hpp"
#include "data/corpus.hpp"
#include "kernels/ops.hpp"
#include "trainer/best_tracker.hpp"
#include "trainer/checkpointer.hpp"
#include "trainer/config.hpp"
#include "trainer/fault_injection.hpp"
#include "trainer/gradient_reducer.hpp"
#include "trainer/model.hpp"
#include "trainer/run_files.hpp"
#include "trainer/runtime.hpp"
#include "trainer/schedule.hpp"
#include "trainer/tensorboard.hpp"
#include "trainer/validator.hpp"

namespace aiayn::trainer {
namespace fs = std::filesystem;
namespace k = aiayn::kernels;
using Clock = std::chrono::steady_clock;

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

// Installs the stop handlers for the lifetime of the run; the handler only sets a flag.
//
// The handler runs on an alternate signal stack, and the CPU worker threads block both signals, so the
// signal is always taken by this thread on that stack. A signal frame written below the interrupted code's stack
// pointer corrupted oneDNN's sgemm: JIT code keeps data there, and with AVX-512 state the frame is kilobytes.
// SIGTERM during dnnl_sgemm ended 15 of 40 runs in "corrupted size vs. prev_size" (SIGABRT). SA_RESTART
// resumes interrupted system calls (file reads and writes) instead of failing them with EINTR.
class StopSignals {
 public:
  StopSignals() : alt_stack_(new char[kAltStackBytes]) {
    g_stop_signal = 0;
    stack_t ss{};
    ss.ss_sp = alt_stack_.get();
    ss.ss_size = kAltStackBytes;
    sigaltstack(&ss, &old_stack_);
    const int signals[] = {SIGUSR1, SIGTERM};
    kernels::cpu_workers_block_signals(signals, 2);
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, &old_usr1_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~StopSignals() {
    sigaction(SIGUSR1, &old_usr1_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
    sigaltstack(&old_stack_, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  static constexpr size_t kAltStackBytes = size_t(256) << 10;  // AVX-512 and AMX state fit many times over
  std::unique_ptr<char[]> alt_stack_;
  stack_t old_stack_{};
  struct sigaction old_usr1_ {}, old_term_ {};
};

// Every rank reports its setup error (or ""); all throw the first one, so no rank waits on a dead peer.
void agree_on_errors(comm::Communicator& comm, const std::string& mine) {
  const auto all = comm.all_gather_host(mine);
  for (size_t r = 0; r < all.size(); ++r)
    if (!all[r].empty()) throw AgreedError(comm.size() > 1 ? fmt::format("rank {}: {}", r, all[r]) : all[r]);
}

template <class F>
void on_all_ranks(comm::Communicator& comm, F&& f) {
  std::string err;
  try {
    f();
  } catch (const std::exception& e) {
    err = e.what();
  }
  agree_on_errors(comm, err);
}

// Pairwise summation of per-shard gradients (a binary counter of partial sums): shards pushed in order
// combine as ((g0 + g1) + (g2 + g3)) + ..., the same tree whichever ranks hold them. With two ranks the
// all-reduce makes the last addition, g_left + g_right, exactly as one rank does: the float results agree.
class ShardSums {
 public:
  ShardSums(k::Device device, size_t n) : device_(device), n_(n) {}

  // Takes a copy of the next shard's gradient.
  void push(const float* grads) {
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

  // Folds what is left, right to left, and writes the total to `grads`.
  void finish(float* grads) {
    for (size_t i = stack_.size(); i-- > 1;) {
      float* left = stack_[i - 1].buf->data();
      k::add(device_, k::AddArgs<float>{left, stack_[i].buf->data(), left, n_});
    }
    if (!stack_.empty()) k::device_copy(device_, grads, device_, stack_.front().buf->data(), n_ * sizeof(float));
    for (auto& e : stack_) free_.push_back(std::move(e.buf));
    stack_.clear();
  }

 private:
  struct Entry {
    std::unique_ptr<k::DeviceArray<float>> buf;
    int level;
  };
  std::unique_ptr<k::DeviceArray<float>> take() {
    if (free_.empty()) return std::make_unique<k::DeviceArray<float>>(device_, n_);
    auto b = std::move(free_.back());
    free_.pop_back();
    return b;
  }
  k::Device device_;
  size_t n_;
  std::vector<Entry> stack_;
  std::vector<std::unique_ptr<k::DeviceArray<float>>> free_;
};

struct StepTotals {  // summed over ranks and micro-batches
  double loss = 0, nll = 0;
  int64_t tokens = 0, correct = 0;
};

// "45s", "3m12s", "2h05m" for the progress line's ETA.
std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "-";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02d}s", s / 60, s % 60);
  return fmt::format("{}h{:02d}m", s / 3600, (s % 3600) / 60);
}

// Rank 0's outputs beside the log: metrics.jsonl and TensorBoard, fed the same lines. A TensorBoard write that
// fails (a full disk) is reported once and TensorBoard is left behind; training goes on.
class RunOutputs {
 public:
  RunOutputs(const fs::path& run, bool leader, int64_t resumed_step, spdlog::logger& log)
      : metrics_(leader ? (run / "metrics.jsonl").string() : std::string()), log_(log) {
    if (!leader) return;
    tensorboard_ = std::make_unique<TensorBoardWriter>((run / "tensorboard").string(), resumed_step);
    log_.info("TensorBoard events: {} (tensorboard --logdir {})", tensorboard_->path(), (run / "tensorboard").string());
  }
  void write(const nlohmann::ordered_json& line) {
    metrics_.write(line);
    guarded([&] { tensorboard_->write_metrics(line); });
  }
  void write_text(int64_t step, const std::string& tag, const std::string& text) {
    guarded([&] { tensorboard_->write_text(step, tag, text); });
  }

 private:
  template <class F>
  void guarded(F&& f) {
    if (!tensorboard_) return;
    try {
      f();
    } catch (const std::exception& e) {
      log_.error("TensorBoard events are no longer written: {}", e.what());
      tensorboard_.reset();
    }
  }
  MetricsWriter metrics_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
  spdlog::logger& log_;
};

}  // namespace

int run_training(const TrainOptions& opt, comm::Communicator& comm) {
  const int rank = comm.rank(), world = comm.size();
  const bool leader = rank == 0;
  const fs::path run(opt.run_dir);

  // ---- configuration, the environment's choices (gradient communicator, test faults), run directory ----
  Config cfg;
  comm::GradientCommRequest grad_comm_request{};
  FaultInjection faults;
  on_all_ranks(comm, [&] {
    if (opt.resume && opt.config_path.empty())
      cfg = Config::load((run / "config.yaml").string(), opt.overrides);
    else {
      AIAYN_CHECK(!opt.config_path.empty(), "train: --config is required (or --resume with an existing run)");
      cfg = Config::load(opt.config_path, opt.overrides);
    }
    grad_comm_request = comm::gradient_comm_request_from_env();
    faults = FaultInjection::from_env();
  });
  comm.set_timeout(cfg.train.comm_timeout_s);  // every collective from here on has this deadline
  std::string setup_error;
  if (leader) {
    try {
      if (opt.resume)
        check_resumable_run_dir(run);
      else
        create_fresh_run_dir(run);
      write_text_atomically(run / "config.yaml", cfg.to_yaml());
    } catch (const std::exception& e) {
      setup_error = e.what();
    }
  }
  agree_on_errors(comm, setup_error);
  std::shared_ptr<spdlog::logger> log;
  on_all_ranks(comm, [&] {
    fs::create_directories(run / "log");
    log = make_logger(fmt::format("rank-{}", rank), leader, (run / "log" / fmt::format("rank-{}.log", rank)).string());
  });

  // ---- data: the training corpus, its tokenizer (checkpoints carry it), the validation set ----
  const fs::path train_path = fs::path(opt.data_dir) / "train.h5";
  std::unique_ptr<data::CorpusReader> train_data;
  std::string tokenizer_bytes;
  std::unique_ptr<Validator> validator;
  on_all_ranks(comm, [&] {
    AIAYN_CHECK(fs::exists(train_path), fmt::format("{}: no such file (prepare the data with `aiayn prepare`)", train_path.string()));
    train_data = std::make_unique<data::CorpusReader>(train_path.string());
    const fs::path tok = fs::path(opt.data_dir) / "tokenizer.model";
    std::ifstream in(tok, std::ios::binary);
    AIAYN_CHECK(in.good(), fmt::format("{}: cannot read the tokenizer model (checkpoints carry it)", tok.string()));
    std::stringstream ss;
    ss << in.rdbuf();
    tokenizer_bytes = ss.str();
    validator = std::make_unique<Validator>(cfg, opt.data_dir, tokenizer_bytes);
  });
  for (const data::CorpusReader* corpus : {static_cast<const data::CorpusReader*>(train_data.get()), validator->corpus()}) {
    if (!corpus) continue;
    const data::CorpusInfo& ci = corpus->info();
    log->info("{}: {} pairs, {} + {} tokens checked in {:.2f} s (ids, offsets, EOS{})", ci.path, ci.pairs,
              ci.src_tokens, ci.tgt_tokens, ci.check_seconds, ci.has_checksum ? ", checksums" : "");
    if (!ci.has_checksum)
      log->warn("{}: no token checksums (prepared by an older aiayn): damage that keeps ids in range cannot be "
                "detected; run `aiayn prepare` again to add them", ci.path);
  }
  const data::CorpusInfo& info = train_data->info();
  const auto& src_len = train_data->src_lengths();
  const auto& tgt_len = train_data->tgt_lengths();

  // ---- device, threads, model ----
  k::Device device = k::Device::CPU;
  bool bf16 = false;
  int threads = 0, gpu = 0;
  on_all_ranks(comm, [&] {
    device = choose_device(cfg.device, comm.local_rank(), *log, &gpu);
    bf16 = choose_bf16(cfg, device, *log);
    check_model_fits_device(cfg, device);
    threads = setup_cpu_threads(cfg.train.threads, &comm);
  });
  check_ranks_at_startup(comm, device, gpu, cfg.train.comm_timeout_s, *log);
  // Gradients on GPUs travel by NCCL where it can run, else host-staged (see comm/gradient_communicator.hpp).
  std::unique_ptr<comm::GradientCommunicator> grad_comm;
  on_all_ranks(comm, [&] {
    grad_comm = std::make_unique<comm::GradientCommunicator>(comm::make_gradient_communicator(
        comm, device == k::Device::CUDA, gpu, cfg.train.comm_timeout_s, grad_comm_request));
  });
  comm::Communicator& grad_comm_ref = grad_comm->comm();
  const bool stage_on_host = grad_comm->host_staged();
  ModelSpec spec;
  spec.arch = cfg.model;
  spec.vocab = info.vocab_size;
  spec.pad_id = info.pad_id;
  spec.bos_id = info.bos_id;
  spec.eos_id = info.eos_id;
  spec.bf16 = bf16;
  Model<float> model(spec, device);
  const size_t n_params = model.num_params();
  k::DeviceArray<float> adam_m(device, n_params), adam_v(device, n_params);

  // ---- a fresh start or the state of the last checkpoint ----
  // state.step: optimizer steps taken, skipped ones included (the data cursor moves on either way);
  // state.trainer.skipped_steps: steps skipped for non-finite values, so Adam's update count is step - skipped.
  Checkpointer checkpointer(run, cfg, model, adam_m, adam_v, train_data->fingerprint(),
                            {{"tokenizer.model", tokenizer_bytes}, {"vocab.yaml", vocab_yaml(info)}}, world, leader, *log,
                            faults.fail_save_at);
  BestTracker best(cfg.best_metric(), cfg.train.patience);
  LoopState state;
  if (opt.resume) {
    on_all_ranks(comm, [&] { state = checkpointer.resume(train_path.string()); });
    if (!best.restore(state.trainer))
      log->warn("checkpoint.best_metric is now {} (was {}): the best checkpoint is chosen afresh", best.metric(),
                state.trainer.best_metric);
    // best.h5 must exist and verify for the record to stand; rank 0 looks, every rank hears.
    int64_t best_file_lost[1] = {0};
    if (leader) {
      checkpointer.set_aside_after_resume(state.step);
      best_file_lost[0] = best.has_best() && cfg.checkpoint.keep_best && !checkpointer.best_file_is_sound();
    }
    comm.all_reduce_max_host(best_file_lost, 1);
    if (best_file_lost[0]) best.forget();
  } else {
    model.initialize(static_cast<uint64_t>(cfg.train.seed));
  }
  // What a checkpoint saves: the cursor and the loop's own state.
  const auto loop_state = [&] {
    LoopState s = state;
    best.save_to(&s.trainer);
    return s;
  };

  log->info("aiayn train: {} rank(s), device {}, gradients by {}{}, {} thread(s) per rank ({}), {} parameters", world,
            k::device_name(device), comm::backend_name(grad_comm_ref.backend()), stage_on_host ? " (host-staged)" : "",
            threads, k::cpu_backend_description(), n_params);
  log->info("corpus {}: {} pairs, vocabulary {}", train_path.string(), info.pairs, info.vocab_size);

  std::unique_ptr<RunOutputs> outputs;
  on_all_ranks(comm, [&] {
    if (leader && opt.resume) drop_metrics_after(run / "metrics.jsonl", state.step);
    outputs = std::make_unique<RunOutputs>(run, leader, opt.resume ? state.step : -1, *log);
  });
  StopSignals signals;
  const auto t_start = Clock::now();
  auto last_save = Clock::now();
  auto last_log = Clock::now();
  int64_t saved_step = opt.resume ? state.step : -1;
  int64_t consecutive_skips = 0;
  StepTotals interval;
  int64_t interval_tgt = 0, interval_steps = 0;
  double last_bleu = std::nan("");
  bool bleu_signature_written = false, early_stop = false;
  const size_t bucket = std::max<size_t>(1, static_cast<size_t>(cfg.train.bucket_mb * (1 << 20) / sizeof(float)));
  data::BatchPlan plan = data::BatchPlan::build(src_len, tgt_len, static_cast<uint64_t>(cfg.train.seed), state.epoch,
                                                cfg.train.batch_tokens);
  int exit_status = 0;
  const double minutes_limit = cfg.train.max_minutes;
  // Each global batch is cut into `shards` shares the same way whatever the number of ranks (train.shards,
  // rounded up to a multiple of the ranks); rank r computes shares [r * per_rank, (r + 1) * per_rank), each
  // on its own, summed pairwise (ShardSums). One rank and train.shards ranks then add the same numbers in the
  // same order: their steps agree bit for bit, not just up to summation order.
  const int shards = static_cast<int>(((std::max<int64_t>(cfg.train.shards, world) + world - 1) / world) * world);
  const int shards_per_rank = shards / world, first_shard = rank * shards_per_rank;
  ShardSums shard_sums(device, n_params);
  GradientReducer reducer(grad_comm_ref, device, model.grads(), n_params, bucket, stage_on_host,
                          faults.backward_failure_step(rank));
  // With one shard per rank the last backward pass of a step starts the all-reduce bucket by bucket as it
  // finishes them (on a GPU with NCCL, beside the rest of the pass); several shards are summed locally first.
  // faults.force_overlap (tests, the GPU check's nccl-1 with train.shards=1): the same with one rank, so that a
  // NCCL communicator of one runs the side-stream path that two GPUs would.
  const bool overlap = shards_per_rank == 1 && (grad_comm_ref.size() > 1 || faults.force_overlap);
  bool poison_this_step = false, poisoned = false, logged_buckets = false;
  auto poison_grads = [&] {
    const float nan = std::nanf("");
    k::device_copy(device, model.grads(), k::Device::CPU, &nan, sizeof(float));
    poisoned = true;
  };
  const Model<float>::GradsReady on_grads_ready = [&](size_t begin, size_t end) {
    if (poison_this_step && begin == 0) poison_grads();  // test-only, as if the backward pass produced it
    reducer.ready(begin, end);
  };
  // The time still to go, from the last interval's seconds per step, for the nearest stop condition.
  const auto eta = [&](double secs_per_step) {
    double left = std::numeric_limits<double>::infinity();
    if (cfg.train.max_steps > 0) left = static_cast<double>(cfg.train.max_steps - state.step) * secs_per_step;
    if (cfg.train.max_epochs > 0)
      left = std::min(left, static_cast<double>((cfg.train.max_epochs - state.epoch) * static_cast<int64_t>(plan.size()) -
                                                state.batch_in_epoch) * secs_per_step);
    if (minutes_limit > 0)
      left = std::min(left, minutes_limit * 60.0 - std::chrono::duration<double>(Clock::now() - t_start).count());
    return format_duration(std::max(0.0, left));
  };
  const auto best_text = [&] {
    if (!best.has_best()) return std::string();
    return best.metric() == "bleu" ? fmt::format("best {:.2f} @ {}", best.best_score(), best.best_step())
                                   : fmt::format("best valid loss {:.4f} @ {}", best.best_score(), best.best_step());
  };

  // This rank's micro-batches of a global batch, shard by shard (per_shard: how many each shard has).
  const auto rank_share = [&](const data::GlobalBatch& g, std::vector<size_t>* per_shard) {
    data::BatchPrefetcher::Lists lists;
    for (int v = first_shard; v < first_shard + shards_per_rank; ++v) {
      auto mbs = data::split_for_rank(g, src_len, tgt_len, v, shards, cfg.train.max_tokens_per_rank);
      if (per_shard) per_shard->push_back(mbs.size());
      for (auto& mb : mbs) lists.push_back(std::move(mb));
    }
    return lists;
  };
  data::BatchPrefetcher prefetcher(*train_data);

  while (true) {
    // ---- stop conditions that need no agreement (same on every rank) ----
    if (cfg.train.max_steps > 0 && state.step >= cfg.train.max_steps) break;
    if (state.batch_in_epoch >= static_cast<int64_t>(plan.size())) {
      ++state.epoch;
      state.batch_in_epoch = 0;
      if (cfg.train.max_epochs > 0 && state.epoch >= cfg.train.max_epochs) break;
      plan = data::BatchPlan::build(src_len, tgt_len, static_cast<uint64_t>(cfg.train.seed), state.epoch,
                                    cfg.train.batch_tokens);
      continue;
    }
    const data::GlobalBatch& gb = plan.batch(static_cast<size_t>(state.batch_in_epoch));
    const int64_t this_step = state.step + 1;

    // ---- forward, loss, backward over this rank's share ----
    model.zero_grads();
    StepTotals local;
    const float grad_scale = 1.0f / static_cast<float>(std::max<int64_t>(1, gb.tgt_tokens));
    const DropoutContext dropout{true, static_cast<uint64_t>(cfg.train.seed), static_cast<uint64_t>(this_step)};
    double sums[2] = {0, 0}, gnorm = 0;
    int64_t counts[2] = {0, 0}, flags[3] = {0, 0, 0};
    try {
      reducer.begin_step();
      poison_this_step = faults.poison_gradients(rank, this_step), poisoned = false;
      // This rank's share of the batch (read while the previous step computed, see BatchPrefetcher); then the
      // next batch's share starts reading while this one computes.
      std::vector<size_t> per_shard;
      const data::BatchPrefetcher::Lists lists = rank_share(gb, &per_shard);
      std::vector<std::vector<data::Pair>> pairs = prefetcher.take({state.epoch, state.batch_in_epoch}, lists);
      if (state.batch_in_epoch + 1 < static_cast<int64_t>(plan.size()))
        prefetcher.start({state.epoch, state.batch_in_epoch + 1},
                         rank_share(plan.batch(static_cast<size_t>(state.batch_in_epoch + 1)), nullptr));
      // This rank's shards, each computed on its own and combined pairwise (see ShardSums).
      for (int v = first_shard, list = 0; v < first_shard + shards_per_rank; ++v) {
        if (v > first_shard) model.zero_grads();
        const size_t n_micro = per_shard[static_cast<size_t>(v - first_shard)];
        for (size_t i = 0; i < n_micro; ++i, ++list) {
          const Batch b = make_batch(std::move(pairs[static_cast<size_t>(list)]), lists[static_cast<size_t>(list)],
                                     info.pad_id, info.bos_id);
          const bool last = i + 1 == n_micro;
          const auto st = model.forward_backward(b, dropout, grad_scale, overlap && last ? &on_grads_ready : nullptr);
          local.loss += st.loss, local.nll += st.nll, local.tokens += st.tokens, local.correct += st.correct;
        }
        if (shards_per_rank > 1) shard_sums.push(model.grads());
      }
      if (shards_per_rank > 1) shard_sums.finish(model.grads());
      prefetcher.wait();  // no HDF5 call (validation, checkpoint) may run beside the read
      if (poison_this_step && !poisoned) poison_grads();

      // ---- all-reduce gradients (what the backward pass has not started yet), agree on statistics and faults ----
      reducer.finish();
      if (!logged_buckets) {
        log->info("gradient all-reduce: {} bucket(s) of up to {} floats, {} started during the backward pass",
                  reducer.buckets(), bucket, reducer.started_early());
        logged_buckets = true;
      }
      sums[0] = local.loss, sums[1] = local.nll;
      counts[0] = local.tokens, counts[1] = local.correct;
      comm.all_reduce_sum_host(sums, 2);
      comm.all_reduce_sum_host(counts, 2);
      gnorm = std::sqrt(k::sum_squares(device, k::SumSquaresArgs<float>{model.grads(), n_params}));
      const bool time_up = minutes_limit > 0 &&
                           std::chrono::duration<double>(Clock::now() - t_start).count() >= minutes_limit * 60.0;
      flags[0] = (!std::isfinite(sums[0]) || !std::isfinite(gnorm)) ? 1 : 0;
      flags[1] = g_stop_signal != 0 ? 1 : 0;
      flags[2] = time_up ? 1 : 0;
      comm.all_reduce_max_host(flags, 3);
    } catch (const Error& e) {
      try {
        prefetcher.wait();  // nothing may read HDF5 beside whatever handles this error
      } catch (...) {
      }
      throw Error(fmt::format("step {}: {}", this_step, e.what()));
    }
    ++state.batch_in_epoch;
    state.step = this_step;
    const int64_t step = this_step;

    if (flags[0]) {
      ++state.trainer.skipped_steps;
      ++consecutive_skips;
      log->warn("step {}: non-finite loss or gradient on some rank; skipping the step ({} in a row, {} in all)",
                step, consecutive_skips, state.trainer.skipped_steps);
      outputs->write({{"step", step}, {"epoch", state.epoch}, {"loss", nullptr}, {"nll", nullptr}, {"lr", 0.0},
                      {"gnorm", nullptr}, {"tgt_tokens", counts[0]}, {"tok_s", 0.0}, {"skipped", state.trainer.skipped_steps},
                      {"elapsed_s", std::chrono::duration<double>(Clock::now() - t_start).count()}});
      AIAYN_CHECK(consecutive_skips < cfg.train.max_consecutive_skips,
                  fmt::format("step {}: {} consecutive steps had non-finite losses or gradients "
                              "(train.max_consecutive_skips = {}); stopping", step, consecutive_skips,
                              cfg.train.max_consecutive_skips));
    } else {
      consecutive_skips = 0;
      const int64_t updates = step - state.trainer.skipped_steps;  // Adam's t, 1-based
      // ---- optional clipping (off in the paper), Adam with the warmup schedule ----
      float clip_scale = 1.0f;
      if (cfg.train.clip_norm > 0 && gnorm > cfg.train.clip_norm) clip_scale = static_cast<float>(cfg.train.clip_norm / gnorm);
      const auto adam = adam_update(cfg, updates, model.params(), model.grads(), adam_m.data(), adam_v.data(),
                                    n_params, clip_scale, model.params_bf16());
      const double lr = learning_rate(updates, cfg.model.d_model, cfg.train.warmup, cfg.train.lr_scale);
      k::adam(device, adam);

      // ---- the progress line and metrics ----
      interval.loss += sums[0], interval.nll += sums[1], interval.tokens += counts[0], interval.correct += counts[1];
      interval_tgt += counts[0];
      ++interval_steps;
      if (step % cfg.train.log_every == 0 || step == cfg.train.max_steps) {
        const double secs = std::chrono::duration<double>(Clock::now() - last_log).count();
        const double elapsed = std::chrono::duration<double>(Clock::now() - t_start).count();
        const double tok_s = secs > 0 ? static_cast<double>(interval_tgt) / secs : 0.0;
        const double loss = interval.loss / std::max<int64_t>(1, interval.tokens);
        const double nll = interval.nll / std::max<int64_t>(1, interval.tokens);
        std::string line = cfg.train.max_steps > 0 ? fmt::format("step {}/{}", step, cfg.train.max_steps)
                                                   : fmt::format("step {}", step);
        line += fmt::format(" | epoch {} | loss {:.4f} | lr {:.3e} | {:.0f} tgt tok/s | eta {}", state.epoch, loss, lr,
                            tok_s, eta(secs / static_cast<double>(interval_steps)));
        if (std::isfinite(last_bleu)) line += fmt::format(" | bleu {:.2f}", last_bleu);
        if (best.has_best()) line += fmt::format(" ({})", best_text());
        line += fmt::format(" | nll {:.4f} | gnorm {:.3f} | elapsed {}", nll, gnorm, format_duration(elapsed));
        log->info("{}", line);
        outputs->write({{"step", step}, {"epoch", state.epoch}, {"loss", loss}, {"nll", nll}, {"lr", lr},
                        {"gnorm", gnorm}, {"tgt_tokens", counts[0]}, {"tok_s", tok_s},
                        {"skipped", state.trainer.skipped_steps}, {"elapsed_s", elapsed}});
        interval = StepTotals{};
        interval_tgt = 0;
        interval_steps = 0;
        last_log = Clock::now();
      }

      // ---- validation: loss, BLEU, the best checkpoint and early stopping ----
      const bool valid_loss = validator->loss_due(step), valid_bleu = validator->bleu_due(step);
      if (valid_loss || valid_bleu) {
        nlohmann::ordered_json line{{"step", step}};
        std::string text = fmt::format("step {} | valid", step);
        double score = std::nan("");
        try {
          if (valid_loss) {
            const LossEvaluation v = validator->loss(model, comm);
            line["valid_loss"] = v.loss, line["valid_ppl"] = v.ppl, line["valid_acc"] = v.acc;
            text += fmt::format(" loss {:.4f} | ppl {:.2f} | acc {:.4f}", v.loss, v.ppl, v.acc);
            if (best.metric() == "loss") score = v.loss;
          }
          if (valid_bleu) {
            const BleuEvaluation b = validator->bleu(model, comm);
            last_bleu = b.bleu.score;
            line["valid_bleu"] = b.bleu.score;
            line["valid_bleu_signature"] = b.bleu.signature;
            text += fmt::format("{} BLEU {:.2f} on {} sentences ({:.1f} s) | {}", valid_loss ? " |" : "", b.bleu.score,
                                b.sentences, b.decode_s, b.bleu.signature);
            if (!bleu_signature_written) outputs->write_text(step, "valid/bleu_signature", b.bleu.signature);
            bleu_signature_written = true;
            if (best.metric() == "bleu") score = b.bleu.score;
          }
        } catch (const Error& e) {
          throw Error(fmt::format("step {}: validation: {}", step, e.what()));
        }
        if ((best.metric() == "loss" && valid_loss) || (best.metric() == "bleu" && valid_bleu)) {
          if (best.observe(step, score)) {
            text += " | new best";
            if (cfg.checkpoint.keep_best && leader) {
              try {
                checkpointer.save_best(loop_state(), best);
                text += fmt::format(", saved {}", checkpointer.best_path().string());
              } catch (const Error& e) {
                log->error("best checkpoint at step {} was NOT saved: {}", step, e.what());
              }
            }
          } else {
            text += fmt::format(" | {}, {} validation(s) without improvement", best_text(), best.without_improvement());
            if (best.patience() > 0) text += fmt::format(" (patience {})", best.patience());
          }
          early_stop = best.exhausted();
        }
        log->info("{}", text);
        outputs->write(line);
      }
    }
    // ---- periodic checkpoints (a skipped step is a step too: its checkpoint holds the unchanged state) ----
    const bool by_steps = cfg.checkpoint.every_steps > 0 && state.step % cfg.checkpoint.every_steps == 0;
    const bool by_time = cfg.checkpoint.every_minutes > 0 &&
                         std::chrono::duration<double>(Clock::now() - last_save).count() >= cfg.checkpoint.every_minutes * 60.0;
    if (leader && (by_steps || by_time) && !flags[1]) {
      try {
        checkpointer.save(loop_state(), by_steps ? "periodic" : "every_minutes");
        saved_step = state.step;
      } catch (const Error& e) {
        log->error("checkpoint at step {} was NOT saved: {}", state.step, e.what());
      }
      last_save = Clock::now();
    }
    if (flags[1]) {
      log->warn("stop requested by signal at step {}: writing a checkpoint and exiting with status {}", state.step,
                kExitStoppedBySignal);
      exit_status = kExitStoppedBySignal;
      break;
    }
    if (flags[2]) {
      log->info("train.max_minutes ({}) reached at step {}", minutes_limit, state.step);
      break;
    }
    if (early_stop) {
      log->info("early stopping at step {}: {} validations of {} without improvement (train.patience = {}); {}",
                state.step, best.without_improvement(), best.metric() == "bleu" ? "BLEU" : "the loss", best.patience(),
                best_text());
      break;
    }
  }

  // ---- the end: a final checkpoint, then the average of the last ones ----
  // Rank 0 alone writes and averages (many big checkpoints on slow storage can take longer than the deadline);
  // the others wait for it without one: were rank 0 to die, Open MPI ends the job.
  comm.set_timeout(0);
  std::string end_error;
  if (leader) {
    try {
      if (saved_step != state.step) checkpointer.save(loop_state(), exit_status ? "stop signal" : "end of training");
      if (exit_status == 0) checkpointer.average_last();
    } catch (const std::exception& e) {
      end_error = e.what();
    }
  }
  agree_on_errors(comm, end_error);
  log->info("done: step {}, epoch {}, {} skipped step(s){}", state.step, state.epoch, state.trainer.skipped_steps,
            best.has_best() ? fmt::format("; {}", best_text()) : std::string());
  return exit_status;
}

}  // namespace aiayn::trainer
