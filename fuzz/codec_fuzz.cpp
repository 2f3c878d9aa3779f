// Fuzz target for the native codec (mp::loads, the reader of bytes from other processes).
// The first input byte picks a type, the rest is decoded as that type. Decoding may only fail
// with std::invalid_argument; a value that decodes must re-encode, decode again to an equal
// value and re-encode to the same bytes. Seeds: fuzz/corpus/codec/ (this file built with
// -DMP_CODEC_FUZZ_WRITE_SEEDS and run with a folder writes them).
#include <multiprocessing/reduction.hpp>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

namespace {

enum class Color : std::uint8_t { red, green, blue };

struct Record {  // a user type: member serialize
  std::int32_t id = 0;
  std::string name;
  std::vector<std::pair<std::uint16_t, bool>> flags;
  std::optional<std::tuple<std::int8_t, std::set<std::int32_t>>> extra;
  std::deque<std::list<char>> lists;
  std::array<bool, 3> bits{};
  Color color = Color::red;
  mp::Bytes blob;
  bool raw[2] = {};
  std::int16_t grid[2][2] = {};
  template <class Archive>
  void serialize(Archive& ar) {
    ar(id, name, flags, extra, lists, bits, color, blob, raw, grid);
  }
  bool operator==(const Record&) const = default;
};

struct Split {  // a user type: free save/load
  std::vector<std::string> words;
  std::uint64_t total = 0;
  bool operator==(const Split&) const = default;
};
template <class Archive>
void save(Archive& ar, const Split& s) {
  ar(s.words, s.total);
}
template <class Archive>
void load(Archive& ar, Split& s) {
  ar(s.words, s.total);
}

struct Pod {  // a trivially copyable aggregate: its bytes
  std::int32_t a;
  std::uint16_t b;
  char c[2];
  bool operator==(const Pod&) const = default;
};

using Nested = std::map<std::string, std::vector<std::variant<std::int64_t, std::string, std::optional<double>,
                                                              std::monostate, std::vector<std::uint32_t>>>>;
using Hashed = std::unordered_map<std::int32_t, std::unordered_set<std::string>>;
using Mixed = std::tuple<std::vector<Pod>, std::list<Split>, std::vector<Record>, std::optional<Color>, float>;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "codec_fuzz: %s\n", what);
  std::abort();
}

// Decode; if that works, the round trip must hold. `equal` is false for types with floating
// point (NaN != NaN): their check is on the bytes only.
template <class T>
void check(std::span<const std::byte> data, bool equal) {
  T value;
  try {
    value = mp::loads<T>(data);
  } catch (const std::invalid_argument&) {
    return;
  }
  const mp::Bytes encoded = mp::dumps(value);
  T again;
  try {
    again = mp::loads<T>(encoded);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "%s\n", e.what());
    fail("a re-encoded value does not decode");
  }
  if (equal && !(again == value)) fail("a re-encoded value decodes to a different value");
  if (!equal || !std::is_same_v<T, Hashed>) {
    // (hash containers may iterate in another order after re-insertion)
    if (mp::dumps(again) != encoded) fail("a re-encoded value re-encodes differently");
  }
  // decoding into a value that already holds something (the reuse path) gives the same
  T reused = again;
  mp::detail::load_from(data, reused);
  if (equal && !(reused == value)) fail("decoding into a used value differs");
}

using Checker = void (*)(std::span<const std::byte>);
constexpr Checker kCheckers[] = {
    [](std::span<const std::byte> d) { check<Nested>(d, false); },
    [](std::span<const std::byte> d) { check<Record>(d, true); },
    [](std::span<const std::byte> d) { check<Split>(d, true); },
    [](std::span<const std::byte> d) { check<Pod>(d, true); },
    [](std::span<const std::byte> d) { check<Hashed>(d, true); },
    [](std::span<const std::byte> d) { check<Mixed>(d, false); },
    [](std::span<const std::byte> d) { check<std::vector<bool>>(d, true); },
    [](std::span<const std::byte> d) { check<std::string>(d, true); },
};
constexpr std::size_t kTypes = std::size(kCheckers);

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::span<const std::byte> rest(reinterpret_cast<const std::byte*>(data) + 1, size - 1);
  kCheckers[data[0] % kTypes](rest);
  return 0;
}

#ifdef MP_CODEC_FUZZ_WRITE_SEEDS
#include <fstream>
namespace {
template <class T>
void write_seed(const std::string& dir, std::uint8_t selector, const std::string& name, const T& value) {
  mp::Bytes b = mp::dumps(value);
  std::ofstream out(dir + "/" + name, std::ios::binary);
  out.put(static_cast<char>(selector));
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}
}  // namespace
int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string dir = argv[1];
  write_seed(dir, 0, "nested", Nested{{"a", {std::int64_t{-5}, std::string("xyz"), std::optional<double>(2.5)}},
                                      {"b", {std::monostate{}, std::optional<double>(), std::vector<std::uint32_t>{1, 2}}},
                                      {"", {}}});
  Record r{7, "record", {{1, true}, {65535, false}}, std::tuple<std::int8_t, std::set<std::int32_t>>{-3, {1, 9, 100}},
           {{'a', 'b'}, {}}, {true, false, true}, Color::blue, mp::bytes("blob"), {false, true}, {{1, -2}, {3, -4}}};
  write_seed(dir, 1, "record", r);
  write_seed(dir, 1, "record_empty", Record{});
  write_seed(dir, 2, "split", Split{{"one", "two", ""}, 42});
  write_seed(dir, 3, "pod", Pod{-1, 513, {'h', 'i'}});
  write_seed(dir, 4, "hashed", Hashed{{1, {"x", "y"}}, {-2, {}}});
  write_seed(dir, 5, "mixed",
             Mixed{{Pod{1, 2, {'a', 'b'}}, Pod{3, 4, {'c', 'd'}}}, {Split{{"w"}, 1}}, {r}, Color::green, 1.25f});
  write_seed(dir, 6, "vector_bool", std::vector<bool>{true, false, true, true});
  write_seed(dir, 7, "string", std::string("hello, codec"));
  return 0;
}
#endif
