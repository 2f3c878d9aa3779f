// Internals shared by src/pickle.cpp (Value), src/pickle_writer.cpp and src/pickle_reader.cpp:
// the representation behind mp::pickle::Value and the helpers that hash, compare and build it.
#pragma once

#include <multiprocessing/pickle.hpp>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace mp::pickle::detail {

using Kind = std::uint8_t;  // Value::Kind's values, seen from outside the class
inline constexpr Kind kNone = 0, kBool = 1, kInt = 2, kBigInt = 3, kFloat = 4, kStr = 5, kBytes = 6,
                      kList = 7, kTuple = 8, kDict = 9, kSet = 10, kFrozenset = 11;

/// The out-of-line text of a str, bytes or big int longer than Value::kInlineText: the count, the
/// size, then the bytes.
struct TextBox : Counted {
  std::size_t size = 0;
  const char* data() const noexcept { return reinterpret_cast<const char*>(this + 1); }
  char* data() noexcept { return reinterpret_cast<char*>(this + 1); }
};
/// A new box holding a copy of t (one reference).
TextBox* new_text_box(std::string_view t);

/// Raw access for the reader and writer (inline: they use it for every item).
struct Raw {
  static Kind kind(const Value& v) noexcept { return static_cast<Kind>(v.rep_[0] & 0x7f); }
  static bool get_bool(const Value& v) noexcept { return v.rep_[8] != 0; }
  static std::int64_t get_int(const Value& v) noexcept {
    std::int64_t i;
    std::memcpy(&i, v.rep_ + 8, sizeof i);
    return i;
  }
  static double get_float(const Value& v) noexcept {
    double d;
    std::memcpy(&d, v.rep_ + 8, sizeof d);
    return d;
  }
  /// str, bytes or big int bytes (empty for other kinds).
  static std::string_view text(const Value& v) noexcept {
    const Kind k = kind(v);
    if (k != kStr && k != kBytes && k != kBigInt) return {};  // (a moved-from text keeps its length byte)
    if (!v.boxed()) return {reinterpret_cast<const char*>(v.rep_ + 2), v.rep_[1]};
    const auto* b = static_cast<const TextBox*>(v.box());
    return {b->data(), b->size};
  }
  /// null for non-containers
  static Container* container(const Value& v) noexcept {
    return kind(v) >= kList ? static_cast<Container*>(v.box()) : nullptr;
  }
  static long container_use_count(const Value& v) noexcept {
    return v.boxed() ? static_cast<long>(v.box()->refs.load(std::memory_order_relaxed)) : 0;
  }

