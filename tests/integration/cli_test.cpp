// The command line's contract: errors are one line naming the cause with exit status 1, usage errors 2,
// bench prints one JSON line with the documented fields.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "run_helpers.hpp"
#include "test_env.hpp"

namespace aiayn::testing {
namespace {

TEST(Cli, UsageErrorsExitWithTwo) {
  TempDir tmp;
  EXPECT_EQ(run_command(aiayn_exe() + " train --no-such-flag", tmp / "a.log"), 2);
  EXPECT_EQ(run_command(aiayn_exe(), tmp / "b.log"), 2);
  EXPECT_EQ(run_command(aiayn_exe() + " --version", tmp / "c.log"), 0);
}

// `aiayn` alone, or with a word that is no command, names what was typed and lists every command with its line.
TEST(Cli, NoOrAnUnknownCommandListsTheCommands) {
  TempDir tmp;
  EXPECT_EQ(run_command(aiayn_exe(), tmp / "none.log"), 2);
  const std::string none = read_file(tmp / "none.log");
  EXPECT_NE(none.find("a command is required"), std::string::npos) << none;
  EXPECT_EQ(run_command(aiayn_exe() + " exprot --checkpoint x", tmp / "typo.log"), 2);
  const std::string typo = read_file(tmp / "typo.log");
  EXPECT_NE(typo.find("'exprot' is not an aiayn command"), std::string::npos) << typo;
  for (const char* command : {"prepare", "train", "eval", "translate", "average", "bleu", "bench"})
    EXPECT_NE(typo.find(std::string("\n  ") + command + " "), std::string::npos) << command << " is not listed:\n" << typo;
}

TEST(Cli, PrepareNamesTheMissingFile) {
  TempDir tmp;
  const int rc = run_command(aiayn_exe() + " prepare --train-src /nonexistent/a.en --train-tgt /nonexistent/a.de --out " +
                                 (tmp / "out"), tmp / "p.log");
  EXPECT_EQ(rc, 1);
  const std::string log = read_file(tmp / "p.log");
  EXPECT_NE(log.find("/nonexistent/a.en"), std::string::npos) << log;
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;  // one line
  EXPECT_FALSE(std::filesystem::exists(tmp / "out/train.h5"));
}

TEST(Cli, BenchPrintsOneJsonLineWithTheBaselinesFields) {
  TempDir tmp;
  const int rc = run_command(aiayn_exe() + " bench --config " + source_dir() +
                                 "/launch/configs/tiny.yaml --set device=cpu --vocab 100 --sentences 4 --src-len 5"
                                 " --tgt-len 6 --steps 2 --warmup-steps 1 > " + (tmp / "b.json"),
                             tmp / "b.log");
  ASSERT_EQ(rc, 0) << read_file(tmp / "b.log");
  const auto lines = read_jsonl(tmp / "b.json");
  ASSERT_EQ(lines.size(), 1u);
  for (const char* key : {"tgt_tok_s", "ms_per_step", "tflops", "sentences", "src_len", "tgt_len", "loss"})
    EXPECT_TRUE(lines[0].contains(key)) << key;
  EXPECT_GT(lines[0]["tgt_tok_s"].get<double>(), 0.0);
}

TEST(Cli, EvalNamesTheBadFile) {
  TempDir tmp;
  EXPECT_EQ(run_command(aiayn_exe() + " eval --checkpoint /nonexistent/c.h5 --data /nonexistent/t.h5", tmp / "e.log"), 1);
  EXPECT_NE(read_file(tmp / "e.log").find("/nonexistent/t.h5"), std::string::npos) << read_file(tmp / "e.log");
  std::ofstream(tmp / "garbage.h5") << "not an HDF5 file";
  EXPECT_EQ(run_command(aiayn_exe() + " eval --checkpoint " + (tmp / "garbage.h5") + " --data " + (tmp / "garbage.h5"),
                        tmp / "f.log"), 1);
  EXPECT_NE(read_file(tmp / "f.log").find(tmp / "garbage.h5"), std::string::npos) << read_file(tmp / "f.log");
}

// An environment variable `aiayn train` reads (the gradient communicator, test fault injection) with a bad value
// is one error line naming the variable, before anything is written.
TEST(Cli, TrainRefusesABadEnvironmentValueBeforeAnyWork) {
  TempDir tmp;
  const std::string train = aiayn_exe() + " train --config " + source_dir() + "/launch/configs/tiny.yaml --data " +
                            (tmp / "no-data") + " --run-dir " + (tmp / "run");
  for (const std::string& setting : {"AIAYN_GRADIENT_COMM=gloo", "AIAYN_TEST_NAN_AT=1:x", "AIAYN_TEST_FAIL_SAVE_AT=5,",
                                     "AIAYN_TEST_FORCE_OVERLAP=yes", "AIAYN_TEST_FAIL_IN_BACKWARD=0"}) {
    const std::string name = setting.substr(0, setting.find('='));
    const std::string log = tmp / (name + ".log");
    EXPECT_EQ(run_command("env " + setting + " " + train, log), 1) << setting;
    const std::string out = read_file(log);
    EXPECT_NE(out.find("aiayn: error: " + name + "='"), std::string::npos) << out;
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;  // one line
    EXPECT_FALSE(std::filesystem::exists(tmp / "run")) << setting;
  }
}

}  // namespace
}  // namespace aiayn::testing
