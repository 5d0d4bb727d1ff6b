// The training loop (see train.hpp). TrainingRun::train reads like the paper's section 5: for each global
// batch one optimizer step (TrainStep, train_step.hpp), then the progress line, validation and checkpoints
// as they fall due. Around it: the run directory, agreement between ranks on set-up errors, stop signals, logs.
#include "trainer/train.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "aiayn/error.hpp"
#include "checkpoints/checkpoint.hpp"
#include "comm/communicator.hpp"
#include "comm/gradient_communicator.hpp"
#include "data/batch_planner.hpp"
#include "data/corpus.hpp"
#include "kernels/ops.hpp"
#include "trainer/best_tracker.hpp"
#include "trainer/checkpointer.hpp"
#include "trainer/config.hpp"
#include "trainer/fault_injection.hpp"
#include "trainer/model.hpp"
#include "trainer/progress.hpp"
#include "trainer/run_files.hpp"
#include "trainer/runtime.hpp"
#include "trainer/tensorboard.hpp"
#include "trainer/train_step.hpp"
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

// One training run: what it sets up (the constructor), where it starts (resume_or_initialize) and its loop
// (train). The parts with rules of their own live in their own files: the step (TrainStep), checkpoints
// (Checkpointer), validation (Validator), the best record (BestTracker), the gradient communicator
// (comm/gradient_communicator.hpp), test faults (FaultInjection).
class TrainingRun {
 public:
  TrainingRun(const TrainOptions& opt, comm::Communicator& comm);
  // The state of the last checkpoint (--resume), or fresh weights.
  void resume_or_initialize();
  // Steps until a stop condition; returns the exit status (0, or kExitStoppedBySignal).
  int train();

 private:
  void set_up_run_directory();
  void open_data();
  void choose_device_and_communicators();
  void build_model();
  void start_loop();
  bool next_batch();
  StepOutcome train_step();
  void count_skipped_step(const StepOutcome& out);
  void log_progress(const StepOutcome& out);
  void validate_if_due();
  void checkpoint_if_due(bool stopping);
  bool stop_now(const StepOutcome& out);
  int finish();

  LoopState loop_state() const;  // what a checkpoint saves: the cursor and the loop's own state
  std::string best_text() const;
  std::string eta(double seconds_per_step) const;
  double elapsed_s() const { return std::chrono::duration<double>(Clock::now() - t_start_).count(); }

  const TrainOptions& opt_;
  comm::Communicator& comm_;
  const int rank_, world_;
  const bool leader_;
  const fs::path run_;
  // set up
  Config cfg_;
  comm::GradientCommRequest grad_comm_request_{};
  FaultInjection faults_;
  std::shared_ptr<spdlog::logger> log_;
  fs::path train_path_;
  std::unique_ptr<data::CorpusReader> train_data_;
  std::string tokenizer_bytes_;
  std::unique_ptr<Validator> validator_;
  k::Device device_ = k::Device::CPU;
  bool bf16_ = false;
  int threads_ = 0, gpu_ = 0;
  std::unique_ptr<comm::GradientCommunicator> grad_comm_;
  std::unique_ptr<Model<float>> model_;
  k::DeviceArray<float> adam_m_, adam_v_;
  std::unique_ptr<Checkpointer> checkpointer_;
  std::unique_ptr<BestTracker> best_;
  // the loop
  // state_.step: optimizer steps taken, skipped ones included (the data cursor moves on either way);
  // state_.trainer.skipped_steps: steps skipped for non-finite values, so Adam's update count is step - skipped.
  LoopState state_;
  std::unique_ptr<RunOutputs> outputs_;
  std::unique_ptr<StopSignals> signals_;
  Clock::time_point t_start_, last_save_, last_log_;
  int64_t saved_step_ = -1;
  int64_t consecutive_skips_ = 0;
  StepTotals interval_;  // since the last progress line
  int64_t interval_steps_ = 0;
  double last_bleu_ = std::nan("");
  bool bleu_signature_written_ = false, early_stop_ = false;
  data::BatchPlan plan_;
  int exit_status_ = 0;
  std::unique_ptr<TrainStep> train_step_;
};

