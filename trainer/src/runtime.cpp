#include "trainer/runtime.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "aiayn/error.hpp"
#include "comm/communicator.hpp"
#include "kernels/ops/attention.hpp"

namespace aiayn::trainer {

kernels::Device choose_device(const std::string& setting, int local_rank, spdlog::logger& log, int* gpu) {
  if (setting == "cpu") return kernels::Device::CPU;
  std::string why;
  const int gpus = kernels::cuda_device_count(&why);
  if (gpus == 0) {
    AIAYN_CHECK(setting != "cuda", "device=cuda, but no GPU is usable: " + why);
    log.info("no GPU ({}): using the CPU", why);
    return kernels::Device::CPU;
  }
  kernels::cuda_set_device(local_rank % gpus);
  log.info("using GPU {} of {}; {}; {}", local_rank % gpus, gpus, kernels::cuda_versions(), comm::nccl_version());
  if (gpu) *gpu = local_rank % gpus;
  return kernels::Device::CUDA;
}

bool choose_bf16(const Config& cfg, kernels::Device device, spdlog::logger& log) {
  if (cfg.precision != "bf16") return false;
  if (device == kernels::Device::CUDA) return true;
  AIAYN_CHECK(cfg.device != "cpu", "config key 'precision': bf16 needs device=cuda; the CPU backend computes in fp32");
  log.info("precision bf16 needs a GPU: computing in fp32 on the CPU");
  return false;
}

int setup_cpu_threads(int64_t configured, comm::Communicator* comm) {
  int threads = static_cast<int>(configured);
  if (threads <= 0) {
    const int cores = std::max(1u, std::thread::hardware_concurrency());
    int ranks_here = 1;
    if (comm && comm->size() > 1) {
      char host[256] = {0};
      gethostname(host, sizeof(host) - 1);
      const auto hosts = comm->all_gather_host(host);
      ranks_here = static_cast<int>(std::count(hosts.begin(), hosts.end(), std::string(host)));
    }
    threads = std::max(1, cores / std::max(1, ranks_here));
  }
  kernels::set_cpu_threads(threads);
  return threads;
}

void check_ranks_at_startup(comm::Communicator& comm, kernels::Device device, int gpu, double comm_timeout_s,
                            spdlog::logger& log) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string mine = fmt::format("{} ({})", comm::host_name(),
                                       device == kernels::Device::CUDA ? fmt::format("GPU {}", gpu) : "CPU");
  const auto all = comm::check_all_ranks_present(comm, mine, std::min(comm_timeout_s, 60.0));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<std::string> ranks;
  for (size_t r = 0; r < all.size(); ++r) ranks.push_back(fmt::format("{}: {}", r, all[r]));
  log.info("start-up check: {} rank(s) answered in {:.2f} s; rank: host (device): {}", all.size(), secs,
           fmt::join(ranks, ", "));
}

std::shared_ptr<spdlog::logger> make_logger(const std::string& name, bool console, const std::string& file) {
  std::vector<spdlog::sink_ptr> sinks;
  if (console) sinks.push_back(std::make_shared<spdlog::sinks::stdout_sink_mt>());
  if (!file.empty()) sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(file, false));
  auto logger = std::make_shared<spdlog::logger>(name, sinks.begin(), sinks.end());
  logger->set_pattern("[%Y-%m-%d %H:%M:%S] %v");
  logger->flush_on(spdlog::level::info);
  return logger;
}

void check_model_fits_device(const Config& cfg, kernels::Device device) {
  if (device != kernels::Device::CUDA) return;
  const int width = cfg.model.d_model / cfg.model.heads;
  AIAYN_CHECK(width <= kernels::cuda::kMaxHeadWidth,
              fmt::format("config key 'model.heads': the head width d_model / heads = {} / {} = {} is wider than the CUDA "
                          "attention takes ({}); use at least {} heads", cfg.model.d_model, cfg.model.heads, width,
                          kernels::cuda::kMaxHeadWidth,
                          (cfg.model.d_model + kernels::cuda::kMaxHeadWidth - 1) / kernels::cuda::kMaxHeadWidth));
}

}  // namespace aiayn::trainer
