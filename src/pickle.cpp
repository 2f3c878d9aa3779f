// mp::pickle::Value: construction, Python's equality, hashing and repr(), and the big-int
// arithmetic they need. The reader and writer are src/pickle_reader.cpp and pickle_writer.cpp.
#include "pickle_internal.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <stdexcept>
#include <unordered_set>

namespace mp::pickle {

using detail::Container;
using detail::Raw;

namespace detail {
namespace {

constexpr std::size_t kNpos = static_cast<std::size_t>(-1);
// Dicts and sets get a hash index once they hold this many entries; below it a linear scan is
// faster than hashing.
constexpr std::size_t kIndexThreshold = 8;

constexpr std::size_t kBytesSalt = 0x27d4eb2fu, kTupleSalt = 0x165667b1u,
                      kFrozenSalt = 0x9e3779b9u, kNanHash = 0x7ff8dead, kNoneHash = 0xfcb3u;

std::size_t mix(std::size_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h;
}

bool is_big_negative(std::string_view le) { return !le.empty() && (static_cast<unsigned char>(le.back()) & 0x80); }

// Strips redundant sign bytes from two's complement little-endian bytes.
void minimize_twos(std::string& le) {
  while (le.size() > 1) {
    const auto last = static_cast<unsigned char>(le.back());
    const auto prev = static_cast<unsigned char>(le[le.size() - 2]);
    if ((last == 0x00 && !(prev & 0x80)) || (last == 0xff && (prev & 0x80))) {
      le.pop_back();
    } else {
      break;
    }
  }
  if (le.size() == 1 && le[0] == 0) le.clear();
}

// Magnitude of a two's complement little-endian integer as 32-bit limbs (little-endian).
std::vector<std::uint32_t> magnitude_limbs(std::string_view le) {
  std::string bytes(le);
  if (is_big_negative(le)) {  // negate: invert and add one
    unsigned carry = 1;
    for (char& ch : bytes) {
      unsigned v = static_cast<unsigned char>(~static_cast<unsigned char>(ch)) + carry;
      ch = static_cast<char>(v & 0xff);
      carry = v >> 8;
    }
  }
  std::vector<std::uint32_t> limbs((bytes.size() + 3) / 4, 0);
  for (std::size_t i = 0; i < bytes.size(); ++i)
    limbs[i / 4] |= static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i])) << (8 * (i % 4));
  while (!limbs.empty() && limbs.back() == 0) limbs.pop_back();
  return limbs;
}

// Two's complement little-endian (minimal) of sign * magnitude.
std::string limbs_to_twos(const std::vector<std::uint32_t>& limbs, bool negative) {
  std::string bytes;
  bytes.reserve(limbs.size() * 4 + 1);
  for (std::uint32_t l : limbs)
    for (int k = 0; k < 4; ++k) bytes.push_back(static_cast<char>((l >> (8 * k)) & 0xff));
  bytes.push_back('\0');  // room for the sign bit
  if (negative) {
    unsigned carry = 1;
    for (char& ch : bytes) {
      unsigned v = static_cast<unsigned char>(~static_cast<unsigned char>(ch)) + carry;
      ch = static_cast<char>(v & 0xff);
      carry = v >> 8;
    }
  }
  minimize_twos(bytes);
  return bytes;
}

// Exact integer value of an integral double beyond int64 (|d| >= 2**63), as two's complement.
std::string double_to_twos(double d) {
  int exp = 0;
  const double m = std::frexp(std::fabs(d), &exp);  // |d| = m * 2**exp, m in [0.5, 1)
  auto mant = static_cast<std::uint64_t>(std::ldexp(m, 53));
  const auto shift = static_cast<std::size_t>(exp - 53);  // >= 11 here
  std::vector<std::uint32_t> limbs(shift / 32 + 3, 0);
  for (std::size_t b = 0; b < 53; ++b)  // limbs = mant << shift
    if ((mant >> b) & 1u) limbs[(shift + b) / 32] |= std::uint32_t{1} << ((shift + b) % 32);
  while (!limbs.empty() && limbs.back() == 0) limbs.pop_back();
  return limbs_to_twos(limbs, d < 0);
}

bool integral_double(double d) { return std::isfinite(d) && std::trunc(d) == d; }
constexpr double kTwo63 = 9223372036854775808.0;

// d == i exactly (as Python compares int and float).
bool double_equals_int(double d, std::int64_t i) {
  if (!integral_double(d) || d < -kTwo63 || d >= kTwo63) return false;
  return static_cast<std::int64_t>(d) == i;
}
bool double_equals_big(double d, std::string_view le) {
  if (!integral_double(d) || (d > -kTwo63 && d < kTwo63)) return false;
  return double_to_twos(d) == le;
}

std::size_t hash_bytes(std::string_view s) { return hash_text(s); }

// Numbers that compare equal hash equal: integral values by their integer value, others by bits.
std::size_t hash_int(std::int64_t i) { return mix(static_cast<std::size_t>(i)); }
std::size_t hash_big(std::string_view le) { return hash_bytes(le) ^ 0xb16b00b5u; }
std::size_t hash_float(double d) {
  if (std::isnan(d)) return kNanHash;
  if (integral_double(d)) {
    if (d >= -kTwo63 && d < kTwo63) return hash_int(static_cast<std::int64_t>(d));
    return hash_big(double_to_twos(d));
  }
  return mix(std::bit_cast<std::uint64_t>(d));
}

}  // namespace

