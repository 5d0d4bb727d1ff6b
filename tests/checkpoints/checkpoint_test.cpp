// Checkpoints: round trip (bit-exact), the atomic save protocol under a fault at every stage, detection of
// bit flips and truncation, resume fallback, retention, and averaging against an independent double mean.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "aiayn/error.hpp"
#include "checkpoints/checkpoint.hpp"
#include "process.hpp"
#include "test_env.hpp"

namespace aiayn::checkpoints {
namespace {

namespace fs = std::filesystem;
using aiayn::testing::read_file;
using aiayn::testing::TempDir;

// A tiny "model": names with '/', a scalar-free mix of ranks, values with exact bit patterns.
struct Model {
  std::vector<std::string> names{"encoder/layers/0/self_attn/q/weight", "encoder/layers/0/self_attn/q/bias",
                                 "decoder/norm/gain"};
  std::vector<std::vector<int64_t>> shapes{{4, 3}, {3}, {2, 2, 2}};
  std::vector<std::vector<float>> w, m, v;
  explicit Model(float seed) {
    for (auto& s : shapes) {
      size_t n = 1;
      for (auto d : s) n *= static_cast<size_t>(d);
      std::vector<float> a(n), b(n), c(n);
      for (size_t i = 0; i < n; ++i) {
        a[i] = seed * 0.37f + static_cast<float>(i) * 1.0e-3f - 0.1f;
        b[i] = seed * 1e-5f + static_cast<float>(i);
        c[i] = 1.0f / (seed + static_cast<float>(i) + 1.0f);
      }
      w.push_back(a), m.push_back(b), v.push_back(c);
    }
  }
  SaveRequest request(int64_t step) const {
    SaveRequest r;
    r.meta.step = step;
    r.meta.epoch = 2;
    r.meta.batch_in_epoch = 17;
    r.meta.seed = 0xfeedfacecafebeefull;
    r.meta.config = "model:\n  d_model: 8\n";
    r.meta.config_hash = "abc123";
    r.meta.corpus_fingerprint = "corpus-42";
    r.meta.world_size = 2;
    for (size_t i = 0; i < names.size(); ++i) {
      r.model.push_back({names[i], shapes[i], w[i].data()});
      r.adam_m.push_back({names[i], shapes[i], m[i].data()});
      r.adam_v.push_back({names[i], shapes[i], v[i].data()});
    }
    r.extra["tokenizer.model"] = std::string("\x00\x01spm\xff", 6);
    return r;
  }
};

struct Buffers {
  std::vector<std::vector<float>> w, m, v;
  std::vector<MutableTensorRef> mw, mm, mv;
  explicit Buffers(const Model& model) {
    for (size_t i = 0; i < model.names.size(); ++i) {
      w.emplace_back(model.w[i].size(), -99.f), m.emplace_back(model.m[i].size(), -99.f);
      v.emplace_back(model.v[i].size(), -99.f);
    }
    for (size_t i = 0; i < model.names.size(); ++i) {
      mw.push_back({model.names[i], model.shapes[i], w[i].data()});
      mm.push_back({model.names[i], model.shapes[i], m[i].data()});
      mv.push_back({model.names[i], model.shapes[i], v[i].data()});
    }
  }
};

std::vector<std::string> dir_names(const std::string& dir) {
  std::vector<std::string> names;
  for (auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}
bool any_tmp(const std::string& dir) {
  for (auto& n : dir_names(dir))
    if (n.size() >= 4 && n.substr(n.size() - 4) == ".tmp") return true;
  return false;
}
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const aiayn::Error& e) {
    return e.what();
  }
  return "";
}
bool bits_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The byte offset of a contiguous dataset's data in the file.
haddr_t data_offset(const std::string& path, const std::string& dataset) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
  haddr_t off = H5Dget_offset(d);
  H5Dclose(d);
  H5Fclose(f);
  return off;
}
void flip_bit(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x10);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

