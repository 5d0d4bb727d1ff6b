#pragma once
// What a run of the aiayn executable leaves behind (losses, checkpoints), and how to launch it on N ranks;
// spawning, waiting and signalling are process.hpp's.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "process.hpp"

namespace aiayn::testing {

// The training losses a run logged in RUN/metrics.jsonl, in order (skipped steps left out; none without the file).
std::vector<double> losses(const std::string& run);
// RUN/checkpoints/<the file LATEST names>.
std::string latest(const std::string& run);

// The tensors of a checkpoint, by dataset name ("/model/...", "/optim/m/...", "/optim/v/..."), as raw floats.
std::map<std::string, std::vector<float>> checkpoint_tensors(const std::string& path, bool with_optim);
// Every tensor of checkpoint `a` (parameters and Adam moments) equals checkpoint `b`'s bit for bit; the failure
// names the first tensor that differs or that `b` lacks (or says how many each has).
::testing::AssertionResult same_checkpoint_tensors(const std::string& a, const std::string& b);

// "mpiexec --allow-run-as-root --oversubscribe -np N " or "" for one plain process.
std::string launcher(int ranks);

}  // namespace aiayn::testing
