// Checkpoint save/load/verify, the atomic commit protocol, listing, resume selection and retention.
//
// Invariant: a file named step-NNNNNNNN.h5 (and the file LATEST names) is always complete. Every file is
// written under a .tmp name, fsynced, renamed into place and the directory fsynced; a failure at any stage
// removes the temporary and leaves every existing file untouched.
#include "checkpoints/checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "aiayn/error.hpp"
#include "commit.hpp"
#include "format.hpp"

namespace fs = std::filesystem;

namespace aiayn::checkpoints {

// ---- the commit protocol (commit.hpp) ----

namespace {
std::function<void(const std::string&)>& fault_hook() {
  static std::function<void(const std::string&)> hook;
  return hook;
}
std::string errno_text(int e) { return std::strerror(e); }
}  // namespace

void set_save_fault_hook(std::function<void(const std::string& stage)> hook) { fault_hook() = std::move(hook); }

namespace detail {

void run_fault_hook(const std::string& stage) {
  if (fault_hook()) fault_hook()(stage);
}

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  AIAYN_CHECK(fd >= 0, "cannot open " + path + " to fsync it: " + errno_text(errno));
  if (::fsync(fd) != 0) {
    const int e = errno;
    ::close(fd);
    AIAYN_FAIL("fsync " + path + " failed: " + errno_text(e));
  }
  AIAYN_CHECK(::close(fd) == 0, "close " + path + " failed: " + errno_text(errno));
}

std::string parent_dir(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

void commit_atomically(const std::string& final_path, const std::function<void(const std::string& tmp)>& write) {
  const std::string tmp = final_path + ".tmp";
  std::string stage = "write";
  try {
    run_fault_hook(stage);
    write(tmp);
    stage = "fsync";
    run_fault_hook(stage);
    fsync_path(tmp, false);
    stage = "rename";
    run_fault_hook(stage);
    AIAYN_CHECK(std::rename(tmp.c_str(), final_path.c_str()) == 0,
                "rename " + tmp + " -> " + final_path + " failed: " + errno_text(errno));
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove(tmp, ec);
    AIAYN_FAIL("writing " + final_path + " failed at stage '" + stage + "' (nothing was replaced): " + e.what());
  }
  try {
    fsync_path(parent_dir(final_path), true);
  } catch (const std::exception& e) {
    AIAYN_FAIL("writing " + final_path + " failed at stage 'fsync directory': " + e.what());
  }
}

}  // namespace detail

namespace {

std::string step_file_name(int64_t step) {
  AIAYN_CHECK(step >= 0, "checkpoint step must not be negative, got " + std::to_string(step));
  char name[64];
  std::snprintf(name, sizeof(name), "step-%08lld.h5", static_cast<long long>(step));
  return name;
}

bool is_step_file_name(const std::string& name, int64_t* step) {
  static const std::regex pattern("^step-([0-9]{8,18})\\.h5$");
  std::smatch m;
  if (!std::regex_match(name, m, pattern)) return false;
  if (step != nullptr) *step = std::stoll(m[1].str());
  return true;
}

void check_same_layout(const std::vector<TensorRef>& model, const std::vector<TensorRef>& other, const char* what) {
  AIAYN_CHECK(other.size() == model.size(), std::string("checkpoint: ") + what + " has " +
                                                std::to_string(other.size()) + " tensors, the model " +
                                                std::to_string(model.size()));
  for (size_t i = 0; i < model.size(); ++i)
    AIAYN_CHECK(other[i].name == model[i].name && other[i].shape == model[i].shape,
                std::string("checkpoint: ") + what + " tensor " + std::to_string(i) + " (" + other[i].name +
                    ") does not match the model tensor " + model[i].name + " in name or shape");
}

void write_request(const std::string& path, const SaveRequest& r, bool with_optimizer) {
  format::Writer w(path);
  w.write_meta(r.meta);
  for (const TensorRef& t : r.model) w.write_floats("/model/" + t.name, t.shape, t.data);
  if (with_optimizer) {
    for (const TensorRef& t : r.adam_m) w.write_floats("/optim/m/" + t.name, t.shape, t.data);
    for (const TensorRef& t : r.adam_v) w.write_floats("/optim/v/" + t.name, t.shape, t.data);
  }
  for (const auto& [key, bytes] : r.extra) w.write_bytes("/extra/" + key, bytes);
  w.close();
}

void write_latest(const std::string& dir, const std::string& file_name) {
  const std::string latest = dir + "/LATEST";
  const std::string tmp = latest + ".tmp";
  try {
    detail::run_fault_hook("latest");
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      AIAYN_CHECK(out.good(), "cannot create " + tmp + ": " + errno_text(errno));
      out << file_name << '\n';
      out.flush();
      AIAYN_CHECK(out.good(), "cannot write " + tmp + ": " + errno_text(errno));
    }
    detail::fsync_path(tmp, false);
    AIAYN_CHECK(std::rename(tmp.c_str(), latest.c_str()) == 0,
                "rename " + tmp + " -> " + latest + " failed: " + errno_text(errno));
    detail::fsync_path(dir, true);
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove(tmp, ec);
    AIAYN_FAIL("updating " + latest + " to " + file_name + " failed at stage 'latest' (LATEST still names the "
               "previous checkpoint): " + e.what());
  }
}

std::string read_latest(const std::string& dir) {
  std::ifstream in(dir + "/LATEST", std::ios::binary);
  if (!in) return {};
  std::stringstream ss;
  ss << in.rdbuf();
  std::string name = ss.str();
  const auto not_space = [](unsigned char c) { return !std::isspace(c); };
  name.erase(std::find_if(name.rbegin(), name.rend(), not_space).base(), name.end());
  name.erase(name.begin(), std::find_if(name.begin(), name.end(), not_space));
  return name;
}

}  // namespace