std::string twos_to_decimal(std::string_view le) {
  std::vector<std::uint32_t> limbs = magnitude_limbs(le);
  if (limbs.empty()) return "0";
  std::string digits;
  while (!limbs.empty()) {
    std::uint64_t rem = 0;
    for (std::size_t i = limbs.size(); i-- > 0;) {
      const std::uint64_t cur = (rem << 32) | limbs[i];
      limbs[i] = static_cast<std::uint32_t>(cur / 1000000000u);
      rem = cur % 1000000000u;
    }
    while (!limbs.empty() && limbs.back() == 0) limbs.pop_back();
    for (int k = 0; k < 9; ++k) {
      digits.push_back(static_cast<char>('0' + rem % 10));
      rem /= 10;
      if (limbs.empty() && rem == 0) break;
    }
  }
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  if (is_big_negative(le)) digits.push_back('-');
  std::reverse(digits.begin(), digits.end());
  return digits;
}

std::string int64_to_twos(std::int64_t i) {
  std::string le(8, '\0');
  const auto u = static_cast<std::uint64_t>(i);
  for (int k = 0; k < 8; ++k) le[static_cast<std::size_t>(k)] = static_cast<char>((u >> (8 * k)) & 0xff);
  minimize_twos(le);
  return le;
}

bool valid_utf8(std::string_view s) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    // ASCII eight bytes at a time (the common case)
    while (end - p >= 8) {
      std::uint64_t word;
      std::memcpy(&word, p, 8);
      if (word & 0x8080808080808080ULL) break;
      p += 8;
    }
    if (p == end) break;
    const unsigned c = *p;
    if (c < 0x80) {
      ++p;
      continue;
    }
    std::size_t n = 0;
    std::uint32_t cp = 0;
    if (c >= 0xc2 && c <= 0xdf) {
      n = 1;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      n = 2;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (static_cast<std::size_t>(end - p) <= n) return false;
    for (std::size_t k = 1; k <= n; ++k) {
      if ((p[k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (p[k] & 0x3f);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff))) return false;
    if (cp >= 0xd800 && cp <= 0xdfff) return false;
    p += n + 1;
  }
  return true;
}

// ---- hashing and equality ----

std::size_t hash_value(const Value& v) {
  switch (Raw::kind(v)) {
    case kNone: return kNoneHash;
    case kBool: return hash_int(Raw::get_bool(v) ? 1 : 0);
    case kInt: return hash_int(Raw::get_int(v));
    case kBigInt: return hash_big(Raw::text(v));
    case kFloat: return hash_float(Raw::get_float(v));
    case kStr: return hash_bytes(Raw::text(v)) ^ kStrSalt;
    case kBytes: return hash_bytes(Raw::text(v)) ^ kBytesSalt;
    case kTuple: {
      std::size_t h = kTupleSalt;
      for (const Value& x : Raw::container(v)->items) h = mix(h * 31 + hash_value(x));
      return h;
    }
    case kFrozenset: {
      std::size_t h = kFrozenSalt;
      for (const Value& x : Raw::container(v)->items) h += mix(hash_value(x) + 0x51ed27);
      return h;
    }
    default:
      throw std::invalid_argument("pickle: unhashable type: '" + v.type_name() + "'");
  }
}

namespace {

class Equal {
 public:
  bool operator()(const Value& a, const Value& b) {
    const Kind ka = Raw::kind(a), kb = Raw::kind(b);
    const bool num_a = ka == kBool || ka == kInt || ka == kBigInt || ka == kFloat;
    const bool num_b = kb == kBool || kb == kInt || kb == kBigInt || kb == kFloat;
    if (num_a || num_b) return num_a && num_b && numbers(a, ka, b, kb);
    const bool set_a = ka == kSet || ka == kFrozenset, set_b = kb == kSet || kb == kFrozenset;
    if (set_a || set_b) return set_a && set_b && sets(a, b);
    if (ka != kb) return false;
    switch (ka) {
      case kNone: return true;
      case kStr:
      case kBytes: return Raw::text(a) == Raw::text(b);
      case kList:
      case kTuple:
      case kDict: return containers(a, b, ka == kDict);
      default: return false;
    }
  }

 private:
  static std::int64_t as_int(const Value& v, Kind k) { return k == kBool ? (Raw::get_bool(v) ? 1 : 0) : Raw::get_int(v); }

  static bool numbers(const Value& a, Kind ka, const Value& b, Kind kb) {
    if (ka == kFloat && kb == kFloat) {
      const double x = Raw::get_float(a), y = Raw::get_float(b);
      return x == y || (std::isnan(x) && std::isnan(y));
    }
    if (ka == kFloat) return float_vs(Raw::get_float(a), b, kb);
    if (kb == kFloat) return float_vs(Raw::get_float(b), a, ka);
    if (ka == kBigInt || kb == kBigInt) return ka == kb && Raw::text(a) == Raw::text(b);
    return as_int(a, ka) == as_int(b, kb);
  }
  static bool float_vs(double d, const Value& v, Kind k) {
    if (k == kBigInt) return double_equals_big(d, Raw::text(v));
    return double_equals_int(d, as_int(v, k));
  }

