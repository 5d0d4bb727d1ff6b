#pragma once
// Internal to checkpoints: the file format, written and read one dataset at a time.
//
// Layout: /model/<name>, /optim/m/<name>, /optim/v/<name> float32 with the tensor's shape (contiguous), and
// /extra/<key> uint8. Every dataset carries "checksum" = 64-bit FNV-1a of its bytes as 16 hex digits; root
// attributes hold the Meta. A reader verifies the checksum of every dataset it reads, so a bit flip anywhere
// in tensor data is an error naming the file and the dataset, never a silently different model.
#include <cstdint>
#include <string>
#include <vector>

#include "checkpoints/checkpoint.hpp"
#include "h5_util.hpp"

namespace aiayn::checkpoints::format {

constexpr const char* kFormat = "aiayn-checkpoint";
constexpr int64_t kVersion = 1;

uint64_t fnv1a64(const void* data, size_t bytes);
std::string hex64(uint64_t v);
int64_t element_count(const std::vector<int64_t>& shape, const std::string& context);

class Writer {
 public:
  explicit Writer(const std::string& path);  // creates (truncates) the file
  void write_meta(const Meta& meta);
  void write_floats(const std::string& dataset, const std::vector<int64_t>& shape, const float* data);
  void write_bytes(const std::string& dataset, const std::string& bytes);
  void close();  // flushes and closes; throws when the data could not be written

 private:
  std::string path_;
  h5::Handle file_;
  h5::Handle lcpl_;  // creates intermediate groups for names containing '/'
};

class Reader {
 public:
  explicit Reader(const std::string& path);  // read-only; checks format and version
  const Meta& meta() const { return meta_; }
  const std::string& path() const { return path_; }
  bool has(const std::string& dataset) const { return h5::exists(file_.get(), dataset); }
  std::vector<std::string> datasets(const std::string& group) const;  // empty when the group is absent
  std::vector<int64_t> shape(const std::string& dataset) const;
  // Reads a float32 dataset of exactly `shape` into `out` and verifies its checksum.
  void read_floats(const std::string& dataset, const std::vector<int64_t>& shape, float* out) const;
  std::string read_bytes(const std::string& dataset) const;
  // Verifies one dataset's checksum whatever its type.
  void verify(const std::string& dataset) const;

 private:
  std::string where(const std::string& dataset) const { return "checkpoint " + path_ + ": dataset " + dataset; }
  void check_sum(hid_t dset, const std::string& dataset, const void* data, size_t bytes) const;
  std::string path_;
  h5::Handle file_;
  Meta meta_;
};

}  // namespace aiayn::checkpoints::format
