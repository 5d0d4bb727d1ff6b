#pragma once
// The op table: every op the model uses, forward and backward, one header each.
#include "kernels/ops/adam.hpp"
#include "kernels/ops/attention.hpp"
#include "kernels/ops/cross_entropy.hpp"
#include "kernels/ops/dropout.hpp"
#include "kernels/ops/embedding.hpp"
#include "kernels/ops/gemm.hpp"
#include "kernels/ops/layer_norm.hpp"
