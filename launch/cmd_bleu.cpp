// aiayn bleu --ref FILE [--tokenize 13a|intl|none] < hyp: corpus BLEU of the hypotheses on stdin against the
// reference file, exactly as `sacrebleu FILE [--tokenize ...] < hyp` computes it (13a by default). One JSON object
// on stdout (score unrounded), sacreBLEU's one-line summary on stderr. Lines are read as sacrebleu reads them: stdin with universal newlines, the
// reference file split at "\n" only.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "aiayn/error.hpp"
#include "commands.hpp"
#include "trainer/bleu.hpp"

namespace aiayn::launch {
namespace {

std::string read_file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  AIAYN_CHECK(in.is_open(), "bleu: cannot open the reference file '" + path + "'");
  std::ostringstream bytes;
  bytes << in.rdbuf();
  AIAYN_CHECK(!in.bad(), "bleu: cannot read the reference file '" + path + "'");
  return bytes.str();
}

std::string read_stdin_bytes() {
  std::ios::sync_with_stdio(false);
  std::cin >> std::noskipws;
  std::string text{std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()};
  AIAYN_CHECK(!std::cin.bad(), "bleu: cannot read the hypotheses from stdin");
  return text;
}

void run_bleu(const std::string& ref_path, const std::string& tokenize) {
  const std::vector<std::string> refs = trainer::split_lines(read_file_bytes(ref_path), false);
  const std::vector<std::string> hyps = trainer::split_lines(read_stdin_bytes(), true);
  AIAYN_CHECK(hyps.size() == refs.size(), "bleu: stdin has " + std::to_string(hyps.size()) +
                                              " hypothesis lines but the reference file '" + ref_path + "' has " +
                                              std::to_string(refs.size()) + " lines");
  const trainer::BleuResult result = trainer::corpus_bleu(hyps, refs, trainer::parse_bleu_tokenize(tokenize));

  nlohmann::json out;
  out["score"] = result.score;
  out["counts"] = result.counts;
  out["totals"] = result.totals;
  out["sys_len"] = result.sys_len;
  out["ref_len"] = result.ref_len;
  out["bp"] = result.bp;
  out["signature"] = result.signature;
  std::cout << out.dump() << std::endl;
  std::cerr << result.summary_line() << std::endl;
}

}  // namespace

void add_bleu_command(CLI::App& app, Context& ctx) {
  auto ref_path = std::make_shared<std::string>();
  auto tokenize = std::make_shared<std::string>("13a");
  CLI::App* cmd = app.add_subcommand("bleu", "Corpus BLEU of stdin against --ref, as sacreBLEU computes it");
  cmd->add_option("--ref", *ref_path, "reference file, one sentence a line")->required();
  cmd->add_option("--tokenize", *tokenize, "as sacreBLEU's --tokenize: 13a (default), intl, none (pre-tokenized text)")
      ->capture_default_str()
      ->check(CLI::IsMember({"13a", "intl", "none"}));
  cmd->callback([ref_path, tokenize, &ctx] {
    run_bleu(*ref_path, *tokenize);
    ctx.status = 0;
  });
}

}  // namespace aiayn::launch
