// Cross-backend op tests as a table of cases, in the manner of ggml's test-backend-ops: every case is one op (or a
// forward/backward pair) at one shape with its flags (dropout, causal, padding, in place, fp32 / bf16, strided
// and fused column slices, sizes that are not multiples of any block size: one sentence, length 1, fully padded
// rows, odd widths), and one generic runner (run_case) executes it:
//   1. the case's tensors get fresh random values (drawn when the table is built, the same for both backends);
//      every output is poisoned with NaN, accumulated outputs (+=) start from the same random values;
//   2. fp32 cases run the same code on Device::CPU and Device::CUDA through the dispatcher (kernels::op(dev, args));
//      bf16 cases (the CPU has no bf16 ops) run on CUDA against a reference the case computes on the host;
//   3. every output AND every gradient buffer the case lists is compared with its check, whose limit has its
//      reason beside it in the table; the failure names the case and the buffer.
// Checks:
//   Norm        max_i |cuda_i - ref_i| / max_i |ref_i| <= limit after non-finite parity (tests/common/numerics.hpp;
//               the absolute error when the reference is all zero). Scalars: |cuda - ref| / |ref| <= limit.
//   Bits        the same bits (NaN against NaN of any payload).
//   TwiceNaive  the bf16 criterion: on bf16 inputs, an exact answer in double (the CPU reference instantiated for
//               double, or a double reference here) and a naive bf16 one (float arithmetic with the output, and
//               intermediates a naive bf16 pipeline would store, rounded to bf16); err(cuda) <= 2 err(naive) +
//               floor, errors normalised as Norm against the exact answer. The floor is the fp32 limit of the same
//               output: what float32 arithmetic itself may add, two orders of magnitude below a bf16 half-ulp
//               (2^-9), so it cannot hide a bf16-level mistake. Where the bf16 arithmetic is the CPU's float
//               arithmetic plus one final rounding (dropout, casts, the embedding table term, add, relu_backward),
//               the comparison is Norm 0 (exact) instead.
// A case may add assertions of its own (dropout masks element by element: every element the hash drops holds
// exactly the dropped value; padded keys' gradients exactly +0; attention's two CUDA backward paths), and may ask
// for the CUDA run twice with every output bit for bit the same (determinism of the reducing ops).
//
// The attention op's `saved` buffer is sized per backend (attention_saved_bytes) and not compared between them
// (CPU: probabilities, CUDA: log-sum-exp); the bf16 cases compare CUDA's lse with the reference's, as its layout
// is documented (ops/attention.hpp). Tests that need a real GPU REQUIRE_GPU(); under the emulator build
// (cuda_ops_emu_test) they run on the CPU. The error paths, the knobs of kernels/internal/attention_paths.hpp
// and a few whole-op properties (fused == unfused composition) are plain tests after the table.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/dropout_hash.hpp"
#include "kernels/internal/attention_paths.hpp"
#include "kernels/memory.hpp"
#include "kernels/ops.hpp"
#include "numerics.hpp"

namespace K = aiayn::kernels;
using K::Device;
using aiayn::testing::bitwise_equal;
using aiayn::testing::close;
using aiayn::testing::close_scalar;
using aiayn::testing::random_floats;

#define REQUIRE_GPU()                                                          \
  do {                                                                         \
    std::string why;                                                           \
    if (K::cuda_device_count(&why) == 0) GTEST_SKIP() << "no GPU: " << why;    \
  } while (0)

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> poison(size_t n) { return std::vector<float>(n, kNaN); }

template <class T>
K::DeviceArray<T> upload(const std::vector<T>& h) {
  K::DeviceArray<T> d(Device::CUDA, h.size());
  if (!h.empty()) K::device_copy(Device::CUDA, d.data(), Device::CPU, h.data(), h.size() * sizeof(T));
  return d;
}

template <class T>
std::vector<T> download(const K::DeviceArray<T>& d) {
  std::vector<T> h(d.size());
  K::cuda_synchronize();
  if (!h.empty()) K::device_copy(Device::CPU, h.data(), Device::CUDA, d.data(), h.size() * sizeof(T));
  return h;
}

// ---- bf16 -------------------------------------------------------------------------------------------------
// Host copies of bf16 tensors are std::vector<float> holding bf16 values exactly (the CPU references read them
// as float or double); the harness converts them at the device boundary (exact for such values; NaN poison
// stays NaN).

float round_bf16(float x) { return K::to_float(K::to_bf16(x)); }

std::vector<float> round_bf16(std::vector<float> v) {
  for (auto& x : v) x = round_bf16(x);
  return v;
}

std::vector<float> random_bf16(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  return round_bf16(random_floats(n, rng, lo, hi));
}

std::vector<double> as_doubles(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

std::vector<float> as_floats(const std::vector<double>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = static_cast<float>(v[i]);
  return f;
}

// max_i |got_i - exact_i| / max_i |exact_i| over the finite exact values (absolute when they are all zero).
double normalised_error(const std::vector<float>& got, const std::vector<double>& exact, size_t* worst = nullptr) {
  double max_ref = 0.0, max_err = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(exact[i])) continue;
    max_ref = std::max(max_ref, std::fabs(exact[i]));
    const double err = std::fabs(double(got[i]) - exact[i]);
    if (err > max_err) {
      max_err = err;
      if (worst) *worst = i;
    }
  }
  return max_ref > 0.0 ? max_err / max_ref : max_err;
}

::testing::AssertionResult same_non_finite(const std::string& what, const std::vector<float>& got,
                                           const std::vector<double>& exact) {
  if (got.size() != exact.size())
    return ::testing::AssertionFailure() << what << ": size " << got.size() << " != " << exact.size();
  for (size_t i = 0; i < got.size(); ++i)
    if (std::isnan(got[i]) != std::isnan(exact[i]) || std::isinf(got[i]) != std::isinf(exact[i]))
      return ::testing::AssertionFailure() << what << ": non-finite mismatch at " << i << ": got " << got[i]
                                           << ", exact " << exact[i];
  return ::testing::AssertionSuccess();
}

// The bf16 criterion of the file comment: non-finite parity with the exact answer, then
// err(cuda) <= 2 err(naive) + floor.
::testing::AssertionResult within_twice_naive(const std::string& what, const std::vector<float>& got,
                                              const std::vector<float>& naive, const std::vector<double>& exact,
                                              double floor) {
  if (auto r = same_non_finite(what, got, exact); !r) return r;
  if (auto r = same_non_finite(what + " (naive reference)", naive, exact); !r) return r;
  size_t worst = 0;
  const double err = normalised_error(got, exact, &worst), err_naive = normalised_error(naive, exact);
  if (!(err <= 2.0 * err_naive + floor))
    return ::testing::AssertionFailure() << what << ": normalised error " << err << " > 2 * " << err_naive
                                         << " (naive bf16) + " << floor << " (worst at " << worst << ": cuda "
                                         << got[worst] << ", exact " << exact[worst] << ", naive " << naive[worst]
                                         << ")";
  return ::testing::AssertionSuccess();
}

// Rows are tokens [B, m.seq_len] (m.pair on the host). Every element the mask drops must hold exactly
// dropped_value[i] (0 when dropped_value is empty).
::testing::AssertionResult dropped_where_cpu_drops(const std::string& what, const std::vector<float>& got, int rows,
                                                   int cols, const K::DropoutMask& m,
                                                   const std::vector<float>& dropped_value = {}) {
  if (m.p == 0.0f) return ::testing::AssertionSuccess();
  for (int r = 0; r < rows; ++r) {
    const uint64_t key = K::dropout_row_key(m, r);
    for (int c = 0; c < cols; ++c) {
      const size_t i = size_t(r) * cols + c;
      const float want = dropped_value.empty() ? 0.0f : dropped_value[i];
      if (!K::dropout_keep(key, uint32_t(c), m.p) && !(got[i] == want))
        return ::testing::AssertionFailure() << what << ": element (" << r << ", " << c << ") is dropped by the "
                                             << "CPU's mask but holds " << got[i] << " instead of " << want;
    }
  }
  return ::testing::AssertionSuccess();
}

K::DropoutMask test_mask(const int64_t* pair, int seq_len, float p, uint32_t site) {
  K::DropoutMask m;
  m.p = p, m.seq_len = seq_len, m.pair = pair, m.seed = 4321, m.step = 17, m.site = site;
  return m;
}

std::vector<int64_t> random_pairs(int B, std::mt19937& rng) {
  std::vector<int64_t> pair(B);
  for (auto& p : pair) p = int64_t(rng() % 1000000);
  return pair;
}

// ---- the harness ------------------------------------------------------------------------------------------
enum class DType { F32, BF16, I32, I64 };

// A tensor of a case: its name, element type and initial bytes (inputs' values; outputs' NaN poison, or the
// values an accumulated output starts from). bf16 tensors are given as floats holding bf16 values exactly.
struct TensorInit {
  std::string name;
  DType type;
  std::vector<uint8_t> bytes;
};

template <class T>
std::vector<uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// A downloaded output (or a scalar result) of one backend.
struct Output {
  DType type = DType::F32;
  std::vector<uint8_t> bytes;
  bool is_scalar = false;
  double scalar = 0;
  std::vector<float> values() const {  // as floats (exact for F32 and BF16)
    std::vector<float> v;
    if (type == DType::F32) {
      v.resize(bytes.size() / sizeof(float));
      if (!v.empty()) std::memcpy(v.data(), bytes.data(), bytes.size());
    } else if (type == DType::BF16) {
      std::vector<K::bf16> h(bytes.size() / sizeof(K::bf16));
      if (!h.empty()) std::memcpy(h.data(), bytes.data(), bytes.size());
      v.resize(h.size());
      for (size_t i = 0; i < h.size(); ++i) v[i] = K::to_float(h[i]);
    }
    return v;
  }
};
using Outputs = std::map<std::string, Output>;

// One backend's copies of a case's tensors. The case's run function reaches them by name, on its device.
class Buffers {
 public:
  Buffers(Device d, const std::vector<TensorInit>& tensors) : dev(d) {
    for (const TensorInit& t : tensors) {
      index_[t.name] = arrays_.size();
      types_.push_back(t.type);
      arrays_.emplace_back(d, t.bytes.size());
      if (!t.bytes.empty()) K::device_copy(d, arrays_.back().data(), Device::CPU, t.bytes.data(), t.bytes.size());
    }
  }
  const Device dev;

  float* f(const std::string& n) { return ptr<float>(n, DType::F32); }
  K::bf16* h(const std::string& n) { return ptr<K::bf16>(n, DType::BF16); }
  int32_t* i32(const std::string& n) { return ptr<int32_t>(n, DType::I32); }
  int64_t* i64(const std::string& n) { return ptr<int64_t>(n, DType::I64); }
  // Memory the op sizes per backend (attention's saved buffer), zero-filled, not compared; found again by name.
  void* scratch(const std::string& n, size_t bytes) {
    auto& a = scratch_[n];
    a = std::make_unique<K::DeviceArray<uint8_t>>(dev, bytes);
    return a->data();
  }
  void* scratch(const std::string& n) { return scratch_.at(n)->data(); }
  void record(const std::string& name, double value) { scalars_[name] = value; }

  Output read(const std::string& name) const {
    Output o;
    if (auto s = scalars_.find(name); s != scalars_.end()) {
      o.is_scalar = true, o.scalar = s->second;
      return o;
    }
    const auto it = index_.find(name);
    if (it == index_.end()) throw std::runtime_error("the case has no output '" + name + "'");
    const K::DeviceArray<uint8_t>& a = arrays_[it->second];
    o.type = types_[it->second];
    o.bytes.resize(a.size());
    if (dev == Device::CUDA) K::cuda_synchronize();
    if (a.size()) K::device_copy(Device::CPU, o.bytes.data(), dev, a.data(), a.size());
    return o;
  }

 private:
  template <class T>
  T* ptr(const std::string& n, DType want) {
    const auto it = index_.find(n);
    if (it == index_.end() || types_[it->second] != want) throw std::runtime_error("no tensor '" + n + "' of that type");
    return reinterpret_cast<T*>(arrays_[it->second].data());
  }
  std::map<std::string, size_t> index_;
  std::vector<DType> types_;
  std::vector<K::DeviceArray<uint8_t>> arrays_;
  std::map<std::string, std::unique_ptr<K::DeviceArray<uint8_t>>> scratch_;
  std::map<std::string, double> scalars_;
};

enum class Cmp { Norm, Bits, TwiceNaive };
struct Check {
  std::string output;
  Cmp cmp;
  double limit;     // Norm: the largest normalised error; TwiceNaive: the floor; Bits: unused
  std::string why;  // the reason for the limit
};

// The reference of one output: the CPU backend's result (fp32 cases), or what a bf16 case computes on the host
// (`want`; for TwiceNaive `want` is the naive bf16 answer and `exact` the exact one).
struct Ref {
  std::vector<float> want;
  std::vector<double> exact;
  bool is_scalar = false;
  double scalar = 0;
};
using Refs = std::map<std::string, Ref>;

struct OpCase {
  std::string name;  // op, shape and flags: what a failure reports
  std::vector<TensorInit> tensors;
  std::function<void(Buffers&)> run;  // the op(s) through the dispatcher on b.dev
  std::vector<Check> checks;          // every output and gradient buffer (and scalar result)
  // bf16 cases: the host reference of every checked output (null: the CPU backend is the reference).
  std::function<void(Refs&)> reference;
  // Assertions of the case's own, after the comparisons: the CUDA buffers (to run more on them), the CUDA
  // outputs and the references.
  std::function<void(Buffers& cuda, const Outputs& got, const Refs& refs)> extra;
  bool repeat = false;  // run the CUDA side twice: every output (repeat_outputs, else the checked ones) bit-identical
  std::vector<std::string> repeat_outputs;

  void add(const std::string& n, DType t, std::vector<uint8_t> b) { tensors.push_back({n, t, std::move(b)}); }
  void f32(const std::string& n, const std::vector<float>& v) { add(n, DType::F32, bytes_of(v)); }
  void bf16(const std::string& n, const std::vector<float>& v) {  // v holds bf16 values (or NaN)
    std::vector<K::bf16> b(v.size());
    for (size_t i = 0; i < v.size(); ++i) b[i] = K::to_bf16(v[i]);
    add(n, DType::BF16, bytes_of(b));
  }
  void i32(const std::string& n, const std::vector<int32_t>& v) { add(n, DType::I32, bytes_of(v)); }
  void i64(const std::string& n, const std::vector<int64_t>& v) { add(n, DType::I64, bytes_of(v)); }
  void check(const std::string& out, Cmp c, double limit, const std::string& why) { checks.push_back({out, c, limit, why}); }
};

::testing::AssertionResult same_bits(const std::string& what, const std::vector<float>& got,
                                     const std::vector<float>& want) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << what << ": size " << got.size() << " != " << want.size();
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) && std::isnan(want[i])) continue;
    if (K::float_bits(got[i]) != K::float_bits(want[i]))
      return ::testing::AssertionFailure() << what << ": element " << i << ": " << got[i] << " (bits "
                                           << K::float_bits(got[i]) << ") vs " << want[i] << " (bits "
                                           << K::float_bits(want[i]) << ")";
  }
  return ::testing::AssertionSuccess();
}

Outputs read_outputs(const Buffers& b, const std::vector<std::string>& names) {
  Outputs o;
  for (const auto& n : names) o[n] = b.read(n);
  return o;
}

// The generic runner.
void run_case(const OpCase& c) {
  SCOPED_TRACE(c.name);
  std::vector<std::string> names;
  for (const Check& ch : c.checks) names.push_back(ch.output);
  Refs refs;
  if (c.reference) {
    c.reference(refs);
  } else {
    Buffers cpu(Device::CPU, c.tensors);
    c.run(cpu);
    for (const auto& [n, o] : read_outputs(cpu, names)) {
      Ref& r = refs[n];
      r.is_scalar = o.is_scalar, r.scalar = o.scalar, r.want = o.values();
    }
  }
  Buffers gpu(Device::CUDA, c.tensors);
  c.run(gpu);
  const Outputs got = read_outputs(gpu, names);
  // AIAYN_OPTEST_REPORT=1 prints every comparison's measured error beside its limit.
  static const bool report = std::getenv("AIAYN_OPTEST_REPORT") && std::string(std::getenv("AIAYN_OPTEST_REPORT")) == "1";
  for (const Check& ch : c.checks) {
    const std::string what = c.name + ": " + ch.output;
    const Output& g = got.at(ch.output);
    const Ref& r = refs.at(ch.output);
    ASSERT_EQ(g.is_scalar, r.is_scalar) << what;
    if (g.is_scalar) {
      if (report)
        std::printf("measured\t%s\t%s\tscalar\t%.3g\t%.3g\n", c.name.c_str(), ch.output.c_str(),
                    std::fabs(g.scalar - r.scalar) / std::max(1e-30, std::fabs(r.scalar)), ch.limit);
      if (ch.cmp == Cmp::Bits) {
        EXPECT_EQ(g.scalar, r.scalar) << what;
      } else {
        EXPECT_TRUE(close_scalar(what, g.scalar, r.scalar, ch.limit)) << "limit: " << ch.why;
      }
      continue;
    }
    if (report) {  // the measured error beside its limit, for tuning the table's limits
      const double e = ch.cmp == Cmp::TwiceNaive ? normalised_error(g.values(), r.exact)
                                                 : aiayn::testing::max_rel_diff(g.values(), r.want);
      std::printf("measured\t%s\t%s\t%s\t%.3g\t%.3g", c.name.c_str(), ch.output.c_str(),
                  ch.cmp == Cmp::Norm ? "norm" : ch.cmp == Cmp::Bits ? "bits" : "twice-naive", e, ch.limit);
      if (ch.cmp == Cmp::TwiceNaive) std::printf("\tnaive %.3g", normalised_error(r.want, r.exact));
      std::printf("\n");
    }
    switch (ch.cmp) {
      case Cmp::Norm: EXPECT_TRUE(close(what, g.values(), r.want, ch.limit)) << "limit: " << ch.why; break;
      case Cmp::Bits: EXPECT_TRUE(same_bits(what, g.values(), r.want)) << "limit: " << ch.why; break;
      case Cmp::TwiceNaive:
        EXPECT_TRUE(within_twice_naive(what, g.values(), r.want, r.exact, ch.limit)) << "floor: " << ch.why;
        break;
    }
  }
  if (c.repeat) {
    Buffers again(Device::CUDA, c.tensors);
    c.run(again);
    const auto& rn = c.repeat_outputs.empty() ? names : c.repeat_outputs;
    const Outputs first = c.repeat_outputs.empty() ? got : read_outputs(gpu, rn), second = read_outputs(again, rn);
    for (const auto& n : rn) {
      const Output &a = first.at(n), &b = second.at(n);
      if (a.is_scalar) {
        EXPECT_EQ(a.scalar, b.scalar) << c.name << ": " << n << " run twice";
      } else {
        EXPECT_TRUE(a.bytes == b.bytes) << c.name << ": " << n << " differs between two runs";
      }
    }
  }
  if (c.extra) c.extra(gpu, got, refs);
}

