// Test-only fault injection parsed once (see fault_injection.hpp).
#include "trainer/fault_injection.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <tuple>

#include "aiayn/error.hpp"

namespace aiayn::trainer {
namespace {

// A whole decimal integer in [lo, hi], or an error naming the variable and the item.
int64_t parse_integer(const char* var, const std::string& value, const std::string& item, int64_t lo, int64_t hi) {
  size_t used = 0;
  long long v = 0;
  bool ok = !item.empty() && (std::isdigit(static_cast<unsigned char>(item[0])) != 0);
  if (ok) {
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      ok = false;
    }
  }
  AIAYN_CHECK(ok && used == item.size() && v >= lo && v <= hi,
              fmt::format("{}='{}': '{}' is not a whole number >= {} (test fault injection; see "
                          "trainer/fault_injection.hpp)", var, value, item, lo));
  return v;
}

std::vector<std::string> split_list(const char* var, const std::string& value) {
  std::vector<std::string> items;
  size_t from = 0;
  while (true) {
    const size_t comma = value.find(',', from);
    items.push_back(value.substr(from, comma == std::string::npos ? std::string::npos : comma - from));
    if (comma == std::string::npos) break;
    from = comma + 1;
  }
  for (const auto& item : items)
    AIAYN_CHECK(!item.empty(), fmt::format("{}='{}': an empty item in the list", var, value));
  return items;
}

constexpr int64_t kMaxRank = 1 << 20, kMaxStep = int64_t(1) << 62;

std::pair<int, int64_t> parse_rank_step(const char* var, const std::string& value, const std::string& item) {
  const size_t colon = item.find(':');
  AIAYN_CHECK(colon != std::string::npos,
              fmt::format("{}='{}': '{}' is not rank:step (test fault injection)", var, value, item));
  return {static_cast<int>(parse_integer(var, value, item.substr(0, colon), 0, kMaxRank)),
          parse_integer(var, value, item.substr(colon + 1), 1, kMaxStep)};
}

}  // namespace

bool FaultInjection::poison_gradients(int rank, int64_t step) const {
  return std::find(nan_at.begin(), nan_at.end(), std::make_pair(rank, step)) != nan_at.end();
}

int64_t FaultInjection::backward_failure_step(int rank) const {
  return rank == fail_in_backward_rank ? fail_in_backward_step : -1;
}

FaultInjection FaultInjection::parse(const std::function<const char*(const char*)>& lookup) {
  FaultInjection f;
  if (const char* v = lookup("AIAYN_TEST_NAN_AT"))
    for (const auto& item : split_list("AIAYN_TEST_NAN_AT", v))
      f.nan_at.push_back(parse_rank_step("AIAYN_TEST_NAN_AT", v, item));
  if (const char* v = lookup("AIAYN_TEST_FAIL_SAVE_AT"))
    for (const auto& item : split_list("AIAYN_TEST_FAIL_SAVE_AT", v))
      f.fail_save_at.push_back(parse_integer("AIAYN_TEST_FAIL_SAVE_AT", v, item, 1, kMaxStep));
  if (const char* v = lookup("AIAYN_TEST_FAIL_IN_BACKWARD"))
    std::tie(f.fail_in_backward_rank, f.fail_in_backward_step) = parse_rank_step("AIAYN_TEST_FAIL_IN_BACKWARD", v, v);
  if (const char* v = lookup("AIAYN_TEST_FORCE_OVERLAP")) {
    const std::string s(v);
    AIAYN_CHECK(s == "0" || s == "1", fmt::format("AIAYN_TEST_FORCE_OVERLAP='{}': use 1 (on) or 0 (off)", s));
    f.force_overlap = s == "1";
  }
  return f;
}

FaultInjection FaultInjection::from_env() {
  return parse([](const char* name) { return std::getenv(name); });
}

}  // namespace aiayn::trainer
