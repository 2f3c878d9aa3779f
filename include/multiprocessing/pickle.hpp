// CPython's pickle format: a dynamically typed Value and dumps/loads for protocols 2-5.
// Python: the `pickle` module, restricted to plain data (None, bool, int, float, str, bytes,
// list, tuple, dict, set, frozenset), which is what multiprocessing's send()/recv() carry
// between a Python program and a C++ one.
//
// Writing: dumps() produces byte for byte what CPython 3.8-3.13's pickle.dumps(obj, protocol)
// writes for the same value (PROTO, FRAMEs of 64 KiB from protocol 4, MEMOIZE/BINPUT, the
// smallest opcodes, batches of 1000), see docs/pickle.rst for the few places where identity
// (which Python objects are the same object) cannot be known from a C++ value.
//
// Reading: loads() never imports or calls anything. GLOBAL/STACK_GLOBAL + REDUCE are accepted
// only for a short allow-list (builtins.set/frozenset/list/bytearray, _codecs.encode(str,
// 'latin1') as protocol 2 writes bytes, and their __builtin__ spellings); any other global is
// refused with std::invalid_argument naming it. Every length is checked against the input before
// anything is allocated; truncated or malformed input, cycles, nesting deeper than kMaxDepth and
// unhashable dict keys are std::invalid_argument.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <multiprocessing/base.hpp>

namespace mp::pickle {

class Value;

/// Containers nested deeper than this are refused by loads() and dumps() (Python's default
/// recursion limit, beyond which CPython's own pickler fails).
inline constexpr std::size_t kMaxDepth = 1000;

namespace detail {
struct Container;  // the shared storage of list/tuple/dict/set/frozenset values
/// The reference count at the start of every out-of-line part of a Value (containers, long text).
struct Counted {
  Counted() noexcept = default;
  Counted(const Counted&) noexcept {}  // a copy is a new object: one owner
  Counted& operator=(const Counted&) noexcept { return *this; }
  mutable std::atomic<std::size_t> refs{1};
};
inline void add_ref(Counted* c) noexcept { c->refs.fetch_add(1, std::memory_order_relaxed); }
/// Frees c (whose Value kind is `kind`) with its last reference (src/pickle.cpp).
void destroy_box(Counted* c, unsigned kind) noexcept;
inline void drop_ref(Counted* c, unsigned kind) noexcept {
  // The only owner needs no atomic read-modify-write: nobody else can add a reference.
  if (c->refs.load(std::memory_order_acquire) == 1 || c->refs.fetch_sub(1, std::memory_order_acq_rel) == 1)
    destroy_box(c, kind);
}
struct ValueAccess;  // the conversions reach Value's representation through it
struct Raw;          // and so do the reader and writer (src/pickle_internal.hpp)
template <class T, class Enable = void>
struct Convert;    // C++ type <-> Value (detail/pickle_convert.hpp)
/// True when T maps to pickle (and so may be passed to Value(T), dumps<T>, loads<T>).
template <class T>
inline constexpr bool is_picklable_v = Convert<T>::kSupported;
}  // namespace detail

/// A dynamically typed Python value: None, bool, int (any size), float, str, bytes, list, tuple,
/// dict, set or frozenset. Values are values: copying one copies (containers are shared until one
/// copy is modified, so copies are cheap). dict keeps insertion order, as Python's does; set and
/// frozenset keep insertion order too (Python's own order depends on hashes).
class Value {
 public:
  /// None.
  Value() noexcept = default;
  /// From any C++ type that maps to pickle: nullptr/std::nullopt/std::monostate (None), bool,
  /// integers (beyond int64: a big int), float/double, std::string/std::string_view/const char*
  /// (str, must be UTF-8: std::invalid_argument otherwise), Bytes (bytes), std::vector/std::array
  /// (list), std::tuple/std::pair (tuple), std::map/std::unordered_map (dict), std::set/
  /// std::unordered_set (set), std::optional (None or the value), Value, nested freely.
  template <class T>
    requires(!std::is_same_v<T, Value> && detail::is_picklable_v<T>)  // (Value itself: the copy constructor)
  Value(const T& v);  // NOLINT(google-explicit-constructor): Value(3), Value("s") as in the contract
  // (inline: values are copied and moved a lot; a moved-from Value is None)
  Value(const Value& other) noexcept {
    std::memcpy(rep_, other.rep_, sizeof rep_);
    retain();
  }
  Value(Value&& other) noexcept {
    std::memcpy(rep_, other.rep_, sizeof rep_);
    other.rep_[0] = 0;
  }
  // (other may live inside this value's container, which release() can free: it is read first)
  Value& operator=(const Value& other) noexcept {
    unsigned char taken[sizeof rep_];
    std::memcpy(taken, other.rep_, sizeof rep_);
    other.retain();
    release();
    std::memcpy(rep_, taken, sizeof rep_);
    return *this;
  }
  Value& operator=(Value&& other) noexcept {
    unsigned char taken[sizeof rep_];
    std::memcpy(taken, other.rep_, sizeof rep_);
    other.rep_[0] = 0;
    release();
    std::memcpy(rep_, taken, sizeof rep_);
    return *this;
  }
  ~Value() { release(); }

