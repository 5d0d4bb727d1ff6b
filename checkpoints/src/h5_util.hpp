#pragma once
// Internal to checkpoints: a thin, checked layer over the HDF5 C API.
//
// Every HDF5 call is checked; a failure throws aiayn::Error with the caller's context (file, dataset) and
// HDF5's own error stack folded into one line. HDF5's automatic printing is switched off (H5Eset_auto2) so
// nothing is written to stderr behind our back. Handles are owned by H5Handle and closed on scope exit, so a
// throw in the middle of writing closes the file before the caller removes it.
#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

namespace aiayn::checkpoints::h5 {

// Switches off HDF5's error printing (once per process).
void quiet();

// HDF5's current error stack as one line (innermost causes last); clears it.
std::string error_stack();

// Throws aiayn::Error(context + ": " + error_stack()) when `id` is negative.
hid_t check(hid_t id, const std::string& context);
void check_status(herr_t status, const std::string& context);

class Handle {
 public:
  Handle() = default;
  Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_;
      close_ = o.close_;
      o.id_ = -1;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  // Closes now and reports failure (a file's close is where buffered data reaches the disk).
  void close(const std::string& context);
  void reset() {
    if (id_ >= 0 && close_ != nullptr) close_(id_);
    id_ = -1;
  }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

Handle file_handle(hid_t id, const std::string& context);
Handle group_handle(hid_t id, const std::string& context);
Handle dataset_handle(hid_t id, const std::string& context);
Handle space_handle(hid_t id, const std::string& context);
Handle type_handle(hid_t id, const std::string& context);
Handle attr_handle(hid_t id, const std::string& context);
Handle plist_handle(hid_t id, const std::string& context);

// True when every component of the absolute `path` exists as a link (no error when a parent is missing).
bool exists(hid_t file, const std::string& path);

// Full paths of every dataset below `group` (e.g. "/model"), sorted.
std::vector<std::string> list_datasets(hid_t file, const std::string& group);

// Attributes on an object.
void write_string_attr(hid_t obj, const std::string& name, const std::string& value, const std::string& context);
void write_int_attr(hid_t obj, const std::string& name, int64_t value, const std::string& context);
void write_uint_attr(hid_t obj, const std::string& name, uint64_t value, const std::string& context);
std::string read_string_attr(hid_t obj, const std::string& name, const std::string& context);
int64_t read_int_attr(hid_t obj, const std::string& name, const std::string& context);
uint64_t read_uint_attr(hid_t obj, const std::string& name, const std::string& context);

}  // namespace aiayn::checkpoints::h5
