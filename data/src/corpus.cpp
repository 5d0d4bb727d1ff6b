// The corpus reader. Everything is validated in the constructor, in the order a reader would look
// (attributes, then each dataset's presence, type and shape, then the offsets' values, then every token block
// by block: ids, EOS, CRC-32); the first problem throws "FILE: OBJECT[index]: what is wrong". Token ids are
// checked again on each read, which touches only the token ranges of the requested pairs (one hyperslab read
// per run of neighbouring sentences).
#include "data/corpus.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <limits>
#include <mutex>
#include <new>

#include <fmt/format.h>

#include "data/corpus_writer.hpp"
#include "data/sha256.hpp"
#include "h5_handle.hpp"

namespace aiayn::data {
namespace {

using h5::Handle;

// Runs of requested sentences closer than this many tokens are read with one hyperslab (the gap is discarded).
constexpr int64_t kMaxGapTokens = 512;

enum class IntKind { kSigned, kUnsignedOrSigned };

struct Dataset {
  Handle id;
  int64_t size = 0;
};

}  // namespace

struct CorpusReader::Impl {
  CorpusInfo info;
  Handle file;
  Dataset tokens[2], offsets[2], text[2], text_offsets[2], checksums[2];
  int64_t checksum_block = 0;  // tokens per CRC-32 block; 0 when the file has no checksums
  std::vector<int64_t> offset_values[2];
  std::vector<int64_t> text_offset_values[2];
  std::vector<int32_t> lengths[2];
  mutable std::mutex mutex;  // HDF5 (serial build) is not thread-safe; one read at a time per reader
  mutable std::string fingerprint;

  [[noreturn]] void fail(const std::string& object, const std::string& what) const {
    AIAYN_FAIL(fmt::format("{}: {}: {}", info.path, object, what));
  }
  [[noreturn]] void fail_at(const std::string& object, int64_t index, const std::string& what) const {
    AIAYN_FAIL(fmt::format("{}: {}[{}]: {}", info.path, object, index, what));
  }

  bool link_exists(const std::string& path) const {
    // Each component must exist before the next can be asked about.
    size_t pos = 0;
    while ((pos = path.find('/', pos + 1)) != std::string::npos) {
      if (H5Lexists(file.get(), path.substr(0, pos).c_str(), H5P_DEFAULT) <= 0) return false;
    }
    return H5Lexists(file.get(), path.c_str(), H5P_DEFAULT) > 0;
  }

  // --- attributes -------------------------------------------------------------------------------------------
  Handle open_attr(const char* name) const {
    const htri_t exists = H5Aexists(file.get(), name);
    if (exists < 0) fail(fmt::format("attribute {}", name), "cannot be queried");
    if (exists == 0) fail(fmt::format("attribute {}", name), "missing (not an aiayn corpus file?)");
    Handle attr(H5Aopen(file.get(), name, H5P_DEFAULT));
    if (!attr.valid()) fail(fmt::format("attribute {}", name), "cannot be opened");
    Handle space(H5Aget_space(attr.get()));
    if (!space.valid() || H5Sget_simple_extent_npoints(space.get()) != 1)
      fail(fmt::format("attribute {}", name), "must be a single value");
    return attr;
  }

  int64_t int_attr(const char* name) const {
    Handle attr = open_attr(name);
    Handle type(H5Aget_type(attr.get()));
    if (!type.valid() || H5Tget_class(type.get()) != H5T_INTEGER)
      fail(fmt::format("attribute {}", name), "must be an integer");
    int64_t value = 0;
    if (H5Aread(attr.get(), H5T_NATIVE_INT64, &value) < 0)
      fail(fmt::format("attribute {}", name), "cannot be read as int64");
    return value;
  }

  int32_t int32_attr(const char* name) const {
    const int64_t v = int_attr(name);
    if (v < 0 || v > std::numeric_limits<int32_t>::max())
      fail(fmt::format("attribute {}", name), fmt::format("value {} out of range", v));
    return int32_t(v);
  }

