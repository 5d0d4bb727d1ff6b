#include "numerics.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace aiayn::testing {

std::vector<float> random_floats(size_t n, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

namespace {
template <class T>
double max_rel_diff_impl(const std::vector<T>& got, const std::vector<T>& want, size_t* worst) {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double max_ref = 0.0, max_err = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = double(got[i]), w = double(want[i]);
    if (std::isnan(g) != std::isnan(w) || std::isinf(g) != std::isinf(w)) {
      if (worst) *worst = i;
      return std::numeric_limits<double>::infinity();
    }
    if (!std::isfinite(w)) continue;
    max_ref = std::max(max_ref, std::fabs(w));
    const double err = std::fabs(g - w);
    if (err > max_err) {
      max_err = err;
      if (worst) *worst = i;
    }
  }
  return max_ref > 0.0 ? max_err / max_ref : max_err;
}
}  // namespace

double max_rel_diff(const std::vector<float>& got, const std::vector<float>& want, size_t* worst) {
  return max_rel_diff_impl(got, want, worst);
}
double max_rel_diff(const std::vector<double>& got, const std::vector<double>& want, size_t* worst) {
  return max_rel_diff_impl(got, want, worst);
}

::testing::AssertionResult close(const std::string& what, const std::vector<float>& got,
                                 const std::vector<float>& want, double tol) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << what << ": size " << got.size() << " != " << want.size();
  size_t worst = 0;
  const double norm = max_rel_diff(got, want, &worst);
  if (std::isinf(norm))
    return ::testing::AssertionFailure() << what << ": non-finite mismatch at " << worst << ": got " << got[worst]
                                         << ", want " << want[worst];
  if (!(norm <= tol))
    return ::testing::AssertionFailure() << what << ": normalised error " << norm << " > " << tol << " (worst at "
                                         << worst << ": got " << got[worst] << ", want " << want[worst] << ")";
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult close_scalar(const std::string& what, double got, double want, double tol) {
  const double err = std::fabs(got - want) / std::max(1e-30, std::fabs(want));
  if (!(err <= tol))
    return ::testing::AssertionFailure() << what << ": got " << got << ", want " << want << " (relative " << err
                                         << " > " << tol << ")";
  return ::testing::AssertionSuccess();
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

double relative_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    norm += double(b[i]) * b[i];
  }
  return std::sqrt(diff / std::max(norm, 1e-300));
}

double relative_l2(const std::map<std::string, std::vector<float>>& a,
                   const std::map<std::string, std::vector<float>>& b) {
  double diff = 0, norm = 0;
  for (const auto& [name, y] : b) {
    const auto& x = a.at(name);
    for (size_t i = 0; i < y.size(); ++i) {
      diff += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
      norm += double(y[i]) * y[i];
    }
  }
  return std::sqrt(diff / norm);
}

}  // namespace aiayn::testing
