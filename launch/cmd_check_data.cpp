// aiayn check-data DIR|FILE.h5: every check the corpus reader makes at open (attributes, datasets, offsets,
// every token id, EOS, token checksums), on DIR/{train,valid,test}.h5 (those present) or one file, and, where
// DIR/tokenizer.model exists, that each file was tokenized with it. One line per file on stdout; the first
// problem ends the command with "aiayn: error: FILE: DATASET[index]: ..." and exit status 1.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "aiayn/error.hpp"
#include "commands.hpp"
#include "data/corpus.hpp"
#include "data/tokenizer.hpp"

namespace aiayn::launch {
namespace {

namespace fs = std::filesystem;

void run_check_data(const std::string& target) {
  std::error_code ec;
  AIAYN_CHECK(fs::exists(target, ec), fmt::format("{}: no such file or directory", target));
  std::vector<std::string> files;
  std::string tokenizer;
  if (fs::is_directory(target, ec)) {
    for (const char* split : {"train.h5", "valid.h5", "test.h5"})
      if (fs::exists(fs::path(target) / split, ec)) files.push_back((fs::path(target) / split).string());
    AIAYN_CHECK(!files.empty(), fmt::format("{}: holds none of train.h5, valid.h5, test.h5", target));
    if (fs::exists(fs::path(target) / "tokenizer.model", ec))
      tokenizer = (fs::path(target) / "tokenizer.model").string();
  } else {
    files.push_back(target);
  }
  std::string tok_sha;
  int tok_vocab = 0;
  if (!tokenizer.empty()) {
    const data::Tokenizer tok = data::Tokenizer::from_file(tokenizer);
    tok_sha = tok.sha256();
    tok_vocab = tok.vocab_size();
  }
  for (const std::string& file : files) {
    const data::CorpusReader corpus(file);
    const data::CorpusInfo& info = corpus.info();
    if (!tokenizer.empty()) {
      AIAYN_CHECK(info.tokenizer_sha256 == tok_sha,
                  fmt::format("{}: attribute tokenizer_sha256: {} is not the sha256 of {} ({})", file,
                              info.tokenizer_sha256, tokenizer, tok_sha));
      AIAYN_CHECK(info.vocab_size == tok_vocab, fmt::format("{}: attribute vocab_size: {} but {} has {} pieces", file,
                                                            info.vocab_size, tokenizer, tok_vocab));
    }
    std::printf("%s: ok: %lld pairs, %lld + %lld tokens, ids below %d, offsets, EOS%s; %.2f s\n", file.c_str(),
                (long long)info.pairs, (long long)info.src_tokens, (long long)info.tgt_tokens, info.vocab_size,
                info.has_checksum ? ", checksums" : "", info.check_seconds);
    std::fflush(stdout);
    if (!info.has_checksum)
      std::fprintf(stderr,
                   "aiayn: warning: %s: no token checksums (prepared by an older aiayn): damage that keeps ids in "
                   "range cannot be detected; run `aiayn prepare` again to add them\n",
                   file.c_str());
  }
}

}  // namespace

void add_check_data_command(CLI::App& app, Context& ctx) {
  auto target = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("check-data", "Run every check the corpus reader makes at open, and nothing else");
  cmd->add_option("DIR", *target, "a prepared directory (train.h5, valid.h5, test.h5, tokenizer.model) or one .h5 file")
      ->required();
  cmd->callback([target, &ctx] {
    run_check_data(*target);
    ctx.status = 0;
  });
}

}  // namespace aiayn::launch
