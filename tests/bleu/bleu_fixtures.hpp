#pragma once
// The golden BLEU fixtures: <shared>/data/bleu/<name>.hyp, <name>.ref, and expected.json with sacreBLEU
// 2.6.0's statistics for each name.
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "test_env.hpp"

namespace aiayn::testing {

inline std::string bleu_fixture_dir() { return shared_dir() + "/data/bleu"; }

inline bool bleu_fixtures_present() {
  return std::filesystem::exists(bleu_fixture_dir() + "/expected.json");
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

inline nlohmann::json bleu_expected() { return nlohmann::json::parse(read_bytes(bleu_fixture_dir() + "/expected.json")); }

}  // namespace aiayn::testing