  // ---- building (v is overwritten) ----
  // A Value is written as two whole words: a Value just made is often read again at once (the
  // memo copies the top of the reader's stack), and a word read over bytes stored one by one
  // waits for them to retire (a failed store-to-load forwarding: it was a third of loads()).
  static_assert(std::endian::native == std::endian::little, "the words below are laid out little-endian");
  [[gnu::always_inline]] static void store_words(Value& v, std::uint64_t lo, std::uint64_t hi) noexcept {
    std::memcpy(v.rep_, &lo, 8);
    std::memcpy(v.rep_ + 8, &hi, 8);
  }
  static void set_scalar(Value& v, Kind kind, std::uint64_t payload) noexcept {
    v.release();
    store_words(v, kind, payload);
  }
  static void set_int(Value& v, std::int64_t i) noexcept { set_scalar(v, kInt, static_cast<std::uint64_t>(i)); }
  static void set_bool(Value& v, bool b) noexcept { set_scalar(v, kBool, b ? 1 : 0); }
  static void set_float(Value& v, double d) noexcept { set_scalar(v, kFloat, std::bit_cast<std::uint64_t>(d)); }
  /// Makes v a str, bytes or big int (kind) holding t.
  static void assign_text(Value& v, Kind kind, std::string_view t) {
    if (t.size() <= Value::kInlineText) {
      v.release();
      store_inline_text(v, kind, t);
      return;
    }
    assign_boxed_text(v, kind, t);
  }
  /// assign_text for a v that holds no box (None, a number, an inline text): nothing to release.
  [[gnu::always_inline]] static void init_text(Value& v, Kind kind, std::string_view t) {
    if (t.size() <= Value::kInlineText) [[likely]] {
      store_inline_text(v, kind, t);
    } else {
      assign_boxed_text(v, kind, t);
    }
  }
  /// set_int for a v that holds no box.
  [[gnu::always_inline]] static void init_int(Value& v, std::int64_t i) noexcept {
    store_words(v, kInt, static_cast<std::uint64_t>(i));
  }
  /// Writes t (at most kInlineText bytes) inline over v, which holds no box.
  [[gnu::always_inline]] static void store_inline_text(Value& v, Kind kind, std::string_view t) noexcept {
    // The text as two words w0 (bytes 0-7) and w1 (8-13), read as overlapping words within t
    // (or the first, middle and last byte of 1-3), then placed after the kind and the length.
    const auto* p = reinterpret_cast<const unsigned char*>(t.data());
    const std::size_t n = t.size();
    std::uint64_t w0 = 0, w1 = 0;
    if (n >= 8) {
      std::uint64_t b;
      std::memcpy(&w0, p, 8);
      std::memcpy(&b, p + n - 8, 8);
      if (n > 8) w1 = b >> (8 * (16 - n));  // bytes 8..n-1 are b's top n-8 bytes
    } else if (n >= 4) {
      std::uint32_t a, b;
      std::memcpy(&a, p, 4);
      std::memcpy(&b, p + n - 4, 4);
      w0 = a | (static_cast<std::uint64_t>(b) << (8 * (n - 4)));  // (the overlap holds the same bytes)
    } else if (n > 0) {
      w0 = p[0] | (static_cast<std::uint64_t>(p[n / 2]) << (8 * (n / 2))) |
           (static_cast<std::uint64_t>(p[n - 1]) << (8 * (n - 1)));
    }
    store_words(v, kind | (static_cast<std::uint64_t>(n) << 8) | (w0 << 16), (w0 >> 48) | (w1 << 16));
  }
  static void assign_boxed_text(Value& v, Kind kind, std::string_view t) {
    Counted* b = new_text_box(t);
    v.release();
    store_words(v, kind | Value::kBoxed, reinterpret_cast<std::uintptr_t>(b));
  }
  /// Makes v a container of the given kind owning c (one reference, taken over).
  static void adopt_container(Value& v, Kind kind, Container* c) noexcept {
    Counted* b = c;
    v.release();
    store_words(v, kind | Value::kBoxed, reinterpret_cast<std::uintptr_t>(b));
  }
  /// Changes the kind of a container (set -> frozenset).
  static void set_container_kind(Value& v, Kind kind) noexcept {
    v.rep_[0] = static_cast<unsigned char>(kind | Value::kBoxed);
  }

  static Value make_str_unchecked(std::string_view s) {
    Value v;
    assign_text(v, kStr, s);
    return v;
  }
  static Value make_bytes(std::string_view s) {
    Value v;
    assign_text(v, kBytes, s);
    return v;
  }
  /// An int from minimal-or-not two's complement little-endian bytes (normalized).
  static Value make_int_from_twos(std::string_view le);
  /// A container of the given kind (list/tuple/dict/set/frozenset) holding `items` as they are
  /// (dict: key, value, ...; no duplicate checks: the caller inserts through the helpers below).
  static Value make_container(Kind kind, std::vector<Value> items);
};

