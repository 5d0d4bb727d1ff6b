// Checkpoint averaging: the element-wise mean of /model over N files, accumulated in double.
//
// Streams tensor by tensor: all inputs stay open, and for each dataset every input's tensor is read
// (checksum verified) into one float buffer and added into one double accumulator, then the mean is written.
// Memory is one tensor's worth, never N models. The output is committed like a checkpoint (tmp, fsync,
// rename, fsync directory), with the metadata and /extra of the last input and no optimizer state.
#include <memory>
#include <string>
#include <vector>

#include "aiayn/error.hpp"
#include "checkpoints/checkpoint.hpp"
#include "commit.hpp"
#include "format.hpp"

namespace aiayn::checkpoints {

void average_checkpoints(const std::vector<std::string>& inputs, const std::string& out_path) {
  AIAYN_CHECK(!inputs.empty(), "average: no input checkpoints given (at least 1 is needed)");
  std::vector<std::unique_ptr<format::Reader>> readers;
  for (const std::string& path : inputs) readers.push_back(std::make_unique<format::Reader>(path));

  // Every input must hold exactly the same /model datasets with the same shapes.
  const std::vector<std::string> names = readers[0]->datasets("/model");
  AIAYN_CHECK(!names.empty(), "average: checkpoint " + inputs[0] + " has no /model tensors");
  std::vector<std::vector<int64_t>> shapes;
  for (const std::string& name : names) shapes.push_back(readers[0]->shape(name));
  for (size_t k = 1; k < readers.size(); ++k) {
    const std::vector<std::string> other = readers[k]->datasets("/model");
    for (const std::string& name : names)
      AIAYN_CHECK(readers[k]->has(name), "average: checkpoint " + inputs[k] + ": dataset " + name +
                                             " is missing (present in " + inputs[0] + ")");
    for (const std::string& name : other)
      AIAYN_CHECK(readers[0]->has(name), "average: checkpoint " + inputs[k] + ": dataset " + name +
                                             " is not in " + inputs[0]);
    for (size_t i = 0; i < names.size(); ++i)
      AIAYN_CHECK(readers[k]->shape(names[i]) == shapes[i],
                  "average: checkpoint " + inputs[k] + ": dataset " + names[i] + " has a different shape than in " +
                      inputs[0]);
  }

  const format::Reader& last = *readers.back();
  detail::commit_atomically(out_path, [&](const std::string& tmp) {
    format::Writer w(tmp);
    w.write_meta(last.meta());
    std::vector<float> buffer;
    std::vector<double> sum;
    for (size_t i = 0; i < names.size(); ++i) {
      const size_t n = static_cast<size_t>(format::element_count(shapes[i], names[i]));
      buffer.assign(n, 0.0f);
      sum.assign(n, 0.0);
      for (const auto& r : readers) {
        r->read_floats(names[i], shapes[i], buffer.data());
        for (size_t j = 0; j < n; ++j) sum[j] += static_cast<double>(buffer[j]);
      }
      const double count = static_cast<double>(readers.size());
      for (size_t j = 0; j < n; ++j) buffer[j] = static_cast<float>(sum[j] / count);
      w.write_floats(names[i], shapes[i], buffer.data());
    }
    for (const std::string& key : last.datasets("/extra")) w.write_bytes(key, last.read_bytes(key));
    w.close();
  });
}

}  // namespace aiayn::checkpoints
