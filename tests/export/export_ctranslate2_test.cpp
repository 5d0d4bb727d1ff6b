// `aiayn export --format ctranslate2` end to end: a synthetic corpus and a short training run built in the test,
// the export, then CTranslate2 (launch/ct2_translate.py) against `aiayn translate` on the 500 test sources, greedy
// and with beam 4; and the bad inputs (unknown format, pre-norm model, no ctranslate2, a failing converter), each
// one line, exit status 1 and nothing at --out.
//
// Python: $AIAYN_PYTHON (tests/run.sh sets it to tests/python_env.sh's venv, which has ctranslate2 and
// sentencepiece), else ~/.cache/aiayn-venv/bin/python, else python3. Without ctranslate2 the CTranslate2 tests
// skip, and fail under AIAYN_NO_SKIP=1.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "process.hpp"
#include "test_env.hpp"

namespace {

namespace fs = std::filesystem;
using aiayn::testing::aiayn_exe;
using aiayn::testing::source_dir;
using aiayn::testing::TempDir;

using Result = aiayn::testing::CommandResult;

// Runs a shell command, capturing stdout and stderr.
Result run(const std::string& cmd, const TempDir& dir) { return aiayn::testing::run_captured(cmd, dir.path()); }

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::stringstream ss(text);
  for (std::string l; std::getline(ss, l);) lines.push_back(l);
  return lines;
}

std::string python() {
  if (const std::string p = aiayn::testing::python_with_tools(); !p.empty()) return p;
  const char* home = std::getenv("HOME");
  const std::string venv = std::string(home ? home : "/root") + "/.cache/aiayn-venv/bin/python";
  return fs::exists(venv) ? venv : "python3";
}


class ExportCt2 : public ::testing::Test {
 protected:
  static TempDir* dir;
  static std::string data, ckpt, model;
  static bool have_ct2;
  static void SetUpTestSuite() {
    dir = new TempDir();
    data = *dir / "data";
    model = *dir / "ct2";
    const std::string run_dir = *dir / "run";
    Result p = run(aiayn_exe() + " prepare --synthetic --pairs 3000 --vocab-size 500 --out " + data, *dir);
    ASSERT_EQ(p.status, 0) << p.err;
    // Enough steps that the hypotheses are sentences of the target language, not one repeated token.
    Result t = run(aiayn_exe() + " train --config " + source_dir() + "/launch/configs/tiny.yaml" +
                       " --set train.max_steps=300 --set checkpoint.every_steps=100 --set train.valid_every=0" +
                       " --set device=cpu --set train.threads=2 --data " + data + " --run-dir " + run_dir,
                   *dir);
    ASSERT_EQ(t.status, 0) << t.err << t.out;
    ckpt = run_dir + "/averaged.h5";
    have_ct2 = run(python() + " -c 'import ctranslate2, sentencepiece'", *dir).status == 0;
  }
  static void TearDownTestSuite() { delete dir; }

  static std::string why_no_ct2() {
    return python() + " cannot import ctranslate2 and sentencepiece (tests/python_env.sh installs them; "
                      "tests/run.sh sets AIAYN_PYTHON)";
  }
  std::string export_cmd(const std::string& out, const std::string& extra = "", const std::string& py = python()) const {
    return aiayn_exe() + " export --checkpoint " + ckpt + " --format ctranslate2 --out " + out + " --python " + py + " " +
           extra;
  }
  void expect_error(const std::string& cmd, const std::string& needle, const std::string& out) {
    const Result r = run(cmd, *dir);
    EXPECT_EQ(r.status, 1) << cmd << "\n" << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << cmd << "\n" << r.err;
    EXPECT_EQ(lines_of(r.err).size(), 1u) << r.err;
    EXPECT_FALSE(fs::exists(out)) << out;
    for (const auto& e : fs::directory_iterator(fs::path(out).parent_path()))
      EXPECT_EQ(e.path().filename().string().find(".export-"), std::string::npos) << "staging left: " << e.path();
  }
  // Fraction of lines where CTranslate2 and aiayn translate agree, on the test sources.
  double agreement(int beam, const std::string& ct2_options) {
    const std::string src = data + "/text/test.src";
    const Result a = run(aiayn_exe() + " translate --checkpoint " + ckpt + " --device cpu --threads 2 --beam " +
                             std::to_string(beam) + " < " + src, *dir);
    EXPECT_EQ(a.status, 0) << a.err;
    const Result c = run(python() + " " + source_dir() + "/launch/ct2_translate.py --model " + model + " --threads 2" +
                             " --beam " + std::to_string(beam) + " " + ct2_options + " < " + src,
                         *dir);
    EXPECT_EQ(c.status, 0) << c.err;
    const auto ours = lines_of(a.out), theirs = lines_of(c.out);
    EXPECT_EQ(ours.size(), 500u);
    EXPECT_EQ(theirs.size(), ours.size());
    if (ours.empty() || theirs.size() != ours.size()) return 0;
    size_t same = 0, words = 0;
    std::vector<std::string> distinct;
    for (size_t i = 0; i < ours.size(); ++i) {
      if (ours[i] == theirs[i]) ++same;
      else std::printf("beam %d line %zu differs:\n  aiayn: %s\n  ct2:   %s\n", beam, i, ours[i].c_str(), theirs[i].c_str());
      std::stringstream ss(ours[i]);
      for (std::string w; ss >> w;) ++words;
      distinct.push_back(ours[i]);
    }
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    // Non-trivial translations: mostly different sentences of several words.
    EXPECT_GT(distinct.size(), ours.size() / 2) << "the test model's translations are degenerate";
    EXPECT_GT(static_cast<double>(words) / ours.size(), 4.0) << "the test model's translations are degenerate";
    const double frac = static_cast<double>(same) / ours.size();
    std::printf("beam %d: %zu of %zu lines identical (ct2_translate.py %s)\n", beam, same, ours.size(),
                ct2_options.c_str());
    return frac;
  }
};
TempDir* ExportCt2::dir = nullptr;
std::string ExportCt2::data, ExportCt2::ckpt, ExportCt2::model;
bool ExportCt2::have_ct2 = false;

