#pragma once
// Running a command on this process's ranks: the MPI communicator under mpirun (or srun), the local one
// otherwise. An error every rank agreed on (trainer::AgreedError) is printed once, by rank 0; any other error
// on one rank of several is printed with the rank and ends every rank at once (no peer left waiting).
#include <functional>

#include "comm/communicator.hpp"
#include "commands.hpp"

namespace aiayn::launch {

void run_on_ranks(Context& ctx, const std::function<int(comm::Communicator&)>& body);

}  // namespace aiayn::launch
