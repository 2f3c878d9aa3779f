// The fast paths of mp::pickle, each against the general path it shortcuts: texts of every
// length made as whole words (inline up to 14 bytes, boxed beyond), the short-text UTF-8 check,
// std::map reads that build each str key in its node (sorted, unsorted, repeated keys, values
// that are not trivially copyable), the Pickler's one-call str -> int items, and the first dict's
// key list that a second dict turns into the key memo.
#include <multiprocessing/pickle.hpp>
#include "helpers/hex.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using mp::Bytes;
using mp::pickle::Value;
namespace pickle = mp::pickle;

using mp::testing::from_hex;

// A protocol 4 pickle of a str of any bytes (SHORT_BINUNICODE, MEMOIZE), unchecked.
Bytes str_pickle(const std::string& raw) {
  Bytes out = from_hex("80 04 8c");
  out.push_back(static_cast<std::byte>(raw.size()));
  for (char c : raw) out.push_back(static_cast<std::byte>(c));
  out.push_back(std::byte{0x94});
  out.push_back(std::byte{0x2e});
  return out;
}

std::string text_of_length(std::size_t n, char first) {
  std::string s;
  for (std::size_t i = 0; i < n; ++i) s += static_cast<char>('a' + (static_cast<std::size_t>(first - 'a') + i) % 26);
  return s;
}

TEST(PickleFastPaths, texts_of_every_length_keep_their_bytes_and_compare_and_hash_as_equal) {
  for (std::size_t n = 0; n <= 40; ++n) {
    const std::string s = text_of_length(n, 'a');
    const Value made = s;
    const Value loaded = pickle::loads(pickle::dumps(s));
    EXPECT_EQ(loaded.as<std::string>(), s) << n;
    EXPECT_EQ(loaded, made) << n;
    EXPECT_EQ(loaded.repr(), "'" + s + "'") << n;
    EXPECT_EQ(pickle::dumps(loaded), pickle::dumps(made)) << n;
    // bytes of the same length, and a text that differs from s in its last byte only
    EXPECT_EQ(pickle::loads(pickle::dumps(Value(Bytes(n, std::byte{0x41})))).size(), n);
    if (n > 0) {
      std::string other = s;
      other.back() = 'Z';
      EXPECT_FALSE(pickle::loads(pickle::dumps(other)) == made) << n;
    }
  }
  // as dict keys: found by lookup (hashes of equal texts agree however they were made)
  auto d = Value::dict();
  for (std::size_t n = 0; n <= 40; ++n) d.set_item(text_of_length(n, 'k'), static_cast<long>(n));
  const Value back = pickle::loads(pickle::dumps(d));
  ASSERT_EQ(back.size(), 41u);
  for (std::size_t n = 0; n <= 40; ++n) EXPECT_EQ(back[text_of_length(n, 'k')].as<long>(), static_cast<long>(n)) << n;
  EXPECT_EQ(back, d);
}

TEST(PickleFastPaths, the_short_text_check_finds_a_bad_byte_at_any_position) {
  for (std::size_t n = 1; n <= 20; ++n) {
    for (std::size_t at = 0; at < n; ++at) {
      std::string bad = text_of_length(n, 'a');
      bad[at] = static_cast<char>(0xff);
      EXPECT_THROW(pickle::dumps(bad), std::invalid_argument) << n << " " << at;
      EXPECT_THROW(pickle::dumps(std::map<std::string, long>{{bad, 1}}), std::invalid_argument) << n << " " << at;
      EXPECT_THROW(pickle::loads(str_pickle(bad)), std::invalid_argument) << n << " " << at;
      EXPECT_THROW(pickle::loads<std::string>(str_pickle(bad)), std::invalid_argument) << n << " " << at;
    }
    if (n >= 2) {  // a two-byte character (U+00E9) at every position that fits it is accepted
      for (std::size_t at = 0; at + 1 < n; ++at) {
        std::string good = text_of_length(n, 'a');
        good[at] = static_cast<char>(0xc3);
        good[at + 1] = static_cast<char>(0xa9);
        EXPECT_EQ(pickle::loads<std::string>(pickle::dumps(good)), good) << n << " " << at;
        EXPECT_EQ(pickle::loads(str_pickle(good)).as<std::string>(), good) << n << " " << at;
      }
    }
  }
}