  std::string string_attr(const char* name) const {
    Handle attr = open_attr(name);
    Handle type(H5Aget_type(attr.get()));
    if (!type.valid() || H5Tget_class(type.get()) != H5T_STRING)
      fail(fmt::format("attribute {}", name), "must be a string");
    const htri_t is_variable = H5Tis_variable_str(type.get());
    if (is_variable < 0) fail(fmt::format("attribute {}", name), "has an unreadable string type");
    if (is_variable > 0) {
      Handle mem(H5Tcopy(H5T_C_S1));
      if (!mem.valid() || H5Tset_size(mem.get(), H5T_VARIABLE) < 0)
        fail(fmt::format("attribute {}", name), "cannot make a string type");
      char* value = nullptr;
      if (H5Aread(attr.get(), mem.get(), &value) < 0 || value == nullptr)
        fail(fmt::format("attribute {}", name), "cannot be read");
      std::string out(value);
      H5free_memory(value);
      return out;
    }
    const size_t size = H5Tget_size(type.get());
    if (size == 0 || size > (1u << 20)) fail(fmt::format("attribute {}", name), "has an implausible string size");
    Handle mem(H5Tcopy(type.get()));
    std::string buffer(size, '\0');
    if (!mem.valid() || H5Aread(attr.get(), mem.get(), buffer.data()) < 0)
      fail(fmt::format("attribute {}", name), "cannot be read");
    const size_t end = buffer.find('\0');
    if (end != std::string::npos) buffer.resize(end);
    while (!buffer.empty() && buffer.back() == ' ') buffer.pop_back();  // H5T_STR_SPACEPAD
    return buffer;
  }

  // --- datasets ---------------------------------------------------------------------------------------------
  Dataset open_dataset(const std::string& name, size_t element_size, IntKind kind) const {
    if (!link_exists(name)) fail(name, "missing dataset");
    Dataset d;
    d.id = Handle(H5Dopen2(file.get(), name.c_str(), H5P_DEFAULT));
    if (!d.id.valid()) fail(name, "cannot be opened as a dataset");
    Handle type(H5Dget_type(d.id.get()));
    if (!type.valid()) fail(name, "has an unreadable type");
    const bool is_int = H5Tget_class(type.get()) == H5T_INTEGER;
    const size_t size = H5Tget_size(type.get());
    const H5T_sign_t sign = H5Tget_sign(type.get());
    const char* expected = element_size == 4 ? "int32" : element_size == 8 ? "int64" : "uint8";
    if (!is_int || size != element_size || (kind == IntKind::kSigned && sign != H5T_SGN_2))
      fail(name, fmt::format("wrong dtype (expected {})", expected));
    Handle space(H5Dget_space(d.id.get()));
    if (!space.valid()) fail(name, "has an unreadable dataspace");
    if (H5Sget_simple_extent_type(space.get()) != H5S_SIMPLE || H5Sget_simple_extent_ndims(space.get()) != 1)
      fail(name, "must be one-dimensional");
    hsize_t dims[1] = {0};
    if (H5Sget_simple_extent_dims(space.get(), dims, nullptr) != 1) fail(name, "has unreadable dimensions");
    if (dims[0] > hsize_t(std::numeric_limits<int64_t>::max() / 8)) fail(name, "implausibly large");
    d.size = int64_t(dims[0]);
    return d;
  }

  // Reads elements [first, first + count) of a one-dimensional dataset.
  void read_range(const Dataset& d, const std::string& name, hid_t mem_type, int64_t first, int64_t count,
                  void* out) const {
    if (count == 0) return;
    if (first < 0 || count < 0 || first + count > d.size)
      fail_at(name, first + count - 1, fmt::format("past the end ({} elements)", d.size));
    Handle space(H5Dget_space(d.id.get()));
    const hsize_t start[1] = {hsize_t(first)}, n[1] = {hsize_t(count)};
    if (!space.valid() || H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start, nullptr, n, nullptr) < 0)
      fail(name, "cannot select a hyperslab");
    Handle mem(H5Screate_simple(1, n, nullptr));
    if (!mem.valid() || H5Dread(d.id.get(), mem_type, mem.get(), space.get(), H5P_DEFAULT, out) < 0)
      fail_at(name, first, fmt::format("cannot read {} elements (damaged file?)", count));
  }