  static Value list(std::vector<Value> items = {});
  static Value tuple(std::vector<Value> items = {});
  /// Keeps insertion order; a repeated key keeps its first position and takes the last value (as
  /// Python's dict literal). std::invalid_argument for an unhashable key (list, dict, set).
  static Value dict(std::vector<std::pair<Value, Value>> items = {});
  /// Duplicates are dropped (the first one stays). std::invalid_argument for unhashable items.
  static Value set(std::vector<Value> items = {});
  static Value frozenset(std::vector<Value> items = {});

  bool is_none() const noexcept;
  /// Holds exactly a T: is<bool>() only for bool; is<int>() etc. for an int (not a bool) that fits
  /// T; is<double>() for float; is<std::string>() for str; is<Bytes>() for bytes;
  /// is<std::vector<U>>() for a list of U; is<std::tuple<...>>() for a tuple of that many matching
  /// items; is<std::map<K, V>>() for a dict; is<std::set<U>>() for a set; is<std::optional<U>>()
  /// for None or U; is<Value>() always.
  template <class T>
  bool is() const;
  /// Converts, as the matching Python conversion would: integers from int or bool (std::out_of_range
  /// when the value does not fit T), double from float, int or bool, std::vector from list, tuple,
  /// set or frozenset, std::tuple from a tuple or list of that size, std::set from set or
  /// frozenset, maps from dict, std::vector<std::pair<Value, Value>> from a dict (its items in
  /// order). std::invalid_argument when it does not hold something convertible.
  template <class T>
  T as() const;
  /// Python's name of the held type: "NoneType", "bool", "int", "float", "str", "bytes", "list",
  /// "tuple", "dict", "set", "frozenset".
  std::string type_name() const;

  /// dict lookup by a str key; std::out_of_range when absent, std::invalid_argument on a non-dict.
  const Value& operator[](std::string_view key) const;
  /// list/tuple element; std::out_of_range past the end, std::invalid_argument on other types.
  const Value& operator[](std::size_t index) const;
  /// dict: insert or assign (Python's d[key] = value); std::logic_error on other types,
  /// std::invalid_argument for an unhashable key.
  void set_item(Value key, Value value);
  /// list: append; std::logic_error on other types.
  void append(Value item);
  /// Python's len(): code points of a str, bytes of bytes, items of a container;
  /// std::invalid_argument for None, bool, int and float.
  std::size_t size() const;

  /// Python's ==, except that NaN equals NaN (so that round trips compare equal): 1 == 1.0 == True,
  /// set == frozenset with the same items, dicts regardless of order, list != tuple, str != bytes.
  bool operator==(const Value& other) const;
  /// As Python's repr(): {'a': 1, 'b': [1, 2.5, None, True]}, b'\x00', (1,), set(), 1e+16, ...
  /// For an int it is the decimal string, whatever its size.
  std::string repr() const;

 private:
  enum class Kind : std::uint8_t { none, boolean, integer, big_integer, floating, str, bytes,
                                   list, tuple, dict, set, frozenset };
  friend struct detail::ValueAccess;
  friend struct detail::Raw;

