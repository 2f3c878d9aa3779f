// A main() for any fuzz target (LLVMFuzzerTestOneInput) without libFuzzer, so that the fuzz
// targets run as ordinary tests under GCC too (as fmt's test/fuzzing/main.cc does):
//   <target>_replay [corpus folder or file]...
// feeds every corpus file, then deterministic pseudo-random byte strings, then mutations of the
// corpus files (bit flips, byte changes, truncations, insertions, spliced slices) through the
// target. A target reports a failure by aborting, as under libFuzzer. MP_FUZZ_REPLAY_ROUNDS
// (default 10000) sets how many random inputs and how many mutations are run.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

using Input = std::vector<std::uint8_t>;

// xorshift64*: deterministic across runs and platforms, so a failure is reproducible
struct Rng {
  std::uint64_t state;
  std::uint64_t next() {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1DULL;
  }
  std::size_t below(std::size_t n) { return n == 0 ? 0 : static_cast<std::size_t>(next() % n); }
};

void run(const Input& input) {
  // a copy of exactly the input's size, so that a read past its end is caught by ASan
  auto* copy = new std::uint8_t[input.size() + 1];
  std::copy(input.begin(), input.end(), copy);
  LLVMFuzzerTestOneInput(copy, input.size());
  delete[] copy;
}

Input read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return Input(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

Input mutate(const std::vector<Input>& corpus, Rng& rng) {
  Input m = corpus[rng.below(corpus.size())];
  const std::size_t edits = 1 + rng.below(4);
  for (std::size_t e = 0; e < edits; ++e) {
    switch (rng.below(7)) {
      case 0:  // flip a bit
        if (!m.empty()) m[rng.below(m.size())] ^= static_cast<std::uint8_t>(1u << rng.below(8));
        break;
      case 1:  // set a byte to a random or an interesting value
        if (!m.empty()) {
          static const std::uint8_t interesting[] = {0, 1, 2, 0x7f, 0x80, 0xff};
          m[rng.below(m.size())] =
              rng.below(2) ? static_cast<std::uint8_t>(rng.next()) : interesting[rng.below(sizeof interesting)];
        }
        break;
      case 2:  // truncate
        m.resize(rng.below(m.size() + 1));
        break;
      case 3:  // insert random bytes
      {
        const std::size_t at = rng.below(m.size() + 1), n = 1 + rng.below(8);
        Input bytes(n);
        for (auto& b : bytes) b = static_cast<std::uint8_t>(rng.next());
        m.insert(m.begin() + static_cast<std::ptrdiff_t>(at), bytes.begin(), bytes.end());
        break;
      }
      case 4:  // erase a slice
        if (!m.empty()) {
          const std::size_t at = rng.below(m.size()), n = 1 + rng.below(m.size() - at);
          m.erase(m.begin() + static_cast<std::ptrdiff_t>(at), m.begin() + static_cast<std::ptrdiff_t>(at + n));
        }
        break;
      case 5:  // overwrite 8 bytes with a large little-endian number (sizes, counts)
        if (m.size() >= 8) {
          const std::size_t at = rng.below(m.size() - 7);
          std::uint64_t v = rng.below(2) ? (std::uint64_t{1} << rng.below(64)) : rng.next();
          for (int i = 0; i < 8; ++i) m[at + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(v >> (8 * i));
        }
        break;
      default:  // splice in a slice of another corpus input
      {
        const Input& other = corpus[rng.below(corpus.size())];
        if (other.empty()) break;
        const std::size_t from = rng.below(other.size()), n = 1 + rng.below(other.size() - from);
        const std::size_t at = rng.below(m.size() + 1);
        m.insert(m.begin() + static_cast<std::ptrdiff_t>(at), other.begin() + static_cast<std::ptrdiff_t>(from),
                 other.begin() + static_cast<std::ptrdiff_t>(from + n));
        break;
      }
    }
  }
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Input> corpus;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path path(argv[i]);
    if (std::filesystem::is_directory(path)) {
      std::vector<std::filesystem::path> files;
      for (const auto& entry : std::filesystem::directory_iterator(path))
        if (entry.is_regular_file()) files.push_back(entry.path());
      std::sort(files.begin(), files.end());  // a fixed order, so that runs are reproducible
      for (const auto& file : files) corpus.push_back(read_file(file));
    } else if (std::filesystem::is_regular_file(path)) {
      corpus.push_back(read_file(path));
    } else {
      std::fprintf(stderr, "replay: %s is neither a file nor a folder\n", argv[i]);
      return 2;
    }
  }
  long rounds = 10000;
  if (const char* env = std::getenv("MP_FUZZ_REPLAY_ROUNDS")) rounds = std::strtol(env, nullptr, 10);

  for (const auto& input : corpus) run(input);
  std::printf("replay: %zu corpus inputs\n", corpus.size());

  Rng rng{0x9E3779B97F4A7C15ULL};
  for (long r = 0; r < rounds; ++r) {
    Input input(rng.below(r % 4 == 0 ? 1024 : 64));
    for (auto& b : input) b = static_cast<std::uint8_t>(rng.below(4) == 0 ? rng.below(3) : rng.next());
    run(input);
  }
  std::printf("replay: %ld random inputs\n", rounds);

  if (!corpus.empty()) {
    for (long r = 0; r < rounds; ++r) run(mutate(corpus, rng));
    std::printf("replay: %ld mutations of the corpus\n", rounds);
  }
  std::printf("replay: ok\n");
  return 0;
}
