// Not a test: the cost of the checks a corpus gets at open, at WMT14 scale. Writes a corpus of PAIRS pairs
// (default 4.5M) of ~31 source and ~30 target tokens with CorpusStreamWriter, then times CorpusReader's open
// (every id, EOS and CRC-32 of both sides) and prints the reader's resident memory.
//   build/tests/data/data_check_bench DIR [PAIRS]
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "data/corpus.hpp"
#include "data/corpus_writer.hpp"
#include "kernels/dropout_hash.hpp"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s DIR [PAIRS]\n", argv[0]);
    return 2;
  }
  const std::string path = std::string(argv[1]) + "/bench.h5";
  const int64_t pairs = argc > 2 ? std::atoll(argv[2]) : 4500000;
  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();
  {
    aiayn::data::CorpusAttributes a;
    a.vocab_size = 37000;
    a.tokenizer_sha256 = std::string(64, '0');
    aiayn::data::CorpusStreamWriter w(path, a, false);
    std::vector<int32_t> s, t;
    for (int64_t i = 0; i < pairs; ++i) {
      const uint64_t h = aiayn::kernels::mix64(uint64_t(i));
      s.assign(size_t(16 + h % 31), 0);
      t.assign(size_t(15 + (h >> 8) % 31), 0);
      for (size_t k = 0; k < s.size(); ++k) s[k] = int32_t(4 + aiayn::kernels::mix64(h + k) % 36996);
      for (size_t k = 0; k < t.size(); ++k) t[k] = int32_t(4 + aiayn::kernels::mix64(~h + k) % 36996);
      s.push_back(3);
      t.push_back(3);
      w.add_pair(s, t);
    }
    w.finish();
  }
  const double write_s = std::chrono::duration<double>(Clock::now() - t0).count();
  rusage before{};
  getrusage(RUSAGE_SELF, &before);
  t0 = Clock::now();
  const aiayn::data::CorpusReader r(path);
  const double open_s = std::chrono::duration<double>(Clock::now() - t0).count();
  rusage after{};
  getrusage(RUSAGE_SELF, &after);
  std::printf("{\"pairs\": %lld, \"src_tokens\": %lld, \"tgt_tokens\": %lld, \"write_s\": %.2f, \"open_and_check_s\": %.2f, "
              "\"max_rss_mb_after_open\": %.0f}\n",
              (long long)r.info().pairs, (long long)r.info().src_tokens, (long long)r.info().tgt_tokens, write_s, open_s,
              after.ru_maxrss / 1024.0);
  std::remove(path.c_str());
  return 0;
}
