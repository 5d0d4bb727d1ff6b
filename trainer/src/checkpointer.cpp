// The training run's checkpoints (see checkpointer.hpp).
#include "trainer/checkpointer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "aiayn/error.hpp"

namespace aiayn::trainer {
namespace fs = std::filesystem;
namespace k = aiayn::kernels;

Checkpointer::Checkpointer(const fs::path& run_dir, const Config& cfg, Model<float>& model, k::DeviceArray<float>& adam_m,
                           k::DeviceArray<float>& adam_v, std::string corpus_fingerprint,
                           std::map<std::string, std::string> extras, int world, bool leader, spdlog::logger& log,
                           std::vector<int64_t> fail_save_at)
    : run_(run_dir),
      dir_(run_dir / "checkpoints"),
      cfg_(cfg),
      model_(model),
      adam_m_(adam_m),
      adam_v_(adam_v),
      fingerprint_(std::move(corpus_fingerprint)),
      extras_(std::move(extras)),
      fail_save_at_(std::move(fail_save_at)),
      world_(world),
      leader_(leader),
      log_(log) {}

LoopState Checkpointer::resume(const std::string& corpus_path) {
  const std::string path =
      checkpoints::find_resume_checkpoint(dir_.string(), [&](const std::string& w) { log_.warn("{}", w); });
  AIAYN_CHECK(!path.empty(), fmt::format("{}: no complete checkpoint to resume from", dir_.string()));
  const checkpoints::Meta meta = checkpoints::read_meta(path);
  const Config saved = Config::parse(meta.config, path + " (saved config)");
  const std::string diff = cfg_.architecture_difference(saved);
  AIAYN_CHECK(diff.empty(), fmt::format("config key '{}' differs from the checkpoint {}: the architecture cannot "
                                        "change on resume", diff, path));
  AIAYN_CHECK(cfg_.train.batch_tokens == saved.train.batch_tokens,
              fmt::format("config key 'train.batch_tokens' differs from the checkpoint {} ({} vs {}): the data "
                          "cursor would not mean the same batches", path, cfg_.train.batch_tokens, saved.train.batch_tokens));
  AIAYN_CHECK(cfg_.train.seed == saved.train.seed, fmt::format("config key 'train.seed' differs from the checkpoint {}", path));
  AIAYN_CHECK(meta.corpus_fingerprint == fingerprint_,
              fmt::format("{}: the checkpoint was trained on a different corpus than {}", path, corpus_path));
  const size_t n = model_.num_params();
  std::vector<float> p(n), m(n), v(n);
  const auto p_refs = model_tensors(model_.table(), p.data());
  const auto m_refs = model_tensors(model_.table(), m.data());
  const auto v_refs = model_tensors(model_.table(), v.data());
  checkpoints::load_checkpoint(path, p_refs, &m_refs, &v_refs);
  const k::Device device = model_.device();
  k::device_copy(device, model_.params(), k::Device::CPU, p.data(), n * sizeof(float));
  model_.params_changed();
  k::device_copy(device, adam_m_.data(), k::Device::CPU, m.data(), n * sizeof(float));
  k::device_copy(device, adam_v_.data(), k::Device::CPU, v.data(), n * sizeof(float));
  LoopState state;
  state.step = meta.step, state.epoch = meta.epoch, state.batch_in_epoch = meta.batch_in_epoch;
  std::string text;
  if (checkpoints::read_extra(path, "trainer_state.yaml", &text)) state.trainer = parse_trainer_state(text, path);
  log_.info("resumed from {} at step {} (epoch {}, batch {}), saved by {} rank(s), now {}", path, state.step,
            state.epoch, state.batch_in_epoch, meta.world_size, world_);
  return state;
}

// Temporaries of interrupted saves are removed, and checkpoints newer than the resume point (damaged, or
// complete but never committed to LATEST; a best.h5 of steps that will be run again) are renamed *.stale, so
// that neither retention nor averaging ever mixes them with the resumed run's own.
void Checkpointer::set_aside_after_resume(int64_t step) {
  if (!leader_) return;
  for (const auto& e : fs::directory_iterator(dir_)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) {
      fs::remove(e.path());
      log_.info("removed {} (an interrupted write)", e.path().string());
    }
  }
  for (const auto& path : checkpoints::list_checkpoints(dir_.string())) {
    const std::string name = fs::path(path).filename().string();
    int64_t s = -1;
    if (std::sscanf(name.c_str(), "step-%ld.h5", &s) == 1 && s > step) {
      fs::rename(path, path + ".stale");
      log_.warn("set aside {} (newer than the resume point, step {})", path + ".stale", step);
    }
  }
  if (fs::exists(best_path())) {
    int64_t best_step = -1;
    try {
      best_step = checkpoints::read_meta(best_path().string()).step;
    } catch (const std::exception&) {
      return;  // damaged: best_file_is_sound() reports it
    }
    if (best_step > step) {
      fs::rename(best_path(), best_path().string() + ".stale");
      log_.warn("set aside {}.stale (its step {} is newer than the resume point, step {}; it is written again when "
                "the resumed run gets there)", best_path().string(), best_step, step);
    }
  }
}