TEST_F(ExportCt2, TranslatesAsAiaynTranslateGreedyAndBeam4) {
  if (!have_ct2) AIAYN_SKIP_OR_FAIL(why_no_ct2());
  const Result e = run(export_cmd(model), *dir);
  ASSERT_EQ(e.status, 0) << e.err;
  for (const char* f : {"model.bin", "config.json", "tokenizer.model"}) EXPECT_TRUE(fs::exists(fs::path(model) / f)) << f;
  EXPECT_EQ(fs::path(model).parent_path(), fs::path(dir->path()));
  for (const auto& entry : fs::directory_iterator(dir->path()))
    EXPECT_EQ(entry.path().filename().string().find(".export-"), std::string::npos) << "staging left: " << entry.path();
  // Greedy: the same argmax path (CTranslate2 stops after source + EOS + 50 tokens as aiayn forces EOS there).
  EXPECT_GE(agreement(1, ""), 0.99);
  // Beam 4 with the paper's GNMT penalty (alpha 0.6): CTranslate2's finished hypotheses ranked by aiayn's rule.
  EXPECT_GE(agreement(4, "--gnmt-alpha 0.6"), 0.99);
  // Beam 4 with CTranslate2's own penalty (|Y| + 1)^0.45, the closest power (README): a few short sentences differ.
  EXPECT_GE(agreement(4, "--lenpen 0.45"), 0.97);
}

TEST_F(ExportCt2, BadInputIsOneLineAndWritesNothing) {
  const std::string out = *dir / "bad-out";
  expect_error(aiayn_exe() + " export --checkpoint " + ckpt + " --format onnx --out " + out, "unknown format 'onnx'", out);
  expect_error(export_cmd(out, "", *dir / "no-such-python"), "cannot run", out);
  // An interpreter without ctranslate2 (a stand-in that fails every import).
  const std::string fake = *dir / "python-without-ct2";
  std::ofstream(fake) << "#!/bin/sh\nexit 1\n";
  fs::permissions(fake, fs::perms::owner_all);
  expect_error(export_cmd(out, "", fake), "cannot import ctranslate2", out);
  // A pre-norm checkpoint.
  const std::string pre_run = *dir / "pre-run";
  const Result t = run(aiayn_exe() + " train --config " + source_dir() + "/launch/configs/tiny.yaml" +
                           " --set model.pre_norm=true --set train.max_steps=2 --set checkpoint.every_steps=2" +
                           " --set train.valid_every=0 --set device=cpu --data " + data + " --run-dir " + pre_run,
                       *dir);
  ASSERT_EQ(t.status, 0) << t.err;
  expect_error(aiayn_exe() + " export --checkpoint " + pre_run + "/averaged.h5 --format ctranslate2 --out " + out,
               "pre-norm", out);
  expect_error(aiayn_exe() + " export --checkpoint " + (*dir / "nope.h5") + " --out " + out, "nope.h5", out);
}

TEST_F(ExportCt2, AFailedConversionLeavesTheOldModel) {
  if (!have_ct2) AIAYN_SKIP_OR_FAIL(why_no_ct2());
  const std::string out = *dir / "kept";
  fs::create_directories(out);
  std::ofstream(out + "/marker") << "old\n";
  auto expect_kept = [&](const std::string& cmd, const std::string& needle) {
    const Result r = run(cmd, *dir);
    EXPECT_EQ(r.status, 1) << cmd << "\n" << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
    EXPECT_EQ(aiayn::testing::read_file(out + "/marker"), "old\n");
    for (const auto& e : fs::directory_iterator(dir->path()))
      EXPECT_EQ(e.path().filename().string().find(".export-"), std::string::npos) << "staging left: " << e.path();
  };
  expect_kept(export_cmd(out), "not empty");
  const std::string failing = *dir / "failing_converter.py";
  std::ofstream(failing) << "import sys\nprint('failing_converter.py: error: as asked', file=sys.stderr)\nsys.exit(3)\n";
  expect_kept("AIAYN_EXPORT_SCRIPT=" + failing + " " + export_cmd(out, "--force"), "exit status 3");
  // --force replaces it once the export completes.
  const Result ok = run(export_cmd(out, "--force"), *dir);
  ASSERT_EQ(ok.status, 0) << ok.err;
  EXPECT_FALSE(fs::exists(out + "/marker"));
  EXPECT_TRUE(fs::exists(out + "/model.bin"));
}

}  // namespace