// The table: every case of every op, built once (random values drawn in a fixed order).
std::vector<OpCase> build_cases();
const std::vector<OpCase>& all_cases() {
  static const std::vector<OpCase> cases = build_cases();
  return cases;
}

// A gtest name from a case name: letters, digits and '_' only.
std::string test_name(const std::string& s) {
  std::string out;
  for (char ch : s) out += std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
  return out;
}

}  // namespace


// ---- the table: fp32 cases (the CPU backend is the reference) ---------------------------------------------
namespace {

std::string dims(std::initializer_list<std::pair<const char*, long>> kv) {
  std::string s;
  for (const auto& [k, v] : kv) s += std::string(" ") + k + "=" + std::to_string(v);
  return s;
}

void embedding_cases(std::vector<OpCase>& out) {
  std::mt19937 rng(1);
  struct Case { int N, D, V, seq_len; bool positions; };
  for (const Case c : {Case{13, 37, 11, 5, false}, Case{1, 1, 1, 1, false}, Case{29, 515, 7, 29, true}}) {
    OpCase oc;
    oc.name = "embed" + dims({{"N", c.N}, {"D", c.D}, {"V", c.V}}) + (c.positions ? " explicit positions" : "");
    std::vector<int32_t> ids(c.N), positions(c.N);
    for (int n = 0; n < c.N; ++n) {
      ids[n] = int32_t(rng() % c.V);  // V < N: ids repeat, so backward accumulates rows several times
      positions[n] = int32_t(rng() % 60);
    }
    oc.i32("ids", ids), oc.i32("positions", positions);
    oc.f32("table", random_floats(size_t(c.V) * c.D, rng));
    oc.f32("out", poison(size_t(c.N) * c.D));
    oc.f32("dout", random_floats(size_t(c.N) * c.D, rng));
    oc.f32("dtable", random_floats(size_t(c.V) * c.D, rng));  // accumulated
    oc.run = [c](Buffers& b) {
      K::EmbedForward<float> f;
      f.N = c.N, f.D = c.D, f.V = c.V, f.seq_len = c.seq_len, f.scale = std::sqrt(float(c.D));
      f.ids = b.i32("ids"), f.table = b.f("table"), f.out = b.f("out");
      f.positions = c.positions ? b.i32("positions") : nullptr;
      K::embed_forward(b.dev, f);
      K::EmbedBackward<float> bw;
      bw.N = c.N, bw.D = c.D, bw.V = c.V, bw.scale = f.scale, bw.ids = b.i32("ids"), bw.dout = b.f("dout");
      bw.dtable = b.f("dtable");
      K::embed_backward(b.dev, bw);
    };
    oc.check("out", Cmp::Norm, 1e-6,
             "the table term is bit-identical (uncontracted product); the sinusoid comes from the device's "
             "sinf/cosf/expf against the host's, each within 2 ulp of |PE| <= 1");
    oc.check("dtable", Cmp::Norm, 0.0,
             "exact: the stable sort replays the CPU's additions into each row in token order, products uncontracted");
    out.push_back(std::move(oc));
  }
  // Determinism: 4000 tokens into 50 rows (many additions per row), the CUDA run twice.
  {
    const int N = 4000, D = 64, V = 50;
    OpCase oc;
    oc.name = "embed_backward" + dims({{"N", N}, {"D", D}, {"V", V}}) + " run twice";
    std::vector<int32_t> ids(N);
    for (auto& id : ids) id = int32_t(rng() % V);
    oc.i32("ids", ids);
    oc.f32("dout", random_floats(size_t(N) * D, rng));
    oc.f32("dtable", std::vector<float>(size_t(V) * D, 0.0f));
    oc.run = [=](Buffers& b) {
      K::EmbedBackward<float> bw;
      bw.N = N, bw.D = D, bw.V = V, bw.scale = 8.0f, bw.ids = b.i32("ids"), bw.dout = b.f("dout");
      bw.dtable = b.f("dtable");
      K::embed_backward(b.dev, bw);
    };
    oc.check("dtable", Cmp::Norm, 0.0, "exact, as in the embed cases (token order per row)");
    oc.repeat = true;
    out.push_back(std::move(oc));
  }
}

void embedding_dropout_cases(std::vector<OpCase>& out) {
  std::mt19937 rng(10);
  struct Case { int B, S, D, V; float p; bool add_positions; };
  for (const Case c : {Case{3, 7, 37, 11, 0.1f, true}, Case{1, 1, 1, 1, 0.5f, false},
                       Case{2, 13, 515, 5, 0.3f, false}, Case{4, 5, 64, 50, 0.0f, true}}) {
    OpCase oc;
    oc.name = "embed dropout" + dims({{"B", c.B}, {"S", c.S}, {"D", c.D}, {"V", c.V}}) + " p=" + std::to_string(c.p) +
              (c.add_positions ? " positions" : " no positions");
    const int N = c.B * c.S;
    std::vector<int32_t> ids(N);
    for (auto& id : ids) id = int32_t(rng() % c.V);
    const auto pair = random_pairs(c.B, rng);
    oc.i32("ids", ids), oc.i64("pair", pair);
    oc.f32("table", random_floats(size_t(c.V) * c.D, rng));
    oc.f32("out", poison(size_t(N) * c.D));
    oc.f32("dout", random_floats(size_t(N) * c.D, rng));
    oc.f32("dtable", random_floats(size_t(c.V) * c.D, rng));
    const uint32_t site = K::dropout_site(0, 0, K::DropoutKind::Embedding);
    oc.run = [=](Buffers& b) {
      const K::DropoutMask m = test_mask(b.i64("pair"), c.S, c.p, site);
      K::EmbedForward<float> f;
      f.N = N, f.D = c.D, f.V = c.V, f.seq_len = c.S, f.scale = std::sqrt(float(c.D)), f.add_positions = c.add_positions;
      f.ids = b.i32("ids"), f.table = b.f("table"), f.out = b.f("out"), f.drop = m;
      K::embed_forward(b.dev, f);
      K::EmbedBackward<float> bw;
      bw.N = N, bw.D = c.D, bw.V = c.V, bw.scale = f.scale, bw.ids = b.i32("ids"), bw.dout = b.f("dout");
      bw.dtable = b.f("dtable"), bw.drop = m;
      K::embed_backward(b.dev, bw);
    };
    if (c.add_positions) {
      oc.check("out", Cmp::Norm, 1e-6, "the sinusoid from the device's sinf/cosf/expf, 2 ulp of |PE| <= 1 (as embed)");
    } else {
      oc.check("out", Cmp::Norm, 0.0, "exact: the CPU's arithmetic (uncontracted product, one float division)");
    }
    oc.check("dtable", Cmp::Norm, 0.0,
             "exact: each row receives the CPU's additions in token order, of the same divided, uncontracted products");
    oc.extra = [=](Buffers&, const Outputs& got, const Refs&) {
      EXPECT_TRUE(dropped_where_cpu_drops("embed_forward", got.at("out").values(), N, c.D,
                                          test_mask(pair.data(), c.S, c.p, site)));
    };
    out.push_back(std::move(oc));
  }
}

void dropout_cases(std::vector<OpCase>& out) {
  std::mt19937 rng(2);
  struct Case { int rows, cols, seq_len; float p; bool in_place; };
  for (const Case c : {Case{21, 37, 7, 0.1f, false}, Case{1, 1, 1, 0.5f, false}, Case{15, 513, 5, 0.3f, true},
                       Case{6, 10, 3, 0.0f, false}}) {
    const size_t n = size_t(c.rows) * c.cols;
    const auto x = random_floats(n, rng);
    std::vector<int64_t> pair(c.rows / c.seq_len);
    for (auto& p : pair) p = int64_t(rng() % 100000);
    for (const bool backward : {false, true}) {
      OpCase oc;
      oc.name = std::string(backward ? "dropout_backward" : "dropout_forward") +
                dims({{"rows", c.rows}, {"cols", c.cols}, {"seq_len", c.seq_len}}) + " p=" + std::to_string(c.p) +
                (c.in_place ? " in place" : "");
      oc.f32("x", x), oc.i64("pair", pair), oc.f32("y", poison(n));
      oc.run = [c, backward](Buffers& b) {
        K::DropoutArgs<float> a;
        a.rows = c.rows, a.cols = c.cols, a.seq_len = c.seq_len, a.seed = 1234, a.step = 7, a.site = 33, a.p = c.p;
        a.x = b.f("x"), a.y = c.in_place ? b.f("x") : b.f("y"), a.pair = b.i64("pair");
        backward ? K::dropout_backward(b.dev, a) : K::dropout_forward(b.dev, a);
      };
      oc.check(c.in_place ? "x" : "y", Cmp::Norm, 0.0,
               "exact: the same integer hash decides the mask, kept values come from the same float division");
      out.push_back(std::move(oc));
    }
  }
}

struct GemmCase {
  int m, n, k, pad;
  float beta;
  bool bias, relu, misalign_bias;
};

std::string gemm_name(const char* op, const GemmCase& c, bool ta, bool tb) {
  return std::string(op) + dims({{"m", c.m}, {"n", c.n}, {"k", c.k}, {"pad", c.pad}}) + " beta=" +
         std::to_string(c.beta) + (c.bias ? " bias" : "") + (c.relu ? " relu" : "") +
         (c.misalign_bias ? " misaligned-bias" : "") + (ta ? " trans_a" : "") + (tb ? " trans_b" : "");
}

// GEMM operands of a case: A [a_rows, lda], B [b_rows, ldb], C [m, ldc] and a bias store of n + 1 values (the
// bias starts at +1 when misaligned).
struct GemmGeometry {
  int a_rows, b_rows, lda, ldb, ldc;
};
GemmGeometry gemm_geometry(const GemmCase& c, bool ta, bool tb) {
  const int a_rows = ta ? c.k : c.m, a_cols = ta ? c.m : c.k;
  const int b_rows = tb ? c.n : c.k, b_cols = tb ? c.k : c.n;
  return {a_rows, b_rows, std::max(1, a_cols + c.pad), std::max(1, b_cols + c.pad), c.n + c.pad};
}

template <class T, class TC>
K::GemmArgs<T, TC> gemm_args(const GemmCase& c, bool ta, bool tb, const GemmGeometry& g) {
  K::GemmArgs<T, TC> a;
  a.trans_a = ta, a.trans_b = tb, a.m = c.m, a.n = c.n, a.k = c.k, a.lda = g.lda, a.ldb = g.ldb, a.ldc = g.ldc;
  a.alpha = 0.8f, a.beta = c.beta, a.relu = c.relu;
  return a;
}

const GemmCase kGemmCases[] = {
    {37, 53, 67, 0, 0.0f, false, false, false}, {37, 53, 67, 3, 0.0f, true, false, false},
    {37, 53, 67, 0, 0.0f, true, true, false},   {33, 45, 19, 1, 0.5f, true, true, false},
    {17, 29, 41, 0, 0.0f, true, true, true},    {5, 7, 0, 0, 0.75f, true, false, false},
    {1, 1, 1, 0, 0.0f, false, true, false},     {3, 130, 1, 2, 1.0f, false, false, false},
};

// fp32 GEMM: A, B, bias and C float.
OpCase gemm_case(const GemmCase& c, bool ta, bool tb, std::mt19937& rng) {
  const GemmGeometry g = gemm_geometry(c, ta, tb);
  OpCase oc;
  oc.name = gemm_name("gemm", c, ta, tb);
  oc.f32("A", random_floats(size_t(g.a_rows) * g.lda, rng));
  oc.f32("B", random_floats(size_t(g.b_rows) * g.ldb, rng));
  oc.f32("bias", random_floats(size_t(c.n) + 1, rng));
  oc.f32("C", c.beta != 0.0f ? random_floats(size_t(c.m) * g.ldc, rng) : poison(size_t(c.m) * g.ldc));
  oc.run = [=](Buffers& b) {
    auto a = gemm_args<float, float>(c, ta, tb, g);
    a.a = b.f("A"), a.b = b.f("B"), a.c = b.f("C"), a.bias = c.bias ? b.f("bias") + (c.misalign_bias ? 1 : 0) : nullptr;
    K::gemm(b.dev, a);
  };
  oc.check("C", Cmp::Norm, 2e-5,
           "fp32 with k <= 130 in a different summation order: about sqrt(k) 2^-24 |a||b| relative, with margin; "
           "padding columns of C (beyond n) are never written on either side (NaN against NaN)");
  return oc;
}

void gemm_cases(std::vector<OpCase>& out) {
  std::mt19937 rng(3);
  for (const GemmCase& c : kGemmCases)
    for (int trans = 0; trans < 4; ++trans) out.push_back(gemm_case(c, trans & 1, trans & 2, rng));
}

void elementwise_cases(std::vector<OpCase>& out) {
  std::mt19937 rng(4);
  const size_t n = 1001;
  auto y = random_floats(n, rng);
  for (size_t i = 0; i < n; i += 7) y[i] = 0.0f;  // the boundary: y == 0 passes no gradient
  const auto dy = random_floats(n, rng);
  for (const bool in_place : {false, true}) {
    OpCase oc;
    oc.name = "relu_backward n=1001" + std::string(in_place ? " in place" : "");
    oc.f32("y", y), oc.f32("dy", dy), oc.f32("dx", poison(n));
    oc.run = [=](Buffers& b) {
      K::ReluBackward<float> r;
      r.n = n, r.y = b.f("y"), r.dy = b.f("dy"), r.dx = in_place ? b.f("dy") : b.f("dx");
      K::relu_backward(b.dev, r);
    };
    oc.check(in_place ? "dy" : "dx", Cmp::Norm, 0.0, "a selection: exact");
    out.push_back(std::move(oc));
  }
  {
    OpCase oc;
    oc.name = "add n=1001";
    oc.f32("a", random_floats(n, rng)), oc.f32("b", random_floats(n, rng)), oc.f32("y", poison(n));
    oc.run = [=](Buffers& b) { K::add(b.dev, K::AddArgs<float>{b.f("a"), b.f("b"), b.f("y"), n}); };
    oc.check("y", Cmp::Norm, 0.0, "one float addition: exact");
    out.push_back(std::move(oc));
  }
  for (const int rows : {1, 300, 777}) {
    const int cols = 45;
    OpCase oc;
    oc.name = "bias_grad" + dims({{"rows", rows}, {"cols", cols}});
    oc.f32("dy", random_floats(size_t(rows) * cols, rng)), oc.f32("db", random_floats(cols, rng));
    oc.run = [=](Buffers& b) {
      K::BiasGrad<float> bg;
      bg.rows = rows, bg.cols = cols, bg.dy = b.f("dy"), bg.db = b.f("db");
      K::bias_grad(b.dev, bg);
    };
    oc.check("db", Cmp::Norm, 1e-5,
             "a sum of up to 777 values of magnitude <= 1 in a different order: about sqrt(rows) 2^-24 relative to "
             "the sum's magnitude; the sum of random signs is ~sqrt(rows), so normalise generously");
    out.push_back(std::move(oc));
  }
  {  // determinism: 3000 rows, the CUDA run twice
    const int rows = 3000, cols = 96;
    OpCase oc;
    oc.name = "bias_grad" + dims({{"rows", rows}, {"cols", cols}}) + " run twice";
    oc.f32("dy", random_floats(size_t(rows) * cols, rng)), oc.f32("db", std::vector<float>(cols, 0.0f));
    oc.run = [=](Buffers& b) {
      K::BiasGrad<float> bg;
      bg.rows = rows, bg.cols = cols, bg.dy = b.f("dy"), bg.db = b.f("db");
      K::bias_grad(b.dev, bg);
    };
    oc.check("db", Cmp::Norm, 1e-5, "as bias_grad above (3000 rows: sqrt(3000) 2^-24 ~ 3e-6 of the sum's scale)");
    oc.repeat = true;
    out.push_back(std::move(oc));
  }
}

// LayerNorm forward, then backward from the CPU's saved statistics (inputs mean_ref, rstd_ref on both backends,
// so that backward is compared on its own).
void layer_norm_cases(std::vector<OpCase>& out) {
  std::mt19937 rng(5);
  struct Case { int rows, cols; bool alias_dx; };
  for (const Case c : {Case{37, 333, false}, Case{1, 1, false}, Case{300, 515, true}, Case{5, 31, false}}) {
    const size_t n = size_t(c.rows) * c.cols;
    OpCase oc;
    oc.name = "layer_norm" + dims({{"rows", c.rows}, {"cols", c.cols}}) + (c.alias_dx ? " dx aliases dy" : "");
    const auto x = random_floats(n, rng, -2.0f, 3.0f);
    const auto gamma = random_floats(c.cols, rng, 0.5f, 1.5f), beta = random_floats(c.cols, rng);
    std::vector<float> y_ref(n), mean_ref(c.rows), rstd_ref(c.rows);
    K::cpu::layer_norm_forward(K::LayerNormForward<float>{x.data(), gamma.data(), beta.data(), y_ref.data(),
                                                          mean_ref.data(), rstd_ref.data(), c.rows, c.cols, 1e-5f});
    oc.f32("x", x), oc.f32("gamma", gamma), oc.f32("beta", beta);
    oc.f32("y", poison(n)), oc.f32("mean", poison(c.rows)), oc.f32("rstd", poison(c.rows));
    oc.f32("mean_ref", mean_ref), oc.f32("rstd_ref", rstd_ref);
    oc.f32("dy", random_floats(n, rng)), oc.f32("dx", poison(n));
    oc.f32("dgamma", random_floats(c.cols, rng)), oc.f32("dbeta", random_floats(c.cols, rng));
    oc.run = [c](Buffers& b) {
      K::layer_norm_forward(b.dev, K::LayerNormForward<float>{b.f("x"), b.f("gamma"), b.f("beta"), b.f("y"), b.f("mean"),
                                                              b.f("rstd"), c.rows, c.cols, 1e-5f});
      K::layer_norm_backward(b.dev, K::LayerNormBackward<float>{b.f("dy"), b.f("x"), b.f("gamma"), b.f("mean_ref"),
                                                                b.f("rstd_ref"), c.alias_dx ? b.f("dy") : b.f("dx"),
                                                                b.f("dgamma"), b.f("dbeta"), c.rows, c.cols});
    };
    const char* stats = "float statistics (two passes) against the CPU's double: a few ulp of the row's scale, cols <= 515";
    oc.check("y", Cmp::Norm, 1e-5, stats);
    oc.check("mean", Cmp::Norm, 1e-5, stats);
    oc.check("rstd", Cmp::Norm, 1e-5, stats);
    oc.check(c.alias_dx ? "dy" : "dx", Cmp::Norm, 2e-5,
             "dx subtracts two row means from g (cancellation): float sums over <= 515 columns against double");
    oc.check("dgamma", Cmp::Norm, 1e-5, "column sums over <= 300 rows in a different order, float against double");
    oc.check("dbeta", Cmp::Norm, 1e-5, "column sums over <= 300 rows in a different order, float against double");
    out.push_back(std::move(oc));
  }
}

struct ResidualCase {
  int B, T, cols;
  float p;
  bool alias_dx;
};
const ResidualCase kResidualCases[] = {
    {3, 7, 333, 0.1f, false},   // odd width
    {1, 1, 1, 0.5f, false},     // one token of one channel
    {2, 150, 515, 0.2f, true},  // 300 rows: two row chunks of the parameter-gradient reduction; dx aliases dy
    {5, 1, 31, 0.0f, false},    // no dropout, sentences of length 1
};

std::string residual_trace(const ResidualCase& c) {
  return dims({{"B", c.B}, {"T", c.T}, {"cols", c.cols}}) + " p=" + std::to_string(c.p) +
         (c.alias_dx ? " dx aliases dy" : "");
}

// Residual + dropout + LayerNorm, forward; backward from the CPU's saved s, mean and rstd on both backends.
void residual_norm_cases(std::vector<OpCase>& out) {
  std::mt19937 rng(11);
  for (const ResidualCase& c : kResidualCases) {
    const int rows = c.B * c.T;
    const size_t n = size_t(rows) * c.cols;
    OpCase oc;
    oc.name = "residual_norm" + residual_trace(c);
    const auto x = random_floats(n, rng, -2.0f, 2.0f), f = random_floats(n, rng, -2.0f, 2.0f);
    const auto gamma = random_floats(c.cols, rng, 0.5f, 1.5f), beta = random_floats(c.cols, rng);
    const auto pair = random_pairs(c.B, rng);
    const uint32_t site = K::dropout_site(1, 3, K::DropoutKind::FfnOut);
    std::vector<float> s_ref(n), y_ref(n), mean_ref(rows), rstd_ref(rows);
    {
      K::ResidualNormForward<float> fw;
      fw.rows = rows, fw.cols = c.cols, fw.eps = 1e-5f, fw.x = x.data(), fw.f = f.data(), fw.gamma = gamma.data();
      fw.beta = beta.data(), fw.s = s_ref.data(), fw.y = y_ref.data(), fw.mean = mean_ref.data();
      fw.rstd = rstd_ref.data(), fw.drop = test_mask(pair.data(), c.T, c.p, site);
      K::cpu::residual_norm_forward(fw);
    }
    oc.f32("x", x), oc.f32("f", f), oc.f32("gamma", gamma), oc.f32("beta", beta), oc.i64("pair", pair);
    oc.f32("s", poison(n)), oc.f32("y", poison(n)), oc.f32("mean", poison(rows)), oc.f32("rstd", poison(rows));
    oc.f32("s_ref", s_ref), oc.f32("mean_ref", mean_ref), oc.f32("rstd_ref", rstd_ref);
    oc.f32("dy", random_floats(n, rng)), oc.f32("dx", poison(n)), oc.f32("df", poison(n));
    oc.f32("dgamma", random_floats(c.cols, rng)), oc.f32("dbeta", random_floats(c.cols, rng));
    oc.run = [=](Buffers& b) {
      const K::DropoutMask m = test_mask(b.i64("pair"), c.T, c.p, site);
      K::ResidualNormForward<float> fw;
      fw.rows = rows, fw.cols = c.cols, fw.eps = 1e-5f, fw.x = b.f("x"), fw.f = b.f("f"), fw.gamma = b.f("gamma");
      fw.beta = b.f("beta"), fw.s = b.f("s"), fw.y = b.f("y"), fw.mean = b.f("mean"), fw.rstd = b.f("rstd"), fw.drop = m;
      K::residual_norm_forward(b.dev, fw);
      K::ResidualNormBackward<float> bw;
      bw.rows = rows, bw.cols = c.cols, bw.drop = m, bw.dy = b.f("dy"), bw.s = b.f("s_ref"), bw.gamma = b.f("gamma");
      bw.mean = b.f("mean_ref"), bw.rstd = b.f("rstd_ref"), bw.dx = c.alias_dx ? b.f("dy") : b.f("dx");
      bw.df = b.f("df"), bw.dgamma = b.f("dgamma"), bw.dbeta = b.f("dbeta");
      K::residual_norm_backward(b.dev, bw);
    };
    oc.check("s", Cmp::Norm, 0.0, "s = x + f / (1 - p) (or x where dropped): the CPU's two float operations in order");
    const char* stats = "LayerNorm of s with float statistics against the CPU's double (layer_norm's limits)";
    oc.check("y", Cmp::Norm, 1e-5, stats);
    oc.check("mean", Cmp::Norm, 1e-5, stats);
    oc.check("rstd", Cmp::Norm, 1e-5, stats);
    oc.check(c.alias_dx ? "dy" : "dx", Cmp::Norm, 2e-5, "LayerNorm's dx (float sums against double, cancellation)");
    oc.check("df", Cmp::Norm, 2e-5, "dx through the same division on both sides: the same normalised error");
    oc.check("dgamma", Cmp::Norm, 1e-5, "column sums over <= 300 rows in another order, float against double");
    oc.check("dbeta", Cmp::Norm, 1e-5, "column sums over <= 300 rows in another order, float against double");
    oc.extra = [=](Buffers&, const Outputs& got, const Refs&) {
      const K::DropoutMask m = test_mask(pair.data(), c.T, c.p, site);
      EXPECT_TRUE(dropped_where_cpu_drops("residual_norm s", got.at("s").values(), rows, c.cols, m, x));  // s == x
      EXPECT_TRUE(dropped_where_cpu_drops("residual_norm df", got.at("df").values(), rows, c.cols, m));
    };
    out.push_back(std::move(oc));
  }
}

void cross_entropy_cases(std::vector<OpCase>& out) {
  std::mt19937 rng(7);
  struct Case { int N, V; bool in_place, with_grad; };
  for (const Case c : {Case{9, 5003, false, true}, Case{1, 1, false, true}, Case{7, 37, true, true},
                       Case{4, 1031, false, false}}) {
    OpCase oc;
    oc.name = "cross_entropy" + dims({{"N", c.N}, {"V", c.V}}) + (c.in_place ? " in place" : "") +
              (c.with_grad ? "" : " no gradient");
    const int pad_id = c.V > 1 ? 0 : -1;  // V = 1: the only real target is 0, so 0 cannot be the pad id
    const auto logits = random_floats(size_t(c.N) * c.V, rng, -4.0f, 4.0f);
    std::vector<int32_t> targets(c.N);
    for (int n = 0; n < c.N; ++n) targets[n] = int32_t(rng() % c.V);
    if (c.N > 2) targets[1] = pad_id, targets[c.N - 1] = pad_id;  // pad rows: no loss, zero gradient
    if (c.V > 1) targets[0] = 1 + int32_t(rng() % (c.V - 1));
    oc.f32("logits", logits), oc.i32("targets", targets), oc.f32("dlogits", poison(logits.size()));
    oc.run = [=](Buffers& b) {
      K::CrossEntropyArgs<float> a;
      a.N = c.N, a.V = c.V, a.pad_id = pad_id, a.smoothing = c.V > 1 ? 0.1f : 0.0f, a.grad_scale = 0.37f;
      a.logits = b.f("logits"), a.targets = b.i32("targets");
      a.dlogits = !c.with_grad ? nullptr : (c.in_place ? b.f("logits") : b.f("dlogits"));
      const auto s = K::cross_entropy(b.dev, a);
      b.record("loss", s.loss), b.record("nll", s.nll), b.record("tokens", double(s.tokens));
      b.record("correct", double(s.correct));
    };
    oc.check("loss", Cmp::Norm, 1e-6,
             "float exp per element (2 ulp) against double exp, sums in double: ~1e-7 relative per row, less in "
             "the mean; measured under the emulator: 8.2e-10 (was 1e-5)");
    oc.check("nll", Cmp::Norm, 1e-6, "as loss");
    oc.check("tokens", Cmp::Bits, 0, "a count");
    oc.check("correct", Cmp::Bits, 0, "the same float comparisons, first maximum on both sides");
    if (c.with_grad)
      oc.check(c.in_place ? "logits" : "dlogits", Cmp::Norm, 1e-6,
               "softmax in float from a double lse against double throughout: a few ulp of the largest gradient; "
               "measured under the emulator: 9.0e-8, a GPU's expf adds 2 ulp (was 1e-5)");
    out.push_back(std::move(oc));
  }
  // Issue 15: padded rows (stride ld > V, as the model lays out its logits): NaN in the padding, which the op must
  // neither read (results as the CPU's) nor write (still NaN after, in place or not).
  std::mt19937 rng15(15);
  const int N = 6, V = 37, ld = 48;
  for (const bool in_place : {false, true}) {
    OpCase oc;
    oc.name = "cross_entropy padded rows" + dims({{"N", N}, {"V", V}, {"ld", ld}}) + (in_place ? " in place" : "");
    std::vector<float> logits = random_floats(size_t(N) * ld, rng15, -4.0f, 4.0f);
    for (int n = 0; n < N; ++n)
      for (int j = V; j < ld; ++j) logits[size_t(n) * ld + j] = kNaN;
    std::vector<int32_t> targets(N);
    for (int n = 0; n < N; ++n) targets[n] = 1 + int32_t(rng15() % (V - 1));
    targets[2] = 0;  // a pad row
    oc.f32("logits", logits), oc.i32("targets", targets), oc.f32("dlogits", poison(logits.size()));
    oc.run = [=](Buffers& b) {
      K::CrossEntropyArgs<float> a;
      a.N = N, a.V = V, a.ld = ld, a.pad_id = 0, a.smoothing = 0.1f, a.grad_scale = 0.37f;
      a.logits = b.f("logits"), a.targets = b.i32("targets"), a.dlogits = in_place ? b.f("logits") : b.f("dlogits");
      const auto s = K::cross_entropy(b.dev, a);
      b.record("loss", s.loss), b.record("nll", s.nll), b.record("tokens", double(s.tokens));
      b.record("correct", double(s.correct));
    };
    oc.check("loss", Cmp::Norm, 1e-6, "as cross_entropy (a NaN read from the padding fails it)");
    oc.check("nll", Cmp::Norm, 1e-6, "as cross_entropy");
    oc.check("tokens", Cmp::Bits, 0, "a count");
    oc.check("correct", Cmp::Bits, 0, "first maximum on both sides");
    oc.check(in_place ? "logits" : "dlogits", Cmp::Norm, 1e-6, "as cross_entropy; NaN parity covers the padding");
    oc.extra = [=](Buffers&, const Outputs& got, const Refs&) {
      const auto g = got.at(in_place ? "logits" : "dlogits").values();
      for (int n = 0; n < N; ++n)
        for (int j = V; j < ld; ++j) ASSERT_TRUE(std::isnan(g[size_t(n) * ld + j])) << "padding written at " << n << "," << j;
    };
    out.push_back(std::move(oc));
  }
}

void optimizer_cases(std::vector<OpCase>& out) {
  std::mt19937 rng(8);
  const size_t n = 100003;
  {
    OpCase oc;
    oc.name = "adam n=100003";
    oc.f32("grad", random_floats(n, rng)), oc.f32("param", random_floats(n, rng));
    oc.f32("m", random_floats(n, rng, -0.1f, 0.1f)), oc.f32("v", random_floats(n, rng, 0.0f, 0.01f));
    oc.run = [=](Buffers& b) {
      K::AdamArgs<float> a;
      a.n = n, a.lr = 1e-3f, a.grad_scale = 0.5f, a.bias1 = 1.0 - std::pow(0.9, 3), a.bias2 = 1.0 - std::pow(0.98, 3);
      a.param = b.f("param"), a.grad = b.f("grad"), a.m = b.f("m"), a.v = b.f("v");
      K::adam(b.dev, a);
    };
    const char* why = "the same float formula; nvcc may contract a product and a sum into one FMA (1 ulp per operation)";
    oc.check("m", Cmp::Norm, 1e-6, why);
    oc.check("v", Cmp::Norm, 1e-6, why);
    oc.check("param", Cmp::Norm, 1e-6, why);
    out.push_back(std::move(oc));
  }
  for (const size_t len : {size_t(1), size_t(1000), n}) {
    OpCase oc;
    oc.name = "sum_squares n=" + std::to_string(len);
    oc.f32("x", random_floats(len, rng));
    oc.run = [=](Buffers& b) {
      K::SumSquaresArgs<float> s;
      s.n = len, s.x = b.f("x");
      b.record("sum", K::sum_squares(b.dev, s));
    };
    oc.check("sum", Cmp::Norm, 1e-12, "squares of floats are exact in double; only the order of the additions differs");
    out.push_back(std::move(oc));
  }
  {
    OpCase oc;
    oc.name = "scale n=1001";
    oc.f32("x", random_floats(1001, rng));
    oc.run = [](Buffers& b) {
      K::ScaleArgs<float> s;
      s.n = 1001, s.factor = 0.3f, s.x = b.f("x");
      K::scale(b.dev, s);
    };
    oc.check("x", Cmp::Norm, 0.0, "one float multiplication: exact");
    out.push_back(std::move(oc));
  }
  {  // determinism of the reduction over 288000 values
    std::mt19937 rng9(9);
    OpCase oc;
    oc.name = "sum_squares n=288000 run twice";
    oc.f32("x", random_floats(288000, rng9));
    oc.run = [](Buffers& b) {
      K::SumSquaresArgs<float> s;
      s.n = 288000, s.x = b.f("x");
      b.record("sum", K::sum_squares(b.dev, s));
    };
    oc.check("sum", Cmp::Norm, 1e-12, "as sum_squares above");
    oc.repeat = true;
    out.push_back(std::move(oc));
  }
  {  // Adam refreshing the bf16 copy the products read (mixed precision)
    std::mt19937 rng16(16);
    OpCase oc;
    oc.name = "adam n=100003 with bf16 copy";
    oc.f32("grad", random_floats(n, rng16)), oc.f32("param", random_floats(n, rng16));
    oc.f32("m", random_floats(n, rng16, -0.1f, 0.1f)), oc.f32("v", random_floats(n, rng16, 0.0f, 0.01f));
    oc.bf16("copy", poison(n));
    oc.run = [=](Buffers& b) {
      K::AdamArgs<float> a;
      a.n = n, a.lr = 1e-3f, a.grad_scale = 0.5f, a.bias1 = 1.0 - std::pow(0.9, 3), a.bias2 = 1.0 - std::pow(0.98, 3);
      a.param = b.f("param"), a.grad = b.f("grad"), a.m = b.f("m"), a.v = b.f("v"), a.param_bf16 = b.h("copy");
      K::adam(b.dev, a);
    };
    oc.check("param", Cmp::Norm, 1e-6, "the fp32 adam case's limit and reason");
    oc.check("m", Cmp::Norm, 1e-6, "the fp32 adam case's limit and reason");
    oc.check("v", Cmp::Norm, 1e-6, "the fp32 adam case's limit and reason");
    oc.check("copy", Cmp::Norm, std::ldexp(1.0, -7),
             "the parameters differ by an FMA's ulp at most, so a rounding may flip near a tie: one bf16 ulp of an "
             "element, at most 2^-7 of its magnitude, never more");
    oc.extra = [](Buffers&, const Outputs& got, const Refs&) {
      // The copy is the device's own updated parameter rounded to nearest even: bit for bit.
      const auto p = got.at("param").values(), copy = got.at("copy").values();
      for (size_t i = 0; i < p.size(); ++i) ASSERT_EQ(K::float_bits(copy[i]), K::float_bits(round_bf16(p[i]))) << i;
    };
    out.push_back(std::move(oc));
  }
}

void cast_cases(std::vector<OpCase>& out) {
  std::mt19937 rng(15);
  const float inf = std::numeric_limits<float>::infinity();
  // Special values, float denormals, the largest float (rounds to inf), exact ties (low 16 bits 0x8000, to even),
  // just above and below ties, and random values over a wide range.
  std::vector<float> x = {0.0f, -0.0f, 1.0f, -2.5f, inf, -inf, kNaN, 1e-40f, -1e-41f, 1.17549435e-38f,
                          std::numeric_limits<float>::max(), -std::numeric_limits<float>::max()};
  for (int i = 0; i < 3000; ++i) {
    const uint32_t hi = uint32_t(rng()) & 0xffff0000u;
    for (const uint32_t lo : {0x8000u, 0x7fffu, 0x8001u, uint32_t(rng()) & 0xffffu}) x.push_back(K::bits_float(hi | lo));
  }
  {
    OpCase oc;
    oc.name = "cast float to bf16 n=" + std::to_string(x.size());
    oc.f32("x", x), oc.bf16("y", poison(x.size()));
    const size_t n = x.size();
    oc.run = [n](Buffers& b) { K::cast(b.dev, K::CastArgs<float, K::bf16>{b.f("x"), b.h("y"), n}); };
    oc.check("y", Cmp::Bits, 0, "round to nearest even on both sides: the same bits (NaN payloads may differ)");
    out.push_back(std::move(oc));
  }
  {
    // bf16 -> float of every one of the 65536 bit patterns: exact (NaN patterns stay NaN).
    std::vector<K::bf16> all(65536);
    for (uint32_t u = 0; u < 65536; ++u) all[u].bits = uint16_t(u);
    OpCase oc;
    oc.name = "cast bf16 to float, all 65536 patterns";
    oc.add("x", DType::BF16, bytes_of(all)), oc.f32("y", poison(all.size()));
    oc.run = [](Buffers& b) { K::cast(b.dev, K::CastArgs<K::bf16, float>{b.h("x"), b.f("y"), 65536}); };
    oc.check("y", Cmp::Bits, 0, "exact");
    out.push_back(std::move(oc));
  }
}


// Where q, k, v (and dq, dk, dv, at the same offsets and strides) live. Separate: three [rows, H Dh] tensors.
// FusedQkv (self-attention, Tq == Tk): column slices of one [rows, 3 H Dh] buffer, as the model's self-attention.
// FusedKv (cross-attention, as in the model): q [rows, H Dh + 1] alone, k and v column slices of one
// [rows, 2 H Dh + 3] buffer; the columns no head owns must stay as they were (poisoned on both sides).
enum class QkvLayout { Separate, FusedQkv, FusedKv };

struct AttnCase {
  int B, Tq, Tk, H, Dh;
  std::vector<int32_t> k_len;  // empty: no key padding (null k_len)
  bool causal;
  float p_drop;
  QkvLayout layout;
};

// Row widths and column offsets of a layout; k shares q's buffer (FusedQkv), v shares k's (FusedQkv, FusedKv).
struct AttnLayout {
  int q_width, kv_width;
  size_t k_off, v_off;
  bool k_shares_q, v_shares_k;
  int dk_buffer() const { return k_shares_q ? 0 : 1; }  // buffers: 0 holds q, 1 k, 2 v (when not shared)
  int dv_buffer() const { return v_shares_k ? dk_buffer() : 2; }
};

AttnLayout attention_layout(const AttnCase& c) {
  const int D = c.H * c.Dh;
  switch (c.layout) {
    case QkvLayout::FusedQkv: return AttnLayout{3 * D, 3 * D, size_t(D), size_t(2 * D), true, true};
    case QkvLayout::FusedKv: return AttnLayout{D + 1, 2 * D + 3, 0, size_t(D), false, true};
    case QkvLayout::Separate: break;
  }
  return AttnLayout{D, D, 0, 0, false, false};
}

// The sizes of the three buffers (0 where a tensor shares another's buffer).
std::array<size_t, 3> attention_buffer_sizes(const AttnLayout& L, size_t q_elems, size_t kv_elems) {
  return {q_elems, L.dk_buffer() == 1 ? kv_elems : 0, L.dv_buffer() == 2 ? kv_elems : 0};
}

// B, lengths, heads, the layout's strides, causal, scale 1/sqrt(Dh) and the dropout of a case (seed 99, step 5);
// k_len and pair are the caller's (host or device pointers).
template <class S>
K::AttentionShape<S> attention_geometry(const AttnCase& c) {
  const AttnLayout L = attention_layout(c);
  const int D = c.H * c.Dh;
  K::AttentionShape<S> sh;
  sh.B = c.B, sh.Tq = c.Tq, sh.Tk = c.Tk, sh.H = c.H, sh.Dh = c.Dh;
  sh.q_bstride = long(c.Tq) * L.q_width, sh.kv_bstride = long(c.Tk) * L.kv_width, sh.o_bstride = long(c.Tq) * D;
  sh.q_stride = L.q_width, sh.kv_stride = L.kv_width, sh.o_stride = D;
  sh.causal = c.causal, sh.scale = 1.0f / std::sqrt(float(c.Dh));
  sh.p_drop = c.p_drop, sh.seed = 99, sh.step = 5, sh.site = K::dropout_site(1, 2, K::DropoutKind::SelfAttnProbs);
  return sh;
}

const K::cuda::AttentionBackwardPath kAttnPaths[] = {K::cuda::AttentionBackwardPath::Tiled,
                                                     K::cuda::AttentionBackwardPath::PerHead,
                                                     K::cuda::AttentionBackwardPath::Auto};
const char* path_name(K::cuda::AttentionBackwardPath p) {
  switch (p) {
    case K::cuda::AttentionBackwardPath::Tiled: return "tiled";
    case K::cuda::AttentionBackwardPath::PerHead: return "per-head";
    case K::cuda::AttentionBackwardPath::Auto: break;
  }
  return "auto";
}

// The backward paths that can take a case: Tiled always, PerHead where it fits, and Auto.
std::vector<K::cuda::AttentionBackwardPath> attention_paths(const AttnCase& c) {
  std::vector<K::cuda::AttentionBackwardPath> paths;
  for (auto p : kAttnPaths)
    if (p != K::cuda::AttentionBackwardPath::PerHead || K::cuda::attention_backward_per_head_fits(c.Tq, c.Tk, c.Dh))
      paths.push_back(p);
  return paths;
}

// Keys at or past k_len[b] hold exact (+0) zeros in every head's channels of dk and dv, and so do all dq rows of a
// sentence without keys (lse = -inf). g: the layout's gradient buffers as downloaded.
::testing::AssertionResult padded_gradients_zero(const AttnCase& c, const std::vector<float> (&g)[3]) {
  const AttnLayout L = attention_layout(c);
  const int D = c.H * c.Dh;
  auto zero_rows = [&](const char* what, const std::vector<float>& buf, size_t off, int T, int width, int b,
                       int from) -> ::testing::AssertionResult {
    for (int t = from; t < T; ++t)
      for (int ch = 0; ch < D; ++ch) {
        const float x = buf[(size_t(b) * T + t) * width + off + ch];
        if (!(x == 0.0f && !std::signbit(x)))
          return ::testing::AssertionFailure() << what << " of sentence " << b << ", row " << t << ", channel " << ch
                                               << " is " << x << ", not +0";
      }
    return ::testing::AssertionSuccess();
  };
  for (int b = 0; b < c.B; ++b) {
    const int k_len = c.k_len.empty() ? c.Tk : c.k_len[b];
    if (auto r = zero_rows("dk", g[L.dk_buffer()], L.k_off, c.Tk, L.kv_width, b, k_len); !r) return r;
    if (auto r = zero_rows("dv", g[L.dv_buffer()], L.v_off, c.Tk, L.kv_width, b, k_len); !r) return r;
    if (k_len == 0)
      if (auto r = zero_rows("dq", g[0], 0, c.Tq, L.q_width, b, 0); !r) return r;
  }
  return ::testing::AssertionSuccess();
}

std::vector<AttnCase> attention_cases() {
  return {
      // decoder self-attention: causal, padding, a fully padded sentence (k_len = 0), dropout, fused QKV
      {3, 19, 19, 3, 21, {19, 7, 0}, true, 0.1f, QkvLayout::FusedQkv},
      // cross-attention: Tq != Tk, Dh = 128 (the limit), keys crossing a 32-key tile
      {2, 5, 37, 2, 128, {37, 33}, false, 0.0f, QkvLayout::Separate},
      // one sentence of length 1, one head of width 1
      {1, 1, 1, 1, 1, {1}, false, 0.0f, QkvLayout::Separate},
      // encoder self-attention without key padding (null k_len), dropout, odd head width
      {2, 35, 35, 4, 33, {}, false, 0.2f, QkvLayout::Separate},
      // causal with more queries than a tile and keys beyond k_len
      {1, 40, 40, 1, 64, {23}, true, 0.0f, QkvLayout::Separate},
      // the model's cross-attention layout (q alone, k|v slices of one buffer, unowned columns), Tq != Tk, dropout,
      // a fully padded sentence and one with a single key
      {3, 13, 29, 2, 24, {29, 1, 0}, false, 0.1f, QkvLayout::FusedKv},
      // the per-head backward's largest length (Tq = Tk = 128), causal, padding, dropout
      {2, 128, 128, 2, 64, {128, 77}, true, 0.1f, QkvLayout::FusedQkv},
      // over the per-head bound: Tq = Tk = 131 (tiled only), causal, padding, dropout
      {2, 131, 131, 2, 16, {131, 60}, true, 0.1f, QkvLayout::FusedQkv},
      // over the bound in Tk only (cross-attention), a fully padded sentence
      {2, 7, 150, 1, 32, {150, 0}, false, 0.1f, QkvLayout::FusedKv},
      // within the length bound but over 227 KiB of shared memory (Dh = 128): tiled only
      {1, 100, 90, 1, 128, {90}, false, 0.1f, QkvLayout::FusedKv},
  };
}

std::string attention_trace(const AttnCase& c) {
  return "B=" + std::to_string(c.B) + " Tq=" + std::to_string(c.Tq) + " Tk=" + std::to_string(c.Tk) +
         " H=" + std::to_string(c.H) + " Dh=" + std::to_string(c.Dh) + " causal=" + std::to_string(c.causal);
}

// q, k, v (and dq, dk, dv) live where attention_layout puts them.

// The attention of ops/attention.hpp in double, with R applied wherever a naive bf16 pipeline stores a tensor:
// scores, probabilities, dropped probabilities, the output; in backward dout . v before and after the dropout
// map, ds (scale included), dq, dk, dv. R = identity gives the exact answer for the given inputs. The dropout
// mask and the float scale are the kernels' (seed 99, step 5, site as in attention_geometry). Writes out
// [B, Tq, H * Dh], lse [B, H, Tq] (or null) and the channels of dq (q's addressing), dk, dv (k's and v's).
template <class Round>
void reference_attention(const AttnCase& c, const float* q, const float* k, const float* v, const float* dout,
                         const int64_t* pair, Round R, double* out, double* lse, double* dq, double* dk, double* dv) {
  const AttnLayout L = attention_layout(c);
  const int D = c.H * c.Dh;
  const double scale = double(1.0f / std::sqrt(float(c.Dh)));
  const double inv_keep = 1.0 / (1.0 - double(c.p_drop));
  const uint32_t site = K::dropout_site(1, 2, K::DropoutKind::SelfAttnProbs);
  auto qi = [&](int b, int t, int h) { return (size_t(b) * c.Tq + t) * L.q_width + size_t(h) * c.Dh; };
  auto ki = [&](int b, int j, int h) { return (size_t(b) * c.Tk + j) * L.kv_width + size_t(h) * c.Dh; };
  auto oi = [&](int b, int t, int h) { return size_t(b) * c.Tq * D + size_t(t) * D + size_t(h) * c.Dh; };
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.H; ++h) {
      const int k_len = c.k_len.empty() ? c.Tk : c.k_len[b];
      std::vector<double> gk(size_t(c.Tk) * c.Dh, 0.0), gv(size_t(c.Tk) * c.Dh, 0.0);
      for (int t = 0; t < c.Tq; ++t) {
        const int n_valid = c.causal ? std::min(k_len, t + 1) : k_len;
        const float* qt = q + qi(b, t, h);
        const float* go = dout + oi(b, t, h);
        std::vector<double> p(n_valid), pk(n_valid), fac(n_valid, 1.0), dp(n_valid), ds(n_valid);
        double max = -INFINITY;
        for (int j = 0; j < n_valid; ++j) {
          const float* kj = k + L.k_off + ki(b, j, h);
          double dot = 0.0;
          for (int d = 0; d < c.Dh; ++d) dot += double(qt[d]) * kj[d];
          p[j] = R(scale * dot);
          max = std::max(max, p[j]);
        }
        double sum = 0.0;
        for (int j = 0; j < n_valid; ++j) sum += std::exp(p[j] - max);
        for (int j = 0; j < n_valid; ++j) p[j] = R(std::exp(p[j] - max) / sum);
        if (lse) lse[(size_t(b) * c.H + h) * c.Tq + t] = n_valid > 0 ? max + std::log(sum) : -INFINITY;
        if (c.p_drop > 0.0f) {
          const uint64_t key = K::dropout_row_key(99, 5, uint64_t(pair[b]), uint32_t(t), site);
          for (int j = 0; j < n_valid; ++j)
            fac[j] = K::dropout_keep(key, uint32_t(h) * uint32_t(c.Tk) + uint32_t(j), c.p_drop) ? inv_keep : 0.0;
        }
        for (int j = 0; j < n_valid; ++j) pk[j] = R(p[j] * fac[j]);
        for (int d = 0; d < c.Dh; ++d) {
          double acc = 0.0;
          for (int j = 0; j < n_valid; ++j) acc += pk[j] * v[L.v_off + ki(b, j, h) + d];
          out[oi(b, t, h) + d] = R(acc);
        }
        double sigma = 0.0;
        for (int j = 0; j < n_valid; ++j) {
          const float* vj = v + L.v_off + ki(b, j, h);
          double dot = 0.0;
          for (int d = 0; d < c.Dh; ++d) dot += double(go[d]) * vj[d];
          dp[j] = R(R(dot) * fac[j]);
          sigma += p[j] * dp[j];
        }
        for (int j = 0; j < n_valid; ++j) ds[j] = R(scale * p[j] * (dp[j] - sigma));
        for (int d = 0; d < c.Dh; ++d) {
          double acc = 0.0;
          for (int j = 0; j < n_valid; ++j) acc += ds[j] * k[L.k_off + ki(b, j, h) + d];
          dq[qi(b, t, h) + d] = R(acc);
        }
        for (int j = 0; j < n_valid; ++j)
          for (int d = 0; d < c.Dh; ++d) {
            gk[size_t(j) * c.Dh + d] += ds[j] * qt[d];
            gv[size_t(j) * c.Dh + d] += pk[j] * go[d];
          }
      }
      for (int j = 0; j < c.Tk; ++j)
        for (int d = 0; d < c.Dh; ++d) {
          dk[L.k_off + ki(b, j, h) + d] = R(gk[size_t(j) * c.Dh + d]);
          dv[L.v_off + ki(b, j, h) + d] = R(gv[size_t(j) * c.Dh + d]);
        }
    }
}

