// The intl tokenizer of sacreBLEU (TokenizerV14International, after mteval-v14.pl's international mode), on
// UTF-8 text decoded to code points.
//
// sacreBLEU applies three regular expressions of the `regex` module one after another, each with re.sub's
// leftmost, non-overlapping semantics, then collapses whitespace:
//   (\P{N})(\p{P}) -> "\1 \2 "     punctuation after a non-number
//   (\p{P})(\P{N}) -> " \1 \2"     punctuation before a non-number
//   (\p{S})        -> " \1 "       every symbol
//   ' '.join(line.split())
// Each pattern is a fixed one- or two-character pattern, so each pass is one scan that copies a character,
// or on a match emits the replacement and resumes after the matched characters. The categories come from
// unicode_categories.inc, generated from the `regex` module itself (trainer/tools/gen_unicode_categories.py).
// Bytes that are not valid UTF-8 (which sacreBLEU cannot read at all) pass through as characters of no class.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/bleu.hpp"
#include "unicode_space.hpp"

namespace aiayn::trainer {
namespace {

struct CategoryRange {
  uint32_t first, last;
  char cls;  // 'P', 'S' or 'N'
};

constexpr CategoryRange kCategories[] = {
#include "unicode_categories.inc"
};

char category_of(uint32_t cp) {
  const auto* end = std::end(kCategories);
  const auto* it = std::upper_bound(std::begin(kCategories), end, cp,
                                    [](uint32_t c, const CategoryRange& r) { return c < r.first; });
  if (it == std::begin(kCategories)) return 0;
  --it;
  return cp <= it->last ? it->cls : 0;
}

// A character: its bytes in the input (one code point, or one invalid byte) and its class.
struct Char {
  std::string bytes;
  char cls = 0;
};

std::vector<Char> decode(const std::string& s) {
  std::vector<Char> out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    std::size_t len = b0 < 0x80 ? 1 : (b0 >> 5) == 0x6 ? 2 : (b0 >> 4) == 0xE ? 3 : (b0 >> 3) == 0x1E ? 4 : 0;
    uint32_t cp = len == 1 ? b0 : len == 2 ? (b0 & 0x1Fu) : len == 3 ? (b0 & 0x0Fu) : (b0 & 0x07u);
    bool valid = len > 0 && i + len <= s.size();
    for (std::size_t k = 1; valid && k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      valid = (b & 0xC0) == 0x80;
      cp = (cp << 6) | (b & 0x3Fu);
    }
    if (valid)  // overlong forms, surrogates and values past U+10FFFF are not UTF-8
      valid = !(len == 2 && cp < 0x80) && !(len == 3 && cp < 0x800) && !(len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) &&
              !(cp >= 0xD800 && cp <= 0xDFFF);
    if (!valid) {
      out.push_back({s.substr(i, 1), 0});
      ++i;
      continue;
    }
    out.push_back({s.substr(i, len), category_of(cp)});
    i += len;
  }
  return out;
}

const Char kSpace{" ", 0};

// One re.sub pass of the two-character pattern (first matches, second matches) -> "pre \1 mid \2 post", where
// pre/mid/post are each a space or nothing.
template <class First, class Second>
std::vector<Char> pass(const std::vector<Char>& in, First first, Second second, bool pre, bool mid, bool post) {
  std::vector<Char> out;
  out.reserve(in.size() + in.size() / 2);
  for (std::size_t i = 0; i < in.size();) {
    if (i + 1 < in.size() && first(in[i].cls) && second(in[i + 1].cls)) {
      if (pre) out.push_back(kSpace);
      out.push_back(in[i]);
      if (mid) out.push_back(kSpace);
      out.push_back(in[i + 1]);
      if (post) out.push_back(kSpace);
      i += 2;
    } else {
      out.push_back(in[i]);
      ++i;
    }
  }
  return out;
}

}  // namespace

std::string tokenize_intl(const std::string& line) {
  const auto is_p = [](char c) { return c == 'P'; };
  const auto not_n = [](char c) { return c != 'N'; };
  std::vector<Char> chars = decode(line);
  chars = pass(chars, not_n, is_p, false, true, true);  // (\P{N})(\p{P}) -> "\1 \2 "
  chars = pass(chars, is_p, not_n, true, true, false);  // (\p{P})(\P{N}) -> " \1 \2"
  std::string spaced;                                    // (\p{S}) -> " \1 "
  spaced.reserve(line.size() * 2);
  for (const Char& c : chars) {
    if (c.cls == 'S') spaced += ' ';
    spaced += c.bytes;
    if (c.cls == 'S') spaced += ' ';
  }
  std::string out;
  for (const std::string& token : detail::split_whitespace(spaced)) {
    if (!out.empty()) out += ' ';
    out += token;
  }
  return out;
}

}  // namespace aiayn::trainer
