// The checkpoint file format (see format.hpp and checkpoint.hpp).
#include "format.hpp"

#include <filesystem>

#include "aiayn/error.hpp"

namespace aiayn::checkpoints::format {

uint64_t fnv1a64(const void* data, size_t bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

std::string hex64(uint64_t v) {
  static const char* digits = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[static_cast<size_t>(i)] = digits[v & 15];
  return s;
}

int64_t element_count(const std::vector<int64_t>& shape, const std::string& context) {
  int64_t n = 1;
  for (int64_t d : shape) {
    AIAYN_CHECK(d >= 0, context + ": negative dimension " + std::to_string(d));
    n *= d;
  }
  return n;
}

namespace {
std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}
void check_dataset_name(const std::string& dataset, const std::string& context) {
  AIAYN_CHECK(dataset.size() > 1 && dataset[0] == '/' && dataset.back() != '/' &&
                  dataset.find("//") == std::string::npos,
              context + ": invalid tensor name (empty, or with an empty path component)");
}
}  // namespace

// ---- Writer ----

Writer::Writer(const std::string& path) : path_(path) {
  h5::quiet();
  const std::string what = "cannot create " + path;
  h5::Handle fapl = h5::plist_handle(H5Pcreate(H5P_FILE_ACCESS), what);
  // SEMI: closing the file fails if anything is still open, so a successful close means everything is written.
  h5::check_status(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_SEMI), what);
  file_ = h5::file_handle(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), what);
  lcpl_ = h5::plist_handle(H5Pcreate(H5P_LINK_CREATE), what);
  h5::check_status(H5Pset_create_intermediate_group(lcpl_.get(), 1), what);
}

void Writer::write_meta(const Meta& m) {
  const hid_t root = file_.get();
  const std::string c = "checkpoint " + path_;
  h5::write_string_attr(root, "format", kFormat, c);
  h5::write_int_attr(root, "version", kVersion, c);
  h5::write_int_attr(root, "step", m.step, c);
  h5::write_int_attr(root, "epoch", m.epoch, c);
  h5::write_int_attr(root, "batch_in_epoch", m.batch_in_epoch, c);
  h5::write_uint_attr(root, "seed", m.seed, c);
  h5::write_string_attr(root, "config", m.config, c);
  h5::write_string_attr(root, "config_hash", m.config_hash, c);
  h5::write_string_attr(root, "corpus_fingerprint", m.corpus_fingerprint, c);
  h5::write_int_attr(root, "world_size", m.world_size, c);
}

namespace {
void write_dataset(hid_t file, hid_t lcpl, const std::string& dataset, const std::vector<hsize_t>& dims,
                   hid_t file_type, hid_t mem_type, const void* data, size_t bytes, const std::string& what) {
  h5::Handle space = h5::space_handle(
      dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
      what);
  h5::Handle dset = h5::dataset_handle(
      H5Dcreate2(file, dataset.c_str(), file_type, space.get(), lcpl, H5P_DEFAULT, H5P_DEFAULT), what);
  if (bytes > 0) h5::check_status(H5Dwrite(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), what);
  h5::write_string_attr(dset.get(), "checksum", hex64(fnv1a64(data, bytes)), what);
  dset.close(what);
}
}  // namespace

void Writer::write_floats(const std::string& dataset, const std::vector<int64_t>& shape, const float* data) {
  const std::string what = "checkpoint " + path_ + ": dataset " + dataset;
  check_dataset_name(dataset, what);
  const int64_t n = element_count(shape, what);
  AIAYN_CHECK(n == 0 || data != nullptr, what + ": no data");
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  write_dataset(file_.get(), lcpl_.get(), dataset, dims, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, data,
                static_cast<size_t>(n) * sizeof(float), what);
}

void Writer::write_bytes(const std::string& dataset, const std::string& bytes) {
  const std::string what = "checkpoint " + path_ + ": dataset " + dataset;
  check_dataset_name(dataset, what);
  write_dataset(file_.get(), lcpl_.get(), dataset, {static_cast<hsize_t>(bytes.size())}, H5T_STD_U8LE,
                H5T_NATIVE_UINT8, bytes.data(), bytes.size(), what);
}

void Writer::close() {
  const std::string what = "cannot finish writing " + path_;
  h5::check_status(H5Fflush(file_.get(), H5F_SCOPE_GLOBAL), what);
  lcpl_.close(what);
  file_.close(what);
}

// ---- Reader ----

