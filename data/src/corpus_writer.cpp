// The corpus writer: contiguous (uncompressed) datasets, so that a reader's hyperslab of a few sentences
// touches only those bytes; attributes on the root group. Written to PATH.tmp and renamed when complete.
#include "data/corpus_writer.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>

#include <zlib.h>

#include <fmt/format.h>

#include "h5_handle.hpp"

namespace aiayn::data {
namespace {

using h5::Handle;

void write_dataset(hid_t group, const std::string& file, const std::string& name, hid_t file_type, hid_t mem_type,
                   const void* data, size_t count) {
  const hsize_t dims[1] = {count};
  Handle space(H5Screate_simple(1, dims, nullptr));
  AIAYN_CHECK(space.valid(), fmt::format("{}: cannot create the dataspace of {}", file, name));
  Handle dset(H5Dcreate2(group, name.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  AIAYN_CHECK(dset.valid(), fmt::format("{}: cannot create dataset {}", file, name));
  if (count > 0)
    AIAYN_CHECK(H5Dwrite(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0,
                fmt::format("{}: cannot write dataset {}", file, name));
}

void write_int_attr(hid_t obj, const std::string& file, const char* name, hid_t file_type, int64_t value) {
  Handle space(H5Screate(H5S_SCALAR));
  Handle attr(H5Acreate2(obj, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT));
  AIAYN_CHECK(attr.valid(), fmt::format("{}: cannot create attribute {}", file, name));
  AIAYN_CHECK(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value) >= 0,
              fmt::format("{}: cannot write attribute {}", file, name));
}

void write_string_attr(hid_t obj, const std::string& file, const char* name, const std::string& value) {
  Handle type(H5Tcopy(H5T_C_S1));
  AIAYN_CHECK(type.valid() && H5Tset_size(type.get(), std::max<size_t>(1, value.size())) >= 0 &&
                  H5Tset_strpad(type.get(), H5T_STR_NULLPAD) >= 0,
              fmt::format("{}: cannot make the string type of attribute {}", file, name));
  Handle space(H5Screate(H5S_SCALAR));
  Handle attr(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT));
  AIAYN_CHECK(attr.valid(), fmt::format("{}: cannot create attribute {}", file, name));
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  AIAYN_CHECK(H5Awrite(attr.get(), type.get(), padded.data()) >= 0,
              fmt::format("{}: cannot write attribute {}", file, name));
}

// A dataset of `count` elements created empty, to be filled by write_block.
Handle create_dataset(hid_t group, const std::string& file, const std::string& name, hid_t file_type, size_t count) {
  const hsize_t dims[1] = {count};
  Handle space(H5Screate_simple(1, dims, nullptr));
  AIAYN_CHECK(space.valid(), fmt::format("{}: cannot create the dataspace of {}", file, name));
  Handle dset(H5Dcreate2(group, name.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  AIAYN_CHECK(dset.valid(), fmt::format("{}: cannot create dataset {}", file, name));
  return dset;
}

void write_block(hid_t dset, const std::string& file, const std::string& name, hid_t mem_type, size_t first,
                 size_t count, const void* data) {
  if (count == 0) return;
  Handle space(H5Dget_space(dset));
  const hsize_t start[1] = {first}, n[1] = {count};
  Handle mem(H5Screate_simple(1, n, nullptr));
  AIAYN_CHECK(space.valid() && mem.valid() &&
                  H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start, nullptr, n, nullptr) >= 0 &&
                  H5Dwrite(dset, mem_type, mem.get(), space.get(), H5P_DEFAULT, data) >= 0,
              fmt::format("{}: cannot write {} elements of {} at {}", file, count, name, first));
}

void write_side(hid_t file_id, const std::string& file, const char* side, const std::vector<int32_t>& tokens,
                const std::vector<int64_t>& offsets, bool has_text, const std::string& text,
                const std::vector<int64_t>& text_offsets, bool checksums) {
  Handle group(H5Gcreate2(file_id, side, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  AIAYN_CHECK(group.valid(), fmt::format("{}: cannot create group /{}", file, side));
  write_dataset(group.get(), file, "tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, tokens.data(), tokens.size());
  if (checksums) {
    const std::vector<uint32_t> crc = token_block_crc32(tokens.data(), int64_t(tokens.size()));
    write_dataset(group.get(), file, "tokens_crc32", H5T_STD_U32LE, H5T_NATIVE_UINT32, crc.data(), crc.size());
  }
  write_dataset(group.get(), file, "offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, offsets.data(), offsets.size());
  if (has_text) {
    write_dataset(group.get(), file, "text", H5T_STD_U8LE, H5T_NATIVE_UINT8, text.data(), text.size());
    write_dataset(group.get(), file, "text_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, text_offsets.data(),
                  text_offsets.size());
  }
}

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}


// Writes `path` through path.tmp: `fill` writes everything into a new file in the 1.8+ format (which checksums
// its metadata: superblock, object headers, heaps, so a damaged header is refused by HDF5 itself; damaged
// offsets and ids are the reader's to catch); then flush, close, fsync, rename and fsync of the directory, each
// checked. A failure leaves `path` as it was.
void write_atomically(const std::string& path, const std::function<void(hid_t file, const std::string& tmp)>& fill) {
  h5::silence_errors();
  const std::string tmp = path + ".tmp";
  std::remove(tmp.c_str());
  {
    Handle fapl(H5Pcreate(H5P_FILE_ACCESS));
    AIAYN_CHECK(fapl.valid() && H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_LATEST) >= 0,
                fmt::format("{}: cannot set the file format version", tmp));
    Handle file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()));
    AIAYN_CHECK(file.valid(), fmt::format("{}: cannot create the file", tmp));
    fill(file.get(), tmp);
    AIAYN_CHECK(H5Fflush(file.get(), H5F_SCOPE_GLOBAL) >= 0, fmt::format("{}: cannot flush", tmp));
    const hid_t id = file.release();  // closed here so that the close itself is checked
    AIAYN_CHECK(H5Fclose(id) >= 0, fmt::format("{}: cannot close", tmp));
  }
  fsync_path(tmp);
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  AIAYN_CHECK(!ec, fmt::format("{}: cannot rename to {}: {}", tmp, path, ec.message()));
  const auto dir = std::filesystem::path(path).parent_path();
  fsync_path(dir.empty() ? std::string(".") : dir.string());
}

// The root attributes every corpus file carries (checksum_block only where the token checksums were written).
void write_root_attributes(hid_t root, const std::string& tmp, const std::string& format, int64_t version,
                           const CorpusAttributes& a, int64_t pairs, bool checksums) {
  write_string_attr(root, tmp, "format", format);
  write_int_attr(root, tmp, "version", H5T_STD_I64LE, version);
  write_int_attr(root, tmp, "vocab_size", H5T_STD_I32LE, a.vocab_size);
  write_int_attr(root, tmp, "pad_id", H5T_STD_I32LE, a.pad_id);
  write_int_attr(root, tmp, "bos_id", H5T_STD_I32LE, a.bos_id);
  write_int_attr(root, tmp, "eos_id", H5T_STD_I32LE, a.eos_id);
  write_int_attr(root, tmp, "unk_id", H5T_STD_I32LE, a.unk_id);
  write_string_attr(root, tmp, "tokenizer_sha256", a.tokenizer_sha256);
  write_int_attr(root, tmp, "pairs", H5T_STD_I64LE, pairs);
  if (checksums) write_int_attr(root, tmp, "checksum_block", H5T_STD_I64LE, kChecksumBlockTokens);
}
}  // namespace

uint32_t crc32_tokens(uint32_t crc, const int32_t* tokens, int64_t count) {
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "token checksums assume a little-endian host");
  const auto* bytes = reinterpret_cast<const Bytef*>(tokens);
  uint64_t left = uint64_t(count) * 4;
  uLong c = crc;
  while (left > 0) {  // zlib takes uInt lengths
    const uInt n = uInt(std::min<uint64_t>(left, uint64_t(1) << 30));
    c = crc32(c, bytes, n);
    bytes += n;
    left -= n;
  }
  return uint32_t(c);
}

std::vector<uint32_t> token_block_crc32(const int32_t* tokens, int64_t count, int64_t block) {
  std::vector<uint32_t> out;
  for (int64_t first = 0; first < count; first += block)
    out.push_back(crc32_tokens(0, tokens + first, std::min(block, count - first)));
  return out;
}

void CorpusContent::add_pair(const std::vector<int32_t>& src, const std::vector<int32_t>& tgt,
                             const std::string& src_line, const std::string& tgt_line) {
  src_tokens.insert(src_tokens.end(), src.begin(), src.end());
  src_offsets.push_back(int64_t(src_tokens.size()));
  tgt_tokens.insert(tgt_tokens.end(), tgt.begin(), tgt.end());
  tgt_offsets.push_back(int64_t(tgt_tokens.size()));
  if (has_text) {
    src_text += src_line;
    src_text_offsets.push_back(int64_t(src_text.size()));
    tgt_text += tgt_line;
    tgt_text_offsets.push_back(int64_t(tgt_text.size()));
  }
  ++pairs;
}

void write_corpus_file(const std::string& path, const CorpusContent& c) {
  write_atomically(path, [&](hid_t file, const std::string& tmp) {
    write_side(file, tmp, "src", c.src_tokens, c.src_offsets, c.has_text, c.src_text, c.src_text_offsets,
               c.write_checksums);
    write_side(file, tmp, "tgt", c.tgt_tokens, c.tgt_offsets, c.has_text, c.tgt_text, c.tgt_text_offsets,
               c.write_checksums);
    CorpusAttributes a;
    a.vocab_size = c.vocab_size, a.pad_id = c.pad_id, a.bos_id = c.bos_id, a.eos_id = c.eos_id, a.unk_id = c.unk_id;
    a.tokenizer_sha256 = c.tokenizer_sha256;
    write_root_attributes(file, tmp, c.format, c.version, a, c.pairs, c.write_checksums);
  });
}

// ---- the streaming writer ------------------------------------------------------------------------------------

struct CorpusStreamWriter::Impl {
  // One append-only spool file of raw elements (tokens as int32, text as bytes).
  struct Spool {
    std::string path;
    std::FILE* f = nullptr;
    int64_t bytes = 0;
    void open(const std::string& p) {
      path = p;
      f = std::fopen(p.c_str(), "w+b");
      AIAYN_CHECK(f != nullptr, fmt::format("{}: cannot create", p));
      std::setvbuf(f, nullptr, _IOFBF, 1 << 20);
    }
    void append(const void* data, size_t size) {
      if (size == 0) return;
      AIAYN_CHECK(std::fwrite(data, 1, size, f) == size, fmt::format("{}: cannot write (disk full?)", path));
      bytes += int64_t(size);
    }
    void rewind() {
      AIAYN_CHECK(std::fflush(f) == 0 && std::fseek(f, 0, SEEK_SET) == 0, fmt::format("{}: cannot rewind", path));
    }
    void read(void* data, size_t size) {
      AIAYN_CHECK(std::fread(data, 1, size, f) == size, fmt::format("{}: cannot read back", path));
    }
    void remove() {
      if (f) std::fclose(f);
      f = nullptr;
      if (!path.empty()) std::remove(path.c_str());
    }
  };

