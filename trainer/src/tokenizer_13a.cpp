// The 13a tokenizer of sacreBLEU (mteval-v13a.pl's), on UTF-8 bytes.
//
// sacreBLEU applies four regular expressions one after another, each with re.sub's leftmost, non-overlapping
// semantics; each pattern here is a fixed one- or two-character pattern, so each pass is one scan that copies
// a byte, or on a match emits the replacement and resumes after the matched characters. Working on bytes
// instead of code points gives the same output: every pattern's fixed characters are ASCII, "[^0-9]" matches
// any byte of a multi-byte character just as it matches the whole character, and only spaces are inserted.
#include <string>

#include "trainer/bleu.hpp"
#include "unicode_space.hpp"

namespace aiayn::trainer {
namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_period_or_comma(char c) { return c == '.' || c == ','; }

// Python's str.replace(from, to): every non-overlapping occurrence, left to right.
std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  out.reserve(s.size());
  std::size_t pos = 0;
  for (std::size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out += to;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

// The character class [\{-\~\[-\` -\&\(-\+\:-\@\/]: ASCII punctuation and symbols except ' - . , and the
// space itself (which is in the range " -&" and harmless to pad).
bool is_separated_symbol(char ch) {
  const auto c = static_cast<unsigned char>(ch);
  return (c >= '{' && c <= '~') || (c >= '[' && c <= '`') || (c >= ' ' && c <= '&') || (c >= '(' && c <= '+') ||
         (c >= ':' && c <= '@') || c == '/';
}

// One re.sub pass of a two-character pattern (first, second) -> replacement.
template <typename Match, typename Emit>
std::string substitute_pairs(const std::string& s, Match match, Emit emit) {
  std::string out;
  out.reserve(s.size() + s.size() / 4);
  std::size_t i = 0;
  while (i < s.size()) {
    if (i + 1 < s.size() && match(s[i], s[i + 1])) {
      emit(out, s[i], s[i + 1]);
      i += 2;
    } else {
      out += s[i];
      i += 1;
    }
  }
  return out;
}

// ' '.join(s.split()): tokens separated by single spaces, no leading or trailing space.
std::string normalize_whitespace(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  std::size_t i = 0;
  bool pending_space = false;
  while (i < s.size()) {
    if (const std::size_t len = detail::whitespace_at(s, i)) {
      pending_space = !out.empty();
      i += len;
      continue;
    }
    if (pending_space) out += ' ';
    pending_space = false;
    out += s[i];
    i += 1;
  }
  return out;
}

}  // namespace

std::string tokenize_13a(const std::string& line) {
  // Language-independent part.
  std::string s = replace_all(line, "<skipped>", "");
  s = replace_all(s, "-\n", "");
  s = replace_all(s, "\n", " ");
  s = replace_all(s, "&quot;", "\"");
  s = replace_all(s, "&amp;", "&");
  s = replace_all(s, "&lt;", "<");
  s = replace_all(s, "&gt;", ">");
  s = " " + s + " ";

  // Symbols and punctuation (except ' - . ,) become tokens of their own.
  std::string padded;
  padded.reserve(s.size() * 2);
  for (char c : s) {
    if (is_separated_symbol(c)) {
      padded += ' ';
      padded += c;
      padded += ' ';
    } else {
      padded += c;
    }
  }
  // Period and comma unless preceded by a digit: ([^0-9])([\.,]) -> "\1 \2 ".
  s = substitute_pairs(
      padded, [](char a, char b) { return !is_digit(a) && is_period_or_comma(b); },
      [](std::string& out, char a, char b) { out += a; out += ' '; out += b; out += ' '; });
  // Period and comma unless followed by a digit: ([\.,])([^0-9]) -> " \1 \2".
  s = substitute_pairs(
      s, [](char a, char b) { return is_period_or_comma(a) && !is_digit(b); },
      [](std::string& out, char a, char b) { out += ' '; out += a; out += ' '; out += b; });
  // Dash when preceded by a digit: ([0-9])(-) -> "\1 \2 ".
  s = substitute_pairs(
      s, [](char a, char b) { return is_digit(a) && b == '-'; },
      [](std::string& out, char a, char b) { out += a; out += ' '; out += b; out += ' '; });

  return normalize_whitespace(s);
}

}  // namespace aiayn::trainer
