// Internals shared by src/pickle.cpp (Value), src/pickle_writer.cpp and src/pickle_reader.cpp:
// the representation behind mp::pickle::Value and the helpers that hash, compare and build it.
#pragma once

#include <multiprocessing/pickle.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mp::pickle::detail {

using Kind = std::uint8_t;  // Value::Kind's values, seen from outside the class
inline constexpr Kind kNone = 0, kBool = 1, kInt = 2, kBigInt = 3, kFloat = 4, kStr = 5, kBytes = 6,
                      kList = 7, kTuple = 8, kDict = 9, kSet = 10, kFrozenset = 11;

/// Raw access for the reader and writer.
struct Raw {
  static Kind kind(const Value& v) noexcept;
  static bool get_bool(const Value& v) noexcept;
  static std::int64_t get_int(const Value& v) noexcept;
  static double get_float(const Value& v) noexcept;
  static const std::string& text(const Value& v) noexcept;  // str, bytes or big int bytes
  static Container* container(const Value& v) noexcept;     // null for non-containers
  static long container_use_count(const Value& v) noexcept;

  static Value make_str_unchecked(std::string s);
  static Value make_bytes(std::string s);
  /// Makes v (None) a str or bytes holding t, in place (no Value is moved).
  static void assign_text(Value& v, Kind kind, std::string_view t);
  /// An int from minimal-or-not two's complement little-endian bytes (normalized).
  static Value make_int_from_twos(std::string_view le);
  /// A container of the given kind (list/tuple/dict/set/frozenset) holding `items` as they are
  /// (dict: key, value, ...; no duplicate checks: the caller inserts through the helpers below).
  static Value make_container(Kind kind, std::vector<Value> items);
};

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
