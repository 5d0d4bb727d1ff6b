#pragma once
// SHA-256 (FIPS 180-4), incremental. Used for the tokenizer hash and the corpus fingerprint; checked against
// the standard known answers in tests/data/test_sha256.cpp.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace aiayn::data {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  void update(const std::string& s) { update(s.data(), s.size()); }
  std::array<uint8_t, 32> digest();  // finishes; the object must not be updated afterwards
  std::string hex_digest();

 private:
  void compress(const uint8_t* block);
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buffer_;
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

std::string sha256_hex(const std::string& bytes);

}  // namespace aiayn::data