std::string save_checkpoint(const std::string& dir, const SaveRequest& request) {
  // Optimizer state: both absent (a model-only file) or both mirroring the model.
  AIAYN_CHECK(request.adam_m.empty() == request.adam_v.empty(),
              "save_checkpoint: adam_m and adam_v must be both given or both empty");
  if (!request.adam_m.empty()) {
    check_same_layout(request.model, request.adam_m, "adam_m");
    check_same_layout(request.model, request.adam_v, "adam_v");
  }
  const std::string name = step_file_name(request.meta.step);
  std::error_code ec;
  fs::create_directories(dir, ec);
  AIAYN_CHECK(!ec && fs::is_directory(dir), "cannot create checkpoint directory " + dir + ": " +
                                                (ec ? ec.message() : std::string("not a directory")));
  const std::string path = dir + "/" + name;
  detail::commit_atomically(path, [&](const std::string& tmp) { write_request(tmp, request, true); });
  write_latest(dir, name);
  return path;
}

void save_checkpoint_file(const std::string& path, const SaveRequest& request) {
  AIAYN_CHECK(request.adam_m.empty() == request.adam_v.empty(),
              "save_checkpoint_file: adam_m and adam_v must be both given or both empty");
  if (!request.adam_m.empty()) {
    check_same_layout(request.model, request.adam_m, "adam_m");
    check_same_layout(request.model, request.adam_v, "adam_v");
  }
  detail::commit_atomically(path, [&](const std::string& tmp) { write_request(tmp, request, !request.adam_m.empty()); });
}

void save_model_file(const std::string& path, const SaveRequest& request) {
  AIAYN_CHECK(request.adam_m.empty() && request.adam_v.empty(),
              "save_model_file " + path + ": a model-only file takes no optimizer state");
  detail::commit_atomically(path, [&](const std::string& tmp) { write_request(tmp, request, false); });
}

Meta read_meta(const std::string& path) { return format::Reader(path).meta(); }

namespace {
void load_group(const format::Reader& r, const std::string& group, const std::vector<MutableTensorRef>& tensors) {
  if (!tensors.empty())
    AIAYN_CHECK(r.has(group), "checkpoint " + r.path() + ": has no " + group +
                                  (group == "/model" ? std::string() : " (a model-only file, e.g. an average?)"));
  for (const MutableTensorRef& t : tensors) r.read_floats(group + "/" + t.name, t.shape, t.data);
}
}  // namespace

Meta load_checkpoint(const std::string& path, const std::vector<MutableTensorRef>& model,
                     const std::vector<MutableTensorRef>* adam_m, const std::vector<MutableTensorRef>* adam_v) {
  format::Reader r(path);
  load_group(r, "/model", model);
  if (adam_m != nullptr) load_group(r, "/optim/m", *adam_m);
  if (adam_v != nullptr) load_group(r, "/optim/v", *adam_v);
  return r.meta();
}