TrainingRun::TrainingRun(const TrainOptions& opt, comm::Communicator& comm)
    : opt_(opt), comm_(comm), rank_(comm.rank()), world_(comm.size()), leader_(rank_ == 0), run_(opt.run_dir) {
  set_up_run_directory();
  open_data();
  choose_device_and_communicators();
  build_model();
}

// The configuration, the environment's choices (gradient communicator, test faults; a bad value is an error
// before anything is written), the run directory and the logs.
void TrainingRun::set_up_run_directory() {
  on_all_ranks(comm_, [&] {
    if (opt_.resume && opt_.config_path.empty())
      cfg_ = Config::load((run_ / "config.yaml").string(), opt_.overrides);
    else {
      AIAYN_CHECK(!opt_.config_path.empty(), "train: --config is required (or --resume with an existing run)");
      cfg_ = Config::load(opt_.config_path, opt_.overrides);
    }
    grad_comm_request_ = comm::gradient_comm_request_from_env();
    faults_ = FaultInjection::from_env();
  });
  comm_.set_timeout(cfg_.train.comm_timeout_s);  // every collective from here on has this deadline
  std::string setup_error;
  if (leader_) {
    try {
      if (opt_.resume)
        check_resumable_run_dir(run_);
      else
        create_fresh_run_dir(run_);
      write_text_atomically(run_ / "config.yaml", cfg_.to_yaml());
    } catch (const std::exception& e) {
      setup_error = e.what();
    }
  }
  agree_on_errors(comm_, setup_error);
  on_all_ranks(comm_, [&] {
    fs::create_directories(run_ / "log");
    log_ = make_logger(fmt::format("rank-{}", rank_), leader_, (run_ / "log" / fmt::format("rank-{}.log", rank_)).string());
  });
}

// The training corpus, its tokenizer (checkpoints carry it), the validation set.
void TrainingRun::open_data() {
  train_path_ = fs::path(opt_.data_dir) / "train.h5";
  on_all_ranks(comm_, [&] {
    AIAYN_CHECK(fs::exists(train_path_), fmt::format("{}: no such file (prepare the data with `aiayn prepare`)", train_path_.string()));
    train_data_ = std::make_unique<data::CorpusReader>(train_path_.string());
    const fs::path tok = fs::path(opt_.data_dir) / "tokenizer.model";
    std::ifstream in(tok, std::ios::binary);
    AIAYN_CHECK(in.good(), fmt::format("{}: cannot read the tokenizer model (checkpoints carry it)", tok.string()));
    std::stringstream ss;
    ss << in.rdbuf();
    tokenizer_bytes_ = ss.str();
    validator_ = std::make_unique<Validator>(cfg_, opt_.data_dir, tokenizer_bytes_);
  });
  for (const data::CorpusReader* corpus : {static_cast<const data::CorpusReader*>(train_data_.get()), validator_->corpus()}) {
    if (!corpus) continue;
    const data::CorpusInfo& ci = corpus->info();
    log_->info("{}: {} pairs, {} + {} tokens checked in {:.2f} s (ids, offsets, EOS{})", ci.path, ci.pairs,
               ci.src_tokens, ci.tgt_tokens, ci.check_seconds, ci.has_checksum ? ", checksums" : "");
    if (!ci.has_checksum)
      log_->warn("{}: no token checksums (prepared by an older aiayn): damage that keeps ids in range cannot be "
                 "detected; run `aiayn prepare` again to add them", ci.path);
  }
}

void TrainingRun::choose_device_and_communicators() {
  on_all_ranks(comm_, [&] {
    device_ = choose_device(cfg_.device, comm_.local_rank(), *log_, &gpu_);
    bf16_ = choose_bf16(cfg_, device_, *log_);
    check_model_fits_device(cfg_, device_);
    threads_ = setup_cpu_threads(cfg_.train.threads, &comm_);
  });
  check_ranks_at_startup(comm_, device_, gpu_, cfg_.train.comm_timeout_s, *log_);
  // Gradients on GPUs travel by NCCL where it can run, else host-staged (see comm/gradient_communicator.hpp).
  on_all_ranks(comm_, [&] {
    grad_comm_ = std::make_unique<comm::GradientCommunicator>(comm::make_gradient_communicator(
        comm_, device_ == k::Device::CUDA, gpu_, cfg_.train.comm_timeout_s, grad_comm_request_));
  });
}