  // Shared structure (a memo can make a short pickle refer to one container many times) is
  // compared once per pair, so that comparing two such values is not exponential.
  bool seen(const Container* x, const Container* y) {
    if (x == y) return true;
    return proven_.count({x, y}) != 0;
  }
  void prove(const Container* x, const Container* y, const Value& a, const Value& b) {
    if (Raw::container_use_count(a) > 1 || Raw::container_use_count(b) > 1) proven_.insert({x, y});
  }

  bool containers(const Value& a, const Value& b, bool dict) {
    const Container* x = Raw::container(a);
    const Container* y = Raw::container(b);
    if (seen(x, y)) return true;
    if (x->items.size() != y->items.size()) return false;
    if (!dict) {
      for (std::size_t i = 0; i < x->items.size(); ++i)
        if (!(*this)(x->items[i], y->items[i])) return false;
    } else {
      for (std::size_t i = 0; i + 1 < x->items.size(); i += 2) {
        const std::size_t at = find_in(*y, x->items[i], hash_value(x->items[i]), 2);
        if (at == kNpos || !(*this)(x->items[i + 1], y->items[at + 1])) return false;
      }
    }
    prove(x, y, a, b);
    return true;
  }
  bool sets(const Value& a, const Value& b) {
    const Container* x = Raw::container(a);
    const Container* y = Raw::container(b);
    if (seen(x, y)) return true;
    if (x->items.size() != y->items.size()) return false;
    for (const Value& item : x->items)
      if (find_in(*y, item, hash_value(item), 1) == kNpos) return false;
    prove(x, y, a, b);
    return true;
  }

  struct PairHash {
    std::size_t operator()(const std::pair<const Container*, const Container*>& p) const {
      return mix(reinterpret_cast<std::uintptr_t>(p.first) * 31 + reinterpret_cast<std::uintptr_t>(p.second));
    }
  };
  std::unordered_set<std::pair<const Container*, const Container*>, PairHash> proven_;
};

// A slot holds the low 32 bits of the hash (which also choose where probing starts, so that
// growing the table needs no rehashing) above the position + 1.
constexpr std::uint64_t slot_of(std::size_t hash, std::size_t pos) {
  return (static_cast<std::uint64_t>(hash) << 32) | static_cast<std::uint64_t>(pos + 1);
}

// Places a slot in the table, which has room (it is kept at most half full).
void index_place(std::vector<std::uint64_t>& index, std::uint64_t slot) {
  const std::size_t mask = index.size() - 1;
  std::size_t i = static_cast<std::size_t>(slot >> 32) & mask;
  while (index[i] != 0) i = (i + 1) & mask;
  index[i] = slot;
}

// (Re)builds the table with room for `entries` entries: from the old slots when there is an index
// (no rehashing), else from the items.
void build_index(Container& c, std::size_t step, std::size_t entries) {
  std::size_t capacity = 16;
  while (capacity < 2 * (entries + 1)) capacity *= 2;
  if (capacity <= c.index.size()) return;
  std::vector<std::uint64_t> old = std::move(c.index);
  c.index.assign(capacity, 0);
  if (!old.empty()) {
    for (std::uint64_t slot : old)
      if (slot != 0) index_place(c.index, slot);
  } else {
    for (std::size_t i = 0; i < c.items.size(); i += step) index_place(c.index, slot_of(hash_value(c.items[i]), i));
  }
}

void index_insert(Container& c, std::size_t hash, std::size_t pos, std::size_t step) {
  if (pos + 1 >= 0xffffffffu) throw std::length_error("pickle: a dict or set of more than 2**32 entries");
  const std::size_t entries = pos / step + 1;  // with this one
  if (2 * entries >= c.index.size()) build_index(c, step, 2 * entries);
  index_place(c.index, slot_of(hash, pos));
}

}  // namespace

namespace {
// hash_value with the common case, a str key, inlined where a dict or set is filled.
[[gnu::always_inline]] inline std::size_t key_hash(const Value& v) {
  return Raw::kind(v) == kStr ? hash_bytes(Raw::text(v)) ^ kStrSalt : hash_value(v);
}
}  // namespace

bool values_equal(const Value& a, const Value& b) { return Equal{}(a, b); }

std::size_t find_in(const Container& c, const Value& key, std::size_t hash, std::size_t step) {
  if (!c.index.empty()) {
    const std::size_t mask = c.index.size() - 1;
    const std::uint64_t high = static_cast<std::uint64_t>(hash) << 32;
    for (std::size_t i = static_cast<std::uint32_t>(hash) & mask;; i = (i + 1) & mask) {
      const std::uint64_t slot = c.index[i];
      if (slot == 0) return kNpos;
      if ((slot & 0xffffffff00000000ULL) != high) continue;
      const std::size_t pos = static_cast<std::size_t>(slot & 0xffffffffu) - 1;
      const Value& there = c.items[pos];
      if (Raw::kind(key) == kStr && Raw::kind(there) == kStr) {  // the common case, without the general rules
        if (Raw::text(there) == Raw::text(key)) return pos;
        continue;
      }
      if (values_equal(there, key)) return pos;
    }
  }
  if (Raw::kind(key) == kStr) {  // the common case: a str key, compared without the general rules
    const std::string_view text = Raw::text(key);
    for (std::size_t i = 0; i < c.items.size(); i += step)
      if (Raw::kind(c.items[i]) == kStr && Raw::text(c.items[i]) == text) return i;
    return kNpos;
  }
  for (std::size_t i = 0; i < c.items.size(); i += step)
    if (values_equal(c.items[i], key)) return i;
  return kNpos;
}