const auto kExact = [](double x) { return x; };
const auto kNaiveBf16 = [](double x) { return double(round_bf16(float(x))); };

// Inputs of one bf16 attention case (bf16 values held in floats) and the buffers of its gradients.
struct AttnInputs {
  std::vector<float> q, k, v, dout;
  std::vector<int64_t> pair;
  size_t q_elems, kv_elems, out_elems, stat_elems;
};

AttnInputs attention_inputs(const AttnCase& c, std::mt19937& rng) {
  const AttnLayout L = attention_layout(c);
  AttnInputs in;
  in.q_elems = size_t(c.B) * c.Tq * L.q_width, in.kv_elems = size_t(c.B) * c.Tk * L.kv_width;
  in.out_elems = size_t(c.B) * c.Tq * c.H * c.Dh, in.stat_elems = size_t(c.B) * c.H * c.Tq;
  in.q = random_bf16(in.q_elems, rng, -2.0f, 2.0f);
  in.k = L.k_shares_q ? in.q : random_bf16(in.kv_elems, rng, -2.0f, 2.0f);
  in.v = L.v_shares_k ? in.k : random_bf16(in.kv_elems, rng);
  in.dout = random_bf16(in.out_elems, rng);
  in.pair = random_pairs(c.B, rng);
  return in;
}

