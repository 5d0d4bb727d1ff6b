// MpiSession: MPI's lifetime for the whole process, and abort_job.
//
// MPI is initialised only when a launcher started the process (mpirun/mpiexec from Open MPI, MPICH or
// Intel MPI, or srun inside a job step); a plain `aiayn ...` runs as one rank without touching MPI, so it
// works on machines without a working MPI runtime. The session owns MPI only if it initialised it.
#include <mpi.h>

#include <cstdlib>

#include "comm/communicator.hpp"
#include "mpi_check.hpp"

namespace aiayn::comm {

namespace {
bool env_set(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0';
}
}  // namespace

bool MpiSession::launched_by_mpi() {
  return env_set("OMPI_COMM_WORLD_SIZE")  // Open MPI mpirun/mpiexec
         || env_set("PMIX_RANK")          // PMIx launchers (Open MPI 4+, srun --mpi=pmix)
         || env_set("PMI_SIZE")           // MPICH/Intel MPI hydra, srun --mpi=pmi2
         || env_set("MV2_COMM_WORLD_SIZE")  // MVAPICH
         || env_set("SLURM_STEP_ID");     // inside an srun job step (not set in the batch script itself)
}

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  AIAYN_MPI_CHECK(MPI_Initialized, (&initialized));
  if (!initialized) {
    if (!launched_by_mpi()) return;  // one rank, no MPI
    // The communicators' collectives are non-blocking (deadlines; see mpi_communicator.cpp). For MPI_Iallreduce
    // Open MPI's libnbc picks a binomial tree (reduce, then broadcast) below 4 ranks and for in-place buffers:
    // twice the time of the blocking MPI_Allreduce on 64 MB over shared memory. Its ring is as fast as
    // MPI_Allreduce and gives every rank the same sums. A user's own setting wins.
    setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1", /*overwrite=*/0);
    int provided = 0;
    const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    AIAYN_CHECK(rc == MPI_SUCCESS, "MPI_Init_thread failed: " + detail::mpi_error_string(rc));
    owns_ = true;
    AIAYN_CHECK(provided >= MPI_THREAD_FUNNELED,
                "MPI_Init_thread: the MPI library provides thread level " + std::to_string(provided) +
                    ", below MPI_THREAD_FUNNELED");
  }
  active_ = true;
  // Return codes instead of MPI's default of aborting, so failures become errors naming the rank.
  AIAYN_MPI_CHECK(MPI_Comm_set_errhandler, (MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  AIAYN_MPI_CHECK(MPI_Comm_rank, (MPI_COMM_WORLD, &rank_));
  AIAYN_MPI_CHECK(MPI_Comm_size, (MPI_COMM_WORLD, &size_));
  MPI_Comm node = MPI_COMM_NULL;
  AIAYN_MPI_CHECK(MPI_Comm_split_type, (MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
  AIAYN_MPI_CHECK(MPI_Comm_rank, (node, &local_rank_));
  AIAYN_MPI_CHECK(MPI_Comm_free, (&node));
}

MpiSession::~MpiSession() {
  if (!owns_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void abort_job(int status) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, status);
  std::exit(status);
}

}  // namespace aiayn::comm
