// Corpus BLEU as sacreBLEU 2.x computes it by default (see bleu.hpp for the invariants).
//
// The arithmetic follows sacreBLEU's order of operations so that the double results agree to the last bit
// on the same libm: precision = 100 * correct / total; under exp smoothing the k-th order with no match gets
// 100 / (2^k * total); the log of a zero precision is floored at -9999999999; the four logs are summed from
// order 1 up and divided by 4; bp = exp(1 - ref_len / sys_len) when the hypothesis is shorter.
#include "trainer/bleu.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <unordered_map>
#include <vector>

#include "aiayn/error.hpp"
#include "unicode_space.hpp"

namespace aiayn::trainer {
namespace {

// sacreBLEU's my_log: log, with log(0) floored to a very low number instead of -inf.
double floored_log(double x) { return x == 0.0 ? -9999999999.0 : std::log(x); }

// The tokens of a line after sacreBLEU's preprocessing: rstrip, tokenize, str.split().
std::vector<std::string> preprocess(const std::string& line, BleuTokenize tokenize) {
  const std::string stripped = detail::rstrip_whitespace(line);
  switch (tokenize) {
    case BleuTokenize::k13a: return detail::split_whitespace(tokenize_13a(stripped));
    case BleuTokenize::kIntl: return detail::split_whitespace(tokenize_intl(stripped));
    case BleuTokenize::kNone: return detail::split_whitespace(stripped);
  }
  return {};
}

// Counts of every n-gram of order 1..kBleuMaxOrder, keyed by its tokens joined with single spaces (tokens
// hold no whitespace, and the number of spaces tells the order, so the key is unambiguous).
std::unordered_map<std::string, int64_t> count_ngrams(const std::vector<std::string>& tokens) {
  std::unordered_map<std::string, int64_t> counts;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    std::string key = tokens[i];
    ++counts[key];
    for (std::size_t n = 2; n <= kBleuMaxOrder && i + n <= tokens.size(); ++n) {
      key += ' ';
      key += tokens[i + n - 1];
      ++counts[key];
    }
  }
  return counts;
}

int order_of(const std::string& key) {
  int spaces = 0;
  for (char c : key) spaces += c == ' ';
  return spaces + 1;
}

std::string format_fixed(double value, int decimals) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", decimals, value);
  return buffer;
}

}  // namespace

BleuStats& BleuStats::operator+=(const BleuStats& other) {
  for (int n = 0; n < kBleuMaxOrder; ++n) {
    counts[n] += other.counts[n];
    totals[n] += other.totals[n];
  }
  sys_len += other.sys_len;
  ref_len += other.ref_len;
  return *this;
}

BleuTokenize parse_bleu_tokenize(const std::string& name) {
  if (name == "13a") return BleuTokenize::k13a;
  if (name == "intl") return BleuTokenize::kIntl;
  if (name == "none") return BleuTokenize::kNone;
  AIAYN_FAIL("BLEU: --tokenize must be 13a, intl or none (got \"" + name + "\")");
}

const char* bleu_tokenize_name(BleuTokenize tokenize) {
  switch (tokenize) {
    case BleuTokenize::k13a: return "13a";
    case BleuTokenize::kIntl: return "intl";
    case BleuTokenize::kNone: return "none";
  }
  return "?";
}

std::string bleu_signature(BleuTokenize tokenize) {
  std::string s = kBleuSignature;
  const std::string from = "tok:13a";
  s.replace(s.find(from), from.size(), std::string("tok:") + bleu_tokenize_name(tokenize));
  return s;
}

BleuStats sentence_bleu_stats(const std::string& hyp, const std::string& ref, BleuTokenize tokenize) {
  const std::vector<std::string> hyp_tokens = preprocess(hyp, tokenize);
  const std::vector<std::string> ref_tokens = preprocess(ref, tokenize);
  const auto ref_counts = count_ngrams(ref_tokens);
  BleuStats stats;
  stats.sys_len = static_cast<int64_t>(hyp_tokens.size());
  stats.ref_len = static_cast<int64_t>(ref_tokens.size());
  for (const auto& [ngram, count] : count_ngrams(hyp_tokens)) {
    const int n = order_of(ngram);
    stats.totals[n - 1] += count;
    const auto it = ref_counts.find(ngram);
    if (it != ref_counts.end()) stats.counts[n - 1] += std::min(count, it->second);
  }
  return stats;
}

