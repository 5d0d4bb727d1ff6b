#pragma once
// The parameter table: one list of named views (name, shape, offset) into one flat buffer. The same table
// lays out parameters, gradients and Adam's m and v, and serves the model, the all-reduce buckets, the
// optimiser and the checkpoint.
//
// Linear weights are [out, in] (PyTorch's layout). The q, k and v projections of an attention block are
// adjacent in the table, so their weights form one [3D, D] matrix: one GEMM computes all three
// (cross-attention: k and v adjacent, [2D, D]). They have no bias (see params.cpp); the output projection has.
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace aiayn::trainer {

struct ModelSection;

struct ParamView {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0;  // in elements
  size_t size = 0;
  enum class Init { Zero, One, XavierUniform, Normal } init = Init::Zero;
  double init_scale = 0;  // Normal: standard deviation
};

class ParamTable {
 public:
  ParamTable() = default;
  // The table of the paper's encoder-decoder with a shared embedding of `vocab` rows.
  static ParamTable transformer(const ModelSection& m, int vocab);

  const std::vector<ParamView>& views() const { return views_; }
  size_t total() const { return total_; }
  const ParamView& at(const std::string& name) const;  // throws aiayn::Error naming the parameter
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  // [begin, end) in elements of the parameters whose names start with `prefix` (e.g. "decoder/layers/2/");
  // throws unless there is at least one and they are contiguous in the buffer.
  std::pair<size_t, size_t> range(const std::string& prefix) const;

  // Deterministic initialisation from `seed` (same values on every rank and every run).
  template <class T>
  void initialize(T* params, uint64_t seed) const;

 private:
  void add(const std::string& name, std::vector<int64_t> shape, ParamView::Init init, double scale = 0);
  std::vector<ParamView> views_;
  std::unordered_map<std::string, size_t> index_;
  size_t total_ = 0;
};

}  // namespace aiayn::trainer