// The model, Adam's moments, the checkpointer and the best record.
void TrainingRun::build_model() {
  const data::CorpusInfo& info = train_data_->info();
  ModelSpec spec;
  spec.arch = cfg_.model;
  spec.vocab = info.vocab_size;
  spec.pad_id = info.pad_id;
  spec.bos_id = info.bos_id;
  spec.eos_id = info.eos_id;
  spec.bf16 = bf16_;
  model_ = std::make_unique<Model<float>>(spec, device_);
  const size_t n_params = model_->num_params();
  adam_m_ = k::DeviceArray<float>(device_, n_params);
  adam_v_ = k::DeviceArray<float>(device_, n_params);
  checkpointer_ = std::make_unique<Checkpointer>(
      run_, cfg_, *model_, adam_m_, adam_v_, train_data_->fingerprint(),
      std::map<std::string, std::string>{{"tokenizer.model", tokenizer_bytes_}, {"vocab.yaml", vocab_yaml(info)}},
      world_, leader_, *log_, faults_.fail_save_at);
  best_ = std::make_unique<BestTracker>(cfg_.best_metric(), cfg_.train.patience);
}

void TrainingRun::resume_or_initialize() {
  if (!opt_.resume) {
    model_->initialize(static_cast<uint64_t>(cfg_.train.seed));
    return;
  }
  on_all_ranks(comm_, [&] { state_ = checkpointer_->resume(train_path_.string()); });
  if (!best_->restore(state_.trainer))
    log_->warn("checkpoint.best_metric is now {} (was {}): the best checkpoint is chosen afresh", best_->metric(),
               state_.trainer.best_metric);
  // best.h5 must exist and verify for the record to stand; rank 0 looks, every rank hears.
  int64_t best_file_lost[1] = {0};
  if (leader_) {
    checkpointer_->set_aside_after_resume(state_.step);
    best_file_lost[0] = best_->has_best() && cfg_.checkpoint.keep_best && !checkpointer_->best_file_is_sound();
  }
  comm_.all_reduce_max_host(best_file_lost, 1);
  if (best_file_lost[0]) best_->forget();
}

// The paper's section 5 in a loop: each step a global batch, the step itself, then the progress line,
// validation and checkpoints as they fall due, until a stop condition.
int TrainingRun::train() {
  start_loop();
  while (next_batch()) {
    const StepOutcome out = train_step();
    if (out.skipped)
      count_skipped_step(out);
    else {
      consecutive_skips_ = 0;
      log_progress(out);
      validate_if_due();
    }
    checkpoint_if_due(out.stop_signal);
    if (stop_now(out)) break;
  }
  return finish();
}

void TrainingRun::start_loop() {
  log_->info("aiayn train: {} rank(s), device {}, gradients by {}{}, {} thread(s) per rank ({}), {} parameters", world_,
             k::device_name(device_), comm::backend_name(grad_comm_->comm().backend()),
             grad_comm_->host_staged() ? " (host-staged)" : "", threads_, k::cpu_backend_description(),
             model_->num_params());
  log_->info("corpus {}: {} pairs, vocabulary {}", train_path_.string(), train_data_->info().pairs,
             train_data_->info().vocab_size);
  on_all_ranks(comm_, [&] {
    if (leader_ && opt_.resume) drop_metrics_after(run_ / "metrics.jsonl", state_.step);
    outputs_ = std::make_unique<RunOutputs>(run_, leader_, opt_.resume ? state_.step : -1, *log_);
  });
  signals_ = std::make_unique<StopSignals>();
  t_start_ = last_save_ = last_log_ = Clock::now();
  saved_step_ = opt_.resume ? state_.step : -1;
  plan_ = data::BatchPlan::build(train_data_->src_lengths(), train_data_->tgt_lengths(),
                                 static_cast<uint64_t>(cfg_.train.seed), state_.epoch, cfg_.train.batch_tokens);
  train_step_ = std::make_unique<TrainStep>(cfg_, *train_data_, *model_, adam_m_, adam_v_, comm_, *grad_comm_, faults_,
                                            *log_);
}

