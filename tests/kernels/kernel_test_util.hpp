#pragma once
// Helpers for the kernel tests: seeded random tensors and a central finite-difference gradient check.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace aiayn::testing {

struct Rng {
  std::mt19937_64 gen;
  explicit Rng(uint64_t seed) : gen(seed) {}
  double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(gen); }
  int integer(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen); }  // [lo, hi]
  template <class T>
  std::vector<T> vec(size_t n, double lo = -1.0, double hi = 1.0) {
    std::vector<T> v(n);
    for (auto& x : v) x = static_cast<T>(uniform(lo, hi));
    return v;
  }
};

// Central differences in double: error = O(h^2 f''') + O(ulp(L) / h). With h = 1e-5 and L of order 1-100,
// truncation is ~1e-10 and rounding ~1e-9, so |analytic - fd| <= 1e-6 + 1e-5 |fd| leaves three orders of
// magnitude of room, while a wrong sign or a missing term is an O(1) relative error and fails.
constexpr double kFdStep = 1e-5;
constexpr double kFdAbsTol = 1e-6;
constexpr double kFdRelTol = 1e-5;

// Compares analytic[i] with the central difference of loss() in x[i], for every i. x is perturbed in place
// and restored.
inline void expect_gradient(std::vector<double>& x, const std::vector<double>& analytic,
                            const std::function<double()>& loss, const std::string& what) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  int failures = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + kFdStep;
    const double plus = loss();
    x[i] = saved - kFdStep;
    const double minus = loss();
    x[i] = saved;
    const double fd = (plus - minus) / (2 * kFdStep);
    const double tol = kFdAbsTol + kFdRelTol * std::fabs(fd);
    if (!(std::fabs(analytic[i] - fd) <= tol) && failures++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: analytic " << analytic[i] << " vs finite difference " << fd;
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << x.size() << " entries differ";
}

inline double weighted_sum(const std::vector<double>& w, const std::vector<double>& y) {
  double s = 0.0;
  for (size_t i = 0; i < y.size(); ++i) s += w[i] * y[i];
  return s;
}

}  // namespace aiayn::testing