namespace {
// What hash_value() refuses, refused without computing a hash (small dicts and sets, scanned
// linearly, need none).
void check_hashable(const Value& v) {
  const Kind k = Raw::kind(v);
  if (k <= kBytes || k == kFrozenset) return;
  if (k == kTuple) {
    for (const Value& x : Raw::container(v)->items) check_hashable(x);
    return;
  }
  (void)hash_value(v);  // throws, naming the type
}
}  // namespace

namespace {
// find_in over the index (not empty): the key's position, or kNpos with `empty` set to the slot
// where it would be placed.
std::size_t probe(const Container& c, const Value& key, std::size_t hash, std::size_t& empty) {
  const std::size_t mask = c.index.size() - 1;
  const std::uint64_t high = static_cast<std::uint64_t>(hash) << 32;
  const bool str = Raw::kind(key) == kStr;
  for (std::size_t i = static_cast<std::uint32_t>(hash) & mask;; i = (i + 1) & mask) {
    const std::uint64_t slot = c.index[i];
    if (slot == 0) {
      empty = i;
      return kNpos;
    }
    if ((slot & 0xffffffff00000000ULL) != high) continue;
    const std::size_t pos = static_cast<std::size_t>(slot & 0xffffffffu) - 1;
    const Value& there = c.items[pos];
    if (str && Raw::kind(there) == kStr) {
      if (Raw::text(there) == Raw::text(key)) return pos;
      continue;
    }
    if (values_equal(there, key)) return pos;
  }
}
}  // namespace

void dict_set(Container& c, Value&& key, Value&& value) {
  if (!c.index.empty() && 2 * (c.items.size() / 2 + 1) < c.index.size()) {  // room in the index: one probe
    const std::size_t h = key_hash(key);
    std::size_t empty = 0;
    const std::size_t at = probe(c, key, h, empty);
    if (at != kNpos) {
      c.items[at + 1] = std::move(value);
      return;
    }
    const std::size_t pos = c.items.size();
    if (pos + 1 >= 0xffffffffu) throw std::length_error("pickle: a dict or set of more than 2**32 entries");
    c.items.push_back(std::move(key));
    c.items.push_back(std::move(value));
    c.index[empty] = slot_of(h, pos);
    return;
  }
  if (c.index.empty() && c.items.size() / 2 + 1 < kIndexThreshold) {  // stays small: a linear scan
    check_hashable(key);
    const std::size_t at = find_in(c, key, 0, 2);
    if (at != kNpos) {
      c.items[at + 1] = std::move(value);
    } else {
      c.items.push_back(std::move(key));
      c.items.push_back(std::move(value));
    }
    return;
  }
  const std::size_t h = key_hash(key);
  const std::size_t at = find_in(c, key, h, 2);
  if (at != kNpos) {
    c.items[at + 1] = std::move(value);
    return;
  }
  const std::size_t pos = c.items.size();
  c.items.push_back(std::move(key));
  c.items.push_back(std::move(value));
  if (!c.index.empty()) {
    index_insert(c, h, pos, 2);
  } else if (c.items.size() / 2 >= kIndexThreshold) {
    build_index(c, 2, c.items.size() / 2);
  }
}

void reserve_entries(Container& c, std::size_t more, std::size_t step) {
  c.items.reserve(c.items.size() + more * step);
  const std::size_t entries = c.items.size() / step + more;
  if (entries >= kIndexThreshold) build_index(c, step, entries);
}

bool set_add(Container& c, Value&& item) {
  if (c.index.empty() && c.items.size() + 1 < kIndexThreshold) {  // stays small: a linear scan
    check_hashable(item);
    if (find_in(c, item, 0, 1) != kNpos) return false;
    c.items.push_back(std::move(item));
    return true;
  }
  const std::size_t h = key_hash(item);
  if (find_in(c, item, h, 1) != kNpos) return false;
  const std::size_t pos = c.items.size();
  c.items.push_back(std::move(item));
  if (!c.index.empty()) {
    index_insert(c, h, pos, 1);
  } else if (c.items.size() >= kIndexThreshold) {
    build_index(c, 1, c.items.size());
  }
  return true;
}

// ---- boxes ----

TextBox* new_text_box(std::string_view t) {
  void* mem = ::operator new(sizeof(TextBox) + t.size());
  auto* b = new (mem) TextBox;
  b->size = t.size();
  std::memcpy(b->data(), t.data(), t.size());
  return b;
}

void destroy_box(Counted* c, unsigned kind) noexcept {
  if (kind >= kList) {
    delete static_cast<Container*>(c);
  } else {
    auto* t = static_cast<TextBox*>(c);
    t->~TextBox();
    ::operator delete(t);
  }
}

// ---- Raw ----

Value Raw::make_int_from_twos(std::string_view le) {
  std::string bytes(le);
  minimize_twos(bytes);
  Value v;
  if (bytes.size() <= 8) {
    std::uint64_t u = is_big_negative(bytes) ? ~std::uint64_t{0} : 0;
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      u &= ~(std::uint64_t{0xff} << (8 * i));
      u |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
    }
    set_int(v, static_cast<std::int64_t>(u));
  } else {
    assign_text(v, kBigInt, bytes);
  }
  return v;
}
Value Raw::make_container(Kind kind, std::vector<Value> items) {
  Value v;
  auto* c = new Container;
  c->items = std::move(items);
  adopt_container(v, kind, c);
  return v;
}

