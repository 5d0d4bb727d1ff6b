#include "run_helpers.hpp"

#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "checkpoints/checkpoint.hpp"
#include "trainer/config.hpp"
#include "trainer/params.hpp"
#include "trainer/run_files.hpp"

namespace aiayn::testing {

std::vector<double> losses(const std::string& run) {
  std::vector<double> out;
  if (!std::filesystem::exists(run + "/metrics.jsonl")) return out;
  for (const auto& j : read_jsonl(run + "/metrics.jsonl"))
    if (j.contains("loss") && j["loss"].is_number()) out.push_back(j["loss"].get<double>());
  return out;
}

std::string latest(const std::string& run) {
  std::string name = read_file(run + "/checkpoints/LATEST");
  while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
  return run + "/checkpoints/" + name;
}

std::map<std::string, std::vector<float>> checkpoint_tensors(const std::string& path, bool with_optim) {
  const checkpoints::Meta meta = checkpoints::read_meta(path);
  const trainer::Config cfg = trainer::Config::parse(meta.config, path);
  std::string vocab_text;
  checkpoints::read_extra(path, "vocab.yaml", &vocab_text);
  const auto vocab = trainer::parse_vocab_yaml(vocab_text, path);
  const auto table = trainer::ParamTable::transformer(cfg.model, vocab.vocab_size);
  std::vector<float> p(table.total()), m(table.total()), v(table.total());
  const auto pr = trainer::model_tensors(table, p.data());
  const auto mr = trainer::model_tensors(table, m.data());
  const auto vr = trainer::model_tensors(table, v.data());
  checkpoints::load_checkpoint(path, pr, with_optim ? &mr : nullptr, with_optim ? &vr : nullptr);
  std::map<std::string, std::vector<float>> out;
  for (const auto& view : table.views()) {
    out["/model/" + view.name].assign(p.begin() + view.offset, p.begin() + view.offset + view.size);
    if (with_optim) {
      out["/optim/m/" + view.name].assign(m.begin() + view.offset, m.begin() + view.offset + view.size);
      out["/optim/v/" + view.name].assign(v.begin() + view.offset, v.begin() + view.offset + view.size);
    }
  }
  return out;
}

::testing::AssertionResult same_checkpoint_tensors(const std::string& a, const std::string& b) {
  const auto x = checkpoint_tensors(a, true), y = checkpoint_tensors(b, true);
  if (x.size() != y.size())
    return ::testing::AssertionFailure() << a << " has " << x.size() << " tensors, " << b << " " << y.size();
  for (const auto& [name, values] : x) {
    const auto it = y.find(name);
    if (it == y.end()) return ::testing::AssertionFailure() << name << ": not in " << b;
    if (it->second != values) return ::testing::AssertionFailure() << name << " differs between " << a << " and " << b;
  }
  return ::testing::AssertionSuccess();
}

std::string launcher(int ranks) {
  if (ranks <= 1) return "";
  return "mpiexec --allow-run-as-root --oversubscribe -np " + std::to_string(ranks) + " ";
}

}  // namespace aiayn::testing
