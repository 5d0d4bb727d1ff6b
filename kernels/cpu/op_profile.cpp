// Per-op wall-time accounting behind `aiayn bench --profile` (kernels/op_profile.hpp).
#include "kernels/op_profile.hpp"

#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <utility>

namespace aiayn::kernels {
namespace detail {
std::atomic<bool> g_op_profile_on{false};
}  // namespace detail

namespace {
std::mutex g_mutex;
std::map<std::pair<std::string, Device>, OpProfileEntry> g_table;

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

void enable_op_profile(bool on) { detail::g_op_profile_on.store(on, std::memory_order_relaxed); }

void reset_op_profile() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_table.clear();
}

std::vector<OpProfileEntry> op_profile() {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::vector<OpProfileEntry> out;
  for (const auto& kv : g_table) out.push_back(kv.second);
  std::sort(out.begin(), out.end(), [](const OpProfileEntry& a, const OpProfileEntry& b) { return a.seconds > b.seconds; });
  return out;
}

namespace detail {
double op_profile_begin(Device d) {
  if (d == Device::CUDA) cuda_synchronize();
  return now();
}

void op_profile_end(const char* op, Device d, double t0) {
  if (d == Device::CUDA) cuda_synchronize();
  const double dt = now() - t0;
  std::lock_guard<std::mutex> lock(g_mutex);
  OpProfileEntry& e = g_table[{op, d}];
  e.op = op, e.device = d;
  e.calls += 1;
  e.seconds += dt;
}
}  // namespace detail

}  // namespace aiayn::kernels
