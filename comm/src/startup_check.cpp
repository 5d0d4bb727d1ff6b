// The start-up check (see communicator.hpp): every rank present, with a short deadline, before any real work.
#include <unistd.h>

#include <cstdint>

#include "aiayn/error.hpp"
#include "comm/communicator.hpp"

namespace aiayn::comm {

std::string host_name() {
  char name[256] = {0};
  if (gethostname(name, sizeof(name) - 1) != 0) return "(unknown host)";
  return name;
}

std::vector<std::string> check_all_ranks_present(Communicator& comm, const std::string& mine, double timeout_seconds) {
  if (comm.size() == 1) return {mine};
  AIAYN_CHECK(timeout_seconds > 0, "start-up check: the deadline must be positive");
  const double saved = comm.timeout_seconds();
  comm.set_timeout(timeout_seconds);
  std::vector<std::string> all;
  try {
    int64_t present = 1;
    comm.all_reduce_sum_host(&present, 1);  // throws naming the ranks that did not answer
    AIAYN_CHECK(present == comm.size(), std::to_string(present) + " of " + std::to_string(comm.size()) +
                                            " ranks took part in the all-reduce");
    all = comm.all_gather_host(mine);
  } catch (const Error& e) {
    throw Error("start-up check: " + std::string(e.what()), e.source_file(), e.source_line());
  }
  comm.set_timeout(saved);
  return all;
}

}  // namespace aiayn::comm
