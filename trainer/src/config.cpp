// Config: one schema table drives parsing, overrides, validation and the resolved YAML.
#include "trainer/config.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>

#include "aiayn/error.hpp"

namespace aiayn::trainer {
namespace {

enum class Kind { Int32, Int, Real, Bool, Choice };

struct Key {
  const char* name;  // "section.key"
  Kind kind;
  double lo, hi;     // inclusive range for Int and Real
  std::vector<std::string> choices;
  std::function<void*(Config&)> field;
  bool architecture;
};

template <class Member>
std::function<void*(Config&)> at(Member member) {
  return [member](Config& c) -> void* { return &(c.*member); };
}

const std::vector<Key>& schema() {
  static const std::vector<Key> keys = [] {
    std::vector<Key> k;
    auto add = [&k](const char* name, Kind kind, double lo, double hi, std::function<void*(Config&)> f,
                    bool arch = false, std::vector<std::string> choices = {}) {
      k.push_back(Key{name, kind, lo, hi, std::move(choices), std::move(f), arch});
    };
    const double big = 1e15;
    auto m = [](auto ptr) { return [ptr](Config& c) -> void* { return &(c.model.*ptr); }; };
    auto t = [](auto ptr) { return [ptr](Config& c) -> void* { return &(c.train.*ptr); }; };
    auto ck = [](auto ptr) { return [ptr](Config& c) -> void* { return &(c.checkpoint.*ptr); }; };
    auto e = [](auto ptr) { return [ptr](Config& c) -> void* { return &(c.eval.*ptr); }; };
    add("model.layers", Kind::Int32, 1, 64, m(&ModelSection::layers), true);
    add("model.d_model", Kind::Int32, 2, 65536, m(&ModelSection::d_model), true);
    add("model.heads", Kind::Int32, 1, 1024, m(&ModelSection::heads), true);
    add("model.d_ff", Kind::Int32, 1, 1 << 20, m(&ModelSection::d_ff), true);
    add("model.dropout", Kind::Real, 0, 0.95, m(&ModelSection::dropout));
    add("model.attention_dropout", Kind::Real, 0, 0.95, m(&ModelSection::attention_dropout));
    add("model.relu_dropout", Kind::Real, 0, 0.95, m(&ModelSection::relu_dropout));
    add("model.label_smoothing", Kind::Real, 0, 0.99, m(&ModelSection::label_smoothing));
    add("model.pre_norm", Kind::Bool, 0, 0, m(&ModelSection::pre_norm), true);
    add("train.batch_tokens", Kind::Int, 1, big, t(&TrainSection::batch_tokens));
    add("train.max_tokens_per_rank", Kind::Int, 1, big, t(&TrainSection::max_tokens_per_rank));
    add("train.max_steps", Kind::Int, 0, big, t(&TrainSection::max_steps));
    add("train.max_epochs", Kind::Int, 0, big, t(&TrainSection::max_epochs));
    add("train.max_minutes", Kind::Real, 0, big, t(&TrainSection::max_minutes));
    add("train.lr_scale", Kind::Real, 0, 1e6, t(&TrainSection::lr_scale));
    add("train.warmup", Kind::Int, 1, big, t(&TrainSection::warmup));
    add("train.adam_beta1", Kind::Real, 0, 0.999999, t(&TrainSection::adam_beta1));
    add("train.adam_beta2", Kind::Real, 0, 0.999999999, t(&TrainSection::adam_beta2));
    add("train.adam_eps", Kind::Real, 1e-30, 1, t(&TrainSection::adam_eps));
    add("train.clip_norm", Kind::Real, 0, big, t(&TrainSection::clip_norm));
    add("train.seed", Kind::Int, 0, 9007199254740991.0, t(&TrainSection::seed));
    add("train.log_every", Kind::Int, 1, big, t(&TrainSection::log_every));
    add("train.valid_every", Kind::Int, 0, big, t(&TrainSection::valid_every));
    add("train.valid_bleu_every", Kind::Int, 0, big, t(&TrainSection::valid_bleu_every));
    add("train.valid_bleu_sentences", Kind::Int, 1, big, t(&TrainSection::valid_bleu_sentences));
    add("train.patience", Kind::Int, 0, big, t(&TrainSection::patience));
    add("train.max_consecutive_skips", Kind::Int, 1, big, t(&TrainSection::max_consecutive_skips));
    add("train.threads", Kind::Int, 0, 1024, t(&TrainSection::threads));
    add("train.shards", Kind::Int, 1, 65536, t(&TrainSection::shards));
    add("train.bucket_mb", Kind::Real, 1e-4, 1e6, t(&TrainSection::bucket_mb));
    add("train.comm_timeout_s", Kind::Real, 0.1, 1e6, t(&TrainSection::comm_timeout_s));
    add("checkpoint.every_steps", Kind::Int, 0, big, ck(&CheckpointSection::every_steps));
    add("checkpoint.every_minutes", Kind::Real, 0, big, ck(&CheckpointSection::every_minutes));
    add("checkpoint.keep_last", Kind::Int, 1, big, ck(&CheckpointSection::keep_last));
    add("checkpoint.average_last", Kind::Int, 0, big, ck(&CheckpointSection::average_last));
    add("checkpoint.keep_best", Kind::Bool, 0, 0, ck(&CheckpointSection::keep_best));
    add("checkpoint.best_metric", Kind::Choice, 0, 0, ck(&CheckpointSection::best_metric), false, {"auto", "bleu", "loss"});
    add("eval.beam", Kind::Int, 1, 1024, e(&EvalSection::beam));
    add("eval.lenpen", Kind::Real, 0, 100, e(&EvalSection::lenpen));
    add("eval.max_len_b", Kind::Int, 0, 100000, e(&EvalSection::max_len_b));
    add("device", Kind::Choice, 0, 0, at(&Config::device), false, {"auto", "cpu", "cuda"});
    add("precision", Kind::Choice, 0, 0, at(&Config::precision), false, {"fp32", "bf16"});
    return k;
  }();
  return keys;
}

const Key* find_key(const std::string& name) {
  for (const auto& k : schema())
    if (name == k.name) return &k;
  return nullptr;
}

std::string known_keys_hint(const std::string& name) {
  const auto dot = name.find('.');
  const std::string section = dot == std::string::npos ? name : name.substr(0, dot);
  std::string list;
  for (const auto& k : schema()) {
    const std::string kn = k.name;
    if (kn.rfind(section + ".", 0) == 0) list += (list.empty() ? "" : ", ") + kn.substr(section.size() + 1);
  }
  return list.empty() ? "" : fmt::format(" (known keys in '{}': {})", section, list);
}

// Sets one key from its text form, checking type and range. `where` prefixes messages.
void set_value(Config& c, const Key& key, const std::string& text, const std::string& where) {
  void* field = key.field(c);
  auto bad = [&](const std::string& why) {
    return Error(fmt::format("{}: config key '{}': {} (got '{}')", where, key.name, why, text));
  };
  switch (key.kind) {
    case Kind::Int32:
    case Kind::Int: {
      // Accept integers written as 1e5 or 25000.0 too, but they must be whole numbers.
      char* end = nullptr;
      const double v = std::strtod(text.c_str(), &end);
      if (text.empty() || end == nullptr || *end != '\0' || !std::isfinite(v) || v != std::floor(v))
        throw bad("expected an integer");
      if (v < key.lo || v > key.hi) throw bad(fmt::format("must be between {} and {}", key.lo, key.hi));
      if (key.kind == Kind::Int32)
        *static_cast<int*>(field) = static_cast<int>(v);
      else
        *static_cast<int64_t*>(field) = static_cast<int64_t>(v);
      break;
    }
    case Kind::Real: {
      char* end = nullptr;
      const double v = std::strtod(text.c_str(), &end);
      if (text.empty() || end == nullptr || *end != '\0' || !std::isfinite(v)) throw bad("expected a number");
      if (v < key.lo || v > key.hi) throw bad(fmt::format("must be between {} and {}", key.lo, key.hi));
      *static_cast<double*>(field) = v;
      break;
    }
    case Kind::Bool: {
      if (text == "true" || text == "1" || text == "yes") *static_cast<bool*>(field) = true;
      else if (text == "false" || text == "0" || text == "no") *static_cast<bool*>(field) = false;
      else throw bad("expected true or false");
      break;
    }
    case Kind::Choice: {
      bool ok = false;
      for (const auto& ch : key.choices) ok = ok || ch == text;
      if (!ok) {
        std::string list;
        for (const auto& ch : key.choices) list += (list.empty() ? "" : " | ") + ch;
        throw bad("expected one of " + list);
      }
      *static_cast<std::string*>(field) = text;
      break;
    }
  }
}

void apply_node(Config& c, const YAML::Node& node, const std::string& prefix, const std::string& origin) {
  if (!node.IsMap()) {
    if (prefix.empty()) throw Error(fmt::format("{}: the config must be a YAML mapping of sections", origin));
    throw Error(fmt::format("{}: config key '{}' must be a mapping", origin, prefix));
  }
  for (const auto& item : node) {
    const std::string name = (prefix.empty() ? "" : prefix + ".") + item.first.as<std::string>();
    const Key* key = find_key(name);
    if (key == nullptr) {
      if (item.second.IsMap() && prefix.empty() &&
          (name == "model" || name == "train" || name == "checkpoint" || name == "eval")) {
        apply_node(c, item.second, name, origin);
        continue;
      }
      throw Error(fmt::format("{}: unknown config key '{}'{}", origin, name, known_keys_hint(name)));
    }
    if (!item.second.IsScalar()) throw Error(fmt::format("{}: config key '{}' must be a single value", origin, name));
    set_value(c, *key, item.second.Scalar(), origin);
  }
}

void validate(const Config& c, const std::string& origin) {
  auto fail = [&](const char* key, const std::string& why) {
    throw Error(fmt::format("{}: config key '{}': {}", origin, key, why));
  };
  if (c.model.d_model % c.model.heads != 0)
    fail("model.heads", fmt::format("d_model ({}) must be divisible by heads ({})", c.model.d_model, c.model.heads));
  if (c.model.d_model % 2 != 0) fail("model.d_model", "must be even (sinusoidal positions pair channels)");
  if (c.train.max_tokens_per_rank > c.train.batch_tokens)
    fail("train.max_tokens_per_rank", fmt::format("must not exceed train.batch_tokens ({})", c.train.batch_tokens));
  if (c.train.max_steps == 0 && c.train.max_epochs == 0 && c.train.max_minutes == 0)
    fail("train.max_steps", "no stop condition: set max_steps, max_epochs or max_minutes");
  if (c.checkpoint.best_metric == "bleu" && c.train.valid_bleu_every == 0)
    fail("checkpoint.best_metric", "'bleu' needs validation BLEU (set train.valid_bleu_every > 0)");
  // (BLEU is the best metric only with valid_bleu_every > 0: 'auto' picks it then, and 'bleu' without it was
  // refused above; so patience can lack only validations of the loss.)
  if (c.train.patience > 0 && c.best_metric() == "loss" && c.train.valid_every == 0)
    fail("train.patience", "counts validations of the loss, but train.valid_every is 0 (no validation)");
}

}  // namespace

Config Config::parse(const std::string& yaml_text, const std::string& origin,
                     const std::vector<std::string>& overrides) {
  Config c;
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw Error(fmt::format("{}: not valid YAML: {}", origin, e.what()));
  }
  if (root && !root.IsNull()) apply_node(c, root, "", origin);
  for (const auto& o : overrides) {
    const auto eq = o.find('=');
    if (eq == std::string::npos || eq == 0)
      throw Error(fmt::format("--set '{}': expected section.key=value", o));
    const std::string name = o.substr(0, eq);
    const Key* key = find_key(name);
    if (key == nullptr) throw Error(fmt::format("--set: unknown config key '{}'{}", name, known_keys_hint(name)));
    set_value(c, *key, o.substr(eq + 1), "--set");
  }
  validate(c, overrides.empty() ? origin : origin + " (with --set overrides)");
  return c;
}

