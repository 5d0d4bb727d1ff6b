#pragma once
// TensorBoard event files for scalars: RUN/tensorboard/events.out.tfevents.<seconds>.<host>.<pid>.
//
// An event file is a sequence of records: uint64 length, uint32 masked CRC-32C of the length bytes, the
// serialized tensorflow.Event, uint32 masked CRC-32C of those bytes (little-endian). The messages are built by
// protobuf from trainer/proto/tensorboard_event.proto (TensorFlow's field numbers), the CRC by Boost.CRC.
// The first event of a file carries file_version "brain.Event:2"; then one event per metrics line.
//
// Resume: events newer than the step a run resumes from belong to a timeline that was abandoned; the writer
// rewrites the existing files without them (tmp + rename), so a resumed run appends with no step twice.
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace aiayn::trainer {

struct ScalarEvent {
  int64_t step = 0;
  double wall_time = 0;
  std::vector<std::pair<std::string, float>> values;  // tag, value
  std::vector<std::pair<std::string, std::string>> texts;  // tag, text (read back only)
};

class TensorBoardWriter {
 public:
  // Creates `dir` if needed. keep_up_to_step >= 0 (a resume): first drops, from every event file already in
  // `dir`, the scalar events with a larger step. Then opens a new event file.
  TensorBoardWriter(const std::string& dir, int64_t keep_up_to_step);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One event at `step` with every numeric field of a metrics.jsonl line except "step" (nulls skipped),
  // tagged "valid/<rest>" for a "valid_<rest>" field (validation lines), else "train/<key>".
  void write_metrics(const nlohmann::ordered_json& line);
  void write(const ScalarEvent& event);
  // A text summary (TensorBoard's Text tab), e.g. sacreBLEU's signature.
  void write_text(int64_t step, const std::string& tag, const std::string& text);
  const std::string& path() const { return path_; }

 private:
  void append_record(const std::string& bytes);
  std::string path_;
  std::FILE* f_ = nullptr;
};

// CRC-32C (Castagnoli) masked as TFRecord does: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t masked_crc32c(const void* data, size_t size);

// The records of an event file, checked (length CRC, data CRC); a truncated last record (a write cut off by a
// crash) ends the list. A damaged record throws naming the file and the record's offset.
std::vector<std::string> read_event_records(const std::string& path, bool* truncated = nullptr);

// The scalar events of an event file (file_version and other events skipped).
std::vector<ScalarEvent> read_scalar_events(const std::string& path);

// Event files in `dir`, sorted by name (TensorBoard's order).
std::vector<std::string> list_event_files(const std::string& dir);

}  // namespace aiayn::trainer
