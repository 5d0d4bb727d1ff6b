#pragma once
// Choices every command makes the same way: which device, how many CPU threads, the logger.
#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "kernels/device.hpp"
#include "trainer/config.hpp"

namespace aiayn::comm {
class Communicator;
}

namespace aiayn::trainer {

// "auto": CUDA when a GPU is usable, else the CPU with one log line saying why. "cuda" without a usable GPU
// is an error. On CUDA, selects the GPU by local rank (local_rank modulo the GPUs) and reports its index in
// `gpu` when given.
kernels::Device choose_device(const std::string& setting, int local_rank, spdlog::logger& log, int* gpu = nullptr);

// Threads per rank: `configured` when > 0, else the cores of this node divided among the ranks on it.
// Whether to compute in bf16 mixed precision: config precision=bf16 on CUDA. On the CPU, bf16 is an error when
// the config asked for device=cpu, and falls back to fp32 with one log line when device=auto found no GPU.
bool choose_bf16(const Config& cfg, kernels::Device device, spdlog::logger& log);

// What the chosen device cannot run, refused before any work with the key named: on CUDA, a head width
// (model.d_model / model.heads) above the attention kernels' kMaxHeadWidth.
void check_model_fits_device(const Config& cfg, kernels::Device device);

int setup_cpu_threads(int64_t configured, comm::Communicator* comm);

// The start-up check before the first step: every rank takes part in a small all-reduce and a gather with a
// short deadline (min(comm_timeout_s, 60 s)), and rank 0 logs the world size and each rank's host and device.
// A missing or unreachable rank fails every rank within that deadline with an error naming it.
void check_ranks_at_startup(comm::Communicator& comm, kernels::Device device, int gpu, double comm_timeout_s,
                            spdlog::logger& log);

// A logger that writes to the console (when `console`) and to `file` (when not empty), same format.
std::shared_ptr<spdlog::logger> make_logger(const std::string& name, bool console, const std::string& file);

}  // namespace aiayn::trainer