TEST(Checkpoint, RoundTripIsBitExact) {
  TempDir tmp;
  Model model(1.5f);
  const std::string dir = tmp / "run/checkpoints";  // created on demand
  const std::string path = save_checkpoint(dir, model.request(1234));
  EXPECT_EQ(path, dir + "/step-00001234.h5");
  EXPECT_EQ(read_file(dir + "/LATEST"), "step-00001234.h5\n");
  EXPECT_FALSE(any_tmp(dir));

  Buffers b(model);
  const Meta meta = load_checkpoint(path, b.mw, &b.mm, &b.mv);
  for (size_t i = 0; i < model.names.size(); ++i) {
    EXPECT_TRUE(bits_equal(b.w[i], model.w[i])) << model.names[i];
    EXPECT_TRUE(bits_equal(b.m[i], model.m[i])) << model.names[i];
    EXPECT_TRUE(bits_equal(b.v[i], model.v[i])) << model.names[i];
  }
  EXPECT_EQ(meta.step, 1234);
  EXPECT_EQ(meta.epoch, 2);
  EXPECT_EQ(meta.batch_in_epoch, 17);
  EXPECT_EQ(meta.seed, 0xfeedfacecafebeefull);
  EXPECT_EQ(meta.config, "model:\n  d_model: 8\n");
  EXPECT_EQ(meta.config_hash, "abc123");
  EXPECT_EQ(meta.corpus_fingerprint, "corpus-42");
  EXPECT_EQ(meta.world_size, 2);
  EXPECT_EQ(meta.version, 1);
  EXPECT_EQ(read_meta(path).step, 1234);

  std::string bytes;
  EXPECT_TRUE(read_extra(path, "tokenizer.model", &bytes));
  EXPECT_EQ(bytes, std::string("\x00\x01spm\xff", 6));
  EXPECT_FALSE(read_extra(path, "absent", &bytes));
  std::string why;
  EXPECT_TRUE(verify_checkpoint(path, &why)) << why;

  // Names are nested groups in the file.
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  EXPECT_GT(H5Lexists(f, "/model/encoder/layers/0", H5P_DEFAULT), 0);
  H5Fclose(f);
}

TEST(Checkpoint, LoadRefusesWrongShapeOrMissingName) {
  TempDir tmp;
  Model model(2.0f);
  const std::string path = save_checkpoint(tmp.path(), model.request(1));
  std::vector<float> buf(64);
  std::vector<MutableTensorRef> wrong{{model.names[0], {3, 4}, buf.data()}};
  std::string e = error_of([&] { load_checkpoint(path, wrong); });
  EXPECT_NE(e.find(path), std::string::npos) << e;
  EXPECT_NE(e.find("/model/" + model.names[0]), std::string::npos) << e;
  std::vector<MutableTensorRef> missing{{"decoder/nope", {2}, buf.data()}};
  e = error_of([&] { load_checkpoint(path, missing); });
  EXPECT_NE(e.find("/model/decoder/nope"), std::string::npos) << e;
}

TEST(Checkpoint, InjectedFailureAtEveryStageLeavesPreviousStateIntact) {
  for (const std::string stage : {"write", "fsync", "rename", "latest"}) {
    SCOPED_TRACE(stage);
    TempDir tmp;
    Model model(3.0f);
    save_checkpoint(tmp.path(), model.request(100));
    const std::string before = read_file(tmp / "step-00000100.h5");
    set_save_fault_hook([&](const std::string& s) {
      if (s == stage) throw std::runtime_error("injected fault at " + s);
    });
    const std::string e = error_of([&] { save_checkpoint(tmp.path(), model.request(200)); });
    set_save_fault_hook(nullptr);
    EXPECT_NE(e.find("injected fault"), std::string::npos) << e;
    EXPECT_NE(e.find(stage), std::string::npos) << e;
    EXPECT_NE(e.find(tmp.path()), std::string::npos) << e;
    EXPECT_FALSE(any_tmp(tmp.path())) << "a temporary file was left behind";
    EXPECT_EQ(read_file(tmp / "LATEST"), "step-00000100.h5\n");
    EXPECT_EQ(read_file(tmp / "step-00000100.h5"), before);
    // Never a damaged checkpoint: either no step-200 file, or (fault at LATEST) a complete one.
    if (fs::exists(tmp / "step-00000200.h5")) {
      EXPECT_EQ(stage, "latest");
      EXPECT_TRUE(verify_checkpoint(tmp / "step-00000200.h5"));
    }
    EXPECT_EQ(find_resume_checkpoint(tmp.path(), nullptr), tmp / "step-00000100.h5");
  }
}

