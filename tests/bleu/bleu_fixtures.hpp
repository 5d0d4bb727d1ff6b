#pragma once
// The golden BLEU fixtures: <shared>/data/bleu/<name>.hyp, <name>.ref, and expected.json with sacreBLEU
// 2.6.0's statistics for each name.
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "process.hpp"
#include "test_env.hpp"
#include "trainer/bleu.hpp"

namespace aiayn::testing {

inline std::string bleu_fixture_dir() { return shared_dir() + "/data/bleu"; }

inline bool bleu_fixtures_present() {
  return std::filesystem::exists(bleu_fixture_dir() + "/expected.json");
}

inline std::string read_bytes(const std::string& path) { return read_file(path); }  // tests/common/process.hpp

// One result against sacreBLEU's figures for it. Counts and lengths are integers and must agree exactly; score
// and bp are doubles computed with the same operations in the same order on the same libm, so they agree far
// inside 1e-9 (the fixture's promise).
inline void expect_bleu_matches(const aiayn::trainer::BleuResult& r, const nlohmann::json& e) {
  for (int n = 0; n < 4; ++n) {
    EXPECT_EQ(r.counts[n], e["counts"][n].get<int64_t>()) << "order " << n + 1;
    EXPECT_EQ(r.totals[n], e["totals"][n].get<int64_t>()) << "order " << n + 1;
  }
  EXPECT_EQ(r.sys_len, e["sys_len"].get<int64_t>());
  EXPECT_EQ(r.ref_len, e["ref_len"].get<int64_t>());
  EXPECT_NEAR(r.score, e["score"].get<double>(), 1e-9);
  EXPECT_NEAR(r.bp, e["bp"].get<double>(), 1e-9);
  EXPECT_EQ(r.summary_line(), e["line"].get<std::string>());
  EXPECT_EQ(r.signature, e["signature"].get<std::string>());
}

inline nlohmann::json bleu_expected() { return nlohmann::json::parse(read_bytes(bleu_fixture_dir() + "/expected.json")); }

}  // namespace aiayn::testing
