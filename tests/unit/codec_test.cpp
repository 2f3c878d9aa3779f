// The native codec: mp::dumps / mp::loads<T> round trips, its fixed layout, its refusal of
// malformed input (without crashing or over-allocating), the hot-path helpers, and the
// descriptor hand-over FdExport / FdImport.
#include <multiprocessing/reduction.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <list>
#include <map>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <variant>
#include <vector>

// ---- allocation counting (only while a test asks for it) ----
namespace {
std::atomic<bool> counting{false};
std::atomic<std::size_t> allocations{0};
std::atomic<std::size_t> largest_allocation{0};
}  // namespace

[[gnu::noinline]] void* operator new(std::size_t size) {
  if (counting.load(std::memory_order_relaxed)) {
    allocations.fetch_add(1, std::memory_order_relaxed);
    std::size_t seen = largest_allocation.load(std::memory_order_relaxed);
    while (size > seen && !largest_allocation.compare_exchange_weak(seen, size)) {
    }
  }
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
// (not inlined: GCC would otherwise see free() meet a new-expression and warn)
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

// Counts the allocations made while it lives.
class AllocationCounter {
 public:
  AllocationCounter() {
    allocations = 0;
    largest_allocation = 0;
    counting = true;
  }
  ~AllocationCounter() { counting = false; }
  AllocationCounter(const AllocationCounter&) = delete;
  AllocationCounter& operator=(const AllocationCounter&) = delete;
  std::size_t count() const { return allocations.load(); }
  std::size_t largest() const { return largest_allocation.load(); }
};

// ---- types of the tests ----

enum class Color : std::uint8_t { red = 1, green = 2, blue = 3 };
enum Plain { plain_a = -1, plain_b = 70000 };

struct Point {  // member serialize (the documented convention)
  double x = 0, y = 0;
  std::string label;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(x, y, label);
  }
  bool operator==(const Point&) const = default;
};

struct FreeSerialized {  // free serialize
  int a = 0;
  std::vector<std::string> b;
  bool operator==(const FreeSerialized&) const = default;
};
template <class Archive>
void serialize(Archive& ar, FreeSerialized& v) {
  ar(v.a, v.b);
}

struct FreeSplit {  // free save / load
  std::map<int, std::string> m;
  bool operator==(const FreeSplit&) const = default;
};
template <class Archive>
void save(Archive& ar, const FreeSplit& v) {
  ar(v.m);
}
template <class Archive>
void load(Archive& ar, FreeSplit& v) {
  ar(v.m);
}

class MemberSplit {  // member save / load, private, through cereal::access
 public:
  MemberSplit() = default;
  explicit MemberSplit(std::string s) : s_(std::move(s)) {}
  bool operator==(const MemberSplit&) const = default;

 private:
  friend class cereal::access;
  template <class Archive>
  void save(Archive& ar) const {
    ar(s_);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(s_);
  }
  std::string s_;
};

struct Minimal {  // save_minimal / load_minimal
  int value = 0;
  template <class Archive>
  int save_minimal(const Archive&) const {
    return value;
  }
  template <class Archive>
  void load_minimal(const Archive&, const int& v) {
    value = v;
  }
  bool operator==(const Minimal&) const = default;
};

struct Pod {  // trivially copyable aggregate without serialize: its bytes
  std::int32_t a;
  double b;
  char tag[4];
  bool operator==(const Pod&) const = default;
};

struct PodWithSerialize {  // trivially copyable too, but its own serialize wins
  std::int32_t a;
  std::int32_t b;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(b);  // only b, so that the test sees which one ran
  }
};

struct WithArrays {  // C arrays inside a serialize
  bool flags[2] = {};
  int grid[2][2] = {};
  std::string names[2];
  template <class Archive>
  void serialize(Archive& ar) {
    ar(flags, grid, names);
  }
  bool operator==(const WithArrays& o) const {
    return std::equal(flags, flags + 2, o.flags) && std::equal(&grid[0][0], &grid[0][0] + 4, &o.grid[0][0]) &&
           std::equal(names, names + 2, o.names);
  }
};

struct EmptyPod {
  bool operator==(const EmptyPod&) const = default;
};

struct Nothing {  // writes nothing at all
  template <class Archive>
  void serialize(Archive&) {}
};

