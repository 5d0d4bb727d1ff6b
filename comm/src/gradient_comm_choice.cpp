// The choice of the gradient communicator (see gradient_communicator.hpp): pure functions of their inputs.
#include <cstdlib>
#include <string>

#include "aiayn/error.hpp"
#include "comm/gradient_communicator.hpp"

namespace aiayn::comm {

GradientCommRequest parse_gradient_comm_request(const char* value) {
  if (value == nullptr) return GradientCommRequest::NcclWherePossible;
  const std::string v(value);
  if (v.empty() || v == "nccl") return GradientCommRequest::NcclWherePossible;
  if (v == "mpi") return GradientCommRequest::Mpi;
  AIAYN_FAIL("AIAYN_GRADIENT_COMM='" + v + "' is not a gradient communicator (use 'nccl', the default, or 'mpi')");
}

GradientCommRequest gradient_comm_request_from_env() {
  return parse_gradient_comm_request(std::getenv("AIAYN_GRADIENT_COMM"));
}

GradientCommChoice choose_gradient_comm(const GradientCommInputs& in) {
  GradientCommChoice c;
  c.use_nccl = in.gradients_on_gpu && in.run_backend == Backend::MPI &&
               in.request == GradientCommRequest::NcclWherePossible && in.nccl_compiled;
  // A sum over one rank moves nothing, so one rank never stages (the reducer skips it).
  c.host_staged = in.gradients_on_gpu && !c.use_nccl && in.run_backend != Backend::NCCL && in.ranks > 1;
  return c;
}

}  // namespace aiayn::comm
