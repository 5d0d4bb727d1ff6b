#pragma once
// Which communicator sums a training run's gradients, and how.
//
// GPU gradients travel by NCCL (device buffers) where NCCL can run: the CUDA backend, an MPI session (NCCL's
// unique id travels by MPI_Bcast; a plain process of one rank keeps the local communicator) and a build with
// NCCL. AIAYN_GRADIENT_COMM=mpi keeps them on the run's MPI communicator instead (one GPU per node tests, a
// machine without NCCL). Whenever GPU gradients are summed by a host communicator across ranks, each bucket is
// staged through host memory. CPU gradients always use the run's communicator, in place.
//
// The choice is a pure function (choose_gradient_comm, in aiayn_comm_core, tested without a GPU); the
// factory that acts on it (make_gradient_communicator) lives beside make_nccl_communicator in the build of
// nccl_communicator.cpp each executable links (aiayn_comm_nccl, _nccl_emu or _no_nccl).
#include <memory>

#include "comm/communicator.hpp"

namespace aiayn::comm {

// AIAYN_GRADIENT_COMM: unset, "" or "nccl": NCCL where it can run; "mpi": the run's communicator.
enum class GradientCommRequest { NcclWherePossible, Mpi };

// The environment variable's value (nullptr: unset). Throws aiayn::Error naming the variable and the values it
// takes on anything else.
GradientCommRequest parse_gradient_comm_request(const char* value);
// parse_gradient_comm_request(getenv("AIAYN_GRADIENT_COMM")): the one place that reads the variable.
GradientCommRequest gradient_comm_request_from_env();

struct GradientCommInputs {
  bool gradients_on_gpu = false;  // the CUDA backend
  Backend run_backend = Backend::Local;  // the run's communicator (Local or MPI)
  int ranks = 1;
  GradientCommRequest request = GradientCommRequest::NcclWherePossible;
  bool nccl_compiled = false;  // nccl_compiled() of this executable
};

struct GradientCommChoice {
  bool use_nccl = false;     // a NCCL communicator of its own, on device buffers
  bool host_staged = false;  // GPU gradients summed by a host communicator: copied to the host and back per bucket
};

GradientCommChoice choose_gradient_comm(const GradientCommInputs& in);

// The communicator the gradient all-reduce uses: a NCCL communicator it owns, or the run's own.
class GradientCommunicator {
 public:
  GradientCommunicator(Communicator& run_comm, std::unique_ptr<Communicator> nccl, bool host_staged)
      : nccl_(std::move(nccl)), comm_(nccl_ ? *nccl_ : run_comm), host_staged_(host_staged) {}
  Communicator& comm() const { return comm_; }
  bool host_staged() const { return host_staged_; }

 private:
  std::unique_ptr<Communicator> nccl_;
  Communicator& comm_;
  bool host_staged_;
};

// Acts on choose_gradient_comm for this executable (`cuda_device`: this rank's GPU; `timeout_seconds`: the
// NCCL communicator's deadline). Making a NCCL communicator is a collective: every rank calls this together.
GradientCommunicator make_gradient_communicator(Communicator& run_comm, bool gradients_on_gpu, int cuda_device,
                                                double timeout_seconds, GradientCommRequest request);

}  // namespace aiayn::comm