  std::vector<int64_t> read_all_int64(const Dataset& d, const std::string& name) const {
    std::vector<int64_t> v;
    try {
      v.resize(size_t(d.size));
    } catch (const std::bad_alloc&) {
      fail(name, fmt::format("cannot allocate {} elements", d.size));
    } catch (const std::length_error&) {
      fail(name, fmt::format("cannot allocate {} elements", d.size));
    }
    read_range(d, name, H5T_NATIVE_INT64, 0, d.size, v.data());
    return v;
  }

  // offsets must run from 0, strictly (or, for text, weakly) increasing, to the data's size.
  void check_offsets(const std::vector<int64_t>& off, const std::string& name, int64_t data_size,
                     bool strictly) const {
    if (off.empty()) fail(name, "empty (needs pairs + 1 entries)");
    if (off[0] != 0) fail_at(name, 0, fmt::format("offsets must start at 0 (found {})", off[0]));
    for (size_t i = 1; i < off.size(); ++i) {
      if (strictly ? off[i] <= off[i - 1] : off[i] < off[i - 1])
        fail_at(name, int64_t(i),
                fmt::format("offsets must be {} increasing ({} after {})", strictly ? "strictly" : "weakly", off[i],
                            off[i - 1]));
      if (off[i] > data_size)
        fail_at(name, int64_t(i), fmt::format("offset {} past the end of the data ({} elements)", off[i], data_size));
      if (strictly && off[i] - off[i - 1] > std::numeric_limits<int32_t>::max())
        fail_at(name, int64_t(i), "sentence longer than 2^31 tokens");
    }
    if (off.back() != data_size)
      fail_at(name, int64_t(off.size() - 1),
              fmt::format("last offset {} must equal the data size {}", off.back(), data_size));
  }

  void open_and_validate(const std::string& path) {
    info.path = path;
    h5::silence_errors();
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) AIAYN_FAIL(fmt::format("{}: no such file", path));
    if (!std::filesystem::is_regular_file(path, ec)) AIAYN_FAIL(fmt::format("{}: not a regular file", path));
    const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
    if (is_hdf5 <= 0) AIAYN_FAIL(fmt::format("{}: not an HDF5 file (or unreadable)", path));
    file = Handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
    if (!file.valid()) AIAYN_FAIL(fmt::format("{}: cannot open the HDF5 file (truncated or damaged?)", path));

    const std::string format = string_attr("format");
    if (format != kCorpusFormat)
      fail("attribute format", fmt::format("is \"{}\", expected \"{}\"", format, kCorpusFormat));
    info.version = int_attr("version");
    if (info.version < 1 || info.version > kCorpusVersion)
      fail("attribute version",
           fmt::format("version {} is not supported (this build reads version {}{})", info.version, kCorpusVersion,
                       info.version > kCorpusVersion ? "; the file was written by a newer aiayn" : ""));
    info.vocab_size = int32_attr("vocab_size");
    info.pad_id = int32_attr("pad_id");
    info.bos_id = int32_attr("bos_id");
    info.eos_id = int32_attr("eos_id");
    info.unk_id = int32_attr("unk_id");
    info.tokenizer_sha256 = string_attr("tokenizer_sha256");
    info.pairs = int_attr("pairs");
    if (info.vocab_size <= 0) fail("attribute vocab_size", fmt::format("must be positive (found {})", info.vocab_size));
    for (auto [name, id] : {std::pair<const char*, int32_t>{"pad_id", info.pad_id}, {"bos_id", info.bos_id},
                            {"eos_id", info.eos_id}, {"unk_id", info.unk_id}})
      if (id >= info.vocab_size)
        fail(fmt::format("attribute {}", name), fmt::format("id {} not below vocab_size {}", id, info.vocab_size));
    if (info.pairs <= 0) fail("attribute pairs", fmt::format("the corpus is empty (pairs = {})", info.pairs));