// Stop conditions that need no agreement (the same on every rank): max_steps, max_epochs. Moves on to the next
// epoch (its own batch order) where this one is done.
bool TrainingRun::next_batch() {
  while (true) {
    if (cfg_.train.max_steps > 0 && state_.step >= cfg_.train.max_steps) return false;
    if (state_.batch_in_epoch < static_cast<int64_t>(plan_.size())) return true;
    ++state_.epoch;
    state_.batch_in_epoch = 0;
    if (cfg_.train.max_epochs > 0 && state_.epoch >= cfg_.train.max_epochs) return false;
    plan_ = data::BatchPlan::build(train_data_->src_lengths(), train_data_->tgt_lengths(),
                                   static_cast<uint64_t>(cfg_.train.seed), state_.epoch, cfg_.train.batch_tokens);
  }
}

// The next optimizer step on the cursor's batch; the cursor moves on even when the step is skipped.
StepOutcome TrainingRun::train_step() {
  const int64_t step = state_.step + 1;
  const double minutes_limit = cfg_.train.max_minutes;
  const StopRequests stops{[] { return g_stop_signal != 0; },
                           [&] { return minutes_limit > 0 && elapsed_s() >= minutes_limit * 60.0; }};
  const StepOutcome out = train_step_->run(step, step - state_.trainer.skipped_steps, plan_, state_.epoch,
                                           state_.batch_in_epoch, stops);
  ++state_.batch_in_epoch;
  state_.step = step;
  return out;
}

// A non-finite loss or gradient on some rank: every rank skipped the update; too many in a row end the run.
void TrainingRun::count_skipped_step(const StepOutcome& out) {
  const int64_t step = state_.step;
  ++state_.trainer.skipped_steps;
  ++consecutive_skips_;
  log_->warn("step {}: non-finite loss or gradient on some rank; skipping the step ({} in a row, {} in all)", step,
             consecutive_skips_, state_.trainer.skipped_steps);
  outputs_->write({{"step", step}, {"epoch", state_.epoch}, {"loss", nullptr}, {"nll", nullptr}, {"lr", 0.0},
                   {"gnorm", nullptr}, {"tgt_tokens", out.totals.tokens}, {"tok_s", 0.0},
                   {"skipped", state_.trainer.skipped_steps}, {"elapsed_s", elapsed_s()}});
  AIAYN_CHECK(consecutive_skips_ < cfg_.train.max_consecutive_skips,
              fmt::format("step {}: {} consecutive steps had non-finite losses or gradients "
                          "(train.max_consecutive_skips = {}); stopping", step, consecutive_skips_,
                          cfg_.train.max_consecutive_skips));
}