TEST(Checkpoint, UnwritableDirectoryFailsCleanly) {
  TempDir tmp;
  Model model(1.0f);
  { std::ofstream(tmp / "afile") << "x"; }
  // A directory below a regular file cannot exist (ENOTDIR), even for root.
  std::string e = error_of([&] { save_checkpoint(tmp / "afile/checkpoints", model.request(1)); });
  EXPECT_NE(e.find(tmp / "afile/checkpoints"), std::string::npos) << e;
  SaveRequest model_only = model.request(1);
  model_only.adam_m.clear(), model_only.adam_v.clear();
  e = error_of([&] { save_model_file(tmp / "afile/avg.h5", model_only); });
  EXPECT_NE(e.find("avg.h5"), std::string::npos) << e;
  EXPECT_NE(e.find("stage 'write'"), std::string::npos) << e;
  EXPECT_EQ(dir_names(tmp.path()), std::vector<std::string>{"afile"});
}

TEST(Checkpoint, BitFlipInTensorDataIsDetectedNamingFileAndDataset) {
  TempDir tmp;
  Model model(4.0f);
  const std::string path = save_checkpoint(tmp.path(), model.request(7));
  const std::string dataset = "/model/" + model.names[0];
  const haddr_t off = data_offset(path, dataset);
  ASSERT_NE(off, HADDR_UNDEF);
  flip_bit(path, off + 5);
  std::string why;
  EXPECT_FALSE(verify_checkpoint(path, &why));
  EXPECT_NE(why.find(path), std::string::npos) << why;
  EXPECT_NE(why.find(dataset), std::string::npos) << why;
  EXPECT_NE(why.find("checksum"), std::string::npos) << why;
  Buffers b(model);
  const std::string e = error_of([&] { load_checkpoint(path, b.mw); });
  EXPECT_NE(e.find(dataset), std::string::npos) << e;
  EXPECT_NE(e.find(path), std::string::npos) << e;
}

TEST(Checkpoint, BitFlipInOptimizerStateIsDetected) {
  TempDir tmp;
  Model model(4.5f);
  const std::string path = save_checkpoint(tmp.path(), model.request(7));
  const std::string dataset = "/optim/v/" + model.names[2];
  flip_bit(path, data_offset(path, dataset));
  std::string why;
  EXPECT_FALSE(verify_checkpoint(path, &why));
  EXPECT_NE(why.find(dataset), std::string::npos) << why;
}

TEST(Checkpoint, TruncatedFileGivesAClearError) {
  TempDir tmp;
  Model model(5.0f);
  const std::string path = save_checkpoint(tmp.path(), model.request(9));
  const auto size = fs::file_size(path);
  for (uintmax_t keep : {size / 2, size - 1, uintmax_t{100}, uintmax_t{0}}) {
    SCOPED_TRACE(keep);
    const std::string copy = tmp / "truncated.h5";
    fs::copy_file(path, copy, fs::copy_options::overwrite_existing);
    fs::resize_file(copy, keep);
    std::string why;
    EXPECT_FALSE(verify_checkpoint(copy, &why));
    EXPECT_NE(why.find(copy), std::string::npos) << why;
    Buffers b(model);
    EXPECT_THROW(load_checkpoint(copy, b.mw), aiayn::Error);
    EXPECT_THROW(read_meta(copy), aiayn::Error);
  }
}

TEST(Checkpoint, FutureVersionAndForeignFilesAreRefused) {
  TempDir tmp;
  Model model(6.0f);
  const std::string path = save_checkpoint(tmp.path(), model.request(3));
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t a = H5Aopen(f, "version", H5P_DEFAULT);
  int64_t future = 99;
  H5Awrite(a, H5T_NATIVE_INT64, &future);
  H5Aclose(a);
  H5Fclose(f);
  std::string e = error_of([&] { read_meta(path); });
  EXPECT_NE(e.find("version 99"), std::string::npos) << e;
  { std::ofstream(tmp / "text.h5") << "not hdf5 at all"; }
  e = error_of([&] { read_meta(tmp / "text.h5"); });
  EXPECT_NE(e.find(tmp / "text.h5"), std::string::npos) << e;
  e = error_of([&] { read_meta(tmp / "missing.h5"); });
  EXPECT_NE(e.find("no such file"), std::string::npos) << e;
}