// The reference's outputs; the gradients in the layout's buffers (g[0] holds dq; g[1] dk and g[2] dv unless
// they share another's buffer, then empty). Columns no head owns stay NaN.
struct AttnOutputs {
  std::vector<double> out, lse, g[3];
};

template <class Round>
AttnOutputs reference_outputs(const AttnCase& c, const AttnInputs& in, Round R) {
  const AttnLayout L = attention_layout(c);
  const auto sizes = attention_buffer_sizes(L, in.q_elems, in.kv_elems);
  AttnOutputs o;
  o.out.assign(in.out_elems, NAN), o.lse.assign(in.stat_elems, NAN);
  for (int i = 0; i < 3; ++i) o.g[i].assign(sizes[i], NAN);
  reference_attention(c, in.q.data(), in.k.data(), in.v.data(), in.dout.data(), in.pair.data(), R, o.out.data(),
                      o.lse.data(), o.g[0].data(), o.g[L.dk_buffer()].data(), o.g[L.dv_buffer()].data());
  return o;
}

// Two bf16 results of the same float computation, up to FMA contraction: each element equal, or one bf16 ulp
// apart (a last-bit difference in float flips a rounding), or within `floor` of the largest |b| (elements that
// are small through cancellation, where a float-level difference exceeds their own ulp). NaN where NaN.
::testing::AssertionResult bf16_agree(const std::string& what, const std::vector<float>& a,
                                      const std::vector<float>& b, double floor) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
  double max_b = 0.0;
  for (float x : b)
    if (std::isfinite(x)) max_b = std::max(max_b, std::fabs(double(x)));
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) {
      if (std::isnan(a[i]) != std::isnan(b[i]))
        return ::testing::AssertionFailure() << what << ": NaN mismatch at " << i << ": " << a[i] << " vs " << b[i];
      continue;
    }
    int e = 0;
    std::frexp(std::max(std::fabs(a[i]), std::fabs(b[i])), &e);
    const double ulp = std::ldexp(1.0, e - 8);  // bf16: 8 significant bits
    if (std::fabs(double(a[i]) - double(b[i])) > std::max(ulp, floor * max_b))
      return ::testing::AssertionFailure() << what << ": element " << i << ": " << a[i] << " vs " << b[i];
  }
  return ::testing::AssertionSuccess();
}