  std::string path;
  CorpusAttributes attributes;
  bool has_text = false;
  bool finished = false;
  Spool tokens[2], text[2];
  std::vector<int64_t> offsets[2]{{0}, {0}}, text_offsets[2]{{0}, {0}};
  int64_t pairs = 0;

  ~Impl() {
    for (int s = 0; s < 2; ++s) {
      tokens[s].remove();
      text[s].remove();
    }
    if (!finished) std::remove((path + ".tmp").c_str());
  }

  // Copies a token spool into its dataset in checksum blocks and writes the block checksums beside it.
  void copy_tokens(hid_t group, const std::string& file, int s) {
    const size_t n = size_t(tokens[s].bytes / 4);
    Handle dset = create_dataset(group, file, "tokens", H5T_STD_I32LE, n);
    std::vector<int32_t> buffer(size_t(std::min<int64_t>(kChecksumBlockTokens, std::max<int64_t>(1, int64_t(n)))));
    std::vector<uint32_t> crc;
    tokens[s].rewind();
    for (size_t first = 0; first < n; first += size_t(kChecksumBlockTokens)) {
      const size_t count = std::min(size_t(kChecksumBlockTokens), n - first);
      tokens[s].read(buffer.data(), count * 4);
      write_block(dset.get(), file, "tokens", H5T_NATIVE_INT32, first, count, buffer.data());
      crc.push_back(crc32_tokens(0, buffer.data(), int64_t(count)));
    }
    write_dataset(group, file, "tokens_crc32", H5T_STD_U32LE, H5T_NATIVE_UINT32, crc.data(), crc.size());
  }

