// A corpus is checked before any work: damaged token data on disk (an id of 10,000,000, an id of -3, an
// in-range change caught only by the token checksums) makes `aiayn train` fail at start with exit status 1 and
// one line naming the file, dataset and index; `aiayn check-data` runs the same checks alone. The damage is
// written into the file's bytes (where HDF5 stores /src/tokens), as a disk or a copy would damage it.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "run_helpers.hpp"
#include "test_env.hpp"

namespace aiayn::testing {
namespace {
namespace fs = std::filesystem;

class CorpusCheck : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new TempDir();
    const int rc = run_command(aiayn_exe() + " prepare --synthetic --pairs 1000 --seed 3 --vocab-size 200 --out " +
                                   data_->path() + "/clean",
                               data_->path() + "/prepare.log");
    ASSERT_EQ(rc, 0) << read_file(data_->path() + "/prepare.log");
  }
  static void TearDownTestSuite() { delete data_; }

  // A copy of the clean corpus in tmp_/name.
  std::string copy(const std::string& name) {
    const std::string dir = tmp_ / name;
    fs::copy(data_->path() + "/clean", dir, fs::copy_options::recursive);
    return dir;
  }
  // The byte offset of the contiguous dataset `name` in `file`, and its element count.
  static std::pair<haddr_t, hsize_t> where(const std::string& file, const char* name) {
    const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    const hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    const hid_t s = H5Dget_space(d);
    hsize_t n = 0;
    H5Sget_simple_extent_dims(s, &n, nullptr);
    const haddr_t at = H5Dget_offset(d);
    H5Sclose(s);
    H5Dclose(d);
    H5Fclose(f);
    return {at, n};
  }
  static int32_t peek(const std::string& file, haddr_t at, int64_t index) {
    std::ifstream in(file, std::ios::binary);
    in.seekg(std::streamoff(at + haddr_t(index) * 4));
    int32_t v = 0;
    in.read(reinterpret_cast<char*>(&v), 4);
    return v;
  }
  static void poke(const std::string& file, haddr_t at, int64_t index, int32_t value) {
    std::fstream io(file, std::ios::binary | std::ios::in | std::ios::out);
    io.seekp(std::streamoff(at + haddr_t(index) * 4));
    io.write(reinterpret_cast<const char*>(&value), 4);
    ASSERT_TRUE(io.good());
  }
  std::string train(const std::string& data, const std::string& run) const {
    return aiayn_exe() + " train --config " + source_dir() + "/launch/configs/tiny.yaml --data " + data +
           " --run-dir " + run + " --set device=cpu --set train.max_steps=2 --set train.threads=1";
  }
  // Runs `cmd`, expects exit status 1 and one "aiayn: error:" line holding every needle.
  void expect_one_line_error(const std::string& cmd, const std::vector<std::string>& needles) {
    const std::string log = tmp_ / "cmd.log";
    EXPECT_EQ(run_command(cmd + " 2>" + log + " >/dev/null", tmp_ / "sh.log"), 1) << read_file(log);
    const std::string text = read_file(log);
    const auto at = text.find("aiayn: error: ");
    ASSERT_NE(at, std::string::npos) << text;
    const std::string line = text.substr(at, text.find('\n', at) - at);
    for (const auto& n : needles) EXPECT_NE(line.find(n), std::string::npos) << "'" << n << "' not in: " << line;
  }

  TempDir tmp_;

 private:
  static TempDir* data_;
};
TempDir* CorpusCheck::data_ = nullptr;

TEST_F(CorpusCheck, CleanCorpusPassesCheckData) {
  const std::string dir = copy("ok");
  const std::string out = tmp_ / "out.txt";
  ASSERT_EQ(run_command(aiayn_exe() + " check-data " + dir + " >" + out, tmp_ / "err.txt"), 0)
      << read_file(tmp_ / "err.txt");
  const std::string text = read_file(out);
  for (const char* split : {"train.h5: ok", "valid.h5: ok", "test.h5: ok", "checksums"})
    EXPECT_NE(text.find(split), std::string::npos) << text;
}

TEST_F(CorpusCheck, DamagedIdsStopTrainingAtStart) {
  struct Case {
    const char* name;
    int32_t value;  // 0: an in-range change (another id, not EOS)
    const char* says;
  };
  for (const Case& c : {Case{"huge", 10000000, "token id 10000000 outside"}, Case{"negative", -3, "token id -3 outside"},
                        Case{"in_range", 0, "do not match their checksum"}}) {
    SCOPED_TRACE(c.name);
    const std::string dir = copy(c.name), file = dir + "/train.h5";
    const auto [at, n] = where(file, "/src/tokens");
    ASSERT_NE(at, HADDR_UNDEF);
    int64_t index = int64_t(n / 2);
    while (peek(file, at, index) == 3) ++index;  // not an EOS, so that only the id or the checksum can tell
    const int32_t old = peek(file, at, index);
    poke(file, at, index, c.value != 0 ? c.value : (old == 4 ? 5 : 4));
    const std::string named = "/src/tokens[" + std::to_string(c.value != 0 ? index : 0) + "]";
    expect_one_line_error(train(dir, tmp_ / (std::string("run_") + c.name)), {file, named, c.says});
    EXPECT_FALSE(fs::exists(tmp_ / (std::string("run_") + c.name) + "/checkpoints/LATEST"));
    expect_one_line_error(aiayn_exe() + " check-data " + dir, {file, named, c.says});
  }
}

TEST_F(CorpusCheck, CorpusWithoutChecksumsIsCheckedAndWarned) {
  const std::string dir = copy("old"), file = dir + "/valid.h5";
  {  // what aiayn wrote before token checksums existed: no checksum_block attribute, no tokens_crc32
    const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(H5Adelete(f, "checksum_block"), 0);
    ASSERT_GE(H5Ldelete(f, "/src/tokens_crc32", H5P_DEFAULT), 0);
    ASSERT_GE(H5Ldelete(f, "/tgt/tokens_crc32", H5P_DEFAULT), 0);
    H5Fclose(f);
  }
  const std::string err = tmp_ / "err.txt";
  ASSERT_EQ(run_command(aiayn_exe() + " check-data " + dir + " 2>" + err + " >/dev/null", tmp_ / "sh.log"), 0)
      << read_file(err);
  EXPECT_NE(read_file(err).find(file + ": no token checksums"), std::string::npos) << read_file(err);
  // Ids are still checked.
  const auto [at, n] = where(file, "/tgt/tokens");
  poke(file, at, int64_t(n) - 2, 10000000);
  expect_one_line_error(aiayn_exe() + " check-data " + dir,
                        {file, "/tgt/tokens[" + std::to_string(n - 2) + "]", "outside"});
}

}  // namespace
}  // namespace aiayn::testing