// ---- ValueAccess (the conversions' view) ----

Value ValueAccess::boolean(bool b) {
  Value v;
  Raw::set_bool(v, b);
  return v;
}
Value ValueAccess::integer(std::int64_t i) {
  Value v;
  Raw::set_int(v, i);
  return v;
}
Value ValueAccess::unsigned_integer(std::uint64_t u) {
  if (u <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    return integer(static_cast<std::int64_t>(u));
  std::string le(9, '\0');
  for (int k = 0; k < 8; ++k) le[static_cast<std::size_t>(k)] = static_cast<char>((u >> (8 * k)) & 0xff);
  return Raw::make_int_from_twos(le);
}
Value ValueAccess::floating(double d) {
  Value v;
  Raw::set_float(v, d);
  return v;
}
Value ValueAccess::str(std::string s) {
  if (!valid_utf8(s)) throw std::invalid_argument("pickle: a str must be valid UTF-8 (without surrogates)");
  return Raw::make_str_unchecked(s);
}
Value ValueAccess::bytes(std::span<const std::byte> b) {
  return Raw::make_bytes(std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
}

bool ValueAccess::is_bool(const Value& v) noexcept { return v.kind() == Value::Kind::boolean; }
bool ValueAccess::is_int(const Value& v) noexcept {
  return v.kind() == Value::Kind::integer || v.kind() == Value::Kind::big_integer;
}
bool ValueAccess::is_float(const Value& v) noexcept { return v.kind() == Value::Kind::floating; }
bool ValueAccess::is_str(const Value& v) noexcept { return v.kind() == Value::Kind::str; }
bool ValueAccess::is_bytes(const Value& v) noexcept { return v.kind() == Value::Kind::bytes; }
bool ValueAccess::is_list(const Value& v) noexcept { return v.kind() == Value::Kind::list; }
bool ValueAccess::is_tuple(const Value& v) noexcept { return v.kind() == Value::Kind::tuple; }
bool ValueAccess::is_dict(const Value& v) noexcept { return v.kind() == Value::Kind::dict; }
bool ValueAccess::is_set(const Value& v) noexcept { return v.kind() == Value::Kind::set; }
bool ValueAccess::is_any_set(const Value& v) noexcept {
  return v.kind() == Value::Kind::set || v.kind() == Value::Kind::frozenset;
}

void ValueAccess::mismatch(const Value& v, const char* wanted) {
  throw std::invalid_argument(std::string("pickle: expected ") + wanted + ", got " + v.type_name());
}
void ValueAccess::out_of_range(const Value& v, const char* wanted) {
  throw std::out_of_range("pickle: int " + v.repr() + " does not fit " + wanted);
}

bool ValueAccess::get_bool(const Value& v) {
  if (v.kind() != Value::Kind::boolean) mismatch(v, "bool");
  return Raw::get_bool(v);
}
std::int64_t ValueAccess::get_int64(const Value& v, const char* wanted) {
  switch (v.kind()) {
    case Value::Kind::boolean: return Raw::get_bool(v) ? 1 : 0;
    case Value::Kind::integer: return Raw::get_int(v);
    case Value::Kind::big_integer: out_of_range(v, "a 64-bit integer");
    default: mismatch(v, wanted);
  }
}
std::uint64_t ValueAccess::get_uint64(const Value& v, const char* wanted) {
  switch (v.kind()) {
    case Value::Kind::boolean: return Raw::get_bool(v) ? 1 : 0;
    case Value::Kind::integer:
      if (Raw::get_int(v) < 0) out_of_range(v, "an unsigned integer type");
      return static_cast<std::uint64_t>(Raw::get_int(v));
    case Value::Kind::big_integer: {
      const std::string_view le = Raw::text(v);
      if (is_big_negative(le) || le.size() > 9 || (le.size() == 9 && le[8] != 0)) out_of_range(v, "a 64-bit unsigned integer");
      std::uint64_t u = 0;
      for (std::size_t i = 0; i < 8; ++i) u |= static_cast<std::uint64_t>(static_cast<unsigned char>(le[i])) << (8 * i);
      return u;
    }
    default: mismatch(v, wanted);
  }
}
double ValueAccess::get_double(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::floating: return Raw::get_float(v);
    case Value::Kind::boolean: return Raw::get_bool(v) ? 1.0 : 0.0;
    case Value::Kind::integer: return static_cast<double>(Raw::get_int(v));
    case Value::Kind::big_integer: {
      // Correctly rounded, as Python's float(int): the top 64 bits of the magnitude with a
      // sticky bit for the rest, converted once and scaled.
      const std::vector<std::uint32_t> limbs = magnitude_limbs(Raw::text(v));
      const std::size_t bits = (limbs.size() - 1) * 32 + static_cast<std::size_t>(std::bit_width(limbs.back()));
      const std::size_t shift = bits - 64;
      std::uint64_t top = 0;
      bool sticky = false;
      for (std::size_t b = 0; b < bits; ++b) {
        const bool bit = (limbs[b / 32] >> (b % 32)) & 1u;
        if (b < shift) {
          sticky = sticky || bit;
        } else if (bit) {
          top |= std::uint64_t{1} << (b - shift);
        }
      }
      if (sticky) top |= 1;
      const double d = std::ldexp(static_cast<double>(top), static_cast<int>(shift));
      if (std::isinf(d)) throw std::out_of_range("pickle: int too large to convert to float");
      return is_big_negative(Raw::text(v)) ? -d : d;
    }
    default: mismatch(v, "float");
  }
}
std::string_view ValueAccess::get_str(const Value& v) {
  if (v.kind() != Value::Kind::str) mismatch(v, "str");
  return Raw::text(v);
}
Bytes ValueAccess::get_bytes(const Value& v) {
  if (v.kind() != Value::Kind::bytes) mismatch(v, "bytes");
  const std::string_view t = Raw::text(v);
  const auto* p = reinterpret_cast<const std::byte*>(t.data());
  return Bytes(p, p + t.size());
}
const std::vector<Value>& ValueAccess::items(const Value& v) noexcept {
  static const std::vector<Value> kEmpty;
  const Container* c = Raw::container(v);
  return c ? c->items : kEmpty;
}

// ---- check_expansion ----

namespace {
struct Expansion {
  std::size_t budget;
  std::unordered_map<const Container*, std::size_t> sizes;
  std::size_t count(const Value& v) {
    const Container* c = Raw::container(v);
    if (!c) return 1 + Raw::text(v).size() / 64;
    if (Raw::container_use_count(v) > 1) {
      if (auto it = sizes.find(c); it != sizes.end()) return it->second;
    }
    std::size_t total = 1;
    for (const Value& x : c->items) {
      total += count(x);
      if (total > budget) throw std::invalid_argument(
          "pickle: the data refers to shared objects so often that copying them out would exceed " +
          std::to_string(budget) + " elements (load it as a pickle::Value, which keeps them shared)");
    }
    if (Raw::container_use_count(v) > 1) sizes.emplace(c, total);
    return total;
  }
};
}  // namespace

void check_expansion(const Value& v, std::size_t budget) { Expansion{budget, {}}.count(v); }

}  // namespace detail