Config Config::load(const std::string& yaml_path, const std::vector<std::string>& overrides) {
  std::ifstream in(yaml_path);
  if (!in) throw Error(fmt::format("{}: cannot open config file", yaml_path));
  std::stringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), yaml_path, overrides);
}

std::string Config::to_yaml() const {
  Config& c = const_cast<Config&>(*this);
  std::string out, section;
  for (const auto& k : schema()) {
    const std::string name = k.name;
    const auto dot = name.find('.');
    const std::string sec = dot == std::string::npos ? "" : name.substr(0, dot);
    const std::string leaf = dot == std::string::npos ? name : name.substr(dot + 1);
    if (sec != section) {
      if (!sec.empty()) out += sec + ":\n";
      section = sec;
    }
    const std::string indent = sec.empty() ? "" : "  ";
    void* f = k.field(c);
    std::string value;
    switch (k.kind) {
      case Kind::Int32: value = std::to_string(*static_cast<int*>(f)); break;
      case Kind::Int: value = std::to_string(*static_cast<int64_t*>(f)); break;
      case Kind::Real: value = fmt::format("{}", *static_cast<double*>(f)); break;
      case Kind::Bool: value = *static_cast<bool*>(f) ? "true" : "false"; break;
      case Kind::Choice: value = *static_cast<std::string*>(f); break;
    }
    out += indent + leaf + ": " + value + "\n";
  }
  return out;
}

std::string Config::best_metric() const {
  if (checkpoint.best_metric != "auto") return checkpoint.best_metric;
  return train.valid_bleu_every > 0 ? "bleu" : "loss";
}

std::string Config::hash() const {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : to_yaml()) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return fmt::format("{:016x}", h);
}

std::string Config::architecture_difference(const Config& other) const {
  Config& a = const_cast<Config&>(*this);
  Config& b = const_cast<Config&>(other);
  for (const auto& k : schema()) {
    if (!k.architecture) continue;
    bool same = true;
    if (k.kind == Kind::Bool) same = *static_cast<bool*>(k.field(a)) == *static_cast<bool*>(k.field(b));
    else same = *static_cast<int*>(k.field(a)) == *static_cast<int*>(k.field(b));
    if (!same) return k.name;
  }
  return "";
}

}  // namespace aiayn::trainer