    const char* sides[2] = {"src", "tgt"};
    for (int s = 0; s < 2; ++s) {
      const std::string tok_name = fmt::format("/{}/tokens", sides[s]);
      const std::string off_name = fmt::format("/{}/offsets", sides[s]);
      tokens[s] = open_dataset(tok_name, 4, IntKind::kSigned);
      offsets[s] = open_dataset(off_name, 8, IntKind::kSigned);
      if (offsets[s].size != info.pairs + 1)
        fail(off_name, fmt::format("has {} entries, but the attribute pairs = {} needs {}", offsets[s].size,
                                   info.pairs, info.pairs + 1));
    }
    for (int s = 0; s < 2; ++s) {
      const std::string off_name = fmt::format("/{}/offsets", sides[s]);
      offset_values[s] = read_all_int64(offsets[s], off_name);
      check_offsets(offset_values[s], off_name, tokens[s].size, true);
      lengths[s].resize(size_t(info.pairs));
      for (int64_t i = 0; i < info.pairs; ++i)
        lengths[s][size_t(i)] = int32_t(offset_values[s][size_t(i + 1)] - offset_values[s][size_t(i)]);
    }

    info.src_tokens = tokens[0].size;
    info.tgt_tokens = tokens[1].size;
    if (H5Aexists(file.get(), "checksum_block") > 0) {
      checksum_block = int_attr("checksum_block");
      if (checksum_block <= 0 || checksum_block > (int64_t(1) << 30))
        fail("attribute checksum_block", fmt::format("implausible block size {}", checksum_block));
      for (int s = 0; s < 2; ++s) {
        const std::string name = fmt::format("/{}/tokens_crc32", sides[s]);
        checksums[s] = open_dataset(name, 4, IntKind::kUnsignedOrSigned);
        const int64_t blocks = (tokens[s].size + checksum_block - 1) / checksum_block;
        if (checksums[s].size != blocks)
          fail(name, fmt::format("has {} entries, but {} tokens in blocks of {} need {}", checksums[s].size,
                                 tokens[s].size, checksum_block, blocks));
      }
      info.has_checksum = true;
    }