bool read_extra(const std::string& path, const std::string& key, std::string* bytes) {
  format::Reader r(path);
  const std::string dataset = "/extra/" + key;
  if (key.empty() || !r.has(dataset)) return false;
  std::string data = r.read_bytes(dataset);
  if (bytes != nullptr) *bytes = std::move(data);
  return true;
}

bool verify_checkpoint(const std::string& path, std::string* why) {
  try {
    format::Reader r(path);
    const std::vector<std::string> model = r.datasets("/model");
    AIAYN_CHECK(!model.empty(), "checkpoint " + path + ": has no /model tensors");
    // Optimizer state, when present, must mirror the model name for name and shape.
    if (r.has("/optim")) {
      for (const char* group : {"/optim/m", "/optim/v"}) {
        const std::vector<std::string> names = r.datasets(group);
        AIAYN_CHECK(names.size() == model.size(), "checkpoint " + path + ": " + group + " has " +
                                                      std::to_string(names.size()) + " tensors, /model " +
                                                      std::to_string(model.size()));
        for (size_t i = 0; i < names.size(); ++i) {
          const std::string name = model[i].substr(std::strlen("/model"));
          AIAYN_CHECK(names[i] == group + name, "checkpoint " + path + ": " + group + name + " is missing");
          AIAYN_CHECK(r.shape(names[i]) == r.shape(model[i]),
                      "checkpoint " + path + ": dataset " + names[i] + " differs in shape from " + model[i]);
        }
      }
    }
    for (const char* group : {"/model", "/optim", "/extra"})
      for (const std::string& d : r.datasets(group)) r.verify(d);
    return true;
  } catch (const std::exception& e) {
    if (why != nullptr) *why = e.what();
    return false;
  }
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    int64_t step = 0;
    const std::string name = it->path().filename().string();
    if (is_step_file_name(name, &step) && it->is_regular_file(ec)) found.emplace_back(step, dir + "/" + name);
  }
  AIAYN_CHECK(!ec, "cannot list checkpoint directory " + dir + ": " + ec.message());
  std::sort(found.begin(), found.end());
  std::vector<std::string> paths;
  for (auto& f : found) paths.push_back(std::move(f.second));
  return paths;
}

std::string find_resume_checkpoint(const std::string& dir,
                                   const std::function<void(const std::string&)>& warn) {
  const auto say = [&](const std::string& m) {
    if (warn) warn(m);
  };
  const std::string latest = read_latest(dir);
  std::string why;
  if (!latest.empty()) {
    if (!is_step_file_name(latest, nullptr)) {
      say(dir + "/LATEST names \"" + latest + "\", which is not a checkpoint file name; looking for another");
    } else if (verify_checkpoint(dir + "/" + latest, &why)) {
      return dir + "/" + latest;
    } else {
      say(dir + "/LATEST names " + latest + ", which does not verify (" + why + "); looking for another");
    }
  }
  std::vector<std::string> all = list_checkpoints(dir);
  if (latest.empty() && !all.empty()) say(dir + " has checkpoints but no LATEST; using the newest that verifies");
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (!latest.empty() && *it == dir + "/" + latest) continue;  // already tried
    if (verify_checkpoint(*it, &why)) {
      if (!latest.empty()) say("resuming from " + *it + " instead");
      return *it;
    }
    say("skipping " + *it + ": " + why);
  }
  return {};
}

std::vector<std::string> prune_checkpoints(const std::string& dir, int keep_last, int min_keep) {
  AIAYN_CHECK(keep_last >= 0 && min_keep >= 0, "prune_checkpoints: keep_last " + std::to_string(keep_last) +
                                                   " and min_keep " + std::to_string(min_keep) +
                                                   " must not be negative");
  const size_t keep = static_cast<size_t>(std::max(keep_last, min_keep));
  const std::vector<std::string> all = list_checkpoints(dir);
  const std::string latest = read_latest(dir);
  const std::string latest_path = latest.empty() ? std::string() : dir + "/" + latest;
  std::vector<std::string> deleted;
  for (size_t i = 0; i + keep < all.size(); ++i) {  // all but the newest `keep`
    if (all[i] == latest_path) continue;
    std::error_code ec;
    fs::remove(all[i], ec);
    AIAYN_CHECK(!ec, "cannot delete old checkpoint " + all[i] + ": " + ec.message());
    deleted.push_back(all[i]);
  }
  if (!deleted.empty()) detail::fsync_path(dir, true);
  return deleted;
}

}  // namespace aiayn::checkpoints
