// `aiayn average`: both forms (explicit files; --run-dir with --last) and the not-enough-checkpoints error.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "checkpoints/checkpoint.hpp"
#include "process.hpp"
#include "test_env.hpp"

namespace aiayn::checkpoints {
namespace {

using aiayn::testing::TempDir;

// `aiayn ARGS`, output discarded; its exit status.
int run(const std::string& args) { return aiayn::testing::run_command(aiayn::testing::aiayn_exe() + " " + args, "/dev/null"); }

void save_run(const std::string& ckpt_dir, int n) {
  for (int k = 0; k < n; ++k) {
    std::vector<float> w(6);
    for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(k * 10 + static_cast<int>(i)) * 0.5f;
    SaveRequest r;
    r.meta.step = 100 * (k + 1);
    r.model.push_back({"proj/weight", {2, 3}, w.data()});
    save_checkpoint(ckpt_dir, r);
  }
}

std::vector<float> load(const std::string& path) {
  std::vector<float> w(6);
  load_checkpoint(path, {{"proj/weight", {2, 3}, w.data()}});
  return w;
}

TEST(AverageCli, ExplicitFilesAndRunDir) {
  if (!std::filesystem::exists(aiayn::testing::aiayn_exe())) FAIL() << "no aiayn at " << aiayn::testing::aiayn_exe();
  TempDir tmp;
  save_run(tmp / "run/checkpoints", 4);
  const std::string c = tmp / "run/checkpoints/step-00000";
  // Explicit files: the first two (k = 0, 1); the expected mean is computed in double here.
  ASSERT_EQ(run("average --out " + tmp / "two.h5" + " " + c + "100.h5 " + c + "200.h5"), 0);
  std::vector<float> two = load(tmp / "two.h5");
  for (size_t i = 0; i < 6; ++i)
    EXPECT_EQ(two[i], static_cast<float>((0.5 * i + 0.5 * (10 + i)) / 2.0)) << i;

  // --run-dir --last 3: k = 1, 2, 3, into RUN/averaged.h5 by default.
  ASSERT_EQ(run("average --run-dir " + tmp / "run" + " --last 3"), 0);
  std::vector<float> three = load(tmp / "run/averaged.h5");
  for (size_t i = 0; i < 6; ++i)
    EXPECT_EQ(three[i], static_cast<float>((0.5 * (10 + i) + 0.5 * (20 + i) + 0.5 * (30 + i)) / 3.0)) << i;
  EXPECT_EQ(read_meta(tmp / "run/averaged.h5").step, 400);

  EXPECT_EQ(run("average --run-dir " + tmp / "run" + " --last 5"), 1);  // only 4 checkpoints
  EXPECT_EQ(run("average --out " + tmp / "none.h5"), 1);                 // no inputs
  EXPECT_FALSE(std::filesystem::exists(tmp / "none.h5"));
}

}  // namespace
}  // namespace aiayn::checkpoints
