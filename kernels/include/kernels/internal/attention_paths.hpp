#pragma once
// Tuning and test knobs of the CUDA attention backward: for the kernels' tests and benchmarks only. The
// trainer never includes this header; attention_backward (ops/attention.hpp) picks the path itself.
//
// The CUDA backward has two implementations with the same results up to FMA contraction: PerHead, one kernel
// with one block per (head, sentence) holding the head's rows in shared memory, for short sequences (Tq, Tk
// <= 128 and the rows within the device's shared memory, see attention_backward_per_head_fits), and Tiled,
// three kernels over query and key tiles, for any length. Auto (what attention_backward does) takes PerHead
// where it fits; asking for PerHead where it does not throws.
#include "kernels/ops/attention.hpp"

namespace aiayn::kernels::cuda {

enum class AttentionBackwardPath { Auto, PerHead, Tiled };
void attention_backward(const AttentionBackward<float>& a, AttentionBackwardPath path, Stream s);
void attention_backward(const AttentionBackward<bf16>& a, AttentionBackwardPath path, Stream s);
bool attention_backward_per_head_fits(int Tq, int Tk, int Dh);  // on the current device

}  // namespace aiayn::kernels::cuda
