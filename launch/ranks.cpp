#include "ranks.hpp"

#include <cstdio>

#include "trainer/train.hpp"

namespace aiayn::launch {

void run_on_ranks(Context& ctx, const std::function<int(comm::Communicator&)>& body) {
  comm::MpiSession mpi(ctx.argc, ctx.argv);
  auto comm = mpi.active() ? comm::make_mpi_communicator() : comm::make_local_communicator();
  try {
    ctx.status = body(*comm);
  } catch (const trainer::AgreedError& e) {
    if (comm->rank() == 0) std::fprintf(stderr, "aiayn: error: %s\n", e.what());
    ctx.status = 1;
  } catch (const std::exception& e) {
    if (comm->size() == 1) throw;
    std::fprintf(stderr, "aiayn: error: rank %d: %s\n", comm->rank(), e.what());
    std::fflush(stderr);
    comm::abort_job(1);
  }
}

}  // namespace aiayn::launch