// The attention of a case through the dispatcher on b.dev: forward into "out" (saving what the backend keeps in
// scratch "saved"), then backward (the path attention_backward picks) into the layout's gradient buffers g0..g2.
template <class T>
void attention_run(const AttnCase& c, Buffers& b, T* (Buffers::*get)(const std::string&)) {
  const AttnLayout L = attention_layout(c);
  K::AttentionShape<T> sh = attention_geometry<T>(c);
  sh.k_len = c.k_len.empty() ? nullptr : b.i32("k_len");
  sh.pair = b.i64("pair");
  const std::string gk = "g" + std::to_string(L.dk_buffer()), gv = "g" + std::to_string(L.dv_buffer());
  K::AttentionForward<T> f;
  f.shape = sh, f.q = (b.*get)("q"), f.k = (b.*get)(L.k_shares_q ? "q" : "k") + L.k_off;
  f.v = (b.*get)(L.v_shares_k ? (L.k_shares_q ? "q" : "k") : "v") + L.v_off, f.out = (b.*get)("out");
  f.saved = b.scratch("saved", K::attention_saved_bytes(b.dev, sh));
  K::attention_forward(b.dev, f);
  K::AttentionBackward<T> bw;
  bw.shape = sh, bw.dout = (b.*get)("dout"), bw.q = f.q, bw.k = f.k, bw.v = f.v, bw.out = f.out, bw.saved = f.saved;
  bw.dq = (b.*get)("g0"), bw.dk = (b.*get)(gk) + L.k_off, bw.dv = (b.*get)(gv) + L.v_off;
  K::attention_backward(b.dev, bw);
}

// Each explicit CUDA backward path that can take the case (Tiled, PerHead where it fits; Auto is what the
// dispatcher ran), from the CUDA forward's out and saved, into freshly poisoned buffers: returned [path][buffer]
// as floats, `ran` per path. PerHead where it does not fit must be refused before any device work.
template <class T>
void attention_paths_run(const AttnCase& c, Buffers& b, T* (Buffers::*get)(const std::string&),
                         const std::array<size_t, 3>& sizes, std::vector<float> (&g)[2][3], bool (&ran)[2],
                         int times = 1) {
  using Path = K::cuda::AttentionBackwardPath;
  const AttnLayout L = attention_layout(c);
  K::AttentionShape<T> sh = attention_geometry<T>(c);
  sh.k_len = c.k_len.empty() ? nullptr : b.i32("k_len");
  sh.pair = b.i64("pair");
  K::AttentionBackward<T> bw;
  bw.shape = sh, bw.dout = (b.*get)("dout"), bw.q = (b.*get)("q"), bw.k = (b.*get)(L.k_shares_q ? "q" : "k") + L.k_off;
  bw.v = (b.*get)(L.v_shares_k ? (L.k_shares_q ? "q" : "k") : "v") + L.v_off, bw.out = (b.*get)("out");
  bw.saved = b.scratch("saved");
  for (const Path path : attention_paths(c)) {
    if (path == Path::Auto) continue;  // the dispatcher's attention_backward, which the case itself ran
    const int pi = path == Path::Tiled ? 0 : 1;
    for (int t = 0; t < times; ++t) {
      std::vector<TensorInit> fresh;
      for (int i = 0; i < 3; ++i) {
        const auto p = poison(sizes[i]);
        if (std::is_same_v<T, float>) {
          fresh.push_back({"g" + std::to_string(i), DType::F32, bytes_of(p)});
        } else {
          std::vector<K::bf16> h(p.size());
          for (size_t j = 0; j < p.size(); ++j) h[j] = K::to_bf16(p[j]);
          fresh.push_back({"g" + std::to_string(i), DType::BF16, bytes_of(h)});
        }
      }
      Buffers pb(Device::CUDA, fresh);
      bw.dq = (pb.*get)("g0"), bw.dk = (pb.*get)("g" + std::to_string(L.dk_buffer())) + L.k_off;
      bw.dv = (pb.*get)("g" + std::to_string(L.dv_buffer())) + L.v_off;
      K::cuda::attention_backward(bw, path, nullptr);
      for (int i = 0; i < 3; ++i) {
        const auto v = pb.read("g" + std::to_string(i)).values();
        if (t == 0) {
          g[pi][i] = v;
        } else {
          EXPECT_TRUE(same_bits(std::string("attention gradient buffer ") + std::to_string(i) + " " +
                                    path_name(path) + " run twice", v, g[pi][i]));
        }
      }
    }
    ran[pi] = true;
  }
  bw.dq = bw.dk = bw.dv = nullptr;  // the request is refused before any device work
  if (!K::cuda::attention_backward_per_head_fits(c.Tq, c.Tk, c.Dh)) {
    EXPECT_THROW(K::cuda::attention_backward(bw, Path::PerHead, nullptr), aiayn::Error);
  }
}

std::string attention_name(const char* prefix, const AttnCase& c) {
  std::string s = std::string(prefix) + dims({{"B", c.B}, {"Tq", c.Tq}, {"Tk", c.Tk}, {"H", c.H}, {"Dh", c.Dh}});
  if (c.causal) s += " causal";
  if (!c.k_len.empty()) {
    s += " k_len=";
    for (size_t i = 0; i < c.k_len.size(); ++i) s += (i ? "," : "") + std::to_string(c.k_len[i]);
  }
  if (c.p_drop > 0) s += " p=" + std::to_string(c.p_drop);
  s += c.layout == QkvLayout::FusedQkv ? " fused qkv" : c.layout == QkvLayout::FusedKv ? " fused kv" : "";
  return s;
}

const char* kGradNames[3] = {"g0", "g1", "g2"};
// The fp32 attention backward's limit (its reason in attention_cases_fp32); also the bf16 floor.
constexpr double kAttentionGradLimit = 1e-5;

void attention_cases_fp32(std::vector<OpCase>& out) {
  std::mt19937 rng(6);
  for (const AttnCase& c : attention_cases()) {
    const AttnLayout L = attention_layout(c);
    const int D = c.H * c.Dh;
    const size_t q_elems = size_t(c.B) * c.Tq * L.q_width, kv_elems = size_t(c.B) * c.Tk * L.kv_width;
    const size_t out_elems = size_t(c.B) * c.Tq * D;
    const auto sizes = attention_buffer_sizes(L, q_elems, kv_elems);
    OpCase oc;
    oc.name = attention_name("attention", c);
    const auto qb = random_floats(q_elems, rng, -2.0f, 2.0f);
    oc.f32("q", qb);
    if (!L.k_shares_q) oc.f32("k", random_floats(kv_elems, rng, -2.0f, 2.0f));
    if (!L.v_shares_k) oc.f32("v", random_floats(kv_elems, rng));
    std::vector<int64_t> pair(c.B);
    for (auto& p : pair) p = int64_t(rng() % 1000000);
    oc.i64("pair", pair), oc.i32("k_len", c.k_len), oc.f32("out", poison(out_elems));
    oc.f32("dout", random_floats(out_elems, rng));
    for (int i = 0; i < 3; ++i)
      if (sizes[i]) oc.f32(kGradNames[i], poison(sizes[i]));
    oc.run = [c](Buffers& b) { attention_run<float>(c, b, &Buffers::f); };
    oc.check("out", Cmp::Norm, 1e-5,
             "online softmax (rescaled partial sums) against a two-pass softmax, fp32 throughout: a few ulp per key");
    const char* grad_why =
        "ds = p (dp - delta) cancels: the CUDA delta is dout . out (from its own forward), the CPU's sum_j p dp; "
        "each carries ~Tk ulp, amplified by the cancellation. Measured under the emulator: 8.0e-7 at most (Tk <= "
        "150); 1e-5 leaves 12 times that for a GPU's expf and FMA contraction (was 1e-4)";
    for (int i = 0; i < 3; ++i)
      if (sizes[i]) oc.check(kGradNames[i], Cmp::Norm, kAttentionGradLimit, grad_why);
    oc.extra = [c, sizes](Buffers& b, const Outputs& got, const Refs& refs) {
      std::vector<float> g[2][3];
      bool ran[2] = {false, false};
      attention_paths_run<float>(c, b, &Buffers::f, sizes, g, ran);
      for (int pi = 0; pi < 2; ++pi) {
        if (!ran[pi]) continue;
        SCOPED_TRACE(path_name(pi == 0 ? K::cuda::AttentionBackwardPath::Tiled : K::cuda::AttentionBackwardPath::PerHead));
        for (int i = 0; i < 3; ++i) {
          if (sizes[i]) {
            EXPECT_TRUE(close(kGradNames[i], g[pi][i], refs.at(kGradNames[i]).want, kAttentionGradLimit));
          }
        }
        EXPECT_TRUE(padded_gradients_zero(c, g[pi]));
      }
      for (int i = 0; i < 3; ++i) {
        if (!sizes[i]) continue;
        // The two paths perform the same float operations in the same order (bit-identical under the emulator);
        // on a GPU nvcc might contract a product into an FMA differently in the two kernels, a last-bit
        // difference per term: at most what a different summation order gives (the CPU comparison's limit).
        if (ran[1]) {
          EXPECT_TRUE(close(std::string(kGradNames[i]) + " per-head vs tiled", g[1][i], g[0][i], 1e-5));
        }
        // The dispatcher's attention_backward is Auto: the per-head kernel where it fits, the tiled ones elsewhere,
        // the same bits (each is deterministic).
        EXPECT_TRUE(bitwise_equal(got.at(kGradNames[i]).values(), g[ran[1] ? 1 : 0][i])) << kGradNames[i] << ": auto";
      }
    };
    out.push_back(std::move(oc));
  }
}

// bf16 attention against the double reference with rounding hooks (reference_attention).
void attention_cases_bf16(std::vector<OpCase>& out) {
  std::mt19937 rng(23);
  std::vector<std::pair<AttnCase, bool>> cases;  // (case, run twice)
  for (const AttnCase& c : attention_cases()) cases.push_back({c, false});
  // determinism of both backward paths (causal, padding, dropout), each path run twice
  cases.push_back({AttnCase{2, 35, 35, 4, 33, {35, 20}, true, 0.2f, QkvLayout::Separate}, true});
  for (const auto& [c, twice] : cases) {
    const AttnLayout L = attention_layout(c);
    OpCase oc;
    oc.name = attention_name("attention bf16", c) + (twice ? " run twice" : "");
    auto in = std::make_shared<const AttnInputs>(attention_inputs(c, rng));
    const auto sizes = attention_buffer_sizes(L, in->q_elems, in->kv_elems);
    oc.bf16("q", in->q);
    if (!L.k_shares_q) oc.bf16("k", in->k);
    if (!L.v_shares_k) oc.bf16("v", in->v);
    oc.i64("pair", in->pair), oc.i32("k_len", c.k_len), oc.bf16("out", poison(in->out_elems));
    oc.bf16("dout", in->dout);
    for (int i = 0; i < 3; ++i)
      if (sizes[i]) oc.bf16(kGradNames[i], poison(sizes[i]));
    oc.run = [c](Buffers& b) { attention_run<K::bf16>(c, b, &Buffers::h); };
    oc.reference = [c, in, sizes](Refs& r) {
      const AttnOutputs exact = reference_outputs(c, *in, kExact), naive = reference_outputs(c, *in, kNaiveBf16);
      r["out"].want = as_floats(naive.out), r["out"].exact = exact.out;
      r["lse"].want = as_floats(exact.lse);
      for (int i = 0; i < 3; ++i)
        if (sizes[i]) r[kGradNames[i]].want = as_floats(naive.g[i]), r[kGradNames[i]].exact = exact.g[i];
    };
    oc.check("out", Cmp::TwiceNaive, 1e-5, "the fp32 attention limit (online softmax against two-pass, float arithmetic)");
    for (int i = 0; i < 3; ++i)
      if (sizes[i]) oc.check(kGradNames[i], Cmp::TwiceNaive, kAttentionGradLimit, "the fp32 attention backward limit (ds cancels)");
    oc.extra = [c, sizes, twice = twice](Buffers& b, const Outputs& got, const Refs& refs) {
      // lse, CUDA's documented saved layout [B, H, Tq] float32 of exactly representable scores (bf16 products
      // are exact in float): float-level error against the exact lse.
      const size_t stat = size_t(c.B) * c.H * c.Tq;
      std::vector<float> lse(stat);
      K::cuda_synchronize();
      if (stat) K::device_copy(Device::CPU, lse.data(), Device::CUDA, b.scratch("saved"), stat * sizeof(float));
      EXPECT_TRUE(close("attention bf16 lse", lse, refs.at("lse").want, 1e-5));
      std::vector<float> g[2][3];
      bool ran[2] = {false, false};
      attention_paths_run<K::bf16>(c, b, &Buffers::h, sizes, g, ran, twice ? 2 : 1);
      for (int pi = 0; pi < 2; ++pi) {
        if (!ran[pi]) continue;
        for (int i = 0; i < 3; ++i) {
          if (sizes[i]) {
            EXPECT_TRUE(within_twice_naive(std::string(kGradNames[i]) + " path " + std::to_string(pi), g[pi][i],
                                           refs.at(kGradNames[i]).want, refs.at(kGradNames[i]).exact, kAttentionGradLimit));
          }
        }
        EXPECT_TRUE(padded_gradients_zero(c, g[pi]));
      }
      for (int i = 0; i < 3; ++i) {
        if (!sizes[i]) continue;
        // As in fp32 the paths agree up to FMA contraction (bit-identical under the emulator); floor: the fp32
        // limit for the two paths.
        if (ran[1]) {
          EXPECT_TRUE(bf16_agree(std::string(kGradNames[i]) + " per-head vs tiled", g[1][i], g[0][i], 1e-5));
        }
        EXPECT_TRUE(bitwise_equal(got.at(kGradNames[i]).values(), g[ran[1] ? 1 : 0][i])) << kGradNames[i] << ": auto";
      }
    };
    out.push_back(std::move(oc));
  }
}


// ---- the table: bf16 cases (the reference is computed on the host) -----------------------------------------
void dropout_cases_bf16(std::vector<OpCase>& out) {
  std::mt19937 rng(13);
  struct Case { int rows, cols, seq_len; float p; bool in_place; };
  for (const Case c : {Case{21, 37, 7, 0.1f, false}, Case{1, 1, 1, 0.5f, false}, Case{15, 513, 5, 0.3f, true},
                       Case{6, 10, 3, 0.0f, false}}) {
    const size_t n = size_t(c.rows) * c.cols;
    const auto x = random_bf16(n, rng);
    const auto pair = random_pairs(c.rows / c.seq_len, rng);
    for (const bool backward : {false, true}) {
      OpCase oc;
      oc.name = std::string(backward ? "dropout_backward bf16" : "dropout_forward bf16") +
                dims({{"rows", c.rows}, {"cols", c.cols}, {"seq_len", c.seq_len}}) + " p=" + std::to_string(c.p) +
                (c.in_place ? " in place" : "");
      oc.bf16("x", x), oc.i64("pair", pair), oc.bf16("y", poison(n));
      const std::string y = c.in_place ? "x" : "y";
      oc.run = [c, backward](Buffers& b) {
        K::DropoutArgs<K::bf16> g;
        static_cast<K::DropoutMask&>(g) = test_mask(b.i64("pair"), c.seq_len, c.p, 5);
        g.rows = c.rows, g.cols = c.cols, g.x = b.h("x"), g.y = c.in_place ? b.h("x") : b.h("y");
        backward ? K::dropout_backward(b.dev, g) : K::dropout_forward(b.dev, g);
      };
      oc.reference = [=](Refs& r) {  // the CPU's float map on the bf16 values, rounded once
        std::vector<float> want = poison(n);
        K::DropoutArgs<float> a;
        static_cast<K::DropoutMask&>(a) = test_mask(pair.data(), c.seq_len, c.p, 5);
        a.rows = c.rows, a.cols = c.cols, a.x = x.data(), a.y = want.data();
        backward ? K::cpu::dropout_backward(a) : K::cpu::dropout_forward(a);
        r[y].want = round_bf16(want);
      };
      oc.check(y, Cmp::Norm, 0.0, "exact: the same float division of the same value, rounded to nearest even");
      oc.extra = [=](Buffers&, const Outputs& got, const Refs&) {
        EXPECT_TRUE(dropped_where_cpu_drops("dropout bf16", got.at(y).values(), c.rows, c.cols,
                                            test_mask(pair.data(), c.seq_len, c.p, 5)));
      };
      out.push_back(std::move(oc));
    }
  }
}