    const bool text_src = link_exists("/src/text"), text_tgt = link_exists("/tgt/text");
    if (text_src != text_tgt) fail(text_src ? "/tgt/text" : "/src/text", "missing dataset (the other side has text)");
    info.has_text = text_src;
    if (info.has_text) {
      for (int s = 0; s < 2; ++s) {
        const std::string text_name = fmt::format("/{}/text", sides[s]);
        const std::string off_name = fmt::format("/{}/text_offsets", sides[s]);
        text[s] = open_dataset(text_name, 1, IntKind::kUnsignedOrSigned);
        text_offsets[s] = open_dataset(off_name, 8, IntKind::kSigned);
        if (text_offsets[s].size != info.pairs + 1)
          fail(off_name, fmt::format("has {} entries, but pairs = {} needs {}", text_offsets[s].size, info.pairs,
                                     info.pairs + 1));
        text_offset_values[s] = read_all_int64(text_offsets[s], off_name);
        check_offsets(text_offset_values[s], off_name, text[s].size, false);
      }
    }
  }

  // Every token of one side, in blocks of checksum_block (or 2^20) tokens: ids in range, EOS at each sentence's
  // end, and the block's CRC-32. Memory: one block.
  void check_tokens(int s) const {
    const std::string name = fmt::format("/{}/tokens", s == 0 ? "src" : "tgt");
    const int64_t n = tokens[s].size;
    const int64_t block = checksum_block > 0 ? checksum_block : int64_t(1) << 20;
    std::vector<uint32_t> stored;
    if (checksum_block > 0) {
      stored.resize(size_t(checksums[s].size));
      read_range(checksums[s], fmt::format("/{}/tokens_crc32", s == 0 ? "src" : "tgt"), H5T_NATIVE_UINT32, 0,
                 checksums[s].size, stored.data());
    }
    const std::vector<int64_t>& off = offset_values[s];
    const uint32_t vocab = uint32_t(info.vocab_size);
    std::vector<int32_t> buffer(size_t(std::min(block, n)));
    size_t sentence = 0;  // the next sentence whose last token is still to be checked
    for (int64_t first = 0, b = 0; first < n; first += block, ++b) {
      const int64_t count = std::min(block, n - first);
      read_range(tokens[s], name, H5T_NATIVE_INT32, first, count, buffer.data());
      bool bad = false;  // one branch-free pass; the index is looked for only when something is wrong
      for (int64_t t = 0; t < count; ++t) bad |= uint32_t(buffer[size_t(t)]) >= vocab;
      if (bad)
        for (int64_t t = 0; t < count; ++t)
          if (uint32_t(buffer[size_t(t)]) >= vocab) {
            const int64_t at = first + t;
            const int64_t pair = std::upper_bound(off.begin(), off.end(), at) - off.begin() - 1;
            fail_at(name, at, fmt::format("token id {} outside [0, vocab_size = {}) (pair {})", buffer[size_t(t)],
                                          info.vocab_size, pair));
          }
      for (; sentence + 1 < off.size() && off[sentence + 1] <= first + count; ++sentence) {
        const int64_t last = off[sentence + 1] - 1;
        if (buffer[size_t(last - first)] != info.eos_id)
          fail_at(name, last, fmt::format("pair {} does not end in EOS ({})", sentence, info.eos_id));
      }
      if (checksum_block > 0) {
        const uint32_t crc = crc32_tokens(0, buffer.data(), count);
        if (crc != stored[size_t(b)])
          fail_at(name, first,
                  fmt::format("tokens [{}, {}) do not match their checksum (CRC-32 {:08x}, stored {:08x} in "
                              "tokens_crc32[{}]): the file is damaged; prepare it again",
                              first, first + count, crc, stored[size_t(b)], b));
      }
    }
  }
};

CorpusReader::CorpusReader(const std::string& path, bool check_tokens) : impl_(std::make_unique<Impl>()) {
  const auto start = std::chrono::steady_clock::now();
  impl_->open_and_validate(path);
  if (check_tokens) {
    impl_->check_tokens(0);
    impl_->check_tokens(1);
    impl_->info.tokens_checked = true;
  }
  impl_->info.check_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
CorpusReader::~CorpusReader() = default;

const CorpusInfo& CorpusReader::info() const { return impl_->info; }
const std::vector<int32_t>& CorpusReader::src_lengths() const { return impl_->lengths[0]; }
const std::vector<int32_t>& CorpusReader::tgt_lengths() const { return impl_->lengths[1]; }

std::vector<Pair> CorpusReader::read_pairs(const std::vector<int64_t>& indices) const {
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);
  const int64_t pairs = m.info.pairs;
  for (size_t k = 0; k < indices.size(); ++k)
    if (indices[k] < 0 || indices[k] >= pairs)
      AIAYN_FAIL(fmt::format("{}: pair index {} out of range [0, {})", m.info.path, indices[k], pairs));
  std::vector<int64_t> order(indices);
  std::sort(order.begin(), order.end());
  order.erase(std::unique(order.begin(), order.end()), order.end());

  std::vector<Pair> out(indices.size());
  const char* sides[2] = {"src", "tgt"};
  for (int s = 0; s < 2; ++s) {
    const std::string name = fmt::format("/{}/tokens", sides[s]);
    const std::vector<int64_t>& off = m.offset_values[s];
    // Sentence index -> its tokens, filled run by run.
    std::vector<std::vector<int32_t>> sentences(order.size());
    std::vector<int32_t> buffer;
    size_t a = 0;
    while (a < order.size()) {
      size_t b = a;  // extend the run while the next sentence starts close to where this one ends
      while (b + 1 < order.size() && off[size_t(order[b + 1])] - off[size_t(order[b] + 1)] <= kMaxGapTokens) ++b;
      const int64_t first = off[size_t(order[a])], last = off[size_t(order[b] + 1)];
      buffer.resize(size_t(last - first));
      m.read_range(m.tokens[s], name, H5T_NATIVE_INT32, first, last - first, buffer.data());
      for (size_t k = a; k <= b; ++k) {
        const int64_t begin = off[size_t(order[k])], end = off[size_t(order[k] + 1)];
        for (int64_t t = begin; t < end; ++t) {
          const int32_t id = buffer[size_t(t - first)];
          if (id < 0 || id >= m.info.vocab_size)
            m.fail_at(name, t, fmt::format("token id {} outside [0, vocab_size = {}) (pair {})", id,
                                           m.info.vocab_size, order[k]));
        }
        if (buffer[size_t(end - 1 - first)] != m.info.eos_id)
          m.fail_at(name, end - 1, fmt::format("pair {} does not end in EOS ({})", order[k], m.info.eos_id));
        sentences[k].assign(buffer.begin() + (begin - first), buffer.begin() + (end - first));
      }
      a = b + 1;
    }
    for (size_t k = 0; k < indices.size(); ++k) {
      const size_t at = size_t(std::lower_bound(order.begin(), order.end(), indices[k]) - order.begin());
      (s == 0 ? out[k].src : out[k].tgt) = sentences[at];
    }
  }
  return out;
}

