#pragma once
// Python's notion of whitespace (str.isspace, used by str.split() and str.rstrip()) on UTF-8 bytes:
// U+0009..U+000D, U+001C..U+0020, U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F,
// U+3000. Every multi-byte one starts with a lead byte (C2, E1, E2, E3), never a continuation byte, so a scan
// that steps one byte at a time cannot match inside another character.
#include <cstddef>
#include <string>
#include <vector>

namespace aiayn::trainer::detail {

// The length in bytes of the whitespace character that starts at s[i], or 0 when there is none.
inline std::size_t whitespace_at(const std::string& s, std::size_t i) {
  const auto b = [&](std::size_t k) { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0u; };
  const unsigned c0 = b(0);
  if ((c0 >= 0x09 && c0 <= 0x0D) || (c0 >= 0x1C && c0 <= 0x20)) return 1;
  if (c0 == 0xC2 && (b(1) == 0x85 || b(1) == 0xA0)) return 2;
  if (c0 == 0xE1 && b(1) == 0x9A && b(2) == 0x80) return 3;  // U+1680
  if (c0 == 0xE2 && b(1) == 0x80) {
    const unsigned c2 = b(2);
    if ((c2 >= 0x80 && c2 <= 0x8A) || c2 == 0xA8 || c2 == 0xA9 || c2 == 0xAF) return 3;  // U+2000..200A, 2028/9, 202F
  }
  if (c0 == 0xE2 && b(1) == 0x81 && b(2) == 0x9F) return 3;  // U+205F
  if (c0 == 0xE3 && b(1) == 0x80 && b(2) == 0x80) return 3;  // U+3000
  return 0;
}

// The length of the whitespace character that ends s[0, end), or 0.
inline std::size_t whitespace_before(const std::string& s, std::size_t end) {
  for (std::size_t len = 1; len <= 3 && len <= end; ++len) {
    if (whitespace_at(s, end - len) == len) return len;
  }
  return 0;
}

// Python's str.rstrip() with no argument.
inline std::string rstrip_whitespace(const std::string& s) {
  std::size_t end = s.size();
  while (std::size_t len = whitespace_before(s, end)) end -= len;
  return s.substr(0, end);
}

// Python's str.split() with no argument: the runs of non-whitespace characters.
inline std::vector<std::string> split_whitespace(const std::string& s) {
  std::vector<std::string> tokens;
  std::size_t i = 0, start = 0;
  bool in_token = false;
  while (i < s.size()) {
    if (const std::size_t len = whitespace_at(s, i)) {
      if (in_token) tokens.push_back(s.substr(start, i - start));
      in_token = false;
      i += len;
    } else {
      if (!in_token) start = i;
      in_token = true;
      ++i;
    }
  }
  if (in_token) tokens.push_back(s.substr(start));
  return tokens;
}

}  // namespace aiayn::trainer::detail