// ---- Value ----

Value Value::list(std::vector<Value> items) { return Raw::make_container(detail::kList, std::move(items)); }
Value Value::tuple(std::vector<Value> items) { return Raw::make_container(detail::kTuple, std::move(items)); }
Value Value::dict(std::vector<std::pair<Value, Value>> items) {
  Value v = Raw::make_container(detail::kDict, {});
  Container& c = *Raw::container(v);
  detail::reserve_entries(c, items.size(), 2);
  for (auto& [k, x] : items) detail::dict_set(c, std::move(k), std::move(x));
  return v;
}
Value Value::set(std::vector<Value> items) {
  Value v = Raw::make_container(detail::kSet, {});
  Container& c = *Raw::container(v);
  detail::reserve_entries(c, items.size(), 1);
  for (auto& x : items) detail::set_add(c, std::move(x));
  return v;
}
Value Value::frozenset(std::vector<Value> items) {
  Value v = set(std::move(items));
  Raw::set_container_kind(v, detail::kFrozenset);
  return v;
}

bool Value::is_none() const noexcept { return kind() == Kind::none; }

std::string Value::type_name() const {
  switch (kind()) {
    case Kind::none: return "NoneType";
    case Kind::boolean: return "bool";
    case Kind::integer:
    case Kind::big_integer: return "int";
    case Kind::floating: return "float";
    case Kind::str: return "str";
    case Kind::bytes: return "bytes";
    case Kind::list: return "list";
    case Kind::tuple: return "tuple";
    case Kind::dict: return "dict";
    case Kind::set: return "set";
    case Kind::frozenset: return "frozenset";
  }
  return "?";
}

const Value& Value::operator[](std::string_view key) const {
  if (kind() != Kind::dict)
    throw std::invalid_argument("pickle: '" + type_name() + "' object is not a dict (looking up '" + std::string(key) + "')");
  const Container& c = *Raw::container(*this);
  if (!c.index.empty()) {
    const std::size_t at = detail::find_in(c, Raw::make_str_unchecked(key),
                                           detail::hash_text(key) ^ detail::kStrSalt, 2);
    if (at != static_cast<std::size_t>(-1)) return c.items[at + 1];
  } else {
    for (std::size_t i = 0; i + 1 < c.items.size(); i += 2)
      if (c.items[i].kind() == Kind::str && Raw::text(c.items[i]) == key) return c.items[i + 1];
  }
  throw std::out_of_range("pickle: KeyError: '" + std::string(key) + "'");
}

const Value& Value::operator[](std::size_t index) const {
  if (kind() != Kind::list && kind() != Kind::tuple)
    throw std::invalid_argument("pickle: '" + type_name() + "' object is not a list or tuple");
  if (index >= Raw::container(*this)->items.size())
    throw std::out_of_range("pickle: " + type_name() + " index " + std::to_string(index) + " out of range (size " +
                            std::to_string(Raw::container(*this)->items.size()) + ")");
  return Raw::container(*this)->items[index];
}

namespace {
// Copy-on-write: a container shared with other Values is copied before it changes.
void detach(Value& v) {
  if (Raw::container_use_count(v) > 1) {
    auto* copy = new Container(*Raw::container(v));
    copy->sealed = false;
    Raw::adopt_container(v, Raw::kind(v), copy);
  } else {
    // the last other owner may have just let go in another thread: see its writes first
    std::atomic_thread_fence(std::memory_order_acquire);
  }
}
}  // namespace