// Every train.log_every steps (and at max_steps): the progress line and a metrics line, averaged over the
// steps since the last one (tokens per second over the same interval).
void TrainingRun::log_progress(const StepOutcome& out) {
  const int64_t step = state_.step;
  interval_.loss += out.totals.loss, interval_.nll += out.totals.nll, interval_.tokens += out.totals.tokens,
      interval_.correct += out.totals.correct;
  ++interval_steps_;
  if (!(step % cfg_.train.log_every == 0 || step == cfg_.train.max_steps)) return;
  const double secs = std::chrono::duration<double>(Clock::now() - last_log_).count();
  const double elapsed = elapsed_s();
  const double tok_s = secs > 0 ? static_cast<double>(interval_.tokens) / secs : 0.0;
  const double loss = interval_.loss / std::max<int64_t>(1, interval_.tokens);
  const double nll = interval_.nll / std::max<int64_t>(1, interval_.tokens);
  std::string line = cfg_.train.max_steps > 0 ? fmt::format("step {}/{}", step, cfg_.train.max_steps)
                                              : fmt::format("step {}", step);
  line += fmt::format(" | epoch {} | loss {:.4f} | lr {:.3e} | {:.0f} tgt tok/s | eta {}", state_.epoch, loss, out.lr,
                      tok_s, eta(secs / static_cast<double>(interval_steps_)));
  if (std::isfinite(last_bleu_)) line += fmt::format(" | bleu {:.2f}", last_bleu_);
  if (best_->has_best()) line += fmt::format(" ({})", best_text());
  line += fmt::format(" | nll {:.4f} | gnorm {:.3f} | elapsed {}", nll, out.gnorm, format_duration(elapsed));
  log_->info("{}", line);
  outputs_->write({{"step", step}, {"epoch", state_.epoch}, {"loss", loss}, {"nll", nll}, {"lr", out.lr},
                   {"gnorm", out.gnorm}, {"tgt_tokens", out.totals.tokens}, {"tok_s", tok_s},
                   {"skipped", state_.trainer.skipped_steps}, {"elapsed_s", elapsed}});
  interval_ = StepTotals{};
  interval_steps_ = 0;
  last_log_ = Clock::now();
}

// Validation loss and BLEU as they fall due; the best record, best.h5 and early stopping follow the metric
// checkpoint.best_metric names.
void TrainingRun::validate_if_due() {
  const int64_t step = state_.step;
  const bool valid_loss = validator_->loss_due(step), valid_bleu = validator_->bleu_due(step);
  if (!valid_loss && !valid_bleu) return;
  nlohmann::ordered_json line{{"step", step}};
  std::string text = fmt::format("step {} | valid", step);
  double score = std::nan("");
  try {
    if (valid_loss) {
      const LossEvaluation v = validator_->loss(*model_, comm_);
      line["valid_loss"] = v.loss, line["valid_ppl"] = v.ppl, line["valid_acc"] = v.acc;
      text += fmt::format(" loss {:.4f} | ppl {:.2f} | acc {:.4f}", v.loss, v.ppl, v.acc);
      if (best_->metric() == "loss") score = v.loss;
    }
    if (valid_bleu) {
      const BleuEvaluation b = validator_->bleu(*model_, comm_);
      last_bleu_ = b.bleu.score;
      line["valid_bleu"] = b.bleu.score;
      line["valid_bleu_signature"] = b.bleu.signature;
      text += fmt::format("{} BLEU {:.2f} on {} sentences ({:.1f} s) | {}", valid_loss ? " |" : "", b.bleu.score,
                          b.sentences, b.decode_s, b.bleu.signature);
      if (!bleu_signature_written_) outputs_->write_text(step, "valid/bleu_signature", b.bleu.signature);
      bleu_signature_written_ = true;
      if (best_->metric() == "bleu") score = b.bleu.score;
    }
  } catch (const Error& e) {
    throw Error(fmt::format("step {}: validation: {}", step, e.what()));
  }
  if ((best_->metric() == "loss" && valid_loss) || (best_->metric() == "bleu" && valid_bleu)) {
    if (best_->observe(step, score)) {
      text += " | new best";
      if (cfg_.checkpoint.keep_best && leader_) {
        try {
          checkpointer_->save_best(loop_state(), *best_);
          text += fmt::format(", saved {}", checkpointer_->best_path().string());
        } catch (const Error& e) {
          log_->error("best checkpoint at step {} was NOT saved: {}", step, e.what());
        }
      }
    } else {
      text += fmt::format(" | {}, {} validation(s) without improvement", best_text(), best_->without_improvement());
      if (best_->patience() > 0) text += fmt::format(" (patience {})", best_->patience());
    }
    early_stop_ = best_->exhausted();
  }
  log_->info("{}", text);
  outputs_->write(line);
}

