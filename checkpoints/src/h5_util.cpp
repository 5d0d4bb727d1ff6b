// The checked HDF5 layer (see h5_util.hpp).
#include "h5_util.hpp"

#include <algorithm>
#include <mutex>

#include "aiayn/error.hpp"

namespace aiayn::checkpoints::h5 {

void quiet() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

namespace {
herr_t collect_error(unsigned, const H5E_error2_t* e, void* out) {
  auto* lines = static_cast<std::vector<std::string>*>(out);
  if (e->desc == nullptr || *e->desc == '\0') return 0;
  std::string line = e->desc;
  std::replace(line.begin(), line.end(), '\n', ' ');  // some HDF5 messages embed newlines
  lines->push_back(line);
  return 0;
}
}  // namespace

std::string error_stack() {
  std::vector<std::string> lines;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &lines);
  H5Eclear2(H5E_DEFAULT);
  lines.erase(std::unique(lines.begin(), lines.end()), lines.end());
  if (lines.empty()) return "HDF5 call failed";
  // The outermost line says what was attempted, the innermost three why.
  std::string text = lines.front();
  const size_t from = lines.size() > 4 ? lines.size() - 3 : 1;
  if (from > 1) text += ": ...";
  for (size_t i = from; i < lines.size(); ++i) text += ": " + lines[i];
  return text;
}

hid_t check(hid_t id, const std::string& context) {
  if (id < 0) AIAYN_FAIL(context + ": " + error_stack());
  return id;
}
void check_status(herr_t status, const std::string& context) {
  if (status < 0) AIAYN_FAIL(context + ": " + error_stack());
}

void Handle::close(const std::string& context) {
  if (id_ < 0) return;
  const hid_t id = id_;
  id_ = -1;
  check_status(close_(id), context);
}

Handle file_handle(hid_t id, const std::string& c) { return Handle(check(id, c), H5Fclose); }
Handle group_handle(hid_t id, const std::string& c) { return Handle(check(id, c), H5Gclose); }
Handle dataset_handle(hid_t id, const std::string& c) { return Handle(check(id, c), H5Dclose); }
Handle space_handle(hid_t id, const std::string& c) { return Handle(check(id, c), H5Sclose); }
Handle type_handle(hid_t id, const std::string& c) { return Handle(check(id, c), H5Tclose); }
Handle attr_handle(hid_t id, const std::string& c) { return Handle(check(id, c), H5Aclose); }
Handle plist_handle(hid_t id, const std::string& c) { return Handle(check(id, c), H5Pclose); }

bool exists(hid_t file, const std::string& path) {
  // H5Lexists fails (rather than returning false) when an intermediate group is missing: walk the prefixes.
  size_t pos = 0;
  while (pos < path.size()) {
    size_t next = path.find('/', pos + 1);
    if (next == std::string::npos) next = path.size();
    const std::string prefix = path.substr(0, next);
    if (prefix != "/") {
      const htri_t e = H5Lexists(file, prefix.c_str(), H5P_DEFAULT);
      if (e < 0) {
        H5Eclear2(H5E_DEFAULT);
        return false;
      }
      if (e == 0) return false;
    }
    pos = next;
  }
  return true;
}

namespace {
struct VisitState {
  std::string group;
  std::vector<std::string> datasets;
};
herr_t visit_link(hid_t group, const char* name, const H5L_info_t* info, void* data) {
  auto* state = static_cast<VisitState*>(data);
  if (info->type != H5L_TYPE_HARD) return 0;
  const hid_t obj = H5Oopen(group, name, H5P_DEFAULT);
  if (obj < 0) return -1;
  const bool is_dataset = H5Iget_type(obj) == H5I_DATASET;
  H5Oclose(obj);
  try {
    if (is_dataset) state->datasets.push_back(state->group + "/" + name);
  } catch (...) {
    return -1;
  }
  return 0;
}
}  // namespace

std::vector<std::string> list_datasets(hid_t file, const std::string& group) {
  VisitState state;
  state.group = group;
  Handle g = group_handle(H5Gopen2(file, group.c_str(), H5P_DEFAULT), "cannot open group " + group);
  check_status(H5Lvisit(g.get(), H5_INDEX_NAME, H5_ITER_INC, visit_link, &state),
               "cannot list the datasets under " + group);
  std::sort(state.datasets.begin(), state.datasets.end());
  return state.datasets;
}