void Value::set_item(Value key, Value value) {
  if (kind() != Kind::dict) throw std::logic_error("pickle: set_item on a '" + type_name() + "' (a dict is needed)");
  (void)detail::hash_value(key);  // unhashable keys fail before anything changes
  detach(*this);
  detail::dict_set(*Raw::container(*this), std::move(key), std::move(value));
}

void Value::append(Value item) {
  if (kind() != Kind::list) throw std::logic_error("pickle: append on a '" + type_name() + "' (a list is needed)");
  detach(*this);
  Raw::container(*this)->items.push_back(std::move(item));
}

std::size_t Value::size() const {
  switch (kind()) {
    case Kind::str:
      return static_cast<std::size_t>(std::count_if(Raw::text(*this).begin(), Raw::text(*this).end(),
                                                    [](char c) { return (static_cast<unsigned char>(c) & 0xc0) != 0x80; }));
    case Kind::bytes: return Raw::text(*this).size();
    case Kind::dict: return Raw::container(*this)->items.size() / 2;
    case Kind::list:
    case Kind::tuple:
    case Kind::set:
    case Kind::frozenset: return Raw::container(*this)->items.size();
    default: throw std::invalid_argument("pickle: object of type '" + type_name() + "' has no len()");
  }
}

bool Value::operator==(const Value& other) const { return detail::values_equal(*this, other); }

// ---- repr ----

namespace {

const char kHex[] = "0123456789abcdef";

void append_hex_escape(std::string& out, char kind, std::uint32_t cp, int digits) {
  out += '\\';
  out += kind;
  for (int k = digits - 1; k >= 0; --k) out += kHex[(cp >> (4 * k)) & 0xf];
}

// Python's str.isprintable() for non-ASCII code points, for the categories it excludes (Cc, Cf,
// Zs but space, Zl, Zp, Co, and the noncharacters); unassigned code points (Cn) are not known
// here and print as themselves.
bool printable(std::uint32_t c) {
  if (c < 0xa1) return c >= 0x20 && c < 0x7f;
  if (c == 0xad || c == 0x1680 || (c >= 0x2000 && c <= 0x200f) || (c >= 0x2028 && c <= 0x202f) ||
      (c >= 0x205f && c <= 0x2064) || (c >= 0x2066 && c <= 0x206f) || c == 0x3000 || c == 0xfeff ||
      (c >= 0xfff9 && c <= 0xfffb) || (c >= 0x600 && c <= 0x605) || c == 0x61c || c == 0x6dd || c == 0x70f ||
      c == 0x890 || c == 0x891 || c == 0x8e2 || c == 0x180e || c == 0x110bd || c == 0x110cd ||
      (c >= 0x13430 && c <= 0x1343f) || (c >= 0x1bca0 && c <= 0x1bca3) || (c >= 0x1d173 && c <= 0x1d17a) ||
      c == 0xe0001 || (c >= 0xe0020 && c <= 0xe007f))
    return false;
  if ((c >= 0xe000 && c <= 0xf8ff) || c >= 0xf0000) return false;       // private use
  if ((c >= 0xfdd0 && c <= 0xfdef) || (c & 0xfffe) == 0xfffe) return false;  // noncharacters
  return true;
}

void repr_str(std::string& out, std::string_view s) {
  const bool has_single = s.find('\'') != std::string::npos, has_double = s.find('"') != std::string::npos;
  const char quote = (has_single && !has_double) ? '"' : '\'';
  out += quote;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    std::uint32_t cp = *p;
    std::size_t n = 1;
    if (cp >= 0xf0) {
      cp = ((cp & 0x07u) << 18) | ((p[1] & 0x3fu) << 12) | ((p[2] & 0x3fu) << 6) | (p[3] & 0x3fu);
      n = 4;
    } else if (cp >= 0xe0) {
      cp = ((cp & 0x0fu) << 12) | ((p[1] & 0x3fu) << 6) | (p[2] & 0x3fu);
      n = 3;
    } else if (cp >= 0xc0) {
      cp = ((cp & 0x1fu) << 6) | (p[1] & 0x3fu);
      n = 2;
    }
    if (cp == static_cast<unsigned char>(quote) || cp == '\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp < 0x80) {
      if (cp < 0x20 || cp == 0x7f) {
        append_hex_escape(out, 'x', cp, 2);
      } else {
        out += static_cast<char>(cp);
      }
    } else if (printable(cp)) {
      out.append(reinterpret_cast<const char*>(p), n);
    } else if (cp <= 0xff) {
      append_hex_escape(out, 'x', cp, 2);
    } else if (cp <= 0xffff) {
      append_hex_escape(out, 'u', cp, 4);
    } else {
      append_hex_escape(out, 'U', cp, 8);
    }
    p += n;
  }
  out += quote;
}

void repr_bytes(std::string& out, std::string_view s) {
  const bool has_single = s.find('\'') != std::string::npos, has_double = s.find('"') != std::string::npos;
  const char quote = (has_single && !has_double) ? '"' : '\'';
  out += 'b';
  out += quote;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == static_cast<unsigned char>(quote) || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c >= 0x7f) {
      append_hex_escape(out, 'x', c, 2);
    } else {
      out += ch;
    }
  }
  out += quote;
}

