#pragma once
// `aiayn train`: the training loop of the paper on one or many ranks.
//
// Each optimizer step: read this rank's micro-batches of the global batch, forward + loss + backward for each
// (gradients accumulate, dlogits scaled by 1 / target tokens of the whole global batch), all-reduce the
// gradients, agree on faults (non-finite values, stop signals, the time limit), clip (optional), Adam with the
// warmup schedule, log, validate, checkpoint.
#include <string>
#include <vector>

#include "aiayn/error.hpp"

namespace aiayn::comm {
class Communicator;
}

namespace aiayn::trainer {

// An error every rank agreed on (setup problems): every rank throws it, only rank 0 needs to print it.
class AgreedError : public Error {
 public:
  using Error::Error;
};

// Exit status of a run stopped by SIGUSR1/SIGTERM after writing its checkpoint (EX_TEMPFAIL: resume it).
constexpr int kExitStoppedBySignal = 75;

struct TrainOptions {
  std::string config_path;             // may be empty with resume (then RUN/config.yaml is used)
  std::vector<std::string> overrides;  // section.key=value
  std::string data_dir;
  std::string run_dir;
  bool resume = false;
};

// Returns 0 when the run finished, kExitStoppedBySignal when a signal stopped it; throws aiayn::Error.
int run_training(const TrainOptions& options, comm::Communicator& comm);

}  // namespace aiayn::trainer