void elementwise_cases_bf16(std::vector<OpCase>& out) {
  std::mt19937 rng(14);
  const size_t n = 1001;
  auto y = random_bf16(n, rng);
  for (size_t i = 0; i < n; i += 7) y[i] = 0.0f;  // y == 0 passes no gradient
  const auto dy = random_bf16(n, rng);
  for (const bool in_place : {false, true}) {
    OpCase oc;
    oc.name = "relu_backward bf16 n=1001" + std::string(in_place ? " in place" : "");
    oc.bf16("y", y), oc.bf16("dy", dy), oc.bf16("dx", poison(n));
    const std::string dx = in_place ? "dy" : "dx";
    oc.run = [=](Buffers& b) {
      K::ReluBackward<K::bf16> r;
      r.n = n, r.y = b.h("y"), r.dy = b.h("dy"), r.dx = in_place ? b.h("dy") : b.h("dx");
      K::relu_backward(b.dev, r);
    };
    oc.reference = [=](Refs& r) {
      std::vector<float> want(n);
      for (size_t i = 0; i < n; ++i) want[i] = y[i] > 0.0f ? dy[i] : 0.0f;
      r[dx].want = want;
    };
    oc.check(dx, Cmp::Norm, 0.0, "a selection: exact");
    out.push_back(std::move(oc));
  }
  {
    const auto a = random_bf16(n, rng), b3 = random_bf16(n, rng, -3.0f, 3.0f);
    for (const bool in_place : {false, true}) {
      OpCase oc;
      oc.name = "add bf16 n=1001" + std::string(in_place ? " y aliases a" : "");
      oc.bf16("a", a), oc.bf16("b", b3), oc.bf16("y", poison(n));
      const std::string y_name = in_place ? "a" : "y";
      oc.run = [=](Buffers& b) {
        K::add(b.dev, K::AddArgs<K::bf16>{b.h("a"), b.h("b"), in_place ? b.h("a") : b.h("y"), n});
      };
      oc.reference = [=](Refs& r) {
        std::vector<float> want(n);
        for (size_t i = 0; i < n; ++i) want[i] = round_bf16(a[i] + b3[i]);
        r[y_name].want = want;
      };
      oc.check(y_name, Cmp::Norm, 0.0, "one float addition of two bf16 values, rounded once: exact");
      out.push_back(std::move(oc));
    }
  }
  for (const int rows : {1, 300, 777}) {
    const int cols = 45;
    OpCase oc;
    oc.name = "bias_grad bf16 -> fp32" + dims({{"rows", rows}, {"cols", cols}});
    const auto g = random_bf16(size_t(rows) * cols, rng);
    const auto db0 = random_floats(cols, rng);
    oc.bf16("dy", g), oc.f32("db", db0);
    oc.run = [=](Buffers& b) {
      K::BiasGrad<K::bf16, float> bg;
      bg.rows = rows, bg.cols = cols, bg.dy = b.h("dy"), bg.db = b.f("db");
      K::bias_grad(b.dev, bg);
    };
    oc.reference = [=](Refs& r) {
      std::vector<float> db = db0;
      K::BiasGrad<float> bg;
      bg.rows = rows, bg.cols = cols, bg.dy = g.data(), bg.db = db.data();
      K::cpu::bias_grad(bg);
      r["db"].want = db;
    };
    oc.check("db", Cmp::Norm, 1e-5, "the same numbers on both sides and float32 sums (fp32 bias_grad's limit and reason)");
    out.push_back(std::move(oc));
  }
}

void embedding_cases_bf16(std::vector<OpCase>& out) {
  std::mt19937 rng(17);
  struct Case { int B, S, D, V; float p; bool add_positions, explicit_positions; };
  for (const Case c : {Case{3, 7, 37, 11, 0.1f, true, false}, Case{1, 1, 1, 1, 0.5f, false, false},
                       Case{2, 13, 515, 5, 0.3f, false, false}, Case{1, 29, 515, 7, 0.0f, true, true}}) {
    OpCase oc;
    oc.name = "embed bf16" + dims({{"B", c.B}, {"S", c.S}, {"D", c.D}, {"V", c.V}}) + " p=" + std::to_string(c.p) +
              (c.add_positions ? " positions" : " no positions") + (c.explicit_positions ? " explicit" : "");
    const int N = c.B * c.S;
    std::vector<int32_t> ids(N), positions(N);
    for (int n = 0; n < N; ++n) ids[n] = int32_t(rng() % c.V), positions[n] = int32_t(rng() % 60);
    const auto table = random_floats(size_t(c.V) * c.D, rng);
    const auto pair = random_pairs(c.B, rng);
    const auto dout = random_bf16(size_t(N) * c.D, rng);
    const auto dtable0 = random_floats(size_t(c.V) * c.D, rng);
    oc.i32("ids", ids), oc.i32("positions", positions), oc.f32("table", table), oc.i64("pair", pair);
    oc.bf16("out", poison(size_t(N) * c.D)), oc.bf16("dout", dout), oc.f32("dtable", dtable0);
    const float scale = std::sqrt(float(c.D));
    oc.run = [=](Buffers& b) {
      const K::DropoutMask m = test_mask(b.i64("pair"), c.S, c.p, 3);
      K::EmbedForward<K::bf16, float> g;
      g.N = N, g.D = c.D, g.V = c.V, g.seq_len = c.S, g.scale = scale, g.add_positions = c.add_positions;
      g.ids = b.i32("ids"), g.table = b.f("table"), g.out = b.h("out"), g.drop = m;
      g.positions = c.explicit_positions ? b.i32("positions") : nullptr;
      K::embed_forward(b.dev, g);
      K::EmbedBackward<K::bf16, float> gb;
      gb.N = N, gb.D = c.D, gb.V = c.V, gb.scale = scale, gb.ids = b.i32("ids"), gb.dout = b.h("dout");
      gb.dtable = b.f("dtable"), gb.drop = m;
      K::embed_backward(b.dev, gb);
    };
    oc.reference = [=](Refs& r) {
      const K::DropoutMask m = test_mask(pair.data(), c.S, c.p, 3);
      std::vector<float> out_f(size_t(N) * c.D);  // naive: the CPU's float result, then rounded
      K::EmbedForward<float> f;
      f.N = N, f.D = c.D, f.V = c.V, f.seq_len = c.S, f.scale = scale, f.add_positions = c.add_positions;
      f.ids = ids.data(), f.table = table.data(), f.out = out_f.data(), f.drop = m;
      f.positions = c.explicit_positions ? positions.data() : nullptr;
      K::cpu::embed_forward(f);
      const auto table_d = as_doubles(table);
      std::vector<double> exact(out_f.size());
      K::EmbedForward<double> fd;
      fd.N = N, fd.D = c.D, fd.V = c.V, fd.seq_len = c.S, fd.scale = scale, fd.add_positions = c.add_positions;
      fd.ids = ids.data(), fd.table = table_d.data(), fd.out = exact.data(), fd.drop = m, fd.positions = f.positions;
      K::cpu::embed_forward(fd);
      r["out"].want = round_bf16(out_f), r["out"].exact = exact;
      std::vector<float> dtable = dtable0;
      K::EmbedBackward<float> bw;
      bw.N = N, bw.D = c.D, bw.V = c.V, bw.scale = scale, bw.ids = ids.data(), bw.dout = dout.data();
      bw.dtable = dtable.data(), bw.drop = m;
      K::cpu::embed_backward(bw);
      r["dtable"].want = dtable;
    };
    if (!c.add_positions) {
      oc.check("out", Cmp::Norm, 0.0, "the CPU's float arithmetic (uncontracted product, one division), rounded once");
    } else {
      oc.check("out", Cmp::TwiceNaive, 1e-6, "the sinusoid's last-place differences (fp32 limit 1e-6) may flip a rounding");
    }
    oc.check("dtable", Cmp::Norm, 0.0,
             "dout's bf16 values are exact floats and the table is float32: the CPU's float additions in its order");
    oc.extra = [=](Buffers&, const Outputs& got, const Refs&) {
      EXPECT_TRUE(dropped_where_cpu_drops("embed_forward bf16", got.at("out").values(), N, c.D,
                                          test_mask(pair.data(), c.S, c.p, 3)));
    };
    out.push_back(std::move(oc));
  }
}

// Activations: bf16 A, B, C and bias, float32 accumulation. The naive bf16 GEMM rounds the product (with beta C)
// to bf16 and adds the bias and ReLU in a second pass, rounding again, as an unfused bf16 pipeline would;
// cuBLASLt's epilogue rounds once, the fallback bias kernel (beta != 0, misaligned bias) twice.
void gemm_cases_bf16(std::vector<OpCase>& out) {
  std::mt19937 rng(18);
  std::vector<GemmCase> cases(std::begin(kGemmCases), std::end(kGemmCases));
  cases.push_back({64, 96, 128, 0, 0.0f, true, true, false});  // 16-byte aligned rows: the tensor-core kernels
  for (const GemmCase& c : cases)
    for (int trans = 0; trans < 4; ++trans) {
      const bool ta = trans & 1, tb = trans & 2;
      const GemmGeometry g = gemm_geometry(c, ta, tb);
      OpCase oc;
      oc.name = gemm_name("gemm bf16", c, ta, tb);
      const auto A = random_bf16(size_t(g.a_rows) * g.lda, rng), Bm = random_bf16(size_t(g.b_rows) * g.ldb, rng);
      const auto bias = random_bf16(size_t(c.n) + 1, rng);
      const auto C0 = c.beta != 0.0f ? random_bf16(size_t(c.m) * g.ldc, rng) : poison(size_t(c.m) * g.ldc);
      const size_t bias_off = c.misalign_bias ? 1 : 0;
      oc.bf16("A", A), oc.bf16("B", Bm), oc.bf16("bias", bias), oc.bf16("C", C0);
      oc.run = [=](Buffers& b) {
        auto a = gemm_args<K::bf16, K::bf16>(c, ta, tb, g);
        a.a = b.h("A"), a.b = b.h("B"), a.c = b.h("C"), a.bias = c.bias ? b.h("bias") + bias_off : nullptr;
        K::gemm(b.dev, a);
      };
      oc.reference = [=](Refs& r) {
        const auto A_d = as_doubles(A), B_d = as_doubles(Bm), bias_d = as_doubles(bias);
        std::vector<double> exact = as_doubles(C0);  // exact: the double product of the bf16 values
        auto gd = gemm_args<double, double>(c, ta, tb, g);
        gd.a = A_d.data(), gd.b = B_d.data(), gd.c = exact.data(), gd.bias = c.bias ? bias_d.data() + bias_off : nullptr;
        K::cpu::gemm(gd);
        std::vector<float> naive = C0;  // naive bf16: float product rounded, then bias and ReLU rounded again
        auto gf = gemm_args<float, float>(c, ta, tb, g);
        gf.relu = false, gf.a = A.data(), gf.b = Bm.data(), gf.c = naive.data();
        K::cpu::gemm(gf);
        for (int row = 0; row < c.m; ++row)
          for (int col = 0; col < c.n; ++col) {
            float& x = naive[size_t(row) * g.ldc + col];
            x = round_bf16(x);
            if (c.bias) x = round_bf16(x + bias[bias_off + col]);
            if (c.relu) x = x > 0.0f ? x : 0.0f;
          }
        r["C"].want = naive, r["C"].exact = exact;
      };
      oc.check("C", Cmp::TwiceNaive, 2e-5,
               "the fp32 GEMM limit (float32 accumulation order over k <= 130); padding columns of C are never "
               "written: NaN against NaN, or C0's values where beta != 0");
      out.push_back(std::move(oc));
    }
}

// Weight gradients: bf16 A, B accumulated (beta = 1) into float32 C; also a float32 bias epilogue.
void gemm_cases_bf16_float_out(std::vector<OpCase>& out) {
  std::mt19937 rng(19);
  const GemmCase cases[] = {
      {37, 53, 67, 0, 1.0f, false, false, false}, {33, 45, 19, 1, 1.0f, false, false, false},
      {1, 1, 1, 0, 1.0f, false, false, false},    {5, 7, 0, 0, 1.0f, false, false, false},
      {64, 40, 130, 0, 0.0f, true, true, false},  {64, 40, 130, 0, 1.0f, true, false, false},
  };
  for (const GemmCase& c : cases)
    for (int trans = 0; trans < 4; ++trans) {
      const bool ta = trans & 1, tb = trans & 2;
      const GemmGeometry g = gemm_geometry(c, ta, tb);
      OpCase oc;
      oc.name = gemm_name("gemm bf16 -> fp32", c, ta, tb);
      const auto A = random_bf16(size_t(g.a_rows) * g.lda, rng), Bm = random_bf16(size_t(g.b_rows) * g.ldb, rng);
      const auto bias = random_floats(size_t(c.n), rng);
      const auto C0 = c.beta != 0.0f ? random_floats(size_t(c.m) * g.ldc, rng) : poison(size_t(c.m) * g.ldc);
      oc.bf16("A", A), oc.bf16("B", Bm), oc.f32("bias", bias), oc.f32("C", C0);
      oc.run = [=](Buffers& b) {
        auto a = gemm_args<K::bf16, float>(c, ta, tb, g);
        a.a = b.h("A"), a.b = b.h("B"), a.c = b.f("C"), a.bias = c.bias ? b.f("bias") : nullptr;
        K::gemm(b.dev, a);
      };
      oc.reference = [=](Refs& r) {
        std::vector<float> C = C0;
        auto gf = gemm_args<float, float>(c, ta, tb, g);
        gf.a = A.data(), gf.b = Bm.data(), gf.c = C.data(), gf.bias = c.bias ? bias.data() : nullptr;
        K::cpu::gemm(gf);
        r["C"].want = C;
      };
      oc.check("C", Cmp::Norm, 2e-5,
               "float32 output from the same numbers on both sides (bf16 values, exact products in float): only the "
               "float32 accumulation order differs, the fp32 GEMM limit and reason (k <= 130)");
      out.push_back(std::move(oc));
    }
}

void layer_norm_cases_bf16(std::vector<OpCase>& out) {
  std::mt19937 rng(20);
  struct Case { int rows, cols; bool alias_dx; };
  for (const Case c : {Case{37, 333, false}, Case{1, 1, false}, Case{300, 515, true}, Case{5, 31, false}}) {
    const size_t n = size_t(c.rows) * c.cols;
    OpCase oc;
    oc.name = "layer_norm bf16" + dims({{"rows", c.rows}, {"cols", c.cols}}) + (c.alias_dx ? " dx aliases dy" : "");
    const auto x = random_bf16(n, rng, -2.0f, 3.0f);
    const auto gamma = random_floats(c.cols, rng, 0.5f, 1.5f), beta = random_floats(c.cols, rng);
    // Backward from the CPU's float statistics on every side (they are inputs of the backward op).
    std::vector<float> y_f(n), mean_f(c.rows), rstd_f(c.rows);
    K::cpu::layer_norm_forward(K::LayerNormForward<float>{x.data(), gamma.data(), beta.data(), y_f.data(), mean_f.data(),
                                                          rstd_f.data(), c.rows, c.cols, 1e-5f});
    const auto dy = random_bf16(n, rng);
    const auto dgamma0 = random_floats(c.cols, rng), dbeta0 = random_floats(c.cols, rng);
    oc.bf16("x", x), oc.f32("gamma", gamma), oc.f32("beta", beta), oc.bf16("y", poison(n));
    oc.f32("mean", poison(c.rows)), oc.f32("rstd", poison(c.rows)), oc.f32("mean_f", mean_f), oc.f32("rstd_f", rstd_f);
    oc.bf16("dy", dy), oc.bf16("dx", poison(n)), oc.f32("dgamma", dgamma0), oc.f32("dbeta", dbeta0);
    const std::string dx = c.alias_dx ? "dy" : "dx";
    oc.run = [=](Buffers& b) {
      K::layer_norm_forward(b.dev, K::LayerNormForward<K::bf16, float>{b.h("x"), b.f("gamma"), b.f("beta"), b.h("y"),
                                                                       b.f("mean"), b.f("rstd"), c.rows, c.cols, 1e-5f});
      K::layer_norm_backward(b.dev, K::LayerNormBackward<K::bf16, float>{b.h("dy"), b.h("x"), b.f("gamma"),
                                                                         b.f("mean_f"), b.f("rstd_f"), b.h(dx),
                                                                         b.f("dgamma"), b.f("dbeta"), c.rows, c.cols});
    };
    oc.reference = [=](Refs& r) {
      // Naive: the CPU's float LayerNorm of the bf16 values, y rounded; exact: the same in double.
      const auto x_d = as_doubles(x), gamma_d = as_doubles(gamma), beta_d = as_doubles(beta);
      std::vector<double> y_d(n), mean_d(c.rows), rstd_d(c.rows);
      K::cpu::layer_norm_forward(K::LayerNormForward<double>{x_d.data(), gamma_d.data(), beta_d.data(), y_d.data(),
                                                             mean_d.data(), rstd_d.data(), c.rows, c.cols, 1e-5f});
      r["y"].want = round_bf16(y_f), r["y"].exact = y_d;
      r["mean"].want = as_floats(mean_d), r["rstd"].want = as_floats(rstd_d);
      std::vector<float> dx_f(n), dgamma_f = dgamma0, dbeta_f = dbeta0;
      K::cpu::layer_norm_backward(K::LayerNormBackward<float>{dy.data(), x.data(), gamma.data(), mean_f.data(),
                                                              rstd_f.data(), dx_f.data(), dgamma_f.data(),
                                                              dbeta_f.data(), c.rows, c.cols});
      const auto dy_d = as_doubles(dy), mean_fd = as_doubles(mean_f), rstd_fd = as_doubles(rstd_f);
      std::vector<double> dx_d(n), dgamma_d = as_doubles(dgamma0), dbeta_d = as_doubles(dbeta0);
      K::cpu::layer_norm_backward(K::LayerNormBackward<double>{dy_d.data(), x_d.data(), gamma_d.data(),
                                                               mean_fd.data(), rstd_fd.data(), dx_d.data(),
                                                               dgamma_d.data(), dbeta_d.data(), c.rows, c.cols});
      r[dx].want = round_bf16(dx_f), r[dx].exact = dx_d;
      r["dgamma"].want = dgamma_f, r["dbeta"].want = dbeta_f;
    };
    oc.check("y", Cmp::TwiceNaive, 1e-5, "the fp32 LayerNorm limit (float statistics over <= 515 columns)");
    oc.check("mean", Cmp::Norm, 1e-5, "float32 statistics of exactly the bf16 values: the fp32 limits and reasons");
    oc.check("rstd", Cmp::Norm, 1e-5, "float32 statistics of exactly the bf16 values: the fp32 limits and reasons");
    oc.check(dx, Cmp::TwiceNaive, 2e-5, "the fp32 LayerNorm dx limit (cancellation of two float row means)");
    oc.check("dgamma", Cmp::Norm, 1e-5, "float32 outputs from the same numbers: column sums in another order");
    oc.check("dbeta", Cmp::Norm, 1e-5, "float32 outputs from the same numbers: column sums in another order");
    out.push_back(std::move(oc));
  }
}

