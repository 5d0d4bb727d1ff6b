// TensorBoard event files (see tensorboard.hpp): protobuf messages, Boost.CRC checksums, TFRecord framing.
//
// The messages go through protobuf-c (protoc-c generates them from trainer/proto/tensorboard_event.proto), not
// the C++ runtime: Debian's libsentencepiece carries its own copy of protobuf's C++ symbols, and a process that
// also loads libprotobuf.so crashes at start-up (its descriptor pool calls into SentencePiece's copy).
#include "trainer/tensorboard.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <boost/crc.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "aiayn/error.hpp"
#include "tensorboard_event.pb-c.h"

namespace aiayn::trainer {
namespace fs = std::filesystem;

namespace {

constexpr char kFileVersion[] = "brain.Event:2";
constexpr char kFilePrefix[] = "events.out.tfevents.";

using Crc32c = boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true>;

void put_u32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put_u64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t get_le(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string framed(const std::string& data) {
  std::string header;
  put_u64(header, data.size());
  std::string out = header;
  put_u32(out, masked_crc32c(header.data(), header.size()));
  out += data;
  put_u32(out, masked_crc32c(data.data(), data.size()));
  return out;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string packed(const Aiayn__Tensorboard__Event& event) {
  std::string out(aiayn__tensorboard__event__get_packed_size(&event), '\0');
  aiayn__tensorboard__event__pack(&event, reinterpret_cast<uint8_t*>(out.data()));
  return out;
}

std::string serialize(const ScalarEvent& e) {
  std::vector<Aiayn__Tensorboard__SummaryValue> values(e.values.size());
  std::vector<Aiayn__Tensorboard__SummaryValue*> pointers;
  for (size_t i = 0; i < e.values.size(); ++i) {
    aiayn__tensorboard__summary_value__init(&values[i]);
    values[i].tag = const_cast<char*>(e.values[i].first.c_str());
    values[i].value_case = AIAYN__TENSORBOARD__SUMMARY_VALUE__VALUE_SIMPLE_VALUE;
    values[i].simple_value = e.values[i].second;
    pointers.push_back(&values[i]);
  }
  Aiayn__Tensorboard__Summary summary;
  aiayn__tensorboard__summary__init(&summary);
  summary.n_value = pointers.size();
  summary.value = pointers.data();
  Aiayn__Tensorboard__Event event;
  aiayn__tensorboard__event__init(&event);
  event.wall_time = e.wall_time;
  event.step = e.step;
  event.what_case = AIAYN__TENSORBOARD__EVENT__WHAT_SUMMARY;
  event.summary = &summary;
  return packed(event);
}

std::string text_event(int64_t step, const std::string& tag, const std::string& text) {
  ProtobufCBinaryData bytes{text.size(), reinterpret_cast<uint8_t*>(const_cast<char*>(text.data()))};
  Aiayn__Tensorboard__TensorShape shape;  // a scalar: no dimensions
  aiayn__tensorboard__tensor_shape__init(&shape);
  Aiayn__Tensorboard__Tensor tensor;
  aiayn__tensorboard__tensor__init(&tensor);
  tensor.dtype = 7;  // DT_STRING
  tensor.tensor_shape = &shape;
  tensor.n_string_val = 1;
  tensor.string_val = &bytes;
  Aiayn__Tensorboard__PluginData plugin;
  aiayn__tensorboard__plugin_data__init(&plugin);
  plugin.plugin_name = const_cast<char*>("text");
  Aiayn__Tensorboard__SummaryMetadata metadata;
  aiayn__tensorboard__summary_metadata__init(&metadata);
  metadata.plugin_data = &plugin;
  Aiayn__Tensorboard__SummaryValue value;
  aiayn__tensorboard__summary_value__init(&value);
  value.tag = const_cast<char*>(tag.c_str());
  value.metadata = &metadata;
  value.value_case = AIAYN__TENSORBOARD__SUMMARY_VALUE__VALUE_TENSOR;
  value.tensor = &tensor;
  Aiayn__Tensorboard__SummaryValue* values[] = {&value};
  Aiayn__Tensorboard__Summary summary;
  aiayn__tensorboard__summary__init(&summary);
  summary.n_value = 1;
  summary.value = values;
  Aiayn__Tensorboard__Event event;
  aiayn__tensorboard__event__init(&event);
  event.wall_time = now_seconds();
  event.step = step;
  event.what_case = AIAYN__TENSORBOARD__EVENT__WHAT_SUMMARY;
  event.summary = &summary;
  return packed(event);
}

std::string file_version_record() {
  Aiayn__Tensorboard__Event event;
  aiayn__tensorboard__event__init(&event);
  event.wall_time = now_seconds();
  event.what_case = AIAYN__TENSORBOARD__EVENT__WHAT_FILE_VERSION;
  event.file_version = const_cast<char*>(kFileVersion);
  return packed(event);
}

// A parsed event, freed with it.
struct ParsedEvent {
  explicit ParsedEvent(const std::string& bytes, const std::string& path)
      : event(aiayn__tensorboard__event__unpack(nullptr, bytes.size(), reinterpret_cast<const uint8_t*>(bytes.data()))) {
    AIAYN_CHECK(event != nullptr, fmt::format("{}: a record is not a TensorBoard event", path));
  }
  ~ParsedEvent() { aiayn__tensorboard__event__free_unpacked(event, nullptr); }
  ParsedEvent(const ParsedEvent&) = delete;
  ParsedEvent& operator=(const ParsedEvent&) = delete;
  bool has_summary() const { return event->what_case == AIAYN__TENSORBOARD__EVENT__WHAT_SUMMARY; }
  Aiayn__Tensorboard__Event* event;
};

// Rewrites `path` without the scalar events after `step` (nothing is written when none is dropped).
void drop_events_after(const std::string& path, int64_t step) {
  bool truncated = false;
  const std::vector<std::string> records = read_event_records(path, &truncated);
  std::string kept;
  bool dropped = truncated;
  for (const std::string& r : records) {
    const ParsedEvent event(r, path);
    if (event.has_summary() && event.event->step > step) {
      dropped = true;
      continue;
    }
    kept += framed(r);
  }
  if (!dropped) return;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(kept.data(), static_cast<std::streamsize>(kept.size()));
    out.flush();
    AIAYN_CHECK(out.good(), fmt::format("{}: cannot write: {}", tmp, std::strerror(errno)));
  }
  AIAYN_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0,
              fmt::format("rename {} -> {} failed: {}", tmp, path, std::strerror(errno)));
}

}  // namespace

uint32_t masked_crc32c(const void* data, size_t size) {
  Crc32c crc;
  crc.process_bytes(data, size);
  const uint32_t c = crc.checksum();
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::vector<std::string> read_event_records(const std::string& path, bool* truncated) {
  std::ifstream in(path, std::ios::binary);
  AIAYN_CHECK(in.good(), fmt::format("{}: cannot open the event file", path));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string bytes = ss.str();
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  std::vector<std::string> records;
  size_t at = 0;
  if (truncated) *truncated = false;
  while (at < bytes.size()) {
    if (bytes.size() - at < 12) {
      if (truncated) *truncated = true;
      break;
    }
    const uint64_t len = get_le(p + at, 8);
    AIAYN_CHECK(static_cast<uint32_t>(get_le(p + at + 8, 4)) == masked_crc32c(p + at, 8),
                fmt::format("{}: the record at byte {} has a damaged length (CRC mismatch)", path, at));
    if (bytes.size() - at - 12 < len + 4) {
      if (truncated) *truncated = true;
      break;
    }
    AIAYN_CHECK(static_cast<uint32_t>(get_le(p + at + 12 + len, 4)) == masked_crc32c(p + at + 12, len),
                fmt::format("{}: the record at byte {} is damaged (CRC mismatch)", path, at));
    records.emplace_back(bytes.data() + at + 12, len);
    at += 12 + len + 4;
  }
  return records;
}

std::vector<ScalarEvent> read_scalar_events(const std::string& path) {
  std::vector<ScalarEvent> out;
  for (const std::string& r : read_event_records(path)) {
    const ParsedEvent parsed(r, path);
    if (!parsed.has_summary()) continue;
    const Aiayn__Tensorboard__Event& event = *parsed.event;
    ScalarEvent e;
    e.step = event.step;
    e.wall_time = event.wall_time;
    for (size_t i = 0; i < event.summary->n_value; ++i) {
      const Aiayn__Tensorboard__SummaryValue& v = *event.summary->value[i];
      if (v.value_case == AIAYN__TENSORBOARD__SUMMARY_VALUE__VALUE_SIMPLE_VALUE)
        e.values.emplace_back(v.tag, v.simple_value);
      else if (v.value_case == AIAYN__TENSORBOARD__SUMMARY_VALUE__VALUE_TENSOR && v.tensor->n_string_val == 1)
        e.texts.emplace_back(v.tag, std::string(reinterpret_cast<const char*>(v.tensor->string_val[0].data),
                                                v.tensor->string_val[0].len));
    }
    out.push_back(std::move(e));
  }
  return out;
}

std::vector<std::string> list_event_files(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(kFilePrefix, 0) == 0 && name.find(".tmp") == std::string::npos && e.is_regular_file())
      out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir, int64_t keep_up_to_step) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  AIAYN_CHECK(!ec, fmt::format("{}: cannot create the TensorBoard folder: {}", dir, ec.message()));
  if (keep_up_to_step >= 0)
    for (const std::string& old : list_event_files(dir)) drop_events_after(old, keep_up_to_step);
  char host[256] = "localhost";
  ::gethostname(host, sizeof(host) - 1);
  // Seconds first (TensorBoard reads a folder's files in name order), then host and pid; a counter keeps a
  // restart within the same second from reopening an existing file.
  const auto seconds = static_cast<long long>(now_seconds());
  for (int n = 0; path_.empty() || fs::exists(path_); ++n)
    path_ = fmt::format("{}/{}{:010d}.{}.{}{}", dir, kFilePrefix, seconds, host, ::getpid(), n ? fmt::format(".{}", n) : "");
  f_ = std::fopen(path_.c_str(), "ab");
  AIAYN_CHECK(f_ != nullptr, fmt::format("{}: cannot create the event file: {}", path_, std::strerror(errno)));
  append_record(file_version_record());
}

TensorBoardWriter::~TensorBoardWriter() {
  if (f_) std::fclose(f_);
}

void TensorBoardWriter::append_record(const std::string& bytes) {
  const std::string rec = framed(bytes);
  const bool ok = std::fwrite(rec.data(), 1, rec.size(), f_) == rec.size() && std::fflush(f_) == 0;
  AIAYN_CHECK(ok, fmt::format("{}: cannot write: {}", path_, std::strerror(errno)));
}

void TensorBoardWriter::write(const ScalarEvent& event) { append_record(serialize(event)); }

void TensorBoardWriter::write_text(int64_t step, const std::string& tag, const std::string& text) {
  append_record(text_event(step, tag, text));
}

void TensorBoardWriter::write_metrics(const nlohmann::ordered_json& line) {
  ScalarEvent e;
  e.step = line.at("step").get<int64_t>();
  e.wall_time = now_seconds();
  for (const auto& [key, value] : line.items()) {
    if (key == "step" || !value.is_number()) continue;
    std::string tag = key.rfind("valid_", 0) == 0 ? "valid/" + key.substr(6) : "train/" + key;
    e.values.emplace_back(std::move(tag), value.get<float>());
  }
  if (!e.values.empty()) write(e);
}

}  // namespace aiayn::trainer
