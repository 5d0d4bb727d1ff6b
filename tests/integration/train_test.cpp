// `aiayn train` end to end on the synthetic corpus: ranks, faults, signals, resume, kills.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "checkpoints/checkpoint.hpp"
#include "run_helpers.hpp"
#include "test_env.hpp"

namespace aiayn::testing {
namespace {
namespace fs = std::filesystem;

class Train : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new TempDir();
    const int rc = run_command(aiayn_exe() + " prepare --synthetic --pairs 3000 --seed 5 --out " + data_->path() + "/d",
                               data_->path() + "/prepare.log");
    ASSERT_EQ(rc, 0) << read_file(data_->path() + "/prepare.log");
  }
  static void TearDownTestSuite() { delete data_; }

  std::string data() const { return data_->path() + "/d"; }
  std::string config() const { return source_dir() + "/launch/configs/tiny.yaml"; }
  // A train command with the settings every test shares plus `extra` (--set ... or --resume).
  std::string train(int ranks, const std::string& run, const std::string& extra) const {
    return launcher(ranks) + aiayn_exe() + " train --config " + config() + " --data " + data() + " --run-dir " + run +
           " --set train.log_every=1 --set train.valid_every=0 --set train.batch_tokens=600"
           " --set train.max_tokens_per_rank=600 --set checkpoint.every_minutes=0 --set train.threads=1 " + extra;
  }
  // Starts the two-rank `cmd`, sends `sig` to it once three steps are logged, and checks that both ranks agreed on
  // a step, checkpointed it and exited with status 75.
  static void expect_two_ranks_stop_cleanly(const std::string& cmd, const std::string& run, int sig, const std::string& log) {
    const pid_t pid = spawn_command(cmd, log);
    for (int i = 0; i < 600 && losses(run).size() < 3; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_GE(losses(run).size(), 3u) << read_file(log);
    kill(pid, sig);
    EXPECT_EQ(wait_for(pid), 75) << read_file(log);
    const std::string log0 = read_file(run + "/log/rank-0.log"), log1 = read_file(run + "/log/rank-1.log");
    const auto at = [](const std::string& text) {
      const char* marker = "stop requested by signal at step ";
      const auto p = text.find(marker);
      if (p == std::string::npos) return std::string("none");
      const auto from = p + std::strlen(marker);
      return text.substr(from, text.find(':', from) - from);
    };
    EXPECT_NE(at(log0), "none");
    EXPECT_EQ(at(log0), at(log1));
    EXPECT_EQ(latest(run), run + "/checkpoints/step-" + std::string(8 - at(log0).size(), '0') + at(log0) + ".h5");
  }

  TempDir tmp_;

 private:
  static TempDir* data_;
};
TempDir* Train::data_ = nullptr;

double relative_l2(const std::map<std::string, std::vector<float>>& a, const std::map<std::string, std::vector<float>>& b) {
  double diff = 0, norm = 0;
  std::vector<std::pair<double, std::string>> worst;
  for (const auto& [name, x] : a) {
    const auto& y = b.at(name);
    double d = 0, worst_el = 0;
    size_t big = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      worst_el = std::max(worst_el, std::fabs(static_cast<double>(x[i]) - y[i]));
      big += std::fabs(static_cast<double>(x[i]) - y[i]) > 1e-5;
      d += (static_cast<double>(x[i]) - y[i]) * (static_cast<double>(x[i]) - y[i]);
      norm += static_cast<double>(x[i]) * x[i];
    }
    diff += d;
    worst.emplace_back(d, name + " max " + std::to_string(worst_el) + " n>1e-5 " + std::to_string(big) + "/" + std::to_string(x.size()));
  }
  std::sort(worst.rbegin(), worst.rend());
  for (size_t i = 0; i < 4 && i < worst.size(); ++i)
    std::printf("  largest difference: %s (%.3g of %.3g)\n", worst[i].second.c_str(), worst[i].first, diff);
  return std::sqrt(diff / norm);
}