TEST(Checkpoint, ResumeFallsBackWhenLatestIsDamaged) {
  TempDir tmp;
  Model model(7.0f);
  for (int64_t step : {10, 20, 30}) save_checkpoint(tmp.path(), model.request(step));
  std::vector<std::string> warnings;
  auto warn = [&](const std::string& w) { warnings.push_back(w); };
  EXPECT_EQ(find_resume_checkpoint(tmp.path(), warn), tmp / "step-00000030.h5");
  EXPECT_TRUE(warnings.empty());

  flip_bit(tmp / "step-00000030.h5", data_offset(tmp / "step-00000030.h5", "/model/" + model.names[1]));
  EXPECT_EQ(find_resume_checkpoint(tmp.path(), warn), tmp / "step-00000020.h5");
  ASSERT_FALSE(warnings.empty());
  EXPECT_NE(warnings[0].find("step-00000030.h5"), std::string::npos) << warnings[0];

  fs::remove(tmp / "LATEST");
  warnings.clear();
  EXPECT_EQ(find_resume_checkpoint(tmp.path(), warn), tmp / "step-00000020.h5");
  EXPECT_FALSE(warnings.empty());

  TempDir empty;
  EXPECT_EQ(find_resume_checkpoint(empty.path(), warn), "");
  EXPECT_EQ(find_resume_checkpoint(empty / "nonexistent", warn), "");
}

TEST(Checkpoint, ListIgnoresTemporariesAndSortsBySteps) {
  TempDir tmp;
  Model model(8.0f);
  for (int64_t step : {300, 5, 40}) save_checkpoint(tmp.path(), model.request(step));
  { std::ofstream(tmp / "step-00000999.h5.tmp") << "partial"; }
  { std::ofstream(tmp / "notes.txt") << "x"; }
  EXPECT_EQ(list_checkpoints(tmp.path()),
            (std::vector<std::string>{tmp / "step-00000005.h5", tmp / "step-00000040.h5", tmp / "step-00000300.h5"}));
}

TEST(Checkpoint, RetentionKeepsNewestLatestAndMinimum) {
  TempDir tmp;
  Model model(9.0f);
  for (int64_t step = 1; step <= 6; ++step) save_checkpoint(tmp.path(), model.request(step * 10));
  // LATEST names step 60 (the newest): keep_last 2 keeps 50, 60.
  auto deleted = prune_checkpoints(tmp.path(), 2, 0);
  EXPECT_EQ(deleted.size(), 4u);
  EXPECT_EQ(list_checkpoints(tmp.path()),
            (std::vector<std::string>{tmp / "step-00000050.h5", tmp / "step-00000060.h5"}));

  TempDir tmp2;
  for (int64_t step = 1; step <= 6; ++step) save_checkpoint(tmp2.path(), model.request(step * 10));
  // min_keep (averaging needs 4) wins over keep_last 1.
  prune_checkpoints(tmp2.path(), 1, 4);
  EXPECT_EQ(list_checkpoints(tmp2.path()).size(), 4u);
  EXPECT_EQ(list_checkpoints(tmp2.path()).front(), tmp2 / "step-00000030.h5");

  TempDir tmp3;
  for (int64_t step = 1; step <= 5; ++step) save_checkpoint(tmp3.path(), model.request(step * 10));
  { std::ofstream(tmp3 / "LATEST") << "step-00000020.h5\n"; }  // e.g. the newer ones were written after
  deleted = prune_checkpoints(tmp3.path(), 1, 1);
  EXPECT_EQ(list_checkpoints(tmp3.path()),
            (std::vector<std::string>{tmp3 / "step-00000020.h5", tmp3 / "step-00000050.h5"}));
  EXPECT_EQ(deleted, (std::vector<std::string>{tmp3 / "step-00000010.h5", tmp3 / "step-00000030.h5",
                                               tmp3 / "step-00000040.h5"}));
  EXPECT_TRUE(prune_checkpoints(tmp3.path(), 5, 0).empty());
}

