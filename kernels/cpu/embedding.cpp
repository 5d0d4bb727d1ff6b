// Token embedding (scaled) plus sinusoidal positions; backward accumulates into the (shared) table.
// Shapes: ids [N], table/dtable [V, D], out/dout [N, D]. Ids are checked before any work (throws).
#include "kernels/ops/embedding.hpp"

#include <string>
#include <vector>

#include "dropout_row.hpp"
#include "kernels/positional.hpp"
#include "parallel_grain.hpp"

namespace aiayn::kernels::cpu {
namespace {
void check_ids(const int32_t* ids, long N, int V, const std::string& what) {
  for (long n = 0; n < N; ++n)
    AIAYN_CHECK(ids[n] >= 0 && ids[n] < V, what + " id " + std::to_string(ids[n]) + " at index " +
                                               std::to_string(n) + " is outside the vocabulary [0, " +
                                               std::to_string(V) + ")");
}
}  // namespace

void check_token_ids(const TokenIdCheck& a) { check_ids(a.ids, a.N, a.V, a.what); }

template <class T>
void embed_forward(const EmbedForward<T>& a) {
  check_ids(a.ids, a.N, a.V, "embed_forward: token");
  AIAYN_CHECK(a.positions || a.seq_len > 0, "embed_forward: seq_len must be positive");
  check_mask(a.drop, a.N, "embed_forward");
  AIAYN_CHECK(a.drop.p == 0.0f || (!a.positions && a.drop.seq_len == a.seq_len),
              "embed_forward: dropout needs the [B, seq_len] layout (no explicit positions, drop.seq_len == seq_len)");
  const T scale = static_cast<T>(a.scale);
  const T keep_prob = T(1) - static_cast<T>(a.drop.p);
  // Without explicit positions every row uses one of seq_len position rows: the sinusoids (an exp and a sin or
  // cos each) are taken once per position, not once per token.
  const bool table_pe = a.add_positions && !a.positions && a.seq_len < a.N;
  std::vector<T> pe(table_pe ? size_t(a.seq_len) * a.D : 0);  // [seq_len, D]
  if (table_pe)
    for (int t = 0; t < a.seq_len; ++t)
      for (int c = 0; c < a.D; ++c) pe[size_t(t) * a.D + c] = static_cast<T>(sinusoid(t, c, a.D));
#pragma omp parallel for if (long(a.N) * a.D >= kParallelGrain)
  for (int n = 0; n < a.N; ++n) {
    const T* emb = a.table + size_t(a.ids[n]) * a.D;  // [D]
    T* out = a.out + size_t(n) * a.D;                 // [D]
    const int pos = a.positions ? a.positions[n] : n % a.seq_len;
    if (table_pe) {
      const T* pos_row = pe.data() + size_t(pos) * a.D;
      for (int c = 0; c < a.D; ++c) out[c] = emb[c] * scale + pos_row[c];
    } else {
      for (int c = 0; c < a.D; ++c)
        out[c] = emb[c] * scale + (a.add_positions ? static_cast<T>(sinusoid(pos, c, a.D)) : T(0));
    }
    if (a.drop.p > 0.0f) dropout_row(dropout_row_key(a.drop, n), a.drop.p, keep_prob, out, out, a.D);
  }
}

// Serial over tokens: repeated ids add into the same row, and this keeps the summation order fixed.
template <class T>
void embed_backward(const EmbedBackward<T>& a) {
  check_ids(a.ids, a.N, a.V, "embed_backward: token");
  check_mask(a.drop, a.N, "embed_backward");
  const T scale = static_cast<T>(a.scale);
  const T keep_prob = T(1) - static_cast<T>(a.drop.p);
  std::vector<T> dropped(a.drop.p > 0.0f ? a.D : 0);  // [D] the row of dout after the dropout map
  for (int n = 0; n < a.N; ++n) {
    T* dtable = a.dtable + size_t(a.ids[n]) * a.D;  // [D]
    const T* dout = a.dout + size_t(n) * a.D;       // [D]
    if (a.drop.p > 0.0f) {
      dropout_row(dropout_row_key(a.drop, n), a.drop.p, keep_prob, dout, dropped.data(), a.D);
      dout = dropped.data();
    }
    for (int c = 0; c < a.D; ++c) dtable[c] += dout[c] * scale;
  }
}

template void embed_forward<float>(const EmbedForward<float>&);
template void embed_forward<double>(const EmbedForward<double>&);
template void embed_backward<float>(const EmbedBackward<float>&);
template void embed_backward<double>(const EmbedBackward<double>&);

}  // namespace aiayn::kernels::cpu
