#pragma once
// Per-op wall time, for `aiayn bench --profile`: when enabled, every call through the dispatcher is timed
// (on CUDA the device is synchronised before and after, so the figures are exclusive but the run is slower).
// Off by default; the check on the hot path is one relaxed atomic load.
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/device.hpp"

namespace aiayn::kernels {

struct OpProfileEntry {
  std::string op;
  Device device = Device::CPU;
  int64_t calls = 0;
  double seconds = 0.0;
};

void enable_op_profile(bool on);
void reset_op_profile();
std::vector<OpProfileEntry> op_profile();  // sorted by time, largest first

namespace detail {
extern std::atomic<bool> g_op_profile_on;
double op_profile_begin(Device d);
void op_profile_end(const char* op, Device d, double t0);
}  // namespace detail

// Times the enclosing scope as one call of `op` when profiling is on.
class OpTimer {
 public:
  OpTimer(const char* op, Device d) : op_(op), dev_(d) {
    if (detail::g_op_profile_on.load(std::memory_order_relaxed)) t0_ = detail::op_profile_begin(d);
  }
  ~OpTimer() {
    if (t0_ >= 0.0) detail::op_profile_end(op_, dev_, t0_);
  }
  OpTimer(const OpTimer&) = delete;
  OpTimer& operator=(const OpTimer&) = delete;

 private:
  const char* op_;
  Device dev_;
  double t0_ = -1.0;
};

}  // namespace aiayn::kernels
