#pragma once
// Reading the next batch while the current one computes. start() reads lists of pairs (a rank's micro-batches
// of one global batch) on a background thread; take() hands them over when asked for the same key, and
// otherwise reads synchronously, so a mispredicted or skipped prefetch costs time, never correctness. The
// result is exactly what CorpusReader::read_pairs returns, and errors surface from take() or wait().
//
// HDF5 as Debian builds it is not thread-safe: callers must wait() before any other HDF5 use (checkpoints,
// validation), which the training loop does right after a step's forward and backward passes.
#include <cstdint>
#include <future>
#include <utility>
#include <vector>

#include "data/corpus.hpp"

namespace aiayn::data {

class BatchPrefetcher {
 public:
  using Key = std::pair<int64_t, int64_t>;  // (epoch, batch in epoch)
  using Lists = std::vector<std::vector<int64_t>>;

  explicit BatchPrefetcher(const CorpusReader& corpus) : corpus_(corpus) {}
  ~BatchPrefetcher();
  BatchPrefetcher(const BatchPrefetcher&) = delete;
  BatchPrefetcher& operator=(const BatchPrefetcher&) = delete;

  // Starts reading `lists` for `key` (waits for a read still in flight first).
  void start(Key key, Lists lists);
  // The pairs of `lists`, prefetched when key and lists match the last start(), else read now.
  std::vector<std::vector<Pair>> take(Key key, const Lists& lists);
  // Waits for a read in flight (keeping its result for take()); rethrows its error.
  void wait();
  int64_t hits() const { return hits_; }

 private:
  const CorpusReader& corpus_;
  Key key_{-1, -1};
  Lists lists_;
  std::future<std::vector<std::vector<Pair>>> pending_;
  std::vector<std::vector<Pair>> ready_;
  bool has_ready_ = false;
  int64_t hits_ = 0;
};

}  // namespace aiayn::data
