#pragma once
// Internal to the CPU backend: the plain reference loops of ops whose production CPU variant is reorganised
// for speed. These are the specification; tests compare the variant the op runs against them.
#include "kernels/ops/attention.hpp"

namespace aiayn::kernels::cpu::reference {

// One (sentence, head) after another, a dot product per (query, key), libm's exp.
template <class T> void attention_forward(const AttentionForward<T>& a);
template <class T> void attention_backward(const AttentionBackward<T>& a);

}  // namespace aiayn::kernels::cpu::reference