// Python's float repr: the shortest digits that round-trip, fixed notation for exponents in
// [-4, 16), scientific (at least two exponent digits) otherwise, and ".0" on integral values.
void repr_float(std::string& out, double d) {
  if (std::isnan(d)) {
    out += "nan";
    return;
  }
  if (std::isinf(d)) {
    out += d < 0 ? "-inf" : "inf";
    return;
  }
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  (void)ec;
  std::string_view sci(buf, static_cast<std::size_t>(end - buf));
  const std::size_t e = sci.find('e');
  std::string_view mant = sci.substr(0, e);
  int exp10 = 0;
  std::from_chars(sci.data() + e + 1 + (sci[e + 1] == '+' ? 1 : 0), sci.data() + sci.size(), exp10);
  bool negative = false;
  if (!mant.empty() && mant[0] == '-') {
    negative = true;
    mant.remove_prefix(1);
  }
  std::string digits;
  for (char c : mant)
    if (c != '.') digits += c;
  const int decpt = exp10 + 1;  // value = 0.DIGITS * 10**decpt
  if (negative) out += '-';
  if (decpt > -4 && decpt <= 16) {
    const auto nd = static_cast<int>(digits.size());
    if (decpt <= 0) {
      out += "0.";
      out.append(static_cast<std::size_t>(-decpt), '0');
      out += digits;
    } else if (decpt >= nd) {
      out += digits;
      out.append(static_cast<std::size_t>(decpt - nd), '0');
      out += ".0";
    } else {
      out += digits.substr(0, static_cast<std::size_t>(decpt));
      out += '.';
      out += digits.substr(static_cast<std::size_t>(decpt));
    }
  } else {
    out += digits[0];
    if (digits.size() > 1) {
      out += '.';
      out += digits.substr(1);
    }
    const int x = decpt - 1;
    out += x < 0 ? "e-" : "e+";
    const int ax = x < 0 ? -x : x;
    if (ax < 10) out += '0';
    out += std::to_string(ax);
  }
}

void repr_into(std::string& out, const Value& v, std::size_t depth) {
  if (depth > kMaxDepth) throw std::invalid_argument("pickle: repr of a value nested deeper than kMaxDepth");
  using namespace detail;
  switch (Raw::kind(v)) {
    case kNone: out += "None"; return;
    case kBool: out += Raw::get_bool(v) ? "True" : "False"; return;
    case kInt: out += std::to_string(Raw::get_int(v)); return;
    case kBigInt: out += twos_to_decimal(Raw::text(v)); return;
    case kFloat: repr_float(out, Raw::get_float(v)); return;
    case kStr: repr_str(out, Raw::text(v)); return;
    case kBytes: repr_bytes(out, Raw::text(v)); return;
    default: break;
  }
  const auto& items = Raw::container(v)->items;
  const Kind k = Raw::kind(v);
  if ((k == kSet || k == kFrozenset) && items.empty()) {
    out += k == kSet ? "set()" : "frozenset()";
    return;
  }
  const char* open = k == kList ? "[" : k == kTuple ? "(" : k == kFrozenset ? "frozenset({" : "{";
  const char* close = k == kList ? "]" : k == kTuple ? ")" : k == kFrozenset ? "})" : "}";
  out += open;
  if (k == kDict) {
    for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
      if (i) out += ", ";
      repr_into(out, items[i], depth + 1);
      out += ": ";
      repr_into(out, items[i + 1], depth + 1);
    }
  } else {
    for (std::size_t i = 0; i < items.size(); ++i) {
      if (i) out += ", ";
      repr_into(out, items[i], depth + 1);
    }
    if (k == kTuple && items.size() == 1) out += ',';
  }
  out += close;
}

}  // namespace

std::string Value::repr() const {
  std::string out;
  repr_into(out, *this, 0);
  return out;
}

// ---- ints of any size ----

Value int_from_string(std::string_view decimal) {
  std::string_view s = decimal;
  bool negative = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    negative = s[0] == '-';
    s.remove_prefix(1);
  }
  if (s.empty() || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
    throw std::invalid_argument("pickle: invalid literal for int(): '" + std::string(decimal) + "'");
  std::vector<std::uint32_t> limbs;
  for (char c : s) {  // limbs = limbs * 10 + digit
    std::uint64_t carry = static_cast<std::uint64_t>(c - '0');
    for (auto& l : limbs) {
      const std::uint64_t cur = static_cast<std::uint64_t>(l) * 10 + carry;
      l = static_cast<std::uint32_t>(cur & 0xffffffffu);
      carry = cur >> 32;
    }
    if (carry) limbs.push_back(static_cast<std::uint32_t>(carry));
  }
  while (!limbs.empty() && limbs.back() == 0) limbs.pop_back();
  return Raw::make_int_from_twos(detail::limbs_to_twos(limbs, negative));
}

Value int_from_bytes(std::span<const std::byte> little_endian) {
  return Raw::make_int_from_twos(
      std::string_view(reinterpret_cast<const char*>(little_endian.data()), little_endian.size()));
}

Bytes int_to_bytes(const Value& integer) {
  std::string le;
  switch (Raw::kind(integer)) {
    case detail::kBool: le = detail::int64_to_twos(Raw::get_bool(integer) ? 1 : 0); break;
    case detail::kInt: le = detail::int64_to_twos(Raw::get_int(integer)); break;
    case detail::kBigInt: le = Raw::text(integer); break;
    default: detail::ValueAccess::mismatch(integer, "int");
  }
  const auto* p = reinterpret_cast<const std::byte*>(le.data());
  return Bytes(p, p + le.size());
}

}  // namespace mp::pickle