TEST(PickleFastPaths, a_map_read_in_any_key_order_with_repeated_keys_equals_the_value_path) {
  // {'b': 1, 'a': 2, 'c': 3, 'a': 4}: unsorted, and 'a' again (a memo reference) takes the last value
  const Bytes unsorted =
      from_hex("80 04 7d 94 28 8c 01 62 94 4b 01 8c 01 61 94 4b 02 8c 01 63 94 4b 03 68 02 4b 04 75 2e");
  const std::map<std::string, long> expected = {{"a", 4}, {"b", 1}, {"c", 3}};
  EXPECT_EQ((pickle::loads<std::map<std::string, long>>(unsorted)), expected);
  EXPECT_EQ((pickle::loads(unsorted).as<std::map<std::string, long>>()), expected);
  EXPECT_EQ((pickle::loads<std::unordered_map<std::string, long>>(unsorted)),
            (std::unordered_map<std::string, long>{{"a", 4}, {"b", 1}, {"c", 3}}));
  // values that are not trivially copyable: {'b': 'x', 'a': 'y', 'b': 'z'}
  const Bytes strings = from_hex("80 04 7d 94 28 8c 01 62 94 8c 01 78 94 8c 01 61 94 8c 01 79 94 68 01 8c 01 7a 94 75 2e");
  const std::map<std::string, std::string> last = {{"a", "y"}, {"b", "z"}};
  EXPECT_EQ((pickle::loads<std::map<std::string, std::string>>(strings)), last);
  EXPECT_EQ((pickle::loads(strings).as<std::map<std::string, std::string>>()), last);
  // one item (SETITEM), and a key that is not UTF-8 (refused as by the Value path)
  EXPECT_EQ((pickle::loads<std::map<std::string, long>>(from_hex("80 04 7d 94 8c 01 61 94 4b 07 73 2e"))),
            (std::map<std::string, long>{{"a", 7}}));
  EXPECT_THROW((pickle::loads<std::map<std::string, long>>(from_hex("80 04 7d 94 8c 01 ff 94 4b 07 73 2e"))),
               std::invalid_argument);
  // a reverse-sorted std::map (every hint at the end is wrong) of several batches
  std::map<std::string, long, std::greater<>> reversed;
  for (long i = 0; i < 2100; ++i) reversed["k" + std::to_string(i)] = -i;
  const Bytes data = pickle::dumps(reversed);
  std::map<std::string, long> sorted(reversed.begin(), reversed.end());
  EXPECT_EQ((pickle::loads<std::map<std::string, long>>(data)), sorted);
  EXPECT_EQ((pickle::loads<std::map<std::string, long, std::greater<>>>(data)), reversed);
}

TEST(PickleFastPaths, str_to_int_items_are_written_as_the_value_of_the_same_map) {
  const std::vector<long> values = {0,           1,           255,        256,       65535,      65536,
                                    -1,          -256,        INT32_MAX,  INT32_MIN, 1L << 31,   -(1L << 31) - 1,
                                    INT64_MAX,   INT64_MIN};
  for (std::size_t size : {0u, 1u, 2u, 999u, 1000u, 1001u, 2000u, 2500u}) {
    std::map<std::string, long> m;
    for (std::size_t i = 0; i < size; ++i) m["key" + std::to_string(i)] = values[i % values.size()];
    for (int protocol = 2; protocol <= 5; ++protocol) {
      EXPECT_EQ(pickle::dumps(m, protocol), pickle::dumps(Value(m), protocol)) << size << " " << protocol;
    }
    EXPECT_EQ((pickle::loads<std::map<std::string, long>>(pickle::dumps(m))), m) << size;
  }
  // the empty key, small and unsigned value types, and unsigned values beyond int64
  const std::map<std::string, int> small = {{"", -3}, {"a", 70000}};
  EXPECT_EQ(pickle::dumps(small), pickle::dumps(Value(small)));
  const std::map<std::string, std::uint32_t> u32 = {{"x", 4000000000u}};
  EXPECT_EQ(pickle::dumps(u32), pickle::dumps(Value(u32)));
  const std::map<std::string, std::uint64_t> u64 = {{"x", std::numeric_limits<std::uint64_t>::max()}, {"y", 5}};
  EXPECT_EQ(pickle::dumps(u64), pickle::dumps(Value(u64)));
  EXPECT_EQ((pickle::loads<std::map<std::string, std::uint64_t>>(pickle::dumps(u64))), u64);
}

TEST(PickleFastPaths, keys_of_the_first_dict_are_memo_references_in_the_next_ones) {
  // more first keys than the list starts with, then dicts that repeat some of them
  std::vector<std::map<std::string, long>> dicts(3);
  for (long i = 0; i < 700; ++i) dicts[0]["key" + std::to_string(i)] = i;
  for (long i = 0; i < 700; i += 7) dicts[1]["key" + std::to_string(i)] = -i;
  dicts[2]["key699"] = 1;
  dicts[2]["new"] = 2;
  std::vector<Value> as_values(dicts.begin(), dicts.end());
  for (int protocol = 2; protocol <= 5; ++protocol) {
    const Bytes direct = pickle::dumps(dicts, protocol);
    EXPECT_EQ(direct, pickle::dumps(Value::list(as_values), protocol)) << protocol;
    EXPECT_EQ((pickle::loads<std::vector<std::map<std::string, long>>>(direct)), dicts) << protocol;
  }
  // and again on the same thread (the list's buffer is reused)
  EXPECT_EQ(pickle::dumps(dicts), pickle::dumps(Value::list(as_values)));
}

}  // namespace
