// make_gradient_communicator (see gradient_communicator.hpp). Compiled into each build of
// nccl_communicator.cpp (aiayn_comm_nccl, aiayn_comm_nccl_emu, aiayn_comm_no_nccl), where
// make_nccl_communicator and nccl_compiled resolve for the executable that links it.
#include "comm/gradient_communicator.hpp"

namespace aiayn::comm {

GradientCommunicator make_gradient_communicator(Communicator& run_comm, bool gradients_on_gpu, int cuda_device,
                                                double timeout_seconds, GradientCommRequest request) {
  const GradientCommChoice choice =
      choose_gradient_comm({gradients_on_gpu, run_comm.backend(), run_comm.size(), request, nccl_compiled()});
  std::unique_ptr<Communicator> nccl;
  if (choice.use_nccl) nccl = make_nccl_communicator(cuda_device, timeout_seconds);
  return GradientCommunicator(run_comm, std::move(nccl), choice.host_staged);
}

}  // namespace aiayn::comm