// Naive bf16 here is the unfused bf16 composition: dropout(f) rounded, x + f' rounded (s), LayerNorm of s with y
// rounded; backward dx rounded, then df = dropout(dx) rounded. The fused forward rounds s once. Backward from the
// naive s and statistics on every side (inputs of the backward op).
void residual_norm_cases_bf16(std::vector<OpCase>& out) {
  std::mt19937 rng(21);
  for (const ResidualCase& c : kResidualCases) {
    const int rows = c.B * c.T;
    const size_t n = size_t(rows) * c.cols;
    OpCase oc;
    oc.name = "residual_norm bf16" + residual_trace(c);
    const auto x = random_bf16(n, rng, -2.0f, 2.0f), f = random_bf16(n, rng, -2.0f, 2.0f);
    const auto gamma = random_floats(c.cols, rng, 0.5f, 1.5f), beta = random_floats(c.cols, rng);
    const auto pair = random_pairs(c.B, rng);
    const K::DropoutMask m_host = test_mask(pair.data(), c.T, c.p, 9);
    // The naive forward (its s, mean and rstd are the backward's inputs).
    std::vector<float> f_n(n), s_n(n), y_n(n), mean_n(rows), rstd_n(rows);
    K::DropoutArgs<float> dr;
    static_cast<K::DropoutMask&>(dr) = m_host;
    dr.rows = rows, dr.cols = c.cols, dr.x = f.data(), dr.y = f_n.data();
    K::cpu::dropout_forward(dr);
    for (size_t i = 0; i < n; ++i) s_n[i] = round_bf16(x[i] + round_bf16(f_n[i]));
    K::cpu::layer_norm_forward(K::LayerNormForward<float>{s_n.data(), gamma.data(), beta.data(), y_n.data(),
                                                          mean_n.data(), rstd_n.data(), rows, c.cols, 1e-5f});
    y_n = round_bf16(y_n);
    const auto dy = random_bf16(n, rng);
    const auto dgamma0 = random_floats(c.cols, rng), dbeta0 = random_floats(c.cols, rng);
    oc.bf16("x", x), oc.bf16("f", f), oc.f32("gamma", gamma), oc.f32("beta", beta), oc.i64("pair", pair);
    oc.bf16("s", poison(n)), oc.bf16("y", poison(n)), oc.f32("mean", poison(rows)), oc.f32("rstd", poison(rows));
    oc.bf16("s_n", s_n), oc.f32("mean_n", mean_n), oc.f32("rstd_n", rstd_n);
    oc.bf16("dy", dy), oc.bf16("dx", poison(n)), oc.bf16("df", poison(n)), oc.f32("dgamma", dgamma0);
    oc.f32("dbeta", dbeta0);
    const std::string dx = c.alias_dx ? "dy" : "dx";
    oc.run = [=](Buffers& b) {
      const K::DropoutMask m = test_mask(b.i64("pair"), c.T, c.p, 9);
      K::ResidualNormForward<K::bf16, float> fw;
      fw.rows = rows, fw.cols = c.cols, fw.drop = m, fw.x = b.h("x"), fw.f = b.h("f"), fw.gamma = b.f("gamma");
      fw.beta = b.f("beta"), fw.s = b.h("s"), fw.y = b.h("y"), fw.mean = b.f("mean"), fw.rstd = b.f("rstd");
      K::residual_norm_forward(b.dev, fw);
      K::ResidualNormBackward<K::bf16, float> bw;
      bw.rows = rows, bw.cols = c.cols, bw.drop = m, bw.dy = b.h("dy"), bw.s = b.h("s_n"), bw.gamma = b.f("gamma");
      bw.mean = b.f("mean_n"), bw.rstd = b.f("rstd_n"), bw.dx = b.h(dx), bw.df = b.h("df");
      bw.dgamma = b.f("dgamma"), bw.dbeta = b.f("dbeta");
      K::residual_norm_backward(b.dev, bw);
    };
    oc.reference = [=](Refs& r) {
      const K::DropoutMask mask = test_mask(pair.data(), c.T, c.p, 9);  // this copy's pair
      const auto x_d = as_doubles(x), f_d = as_doubles(f), gamma_d = as_doubles(gamma), beta_d = as_doubles(beta);
      std::vector<double> s_d(n), y_d(n), mean_d(rows), rstd_d(rows);
      K::ResidualNormForward<double> fd;
      fd.rows = rows, fd.cols = c.cols, fd.drop = mask, fd.x = x_d.data(), fd.f = f_d.data();
      fd.gamma = gamma_d.data(), fd.beta = beta_d.data(), fd.s = s_d.data(), fd.y = y_d.data();
      fd.mean = mean_d.data(), fd.rstd = rstd_d.data();
      K::cpu::residual_norm_forward(fd);
      r["s"].want = s_n, r["s"].exact = s_d;
      r["y"].want = y_n, r["y"].exact = y_d;
      r["mean"].want = mean_n, r["mean"].exact = mean_d;
      r["rstd"].want = rstd_n, r["rstd"].exact = rstd_d;
      const auto dy_d = as_doubles(dy), s_nd = as_doubles(s_n), mean_nd = as_doubles(mean_n), rstd_nd = as_doubles(rstd_n);
      std::vector<double> dx_d(n), df_d(n), dgamma_d = as_doubles(dgamma0), dbeta_d = as_doubles(dbeta0);
      K::ResidualNormBackward<double> bd;
      bd.rows = rows, bd.cols = c.cols, bd.drop = mask, bd.dy = dy_d.data(), bd.s = s_nd.data();
      bd.gamma = gamma_d.data(), bd.mean = mean_nd.data(), bd.rstd = rstd_nd.data(), bd.dx = dx_d.data();
      bd.df = df_d.data(), bd.dgamma = dgamma_d.data(), bd.dbeta = dbeta_d.data();
      K::cpu::residual_norm_backward(bd);
      std::vector<float> dx_n(n), df_n(n), dgamma_f = dgamma0, dbeta_f = dbeta0;
      K::cpu::layer_norm_backward(K::LayerNormBackward<float>{dy.data(), s_n.data(), gamma.data(), mean_n.data(),
                                                              rstd_n.data(), dx_n.data(), dgamma_f.data(),
                                                              dbeta_f.data(), rows, c.cols});
      dx_n = round_bf16(dx_n);
      K::DropoutArgs<float> d2;
      static_cast<K::DropoutMask&>(d2) = mask;
      d2.rows = rows, d2.cols = c.cols, d2.x = dx_n.data(), d2.y = df_n.data();
      K::cpu::dropout_backward(d2);
      df_n = round_bf16(df_n);
      r[dx].want = dx_n, r[dx].exact = dx_d;
      r["df"].want = df_n, r["df"].exact = df_d;
      r["dgamma"].want = dgamma_f, r["dbeta"].want = dbeta_f;
    };
    oc.check("s", Cmp::TwiceNaive, 1e-6, "the float32 rounding of the sum before its bf16 rounding (2^-24), with margin");
    oc.check("y", Cmp::TwiceNaive, 1e-5, "the fp32 LayerNorm limits (float statistics over <= 515 columns)");
    oc.check("mean", Cmp::TwiceNaive, 1e-5, "the fp32 LayerNorm limits (float statistics over <= 515 columns)");
    oc.check("rstd", Cmp::TwiceNaive, 1e-5, "the fp32 LayerNorm limits (float statistics over <= 515 columns)");
    oc.check(dx, Cmp::TwiceNaive, 2e-5, "the fp32 LayerNorm dx limit");
    oc.check("df", Cmp::TwiceNaive, 2e-5, "the fp32 LayerNorm dx limit (df is dx through one division)");
    oc.check("dgamma", Cmp::Norm, 1e-5, "float32 column sums of the same numbers, as layer_norm bf16");
    oc.check("dbeta", Cmp::Norm, 1e-5, "float32 column sums of the same numbers, as layer_norm bf16");
    oc.extra = [=](Buffers&, const Outputs& got, const Refs&) {
      const K::DropoutMask mask = test_mask(pair.data(), c.T, c.p, 9);
      EXPECT_TRUE(dropped_where_cpu_drops("residual_norm bf16 s", got.at("s").values(), rows, c.cols, mask, x));
      EXPECT_TRUE(dropped_where_cpu_drops("residual_norm bf16 df", got.at("df").values(), rows, c.cols, mask));
    };
    out.push_back(std::move(oc));
  }
  {  // determinism of the parameter-gradient reduction over 3000 rows (random statistics: bits only)
    std::mt19937 rng25(25);
    const int rows = 3000, cols = 96;
    OpCase oc;
    oc.name = "residual_norm_backward bf16" + dims({{"rows", rows}, {"cols", cols}}) + " run twice";
    oc.i64("pair", std::vector<int64_t>(rows / 30, 7));
    oc.bf16("dy", random_bf16(size_t(rows) * cols, rng25)), oc.bf16("s", random_bf16(size_t(rows) * cols, rng25));
    oc.f32("gamma", random_floats(cols, rng25)), oc.f32("mean", random_floats(rows, rng25));
    oc.f32("rstd", random_floats(rows, rng25, 0.5f, 2.0f));
    oc.bf16("dx", poison(size_t(rows) * cols)), oc.bf16("df", poison(size_t(rows) * cols));
    oc.f32("dgamma", std::vector<float>(cols, 0.0f)), oc.f32("dbeta", std::vector<float>(cols, 0.0f));
    oc.run = [=](Buffers& b) {
      K::ResidualNormBackward<K::bf16, float> bw;
      bw.rows = rows, bw.cols = cols, bw.drop = test_mask(b.i64("pair"), 30, 0.1f, 1), bw.dy = b.h("dy");
      bw.s = b.h("s"), bw.gamma = b.f("gamma"), bw.mean = b.f("mean"), bw.rstd = b.f("rstd");
      bw.dx = b.h("dx"), bw.df = b.h("df"), bw.dgamma = b.f("dgamma"), bw.dbeta = b.f("dbeta");
      K::residual_norm_backward(b.dev, bw);
    };
    oc.reference = [](Refs&) {};  // nothing compared: the statistics are random, only the bits of two runs
    oc.repeat = true, oc.repeat_outputs = {"dgamma", "dbeta", "dx", "df"};
    out.push_back(std::move(oc));
  }
}

void cross_entropy_cases_bf16(std::vector<OpCase>& out) {
  std::mt19937 rng(24);
  struct Case { int N, V; bool in_place, with_grad; };
  for (const Case c : {Case{9, 5003, false, true}, Case{1, 1, false, true}, Case{7, 37, true, true},
                       Case{4, 1031, false, false}}) {
    OpCase oc;
    oc.name = "cross_entropy bf16" + dims({{"N", c.N}, {"V", c.V}}) + (c.in_place ? " in place" : "") +
              (c.with_grad ? "" : " no gradient");
    const int pad_id = c.V > 1 ? 0 : -1;
    // bf16 logits repeat values often (256 per octave), so the argmax meets ties: first maximum on both sides.
    const auto logits = random_bf16(size_t(c.N) * c.V, rng, -4.0f, 4.0f);
    std::vector<int32_t> targets(c.N);
    for (int n = 0; n < c.N; ++n) targets[n] = int32_t(rng() % c.V);
    if (c.N > 2) targets[1] = pad_id, targets[c.N - 1] = pad_id;
    if (c.V > 1) targets[0] = 1 + int32_t(rng() % (c.V - 1));
    const float smoothing = c.V > 1 ? 0.1f : 0.0f, grad_scale = 0.37f;
    oc.bf16("logits", logits), oc.i32("targets", targets), oc.bf16("dlogits", poison(logits.size()));
    const std::string dl = c.in_place ? "logits" : "dlogits";
    oc.run = [=](Buffers& b) {
      K::CrossEntropyArgs<K::bf16> a;
      a.N = c.N, a.V = c.V, a.pad_id = pad_id, a.smoothing = smoothing, a.grad_scale = grad_scale;
      a.logits = b.h("logits"), a.targets = b.i32("targets");
      a.dlogits = !c.with_grad ? nullptr : b.h(dl);
      const auto s = K::cross_entropy(b.dev, a);
      b.record("loss", s.loss), b.record("nll", s.nll), b.record("tokens", double(s.tokens));
      b.record("correct", double(s.correct));
    };
    oc.reference = [=](Refs& r) {
      const auto logits_d = as_doubles(logits);
      std::vector<double> dl_d(logits.size());
      K::CrossEntropyArgs<double> ad;
      ad.N = c.N, ad.V = c.V, ad.pad_id = pad_id, ad.smoothing = smoothing, ad.grad_scale = grad_scale;
      ad.logits = logits_d.data(), ad.dlogits = dl_d.data(), ad.targets = targets.data();
      const auto s = K::cpu::cross_entropy(ad);
      for (const auto& [k, v] : {std::pair<const char*, double>{"loss", s.loss}, {"nll", s.nll},
                                 {"tokens", double(s.tokens)}, {"correct", double(s.correct)}})
        r[k].is_scalar = true, r[k].scalar = v;
      std::vector<float> dl_f(logits.size());
      K::CrossEntropyArgs<float> af;
      af.N = c.N, af.V = c.V, af.pad_id = pad_id, af.smoothing = smoothing, af.grad_scale = grad_scale;
      af.logits = logits.data(), af.dlogits = dl_f.data(), af.targets = targets.data();
      K::cpu::cross_entropy(af);
      r[dl].want = round_bf16(dl_f), r[dl].exact = dl_d;
    };
    oc.check("loss", Cmp::Norm, 1e-6, "the logits are exact in float; float exp per element, double sums (fp32's limit)");
    oc.check("nll", Cmp::Norm, 1e-6, "as loss");
    oc.check("tokens", Cmp::Bits, 0, "a count");
    oc.check("correct", Cmp::Bits, 0, "first maximum on both sides");
    if (c.with_grad)
      oc.check(dl, Cmp::TwiceNaive, 1e-6,
               "naive: the float gradient rounded once; floor: the fp32 dlogits limit (float softmax from a double lse)");
    out.push_back(std::move(oc));
  }
}

std::vector<OpCase> build_cases() {
  std::vector<OpCase> cases;
  embedding_cases(cases);
  embedding_dropout_cases(cases);
  dropout_cases(cases);
  gemm_cases(cases);
  elementwise_cases(cases);
  layer_norm_cases(cases);
  residual_norm_cases(cases);
  attention_cases_fp32(cases);
  cross_entropy_cases(cases);
  optimizer_cases(cases);
  cast_cases(cases);
  dropout_cases_bf16(cases);
  elementwise_cases_bf16(cases);
  embedding_cases_bf16(cases);
  gemm_cases_bf16(cases);
  gemm_cases_bf16_float_out(cases);
  layer_norm_cases_bf16(cases);
  residual_norm_cases_bf16(cases);
  attention_cases_bf16(cases);
  cross_entropy_cases_bf16(cases);
  return cases;
}

}  // namespace


// ---- plain tests: error paths, knobs, whole-op properties ------------------------------------------------
// The embedding ops leave the ids to the caller (the CUDA ones never synchronise): check_token_ids finds the
// first id outside [0, V) on either backend and names it with its index.
TEST(CudaOps, CheckTokenIdsNamesTheFirstBadIdOnBothBackends) {
  REQUIRE_GPU();
  const std::vector<int32_t> ids = {0, 3, 9, 1, -2};
  auto d_ids = upload(ids);
  for (const K::Device dev : {K::Device::CPU, K::Device::CUDA}) {
    const int32_t* at = dev == K::Device::CPU ? ids.data() : d_ids.data();
    try {
      K::check_token_ids(dev, K::TokenIdCheck{at, 5, 4, "source"});
      ADD_FAILURE() << "no error for id 9";
    } catch (const aiayn::Error& e) {
      EXPECT_STREQ(e.what(), "source id 9 at index 2 is outside the vocabulary [0, 4)");
    }
    EXPECT_NO_THROW(K::check_token_ids(dev, K::TokenIdCheck{at, 2, 4, "source"}));
    EXPECT_NO_THROW(K::check_token_ids(dev, K::TokenIdCheck{at, 0, 4, "source"}));
  }
}

