#pragma once
// Internal to checkpoints: the atomic write protocol shared by checkpoints, model files and averages.
#include <functional>
#include <string>

namespace aiayn::checkpoints::detail {

void run_fault_hook(const std::string& stage);
void fsync_path(const std::string& path, bool directory);
std::string parent_dir(const std::string& path);
// Calls write(final_path + ".tmp"), fsyncs it, renames it to final_path and fsyncs the directory. Runs the
// test fault hook before the stages "write", "fsync" and "rename". On failure removes the temporary and
// throws an error naming final_path and the stage; an existing final_path is untouched.
void commit_atomically(const std::string& final_path, const std::function<void(const std::string& tmp)>& write);

}  // namespace aiayn::checkpoints::detail
