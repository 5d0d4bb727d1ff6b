// The synthetic language pair: English-like source, a made-up target language that a model can only learn
// with attention, because it differs from the source in three ways:
//   - vocabulary: every source word maps to one target word (a fixed lexicon, the same for every seed);
//   - reordering: adjectives follow their noun, and the verb moves to the end of its clause (SOV);
//   - agreement: each noun has a class (0, 1, 2) that picks the target determiner and the adjective's
//     suffix, and the verb's suffix follows the subject's number (source: "the cat sees" / "the cats see").
// Sentence: CLAUSE [and CLAUSE], CLAUSE = NP VERB NP [PREP NP], NP = DET [ADJ] NOUN(s): 5 to 14 words (the
// second clause, only after a short first one, has no PREP NP).
// Randomness: splitmix64 of (seed, stream, index, draw), so every platform generates the same text.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include <fmt/format.h>

#include "aiayn/error.hpp"
#include "kernels/dropout_hash.hpp"
#include "data/prepare.hpp"

namespace aiayn::data {
namespace {

// splitmix64, shared with the dropout masks and the initialisation.
using kernels::mix64;

class Rng {
 public:
  explicit Rng(uint64_t state) : state_(state) {}
  uint64_t next() { return mix64(state_++ * 0x2545f4914f6cdd1dULL + 0x1234567ULL); }
  size_t below(size_t n) { return size_t(next() % n); }
  bool chance(int percent) { return below(100) < size_t(percent); }

