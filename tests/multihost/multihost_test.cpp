// `aiayn train` across several hosts, for real: each host is a Linux network namespace with its own address
// (netns_hosts.sh: 10.231.7.k on a private bridge, nothing else reachable), and Open MPI starts the ranks from a
// host file exactly as on a cluster, with netns_agent.sh in place of ssh and TCP between the hosts; they share
// only the file system. Every test builds its hosts in SetUp and removes them (and every process in them) in
// TearDown, also when it fails.
//
// What is checked: 2 hosts x 1 rank take the same steps as 1 host x 2 ranks, bit for bit, resume included; a
// killed host, a host that vanishes, a cut link and a frozen rank end the job within train.comm_timeout_s plus
// a few seconds (a cut link sooner where Open MPI's daemon keepalive is shorter), never a hang, with the checkpoint intact and the run resumable on the hosts that are left; a
// slow link slows the run down without a false deadline.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>
#include <utility>

#include "run_helpers.hpp"
#include "test_env.hpp"

namespace aiayn::testing {
namespace {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string scripts() { return source_dir() + "/tests/multihost"; }

// The output of a shell command, and whether it succeeded.
bool shell(const std::string& cmd, std::string* out = nullptr) {
  std::string text;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return false;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, n);
  const int status = pclose(p);
  if (out) *out = text;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// Waits up to `seconds` for `pid`; its exit status, or -1 if it is still running.
int wait_at_most(pid_t pid, double seconds) {
  const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  while (Clock::now() < end) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return -1;
}

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

class MultiHost : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string why;
    if (!shell(scripts() + "/netns_hosts.sh check", &why)) {
      unavailable_ = new std::string(why.empty() ? "network namespaces unavailable" : why);
      return;
    }
    shell(scripts() + "/netns_hosts.sh reap");  // sets left behind by a test process that was killed
    data_ = new TempDir();
    const int rc = run_command(aiayn_exe() + " prepare --synthetic --pairs 1000 --seed 5 --out " + data_->path() + "/d",
                               data_->path() + "/prepare.log");
    ASSERT_EQ(rc, 0) << read_file(data_->path() + "/prepare.log");
  }
  static void TearDownTestSuite() {
    delete data_;
    delete unavailable_;
    data_ = nullptr;
    unavailable_ = nullptr;
  }

  void SetUp() override {
    if (unavailable_) AIAYN_SKIP_OR_FAIL("multi-host tests need network namespaces: " + *unavailable_);
    name_ = "aiayn-mh" + std::to_string(getpid());
  }
  void TearDown() override {
    if (!name_.empty()) shell(scripts() + "/netns_hosts.sh down " + name_);
  }

  void make_hosts(int n) {
    std::string out;
    ASSERT_TRUE(shell(scripts() + "/netns_hosts.sh up " + name_ + " " + std::to_string(n), &out)) << out;
  }
  std::string host(int k) const { return name_ + "-h" + std::to_string(k); }

  // The train command every test shares, plus `extra`.
  std::string train_args(const std::string& run, const std::string& extra) const {
    return aiayn_exe() + " train --config " + source_dir() + "/launch/configs/tiny.yaml --data " + data_->path() +
           "/d --run-dir " + run +
           " --set train.log_every=1 --set train.valid_every=0 --set train.batch_tokens=600"
           " --set train.max_tokens_per_rank=600 --set checkpoint.every_minutes=0 --set train.threads=1 " + extra;
  }
  // `aiayn train` on hosts 1..hosts, one rank each, launched from host 1 with a host file, as
  // launch/examples/multi_node.sh does on a cluster.
  std::string on_hosts(int hosts, const std::string& run, const std::string& extra, const std::string& env = "") const {
    const std::string hostfile = tmp_ / ("hosts" + std::to_string(hosts));
    std::ofstream(hostfile) << [&] {
      std::string lines;
      for (int k = 1; k <= hosts; ++k) lines += "10.231.7." + std::to_string(k) + " slots=1\n";
      return lines;
    }();
    const std::string mpirun = "mpirun --hostfile " + hostfile + " -np " + std::to_string(hosts) +
                               " --map-by node --bind-to none " + train_args(run, extra);
    return "env " + env + " AIAYN_NETNS=" + name_ + " OMPI_MCA_plm_rsh_agent=" + scripts() +
           "/netns_agent.sh OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_tcp_if_include=10.231.7.0/24"
           " OMPI_MCA_oob_tcp_if_include=10.231.7.0/24 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
           " ip netns exec " + host(1) + " unshare --uts /bin/sh -c 'hostname " + host(1) + " && exec " + mpirun + "'";
  }