BleuStats corpus_bleu_stats(const std::vector<std::string>& hyps, const std::vector<std::string>& refs,
                            BleuTokenize tokenize) {
  AIAYN_CHECK(hyps.size() == refs.size(), "BLEU: the hypotheses have " + std::to_string(hyps.size()) +
                                              " lines but the references have " + std::to_string(refs.size()));
  BleuStats stats;
  for (std::size_t i = 0; i < hyps.size(); ++i) stats += sentence_bleu_stats(hyps[i], refs[i], tokenize);
  return stats;
}

BleuResult bleu_from_stats(const BleuStats& stats, BleuTokenize tokenize) {
  BleuResult r;
  r.signature = bleu_signature(tokenize);
  r.counts = stats.counts;
  r.totals = stats.totals;
  r.sys_len = stats.sys_len;
  r.ref_len = stats.ref_len;
  r.ratio = stats.ref_len ? static_cast<double>(stats.sys_len) / static_cast<double>(stats.ref_len) : 0.0;
  if (stats.sys_len < stats.ref_len) {
    r.bp = stats.sys_len > 0
               ? std::exp(1.0 - static_cast<double>(stats.ref_len) / static_cast<double>(stats.sys_len))
               : 0.0;
  } else {
    r.bp = 1.0;
  }

  bool any_match = false;
  for (int64_t c : stats.counts) any_match = any_match || c != 0;
  if (!any_match) {  // sacreBLEU stops early: score 0, all precisions 0
    r.score = 0.0;
    return r;
  }

  double smooth = 1.0;
  for (int n = 0; n < kBleuMaxOrder; ++n) {
    if (stats.totals[n] == 0) break;  // no n-grams of this order or above: their precisions stay 0
    if (stats.counts[n] == 0) {
      smooth *= 2.0;
      r.precisions[n] = 100.0 / (smooth * static_cast<double>(stats.totals[n]));
    } else {
      r.precisions[n] = 100.0 * static_cast<double>(stats.counts[n]) / static_cast<double>(stats.totals[n]);
    }
  }
  double log_sum = 0.0;
  for (double p : r.precisions) log_sum += floored_log(p);
  r.score = r.bp * std::exp(log_sum / kBleuMaxOrder);
  return r;
}

BleuResult corpus_bleu(const std::vector<std::string>& hyps, const std::vector<std::string>& refs,
                       BleuTokenize tokenize) {
  AIAYN_CHECK(!hyps.empty() || !refs.empty(), "BLEU: there are no hypotheses and no references to score");
  return bleu_from_stats(corpus_bleu_stats(hyps, refs, tokenize), tokenize);
}

std::string BleuResult::summary_line() const {
  std::string line = "BLEU = " + format_fixed(score, 2) + " ";
  for (int n = 0; n < kBleuMaxOrder; ++n) {
    if (n) line += '/';
    line += format_fixed(precisions[n], 1);
  }
  line += " (BP = " + format_fixed(bp, 3) + " ratio = " + format_fixed(ratio, 3) +
          " hyp_len = " + std::to_string(sys_len) + " ref_len = " + std::to_string(ref_len) + ")";
  return line;
}

std::vector<std::string> split_lines(const std::string& text, bool universal_newlines) {
  std::vector<std::string> lines;
  std::string current;
  bool open = false;  // current holds a line that has not ended yet
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const bool is_cr = universal_newlines && c == '\r';
    if (c == '\n' || is_cr) {
      lines.push_back(std::move(current));
      current.clear();
      open = false;
      if (is_cr && i + 1 < text.size() && text[i + 1] == '\n') ++i;
    } else {
      current += c;
      open = true;
    }
  }
  if (open) lines.push_back(std::move(current));
  return lines;
}

}  // namespace aiayn::trainer