std::vector<std::string> CorpusReader::read_text(const std::string& side, int64_t first, int64_t count) const {
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);
  AIAYN_CHECK(side == "src" || side == "tgt", fmt::format("read_text: side must be src or tgt, not \"{}\"", side));
  AIAYN_CHECK(m.info.has_text, fmt::format("{}: has no raw text (only held-out splits keep it)", m.info.path));
  AIAYN_CHECK(first >= 0 && count >= 0 && first + count <= m.info.pairs,
              fmt::format("{}: text lines [{}, {}) out of range [0, {})", m.info.path, first, first + count,
                          m.info.pairs));
  const int s = side == "src" ? 0 : 1;
  const std::vector<int64_t>& off = m.text_offset_values[s];
  std::vector<std::string> lines;
  if (count == 0) return lines;
  const int64_t begin = off[size_t(first)], end = off[size_t(first + count)];
  std::string bytes(size_t(end - begin), '\0');
  m.read_range(m.text[s], fmt::format("/{}/text", side), H5T_NATIVE_UINT8, begin, end - begin, bytes.data());
  lines.reserve(size_t(count));
  for (int64_t i = first; i < first + count; ++i)
    lines.emplace_back(bytes.substr(size_t(off[size_t(i)] - begin), size_t(off[size_t(i + 1)] - off[size_t(i)])));
  return lines;
}

std::string CorpusReader::fingerprint() const {
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);
  if (!m.fingerprint.empty()) return m.fingerprint;
  const CorpusInfo& i = m.info;
  Sha256 h;
  h.update(fmt::format("format={};version={};vocab_size={};pad_id={};bos_id={};eos_id={};unk_id={};pairs={};"
                       "tokenizer_sha256={};",
                       kCorpusFormat, i.version, i.vocab_size, i.pad_id, i.bos_id, i.eos_id, i.unk_id, i.pairs,
                       i.tokenizer_sha256));
  for (int s = 0; s < 2; ++s) {
    h.update(s == 0 ? "src/offsets:" : "tgt/offsets:");
    for (int64_t v : m.offset_values[s]) {
      uint8_t le[8];
      for (int b = 0; b < 8; ++b) le[b] = uint8_t(uint64_t(v) >> (8 * b));
      h.update(le, 8);
    }
  }
  m.fingerprint = h.hex_digest();
  return m.fingerprint;
}

}  // namespace aiayn::data
