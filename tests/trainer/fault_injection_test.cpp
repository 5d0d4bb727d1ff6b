// Test fault injection (trainer/fault_injection.hpp): each variable's form, and malformed values refused with
// the variable's name (a fault that silently never fires would let a fault test pass by accident).
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "aiayn/error.hpp"
#include "trainer/fault_injection.hpp"

namespace aiayn::trainer {
namespace {

FaultInjection parse(const std::map<std::string, std::string>& env) {
  return FaultInjection::parse([&](const char* name) -> const char* {
    const auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

TEST(FaultInjection, NothingSetInjectsNothing) {
  const FaultInjection f = parse({});
  EXPECT_TRUE(f.nan_at.empty());
  EXPECT_TRUE(f.fail_save_at.empty());
  EXPECT_EQ(f.backward_failure_step(0), -1);
  EXPECT_FALSE(f.force_overlap);
  EXPECT_FALSE(f.poison_gradients(0, 1));
}

TEST(FaultInjection, NanAtListsRankStepPairs) {
  const FaultInjection f = parse({{"AIAYN_TEST_NAN_AT", "0:2,1:3,0:10"}});
  EXPECT_TRUE(f.poison_gradients(0, 2));
  EXPECT_TRUE(f.poison_gradients(1, 3));
  EXPECT_TRUE(f.poison_gradients(0, 10));
  EXPECT_FALSE(f.poison_gradients(1, 2));
  EXPECT_FALSE(f.poison_gradients(0, 3));
  EXPECT_FALSE(f.poison_gradients(2, 2));
}

TEST(FaultInjection, FailSaveAtListsSteps) {
  EXPECT_EQ(parse({{"AIAYN_TEST_FAIL_SAVE_AT", "20"}}).fail_save_at, (std::vector<int64_t>{20}));
  EXPECT_EQ(parse({{"AIAYN_TEST_FAIL_SAVE_AT", "3,7"}}).fail_save_at, (std::vector<int64_t>{3, 7}));
}

TEST(FaultInjection, FailInBackwardNamesOneRankAndStep) {
  const FaultInjection f = parse({{"AIAYN_TEST_FAIL_IN_BACKWARD", "1:4"}});
  EXPECT_EQ(f.backward_failure_step(1), 4);
  EXPECT_EQ(f.backward_failure_step(0), -1);
}

TEST(FaultInjection, ForceOverlapIsOneOrZero) {
  EXPECT_TRUE(parse({{"AIAYN_TEST_FORCE_OVERLAP", "1"}}).force_overlap);
  EXPECT_FALSE(parse({{"AIAYN_TEST_FORCE_OVERLAP", "0"}}).force_overlap);
}

TEST(FaultInjection, AMalformedValueIsAnErrorNamingTheVariable) {
  const std::map<std::string, std::vector<std::string>> bad = {
      {"AIAYN_TEST_NAN_AT", {"", "3", "1:", ":3", "a:3", "1:x", "1:3,", "1:3,,2:4", "1:0", "-1:3", "1:3x", "1: 3", "1:2:3"}},
      {"AIAYN_TEST_FAIL_SAVE_AT", {"", "x", "20,", "0", "-5", "2.5", "99999999999999999999"}},
      {"AIAYN_TEST_FAIL_IN_BACKWARD", {"", "1", "1:x", "0:1,1:2", "1:0"}},
      {"AIAYN_TEST_FORCE_OVERLAP", {"", "yes", "2", "true"}},
  };
  for (const auto& [name, values] : bad)
    for (const auto& value : values) {
      try {
        parse({{name, value}});
        ADD_FAILURE() << name << "='" << value << "' was accepted";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(name + "='" + value + "'"), std::string::npos) << e.what();
      }
    }
}

}  // namespace
}  // namespace aiayn::trainer
