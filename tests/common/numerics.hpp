#pragma once
// Error norms and random inputs shared by the numerical tests (tests/cuda, tests/kernels, tests/emu, ...).
//
// The norm every cross-backend comparison uses is the normalised maximum error
//     max_i |got_i - want_i| / max_i |want_i|          (the absolute error when want is all zero)
// over the finite reference values, after non-finite parity (NaN where NaN, inf where inf). One number per
// buffer, independent of the buffer's scale, and no fraction of elements is ever allowed to fail.
#include <gtest/gtest.h>

#include <cstddef>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace aiayn::testing {

// n values uniform in [lo, hi) from `rng` (the same sequence as before this helper was shared).
std::vector<float> random_floats(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f);

// The normalised maximum error of the file comment; +inf on a size or non-finite mismatch. `worst` (if given)
// receives the index of the largest error.
double max_rel_diff(const std::vector<float>& got, const std::vector<float>& want, size_t* worst = nullptr);
double max_rel_diff(const std::vector<double>& got, const std::vector<double>& want, size_t* worst = nullptr);

// Non-finite parity, then max_rel_diff(got, want) <= tol; the failure names `what`, the worst element and both
// values.
::testing::AssertionResult close(const std::string& what, const std::vector<float>& got,
                                 const std::vector<float>& want, double tol);
// |got - want| / |want| <= tol for one number.
::testing::AssertionResult close_scalar(const std::string& what, double got, double want, double tol);
// The same bytes (sizes equal, memcmp).
bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b);

// sqrt(sum (a - b)^2 / sum b^2): a whole-buffer relative error (one vector, or every tensor of a map by name).
double relative_l2(const std::vector<float>& a, const std::vector<float>& b);
double relative_l2(const std::map<std::string, std::vector<float>>& a,
                   const std::map<std::string, std::vector<float>>& b);

}  // namespace aiayn::testing