TEST(Average, EqualsTheDoubleMeanComputedIndependently) {
  TempDir tmp;
  std::vector<Model> models{Model(1.0f), Model(2.25f), Model(-3.5f)};
  std::vector<std::string> paths;
  for (size_t k = 0; k < models.size(); ++k) {
    auto r = models[k].request(static_cast<int64_t>(100 * (k + 1)));
    r.extra["tokenizer.model"] = "tok-" + std::to_string(k);
    paths.push_back(save_checkpoint(tmp / "ckpt", r));
  }
  const std::string out = tmp / "averaged.h5";
  average_checkpoints(paths, out);
  EXPECT_FALSE(fs::exists(out + ".tmp"));
  std::string why;
  ASSERT_TRUE(verify_checkpoint(out, &why)) << why;

  Buffers b(models[0]);
  const Meta meta = load_checkpoint(out, b.mw);
  EXPECT_EQ(meta.step, 300);  // from the last input
  for (size_t i = 0; i < models[0].names.size(); ++i)
    for (size_t j = 0; j < b.w[i].size(); ++j) {
      double s = 0;
      for (auto& m : models) s += static_cast<double>(m.w[i][j]);
      EXPECT_EQ(b.w[i][j], static_cast<float>(s / 3.0)) << models[0].names[i] << "[" << j << "]";
    }
  std::string tok;
  EXPECT_TRUE(read_extra(out, "tokenizer.model", &tok));
  EXPECT_EQ(tok, "tok-2");
  // Model-only: the optimizer state is absent.
  Buffers o(models[0]);
  EXPECT_THROW(load_checkpoint(out, o.mw, &o.mm, &o.mv), aiayn::Error);
  hid_t f = H5Fopen(out.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  EXPECT_EQ(H5Lexists(f, "/optim", H5P_DEFAULT), 0);
  H5Fclose(f);

  // One input: the average is the input itself.
  average_checkpoints({paths[1]}, tmp / "one.h5");
  Buffers one(models[0]);
  load_checkpoint(tmp / "one.h5", one.mw);
  for (size_t i = 0; i < models[1].names.size(); ++i) EXPECT_TRUE(bits_equal(one.w[i], models[1].w[i]));
}

TEST(Average, RefusesMismatchedNamesShapesAndNoInputs) {
  TempDir tmp;
  Model a(1.0f);
  const std::string pa = save_checkpoint(tmp / "a", a.request(1));
  Model shaped(2.0f);
  shaped.shapes[0] = {3, 4};
  const std::string pb = save_checkpoint(tmp / "b", shaped.request(2));
  Model renamed(3.0f);
  renamed.names[2] = "decoder/norm/bias";
  const std::string pc = save_checkpoint(tmp / "c", renamed.request(3));
  Model fewer(4.0f);
  fewer.names.pop_back(), fewer.shapes.pop_back(), fewer.w.pop_back(), fewer.m.pop_back(), fewer.v.pop_back();
  const std::string pd = save_checkpoint(tmp / "d", fewer.request(4));

  std::string e = error_of([&] { average_checkpoints({pa, pb}, tmp / "out.h5"); });
  EXPECT_NE(e.find(pb), std::string::npos) << e;
  EXPECT_NE(e.find("/model/" + a.names[0]), std::string::npos) << e;
  EXPECT_NE(e.find("shape"), std::string::npos) << e;
  e = error_of([&] { average_checkpoints({pa, pc}, tmp / "out.h5"); });
  EXPECT_NE(e.find(pc), std::string::npos) << e;
  EXPECT_NE(e.find("decoder/norm/gain"), std::string::npos) << e;
  e = error_of([&] { average_checkpoints({pa, pd}, tmp / "out.h5"); });
  EXPECT_NE(e.find(pd), std::string::npos) << e;
  e = error_of([&] { average_checkpoints({}, tmp / "out.h5"); });
  EXPECT_NE(e.find("at least 1"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(tmp / "out.h5"));
  EXPECT_FALSE(fs::exists(tmp / "out.h5.tmp"));
}

}  // namespace
}  // namespace aiayn::checkpoints