// Where cuBLASLt's heuristic has no algorithm for the bias/ReLU epilogue (CUBLAS_STATUS_NOT_SUPPORTED, as it may
// answer for some types and alignments), gemm asks again without it and adds bias and ReLU in bias_act_kernel.
// Under the emulator AIAYN_EMU_LT_NO_EPILOGUE=1 makes its heuristic refuse every epilogue; on a GPU it changes
// nothing and the test checks the epilogue path. Shapes no other case uses, so the algorithm cache is cold; the
// CUDA side runs twice (the second call takes the cached choice), both against the CPU.
TEST(CudaOps, GemmWithoutEpilogueAlgorithms) {
  REQUIRE_GPU();
  ASSERT_EQ(setenv("AIAYN_EMU_LT_NO_EPILOGUE", "1", 1), 0);
  std::mt19937 rng(11);
  for (const bool relu : {false, true})
    for (const bool bias : {false, true}) {
      if (!relu && !bias) continue;
      const GemmCase c{23, 31 + 8 * relu, 29, 0, 0.0f, bias, relu, false};
      OpCase oc = gemm_case(c, false, false, rng);
      oc.name += " without epilogue algorithms";
      oc.repeat = true;
      run_case(oc);
    }
  unsetenv("AIAYN_EMU_LT_NO_EPILOGUE");
}

// The per-head backward's bound: Tq, Tk <= 128 and its shared memory (4 staged rows of Dh floats per token plus
// Tq x Tk scores) within the device's opt-in limit (227 KiB on an H100/H200 and under the emulator).
TEST(CudaOps, AttentionBackwardPerHeadBound) {
  REQUIRE_GPU();
  EXPECT_TRUE(K::cuda::attention_backward_per_head_fits(32, 32, 64));  // the benchmark's shape: 37 KiB
  EXPECT_TRUE(K::cuda::attention_backward_per_head_fits(1, 1, 1));
  EXPECT_TRUE(K::cuda::attention_backward_per_head_fits(0, 5, 64));
  EXPECT_FALSE(K::cuda::attention_backward_per_head_fits(129, 20, 32));
  EXPECT_FALSE(K::cuda::attention_backward_per_head_fits(20, 129, 32));
  EXPECT_FALSE(K::cuda::attention_backward_per_head_fits(100, 90, 128));  // 229 KiB
  EXPECT_FALSE(K::cuda::attention_backward_per_head_fits(16, 16, 129));   // over the supported head width
}



// ---------------------------------------------------------------------------------------------------------
// Argument checks of the CUDA launchers: they throw before touching the device, so they run without a GPU.
TEST(CudaOpsChecks, LaunchersRejectBadArguments) {
  std::vector<float> buf(8, 1.0f);
  const std::vector<int64_t> pair = {0, 1};
  {
    K::ResidualNormBackward<float> b;
    b.dy = buf.data(), b.s = buf.data(), b.gamma = buf.data(), b.mean = buf.data(), b.rstd = buf.data();
    b.dx = buf.data(), b.df = buf.data(), b.rows = 2, b.cols = 4;
    EXPECT_THROW(K::cuda::residual_norm_backward(b, nullptr), aiayn::Error);  // df aliases dy and dx
  }
  {
    const std::vector<int32_t> ids = {0, 1}, pos = {3, 4};
    K::EmbedForward<K::bf16, float> e;
    e.ids = ids.data(), e.table = buf.data(), e.positions = pos.data(), e.N = 2, e.D = 2, e.V = 2;
    e.drop = test_mask(pair.data(), 1, 0.1f, 0);
    EXPECT_THROW(K::cuda::embed_forward(e, nullptr), aiayn::Error);  // dropout with explicit positions
  }
  {
    std::vector<K::bf16> x(8);
    K::DropoutArgs<K::bf16> d;
    d.x = x.data(), d.y = x.data(), d.rows = 2, d.cols = 4, d.seq_len = 1, d.p = 1.0f, d.pair = pair.data();
    EXPECT_THROW(K::cuda::dropout_forward(d, nullptr), aiayn::Error);  // p must lie in [0, 1)
    d.p = 0.1f, d.pair = nullptr;
    EXPECT_THROW(K::cuda::dropout_forward(d, nullptr), aiayn::Error);  // p > 0 needs the pair indices
    d.pair = pair.data(), d.seq_len = 3;
    EXPECT_THROW(K::cuda::dropout_forward(d, nullptr), aiayn::Error);  // rows not a multiple of seq_len
  }
}

// Empty shapes (N = 0, rows = 0, B = 0, n = 0) return before any device work, so they run without a GPU too.
// The pointers are distinct host addresses that must never be dereferenced.
TEST(CudaOpsChecks, EmptyShapesDoNothing) {
  float f[6] = {};
  K::bf16 h[6] = {};
  const int32_t ids[1] = {0};
  {
    K::EmbedForward<K::bf16, float> e;
    e.ids = ids, e.table = f, e.out = h, e.N = 0, e.D = 4, e.V = 3;
    EXPECT_NO_THROW(K::cuda::embed_forward(e, nullptr));
    K::EmbedBackward<K::bf16, float> b;
    b.ids = ids, b.dout = h, b.dtable = f, b.N = 0, b.D = 4, b.V = 3;
    EXPECT_NO_THROW(K::cuda::embed_backward(b, nullptr));
  }
  {
    K::DropoutArgs<K::bf16> d;
    d.x = h, d.y = h + 1, d.rows = 0, d.cols = 5, d.p = 0.1f;
    EXPECT_NO_THROW(K::cuda::dropout_forward(d, nullptr));
  }
  {
    K::ResidualNormForward<K::bf16, float> fw;
    fw.x = h, fw.f = h + 1, fw.gamma = f, fw.beta = f + 1, fw.s = h + 2, fw.y = h + 3, fw.rows = 0, fw.cols = 7;
    EXPECT_NO_THROW(K::cuda::residual_norm_forward(fw, nullptr));
    K::ResidualNormBackward<K::bf16, float> bw;
    bw.dy = h, bw.s = h + 1, bw.gamma = f, bw.mean = f + 1, bw.rstd = f + 2, bw.dx = h + 2, bw.df = h + 3;
    bw.dgamma = f + 3, bw.dbeta = f + 4, bw.rows = 0, bw.cols = 7;
    EXPECT_NO_THROW(K::cuda::residual_norm_backward(bw, nullptr));
    K::ResidualNormForward<float> f32;
    f32.x = f, f32.f = f + 1, f32.s = f + 2, f32.y = f + 3, f32.rows = 0, f32.cols = 7;
    EXPECT_NO_THROW(K::cuda::residual_norm_forward(f32, nullptr));
    EXPECT_NO_THROW(K::cuda::layer_norm_forward(K::LayerNormForward<K::bf16, float>{h, f, f, h + 1, f, f, 0, 3, 1e-5f}, nullptr));
  }
  {
    K::GemmArgs<K::bf16> g;
    g.m = 0, g.n = 3, g.k = 2, g.a = h, g.b = h, g.c = h + 1, g.lda = 2, g.ldb = 3, g.ldc = 3;
    EXPECT_NO_THROW(K::cuda::gemm(g, nullptr));
    K::GemmArgs<K::bf16, float> gw;
    gw.m = 3, gw.n = 0, gw.k = 2, gw.a = h, gw.b = h, gw.c = f, gw.lda = 2, gw.ldb = 1, gw.ldc = 1, gw.beta = 1.0f;
    EXPECT_NO_THROW(K::cuda::gemm(gw, nullptr));
    EXPECT_NO_THROW(K::cuda::add(K::AddArgs<K::bf16>{h, h + 1, h + 2, 0}, nullptr));
    EXPECT_NO_THROW(K::cuda::relu_backward(K::ReluBackward<K::bf16>{h, h + 1, h + 2, 0}, nullptr));
    EXPECT_NO_THROW(K::cuda::bias_grad(K::BiasGrad<K::bf16, float>{h, f, 0, 5}, nullptr));
  }
  {
    K::AttentionForward<K::bf16> a;
    a.shape.B = 0, a.shape.Tq = 3, a.shape.Tk = 3, a.shape.H = 1, a.shape.Dh = 8, a.q = h, a.k = h, a.v = h, a.out = h + 1;
    EXPECT_NO_THROW(K::cuda::attention_forward(a, nullptr));
    K::AttentionBackward<K::bf16> b;
    b.shape = a.shape, b.dout = h, b.q = h, b.k = h, b.v = h, b.out = h + 1, b.saved = f, b.dq = h + 2, b.dk = h + 3;
    b.dv = h + 4;
    EXPECT_NO_THROW(K::cuda::attention_backward(b, nullptr));
  }
  {
    K::CrossEntropyArgs<K::bf16> ce;
    ce.logits = h, ce.dlogits = h, ce.targets = ids, ce.N = 0, ce.V = 5;
    const auto stats = K::cuda::cross_entropy(ce, nullptr);
    EXPECT_EQ(stats.tokens, 0);
    EXPECT_EQ(stats.loss, 0.0);
  }
  {
    K::AdamArgs<float> a;
    a.param = f, a.grad = f + 1, a.m = f + 2, a.v = f + 3, a.param_bf16 = h, a.n = 0;
    EXPECT_NO_THROW(K::cuda::adam(a, nullptr));
    EXPECT_NO_THROW(K::cuda::cast(K::CastArgs<float, K::bf16>{f, h, 0}, nullptr));
    EXPECT_NO_THROW(K::cuda::cast(K::CastArgs<K::bf16, float>{h, f, 0}, nullptr));
  }
}

// The fused op performs the unfused CUDA composition's float operations in the same order (dropout, add,
// layer_norm_forward; layer_norm_backward, dropout): equal bit for bit in fp32.
TEST(CudaOps, ResidualNormEqualsUnfusedComposition) {
  REQUIRE_GPU();
  std::mt19937 rng(12);
  for (const ResidualCase& c : kResidualCases) {
    SCOPED_TRACE(residual_trace(c));
    const int rows = c.B * c.T;
    const size_t n = size_t(rows) * c.cols;
    const auto pair = random_pairs(c.B, rng);
    auto d_x = upload(random_floats(n, rng, -2.0f, 2.0f)), d_f = upload(random_floats(n, rng, -2.0f, 2.0f));
    auto d_gamma = upload(random_floats(c.cols, rng, 0.5f, 1.5f)), d_beta = upload(random_floats(c.cols, rng));
    auto d_dy = upload(random_floats(n, rng));
    auto d_pair = upload(pair);
    const auto dgamma0 = random_floats(c.cols, rng), dbeta0 = random_floats(c.cols, rng);
    const K::DropoutMask m = test_mask(d_pair.data(), c.T, c.p, 77);

    // Fused.
    auto s1 = upload(poison(n)), y1 = upload(poison(n)), mean1 = upload(poison(rows)), rstd1 = upload(poison(rows));
    auto dx1 = upload(poison(n)), df1 = upload(poison(n)), dg1 = upload(dgamma0), db1 = upload(dbeta0);
    K::ResidualNormForward<float> fw;
    fw.rows = rows, fw.cols = c.cols, fw.drop = m, fw.x = d_x.data(), fw.f = d_f.data(), fw.gamma = d_gamma.data();
    fw.beta = d_beta.data(), fw.s = s1.data(), fw.y = y1.data(), fw.mean = mean1.data(), fw.rstd = rstd1.data();
    K::cuda::residual_norm_forward(fw, nullptr);
    K::ResidualNormBackward<float> bw;
    bw.rows = rows, bw.cols = c.cols, bw.drop = m, bw.dy = d_dy.data(), bw.s = s1.data(), bw.gamma = d_gamma.data();
    bw.mean = mean1.data(), bw.rstd = rstd1.data(), bw.dx = dx1.data(), bw.df = df1.data(), bw.dgamma = dg1.data();
    bw.dbeta = db1.data();
    K::cuda::residual_norm_backward(bw, nullptr);

    // Unfused.
    auto f2 = upload(poison(n)), s2 = upload(poison(n)), y2 = upload(poison(n)), mean2 = upload(poison(rows));
    auto rstd2 = upload(poison(rows)), dx2 = upload(poison(n)), df2 = upload(poison(n));
    auto dg2 = upload(dgamma0), db2 = upload(dbeta0);
    K::DropoutArgs<float> d;
    static_cast<K::DropoutMask&>(d) = m;
    d.rows = rows, d.cols = c.cols, d.x = d_f.data(), d.y = f2.data();
    K::cuda::dropout_forward(d, nullptr);
    K::cuda::add(K::AddArgs<float>{d_x.data(), f2.data(), s2.data(), n}, nullptr);
    K::cuda::layer_norm_forward(K::LayerNormForward<float>{s2.data(), d_gamma.data(), d_beta.data(), y2.data(),
                                                           mean2.data(), rstd2.data(), rows, c.cols, 1e-5f}, nullptr);
    K::cuda::layer_norm_backward(K::LayerNormBackward<float>{d_dy.data(), s2.data(), d_gamma.data(), mean2.data(),
                                                             rstd2.data(), dx2.data(), dg2.data(), db2.data(), rows,
                                                             c.cols}, nullptr);
    d.x = dx2.data(), d.y = df2.data();
    K::cuda::dropout_backward(d, nullptr);

    EXPECT_TRUE(bitwise_equal(download(s1), download(s2))) << "s";
    EXPECT_TRUE(bitwise_equal(download(y1), download(y2))) << "y";
    EXPECT_TRUE(bitwise_equal(download(mean1), download(mean2))) << "mean";
    EXPECT_TRUE(bitwise_equal(download(rstd1), download(rstd2))) << "rstd";
    EXPECT_TRUE(bitwise_equal(download(dx1), download(dx2))) << "dx";
    EXPECT_TRUE(bitwise_equal(download(df1), download(df2))) << "df";
    EXPECT_TRUE(bitwise_equal(download(dg1), download(dg2))) << "dgamma";
    EXPECT_TRUE(bitwise_equal(download(db1), download(db2))) << "dbeta";
  }
}

// ---------------------------------------------------------------------------------------------------------

// The reference with R = identity is the CPU op in double (checks the harness itself; runs without a GPU).
TEST(CudaOpsHarness, ReferenceAttentionIsTheCpuOpInDouble) {
  std::mt19937 rng(22);
  for (const AttnCase& c : attention_cases()) {
    SCOPED_TRACE(attention_trace(c));
    const AttnInputs in = attention_inputs(c, rng);
    const AttnOutputs ref = reference_outputs(c, in, kExact);
    const AttnLayout L = attention_layout(c);
    K::AttentionShape<double> sh = attention_geometry<double>(c);
    sh.k_len = c.k_len.empty() ? nullptr : c.k_len.data(), sh.pair = in.pair.data();
    const auto q = as_doubles(in.q), k = as_doubles(in.k), v = as_doubles(in.v), dout = as_doubles(in.dout);
    std::vector<double> out(in.out_elems), probs(size_t(c.B) * c.H * c.Tq * c.Tk);
    K::AttentionForward<double> f;
    f.shape = sh, f.q = q.data(), f.k = k.data() + L.k_off, f.v = v.data() + L.v_off, f.out = out.data();
    f.saved = probs.data();
    K::cpu::attention_forward(f);
    std::vector<double> g[3];
    for (int i = 0; i < 3; ++i) g[i].assign(ref.g[i].size(), NAN);
    K::AttentionBackward<double> b;
    b.shape = sh, b.dout = dout.data(), b.q = q.data(), b.k = k.data() + L.k_off, b.v = v.data() + L.v_off;
    b.out = out.data(), b.saved = probs.data(), b.dq = g[0].data(), b.dk = g[L.dk_buffer()].data() + L.k_off;
    b.dv = g[L.dv_buffer()].data() + L.v_off;
    K::cpu::attention_backward(b);
    // Both in double, summed in different orders: ~1e-16 relative per term. NaN where no head owns a column.
    EXPECT_LE(normalised_error(as_floats(ref.out), out), 1e-6);  // via float: the comparison's own rounding
    auto max_abs_diff = [](const std::vector<double>& a, const std::vector<double>& b) {
      double m = 0.0;
      for (size_t i = 0; i < a.size(); ++i) {
        if (std::isnan(a[i]) != std::isnan(b[i])) return double(INFINITY);
        if (!std::isnan(a[i])) m = std::max(m, std::fabs(a[i] - b[i]));
      }
      return m;
    };
    EXPECT_LE(max_abs_diff(ref.out, out), 1e-12);
    for (int i = 0; i < 3; ++i) EXPECT_LE(max_abs_diff(ref.g[i], g[i]), 1e-12) << "gradient buffer " << i;
    // The naive bf16 reference is a bf16-level approximation of it: errors of a few bf16 half-ulps (2^-9), and
    // not none (except with one key, where out = v is exact).
    const AttnOutputs naive = reference_outputs(c, in, kNaiveBf16);
    const double e_out = normalised_error(as_floats(naive.out), ref.out);
    const double e_dq = normalised_error(as_floats(naive.g[0]), ref.g[0]);
    if (c.Tk > 1) {
      EXPECT_GT(e_out, 0.0);
    }
    EXPECT_LT(e_out, 0.05);
    EXPECT_LT(e_dq, 0.1);
  }
}


class CudaOp : public ::testing::TestWithParam<size_t> {};

TEST_P(CudaOp, MatchesTheReference) {
  REQUIRE_GPU();
  run_case(all_cases()[GetParam()]);
}

INSTANTIATE_TEST_SUITE_P(Table, CudaOp, ::testing::Range(size_t(0), all_cases().size()),
                         [](const ::testing::TestParamInfo<size_t>& p) {
                           return std::to_string(p.param) + "_" + test_name(all_cases()[p.param].name);
                         });

