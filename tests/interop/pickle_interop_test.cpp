// mp::pickle against the real CPython, for every version found here (3.11, 3.12, 3.13):
//  - our dumps() is byte for byte what pickle.dumps(obj, protocol) writes, protocols 2-5, for a
//    corpus of values (each built twice: as a C++ Value and as a Python expression);
//  - CPython loads what we write to an equal value whose repr() is our repr();
//  - we load what CPython writes to an equal value.
#include <multiprocessing/pickle.hpp>

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "interop/python_peer.hpp"

namespace {

using mp::Bytes;
using mp::pickle::Value;
namespace pickle = mp::pickle;

struct Case {
  std::string name;
  std::string python;  // a Python expression for the same value
  Value value;
};

// 2**k (negative: -(2**k)) from its two's complement bytes.
Value pow2(std::size_t k, bool negative = false) {
  Bytes le(k / 8 + 2, std::byte{0});
  if (!negative) {
    le[k / 8] = static_cast<std::byte>(1u << (k % 8));
  } else {
    for (std::size_t bit = k; bit < le.size() * 8; ++bit) le[bit / 8] |= static_cast<std::byte>(1u << (bit % 8));
  }
  return pickle::int_from_bytes(le);
}

std::vector<Case> corpus() {
  std::vector<Case> c;
  c.push_back({"none", "None", Value()});
  c.push_back({"bools", "[True, False]", Value::list({true, false})});
  c.push_back({"small_ints",
               "[0, 1, 255, 256, 65535, 65536, -1, -256, 2**31-1, 2**31, -2**31, -2**31-1, 2**63-1, 2**63, -2**63, "
               "-2**63-1, 2**64]",
               Value::list({0, 1, 255, 256, 65535, 65536, -1, -256, 2147483647LL, 2147483648LL, -2147483648LL,
                            -2147483649LL, std::numeric_limits<long long>::max(), 9223372036854775808ULL,
                            std::numeric_limits<long long>::min(), pickle::int_from_string("-9223372036854775809"),
                            pickle::int_from_string("18446744073709551616")})});
  c.push_back({"big_ints", "[2**100, -2**100, 2**2039, -2**2040, 2**2047, 2**2048, -2**8000]",
               Value::list({pow2(100), pow2(100, true), pow2(2039), pow2(2040, true), pow2(2047), pow2(2048),
                            pow2(8000, true)})});
  c.push_back({"floats", "[0.0, -0.0, 1.5, -2.5, 1e300, 5e-324, float('inf'), float('-inf'), 0.1, 1e16, float('nan')]",
               Value::list({0.0, -0.0, 1.5, -2.5, 1e300, 5e-324, std::numeric_limits<double>::infinity(),
                            -std::numeric_limits<double>::infinity(), 0.1, 1e16,
                            std::numeric_limits<double>::quiet_NaN()})});
  c.push_back({"strs", R"(['', 'abc', 'h\u00e9\u20ac', '\U0001f600 emoji', 'x'*255, 'y'*256, "quote'", 'tab\t\n\x00'])",
               Value::list({"", "abc", "h\xc3\xa9\xe2\x82\xac", "\xf0\x9f\x98\x80 emoji", std::string(255, 'x'),
                            std::string(256, 'y'), "quote'", std::string("tab\t\n\0", 6)})});
  c.push_back({"bytes", R"([b'', b'\x00', b'ab', b'\xff'*255, b'z'*256])",
               Value::list({Bytes{}, Bytes{std::byte{0}}, mp::bytes("ab"), Bytes(255, std::byte{0xff}),
                            Bytes(256, std::byte{'z'})})});
  c.push_back({"empties", "[[], (), {}, set(), frozenset()]",
               Value::list({Value::list(), Value::tuple(), Value::dict(), Value::set(), Value::frozenset()})});
  c.push_back({"tuples", "[(1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)]",
               Value::list({Value::tuple({1}), Value::tuple({1, 2}), Value::tuple({1, 2, 3}), Value::tuple({1, 2, 3, 4})})});
  c.push_back({"nested", "{'a': [1, (2, 3), {'b': None}], 'c': {1, 2}, (1, 'k'): frozenset({3}), 4.5: [[[]]]}",
               Value::dict({{"a", Value::list({1, Value::tuple({2, 3}), Value::dict({{"b", Value()}})})},
                            {"c", Value::set({1, 2})},
                            {Value::tuple({1, "k"}), Value::frozenset({3})},
                            {4.5, Value::list({Value::list({Value::list()})})}})});
  c.push_back({"shared", "(lambda s: [s, s, (s,), {'k': s}])([1, 2])",
               [] {
                 Value s = Value::list({1, 2});
                 return Value::list({s, s, Value::tuple({s}), Value::dict({{"k", s}})});
               }()});
  c.push_back({"records", "[{'id': i, 'name': 'n%d' % i, 'tags': ['t%d' % i], 'sub': {'id': -i}} for i in range(3)]",
               [] {
                 std::vector<Value> records;
                 for (int i = 0; i < 3; ++i)
                   records.push_back(Value::dict({{"id", i},
                                                  {"name", "n" + std::to_string(i)},
                                                  {"tags", Value::list({"t" + std::to_string(i)})},
                                                  {"sub", Value::dict({{"id", -i}})}}));
                 return Value::list(records);
               }()});
  std::vector<Value> v1000, v1001, s2000;
  std::vector<std::pair<Value, Value>> d1000, d2001;
  for (int i = 0; i < 1000; ++i) v1000.push_back(i);
  for (int i = 0; i < 1001; ++i) v1001.push_back(i);
  for (int i = 0; i < 2000; ++i) s2000.push_back(i);
  for (int i = 0; i < 1000; ++i) d1000.emplace_back(i, -i);
  for (int i = 0; i < 2001; ++i) d2001.emplace_back("k" + std::to_string(i), i);
  c.push_back({"list1000", "list(range(1000))", Value::list(v1000)});
  c.push_back({"list1001", "list(range(1001))", Value::list(v1001)});
  c.push_back({"dict1000", "{i: -i for i in range(1000)}", Value::dict(d1000)});
  c.push_back({"dict2001", "{'k%d' % i: i for i in range(2001)}", Value::dict(d2001)});
  c.push_back({"set1000", "set(range(1000))", Value::set(v1000)});
  c.push_back({"set2000", "set(range(2000))", Value::set(s2000)});
  c.push_back({"frozenset1001", "frozenset(range(1001))", Value::frozenset(v1001)});
  // frames: payloads around 64 KiB, and many small opcodes across frame boundaries
  c.push_back({"str70000", "('x' * 70000, 1)", Value::tuple({std::string(70000, 'x'), 1})});
  c.push_back({"str65530", "['y' * 65530, 'z' * 10]", Value::list({std::string(65530, 'y'), std::string(10, 'z')})});
  c.push_back({"str65540", "['y' * 65540, 'z' * 10]", Value::list({std::string(65540, 'y'), std::string(10, 'z')})});
  c.push_back({"bytes70000", "[b'q' * 70000]", Value::list({Bytes(70000, std::byte{'q'})})});
  c.push_back({"bytes65535", "[b'q' * 65535, b'r' * 10]", Value::list({Bytes(65535, std::byte{'q'}), Bytes(10, std::byte{'r'})})});
  std::vector<Value> strs, lists, ints;
  for (int i = 0; i < 20000; ++i) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%05d", i);
    strs.push_back(std::string(buf));
    lists.push_back(Value::list({i * 1000}));
  }
  for (int i = 0; i < 30000; ++i) ints.push_back(i * 1000);
  c.push_back({"strs20000", "['%05d' % i for i in range(20000)]", Value::list(strs)});
  c.push_back({"lists20000", "[[i * 1000] for i in range(20000)]", Value::list(lists)});
  c.push_back({"ints30000", "[i * 1000 for i in range(30000)]", Value::list(ints)});
  return c;
}