// Periodic checkpoints (a skipped step is a step too: its checkpoint holds the unchanged state). A save that
// fails is reported and the run goes on: LATEST still names the previous checkpoint. A stop by signal saves in
// finish() instead.
void TrainingRun::checkpoint_if_due(bool stopping) {
  const bool by_steps = cfg_.checkpoint.every_steps > 0 && state_.step % cfg_.checkpoint.every_steps == 0;
  const bool by_time = cfg_.checkpoint.every_minutes > 0 &&
                       std::chrono::duration<double>(Clock::now() - last_save_).count() >= cfg_.checkpoint.every_minutes * 60.0;
  if (!leader_ || !(by_steps || by_time) || stopping) return;
  try {
    checkpointer_->save(loop_state(), by_steps ? "periodic" : "every_minutes");
    saved_step_ = state_.step;
  } catch (const Error& e) {
    log_->error("checkpoint at step {} was NOT saved: {}", state_.step, e.what());
  }
  last_save_ = Clock::now();
}

// The stop conditions every rank agreed on in the step: a signal, the time limit; or early stopping.
bool TrainingRun::stop_now(const StepOutcome& out) {
  if (out.stop_signal) {
    log_->warn("stop requested by signal at step {}: writing a checkpoint and exiting with status {}", state_.step,
               kExitStoppedBySignal);
    exit_status_ = kExitStoppedBySignal;
    return true;
  }
  if (out.time_up) {
    log_->info("train.max_minutes ({}) reached at step {}", cfg_.train.max_minutes, state_.step);
    return true;
  }
  if (early_stop_) {
    log_->info("early stopping at step {}: {} validations of {} without improvement (train.patience = {}); {}",
               state_.step, best_->without_improvement(), best_->metric() == "bleu" ? "BLEU" : "the loss",
               best_->patience(), best_text());
    return true;
  }
  return false;
}

// The end: a final checkpoint, then the average of the last ones. Rank 0 alone writes and averages (many big
// checkpoints on slow storage can take longer than the deadline); the others wait for it without one: were
// rank 0 to die, Open MPI ends the job.
int TrainingRun::finish() {
  comm_.set_timeout(0);
  std::string end_error;
  if (leader_) {
    try {
      if (saved_step_ != state_.step) checkpointer_->save(loop_state(), exit_status_ ? "stop signal" : "end of training");
      if (exit_status_ == 0) checkpointer_->average_last();
    } catch (const std::exception& e) {
      end_error = e.what();
    }
  }
  agree_on_errors(comm_, end_error);
  log_->info("done: step {}, epoch {}, {} skipped step(s){}", state_.step, state_.epoch, state_.trainer.skipped_steps,
             best_->has_best() ? fmt::format("; {}", best_text()) : std::string());
  return exit_status_;
}

LoopState TrainingRun::loop_state() const {
  LoopState s = state_;
  best_->save_to(&s.trainer);
  return s;
}

std::string TrainingRun::best_text() const {
  if (!best_->has_best()) return std::string();
  return best_->metric() == "bleu" ? fmt::format("best {:.2f} @ {}", best_->best_score(), best_->best_step())
                                   : fmt::format("best valid loss {:.4f} @ {}", best_->best_score(), best_->best_step());
}

// The time still to go, from the last interval's seconds per step, for the nearest stop condition.
std::string TrainingRun::eta(double seconds_per_step) const {
  RunBounds bounds;
  bounds.max_steps = cfg_.train.max_steps, bounds.step = state_.step;
  bounds.max_epochs = cfg_.train.max_epochs, bounds.epoch = state_.epoch;
  bounds.batches_per_epoch = static_cast<int64_t>(plan_.size()), bounds.batch_in_epoch = state_.batch_in_epoch;
  bounds.max_minutes = cfg_.train.max_minutes, bounds.elapsed_s = elapsed_s();
  return format_duration(std::max(0.0, seconds_left(bounds, seconds_per_step)));
}

}  // namespace

int run_training(const TrainOptions& opt, comm::Communicator& comm) {
  TrainingRun run(opt, comm);  // config, run directory, logs, data, device, communicators, model
  run.resume_or_initialize();
  return run.train();
}

}  // namespace aiayn::trainer
