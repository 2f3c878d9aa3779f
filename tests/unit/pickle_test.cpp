// mp::pickle: Value semantics (Python's ==, repr, conversions), the writer's bytes against
// CPython 3.11 captures (PROTOCOLS.md §3.2), round trips of every type in every protocol, and a
// reader that refuses hostile input with std::invalid_argument. The comparison against a live
// python3 is tests/interop/pickle_interop_test.cpp.
#include <multiprocessing/pickle.hpp>
#include "helpers/hex.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <variant>
#include <vector>

namespace {

using mp::Bytes;
using mp::pickle::Value;
namespace pickle = mp::pickle;

using mp::testing::from_hex;

std::string to_hex(const Bytes& b) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (std::byte x : b) {
    if (!out.empty()) out += ' ';
    out += digits[static_cast<unsigned>(x) >> 4];
    out += digits[static_cast<unsigned>(x) & 0xf];
  }
  return out;
}

// "80 04 <F> 4b 05 2e" with <F> a FRAME over the rest (as PROTOCOLS.md writes the captures).
Bytes framed(const std::string& body_hex) {
  Bytes body = from_hex(body_hex);
  Bytes out = {std::byte{0x80}, std::byte{0x04}, std::byte{0x95}};
  for (int k = 0; k < 8; ++k) out.push_back(static_cast<std::byte>((body.size() >> (8 * k)) & 0xff));
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

Bytes text_bytes(const std::string& s) { return mp::bytes(s); }

// ---------------------------------------------------------------------------------------------
// The writer against CPython 3.11's bytes

TEST(PickleDumps, writes_the_scalars_as_cpython_does) {
  EXPECT_EQ(to_hex(pickle::dumps(Value())), "80 04 4e 2e");
  EXPECT_EQ(to_hex(pickle::dumps(true)), "80 04 88 2e");
  EXPECT_EQ(to_hex(pickle::dumps(false)), "80 04 89 2e");
  EXPECT_EQ(to_hex(pickle::dumps(5)), "80 04 4b 05 2e");
  EXPECT_EQ(pickle::dumps(256), framed("4d 00 01 2e"));
  EXPECT_EQ(pickle::dumps(-1), framed("4a ff ff ff ff 2e"));
  EXPECT_EQ(pickle::dumps(2147483648LL), framed("8a 05 00 00 00 80 00 2e"));
  EXPECT_EQ(pickle::dumps(-2147483649LL), framed("8a 05 ff ff ff 7f ff 2e"));
  EXPECT_EQ(pickle::dumps(9223372036854775808ULL), framed("8a 09 00 00 00 00 00 00 00 80 00 2e"));
  EXPECT_EQ(pickle::dumps(std::numeric_limits<long long>::min()), framed("8a 08 00 00 00 00 00 00 00 80 2e"));
  EXPECT_EQ(pickle::dumps(1.5), framed("47 3f f8 00 00 00 00 00 00 2e"));
}

TEST(PickleDumps, writes_str_and_bytes_as_cpython_does) {
  EXPECT_EQ(pickle::dumps("abc"), framed("8c 03 61 62 63 94 2e"));
  EXPECT_EQ(pickle::dumps(std::string("\xc3\xa9\xe2\x82\xac")), framed("8c 05 c3 a9 e2 82 ac 94 2e"));
  std::string x256(256, 'x');
  Bytes expected = framed("58 00 01 00 00" + std::string(256 * 3, ' ') + "94 2e");
  // build 'x' * 256 by hand: BINUNICODE, length, 256 x, MEMOIZE, STOP
  Bytes body = from_hex("58 00 01 00 00");
  body.insert(body.end(), 256, std::byte{'x'});
  body.push_back(std::byte{0x94});
  body.push_back(std::byte{0x2e});
  EXPECT_EQ(pickle::dumps(x256), framed(to_hex(body)));
  Bytes y256(256, std::byte{'y'});
  body = from_hex("42 00 01 00 00");
  body.insert(body.end(), 256, std::byte{'y'});
  body.push_back(std::byte{0x94});
  body.push_back(std::byte{0x2e});
  EXPECT_EQ(pickle::dumps(y256), framed(to_hex(body)));
  (void)expected;
}

TEST(PickleDumps, writes_containers_as_cpython_does) {
  EXPECT_EQ(to_hex(pickle::dumps(Value::list())), "80 04 5d 94 2e");
  EXPECT_EQ(pickle::dumps(Value::list({Value()})), framed("5d 94 4e 61 2e"));
  EXPECT_EQ(pickle::dumps(std::vector<int>{1, 2}), framed("5d 94 28 4b 01 4b 02 65 2e"));
  EXPECT_EQ(to_hex(pickle::dumps(Value::tuple())), "80 04 29 2e");
  EXPECT_EQ(pickle::dumps(std::tuple<int>{1}), framed("4b 01 85 94 2e"));
  EXPECT_EQ(pickle::dumps(std::tuple<int, int, int>{1, 2, 3}), framed("4b 01 4b 02 4b 03 87 94 2e"));
  EXPECT_EQ(pickle::dumps(Value::tuple({1, 2, 3, 4})), framed("28 4b 01 4b 02 4b 03 4b 04 74 94 2e"));
  EXPECT_EQ(to_hex(pickle::dumps(Value::dict())), "80 04 7d 94 2e");
  EXPECT_EQ(pickle::dumps(std::map<std::string, int>{{"k", 1}}), framed("7d 94 8c 01 6b 94 4b 01 73 2e"));
  EXPECT_EQ(pickle::dumps(std::map<std::string, int>{{"a", 1}, {"b", 2}}),
            framed("7d 94 28 8c 01 61 94 4b 01 8c 01 62 94 4b 02 75 2e"));
  EXPECT_EQ(to_hex(pickle::dumps(Value::set())), "80 04 8f 94 2e");
  EXPECT_EQ(pickle::dumps(std::set<int>{1, 2}), framed("8f 94 28 4b 01 4b 02 90 2e"));
  EXPECT_EQ(pickle::dumps(Value::frozenset({1, 2})), framed("28 4b 01 4b 02 91 94 2e"));
}

TEST(PickleDumps, writes_a_shared_value_once_and_then_a_memo_reference) {
  // s = 'shared'; [s, s, (s,)] -- here the sharing is of a container: t = (1,); [t, t]
  Value t = Value::tuple({1});
  EXPECT_EQ(pickle::dumps(Value::list({t, t})), framed("5d 94 28 4b 01 85 94 68 01 65 2e"));
  // b'' and one-byte bytes are always one object in CPython
  EXPECT_EQ(pickle::dumps(Value::list({Bytes{}, Bytes{}})), framed("5d 94 28 43 00 94 68 01 65 2e"));
}

TEST(PickleDumps, writes_protocols_2_and_3_with_their_own_opcodes) {
  EXPECT_EQ(to_hex(pickle::dumps(Value::set({1, 2}), 3)),
            "80 03 63 62 75 69 6c 74 69 6e 73 0a 73 65 74 0a 71 00 5d 71 01 28 4b 01 4b 02 65 85 71 02 52 71 03 2e");
  EXPECT_EQ(to_hex(pickle::dumps(Value::set({1, 2}), 2)),
            "80 02 63 5f 5f 62 75 69 6c 74 69 6e 5f 5f 0a 73 65 74 0a 71 00 5d 71 01 28 4b 01 4b 02 65 85 71 02 52 71 "
            "03 2e");
  EXPECT_EQ(to_hex(pickle::dumps(from_hex("ff 00"), 2)),
            "80 02 63 5f 63 6f 64 65 63 73 0a 65 6e 63 6f 64 65 0a 71 00 58 03 00 00 00 c3 bf 00 71 01 58 06 00 00 00 "
            "6c 61 74 69 6e 31 71 02 86 71 03 52 71 04 2e");
  EXPECT_EQ(to_hex(pickle::dumps(from_hex("ff 00"), 3)), "80 03 43 02 ff 00 71 00 2e");
}

TEST(PickleDumps, puts_big_payloads_outside_frames) {
  // ('x' * 65536, 1): PROTO, BINUNICODE (unframed), FRAME 6, MEMOIZE, BININT1, TUPLE2, MEMOIZE, STOP
  Bytes out = pickle::dumps(Value::tuple({std::string(65536, 'x'), 1}));
  ASSERT_EQ(out.size(), 2u + 5 + 65536 + 9 + 6);
  EXPECT_EQ(to_hex(Bytes(out.begin(), out.begin() + 7)), "80 04 58 00 00 01 00");
  EXPECT_EQ(to_hex(Bytes(out.end() - 15, out.end())), "95 06 00 00 00 00 00 00 00 94 4b 01 86 94 2e");
}

TEST(PickleDumps, refuses_unknown_protocols_and_too_deep_values) {
  EXPECT_THROW(pickle::dumps(1, 1), std::invalid_argument);
  EXPECT_THROW(pickle::dumps(1, 6), std::invalid_argument);
  Value deep = Value::list();
  for (std::size_t i = 0; i < pickle::kMaxDepth + 5; ++i) deep = Value::list({deep});
  EXPECT_THROW(pickle::dumps(deep), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// Round trips

Value sample() {
  return Value::dict({
      {"none", Value()},
      {"bools", Value::list({true, false})},
      {"ints", Value::list({0, 1, -1, 255, 256, 65535, 65536, -2147483648LL, 2147483647, 2147483648LL,
                            std::numeric_limits<long long>::min(), std::numeric_limits<long long>::max(),
                            pickle::int_from_string("1267650600228229401496703205376"),
                            pickle::int_from_string("-1267650600228229401496703205377")})},
      {"floats", Value::list({0.0, -0.0, 1.5, 1e300, -2.5e-300, std::numeric_limits<double>::infinity()})},
      {"str", Value::list({"", "a", "h\xc3\xa9llo", "\xf0\x9f\x98\x80", std::string(300, 'z')})},
      {"bytes", Value::list({Bytes{}, from_hex("00"), from_hex("00 ff 80 7f"), Bytes(300, std::byte{7})})},
      {"tuple", Value::tuple({1, Value::tuple({2, 3}), Value::tuple(), Value::tuple({"a", "b", "c", "d"})})},
      {"set", Value::set({1, 2, 3})},
      {"frozenset", Value::frozenset({Value::tuple({1, 2}), "x"})},
      {"nested", Value::list({Value::dict({{Value::tuple({1, 2}), Value::list({Value::dict()})}}), Value::set()})},
      {Value(7), "int key"},
      {Value(2.5), "float key"},
  });
}

TEST(PickleRoundTrip, gives_back_every_type_in_every_protocol) {
  const Value v = sample();
  for (int protocol = 2; protocol <= 5; ++protocol) {
    SCOPED_TRACE(protocol);
    const Bytes b = pickle::dumps(v, protocol);
    const Value back = pickle::loads(b);
    EXPECT_EQ(back, v);
    EXPECT_EQ(back.repr(), v.repr());
    EXPECT_EQ(pickle::dumps(back, protocol), b);
  }
}

TEST(PickleRoundTrip, keeps_nan_negative_zero_and_big_ints) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const Value back = pickle::loads(pickle::dumps(Value::list({nan, -0.0})));
  EXPECT_TRUE(std::isnan(back[0].as<double>()));
  EXPECT_TRUE(std::signbit(back[1].as<double>()));
  EXPECT_EQ(back, Value::list({nan, 0.0}));  // NaN == NaN here; -0.0 == 0.0 as in Python

  const Value big = pickle::int_from_string("-340282366920938463463374607431768211457");
  EXPECT_EQ(pickle::loads(pickle::dumps(big)).repr(), "-340282366920938463463374607431768211457");
  EXPECT_THROW(big.as<long long>(), std::out_of_range);
  EXPECT_EQ(pickle::int_from_string("-9223372036854775808").as<long long>(), std::numeric_limits<long long>::min());
  EXPECT_EQ(pickle::int_from_string("18446744073709551615").as<unsigned long long>(), 18446744073709551615ULL);
  EXPECT_THROW(pickle::int_from_string("18446744073709551616").as<unsigned long long>(), std::out_of_range);
  EXPECT_THROW(pickle::int_from_string("12a"), std::invalid_argument);
  EXPECT_EQ(to_hex(pickle::int_to_bytes(pickle::int_from_string("-129"))), "7f ff");
  EXPECT_EQ(pickle::int_from_bytes(from_hex("00 00 00 00 00 00 00 00 01")).repr(), "18446744073709551616");
  EXPECT_EQ(pickle::int_from_string("1267650600228229401496703205376").as<double>(), std::ldexp(1.0, 100));
}

TEST(PickleRoundTrip, converts_to_and_from_cpp_types) {
  using Record = std::tuple<int, std::string, std::optional<double>, std::vector<Bytes>>;
  const std::map<std::string, std::vector<Record>> m = {
      {"a", {Record{1, "x", 2.5, {mp::bytes("b")}}, Record{-3, "", std::nullopt, {}}}}, {"b", {}}};
  for (int protocol = 2; protocol <= 5; ++protocol)
    EXPECT_EQ((pickle::loads<std::map<std::string, std::vector<Record>>>(pickle::dumps(m, protocol))), m);

  const std::unordered_map<long long, std::set<std::string>> u = {{1, {"a", "b"}}, {-7, {}}};
  EXPECT_EQ((pickle::loads<std::unordered_map<long long, std::set<std::string>>>(pickle::dumps(u))), u);
  EXPECT_EQ(pickle::loads<std::monostate>(pickle::dumps(std::monostate{})), std::monostate{});
  EXPECT_EQ(pickle::loads<std::optional<int>>(pickle::dumps(std::nullopt)), std::nullopt);
  EXPECT_EQ(pickle::loads<std::optional<int>>(pickle::dumps(4)), 4);
  // lenient where harmless: a tuple loads as a vector, a list as a tuple
  EXPECT_EQ(pickle::loads<std::vector<int>>(pickle::dumps(Value::tuple({1, 2}))), (std::vector<int>{1, 2}));
  EXPECT_EQ((pickle::loads<std::tuple<int, int>>(pickle::dumps(std::vector<int>{1, 2}))), (std::tuple<int, int>{1, 2}));
  EXPECT_EQ((pickle::loads<std::pair<int, std::string>>(pickle::dumps(Value::tuple({1, "s"})))),
            (std::pair<int, std::string>{1, "s"}));
}

TEST(PickleRoundTrip, refuses_mistyped_or_out_of_range_loads) {
  EXPECT_THROW(pickle::loads<std::string>(pickle::dumps(1)), std::invalid_argument);
  EXPECT_THROW(pickle::loads<int>(pickle::dumps(1LL << 40)), std::invalid_argument);
  EXPECT_THROW(pickle::loads<unsigned>(pickle::dumps(-1)), std::invalid_argument);
  EXPECT_THROW((pickle::loads<std::tuple<int, int>>(pickle::dumps(std::vector<int>{1}))), std::invalid_argument);
  EXPECT_THROW(pickle::loads<std::vector<int>>(pickle::dumps(std::vector<std::string>{"a"})), std::invalid_argument);
  EXPECT_THROW(pickle::loads<Bytes>(pickle::dumps("abc")), std::invalid_argument);
  EXPECT_THROW(pickle::loads<bool>(pickle::dumps(1)), std::invalid_argument);
}

TEST(PickleRoundTrip, handles_batches_of_1000_and_frames_over_64_kib) {
  for (std::size_t n : {999u, 1000u, 1001u, 2000u, 30000u}) {
    std::vector<long long> list;
    std::map<long long, std::string> dict;
    std::set<long long> set;
    for (std::size_t i = 0; i < n; ++i) {
      list.push_back(static_cast<long long>(i * 1000));
      dict[static_cast<long long>(i)] = std::to_string(i);
      set.insert(static_cast<long long>(i));
    }
    EXPECT_EQ(pickle::loads<std::vector<long long>>(pickle::dumps(list)), list);
    EXPECT_EQ((pickle::loads<std::map<long long, std::string>>(pickle::dumps(dict))), dict);
    EXPECT_EQ(pickle::loads<std::set<long long>>(pickle::dumps(set)), set);
    EXPECT_EQ(pickle::loads<std::set<long long>>(pickle::dumps(set, 2)), set);
  }
}

// dumps<T> writes vectors, maps and scalars without building a Value; its bytes must be those of
// dumps(Value(obj)) whatever the sizes (batches, frames), nesting and protocol.
TEST(PickleDumps, writes_cpp_containers_directly_with_the_bytes_of_their_value) {
  for (std::size_t n : {0u, 1u, 2u, 7u, 8u, 999u, 1000u, 1001u, 2000u, 9000u}) {
    std::map<std::string, long> by_name;
    std::unordered_map<long long, double> by_number;
    std::vector<std::string> names;
    std::vector<std::map<std::string, std::vector<unsigned long>>> records;
    for (std::size_t i = 0; i < n; ++i) {
      by_name["key" + std::to_string(i)] = static_cast<long>(i) * 77 - 5000;
      by_number[static_cast<long long>(i) << 40] = static_cast<double>(i) / 3;
      names.push_back(i % 3 == 0 ? std::string() : std::string(i % 300, 'x'));
      records.push_back({{"id", {i, ~0ul}}, {"", {}}, {"name" + std::to_string(i % 5), {i}}});
    }
    std::map<std::string, std::optional<std::map<std::string, int>>> nested;  // converted through Values
    for (std::size_t i = 0; i < n % 50; ++i)
      nested["k" + std::to_string(i)] = std::map<std::string, int>{{"inner" + std::to_string(i % 4), 1}, {"k1", 2}};
    const std::vector<bool> flags(n, true);
    const std::vector<Bytes> blobs(n % 7, Bytes(n % 3, std::byte{7}));
    for (int protocol = 2; protocol <= 5; ++protocol) {
      SCOPED_TRACE("n=" + std::to_string(n) + " protocol=" + std::to_string(protocol));
      EXPECT_EQ(pickle::dumps(by_name, protocol), pickle::dumps(Value(by_name), protocol));
      EXPECT_EQ(pickle::dumps(by_number, protocol), pickle::dumps(Value(by_number), protocol));
      EXPECT_EQ(pickle::dumps(names, protocol), pickle::dumps(Value(names), protocol));
      EXPECT_EQ(pickle::dumps(records, protocol), pickle::dumps(Value(records), protocol));
      EXPECT_EQ(pickle::dumps(nested, protocol), pickle::dumps(Value(nested), protocol));
      EXPECT_EQ(pickle::dumps(flags, protocol), pickle::dumps(Value(flags), protocol));
      EXPECT_EQ(pickle::dumps(blobs, protocol), pickle::dumps(Value(blobs), protocol));
    }
  }
  EXPECT_THROW(pickle::dumps(std::vector<std::string>{"ok", "\xff"}), std::invalid_argument);
  EXPECT_THROW(pickle::dumps(std::map<std::string, int>{{"\xc0\x80", 1}}), std::invalid_argument);
  EXPECT_THROW(pickle::dumps(std::vector<int>{1}, 6), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// Value

TEST(PickleValue, compares_as_python_does) {
  EXPECT_EQ(Value(1), Value(1.0));
  EXPECT_EQ(Value(1), Value(true));
  EXPECT_EQ(Value(0.0), Value(false));
  EXPECT_NE(Value(1), Value(1.5));
  EXPECT_NE(Value("1"), Value(1));
  EXPECT_NE(Value("a"), Value(mp::bytes("a")));
  EXPECT_NE(Value::list({1}), Value::tuple({1}));
  EXPECT_EQ(Value::set({1, 2}), Value::frozenset({2, 1}));
  EXPECT_EQ(Value::dict({{"a", 1}, {"b", 2}}), Value::dict({{"b", 2}, {"a", 1}}));
  EXPECT_NE(Value::dict({{"a", 1}}), Value::dict({{"a", 2}}));
  EXPECT_EQ(pickle::int_from_string("1267650600228229401496703205376"), Value(std::ldexp(1.0, 100)));
  EXPECT_EQ(Value(9007199254740993LL) == Value(9007199254740992.0), false);  // exact, as Python
  EXPECT_EQ(Value(std::numeric_limits<double>::quiet_NaN()), Value(std::numeric_limits<double>::quiet_NaN()));
  EXPECT_EQ(Value(), Value());
}

TEST(PickleValue, prints_as_python_repr) {
  EXPECT_EQ(Value::dict({{"a", 1}, {"b", Value::list({1, 2.5, Value(), true})}}).repr(),
            "{'a': 1, 'b': [1, 2.5, None, True]}");
  EXPECT_EQ(Value(from_hex("00 01")).repr(), "b'\\x00\\x01'");
  EXPECT_EQ(Value("it's").repr(), "\"it's\"");
  EXPECT_EQ(Value("it's \"q\"").repr(), "'it\\'s \"q\"'");
  EXPECT_EQ(Value("tab\there\n\x01\\").repr(), "'tab\\there\\n\\x01\\\\'");
  EXPECT_EQ(Value("h\xc3\xa9 \xc2\xa0 \xe2\x80\x8b").repr(), "'h\xc3\xa9 \\xa0 \\u200b'");
  EXPECT_EQ(Value::set({1, 2}).repr(), "{1, 2}");
  EXPECT_EQ(Value::set().repr(), "set()");
  EXPECT_EQ(Value::frozenset({1}).repr(), "frozenset({1})");
  EXPECT_EQ(Value::frozenset().repr(), "frozenset()");
  EXPECT_EQ(Value::tuple({1}).repr(), "(1,)");
  EXPECT_EQ(Value::tuple().repr(), "()");
  EXPECT_EQ(Value::tuple({1, "x"}).repr(), "(1, 'x')");
  const std::pair<double, const char*> floats[] = {
      {1.0, "1.0"},       {0.1, "0.1"},         {-0.0, "-0.0"},      {1e16, "1e+16"},
      {1e15, "1000000000000000.0"}, {1e-5, "1e-05"}, {0.0001, "0.0001"}, {1.5e300, "1.5e+300"},
      {123456.789, "123456.789"},   {2.5e-7, "2.5e-07"}, {1.0 / 3, "0.3333333333333333"},
      {std::numeric_limits<double>::infinity(), "inf"}, {std::numeric_limits<double>::quiet_NaN(), "nan"}};
  for (auto& [d, text] : floats) EXPECT_EQ(Value(d).repr(), text);
  EXPECT_EQ(pickle::int_from_string("-1267650600228229401496703205376").repr(), "-1267650600228229401496703205376");
}

TEST(PickleValue, offers_the_contract_members) {
  Value d = Value::dict();
  d.set_item("k", 1);
  d.set_item("k", 2);  // assign keeps one entry
  d.set_item(1, "one");
  d.set_item(1.0, "uno");  // 1 == 1.0: same key, first spelling kept
  EXPECT_EQ(d.size(), 2u);
  EXPECT_EQ(d["k"].as<int>(), 2);
  EXPECT_EQ(d.repr(), "{'k': 2, 1: 'uno'}");
  EXPECT_THROW(d["absent"], std::out_of_range);
  EXPECT_THROW(d.set_item(Value::list(), 1), std::invalid_argument);
  EXPECT_THROW(d.append(1), std::logic_error);

  Value l = Value::list();
  l.append("x");
  l.append(Value::list({1}));
  EXPECT_EQ(l.size(), 2u);
  EXPECT_EQ(l[1][0].as<int>(), 1);
  EXPECT_THROW(l[2], std::out_of_range);
  EXPECT_THROW(l["x"], std::invalid_argument);
  EXPECT_THROW(l.set_item(1, 1), std::logic_error);

  EXPECT_TRUE(Value().is_none());
  EXPECT_EQ(Value().type_name(), "NoneType");
  EXPECT_EQ(Value(true).type_name(), "bool");
  EXPECT_EQ(pickle::int_from_string("99999999999999999999").type_name(), "int");
  EXPECT_EQ(Value(1.0f).type_name(), "float");
  EXPECT_EQ(Value(Bytes{}).type_name(), "bytes");
  EXPECT_EQ(Value::frozenset().type_name(), "frozenset");
  EXPECT_TRUE(Value(5).is<int>());
  EXPECT_FALSE(Value(5).is<double>());
  EXPECT_FALSE(Value(true).is<int>());
  EXPECT_FALSE(Value(300).is<std::int8_t>());
  EXPECT_TRUE(Value(std::vector<int>{1}).is<std::vector<int>>());
  EXPECT_FALSE(Value(std::vector<int>{1}).is<std::vector<std::string>>());
  EXPECT_TRUE((Value(std::map<std::string, int>{{"a", 1}}).is<std::map<std::string, int>>()));
  EXPECT_TRUE(Value().is<std::optional<int>>());
  EXPECT_EQ(Value(5).as<double>(), 5.0);
  EXPECT_THROW(Value("x").as<int>(), std::invalid_argument);
  EXPECT_THROW(Value(300).as<std::uint8_t>(), std::out_of_range);
  EXPECT_EQ(Value("h\xc3\xa9").size(), 2u);
  EXPECT_THROW(Value(1).size(), std::invalid_argument);
  EXPECT_THROW(Value(std::string("\xff")), std::invalid_argument);
  EXPECT_THROW(Value(std::string("\xed\xa0\x80")), std::invalid_argument);  // a surrogate

  // dict items in order, as pairs
  auto items = Value::dict({{"b", 1}, {"a", 2}}).as<std::vector<std::pair<std::string, int>>>();
  EXPECT_EQ(items, (std::vector<std::pair<std::string, int>>{{"b", 1}, {"a", 2}}));
}

TEST(PickleValue, copies_are_independent) {
  Value a = Value::list({1});
  Value b = a;
  b.append(2);
  EXPECT_EQ(a.size(), 1u);
  EXPECT_EQ(b.size(), 2u);
  Value d = Value::dict({{"x", 1}});
  Value e = d;
  e.set_item("x", 5);
  EXPECT_EQ(d["x"].as<int>(), 1);
}

TEST(PickleValue, keeps_big_dicts_and_sets_fast_and_deduplicated) {
  Value d = Value::dict();
  for (int i = 0; i < 100000; ++i) d.set_item(i, i);
  for (int i = 0; i < 100000; ++i) d.set_item(static_cast<double>(i), -i);
  EXPECT_EQ(d.size(), 100000u);
  std::vector<Value> items;
  for (int i = 0; i < 100000; ++i) items.push_back(i % 1000);
  EXPECT_EQ(Value::set(items).size(), 1000u);
}

// ---------------------------------------------------------------------------------------------
// The reader against hostile or broken input

void expect_refused(const std::string& hex, const std::string& fragment) {
  SCOPED_TRACE(hex);
  try {
    (void)pickle::loads(from_hex(hex));
    ADD_FAILURE() << "accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

std::string hex_of(const std::string& s) { return to_hex(text_bytes(s)); }

TEST(PickleLoads, refuses_globals_outside_the_allow_list_without_running_them) {
  // GLOBAL os system + REDUCE ('echo pwned',)
  expect_refused("80 02 63 " + hex_of("os\nsystem\n") + " 58 0a 00 00 00 " + hex_of("echo pwned") + " 85 52 2e",
                 "refusing to load global 'os.system'");
  // STACK_GLOBAL builtins eval
  expect_refused("80 04 8c 08 " + hex_of("builtins") + " 8c 04 " + hex_of("eval") + " 93 8c 04 " + hex_of("1+1") +
                     " 85 52 2e",
                 "refusing to load global 'builtins.eval'");
  expect_refused("80 04 8c 05 " + hex_of("posix") + " 8c 06 " + hex_of("system") + " 93 2e", "posix.system");
  expect_refused("80 02 63 " + hex_of("copy_reg\n_reconstructor\n") + " 2e", "copy_reg._reconstructor");
  // an allowed global may not stand as a value
  expect_refused("80 02 63 " + hex_of("builtins\nset\n") + " 2e", "only accepted as the callable");
  // and may only take the arguments it takes from plain data
  expect_refused("80 02 63 " + hex_of("_codecs\nencode\n") + " 58 01 00 00 00 61 58 05 00 00 00 " + hex_of("utf16") +
                     " 86 52 2e",
                 "_codecs.encode");
}

TEST(PickleLoads, refuses_object_building_opcodes) {
  expect_refused("80 02 28 63 " + hex_of("builtins\nset\n") + " 6f 2e", "OBJ");  // MARK GLOBAL OBJ
  expect_refused("80 02 28 69 " + hex_of("os\nsystem\n") + " 2e", "INST");
  expect_refused("80 04 29 29 81 2e", "NEWOBJ");
  expect_refused("80 04 29 29 92 2e", "NEWOBJ_EX");
  expect_refused("80 04 7d 7d 62 2e", "BUILD");
  expect_refused("80 02 50 " + hex_of("x\n") + " 2e", "PERSID");
  expect_refused("80 02 4e 51 2e", "BINPERSID");
  expect_refused("80 02 82 01 2e", "EXT1");
  expect_refused("80 02 83 01 00 2e", "EXT2");
  expect_refused("80 02 84 01 00 00 00 2e", "EXT4");
  expect_refused("80 05 97 2e", "NEXT_BUFFER");
  expect_refused("80 05 98 2e", "READONLY_BUFFER");
  expect_refused("49 31 0a 2e", "text opcode INT");  // protocol 0: I1\n.
  expect_refused("80 04 ff 2e", "invalid opcode 0xff");
}

TEST(PickleLoads, refuses_reference_cycles) {
  // l = []; l.append(l): EMPTY_LIST MEMOIZE BINGET 0 APPEND
  expect_refused("80 04 5d 94 68 00 61 2e", "cycle");
  // d = {}; d['x'] = [d]: EMPTY_DICT MEMOIZE 'x' MEMOIZE EMPTY_LIST MEMOIZE BINGET 0 APPEND SETITEM
  expect_refused("80 04 7d 94 8c 01 78 94 5d 94 68 00 61 73 2e", "cycle");
  // DUP APPEND
  expect_refused("80 04 5d 32 61 2e", "cycle");
}

TEST(PickleLoads, shares_memo_references_as_python_does) {
  // s = [1]; [s, s]: the memo entry was taken while s was empty, and sees its item
  const Value v = pickle::loads(from_hex("80 04 5d 94 28 5d 94 4b 01 61 68 01 65 2e"));
  EXPECT_EQ(v.repr(), "[[1], [1]]");
  // s = 'shared'; [s, s, (s,)] (PROTOCOLS.md)
  const Value w =
      pickle::loads(framed("5d 94 28 8c 06 73 68 61 72 65 64 94 68 01 68 01 85 94 65 2e"));
  EXPECT_EQ(w.repr(), "['shared', 'shared', ('shared',)]");
}

TEST(PickleLoads, refuses_huge_lengths_before_allocating) {
  expect_refused("80 04 8d 00 00 00 00 00 00 00 10 61 62 2e", "truncated");  // BINUNICODE8 2**60
  expect_refused("80 04 8e ff ff ff ff ff ff ff ff 2e", "truncated");        // BINBYTES8
  expect_refused("80 04 58 ff ff ff ff 2e", "truncated");                    // BINUNICODE
  expect_refused("80 04 8b ff ff ff 7f 2e", "truncated");                    // LONG4
  expect_refused("80 04 8b ff ff ff ff 2e", "negative length");
  expect_refused("80 04 95 ff ff ff ff ff ff ff ff 4e 2e", "FRAME");
  expect_refused("80 04 6a ff ff ff 0f 2e", "never stored");
  expect_refused("80 04 4e 72 ff ff ff ff 2e", "negative LONG_BINPUT");
}

TEST(PickleLoads, refuses_deep_nesting) {
  std::string hex = "80 04";
  for (std::size_t i = 0; i < pickle::kMaxDepth + 10; ++i) hex += " 5d";
  for (std::size_t i = 0; i < pickle::kMaxDepth + 9; ++i) hex += " 61";
  hex += " 2e";
  expect_refused(hex, "nesting deeper");
  // and just below the limit it loads
  std::string ok = "80 04";
  for (std::size_t i = 0; i < pickle::kMaxDepth; ++i) ok += " 5d";
  for (std::size_t i = 0; i + 1 < pickle::kMaxDepth; ++i) ok += " 61";
  ok += " 2e";
  EXPECT_EQ(pickle::loads(from_hex(ok)).type_name(), "list");
}

TEST(PickleLoads, refuses_every_truncation_of_a_valid_pickle) {
  const Bytes whole = pickle::dumps(sample());
  for (std::size_t n = 0; n < whole.size(); ++n) {
    const Bytes part(whole.begin(), whole.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_THROW(pickle::loads(part), std::invalid_argument) << n;
  }
  Bytes longer = whole;
  longer.push_back(std::byte{0x4e});
  EXPECT_THROW(pickle::loads(longer), std::invalid_argument);
}

TEST(PickleLoads, refuses_malformed_streams) {
  expect_refused("", "truncated");
  expect_refused("2e", "stack underflow");
  expect_refused("80 04 65 2e", "MARK");
  expect_refused("80 04 4e 61 2e", "underflow");
  expect_refused("80 04 4e 4e 61 2e", "APPEND on a NoneType");
  expect_refused("80 04 7d 28 4e 75 2e", "odd number");
  expect_refused("80 04 8c 01 ff 2e", "UTF-8");
  expect_refused("80 04 8c 03 ed a0 80 2e", "UTF-8");          // a lone surrogate
  expect_refused("80 04 8f 28 5d 90 2e", "unhashable type: 'list'");
  expect_refused("80 04 7d 5d 4e 73 2e", "unhashable type: 'list'");
  expect_refused("80 06 4e 2e", "protocol 6");
}

TEST(PickleLoads, accepts_what_cpython_writes_with_reduce_for_old_protocols) {
  // protocol 2: [b'ab', b'ab', b'', b'x', b'x'] as CPython 3.11 writes it
  const Value v = pickle::loads(from_hex(
      "80 02 5d 71 00 28 63 5f 63 6f 64 65 63 73 0a 65 6e 63 6f 64 65 0a 71 01 58 02 00 00 00 61 62 71 02 58 06 00 00 "
      "00 6c 61 74 69 6e 31 71 03 86 71 04 52 71 05 68 05 63 5f 5f 62 75 69 6c 74 69 6e 5f 5f 0a 62 79 74 65 73 0a 71 "
      "06 29 52 71 07 68 01 58 01 00 00 00 78 71 08 68 03 86 71 09 52 71 0a 68 0a 65 2e"));
  EXPECT_EQ(v.repr(), "[b'ab', b'ab', b'', b'x', b'x']");
  // protocol 4 bytearray(b'ab'): builtins.bytearray REDUCE (b'ab',) -> bytes
  EXPECT_EQ(pickle::loads(from_hex("80 04 95 23 00 00 00 00 00 00 00 8c 08 62 75 69 6c 74 69 6e 73 94 8c 09 62 79 74 "
                                   "65 61 72 72 61 79 94 93 94 43 02 61 62 94 85 94 52 94 2e"))
                .repr(),
            "b'ab'");
  // protocol 5 bytearray: BYTEARRAY8
  EXPECT_EQ(pickle::loads(from_hex("80 05 95 0d 00 00 00 00 00 00 00 96 02 00 00 00 00 00 00 00 61 62 94 2e")).repr(),
            "b'ab'");
  // no PROTO at all, and protocol-1 LIST/DICT
  EXPECT_EQ(pickle::loads(from_hex("28 4b 01 4b 02 6c 2e")).repr(), "[1, 2]");
  EXPECT_EQ(pickle::loads(from_hex("28 4b 01 4b 02 64 2e")).repr(), "{1: 2}");
}

TEST(PickleLoads, bounds_what_copying_shared_references_out_may_cost) {
  // x0 = [0]*8; x1 = [x0]*8 ...: a few hundred bytes meaning 8**12 ints
  std::string hex = "80 04 5d 94 28";
  for (int i = 0; i < 8; ++i) hex += " 4b 00";
  hex += " 65";  // memo 0
  for (int level = 1; level <= 12; ++level) {
    hex += " 5d 94 28";
    const int previous = level == 1 ? 0 : 2 * (level - 1) - 1;  // memo index of the previous level
    (void)previous;
    for (int i = 0; i < 8; ++i) hex += " 68 " + to_hex(Bytes{static_cast<std::byte>(level - 1)});
    hex += " 65";
  }
  hex += " 2e";
  const Bytes data = from_hex(hex);
  const Value v = pickle::loads(data);  // shared: cheap
  EXPECT_EQ(v.size(), 8u);
  Bytes again = pickle::dumps(v);  // the writer writes shared containers once
  EXPECT_LT(again.size(), 1000u);
  EXPECT_EQ(pickle::loads(again), v);
  EXPECT_THROW(pickle::loads<std::vector<std::vector<std::vector<Value>>>>(data), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// loads<T> straight into C++ types (detail::Cursor), and its fallback to the Value path

// T read through the Value path only (what loads<T> must always agree with).
template <class T>
T through_value(const Bytes& data) {
  return pickle::loads<Value>(data).as<T>();
}

TEST(PickleDirect, reads_the_usual_shapes_straight_into_cpp_types) {
  std::map<std::string, long> d;
  for (long i = 0; i < 2500; ++i) d["key" + std::to_string(i)] = i * 1000003;  // several batches
  const Bytes data = pickle::dumps(d);
  {
    pickle::detail::Cursor c(data);
    std::map<std::string, long> out;
    ASSERT_TRUE(c.start());
    ASSERT_TRUE((pickle::detail::Convert<std::map<std::string, long>>::read(c, out)));  // not the fallback
    ASSERT_TRUE(c.finish());
    EXPECT_EQ(out, d);
  }
  EXPECT_EQ((pickle::loads<std::map<std::string, long>>(data)), d);

  // keys met again are memo references: [{'a': 1, 'b': [1.5, True]}, {'a': 2, 'b': []}]
  std::vector<std::map<std::string, std::vector<double>>> records = {{{"a", {1.5, 1}}, {"bb", {}}},
                                                                     {{"a", {}}, {"bb", {2, -0.0}}}};
  for (int protocol = 2; protocol <= 5; ++protocol) {
    const Bytes r = pickle::dumps(records, protocol);
    using Records = std::vector<std::map<std::string, std::vector<double>>>;
    EXPECT_EQ(pickle::loads<Records>(r), records) << protocol;
  }
  const std::vector<std::optional<std::string>> maybe = {std::nullopt, "x", "", std::string(300, 'y')};
  EXPECT_EQ(pickle::loads<std::vector<std::optional<std::string>>>(pickle::dumps(maybe)), maybe);
  const std::vector<Bytes> blobs = {Bytes{}, Bytes(1, std::byte{7}), Bytes(70000, std::byte{1})};
  EXPECT_EQ(pickle::loads<std::vector<Bytes>>(pickle::dumps(blobs)), blobs);
  const std::map<int, bool> flags = {{-5, true}, {1 << 20, false}, {7, true}};
  EXPECT_EQ((pickle::loads<std::map<int, bool>>(pickle::dumps(flags))), flags);
}

TEST(PickleDirect, agrees_with_the_value_path_on_unusual_streams) {
  // One-item dict and list (SETITEM/APPEND), empty containers followed by siblings, duplicate
  // keys (the last value wins), a key as True and 1, a tuple where a list is expected, a shared
  // list, a big int, bool as int.
  const std::vector<std::string> hexes = {
      "80 04 7d 94 8c 01 61 94 4b 01 73 2e",                                // {'a': 1}
      "80 04 5d 94 28 5d 94 5d 94 4b 05 61 65 2e",                          // [[], [5]]
      "80 04 5d 94 28 7d 94 7d 94 8c 01 6b 94 4b 02 73 65 2e",              // [{}, {'k': 2}]
      "80 04 7d 94 28 8c 01 61 94 4b 01 68 01 4b 02 75 2e",                 // {'a': 1, 'a': 2}
      "80 04 7d 94 28 88 4b 01 4b 01 4b 02 75 2e",                          // {True: 1, 1: 2}
      "80 04 5d 94 28 4b 01 4b 02 86 94 65 2e",                             // [(1, 2)]
      "80 04 5d 94 28 5d 94 68 01 65 2e",                                   // [l, l]: shared
      "80 04 5d 94 28 8a 09 00 00 00 00 00 00 00 00 01 65 2e",              // [2**64]
      "80 04 5d 94 28 88 89 4b 03 65 2e",                                   // [True, False, 3]
      "80 04 5d 94 28 5d 94 4b 01 61 8c 01 78 65 2e",                       // [[1], 'x']
      "80 02 5d 71 00 28 4b 01 4b 02 65 2e",                                // protocol 2, BINPUT
      "80 04 5d 94 28 4b 01 30 65 2e",                                      // POP: not for the cursor
      "80 04 5d 94 4b 01 61 4b 02 61 2e",                                   // [1, 2] by APPENDs
  };
  for (const std::string& hex : hexes) {
    const Bytes data = from_hex(hex);
    const auto check = [&](auto tag) {
      using T = decltype(tag);
      std::optional<T> direct, via;
      try {
        direct = pickle::loads<T>(data);
      } catch (const std::invalid_argument&) {
      }
      try {
        via = through_value<T>(data);
      } catch (const std::invalid_argument&) {
      } catch (const std::out_of_range&) {
      }
      EXPECT_EQ(direct.has_value(), via.has_value()) << hex;
      if (direct && via) {
        EXPECT_TRUE(*direct == *via) << hex;
      }
    };
    check(std::map<std::string, long>{});
    check(std::map<long, long>{});
    check(std::vector<long>{});
    check(std::vector<std::vector<long>>{});
    check(std::vector<std::map<std::string, long>>{});
    check(std::vector<std::string>{});
    check(std::vector<bool>{});
    check(std::vector<double>{});
  }
  EXPECT_EQ((pickle::loads<std::map<std::string, long>>(from_hex(hexes[3]))), (std::map<std::string, long>{{"a", 2}}));
  EXPECT_EQ((pickle::loads<std::map<long, long>>(from_hex(hexes[4]))), (std::map<long, long>{{1, 2}}));
  EXPECT_EQ(pickle::loads<std::vector<long>>(from_hex(hexes[12])), (std::vector<long>{1, 2}));
}

TEST(PickleDirect, refuses_bad_input_as_the_value_path_does) {
  std::map<std::string, long> d = {{"a", 1}, {"b", 2}, {"c", 3}};
  const Bytes data = pickle::dumps(d);
  for (std::size_t n = 0; n < data.size(); ++n) {
    const Bytes cut(data.begin(), data.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_THROW((pickle::loads<std::map<std::string, long>>(cut)), std::invalid_argument) << n;
  }
  Bytes extra = data;
  extra.push_back(std::byte{0x4e});
  EXPECT_THROW((pickle::loads<std::map<std::string, long>>(extra)), std::invalid_argument);
  // a str that is not UTF-8, an int out of range, a huge declared length
  EXPECT_THROW(pickle::loads<std::vector<std::string>>(from_hex("80 04 5d 94 8c 01 ff 61 2e")), std::invalid_argument);
  EXPECT_THROW(pickle::loads<std::vector<std::int8_t>>(from_hex("80 04 5d 94 4d 00 10 61 2e")), std::invalid_argument);
  EXPECT_THROW(pickle::loads<std::vector<std::string>>(from_hex("80 04 5d 94 8d ff ff ff ff ff ff ff 7f 61 2e")),
               std::invalid_argument);
  // a global is refused, whatever T is
  EXPECT_THROW(pickle::loads<std::vector<long>>(from_hex("80 04 5d 94 63 6f 73 0a 73 79 73 74 65 6d 0a 61 2e")),
               std::invalid_argument);
}

TEST(PickleValue, is_sixteen_bytes_and_shares_long_text) {
  EXPECT_EQ(sizeof(Value), 16u);
  const std::string long_text(1000, 'z');
  Value a(long_text);
  Value b = a;  // shares the text
  EXPECT_EQ(b.as<std::string>(), long_text);
  a = Value(1);
  EXPECT_EQ(b.as<std::string>(), long_text);
  Value moved = std::move(b);
  EXPECT_TRUE(b.is_none());  // NOLINT(bugprone-use-after-move): a moved-from Value is None
  EXPECT_EQ(moved.size(), 1000u);
  // assigning a value its own item: the item is taken before the container goes
  Value nested = Value::list({Value::list({1, std::string(40, 'q')}), 2});
  nested = nested[0];
  EXPECT_EQ(nested, Value::list({1, std::string(40, 'q')}));
  Value nested2 = Value::list({Value::list({3})});
  Value inner = nested2[0];
  nested2 = std::move(inner);
  EXPECT_EQ(nested2, Value::list({3}));
  nested2 = nested2;  // NOLINT(clang-diagnostic-self-assign-overloaded)
  EXPECT_EQ(nested2, Value::list({3}));
  EXPECT_EQ(Value(std::string("fourteen bytes")).as<std::string>(), "fourteen bytes");  // inline
  EXPECT_EQ(Value(std::string("fifteen bytes!!")).as<std::string>(), "fifteen bytes!!");  // boxed
}

}  // namespace