/// The hash of a text (str, bytes, big int bytes): inline, as short keys are hashed for every dict
/// entry read.
inline std::size_t hash_text(std::string_view s) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  std::size_t n = s.size();
  std::uint64_t h = 0x9e3779b97f4a7c15ULL ^ (static_cast<std::uint64_t>(n) * 0xff51afd7ed558ccdULL);
  while (n >= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xff51afd7ed558ccdULL;
    h ^= h >> 32;
    p += 8;
    n -= 8;
  }
  // The last 0-7 bytes, in at most two loads: for 4-7 bytes the first and the last four
  // (overlapping), for 1-3 the first, middle and last byte; either way all of them, and the length
  // is in h already, so that different texts of one length give different words.
  std::uint64_t w = 0;
  if (n >= 4) {
    std::uint32_t a, b;
    std::memcpy(&a, p, 4);
    std::memcpy(&b, p + n - 4, 4);
    w = a | (static_cast<std::uint64_t>(b) << 32);
  } else if (n > 0) {
    w = p[0] | (static_cast<std::uint64_t>(p[n / 2]) << 8) | (static_cast<std::uint64_t>(p[n - 1]) << 16);
  }
  h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 29;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 32;
  return static_cast<std::size_t>(h);
}

/// hash_value() of a str is hash_text() ^ kStrSalt.
inline constexpr std::size_t kStrSalt = 0x5bd1e995u;

/// dict_set's common case inline (the reader's SETITEMS, once per item): a str key that is not in
/// the dict yet, appended with room in the items and the index. Returns false, having changed
/// nothing, in every other case (for dict_set to handle). The probe is find_in's: a str equals
/// only a str of the same text.
[[gnu::always_inline]] inline bool dict_append_new_str(Container& c, Value& key, Value& value) {
  if (Raw::kind(key) != kStr || c.index.empty() || 2 * (c.items.size() / 2 + 1) >= c.index.size() ||
      c.items.capacity() - c.items.size() < 2)
    return false;
  const std::string_view text = Raw::text(key);
  const std::size_t hash = hash_text(text) ^ kStrSalt;
  const std::size_t mask = c.index.size() - 1;
  const std::uint64_t high = static_cast<std::uint64_t>(hash) << 32;
  std::size_t i = static_cast<std::uint32_t>(hash) & mask;
  for (;; i = (i + 1) & mask) {
    const std::uint64_t slot = c.index[i];
    if (slot == 0) break;
    if ((slot & 0xffffffff00000000ULL) != high) continue;
    const Value& there = c.items[static_cast<std::size_t>(slot & 0xffffffffu) - 1];
    if (Raw::kind(there) == kStr && Raw::text(there) == text) return false;  // present: dict_set assigns
  }
  const std::size_t pos = c.items.size();
  if (pos + 1 >= 0xffffffffu) return false;
  c.items.push_back(std::move(key));
  c.items.push_back(std::move(value));
  c.index[i] = high | static_cast<std::uint64_t>(pos + 1);
  return true;
}

/// Python's hash, as far as equality needs it (equal values hash equal); std::invalid_argument
/// ("unhashable type: 'list'") for list, dict, set and tuples holding them.
std::size_t hash_value(const Value& v);
/// Value equality (NaN == NaN).
bool values_equal(const Value& a, const Value& b);

/// Position (in items) of the entry whose key equals `key`, or npos. For dicts positions are
/// those of keys (even indices); `step` is 2 for dicts, 1 for sets.
std::size_t find_in(const Container& c, const Value& key, std::size_t hash, std::size_t step);
/// dict: d[key] = value (a present key keeps its place and its first spelling).
void dict_set(Container& c, Value&& key, Value&& value);
/// set: add (present items are kept, the new one dropped). Returns whether it was added.
bool set_add(Container& c, Value&& item);
/// Makes room for `more` entries (step 2: dict pairs, 1: set items), the hash index included, so
/// that adding them does not reallocate or rebuild.
void reserve_entries(Container& c, std::size_t more, std::size_t step);

/// Decimal digits of a two's complement little-endian integer.
std::string twos_to_decimal(std::string_view le);
/// Minimal two's complement little-endian bytes of an int64 (empty for 0).
std::string int64_to_twos(std::int64_t i);

/// Whether s is well-formed UTF-8 with no surrogates (what Python's strict 'utf-8' accepts).
bool valid_utf8(std::string_view s) noexcept;

}  // namespace mp::pickle::detail