 private:
  uint64_t state_;
};

const std::vector<std::string> kNouns = {
    "cat", "dog", "bird", "horse", "child", "woman", "man", "teacher", "farmer", "doctor", "king", "queen",
    "friend", "student", "baker", "sailor", "house", "tree", "river", "garden", "boat", "car", "book", "letter",
    "table", "window", "door", "road", "city", "village", "forest", "mountain", "apple", "bread", "cake", "flower",
    "ball", "song", "picture", "lamp", "chair", "bridge", "ship", "key", "box", "hat", "coat", "stone",
    "fish", "wolf", "fox", "bear", "mouse", "lion", "goat", "duck", "cow", "pig", "owl", "frog"};
const std::vector<std::string> kAdjectives = {
    "big", "small", "old", "young", "red", "green", "blue", "happy", "sad", "quick", "slow", "tall",
    "short", "dark", "bright", "quiet", "loud", "warm", "cold", "new", "strong", "gentle", "clever", "brave"};
// Verbs: the plural / base form; the singular form adds "s".
const std::vector<std::string> kVerbs = {
    "see", "find", "like", "take", "hold", "draw", "paint", "visit", "follow", "help", "carry", "watch",
    "open", "build", "want", "greet", "push", "pull", "bring", "keep", "call", "wash", "read", "hide"};
const std::vector<std::string> kPrepositions = {"near", "behind", "under", "above", "beside", "inside"};

// English -s / -es: "watches", "boxes", "sees".
std::string with_s(const std::string& w) {
  const auto ends = [&](const char* e) {
    const size_t n = std::strlen(e);
    return w.size() >= n && w.compare(w.size() - n, n, e) == 0;
  };
  return w + (ends("s") || ends("sh") || ends("ch") || ends("x") ? "es" : "s");
}

struct Lexicon {
  std::vector<std::string> nouns, adjectives, verbs, prepositions;
  std::vector<int> noun_class;
  std::string conjunction;
};

// Target words are built from syllables by a fixed generator (independent of the user's seed), all distinct.
const Lexicon& lexicon() {
  static const Lexicon lex = [] {
    const char* onsets[] = {"b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "tr"};
    const char* vowels[] = {"a", "e", "i", "o", "u", "ai", "ou"};
    Rng rng(0x5eed0fa1a7ULL);
    std::set<std::string> used = {"le", "la", "lo", "un", "una", "uno", "e", "lei", "lai", "loi"};
    auto word = [&](int syllables) {
      for (;;) {
        std::string w;
        for (int s = 0; s < syllables; ++s) {
          w += onsets[rng.below(16)];
          w += vowels[rng.below(7)];
        }
        if (used.insert(w).second) return w;
      }
    };
    Lexicon l;
    for (size_t i = 0; i < kNouns.size(); ++i) {
      l.nouns.push_back(word(2));
      l.noun_class.push_back(int(rng.below(3)));
    }
    for (size_t i = 0; i < kAdjectives.size(); ++i) l.adjectives.push_back(word(2));
    for (size_t i = 0; i < kVerbs.size(); ++i) l.verbs.push_back(word(2));
    for (size_t i = 0; i < kPrepositions.size(); ++i) l.prepositions.push_back(word(1));
    l.conjunction = "e";
    return l;
  }();
  return lex;
}

struct NounPhrase {
  bool definite = true, plural = false;
  int adjective = -1;  // index or -1
  int noun = 0;
};

NounPhrase random_np(Rng& rng) {
  NounPhrase np;
  np.definite = rng.chance(60);
  np.plural = rng.chance(30);
  if (np.plural) np.definite = true;  // no "a cats"
  np.adjective = rng.chance(45) ? int(rng.below(kAdjectives.size())) : -1;
  np.noun = int(rng.below(kNouns.size()));
  return np;
}

void source_np(const NounPhrase& np, std::vector<std::string>& out) {
  out.push_back(np.definite ? "the" : "a");
  if (np.adjective >= 0) out.push_back(kAdjectives[size_t(np.adjective)]);
  out.push_back(np.plural ? with_s(kNouns[size_t(np.noun)]) : kNouns[size_t(np.noun)]);
}

// Target: DET(class, definiteness, number) NOUN(+s plural) ADJ+suffix(class).
void target_np(const NounPhrase& np, std::vector<std::string>& out) {
  const Lexicon& l = lexicon();
  const int c = l.noun_class[size_t(np.noun)];
  static const char* definite[3] = {"le", "la", "lo"};
  static const char* indefinite[3] = {"un", "una", "uno"};
  static const char* plural[3] = {"lei", "lai", "loi"};
  out.push_back(np.plural ? plural[c] : np.definite ? definite[c] : indefinite[c]);
  out.push_back(l.nouns[size_t(np.noun)] + (np.plural ? "s" : ""));
  static const char* suffix[3] = {"o", "a", "e"};
  if (np.adjective >= 0) out.push_back(l.adjectives[size_t(np.adjective)] + suffix[c]);
}

void clause(Rng& rng, bool allow_pp, std::vector<std::string>& src, std::vector<std::string>& tgt) {
  const NounPhrase subject = random_np(rng), object = random_np(rng);
  const int verb = int(rng.below(kVerbs.size()));
  const bool has_pp = rng.chance(35) && allow_pp;
  const int prep = int(rng.below(kPrepositions.size()));
  const NounPhrase pp = random_np(rng);
  const Lexicon& l = lexicon();

  source_np(subject, src);
  src.push_back(subject.plural ? kVerbs[size_t(verb)] : with_s(kVerbs[size_t(verb)]));
  source_np(object, src);
  if (has_pp) {
    src.push_back(kPrepositions[size_t(prep)]);
    source_np(pp, src);
  }

  target_np(subject, tgt);
  target_np(object, tgt);
  if (has_pp) {
    tgt.push_back(l.prepositions[size_t(prep)]);
    target_np(pp, tgt);
  }
  tgt.push_back(l.verbs[size_t(verb)] + (subject.plural ? "en" : "et"));
}

std::string join(const std::vector<std::string>& words) {
  std::string s;
  for (size_t i = 0; i < words.size(); ++i) {
    if (i) s += ' ';
    s += words[i];
  }
  return s;
}

void write_lines(const std::string& path, const std::vector<std::string>& lines) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    AIAYN_CHECK(out, fmt::format("{}: cannot create", tmp));
    for (const auto& line : lines) out << line << '\n';
    out.flush();
    AIAYN_CHECK(out, fmt::format("{}: cannot write", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  AIAYN_CHECK(!ec, fmt::format("{}: cannot rename to {}: {}", tmp, path, ec.message()));
}

}  // namespace

std::pair<std::string, std::string> synthetic_pair(uint64_t seed, uint64_t stream, uint64_t index) {
  Rng rng(mix64(mix64(mix64(seed) ^ stream) ^ index));
  std::vector<std::string> src, tgt;
  clause(rng, true, src, tgt);
  if (rng.chance(30) && src.size() <= 6) {  // 6 + "and" + at most 7 words: 14
    src.push_back("and");
    tgt.push_back(lexicon().conjunction);
    clause(rng, false, src, tgt);
  }
  return {join(src), join(tgt)};
}

SyntheticFiles generate_synthetic(const SyntheticOptions& o, const std::string& text_dir) {
  AIAYN_CHECK(o.train_pairs > 0 && o.valid_pairs > 0 && o.test_pairs > 0,
              fmt::format("synthetic: pair counts must be positive (train {}, valid {}, test {})", o.train_pairs,
                          o.valid_pairs, o.test_pairs));
  std::error_code ec;
  std::filesystem::create_directories(text_dir, ec);
  AIAYN_CHECK(std::filesystem::is_directory(text_dir), fmt::format("{}: cannot create the directory", text_dir));
  SyntheticFiles files;
  struct Split {
    const char* name;
    int64_t pairs;
    std::string *src, *tgt;
  } splits[] = {{"train", o.train_pairs, &files.train_src, &files.train_tgt},
                {"valid", o.valid_pairs, &files.valid_src, &files.valid_tgt},
                {"test", o.test_pairs, &files.test_src, &files.test_tgt}};
  for (uint64_t stream = 0; stream < 3; ++stream) {
    const Split& s = splits[stream];
    std::vector<std::string> src, tgt;
    for (int64_t i = 0; i < s.pairs; ++i) {
      auto [a, b] = synthetic_pair(o.seed, stream, uint64_t(i));
      src.push_back(std::move(a));
      tgt.push_back(std::move(b));
    }
    *s.src = (std::filesystem::path(text_dir) / fmt::format("{}.src", s.name)).string();
    *s.tgt = (std::filesystem::path(text_dir) / fmt::format("{}.tgt", s.name)).string();
    write_lines(*s.src, src);
    write_lines(*s.tgt, tgt);
  }
  return files;
}

PrepareReport prepare_synthetic(const SyntheticOptions& o, const std::string& out_dir, int vocab_size) {
  const SyntheticFiles f = generate_synthetic(o, (std::filesystem::path(out_dir) / "text").string());
  PrepareOptions p;
  p.train_src = f.train_src;
  p.train_tgt = f.train_tgt;
  p.valid_src = f.valid_src;
  p.valid_tgt = f.valid_tgt;
  p.test_src = f.test_src;
  p.test_tgt = f.test_tgt;
  p.out_dir = out_dir;
  p.vocab_size = vocab_size;
  return prepare_corpus(p);
}

}  // namespace aiayn::data