bool Checkpointer::best_file_is_sound() {
  if (!fs::exists(best_path())) return false;
  std::string why;
  if (checkpoints::verify_checkpoint(best_path().string(), &why)) return true;
  const std::string aside = best_path().string() + ".damaged";
  fs::rename(best_path(), aside);
  log_.warn("{} is damaged ({}); set aside as {}: the next validation writes a new best.h5", best_path().string(), why,
            aside);
  return false;
}

checkpoints::SaveRequest Checkpointer::request(const LoopState& state, std::vector<float>* p, std::vector<float>* m,
                                               std::vector<float>* v) const {
  const size_t n = model_.num_params();
  const k::Device device = model_.device();
  p->resize(n), m->resize(n), v->resize(n);
  k::device_copy(k::Device::CPU, p->data(), device, model_.params(), n * sizeof(float));
  k::device_copy(k::Device::CPU, m->data(), device, adam_m_.data(), n * sizeof(float));
  k::device_copy(k::Device::CPU, v->data(), device, adam_v_.data(), n * sizeof(float));
  checkpoints::SaveRequest req;
  req.meta.step = state.step;
  req.meta.epoch = state.epoch;
  req.meta.batch_in_epoch = state.batch_in_epoch;
  req.meta.seed = static_cast<uint64_t>(cfg_.train.seed);
  req.meta.config = cfg_.to_yaml();
  req.meta.config_hash = cfg_.hash();
  req.meta.corpus_fingerprint = fingerprint_;
  req.meta.world_size = world_;
  req.model = const_tensors(model_.table(), p->data());
  req.adam_m = const_tensors(model_.table(), m->data());
  req.adam_v = const_tensors(model_.table(), v->data());
  req.extra = extras_;
  req.extra["trainer_state.yaml"] = trainer_state_yaml(state.trainer);
  return req;
}

std::string Checkpointer::save(const LoopState& state, const std::string& why) {
  if (!leader_) return {};
  std::vector<float> p, m, v;
  const bool fail = std::find(fail_save_at_.begin(), fail_save_at_.end(), state.step) != fail_save_at_.end();
  if (fail)
    checkpoints::set_save_fault_hook([](const std::string& stage) {
      if (stage == "rename") throw Error("injected failure (AIAYN_TEST_FAIL_SAVE_AT)");
    });
  std::string path;
  try {
    path = checkpoints::save_checkpoint(dir_.string(), request(state, &p, &m, &v));
  } catch (...) {
    if (fail) checkpoints::set_save_fault_hook(nullptr);
    throw;
  }
  if (fail) checkpoints::set_save_fault_hook(nullptr);
  log_.info("saved checkpoint {} ({})", path, why);
  for (const auto& gone : checkpoints::prune_checkpoints(dir_.string(), static_cast<int>(cfg_.checkpoint.keep_last),
                                                         static_cast<int>(cfg_.checkpoint.average_last)))
    log_.info("removed old checkpoint {}", gone);
  return path;
}

void Checkpointer::save_best(const LoopState& state, const BestTracker& best) {
  if (!leader_) return;
  std::vector<float> p, m, v;
  checkpoints::SaveRequest req = request(state, &p, &m, &v);
  req.extra["best.yaml"] = fmt::format("metric: {}\nscore: {}\nstep: {}\n", best.metric(), best.best_score(),
                                       best.best_step());
  checkpoints::save_checkpoint_file(best_path().string(), req);
}

void Checkpointer::average_last() {
  if (!leader_ || cfg_.checkpoint.average_last <= 0) return;
  const auto all = checkpoints::list_checkpoints(dir_.string());
  const size_t n = std::min<size_t>(all.size(), static_cast<size_t>(cfg_.checkpoint.average_last));
  const std::vector<std::string> last(all.end() - static_cast<long>(n), all.end());
  if (last.empty()) return;
  checkpoints::average_checkpoints(last, (run_ / "averaged.h5").string());
  log_.info("averaged the last {} checkpoint(s) into {}", last.size(), (run_ / "averaged.h5").string());
}

}  // namespace aiayn::trainer
