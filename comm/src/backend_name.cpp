#include "comm/communicator.hpp"

namespace aiayn::comm {

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::Local: return "local";
    case Backend::MPI: return "mpi";
    case Backend::NCCL: return "nccl";
  }
  return "unknown";
}

}  // namespace aiayn::comm