  // 16 bytes: rep_[0] is the Kind, with kBoxed set when bytes 8-15 point to a reference-counted
  // detail::Counted (a detail::Container, or the text of a str/bytes/big int longer than
  // kInlineText); an inline text has its length in rep_[1] and its bytes from rep_[2]; bool, int
  // and float are held in bytes 8-15. Boxes are immutable once shared (containers are copied
  // before a change when shared: copy-on-write), so copies only count references.
  static constexpr std::uint8_t kBoxed = 0x80;
  static constexpr std::size_t kInlineText = 14;
  Kind kind() const noexcept { return static_cast<Kind>(rep_[0] & 0x7f); }
  bool boxed() const noexcept { return (rep_[0] & kBoxed) != 0; }
  detail::Counted* box() const noexcept {
    detail::Counted* b;
    std::memcpy(&b, rep_ + 8, sizeof b);
    return b;
  }
  void retain() const noexcept {
    if (boxed()) detail::add_ref(box());
  }
  void release() noexcept {
    if (boxed()) detail::drop_ref(box(), rep_[0] & 0x7f);
    rep_[0] = 0;
  }

  alignas(8) unsigned char rep_[16] = {};
};

/// An int of any size from its decimal digits (an optional sign, then digits; Python's int(s)
/// without underscores or spaces); std::invalid_argument otherwise.
Value int_from_string(std::string_view decimal);
/// An int from little-endian two's complement bytes (Python's int.from_bytes(b, 'little',
/// signed=True)); empty bytes are 0.
Value int_from_bytes(std::span<const std::byte> little_endian);
/// The shortest little-endian two's complement bytes of an int or bool (as pickle's LONG1 holds
/// them; 0 gives no bytes); std::invalid_argument for other types. v.repr() gives the decimal.
Bytes int_to_bytes(const Value& integer);

/// Pickles obj with the given protocol (2-5; std::invalid_argument otherwise, and for a value
/// nested deeper than kMaxDepth or a str that is not UTF-8). Does not block.
template <class T>
Bytes dumps(const T& obj, int protocol = 4);
/// Unpickles data as a T (Value: whatever it holds). std::invalid_argument for malformed or
/// truncated data, for a global outside the allow-list, for data left over after STOP, and when
/// the value does not convert to T (including an int out of T's range). Lenient where harmless:
/// a list or a tuple both load as std::vector or std::tuple.
template <class T = Value>
T loads(std::span<const std::byte> data);

namespace detail {
class Writer;  // src/pickle_writer.cpp
/// dumps<T>'s pickler for C++ values written as they are, without building a Value first (see
/// Convert<T>::write); the bytes are exactly those of dumps(Value(obj)). Each call writes one
/// value; a container is begin_list/begin_dict, then item_start, its item(s), item_end per item
/// (a dict's item is its key and its value), then end.
class Pickler {
 public:
  struct Batch {
    std::size_t total;
    std::size_t done;
    bool dict;
  };
  /// std::invalid_argument for a protocol other than 2-5.
  explicit Pickler(int protocol);
  ~Pickler();
  Pickler(const Pickler&) = delete;
  Pickler& operator=(const Pickler&) = delete;

  void value(const Value& v);
  void none();
  void boolean(bool b);
  void integer(std::int64_t i);
  void floating(double d);
  /// std::invalid_argument when utf8 is not valid UTF-8.
  void str(std::string_view utf8);
  void bytes(std::span<const std::byte> b);
  /// A str dict key (written once, then as a memo reference, as for Values).
  void dict_key(std::string_view utf8);
  Batch begin_list(std::size_t items);
  Batch begin_dict(std::size_t pairs);
  void item_start(Batch& b);
  void item_end(Batch& b);
  /// A whole dict item with a str key and an int value: item_start, dict_key, integer, item_end
  /// in one call (a map<string, integer> is mostly this).
  void str_int_item(Batch& b, std::string_view key, std::int64_t value);
  void end(const Batch& b);
  Bytes finish();
  /// finish(), into out (its capacity reused: no allocation once it is large enough).
  void finish_into(Bytes& out);

 private:
  std::unique_ptr<Writer> w_;
};

/// The type-erased core (src/pickle.cpp).
Bytes dump_value(const Value& value, int protocol);
void dump_value_into(Bytes& out, const Value& value, int protocol);
Value load_value(std::span<const std::byte> data);
/// Also tells whether the result shares a container in several places (a memo reference or DUP
/// pushed one again); only then can copying it out into C++ containers cost more than its size.
Value load_value(std::span<const std::byte> data, bool& shares);
/// std::invalid_argument when converting v to plain C++ containers would copy more than `budget`
/// elements in all (a memo can make a short pickle refer to one object many times).
void check_expansion(const Value& v, std::size_t budget);
}  // namespace detail

}  // namespace mp::pickle

#include <multiprocessing/detail/pickle_convert.hpp>