  // Starts `cmd` and waits until the run has logged `steps` steps.
  pid_t start_and_wait_for_steps(const std::string& cmd, const std::string& run, const std::string& log, size_t steps) {
    const pid_t pid = spawn_command(cmd, log);
    for (int i = 0; i < 1200 && losses(run).size() < steps; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_GE(losses(run).size(), steps) << read_file(log);
    return pid;
  }
  // The pids of `comm` processes on test host k.
  std::vector<pid_t> pids_on_host(int k, const std::string& comm = "") const {
    std::string out;
    shell("ip netns pids " + host(k), &out);
    std::vector<pid_t> pids;
    std::istringstream in(out);
    for (long p; in >> p;) {
      if (!comm.empty()) {
        std::string name = read_file("/proc/" + std::to_string(p) + "/comm");
        while (!name.empty() && name.back() == '\n') name.pop_back();
        if (name != comm) continue;
      }
      pids.push_back(static_cast<pid_t>(p));
    }
    return pids;
  }
  void signal_host(int k, int sig, const std::string& comm = "") const {
    for (pid_t p : pids_on_host(k, comm)) kill(p, sig);
  }
  // A run on `hosts` hosts that goes on until stopped (a checkpoint every 5 steps, train.comm_timeout_s =
  // `deadline_s`), started under `env` and 12 steps in: the job the fault tests break.
  pid_t start_endless_run(int hosts, const std::string& run, const std::string& log, int deadline_s,
                          const std::string& env = "") {
    return start_and_wait_for_steps(
        on_hosts(hosts, run,
                 "--set train.max_steps=100000 --set checkpoint.every_steps=5 --set train.comm_timeout_s=" +
                     std::to_string(deadline_s),
                 env),
        run, log, 12);
  }
  // wait_for_end from now: the exit status and the seconds it took.
  std::pair<int, double> time_to_end(pid_t pid, double seconds, const std::string& log) {
    const auto t0 = Clock::now();
    const int rc = wait_for_end(pid, seconds, log);
    return {rc, since(t0)};
  }
  // Ends the job for `pid` if it is still there (a failed test must not leave it running), then fails.
  int wait_for_end(pid_t pid, double seconds, const std::string& log) {
    const int rc = wait_at_most(pid, seconds);
    if (rc == -1) {
      kill_session(pid, SIGKILL);
      wait_for(pid);
      ADD_FAILURE() << "the job did not end within " << seconds << " s:\n" << read_file(log);
    }
    return rc;
  }
  // The newest checkpoint is complete and verifies; the run resumes from it on host 1 alone and reaches step 
  // `to`.
  void expect_resumable_on_host_one(const std::string& run, int to) {
    ASSERT_TRUE(fs::exists(run + "/checkpoints/LATEST"));
    EXPECT_NO_THROW(checkpoint_tensors(latest(run), true)) << latest(run);
    const std::string log = tmp_ / "resume.log";
    const int rc = run_command(on_hosts(1, run, "--resume --set train.max_steps=" + std::to_string(to)), log);
    ASSERT_EQ(rc, 0) << read_file(log);
    EXPECT_NE(read_file(log).find("done: step " + std::to_string(to)), std::string::npos) << read_file(log);
  }

  TempDir tmp_;
  std::string name_;
  static TempDir* data_;
  static std::string* unavailable_;
};
TempDir* MultiHost::data_ = nullptr;
std::string* MultiHost::unavailable_ = nullptr;

// 2 hosts x 1 rank against 1 host x 2 ranks (plain mpirun, shared memory): the same losses and the same final
// state, bit for bit, also when the two-host run stops at step 5 and resumes. The start-up check logs both hosts.
TEST_F(MultiHost, TwoHostsTakeTheSameStepsAsOneHostBitForBitAcrossAResume) {
  make_hosts(2);
  const std::string one = tmp_ / "one", two = tmp_ / "two";
  ASSERT_EQ(run_command(launcher(2) + train_args(one, "--set train.max_steps=10"), tmp_ / "one.log"), 0)
      << read_file(tmp_ / "one.log");
  ASSERT_EQ(run_command(on_hosts(2, two, "--set train.max_steps=5"), tmp_ / "two.log"), 0) << read_file(tmp_ / "two.log");
  const std::string log = read_file(tmp_ / "two.log");
  EXPECT_NE(log.find("start-up check: 2 rank(s) answered"), std::string::npos) << log;
  EXPECT_NE(log.find("0: " + host(1) + " (CPU), 1: " + host(2) + " (CPU)"), std::string::npos) << log;
  ASSERT_EQ(run_command(on_hosts(2, two, "--resume --set train.max_steps=10"), tmp_ / "two2.log"), 0)
      << read_file(tmp_ / "two2.log");
  EXPECT_EQ(losses(one).size(), 10u);
  EXPECT_EQ(losses(one), losses(two));
  ASSERT_TRUE(same_checkpoint_tensors(latest(one), latest(two)));
}

// Every process on host 2 killed with SIGKILL mid-run, its network still up (the OOM killer, a kernel that
// panics and reboots, `kill -9 -1`): Open MPI's runtime sees the daemon's connections close and ends the job at
// once, well within the deadline, with its own message. The checkpoint is intact; the run resumes on host 1.
TEST_F(MultiHost, AKilledHostEndsTheJobAndTheRunResumesOnTheHostLeft) {
  make_hosts(2);
  const std::string run = tmp_ / "run", log = tmp_ / "run.log";
  const int timeout = 10;
  const pid_t pid = start_endless_run(2, run, log, timeout);
  signal_host(2, SIGKILL);
  const auto [rc, took] = time_to_end(pid, timeout + 30, log);
  std::printf("killed host: exit status %d after %.1f s\n", rc, took);
  EXPECT_NE(rc, 0);
  EXPECT_LT(took, timeout + 5) << read_file(log);
  expect_resumable_on_host_one(run, static_cast<int>(losses(run).size()) + 3);
}

// Host 2 vanishes (its link goes down and everything on it freezes: power lost, a hung kernel): nothing tells
// the others, so rank 0's deadline ends the job with one line naming the lost rank, the step and the operation.
// The checkpoint is intact; the run resumes on host 1.
TEST_F(MultiHost, AVanishedHostEndsTheJobAtTheDeadlineNamingRankAndStep) {
  make_hosts(2);
  const std::string run = tmp_ / "run", log = tmp_ / "run.log";
  const int timeout = 8;
  const pid_t pid = start_endless_run(2, run, log, timeout);
  ASSERT_TRUE(shell("ip -n " + host(2) + " link set eth0 down"));
  signal_host(2, SIGSTOP);
  const auto [rc, took] = time_to_end(pid, timeout + 60, log);
  std::printf("vanished host: exit status %d after %.1f s\n", rc, took);
  const std::string out = read_file(log);
  EXPECT_NE(rc, 0);
  EXPECT_LT(took, timeout + 20) << out;
  EXPECT_TRUE(std::regex_search(out, std::regex("aiayn: error: rank 0: step [0-9]+: MPI_I[a-z]+ .*timed out after 8 s "
                                                "\\(train.comm_timeout_s\\): no answer from rank 1 ")))
      << out;
  signal_host(2, SIGKILL);
  expect_resumable_on_host_one(run, static_cast<int>(losses(run).size()) + 3);
}

// The link of host 2 goes down while its rank runs on: both sides miss the deadline; rank 0 names rank 1, the
// step and the operation, and the job ends. mpirun returns once TCP gives up on host 2's daemon
// (net.ipv4.tcp_retries2, lowered on the test hosts: see README).
TEST_F(MultiHost, ACutLinkEndsTheJobNamingRankStepAndOperation) {
  make_hosts(2);
  const std::string run = tmp_ / "run", log = tmp_ / "run.log";
  const int timeout = 8;
  const pid_t pid = start_endless_run(2, run, log, timeout);
  ASSERT_TRUE(shell("ip -n " + host(2) + " link set eth0 down"));
  const auto [rc, took] = time_to_end(pid, timeout + 60, log);
  std::printf("cut link: exit status %d after %.1f s\n", rc, took);
  const std::string out = read_file(log);
  EXPECT_NE(rc, 0);
  EXPECT_LT(took, timeout + 20) << out;
  EXPECT_TRUE(std::regex_search(out, std::regex("aiayn: error: rank 0: step [0-9]+: MPI_I[a-z]+ \\(.*\\) timed out after "
                                                "8 s \\(train.comm_timeout_s\\): no answer from rank 1 ")))
      << out;
  EXPECT_NO_THROW(checkpoint_tensors(latest(run), true));
}

// The same cut, with Open MPI's daemon keepalive shorter than the deadline (as launch/examples/multi_node.sh
// sets it) and the kernel's default TCP retries on the launching host: Open MPI notices the lost node first,
// reports it and ends the job at once, before aiayn's deadline.
TEST_F(MultiHost, ACutLinkIsReportedByOpenMpiWhenItsKeepaliveIsShorter) {
  make_hosts(2);
  ASSERT_TRUE(shell("ip netns exec " + host(1) + " sysctl -q -w net.ipv4.tcp_retries2=15"));
  const std::string run = tmp_ / "run", log = tmp_ / "run.log";
  const pid_t pid = start_endless_run(
      2, run, log, 60, "OMPI_MCA_oob_tcp_keepalive_time=2 OMPI_MCA_oob_tcp_keepalive_intvl=1 OMPI_MCA_oob_tcp_keepalive_probes=3");
  ASSERT_TRUE(shell("ip -n " + host(2) + " link set eth0 down"));
  const auto [rc, took] = time_to_end(pid, 90, log);
  std::printf("cut link, keepalive 2 s + 3 x 1 s: exit status %d after %.1f s\n", rc, took);
  const std::string out = read_file(log);
  EXPECT_NE(rc, 0);
  EXPECT_LT(took, 20) << out;
  EXPECT_NE(out.find("ORTE has lost communication with a remote daemon"), std::string::npos) << out;
  EXPECT_EQ(out.find("timed out after"), std::string::npos) << out;  // before aiayn's deadline
  EXPECT_NO_THROW(checkpoint_tensors(latest(run), true));
}

// Three hosts; the rank on host 2 is frozen (SIGSTOP) while the hosts and links stay up: rank 0 names rank 1
// (rank 2 answers the roll call), the step and the operation; Open MPI then kills the frozen rank too.
TEST_F(MultiHost, AFrozenRankOnOneOfThreeHostsEndsTheJobNamingIt) {
  make_hosts(3);
  const std::string run = tmp_ / "run", log = tmp_ / "run.log";
  const int timeout = 6;
  const pid_t pid = start_endless_run(3, run, log, timeout);
  signal_host(2, SIGSTOP, "aiayn");
  const auto [rc, took] = time_to_end(pid, timeout + 60, log);
  std::printf("frozen rank of three: exit status %d after %.1f s\n", rc, took);
  const std::string out = read_file(log);
  EXPECT_NE(rc, 0);
  EXPECT_LT(took, timeout + 10) << out;
  EXPECT_TRUE(std::regex_search(out, std::regex("aiayn: error: rank [02]: step [0-9]+: MPI_I[a-z]+ \\(.*\\) timed out "
                                                "after 6 s \\(train.comm_timeout_s\\): no answer from rank 1 ")))
      << out;
  EXPECT_EQ(out.find("no answer from ranks"), std::string::npos) << out;  // rank 2 (or 0) answered
  EXPECT_NO_THROW(checkpoint_tensors(latest(run), true));
}

// Host 2's link is slowed (netem delay where the kernel has it, else a tbf rate limit): the run goes on at the
// default deadline, every step slower, and the log's tok/s shows it.
TEST_F(MultiHost, ASlowLinkSlowsTheRunWithoutAFalseDeadline) {
  make_hosts(2);
  const std::string fast = tmp_ / "fast", slow = tmp_ / "slow";
  ASSERT_EQ(run_command(on_hosts(2, fast, "--set train.max_steps=12"), tmp_ / "fast.log"), 0) << read_file(tmp_ / "fast.log");
  std::string how = "netem delay 50ms", out;
  if (!shell("ip netns exec " + host(2) + " tc qdisc add dev eth0 root " + how, &out)) {
    std::printf("tc netem is unavailable here (%s); shaping with a tbf rate limit instead\n",
                out.substr(0, out.find('\n')).c_str());
    how = "tbf rate 16mbit burst 32kbit latency 400ms";
    ASSERT_TRUE(shell("ip netns exec " + host(2) + " tc qdisc add dev eth0 root " + how, &out)) << out;
  }
  ASSERT_EQ(run_command(on_hosts(2, slow, "--set train.max_steps=12"), tmp_ / "slow.log"), 0) << read_file(tmp_ / "slow.log");
  // Seconds per step and tok/s over steps 3..12 (the first two include start-up).
  const auto rate = [](const std::string& run) {
    const auto lines = read_jsonl(run + "/metrics.jsonl");
    double t2 = 0, t12 = 0, tok_s = 0;
    for (const auto& j : lines) {
      if (!j.contains("elapsed_s")) continue;
      const int step = j["step"].get<int>();
      if (step == 2) t2 = j["elapsed_s"].get<double>();
      if (step == 12) t12 = j["elapsed_s"].get<double>();
      if (step > 2) tok_s += j["tok_s"].get<double>() / 10;
    }
    return std::pair<double, double>{(t12 - t2) / 10, tok_s};
  };
  const auto [fast_step, fast_tok] = rate(fast);
  const auto [slow_step, slow_tok] = rate(slow);
  std::printf("slow link (%s): %.3f s per step (%.0f tok/s) against %.3f s (%.0f tok/s) unshaped\n", how.c_str(),
              slow_step, slow_tok, fast_step, fast_tok);
  EXPECT_GT(slow_step, 2 * fast_step);
  EXPECT_LT(slow_tok, fast_tok / 2);
  EXPECT_EQ(losses(fast), losses(slow));  // slower, not different
}

}  // namespace
}  // namespace aiayn::testing