// The global batch does not depend on the number of ranks, and dropout masks are keyed by corpus index:
// one rank and two ranks take the same steps (the issue's bounds: losses within 1e-4, parameters within 1e-5).
TEST_F(Train, OneAndTwoRanksTakeTheSameStepsWithDropout) {
  const std::string r1 = tmp_ / "r1", r2 = tmp_ / "r2";
  ASSERT_EQ(run_command(train(1, r1, "--set train.max_steps=30 --set model.dropout=0.1"), tmp_ / "r1.log"), 0)
      << read_file(tmp_ / "r1.log");
  ASSERT_EQ(run_command(train(2, r2, "--set train.max_steps=30 --set model.dropout=0.1"), tmp_ / "r2.log"), 0)
      << read_file(tmp_ / "r2.log");
  const auto a = losses(r1), b = losses(r2);
  ASSERT_EQ(a.size(), 30u);
  ASSERT_EQ(b.size(), 30u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_LT(std::fabs(a[i] - b[i]) / a[i], 1e-4) << "step " << i + 1;
  EXPECT_LT(relative_l2(checkpoint_tensors(latest(r1), false), checkpoint_tensors(latest(r2), false)), 1e-5);
  // Stronger: with train.shards = 2 (the default) both runs add the same shard gradients in the same order, so
  // every loss and every parameter and Adam moment is bit-identical.
  EXPECT_EQ(a, b);
  EXPECT_TRUE(same_checkpoint_tensors(latest(r1), latest(r2)));
  // and the loss falls on the synthetic corpus
  EXPECT_LT(a.back(), a.front() - 0.5);
  // every rank writes its own log; rank 0 writes the metrics with exactly the documented fields
  EXPECT_TRUE(fs::exists(r2 + "/log/rank-0.log"));
  EXPECT_TRUE(fs::exists(r2 + "/log/rank-1.log"));
  const auto first = read_jsonl(r2 + "/metrics.jsonl").front();
  for (const char* key : {"step", "epoch", "loss", "nll", "lr", "gnorm", "tgt_tokens", "tok_s", "skipped", "elapsed_s"})
    EXPECT_TRUE(first.contains(key)) << key;
  EXPECT_EQ(first.size(), 10u);
  EXPECT_TRUE(fs::exists(r2 + "/averaged.h5"));
}

// With small all-reduce buckets the two-rank run starts most of them from inside the backward pass, as each
// finishes; a range reported before its last gradient contribution would leave that contribution out of the
// sum on the other rank and break the bit-identity with the one-rank run.
TEST_F(Train, BucketsStartedDuringTheBackwardPassGiveTheSameSteps) {
  const std::string r1 = tmp_ / "b1", r2 = tmp_ / "b2";
  const std::string common = "--set train.max_steps=8 --set model.dropout=0.1 --set train.bucket_mb=0.01";
  ASSERT_EQ(run_command(train(1, r1, common), tmp_ / "b1.log"), 0) << read_file(tmp_ / "b1.log");
  ASSERT_EQ(run_command(train(2, r2, common), tmp_ / "b2.log"), 0) << read_file(tmp_ / "b2.log");
  EXPECT_EQ(losses(r1), losses(r2));
  EXPECT_TRUE(same_checkpoint_tensors(latest(r1), latest(r2)));
  const std::string log = read_file(r2 + "/log/rank-0.log");
  std::smatch m;
  std::regex_search(log, m, std::regex(R"((\d+) bucket\(s\) of up to \d+ floats, (\d+) started during)"));
  ASSERT_EQ(m.size(), 3u) << log;
  EXPECT_GT(std::stoi(m[1]), 10) << log;
  EXPECT_EQ(std::stoi(m[2]), std::stoi(m[1])) << "every bucket should start from the backward pass: " << log;
}

// A NaN in one rank's gradient makes every rank skip the step; parameters and Adam state stay unchanged.
// With a smaller memory cap on one rank than on two, the pairs per step are the same but the micro-batch
// shapes differ, so BLAS sums in another order. Such last-bit differences do not stay small: a ReLU unit whose
// input sits at zero switches on in one run and not the other, and Adam turns that unit's first gradient into
// a full-size step (seen: 2e-9 relative difference in the gradient norm at step 1, 1e-4 at step 30). Hence a
// looser bound on the parameters (1e-4) than for equal caps (bit-identical above), the same bound on losses.
TEST_F(Train, GradientAccumulationTakesTheSameSteps) {
  const std::string r1 = tmp_ / "acc1", r2 = tmp_ / "acc2";
  ASSERT_EQ(run_command(train(1, r1, "--set train.max_steps=20 --set train.max_tokens_per_rank=200"), tmp_ / "a1.log"), 0)
      << read_file(tmp_ / "a1.log");
  ASSERT_EQ(run_command(train(2, r2, "--set train.max_steps=20"), tmp_ / "a2.log"), 0) << read_file(tmp_ / "a2.log");
  const auto a = losses(r1), b = losses(r2);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_LT(std::fabs(a[i] - b[i]) / a[i], 1e-4) << "step " << i + 1;
  EXPECT_LT(relative_l2(checkpoint_tensors(latest(r1), false), checkpoint_tensors(latest(r2), false)), 1e-4);
}

TEST_F(Train, NonFiniteGradientOnOneRankSkipsTheStepOnAll) {
  const std::string run = tmp_ / "nan";
  const int rc = run_command("env AIAYN_TEST_NAN_AT=1:3 " + train(2, run, "--set train.max_steps=4 --set checkpoint.every_steps=1"
                                                                      " --set checkpoint.keep_last=10"),
                             tmp_ / "nan.log");
  ASSERT_EQ(rc, 0) << read_file(tmp_ / "nan.log");
  const auto before = checkpoint_tensors(run + "/checkpoints/step-00000002.h5", true);
  const auto after = checkpoint_tensors(run + "/checkpoints/step-00000003.h5", true);
  for (const auto& [name, x] : before) ASSERT_EQ(x, after.at(name)) << name << " changed in a skipped step";
  EXPECT_NE(before.at("/model/embedding/weight"),
            checkpoint_tensors(run + "/checkpoints/step-00000004.h5", false).at("/model/embedding/weight"));
  bool skip_line = false;
  for (const auto& j : read_jsonl(run + "/metrics.jsonl"))
    if (j.value("step", 0) == 3 && j["loss"].is_null()) skip_line = j.value("skipped", 0) == 1;
  EXPECT_TRUE(skip_line);
  for (const char* log : {"/log/rank-0.log", "/log/rank-1.log"})
    EXPECT_NE(read_file(run + log).find("step 3: non-finite"), std::string::npos) << log;
}

TEST_F(Train, TooManyConsecutiveSkipsEndTheRunWithAnError) {
  const std::string run = tmp_ / "nan2";
  const int rc = run_command("env AIAYN_TEST_NAN_AT=0:2,0:3 " +
                                 train(1, run, "--set train.max_steps=6 --set train.max_consecutive_skips=2"),
                             tmp_ / "nan2.log");
  EXPECT_EQ(rc, 1);
  EXPECT_NE(read_file(tmp_ / "nan2.log").find("2 consecutive steps"), std::string::npos) << read_file(tmp_ / "nan2.log");
}

// SIGUSR1 to mpirun reaches both ranks; they agree on the step, checkpoint it and exit with status 75.
TEST_F(Train, SignalStopsBothRanksAtTheSameStepWithACheckpoint) {
  const std::string run = tmp_ / "sig";
  expect_two_ranks_stop_cleanly(train(2, run, "--set train.max_steps=100000"), run, SIGUSR1, tmp_ / "sig.log");
}

// SIGTERM, a scheduler's preemption, to a job started through launch/stoppable.sh (as the launch examples do)
// stops it the same way. Sent to mpirun itself, Open MPI would kill the ranks within a second (it forwards only
// SIGUSR1/SIGUSR2 and a few others): exit status 1 and no checkpoint of the stopping step, 20 of 20 times here.
TEST_F(Train, SigtermToTheLaunchScriptStopsAnMpirunJobWithACheckpoint) {
  const std::string run = tmp_ / "sigterm2";
  expect_two_ranks_stop_cleanly(source_dir() + "/launch/stoppable.sh " + train(2, run, "--set train.max_steps=100000"),
                                run, SIGTERM, tmp_ / "sigterm2.log");
}

TEST_F(Train, SigtermStopsAPlainProcessToo) {
  const std::string run = tmp_ / "term";
  const pid_t pid = spawn_command(train(1, run, "--set train.max_steps=100000"), tmp_ / "term.log");
  for (int i = 0; i < 600 && losses(run).size() < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  kill(pid, SIGTERM);
  EXPECT_EQ(wait_for(pid), 75) << read_file(tmp_ / "term.log");
  EXPECT_TRUE(fs::exists(latest(run)));
}

// SIGTERM at many moments of a one-thread run, most of them inside oneDNN's sgemm: every run stops with status
// 75 and a complete checkpoint. Before the handler moved to an alternate signal stack, the signal frame written
// below the JIT code's stack pointer corrupted its data: 15 of 40 such runs died in "corrupted size vs.
// prev_size" (SIGABRT, status 134), so these eight runs all passing by chance was about 2 in 100.
TEST_F(Train, SigtermAtAnyMomentStopsCleanly) {
  for (int i = 0; i < 8; ++i) {
    const std::string run = tmp_ / ("term" + std::to_string(i));
    const pid_t pid = spawn_command(train(1, run, "--set train.max_steps=100000"), tmp_ / "term.log");
    for (int j = 0; j < 600 && losses(run).size() < size_t(2 + 3 * i); ++j)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::this_thread::sleep_for(std::chrono::milliseconds(7 * i));  // and not always just after a step
    kill(pid, SIGTERM);
    ASSERT_EQ(wait_for(pid), 75) << "run " << i << ":\n" << read_file(tmp_ / "term.log");
    EXPECT_TRUE(fs::exists(latest(run))) << run;
  }
}

// A dead rank ends the job at once with a line naming it, and the last checkpoint stays intact. The victim is
// found by its rank (OMPI_COMM_WORLD_RANK in its environment) among mpiexec's children: matching 'aiayn train'
// on command lines also matched mpiexec itself, and the lowest pid was sometimes mpiexec.
TEST_F(Train, ADeadRankEndsTheWholeJob) {
  const std::string run = tmp_ / "dead", log = tmp_ / "dead.log";
  const pid_t pid = spawn_command(train(2, run, "--set train.max_steps=100000 --set checkpoint.every_steps=2"), log);
  for (int i = 0; i < 600 && losses(run).size() < 3; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_GE(losses(run).size(), 3u) << read_file(log);
  pid_t victim = 0;
  const std::string children = tmp_ / "children.txt";
  ASSERT_EQ(std::system(("pgrep -P " + std::to_string(pid) + " > " + children).c_str()), 0);
  std::ifstream in(children);
  for (pid_t child; in >> child;) {
    const std::string env = read_file("/proc/" + std::to_string(child) + "/environ");
    if (env.find(std::string("OMPI_COMM_WORLD_RANK=1") + '\0') != std::string::npos) victim = child;
  }
  ASSERT_GT(victim, 0) << "no child of mpiexec " << pid << " is rank 1";
  ASSERT_NE(victim, pid);
  kill(victim, SIGKILL);
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = wait_for(pid);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  kill_session(pid, SIGKILL);
  EXPECT_NE(rc, 0);
  EXPECT_LT(took, 30.0);
  // Open MPI reports the dead process itself, before any deadline: the rank and how it died.
  const std::string out = read_file(log);
  EXPECT_NE(out.find("process rank 1"), std::string::npos) << out;
  EXPECT_NE(out.find("signal 9"), std::string::npos) << out;
  // The survivor was training when it was ended; what it saved is complete.
  EXPECT_EQ(read_file(run + "/log/rank-0.log").find("done: step"), std::string::npos);
  EXPECT_TRUE(checkpoints::verify_checkpoint(latest(run))) << latest(run);
}

// Results do not depend on the thread count: `aiayn train` (2 threads) and `mpirun -np 2 aiayn train` (1 thread
// each) must agree, as 1 and 2 ranks do at equal threads. Every op's summation order is fixed by the shapes, not
// by the threads; the small preset's products (d_ff 1024) are where oneDNN's own threading once differed.
TEST_F(Train, ThreadCountDoesNotChangeTheResult) {
  const std::string small = "--config " + source_dir() + "/launch/configs/small.yaml --data " + data() +
                            " --set train.max_steps=3 --set train.log_every=1 --set train.valid_every=0"
                            " --set train.batch_tokens=3000 --set train.max_tokens_per_rank=3000"
                            " --set checkpoint.every_minutes=0 --set train.threads=";
  const std::string one = tmp_ / "one", two = tmp_ / "two";
  ASSERT_EQ(run_command(aiayn_exe() + " train --run-dir " + one + " " + small + "1", tmp_ / "one.log"), 0)
      << read_file(tmp_ / "one.log");
  ASSERT_EQ(run_command(aiayn_exe() + " train --run-dir " + two + " " + small + "2", tmp_ / "two.log"), 0)
      << read_file(tmp_ / "two.log");
  ASSERT_EQ(losses(one).size(), 3u);
  EXPECT_EQ(losses(one), losses(two));
  ASSERT_TRUE(same_checkpoint_tensors(latest(one), latest(two)));
}

// One rank frozen with SIGSTOP, on one machine: the other misses the deadline and ends the job with a line
// naming the frozen rank, the step and the operation. Before every MPI collective had the deadline, such a job
// (rank 1 stopped, train.comm_timeout_s=10) was still hanging 90 s later.
TEST_F(Train, AFrozenRankEndsTheJobAtTheDeadline) {
  const std::string run = tmp_ / "frozen", log = tmp_ / "frozen.log";
  const pid_t pid = spawn_command(
      train(2, run, "--set train.max_steps=100000 --set checkpoint.every_steps=2 --set train.comm_timeout_s=5"), log);
  for (int i = 0; i < 600 && losses(run).size() < 3; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_GE(losses(run).size(), 3u) << read_file(log);
  const std::string ranks = tmp_ / "ranks.txt";
  ASSERT_EQ(std::system(("pgrep -s " + std::to_string(pid) + " -f 'aiayn train' > " + ranks).c_str()), 0);
  std::ifstream in(ranks);
  pid_t victim = 0;
  for (pid_t p = 0; in >> p;) {  // the process of rank 1
    const std::string env = read_file("/proc/" + std::to_string(p) + "/environ");
    if (env.find(std::string("OMPI_COMM_WORLD_RANK=1") + '\0') != std::string::npos) victim = p;
  }
  ASSERT_GT(victim, 0);
  kill(victim, SIGSTOP);
  const auto t0 = std::chrono::steady_clock::now();
  int rc = -1, status = 0;
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60) && rc == -1) {
    if (waitpid(pid, &status, WNOHANG) == pid) rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  kill_session(pid, SIGKILL);  // whatever is left, if the job hung
  if (rc == -1) wait_for(pid);
  std::printf("frozen rank: exit status %d after %.1f s\n", rc, took);
  const std::string out = read_file(log);
  ASSERT_NE(rc, -1) << "the job hung:\n" << out;
  EXPECT_NE(rc, 0);
  EXPECT_LT(took, 5 + 8) << out;
  EXPECT_TRUE(std::regex_search(out, std::regex("aiayn: error: rank 0: step [0-9]+: MPI_I[a-z]+ \\(.*\\) timed out after "
                                                "5 s \\(train.comm_timeout_s\\): no answer from rank 1 ")))
      << out;
  EXPECT_NO_THROW(checkpoint_tensors(latest(run), true));
}

// Stop and resume is bit-identical to a run that never stopped: every logged loss, every byte of the state.
class Resume : public Train, public ::testing::WithParamInterface<int> {};

TEST_P(Resume, IsBitExactWithTheSameNumberOfRanks) {
  const int ranks = GetParam();
  const std::string full = tmp_ / "full", part = tmp_ / "part";
  ASSERT_EQ(run_command(train(ranks, full, "--set train.max_steps=12"), tmp_ / "full.log"), 0) << read_file(tmp_ / "full.log");
  ASSERT_EQ(run_command(train(ranks, part, "--set train.max_steps=7"), tmp_ / "part.log"), 0) << read_file(tmp_ / "part.log");
  ASSERT_EQ(run_command(train(ranks, part, "--resume --set train.max_steps=12"), tmp_ / "part2.log"), 0)
      << read_file(tmp_ / "part2.log");
  EXPECT_EQ(losses(full), losses(part));
  ASSERT_TRUE(same_checkpoint_tensors(latest(full), latest(part)));
}
INSTANTIATE_TEST_SUITE_P(Ranks, Resume, ::testing::Values(1, 2));

// With train.shards = 2 (the default) 1 and 2 ranks add the same shard gradients in the same order: a run
// resumed on the other rank count is bit-identical to one that never stopped, losses and state.
TEST_F(Train, ResumesAcrossOneAndTwoRanksBitForBit) {
  for (const auto& [before, after] : std::vector<std::pair<int, int>>{{2, 1}, {1, 2}}) {
    SCOPED_TRACE(std::to_string(before) + " rank(s), then " + std::to_string(after));
    const std::string full = tmp_ / ("full" + std::to_string(before)), part = tmp_ / ("part" + std::to_string(before));
    ASSERT_EQ(run_command(train(before, full, "--set train.max_steps=12"), tmp_ / "full.log"), 0) << read_file(tmp_ / "full.log");
    ASSERT_EQ(run_command(train(before, part, "--set train.max_steps=6"), tmp_ / "part.log"), 0) << read_file(tmp_ / "part.log");
    ASSERT_EQ(run_command(train(after, part, "--resume --set train.max_steps=12"), tmp_ / "part2.log"), 0)
        << read_file(tmp_ / "part2.log");
    ASSERT_EQ(losses(full).size(), 12u);
    EXPECT_EQ(losses(full), losses(part));
    ASSERT_TRUE(same_checkpoint_tensors(latest(full), latest(part)));
  }
}

// 2 ranks, then 3: the shard count changes from 2 to 3, so the gradient sums are added in another order. The
// steps are the same up to that rounding (the design's promise): losses within 1e-5 relative over the next
// six steps, parameters and Adam moments within 1e-5 (relative L2).
TEST_F(Train, ResumesOnThreeRanksAfterTwoUpToSummationOrder) {
  const std::string full = tmp_ / "full", part = tmp_ / "part";
  ASSERT_EQ(run_command(train(2, full, "--set train.max_steps=12"), tmp_ / "full.log"), 0) << read_file(tmp_ / "full.log");
  ASSERT_EQ(run_command(train(2, part, "--set train.max_steps=6"), tmp_ / "part.log"), 0) << read_file(tmp_ / "part.log");
  ASSERT_EQ(run_command(train(3, part, "--resume --set train.max_steps=12"), tmp_ / "part2.log"), 0)
      << read_file(tmp_ / "part2.log");
  const auto a = losses(full), b = losses(part);
  ASSERT_EQ(a.size(), 12u);
  ASSERT_EQ(b.size(), 12u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(a[i], b[i]) << "step " << i + 1;  // before the resume: the same run
  for (size_t i = 6; i < a.size(); ++i) EXPECT_LT(std::fabs(a[i] - b[i]) / a[i], 1e-5) << "step " << i + 1;
  EXPECT_LT(relative_l2(checkpoint_tensors(latest(full), true), checkpoint_tensors(latest(part), true)), 1e-5);
  EXPECT_NE(read_file(part + "/log/rank-0.log").find("saved by 2 rank(s), now 3"), std::string::npos);
}

// A checkpoint taken at the last batch of an epoch resumes into the next epoch exactly.
TEST_F(Train, ResumesAtAnEpochBoundaryBitForBit) {
  const std::string full = tmp_ / "full", part = tmp_ / "part";
  ASSERT_EQ(run_command(train(1, full, "--set train.max_steps=80"), tmp_ / "full.log"), 0) << read_file(tmp_ / "full.log");
  int64_t last_of_epoch0 = 0;
  for (const auto& j : read_jsonl(full + "/metrics.jsonl"))
    if (j.contains("loss") && j["epoch"].get<int64_t>() == 0) last_of_epoch0 = j["step"].get<int64_t>();
  ASSERT_GT(last_of_epoch0, 0);
  ASSERT_LT(last_of_epoch0, 75) << "the epoch must end well before the run does";
  ASSERT_EQ(run_command(train(1, part, "--set train.max_steps=" + std::to_string(last_of_epoch0)), tmp_ / "part.log"), 0)
      << read_file(tmp_ / "part.log");
  ASSERT_EQ(run_command(train(1, part, "--resume --set train.max_steps=80"), tmp_ / "part2.log"), 0)
      << read_file(tmp_ / "part2.log");
  EXPECT_EQ(losses(full), losses(part));
  ASSERT_TRUE(same_checkpoint_tensors(latest(full), latest(part)));
}

// train.clip_norm scales the whole gradient by clip_norm / gnorm before Adam when gnorm is larger (the logged
// gnorm is the norm before clipping), and leaves it alone otherwise. After one step Adam's moments show it
// exactly: m = (1 - beta1) g and v = (1 - beta2) g^2, so the clipped run's m is the unclipped one's times
// s = clip_norm / gnorm and its v times s^2 (up to float rounding); a clip_norm above gnorm changes no bit.
TEST_F(Train, ClipNormScalesTheGradientBeforeAdam) {
  const std::string plain = tmp_ / "plain", loose = tmp_ / "loose", tight = tmp_ / "tight";
  const std::string one_step = "--set train.max_steps=1 --set train.log_every=1";
  ASSERT_EQ(run_command(train(1, plain, one_step), tmp_ / "p.log"), 0) << read_file(tmp_ / "p.log");
  ASSERT_EQ(run_command(train(1, loose, one_step + " --set train.clip_norm=1e9"), tmp_ / "l.log"), 0) << read_file(tmp_ / "l.log");
  const auto first = read_jsonl(plain + "/metrics.jsonl").front();
  const double gnorm = first["gnorm"].get<double>();
  ASSERT_GT(gnorm, 0.01);
  const double clip = gnorm / 4;
  ASSERT_EQ(run_command(train(1, tight, one_step + " --set train.clip_norm=" + std::to_string(clip)), tmp_ / "t.log"), 0)
      << read_file(tmp_ / "t.log");
  EXPECT_EQ(read_jsonl(tight + "/metrics.jsonl").front()["gnorm"].get<double>(), gnorm);  // logged before clipping
  ASSERT_TRUE(same_checkpoint_tensors(latest(plain), latest(loose)));
  const auto a = checkpoint_tensors(latest(plain), true), c = checkpoint_tensors(latest(tight), true);
  const double s = clip / gnorm;
  size_t compared = 0;
  for (const auto& [name, m] : a) {
    const bool is_m = name.rfind("/optim/m/", 0) == 0, is_v = name.rfind("/optim/v/", 0) == 0;
    if (!is_m && !is_v) continue;
    const auto& clipped = c.at(name);
    const double factor = is_m ? s : s * s;
    for (size_t i = 0; i < m.size(); ++i) {
      const double want = m[i] * factor;
      ASSERT_NEAR(clipped[i], want, 1e-5 * std::fabs(want) + 1e-30) << name << "[" << i << "]";
      ++compared;
    }
  }
  EXPECT_GT(compared, 100000u);
  // ... and the parameters moved differently.
  EXPECT_NE(a.at("/model/embedding/weight"), c.at("/model/embedding/weight"));
}

// The stop and checkpoint conditions by time, and a periodic checkpoint that fails to write: the run says so
// and goes on (the README's promise); nothing half-written is left, and the next checkpoint commits.
TEST_F(Train, TimeLimitsAndAFailedPeriodicCheckpoint) {
  const std::string timed = tmp_ / "timed";
  ASSERT_EQ(run_command(train(1, timed, "--set train.max_steps=1000000 --set train.max_minutes=0.03"), tmp_ / "t.log"), 0)
      << read_file(tmp_ / "t.log");
  const std::string log = read_file(timed + "/log/rank-0.log");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(log, m, std::regex("train.max_minutes \\(0.03\\) reached at step (\\d+)"))) << log;
  const std::string step = m[1];
  EXPECT_EQ(latest(timed), timed + "/checkpoints/step-" + std::string(8 - step.size(), '0') + step + ".h5");
  EXPECT_TRUE(fs::exists(timed + "/averaged.h5"));

  const std::string every = tmp_ / "every";
  ASSERT_EQ(run_command(train(1, every, "--set train.max_steps=40 --set checkpoint.every_minutes=0.005 --set checkpoint.keep_last=100"),
                        tmp_ / "e.log"), 0)
      << read_file(tmp_ / "e.log");
  size_t by_time = 0;
  const std::string elog = read_file(every + "/log/rank-0.log");
  for (size_t p = elog.find("(every_minutes)"); p != std::string::npos; p = elog.find("(every_minutes)", p + 1)) ++by_time;
  EXPECT_GE(by_time, 2u) << elog;

  const std::string failing = tmp_ / "failing";
  ASSERT_EQ(run_command("env AIAYN_TEST_FAIL_SAVE_AT=20 " +
                            train(1, failing, "--set train.max_steps=30 --set checkpoint.every_steps=10"),
                        tmp_ / "f.log"), 0)
      << read_file(tmp_ / "f.log");
  const std::string flog = read_file(failing + "/log/rank-0.log");
  EXPECT_NE(flog.find("checkpoint at step 20 was NOT saved"), std::string::npos) << flog;
  EXPECT_NE(flog.find("injected failure"), std::string::npos) << flog;
  EXPECT_FALSE(fs::exists(failing + "/checkpoints/step-00000020.h5"));
  EXPECT_TRUE(fs::exists(failing + "/checkpoints/step-00000010.h5"));
  EXPECT_EQ(latest(failing), failing + "/checkpoints/step-00000030.h5");
  for (const auto& e : fs::directory_iterator(failing + "/checkpoints")) EXPECT_NE(e.path().extension(), ".tmp") << e.path();
  EXPECT_EQ(losses(failing).size(), 30u);
}

// kill -9 of the whole job at random moments while it checkpoints every step; each time it resumes from
// LATEST, and the finished run equals one that was never killed. The kills are timed by the run's progress
// (1 to 3 more logged steps, then 0 to 60 ms into the next step or its checkpoint), not by the clock: on a fast
// machine fixed delays landed after the run had finished, and the test proved nothing.
TEST_F(Train, SurvivesKillNineAtRandomMoments) {
  const std::string full = tmp_ / "full", run = tmp_ / "killed";
  const std::string common = "--set train.max_steps=30 --set checkpoint.every_steps=1 --set checkpoint.keep_last=3";
  ASSERT_EQ(run_command(train(2, full, common), tmp_ / "full.log"), 0) << read_file(tmp_ / "full.log");
  bool started = false;
  int mid_run = 0;  // kills that landed while the job was running, after its first checkpoint and before its end
  for (int attempt = 0; attempt < 12; ++attempt) {
    const size_t logged = fs::exists(run + "/metrics.jsonl") ? losses(run).size() : 0;
    const pid_t pid = spawn_command(train(2, run, common + (started ? " --resume" : "")), tmp_ / "killed.log");
    // The resumed run first drops the lines of the steps it will run again: count from the resume point on.
    const size_t target = std::min<size_t>(29, logged + 1 + attempt % 3);
    for (int i = 0; i < 1000 && (!fs::exists(run + "/metrics.jsonl") || losses(run).size() < target); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::this_thread::sleep_for(std::chrono::milliseconds((attempt * 37) % 61));
    kill_session(pid, SIGKILL);  // the whole job at once: mpiexec and both ranks
    const int status = wait_for(pid);
    if (status == 128 + SIGKILL && fs::exists(run + "/checkpoints/LATEST") && latest(run) != run + "/checkpoints/step-00000030.h5")
      ++mid_run;
    for (int i = 0; i < 50 && system(("pgrep -s " + std::to_string(pid) + " >/dev/null").c_str()) == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    started = started || fs::exists(run + "/checkpoints/LATEST");
    if (!started) fs::remove_all(run);  // killed before its first checkpoint: start afresh
  }
  EXPECT_GE(mid_run, 4) << "too few kills landed mid-run for the test to mean anything";
  int rc = run_command(train(2, run, common + (started ? " --resume" : "")), tmp_ / "killed.log");
  ASSERT_EQ(rc, 0) << read_file(tmp_ / "killed.log");
  for (const auto& e : fs::directory_iterator(run + "/checkpoints"))  // no interrupted write is left behind
    EXPECT_NE(e.path().extension(), ".tmp") << e.path();
  ASSERT_TRUE(same_checkpoint_tensors(latest(full), latest(run)));
}

TEST_F(Train, CorruptLatestFallsBackToTheNewestGoodCheckpoint) {
  const std::string run = tmp_ / "corrupt";
  ASSERT_EQ(run_command(train(1, run, "--set train.max_steps=6 --set checkpoint.every_steps=2"), tmp_ / "c.log"), 0);
  const std::string newest = latest(run);
  std::filesystem::resize_file(newest, std::filesystem::file_size(newest) / 2);
  ASSERT_EQ(run_command(train(1, run, "--resume --set train.max_steps=8"), tmp_ / "c2.log"), 0) << read_file(tmp_ / "c2.log");
  // The second run's own lines (the first run's log also names step-00000004.h5, when it saved it).
  const std::string log = read_file(run + "/log/rank-0.log");
  EXPECT_NE(log.find("resuming from " + run + "/checkpoints/step-00000004.h5 instead"), std::string::npos) << log;
  EXPECT_NE(log.find("resumed from " + run + "/checkpoints/step-00000004.h5 at step 4"), std::string::npos) << log;
  EXPECT_EQ(latest(run), run + "/checkpoints/step-00000008.h5");
}

TEST_F(Train, RefusesANonEmptyRunDirectoryWithoutTouchingIt) {
  const std::string run = tmp_ / "busy";
  fs::create_directories(run);
  std::ofstream(run + "/notes.txt") << "mine";
  const int rc = run_command(train(1, run, "--set train.max_steps=2"), tmp_ / "busy.log");
  EXPECT_EQ(rc, 1);
  EXPECT_NE(read_file(tmp_ / "busy.log").find("not empty"), std::string::npos);
  EXPECT_EQ(read_file(run + "/notes.txt"), "mine");
  EXPECT_EQ(std::distance(fs::directory_iterator(run), fs::directory_iterator()), 1);
}

TEST_F(Train, BadInputsNameTheKeyOrFile) {
  EXPECT_EQ(run_command(train(1, tmp_ / "a", "--set model.d_model=abc"), tmp_ / "a.log"), 1);
  EXPECT_NE(read_file(tmp_ / "a.log").find("model.d_model"), std::string::npos);
  EXPECT_EQ(run_command(aiayn_exe() + " train --config " + config() + " --data /nonexistent --run-dir " + (tmp_ / "b"),
                        tmp_ / "b.log"), 1);
  EXPECT_NE(read_file(tmp_ / "b.log").find("/nonexistent/train.h5"), std::string::npos);
  // changing the architecture on resume is refused, naming the key
  const std::string run = tmp_ / "arch";
  ASSERT_EQ(run_command(train(1, run, "--set train.max_steps=2"), tmp_ / "c.log"), 0);
  EXPECT_EQ(run_command(train(1, run, "--resume --set train.max_steps=4 --set model.d_ff=128"), tmp_ / "d.log"), 1);
  EXPECT_NE(read_file(tmp_ / "d.log").find("model.d_ff"), std::string::npos) << read_file(tmp_ / "d.log");
  // so is a change of what the data cursor means (batch_tokens, seed): the checkpoint stays as it was
  const std::string saved = latest(run), saved_bytes = read_file(saved);
  for (const std::string key : {"train.batch_tokens=500", "train.seed=99"}) {
    const std::string log = tmp_ / "cursor.log";
    EXPECT_EQ(run_command(train(1, run, "--resume --set train.max_steps=4 --set train.max_tokens_per_rank=500 --set " + key),
                          log), 1) << key;
    const std::string name = key.substr(0, key.find('='));
    EXPECT_NE(read_file(log).find("config key '" + name + "' differs from the checkpoint"), std::string::npos)
        << read_file(log);
    EXPECT_EQ(latest(run), saved);
    EXPECT_EQ(read_file(saved), saved_bytes);
  }
  // an error under mpirun is printed once and every rank exits
  EXPECT_EQ(run_command(train(2, tmp_ / "e", "--set train.warmup=0"), tmp_ / "e.log"), 1);
  EXPECT_NE(read_file(tmp_ / "e.log").find("train.warmup"), std::string::npos);
}

}  // namespace
}  // namespace aiayn::testing
