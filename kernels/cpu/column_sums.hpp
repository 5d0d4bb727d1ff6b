#pragma once
// Internal to the CPU backend: deterministic column sums for the parameter gradients of bias and LayerNorm.
//
// Rows are cut into fixed chunks of kRowChunk; each chunk accumulates its own partial sums (in double, rows in
// order) while the threads share the chunks out, then the partials are added chunk by chunk in order. The
// result is the same bits for any number of threads, and each thread reads whole rows (the column-blocked
// loop this replaces read a narrow strip of every row and was bound by memory).
#include <algorithm>
#include <vector>

namespace aiayn::kernels::cpu {

class ColumnPartials {
 public:
  static constexpr int kRowChunk = 64;

  // `sums` arrays of `cols` columns each (LayerNorm: dgamma and dbeta).
  ColumnPartials(int rows, int cols, int sums)
      : rows_(rows), cols_(cols), sums_(sums), chunks_((rows + kRowChunk - 1) / kRowChunk),
        data_(size_t(chunks_) * sums * cols, 0.0) {}

  int chunks() const { return chunks_; }
  int first_row(int chunk) const { return chunk * kRowChunk; }
  int end_row(int chunk) const { return std::min(rows_, (chunk + 1) * kRowChunk); }
  double* partial(int chunk, int which) { return data_.data() + (size_t(chunk) * sums_ + which) * cols_; }

  // out[c] += sum over chunks, in chunk order, of partial(chunk, which)[c].
  template <class T>
  void add_to(int which, T* out) {
    if (!out) return;
#pragma omp parallel for
    for (int c = 0; c < cols_; ++c) {
      double s = 0.0;
      for (int ch = 0; ch < chunks_; ++ch) s += partial(ch, which)[c];
      out[c] += static_cast<T>(s);
    }
  }

 private:
  int rows_, cols_, sums_, chunks_;
  std::vector<double> data_;
};

}  // namespace aiayn::kernels::cpu