struct NotSerializable {
  std::string s;  // not trivially copyable, no serialize
};

struct NoDefault {
  explicit NoDefault(int v) : value(v) {}
  int value;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

mp::Bytes concat(std::initializer_list<mp::Bytes> parts) {
  mp::Bytes out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

template <class T>
mp::Bytes le(T value) {  // the little-endian bytes of an integer
  mp::Bytes out(sizeof(T));
  std::memcpy(out.data(), &value, sizeof(T));
  return out;
}

template <class T>
T round_trip(const T& value) {
  return mp::loads<T>(mp::dumps(value));
}

// Every proper prefix of the encoding of value is refused.
template <class T>
void expect_every_truncation_refused(const T& value) {
  const mp::Bytes full = mp::dumps(value);
  for (std::size_t n = 0; n < full.size(); ++n) {
    EXPECT_THROW(mp::loads<T>(std::span(full.data(), n)), std::invalid_argument) << "prefix of " << n << " bytes";
  }
  EXPECT_NO_THROW(mp::loads<T>(full));
}

std::string load_error(std::span<const std::byte> data, auto loader) {
  try {
    loader(data);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Codec, the_allocation_counter_sees_allocations) {  // so that the counts below mean something
  AllocationCounter counter;
  auto* v = new std::vector<int>(1000);
  EXPECT_EQ(counter.count(), 2u);
  EXPECT_EQ(counter.largest(), 4000u);
  delete v;
}

// ---- round trips ----

TEST(Codec, arithmetic_values_round_trip) {
  EXPECT_EQ(round_trip<std::int8_t>(-128), -128);
  EXPECT_EQ(round_trip<std::uint8_t>(255), 255);
  EXPECT_EQ(round_trip<std::int16_t>(-30000), -30000);
  EXPECT_EQ(round_trip<std::uint16_t>(65535), 65535);
  EXPECT_EQ(round_trip<std::int32_t>(std::numeric_limits<std::int32_t>::min()), std::numeric_limits<std::int32_t>::min());
  EXPECT_EQ(round_trip<std::uint32_t>(4000000000u), 4000000000u);
  EXPECT_EQ(round_trip<std::int64_t>(std::numeric_limits<std::int64_t>::min()), std::numeric_limits<std::int64_t>::min());
  EXPECT_EQ(round_trip<std::uint64_t>(std::numeric_limits<std::uint64_t>::max()),
            std::numeric_limits<std::uint64_t>::max());
  EXPECT_EQ(round_trip<float>(1.5f), 1.5f);
  EXPECT_EQ(round_trip<double>(-2.25e300), -2.25e300);
  EXPECT_EQ(round_trip<long double>(1.0L / 3), 1.0L / 3);
  EXPECT_EQ(round_trip<char>('z'), 'z');
  EXPECT_EQ(round_trip<char32_t>(U'\U0001F600'), U'\U0001F600');
  EXPECT_EQ(round_trip<bool>(true), true);
  EXPECT_EQ(round_trip<bool>(false), false);
  EXPECT_EQ(round_trip<long>(-5L), -5L);
}

TEST(Codec, enums_round_trip_as_their_underlying_type) {
  EXPECT_EQ(round_trip(Color::blue), Color::blue);
  EXPECT_EQ(round_trip(plain_b), plain_b);
  EXPECT_EQ(round_trip(plain_a), plain_a);
  EXPECT_EQ(mp::dumps(Color::green), le<std::uint8_t>(2));
  EXPECT_EQ(mp::dumps(std::byte{0xab}), le<std::uint8_t>(0xab));
  EXPECT_EQ(mp::dumps(plain_b).size(), sizeof(std::underlying_type_t<Plain>));
}

TEST(Codec, strings_and_bytes_round_trip) {
  EXPECT_EQ(round_trip(std::string()), "");
  const std::string with_nuls("a\0b\0c", 5);
  EXPECT_EQ(round_trip(with_nuls), with_nuls);
  const std::string big(100000, 'q');
  EXPECT_EQ(round_trip(big), big);
  EXPECT_EQ(round_trip(std::u16string(u"h\u00e9llo")), u"h\u00e9llo");
  EXPECT_EQ(round_trip(std::wstring(L"wide")), L"wide");
  const mp::Bytes bytes = mp::bytes(std::string_view("\x00\x01\xff payload", 12));
  EXPECT_EQ(round_trip(bytes), bytes);
  EXPECT_EQ(round_trip(mp::Bytes{}), mp::Bytes{});
}

TEST(Codec, sequences_round_trip) {
  EXPECT_EQ(round_trip(std::vector<int>{1, -2, 3}), (std::vector<int>{1, -2, 3}));
  EXPECT_EQ(round_trip(std::vector<double>{}), std::vector<double>{});
  EXPECT_EQ(round_trip(std::vector<std::string>{"a", "", "ccc"}), (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_EQ(round_trip(std::vector<bool>{true, false, true}), (std::vector<bool>{true, false, true}));
  EXPECT_EQ(round_trip(std::vector<unsigned char>{0, 200}), (std::vector<unsigned char>{0, 200}));
  EXPECT_EQ(round_trip(std::array<int, 3>{7, 8, 9}), (std::array<int, 3>{7, 8, 9}));
  EXPECT_EQ(round_trip(std::array<bool, 2>{true, false}), (std::array<bool, 2>{true, false}));
  EXPECT_EQ(round_trip(std::array<std::string, 2>{"x", "y"}), (std::array<std::string, 2>{"x", "y"}));
  EXPECT_EQ(round_trip(std::deque<short>{1, 2}), (std::deque<short>{1, 2}));
  EXPECT_EQ(round_trip(std::list<std::string>{"l1", "l2"}), (std::list<std::string>{"l1", "l2"}));
  EXPECT_EQ(round_trip(std::vector<Color>{Color::red, Color::blue}), (std::vector<Color>{Color::red, Color::blue}));
}

TEST(Codec, associative_containers_round_trip) {
  const std::map<std::string, double> m{{"pi", 3.14159}, {"e", 2.71828}};
  EXPECT_EQ(round_trip(m), m);
  const std::unordered_map<int, std::vector<int>> um{{1, {1}}, {2, {2, 2}}, {-3, {}}};
  EXPECT_EQ(round_trip(um), um);
  const std::set<std::string> s{"b", "a"};
  EXPECT_EQ(round_trip(s), s);
  const std::unordered_set<long> us{5, 6, 7};
  EXPECT_EQ(round_trip(us), us);
  EXPECT_EQ(round_trip(std::map<int, int>{}), (std::map<int, int>{}));
}

TEST(Codec, optional_variant_pair_tuple_monostate_round_trip) {
  EXPECT_EQ(round_trip(std::optional<int>()), std::nullopt);
  EXPECT_EQ(round_trip(std::optional<std::string>("x")), std::optional<std::string>("x"));
  using V = std::variant<std::monostate, int, std::string, std::vector<double>>;
  EXPECT_EQ(round_trip(V{}), V{});
  EXPECT_EQ(round_trip(V{42}), V{42});
  EXPECT_EQ(round_trip(V{std::string("s")}), V{std::string("s")});
  EXPECT_EQ(round_trip(V{std::vector<double>{1.5}}), V{std::vector<double>{1.5}});
  EXPECT_EQ(round_trip(std::pair<int, std::string>{1, "one"}), (std::pair<int, std::string>{1, "one"}));
  EXPECT_EQ(round_trip(std::tuple<int, std::string, bool>{1, "two", true}),
            (std::tuple<int, std::string, bool>{1, "two", true}));
  EXPECT_EQ(round_trip(std::tuple<>{}), std::tuple<>{});
  EXPECT_EQ(round_trip(std::monostate{}), std::monostate{});
  EXPECT_EQ(round_trip(std::vector<std::monostate>(5)), std::vector<std::monostate>(5));
  EXPECT_EQ(round_trip(std::vector<std::tuple<>>(5)), std::vector<std::tuple<>>(5));  // a call without arguments
}

TEST(Codec, nested_values_round_trip) {
  using Deep = std::map<std::string, std::vector<std::variant<int, std::optional<std::tuple<std::string, std::set<int>>>,
                                                             std::list<std::pair<char, std::deque<bool>>>>>>;
  Deep deep;
  deep["a"].emplace_back(3);
  deep["a"].emplace_back(std::optional<std::tuple<std::string, std::set<int>>>({"t", {1, 2, 3}}));
  deep["b"].emplace_back(std::list<std::pair<char, std::deque<bool>>>{{'c', {true, false}}, {'d', {}}});
  deep["c"];
  EXPECT_EQ(round_trip(deep), deep);
  const std::vector<std::unordered_map<std::string, std::array<std::vector<int>, 2>>> v{{{"k", {{{1}, {2, 3}}}}}, {}};
  EXPECT_EQ(round_trip(v), v);
}

TEST(Codec, user_types_round_trip) {
  EXPECT_EQ(round_trip(Point{1.5, -2.0, "p"}), (Point{1.5, -2.0, "p"}));
  EXPECT_EQ(round_trip(FreeSerialized{3, {"x", "y"}}), (FreeSerialized{3, {"x", "y"}}));
  EXPECT_EQ(round_trip(FreeSplit{{{1, "one"}, {2, "two"}}}), (FreeSplit{{{1, "one"}, {2, "two"}}}));
  EXPECT_EQ(round_trip(MemberSplit("secret")), MemberSplit("secret"));
  EXPECT_EQ(round_trip(Minimal{77}), Minimal{77});
  EXPECT_EQ(round_trip(std::vector<Point>{{1, 2, "a"}, {3, 4, "b"}}), (std::vector<Point>{{1, 2, "a"}, {3, 4, "b"}}));
  EXPECT_EQ(round_trip(std::map<int, Point>{{1, {0, 0, "o"}}}), (std::map<int, Point>{{1, {0, 0, "o"}}}));
  EXPECT_EQ(round_trip(std::optional<MemberSplit>(MemberSplit("m"))), std::optional<MemberSplit>(MemberSplit("m")));
  WithArrays arrays{{true, false}, {{1, 2}, {3, 4}}, {"n1", "n2"}};
  EXPECT_EQ(round_trip(arrays), arrays);
}

TEST(Codec, trivially_copyable_aggregates_cross_as_their_bytes) {
  const Pod pod{-7, 0.5, {'a', 'b', 'c', 'd'}};
  EXPECT_EQ(mp::dumps(pod).size(), sizeof(Pod));
  EXPECT_EQ(round_trip(pod), pod);
  const std::vector<Pod> pods{pod, Pod{1, 2, {'w', 'x', 'y', 'z'}}};
  EXPECT_EQ(mp::dumps(pods).size(), 8 + 2 * sizeof(Pod));
  EXPECT_EQ(round_trip(pods), pods);
  EXPECT_EQ(round_trip(std::map<int, Pod>{{1, pod}}), (std::map<int, Pod>{{1, pod}}));
  EXPECT_EQ(mp::dumps(EmptyPod{}).size(), 1u);
  EXPECT_EQ(round_trip(std::vector<EmptyPod>(3)), std::vector<EmptyPod>(3));
}

TEST(Codec, a_types_own_serialize_wins_over_the_bytewise_fallback) {
  const mp::Bytes encoded = mp::dumps(PodWithSerialize{1, 2});
  EXPECT_EQ(encoded, le<std::int32_t>(2));
  EXPECT_EQ(mp::loads<PodWithSerialize>(encoded).b, 2);
}

// ---- the fixed layout ----

TEST(Codec, layout_is_little_endian_with_uint64_sizes) {
  EXPECT_EQ(mp::dumps(std::int32_t{0x01020304}), le<std::int32_t>(0x01020304));
  EXPECT_EQ(mp::dumps(std::string("ab")), concat({le<std::uint64_t>(2), mp::bytes("ab")}));
  EXPECT_EQ(mp::dumps(std::vector<std::uint16_t>{1, 2}),
            concat({le<std::uint64_t>(2), le<std::uint16_t>(1), le<std::uint16_t>(2)}));
  EXPECT_EQ(mp::dumps(true), le<std::uint8_t>(1));
  EXPECT_EQ(mp::dumps(std::optional<std::int16_t>()), le<std::uint8_t>(1));  // "nullopt" flag first
  EXPECT_EQ(mp::dumps(std::optional<std::int16_t>(5)), concat({le<std::uint8_t>(0), le<std::int16_t>(5)}));
  EXPECT_EQ(mp::dumps(std::variant<int, std::int8_t>(std::int8_t{9})),
            concat({le<std::int32_t>(1), le<std::int8_t>(9)}));
  EXPECT_EQ(mp::dumps(std::map<std::int8_t, bool>{{3, true}}),
            concat({le<std::uint64_t>(1), le<std::int8_t>(3), le<std::uint8_t>(1)}));
  EXPECT_EQ(mp::dumps(Point{1, 2, "p"}),
            concat({le<double>(1), le<double>(2), le<std::uint64_t>(1), mp::bytes("p")}));
}

// ---- malformed input ----

TEST(Codec, every_truncation_is_refused) {
  expect_every_truncation_refused(std::int64_t{-1});
  expect_every_truncation_refused(std::string("hello"));
  expect_every_truncation_refused(std::vector<int>{1, 2, 3});
  expect_every_truncation_refused(mp::bytes("bytes"));
  expect_every_truncation_refused(std::map<std::string, std::vector<double>>{{"a", {1}}, {"bb", {2, 3}}});
  expect_every_truncation_refused(Point{1, 2, "label"});
  expect_every_truncation_refused(std::tuple<std::optional<int>, std::variant<std::string, Pod>, std::list<bool>>{
      5, Pod{1, 2, {}}, {true, false}});
  expect_every_truncation_refused(std::unordered_map<int, std::set<std::string>>{{1, {"x"}}});
}

TEST(Codec, data_left_over_after_the_value_is_refused) {
  mp::Bytes data = mp::dumps(42);
  data.push_back(std::byte{0});
  EXPECT_THROW(mp::loads<int>(data), std::invalid_argument);
  const std::string what = load_error(data, [](auto d) { mp::loads<int>(d); });
  EXPECT_NE(what.find("left over"), std::string::npos) << what;
  EXPECT_NE(what.find("mp::loads<int>"), std::string::npos) << what;
}

TEST(Codec, a_value_of_another_type_is_refused) {
  EXPECT_THROW(mp::loads<int>(mp::dumps(std::string("hello"))), std::invalid_argument);
  EXPECT_THROW(mp::loads<std::vector<double>>(mp::dumps(std::vector<int>{1, 2, 3})), std::invalid_argument);
  EXPECT_THROW(mp::loads<std::string>(mp::dumps(3.5)), std::invalid_argument);
  EXPECT_THROW(mp::loads<Point>(mp::dumps(std::vector<int>{1})), std::invalid_argument);
  EXPECT_THROW(mp::loads<std::int64_t>(mp::dumps(std::int32_t{1})), std::invalid_argument);
}

TEST(Codec, huge_sizes_are_refused_before_anything_is_allocated) {
  // a size of 2^60 followed by 8 bytes: 16 bytes in all
  const mp::Bytes data = concat({le<std::uint64_t>(std::uint64_t{1} << 60), le<std::uint64_t>(0)});
  AllocationCounter counter;
  EXPECT_THROW(mp::loads<std::vector<int>>(data), std::invalid_argument);
  EXPECT_THROW(mp::loads<std::vector<std::string>>(data), std::invalid_argument);
  EXPECT_THROW(mp::loads<std::vector<bool>>(data), std::invalid_argument);
  EXPECT_THROW(mp::loads<mp::Bytes>(data), std::invalid_argument);
  EXPECT_THROW(mp::loads<std::string>(data), std::invalid_argument);
  EXPECT_THROW(mp::loads<std::u32string>(data), std::invalid_argument);
  EXPECT_THROW((mp::loads<std::deque<int>>(data)), std::invalid_argument);
  EXPECT_THROW((mp::loads<std::list<int>>(data)), std::invalid_argument);
  EXPECT_THROW((mp::loads<std::map<int, int>>(data)), std::invalid_argument);
  EXPECT_THROW((mp::loads<std::unordered_map<int, int>>(data)), std::invalid_argument);
  EXPECT_THROW((mp::loads<std::set<int>>(data)), std::invalid_argument);
  EXPECT_THROW((mp::loads<std::unordered_set<int>>(data)), std::invalid_argument);
  EXPECT_THROW((mp::loads<std::vector<Point>>(data)), std::invalid_argument);
  EXPECT_THROW((mp::loads<std::vector<Pod>>(data)), std::invalid_argument);
  // only the error messages were allocated
  EXPECT_LT(counter.largest(), 1024u);
}

TEST(Codec, contiguous_data_is_checked_as_bytes_not_elements) {
  // 3 doubles claimed, 16 bytes follow: refused before resizing (3 <= 16, but 24 > 16)
  const mp::Bytes data = concat({le<std::uint64_t>(3), le<double>(1), le<double>(2)});
  AllocationCounter counter;
  EXPECT_THROW(mp::loads<std::vector<double>>(data), std::invalid_argument);
  EXPECT_THROW(mp::loads<std::u32string>(data), std::invalid_argument);
  EXPECT_LT(counter.largest(), 1024u);
}

TEST(Codec, a_container_never_gets_more_elements_than_bytes_follow) {
  // 16 strings claimed, 16 bytes follow: each string needs at least 8, so this is refused
  const mp::Bytes data = concat({le<std::uint64_t>(16), le<std::uint64_t>(0), le<std::uint64_t>(0)});
  AllocationCounter counter;
  EXPECT_THROW(mp::loads<std::vector<std::string>>(data), std::invalid_argument);
  EXPECT_LT(counter.largest(), 16 * sizeof(std::string));
}

TEST(Codec, an_invalid_bool_is_refused) {
  EXPECT_THROW(mp::loads<bool>(le<std::uint8_t>(2)), std::invalid_argument);
  EXPECT_THROW(mp::loads<bool>(le<std::uint8_t>(0xff)), std::invalid_argument);
  EXPECT_THROW(mp::loads<std::vector<bool>>(concat({le<std::uint64_t>(1), le<std::uint8_t>(7)})),
               std::invalid_argument);
  EXPECT_THROW((mp::loads<std::array<bool, 2>>(concat({le<std::uint8_t>(1), le<std::uint8_t>(3)}))),
               std::invalid_argument);
  EXPECT_THROW(mp::loads<std::optional<int>>(concat({le<std::uint8_t>(2), le<std::int32_t>(1)})),
               std::invalid_argument);
  mp::Bytes arrays = mp::dumps(WithArrays{});
  arrays[1] = std::byte{2};  // flags[1]
  EXPECT_THROW(mp::loads<WithArrays>(arrays), std::invalid_argument);
  const std::string what = load_error(le<std::uint8_t>(2), [](auto d) { mp::loads<bool>(d); });
  EXPECT_NE(what.find("bool"), std::string::npos) << what;
}

TEST(Codec, a_variant_index_out_of_range_is_refused) {
  using V = std::variant<int, std::string>;
  EXPECT_THROW(mp::loads<V>(concat({le<std::int32_t>(2), le<std::int32_t>(0)})), std::invalid_argument);
  EXPECT_THROW(mp::loads<V>(concat({le<std::int32_t>(-1), le<std::int32_t>(0)})), std::invalid_argument);
  EXPECT_EQ(mp::loads<V>(concat({le<std::int32_t>(0), le<std::int32_t>(5)})), V{5});
  const std::string what =
      load_error(concat({le<std::int32_t>(9), le<std::int32_t>(0)}), [](auto d) { mp::loads<V>(d); });
  EXPECT_NE(what.find("variant index 9"), std::string::npos) << what;
  EXPECT_THROW(mp::loads<std::monostate>(le<std::uint8_t>(1)), std::invalid_argument);
  EXPECT_THROW(mp::loads<std::tuple<>>(le<std::uint8_t>(1)), std::invalid_argument);
  // An empty value takes a byte, so a count of them is bounded by the input like any other.
  EXPECT_THROW(mp::loads<std::vector<std::tuple<>>>(le<std::uint64_t>(std::uint64_t{1} << 60)), std::invalid_argument);
}

TEST(Codec, errors_name_the_type_and_the_problem) {
  const mp::Bytes data = concat({le<std::uint64_t>(1000), le<std::int32_t>(1)});
  const std::string what = load_error(data, [](auto d) { mp::loads<std::map<std::string, int>>(d); });
  EXPECT_NE(what.find("mp::loads<std::map<std::string, int"), std::string::npos) << what;
  EXPECT_NE(what.find("1000 elements"), std::string::npos) << what;
  const std::string truncated = load_error(le<std::int16_t>(1), [](auto d) { mp::loads<Point>(d); });
  EXPECT_NE(truncated.find("Point"), std::string::npos) << truncated;
  EXPECT_NE(truncated.find("truncated"), std::string::npos) << truncated;
}

TEST(Codec, elements_that_encode_to_nothing_are_limited_by_the_bytes_left) {
  // the documented limit: a size is checked against the bytes after it
  EXPECT_EQ(mp::dumps(Nothing{}).size(), 0u);
  EXPECT_THROW(mp::loads<std::vector<Nothing>>(mp::dumps(std::vector<Nothing>(3))), std::invalid_argument);
  EXPECT_NO_THROW(mp::loads<std::vector<Nothing>>(mp::dumps(std::vector<Nothing>{})));
}

// ---- the trait and the hot-path helpers ----

static_assert(mp::detail::is_serializable_v<int>);
static_assert(mp::detail::is_serializable_v<const Color&>);
static_assert(mp::detail::is_serializable_v<std::string>);
static_assert(mp::detail::is_serializable_v<mp::Bytes>);
static_assert(mp::detail::is_serializable_v<std::vector<std::map<std::string, std::optional<Point>>>>);
static_assert(mp::detail::is_serializable_v<std::variant<std::monostate, int, std::tuple<Pod, std::list<char>>>>);
static_assert(mp::detail::is_serializable_v<FreeSerialized>);
static_assert(mp::detail::is_serializable_v<FreeSplit>);
static_assert(mp::detail::is_serializable_v<MemberSplit>);
static_assert(mp::detail::is_serializable_v<Minimal>);
static_assert(mp::detail::is_serializable_v<Pod>);
static_assert(mp::detail::is_serializable_v<std::array<Pod, 2>>);
static_assert(!mp::detail::is_serializable_v<int*>);
static_assert(!mp::detail::is_serializable_v<const char*>);
static_assert(!mp::detail::is_serializable_v<std::string_view>);
static_assert(!mp::detail::is_serializable_v<NotSerializable>);
static_assert(!mp::detail::is_serializable_v<std::vector<NotSerializable>>);
static_assert(!mp::detail::is_serializable_v<std::map<int, int*>>);
static_assert(!mp::detail::is_serializable_v<NoDefault>);
static_assert(!mp::detail::is_serializable_v<std::pair<int, std::string_view>>);

TEST(Codec, is_serializable_sees_a_capturing_lambda_as_not_serializable) {
  int captured = 1;
  auto lambda = [captured] { return captured; };
  EXPECT_FALSE(mp::detail::is_serializable_v<decltype(lambda)>);
  EXPECT_EQ(lambda(), 1);
}

TEST(Codec, dump_into_reuses_the_buffer_without_allocating) {
  mp::Bytes buffer;
  buffer.reserve(256);
  buffer.push_back(std::byte{0x55});  // dump_into clears what was there
  const Point p{1, 2, "a label"};
  {
    AllocationCounter counter;
    for (int i = 0; i < 100; ++i) mp::detail::dump_into(buffer, p);
    EXPECT_EQ(counter.count(), 0u);
  }
  EXPECT_EQ(buffer, mp::dumps(p));
}

TEST(Codec, load_from_reuses_the_target_without_allocating) {
  const mp::Bytes encoded = mp::dumps(Point{3, 4, "a label of some length"});
  Point target{0, 0, std::string(64, 'x')};  // capacity enough for the label
  const mp::Bytes vec = mp::dumps(std::vector<double>(100, 1.5));
  std::vector<double> numbers(200);
  {
    AllocationCounter counter;
    for (int i = 0; i < 100; ++i) {
      mp::detail::load_from(encoded, target);
      mp::detail::load_from(vec, numbers);
    }
    EXPECT_EQ(counter.count(), 0u);
  }
  EXPECT_EQ(target, (Point{3, 4, "a label of some length"}));
  EXPECT_EQ(numbers, std::vector<double>(100, 1.5));
}

TEST(Codec, load_from_replaces_what_the_target_held) {
  std::map<int, std::string> m{{9, "nine"}};
  mp::detail::load_from(mp::dumps(std::map<int, std::string>{{1, "one"}}), m);
  EXPECT_EQ(m, (std::map<int, std::string>{{1, "one"}}));
  std::variant<int, std::string> v = std::string("old");
  mp::detail::load_from(mp::dumps(std::variant<int, std::string>(std::string("new"))), v);
  EXPECT_EQ(v, (std::variant<int, std::string>(std::string("new"))));
  std::vector<std::string> strings{"a", "b", "c"};
  mp::detail::load_from(mp::dumps(std::vector<std::string>{"x"}), strings);
  EXPECT_EQ(strings, std::vector<std::string>{"x"});
}

// ---- descriptors of handles ----

bool fd_is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1 || errno != EBADF; }

std::array<int, 2> make_pipe() {
  std::array<int, 2> fds{};
  if (::pipe2(fds.data(), O_CLOEXEC) != 0) throw std::system_error(errno, std::system_category(), "pipe2");
  return fds;
}

TEST(FdExport, export_fd_without_an_exporter_is_refused) {
  EXPECT_THROW(mp::detail::export_fd(0), std::invalid_argument);
}

TEST(FdExport, export_fd_registers_with_the_innermost_exporter) {
  mp::detail::FdExport outer;
  EXPECT_EQ(mp::detail::export_fd(10), 0);
  {
    mp::detail::FdExport inner;
    EXPECT_EQ(mp::detail::export_fd(11), 0);
    EXPECT_EQ(mp::detail::export_fd(12), 1);
    EXPECT_EQ(inner.fds(), (std::vector<int>{11, 12}));
  }
  EXPECT_EQ(mp::detail::export_fd(13), 1);
  EXPECT_EQ(outer.fds(), (std::vector<int>{10, 13}));
}

TEST(FdImport, import_fd_hands_each_descriptor_over_once) {
  const auto fds = make_pipe();
  {
    mp::detail::FdImport import(std::vector<int>{fds[0], fds[1]});
    EXPECT_EQ(mp::detail::import_fd(1), fds[1]);
    EXPECT_THROW(mp::detail::import_fd(1), std::invalid_argument);
    EXPECT_THROW(mp::detail::import_fd(2), std::invalid_argument);
  }
  // fds[1] was claimed: still open; fds[0] was not: closed by the FdImport
  EXPECT_TRUE(fd_is_open(fds[1]));
  EXPECT_FALSE(fd_is_open(fds[0]));
  ::close(fds[1]);
}

TEST(FdImport, import_fd_without_an_importer_is_refused) {
  EXPECT_THROW(mp::detail::import_fd(0), std::invalid_argument);
}

TEST(FdImport, nested_importers_restore_the_outer_one) {
  const auto a = make_pipe();
  mp::detail::FdImport outer(std::vector<int>{a[0]});
  {
    mp::detail::FdImport inner(std::vector<int>{a[1]});
    EXPECT_EQ(mp::detail::import_fd(0), a[1]);
  }
  EXPECT_EQ(mp::detail::import_fd(0), a[0]);
  ::close(a[0]);
  ::close(a[1]);
}

// A handle-like type that crosses by its descriptor, as Connection does.
struct FdHolder {
  int fd = -1;
  template <class Archive>
  void save(Archive& ar) const {
    ar(mp::detail::export_fd(fd));
  }
  template <class Archive>
  void load(Archive& ar) {
    int index = -1;
    ar(index);
    fd = mp::detail::import_fd(static_cast<std::size_t>(index));
  }
};

TEST(FdExport, a_handle_crosses_by_its_descriptor_index) {
  const auto fds = make_pipe();
  mp::Bytes encoded;
  std::vector<int> passed;
  {
    mp::detail::FdExport exporter;
    encoded = mp::dumps(std::vector<FdHolder>{{fds[0]}, {fds[1]}});
    passed = exporter.fds();
  }
  EXPECT_EQ(passed, (std::vector<int>{fds[0], fds[1]}));
  EXPECT_THROW(mp::dumps(FdHolder{fds[0]}), std::invalid_argument);  // outside an FdExport
  mp::detail::FdImport importer(passed);
  const auto loaded = mp::loads<std::vector<FdHolder>>(encoded);
  ASSERT_EQ(loaded.size(), 2u);
  EXPECT_EQ(loaded[0].fd, fds[0]);
  EXPECT_EQ(loaded[1].fd, fds[1]);
  ::close(fds[0]);
  ::close(fds[1]);
}

}  // namespace