const char* kScript = R"PY(
import os, pickle, sys
d = sys.argv[1]
for line in open(os.path.join(d, 'corpus.txt'), encoding='utf-8'):
    name, expr = line.rstrip('\n').split('\t', 1)
    v = eval(expr)
    for p in (2, 3, 4, 5):
        b = pickle.dumps(v, p)
        with open(os.path.join(d, 'py_%s_%d' % (name, p)), 'wb') as f:
            f.write(b)
        with open(os.path.join(d, 'cc_%s_%d' % (name, p)), 'rb') as f:
            loaded = pickle.loads(f.read())
        same = repr(loaded) == repr(v)
        with open(os.path.join(d, 'repr_%s_%d' % (name, p)), 'w', encoding='utf-8') as f:
            f.write(('OK ' if same else 'DIFFERENT ') + repr(loaded))
)PY";

Bytes read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return mp::bytes(s);
}
std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The first differing offset, for a readable failure.
std::string first_difference(const Bytes& a, const Bytes& b) {
  std::size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return "sizes " + std::to_string(a.size()) + " vs " + std::to_string(b.size()) + ", first difference at " +
         std::to_string(i);
}

class PickleInterop : public testing::TestWithParam<const char*> {};

TEST_P(PickleInterop, cpython_and_we_write_the_same_bytes_and_read_each_other) {
  auto it = mp_test::pythons().find(GetParam());
  if (it == mp_test::pythons().end()) GTEST_SKIP() << "CPython " << GetParam() << " is not installed here";
  const auto dir = std::filesystem::temp_directory_path() /
                   ("mp_pickle_interop_" + std::to_string(::getpid()) + "_" + GetParam());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::vector<Case> cases = corpus();
  {
    std::ofstream list(dir / "corpus.txt", std::ios::binary);
    for (const Case& c : cases) {
      list << c.name << '\t' << c.python << '\n';
      for (int p = 2; p <= 5; ++p) {
        const Bytes b = pickle::dumps(c.value, p);
        std::ofstream out(dir / ("cc_" + c.name + "_" + std::to_string(p)), std::ios::binary);
        out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
      }
    }
    std::ofstream script(dir / "check.py", std::ios::binary);
    script << kScript;
  }
  std::string command;
  for (const auto& part : it->second.argv0) command += part + " ";
  command += "-I " + (dir / "check.py").string() + " " + dir.string() + " 2>&1; echo EXIT=$?";
  const std::string output = mp_test::run_capture(command);
  ASSERT_NE(output.find("EXIT=0"), std::string::npos) << output;

  for (const Case& c : cases) {
    for (int p = 2; p <= 5; ++p) {
      SCOPED_TRACE(c.name + " protocol " + std::to_string(p));
      const std::string suffix = c.name + "_" + std::to_string(p);
      const Bytes theirs = read_file(dir / ("py_" + suffix));
      const Bytes ours = pickle::dumps(c.value, p);
      EXPECT_TRUE(theirs == ours) << first_difference(theirs, ours);
      // we read theirs
      Value loaded;
      ASSERT_NO_THROW(loaded = pickle::loads(theirs));
      EXPECT_EQ(loaded, c.value);
      // they read ours, to an equal value printed as we print it
      const std::string repr = read_text(dir / ("repr_" + suffix));
      EXPECT_EQ(repr.substr(0, 3), "OK ") << repr.substr(0, 200);
      EXPECT_TRUE(repr.substr(3) == c.value.repr()) << repr.substr(3, 300) << "\nvs ours\n" << c.value.repr().substr(0, 300);
    }
  }
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(CPython, PickleInterop, testing::Values("3.8", "3.9", "3.10", "3.11", "3.12", "3.13"),
                         [](const testing::TestParamInfo<const char*>& param) {
                           std::string name = std::string("v") + param.param;
                           for (char& ch : name)
                             if (ch == '.') ch = '_';
                           return name;
                         });

}  // namespace