  void copy_text(hid_t group, const std::string& file, int s) {
    const size_t n = size_t(text[s].bytes);
    Handle dset = create_dataset(group, file, "text", H5T_STD_U8LE, n);
    constexpr size_t kBlock = size_t(1) << 24;
    std::vector<uint8_t> buffer(std::min(kBlock, std::max<size_t>(1, n)));
    text[s].rewind();
    for (size_t first = 0; first < n; first += kBlock) {
      const size_t count = std::min(kBlock, n - first);
      text[s].read(buffer.data(), count);
      write_block(dset.get(), file, "text", H5T_NATIVE_UINT8, first, count, buffer.data());
    }
  }
};

CorpusStreamWriter::CorpusStreamWriter(std::string path, CorpusAttributes attributes, bool has_text)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.path = std::move(path);
  m.attributes = std::move(attributes);
  m.has_text = has_text;
  const char* sides[2] = {"src", "tgt"};
  for (int s = 0; s < 2; ++s) {
    m.tokens[s].open(fmt::format("{}.{}.tokens.spool", m.path, sides[s]));
    if (has_text) m.text[s].open(fmt::format("{}.{}.text.spool", m.path, sides[s]));
  }
}

CorpusStreamWriter::~CorpusStreamWriter() = default;

void CorpusStreamWriter::add_pair(const std::vector<int32_t>& src, const std::vector<int32_t>& tgt,
                                  const std::string& src_line, const std::string& tgt_line) {
  Impl& m = *impl_;
  AIAYN_CHECK(!m.finished, fmt::format("{}: add_pair after finish", m.path));
  const std::vector<int32_t>* sides[2] = {&src, &tgt};
  const std::string* lines[2] = {&src_line, &tgt_line};
  for (int s = 0; s < 2; ++s) {
    m.tokens[s].append(sides[s]->data(), sides[s]->size() * 4);
    m.offsets[s].push_back(m.offsets[s].back() + int64_t(sides[s]->size()));
    if (m.has_text) {
      m.text[s].append(lines[s]->data(), lines[s]->size());
      m.text_offsets[s].push_back(m.text_offsets[s].back() + int64_t(lines[s]->size()));
    }
  }
  ++m.pairs;
}

int64_t CorpusStreamWriter::pairs() const { return impl_->pairs; }
int64_t CorpusStreamWriter::src_tokens() const { return impl_->offsets[0].back(); }
int64_t CorpusStreamWriter::tgt_tokens() const { return impl_->offsets[1].back(); }

void CorpusStreamWriter::finish() {
  Impl& m = *impl_;
  AIAYN_CHECK(!m.finished, fmt::format("{}: finish called twice", m.path));
  write_atomically(m.path, [&](hid_t file, const std::string& tmp) {
    const char* sides[2] = {"src", "tgt"};
    for (int s = 0; s < 2; ++s) {
      Handle group(H5Gcreate2(file, sides[s], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
      AIAYN_CHECK(group.valid(), fmt::format("{}: cannot create group /{}", tmp, sides[s]));
      m.copy_tokens(group.get(), tmp, s);
      write_dataset(group.get(), tmp, "offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, m.offsets[s].data(),
                    m.offsets[s].size());
      if (m.has_text) {
        m.copy_text(group.get(), tmp, s);
        write_dataset(group.get(), tmp, "text_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, m.text_offsets[s].data(),
                      m.text_offsets[s].size());
      }
      m.tokens[s].remove();
      m.text[s].remove();
    }
    write_root_attributes(file, tmp, kCorpusFormat, kCorpusVersion, m.attributes, m.pairs, true);
  });
  m.finished = true;
}

}  // namespace aiayn::data
