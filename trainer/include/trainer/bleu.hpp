#pragma once
// Corpus BLEU exactly as sacreBLEU 2.x computes it: tokenizer 13a by default (or `intl`, or `none` for text
// that is already tokenized), case-sensitive, n-grams up to 4, smoothing "exp", no effective order, one
// reference per line, statistics summed over the corpus before the score is taken. Hypotheses and references
// are UTF-8 lines without their newline.
//
// Invariants:
//  - Each line is first stripped of trailing whitespace (Python's str.rstrip(): Unicode whitespace), then
//    tokenized (tokenize_13a, tokenize_intl, or left as it is); tokens are split on Unicode whitespace as
//    Python's str.split() does.
//  - counts[n-1] / totals[n-1] are the clipped matches / hypothesis n-grams of order n summed over all lines;
//    sys_len and ref_len are token counts. They are integers, so statistics computed on disjoint shards of a
//    corpus can be summed (BleuStats::operator+=) and scored once, with the same result as the whole corpus.
//  - An empty reference line counts as zero tokens, as in sacreBLEU 2.6.0.
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace aiayn::trainer {

inline constexpr int kBleuMaxOrder = 4;

// The signature sacreBLEU prints for the default settings (version: the sacreBLEU release this matches).
inline constexpr const char* kBleuSignature = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0";

// sacreBLEU's --tokenize choices that aiayn implements.
enum class BleuTokenize { k13a, kIntl, kNone };
// "13a" | "intl" | "none" -> the enum; anything else throws aiayn::Error naming the value.
BleuTokenize parse_bleu_tokenize(const std::string& name);
const char* bleu_tokenize_name(BleuTokenize tokenize);
// kBleuSignature with "tok:<name>".
std::string bleu_signature(BleuTokenize tokenize);

// Sufficient statistics of corpus BLEU.
struct BleuStats {
  std::array<int64_t, kBleuMaxOrder> counts{};  // matched n-grams (clipped by the reference), order 1..4
  std::array<int64_t, kBleuMaxOrder> totals{};  // hypothesis n-grams, order 1..4
  int64_t sys_len = 0;                          // hypothesis tokens
  int64_t ref_len = 0;                          // reference tokens

  BleuStats& operator+=(const BleuStats& other);
};

struct BleuResult {
  double score = 0.0;  // 0..100, unrounded
  std::array<int64_t, kBleuMaxOrder> counts{};
  std::array<int64_t, kBleuMaxOrder> totals{};
  std::array<double, kBleuMaxOrder> precisions{};  // percent, after exp smoothing
  int64_t sys_len = 0;
  int64_t ref_len = 0;
  double bp = 0.0;     // brevity penalty
  double ratio = 0.0;  // sys_len / ref_len (0 when ref_len is 0)
  std::string signature = kBleuSignature;

  // sacreBLEU's one-line summary, e.g.
  // "BLEU = 44.66 80.0/61.5/36.4/22.2 (BP = 1.000 ratio = 1.000 hyp_len = 15 ref_len = 15)".
  std::string summary_line() const;
};

// The 13a tokenization of one line (sacreBLEU's Tokenizer13a; no stripping of its own beyond what 13a does).
std::string tokenize_13a(const std::string& line);
// The intl tokenization of one line (sacreBLEU's TokenizerV14International): tokens joined by single spaces.
std::string tokenize_intl(const std::string& line);

// The statistics of one hypothesis line against one reference line.
BleuStats sentence_bleu_stats(const std::string& hyp, const std::string& ref,
                              BleuTokenize tokenize = BleuTokenize::k13a);

// Statistics summed over a corpus. Throws aiayn::Error when the line counts differ.
BleuStats corpus_bleu_stats(const std::vector<std::string>& hyps, const std::vector<std::string>& refs,
                            BleuTokenize tokenize = BleuTokenize::k13a);

// The score from (possibly gathered) statistics: brevity penalty, exp smoothing, geometric mean. The
// tokenizer only names itself in the signature.
BleuResult bleu_from_stats(const BleuStats& stats, BleuTokenize tokenize = BleuTokenize::k13a);

// corpus_bleu_stats then bleu_from_stats. Throws aiayn::Error when the line counts differ or are zero.
BleuResult corpus_bleu(const std::vector<std::string>& hyps, const std::vector<std::string>& refs,
                       BleuTokenize tokenize = BleuTokenize::k13a);

// Splits text into lines the way sacrebleu reads its inputs: at "\n" (references, opened with newline="\n"),
// or also at "\r\n" and a lone "\r" when universal_newlines (hypotheses on stdin). A final line without a
// newline is kept; an empty text has no lines.
std::vector<std::string> split_lines(const std::string& text, bool universal_newlines);

}  // namespace aiayn::trainer