void write_string_attr(hid_t obj, const std::string& name, const std::string& value, const std::string& context) {
  const std::string what = context + ": cannot write attribute " + name;
  Handle type = type_handle(H5Tcopy(H5T_C_S1), what);
  // Fixed length, NUL padded; HDF5 rejects size 0, so an empty string is one NUL.
  check_status(H5Tset_size(type.get(), std::max<size_t>(value.size(), 1)), what);
  check_status(H5Tset_strpad(type.get(), H5T_STR_NULLPAD), what);
  check_status(H5Tset_cset(type.get(), H5T_CSET_UTF8), what);
  Handle space = space_handle(H5Screate(H5S_SCALAR), what);
  Handle attr = attr_handle(H5Acreate2(obj, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  std::string padded = value;
  padded.resize(std::max<size_t>(value.size(), 1), '\0');
  check_status(H5Awrite(attr.get(), type.get(), padded.data()), what);
  attr.close(what);
}

namespace {
template <typename T>
void write_scalar_attr(hid_t obj, const std::string& name, T value, hid_t file_type, hid_t mem_type,
                       const std::string& context) {
  const std::string what = context + ": cannot write attribute " + name;
  Handle space = space_handle(H5Screate(H5S_SCALAR), what);
  Handle attr = attr_handle(H5Acreate2(obj, name.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  check_status(H5Awrite(attr.get(), mem_type, &value), what);
  attr.close(what);
}
template <typename T>
T read_scalar_attr(hid_t obj, const std::string& name, hid_t mem_type, const std::string& context) {
  const std::string what = context + ": cannot read attribute " + name;
  AIAYN_CHECK(H5Aexists(obj, name.c_str()) > 0, context + ": attribute " + name + " is missing");
  Handle attr = attr_handle(H5Aopen(obj, name.c_str(), H5P_DEFAULT), what);
  Handle type = type_handle(H5Aget_type(attr.get()), what);
  AIAYN_CHECK(H5Tget_class(type.get()) == H5T_INTEGER, context + ": attribute " + name + " is not an integer");
  T value{};
  check_status(H5Aread(attr.get(), mem_type, &value), what);
  return value;
}
}  // namespace

void write_int_attr(hid_t obj, const std::string& name, int64_t value, const std::string& context) {
  write_scalar_attr(obj, name, value, H5T_STD_I64LE, H5T_NATIVE_INT64, context);
}
void write_uint_attr(hid_t obj, const std::string& name, uint64_t value, const std::string& context) {
  write_scalar_attr(obj, name, value, H5T_STD_U64LE, H5T_NATIVE_UINT64, context);
}
int64_t read_int_attr(hid_t obj, const std::string& name, const std::string& context) {
  return read_scalar_attr<int64_t>(obj, name, H5T_NATIVE_INT64, context);
}
uint64_t read_uint_attr(hid_t obj, const std::string& name, const std::string& context) {
  return read_scalar_attr<uint64_t>(obj, name, H5T_NATIVE_UINT64, context);
}

std::string read_string_attr(hid_t obj, const std::string& name, const std::string& context) {
  const std::string what = context + ": cannot read attribute " + name;
  AIAYN_CHECK(H5Aexists(obj, name.c_str()) > 0, context + ": attribute " + name + " is missing");
  Handle attr = attr_handle(H5Aopen(obj, name.c_str(), H5P_DEFAULT), what);
  Handle type = type_handle(H5Aget_type(attr.get()), what);
  AIAYN_CHECK(H5Tget_class(type.get()) == H5T_STRING && H5Tis_variable_str(type.get()) == 0,
              context + ": attribute " + name + " is not a fixed-length string");
  const size_t size = H5Tget_size(type.get());
  AIAYN_CHECK(size > 0, what);
  std::string value(size, '\0');
  check_status(H5Aread(attr.get(), type.get(), value.data()), what);
  const size_t end = value.find('\0');
  if (end != std::string::npos) value.resize(end);
  return value;
}

}  // namespace aiayn::checkpoints::h5
