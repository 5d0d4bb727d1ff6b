// BatchPrefetcher: one background read at a time (std::async), its result kept until take() asks for it.
#include "data/prefetch.hpp"

namespace aiayn::data {
namespace {

std::vector<std::vector<Pair>> read_lists(const CorpusReader& corpus, const BatchPrefetcher::Lists& lists) {
  std::vector<std::vector<Pair>> out;
  out.reserve(lists.size());
  for (const auto& list : lists) out.push_back(corpus.read_pairs(list));
  return out;
}

}  // namespace

BatchPrefetcher::~BatchPrefetcher() {
  try {
    if (pending_.valid()) pending_.wait();
  } catch (...) {
  }
}

void BatchPrefetcher::wait() {
  if (!pending_.valid()) return;
  auto future = std::move(pending_);
  try {
    ready_ = future.get();
    has_ready_ = true;
  } catch (...) {
    key_ = {-1, -1};
    has_ready_ = false;
    throw;
  }
}

void BatchPrefetcher::start(Key key, Lists lists) {
  wait();
  key_ = key;
  lists_ = std::move(lists);
  has_ready_ = false;
  pending_ = std::async(std::launch::async, [this] { return read_lists(corpus_, lists_); });
}

std::vector<std::vector<Pair>> BatchPrefetcher::take(Key key, const Lists& lists) {
  wait();
  if (has_ready_ && key == key_ && lists == lists_) {
    has_ready_ = false;
    ++hits_;
    return std::move(ready_);
  }
  has_ready_ = false;
  return read_lists(corpus_, lists);
}

}  // namespace aiayn::data
