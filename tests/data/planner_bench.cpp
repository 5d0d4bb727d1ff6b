// Benchmark (not a test): BatchPlan::build on WMT14 En-De sized lengths, 4.5M pairs with a long-tailed length
// distribution (mean ~30 tokens, up to 256), batch_tokens 25000, for one epoch; prints time and memory.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "data/batch_planner.hpp"
#include "kernels/dropout_hash.hpp"

namespace {

// splitmix64, shared with the dropout masks and the initialisation.
using aiayn::kernels::mix64;

double uniform(uint64_t key) { return (double(mix64(key) >> 11) + 0.5) / double(1ULL << 53); }

long max_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024;
}

}  // namespace

int main(int argc, char** argv) {
  const size_t n = argc > 1 ? size_t(std::atoll(argv[1])) : 4500000;
  const int64_t batch_tokens = argc > 2 ? std::atoll(argv[2]) : 25000;
  std::vector<int32_t> src(n), tgt(n);
  for (size_t i = 0; i < n; ++i) {
    // Log-normal source length (median ~25), target within +-25% of it; clipped to [2, 256].
    const double u1 = uniform(2 * i), u2 = uniform(2 * i + 1);
    const double z = std::sqrt(-2 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    const double s = std::exp(3.2 + 0.6 * z);
    const double t = s * (0.75 + 0.5 * uniform(3 * i + 7));
    src[i] = int32_t(std::clamp(s, 2.0, 256.0));
    tgt[i] = int32_t(std::clamp(t, 2.0, 256.0));
  }
  const long rss_before = max_rss_mib();
  const auto t0 = std::chrono::steady_clock::now();
  const auto plan = aiayn::data::BatchPlan::build(src, tgt, 1, 0, batch_tokens);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const long rss_after = max_rss_mib();
  size_t pairs = 0;
  int64_t real_tgt = 0, padded_tgt = 0;
  for (const auto& b : plan.batches()) {
    pairs += b.pairs.size();
    real_tgt += b.tgt_tokens;
    int32_t m = 0;
    for (int64_t i : b.pairs) m = std::max(m, tgt[size_t(i)]);
    padded_tgt += int64_t(b.pairs.size()) * m;
  }
  const double plan_mib = double(pairs * sizeof(int64_t) + plan.size() * sizeof(aiayn::data::GlobalBatch)) / 1048576;
  std::printf("pairs %zu, batch_tokens %lld: %zu batches in %.2f s; plan %.0f MiB, peak RSS %ld MiB (%ld MiB before "
              "build); target padding efficiency %.3f\n",
              pairs, (long long)batch_tokens, plan.size(), seconds, plan_mib, rss_after, rss_before,
              double(real_tgt) / double(padded_tgt));
  return pairs == n ? 0 : 1;
}
