#pragma once
// Internal to comm: the MPI check macro. Communicators set MPI_ERRORS_RETURN, so every call returns its
// status and a failure becomes an aiayn::Error naming this rank, the call and MPI's own explanation.
#include <mpi.h>

#include <string>

#include "aiayn/error.hpp"

namespace aiayn::comm::detail {

inline std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "MPI error code " + std::to_string(code);
  return std::string(text, static_cast<size_t>(len));
}

// The world rank for messages, or -1 when MPI is not (or no longer) usable.
inline int world_rank_for_messages() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return -1;
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

inline void mpi_check(int code, const char* call, const char* file, int line) {
  if (code == MPI_SUCCESS) return;
  throw ::aiayn::Error("rank " + std::to_string(world_rank_for_messages()) + ": " + call +
                           " failed: " + mpi_error_string(code),
                       file, line);
}

}  // namespace aiayn::comm::detail

// AIAYN_MPI_CHECK(MPI_Allreduce, (args...)): calls it and throws "rank K: MPI_Allreduce failed: ...".
#define AIAYN_MPI_CHECK(fn, args) ::aiayn::comm::detail::mpi_check(fn args, #fn, __FILE__, __LINE__)