Reader::Reader(const std::string& path) : path_(path) {
  h5::quiet();
  std::error_code ec;
  AIAYN_CHECK(std::filesystem::is_regular_file(path, ec), "checkpoint " + path + ": no such file");
  AIAYN_CHECK(H5Fis_hdf5(path.c_str()) > 0,
              "checkpoint " + path + ": not an HDF5 file (damaged, truncated or not a checkpoint)");
  H5Eclear2(H5E_DEFAULT);
  file_ = h5::file_handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT),
                          "checkpoint " + path + ": cannot open (truncated or damaged file?)");
  const hid_t root = file_.get();
  const std::string c = "checkpoint " + path;
  const std::string fmt = h5::read_string_attr(root, "format", c);
  AIAYN_CHECK(fmt == kFormat, c + ": format is \"" + fmt + "\", not \"" + kFormat + "\"");
  meta_.version = h5::read_int_attr(root, "version", c);
  AIAYN_CHECK(meta_.version >= 1 && meta_.version <= kVersion,
              c + ": format version " + std::to_string(meta_.version) + " is not supported (this aiayn reads 1.." +
                  std::to_string(kVersion) + "; a newer aiayn wrote it?)");
  meta_.step = h5::read_int_attr(root, "step", c);
  meta_.epoch = h5::read_int_attr(root, "epoch", c);
  meta_.batch_in_epoch = h5::read_int_attr(root, "batch_in_epoch", c);
  meta_.seed = h5::read_uint_attr(root, "seed", c);
  meta_.config = h5::read_string_attr(root, "config", c);
  meta_.config_hash = h5::read_string_attr(root, "config_hash", c);
  meta_.corpus_fingerprint = h5::read_string_attr(root, "corpus_fingerprint", c);
  meta_.world_size = h5::read_int_attr(root, "world_size", c);
}

std::vector<std::string> Reader::datasets(const std::string& group) const {
  if (!has(group)) return {};
  return h5::list_datasets(file_.get(), group);
}

std::vector<int64_t> Reader::shape(const std::string& dataset) const {
  const std::string what = where(dataset);
  AIAYN_CHECK(has(dataset), what + ": missing");
  h5::Handle dset = h5::dataset_handle(H5Dopen2(file_.get(), dataset.c_str(), H5P_DEFAULT), what + ": cannot open");
  h5::Handle space = h5::space_handle(H5Dget_space(dset.get()), what);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  AIAYN_CHECK(rank >= 0, what + ": cannot read its shape: " + h5::error_stack());
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank > 0) h5::check_status(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), what);
  return std::vector<int64_t>(dims.begin(), dims.end());
}

void Reader::check_sum(hid_t dset, const std::string& dataset, const void* data, size_t bytes) const {
  const std::string stored = h5::read_string_attr(dset, "checksum", where(dataset));
  const std::string computed = hex64(fnv1a64(data, bytes));
  AIAYN_CHECK(stored == computed, where(dataset) + ": checksum mismatch (stored " + stored + ", computed " +
                                      computed + "): the file is damaged");
}

void Reader::read_floats(const std::string& dataset, const std::vector<int64_t>& want, float* out) const {
  const std::string what = where(dataset);
  const std::vector<int64_t> have = shape(dataset);
  AIAYN_CHECK(have == want, what + ": shape " + shape_text(have) + " in the file, expected " + shape_text(want));
  h5::Handle dset = h5::dataset_handle(H5Dopen2(file_.get(), dataset.c_str(), H5P_DEFAULT), what + ": cannot open");
  h5::Handle type = h5::type_handle(H5Dget_type(dset.get()), what);
  AIAYN_CHECK(H5Tget_class(type.get()) == H5T_FLOAT && H5Tget_size(type.get()) == 4, what + ": not float32");
  const size_t n = static_cast<size_t>(element_count(have, what));
  AIAYN_CHECK(n == 0 || out != nullptr, what + ": no destination buffer");
  if (n > 0) h5::check_status(H5Dread(dset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out), what + ": cannot read");
  check_sum(dset.get(), dataset, out, n * sizeof(float));
}

std::string Reader::read_bytes(const std::string& dataset) const {
  const std::string what = where(dataset);
  const std::vector<int64_t> have = shape(dataset);
  AIAYN_CHECK(have.size() == 1, what + ": not a 1-D byte array");
  h5::Handle dset = h5::dataset_handle(H5Dopen2(file_.get(), dataset.c_str(), H5P_DEFAULT), what + ": cannot open");
  h5::Handle type = h5::type_handle(H5Dget_type(dset.get()), what);
  AIAYN_CHECK(H5Tget_class(type.get()) == H5T_INTEGER && H5Tget_size(type.get()) == 1, what + ": not uint8");
  std::string bytes(static_cast<size_t>(have[0]), '\0');
  if (!bytes.empty())
    h5::check_status(H5Dread(dset.get(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data()),
                     what + ": cannot read");
  check_sum(dset.get(), dataset, bytes.data(), bytes.size());
  return bytes;
}

void Reader::verify(const std::string& dataset) const {
  const std::string what = where(dataset);
  h5::Handle dset = h5::dataset_handle(H5Dopen2(file_.get(), dataset.c_str(), H5P_DEFAULT), what + ": cannot open");
  h5::Handle type = h5::type_handle(H5Dget_type(dset.get()), what);
  const H5T_class_t cls = H5Tget_class(type.get());
  const size_t size = H5Tget_size(type.get());
  dset.reset();
  if (cls == H5T_FLOAT && size == 4) {
    const std::vector<int64_t> s = shape(dataset);
    std::vector<float> data(static_cast<size_t>(element_count(s, what)));
    read_floats(dataset, s, data.data());
  } else if (cls == H5T_INTEGER && size == 1) {
    read_bytes(dataset);
  } else {
    AIAYN_FAIL(what + ": unexpected element type (neither float32 nor uint8)");
  }
}

}  // namespace aiayn::checkpoints::format
