// Template bodies of <multiprocessing/pickle.hpp>: C++ types <-> mp::pickle::Value.
// Each supported type T has a Convert<T> with to(T) -> Value, holds(Value) (is<T>) and
// from(Value) -> T (as<T>); the representation is reached only through ValueAccess, whose
// non-template members live in src/pickle.cpp.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

namespace mp::pickle::detail {

/// Storage shared by copies of a container Value (copy-on-write: a copy is detached before it is
/// modified). dict items are stored as key, value, key, value, ...
struct Container : Counted {
  std::vector<Value> items;
  /// An open-addressing hash table over items, built once a dict or set grows past a few items, so
  /// that set_item and the reader's duplicate checks stay O(1) without an allocation per entry.
  /// Each slot is (upper 32 bits of the hash) << 32 | (position of the item (a dict's key) + 1);
  /// 0 is empty. The size is a power of two, at most half full.
  std::vector<std::uint64_t> index;
  /// Nesting depth: 1 for a container holding no containers.
  std::size_t depth = 1;
  /// Reader only: the container was placed inside another one, and may no longer change (a
  /// change now could only come from a reference cycle, which is refused).
  bool sealed = false;
};

struct ValueAccess {
  // ---- building ----
  static Value boolean(bool b);
  static Value integer(std::int64_t i);
  static Value unsigned_integer(std::uint64_t u);
  static Value floating(double d);
  /// std::invalid_argument when s is not valid UTF-8 (surrogates included).
  static Value str(std::string s);
  static Value bytes(std::span<const std::byte> b);

  // ---- reading (each throws std::invalid_argument naming `wanted` on a type mismatch) ----
  static bool is_bool(const Value& v) noexcept;
  static bool is_int(const Value& v) noexcept;  // int of any size, not bool
  static bool is_float(const Value& v) noexcept;
  static bool is_str(const Value& v) noexcept;
  static bool is_bytes(const Value& v) noexcept;
  static bool is_list(const Value& v) noexcept;
  static bool is_tuple(const Value& v) noexcept;
  static bool is_dict(const Value& v) noexcept;
  static bool is_set(const Value& v) noexcept;        // set only
  static bool is_any_set(const Value& v) noexcept;    // set or frozenset
  static bool get_bool(const Value& v);
  /// int or bool; std::out_of_range when it does not fit.
  static std::int64_t get_int64(const Value& v, const char* wanted);
  static std::uint64_t get_uint64(const Value& v, const char* wanted);
  static double get_double(const Value& v);
  static std::string_view get_str(const Value& v);
  static Bytes get_bytes(const Value& v);
  /// The items of a list/tuple/set/frozenset (or of a dict: key, value, ...) with no type check.
  static const std::vector<Value>& items(const Value& v) noexcept;
  [[noreturn]] static void mismatch(const Value& v, const char* wanted);
  [[noreturn]] static void out_of_range(const Value& v, const char* wanted);
};

template <class T>
inline constexpr bool is_char_v =
    std::is_same_v<T, char> || std::is_same_v<T, wchar_t> || std::is_same_v<T, char8_t> ||
    std::is_same_v<T, char16_t> || std::is_same_v<T, char32_t>;

template <class T, class Enable>
struct Convert {
  static constexpr bool kSupported = false;
  static constexpr bool kLoadable = false;
};

/// Whether s is well-formed UTF-8 with no surrogates (what Python's strict 'utf-8' accepts).
bool valid_utf8(std::string_view s) noexcept;
/// valid_utf8, with short ASCII strings (most keys) checked inline.
inline bool utf8_ok(std::string_view s) noexcept {
  // Up to 16 bytes are read as two overlapping words (or the first, middle and last byte of 1-3):
  // every byte once at least, and no loop whose end the branch predictor has to guess.
  const char* p = s.data();
  const std::size_t n = s.size();
  std::uint64_t any = 0;
  if (n > 16) return valid_utf8(s);
  if (n >= 8) {
    std::uint64_t a, b;
    std::memcpy(&a, p, 8);
    std::memcpy(&b, p + n - 8, 8);
    any = a | b;
  } else if (n >= 4) {
    std::uint32_t a, b;
    std::memcpy(&a, p, 4);
    std::memcpy(&b, p + n - 4, 4);
    any = a | b;
  } else if (n > 0) {
    any = static_cast<unsigned char>(p[0]) | static_cast<unsigned char>(p[n / 2]) | static_cast<unsigned char>(p[n - 1]);
  }
  return (any & 0x8080808080808080ULL) == 0 || valid_utf8(s);
}

/// loads<T>'s direct decoder: reads the pickle opcodes CPython (and dumps) write for plain data
/// straight into C++ values, without a Value tree. It recognizes only that canonical shape: on
/// anything else (tuples, sets, shared containers, globals, unusual opcodes, bad input, a value
/// that does not convert) a read returns false and loads<T> starts again through the Value path,
/// which gives the result or the documented exception. Each read either succeeds or returns
/// false; a false read may have consumed input (the caller then gives up).
///
/// The opcodes read here are interpreted exactly as the stack machine would (a batch MARK ...
/// SETITEMS right after a dict fills that dict, a memo reference pushes the memoized object), so
/// whatever is accepted equals what the Value path builds and converts. A memo reference to a str
/// or bytes is resolved through the offset it was read at; text produced from memo references is
/// limited by the same budget as loads<T> applies to the Value path.
class Cursor {
 public:
  explicit Cursor(std::span<const std::byte> data) noexcept
      : p_(reinterpret_cast<const unsigned char*>(data.data())),
        size_(data.size()),
        budget_((std::size_t{1} << 20) + 64 * data.size()) {
    // The memo's buffer is the thread's, kept from one loads to the next: growing it anew each
    // time was a chain of allocations per call (and each one over 1 KiB makes malloc merge the
    // small blocks a std::map just freed, which its next build then splits again).
    Spare& s = spare();
    if (!s.busy) {
      s.busy = true;
      owns_spare_ = true;
      memo_.swap(s.memo);
    }
  }
  ~Cursor() {
    if (!owns_spare_) return;
    Spare& s = spare();
    s.busy = false;
    memo_.clear();
    if (memo_.capacity() <= kKeepMemo) memo_.swap(s.memo);
  }
  Cursor(const Cursor&) = delete;
  Cursor& operator=(const Cursor&) = delete;

  /// PROTO (optional).
  bool start() {
    if (size_ >= 2 && p_[0] == 0x80 && p_[1] <= 5) pos_ = 2;
    return true;
  }
  /// STOP, then the end of the input.
  bool finish() {
    if (peek() != 0x2e) return false;
    ++pos_;
    return pos_ == size_;
  }

  /// The next opcode (after any FRAME headers, each checked to fit the input), or -1 at the end.
  [[gnu::always_inline]] int peek() {
    if (pos_ < size_ && p_[pos_] != 0x95) [[likely]]
      return p_[pos_];
    return peek_frames();
  }
  [[gnu::noinline]] int peek_frames() {
    while (pos_ < size_ && p_[pos_] == 0x95) {
      if (size_ - pos_ < 9) return -1;
      std::uint64_t len = 0;
      std::memcpy(&len, p_ + pos_ + 1, 8);  // (little-endian hosts: the library is for Linux x86/arm)
      if (len > size_ - pos_ - 9) return -1;
      pos_ += 9;
    }
    return pos_ < size_ ? p_[pos_] : -1;
  }
  std::size_t position() const noexcept { return pos_; }

  bool none() {
    if (peek() != 0x4e) return false;
    ++pos_;
    return memo_after(kOther);
  }
  bool boolean(bool& out) {
    const int op = peek();
    if (op != 0x88 && op != 0x89) return false;
    ++pos_;
    out = op == 0x88;
    return memo_after(kOther);
  }
  /// int (or bool, as Python's int(True)) that fits int64.
  [[gnu::always_inline]] bool integer(std::int64_t& out) {
    // The common case inline: BININT1 / BININT2 with no memo opcode after it.
    if (size_ - pos_ >= 3) [[likely]] {
      const unsigned op = p_[pos_];
      if (op == 0x4b && ends_plain_value(p_[pos_ + 2])) {
        out = p_[pos_ + 1];
        pos_ += 2;
        return true;
      }
      if (op == 0x4d && size_ - pos_ >= 4 && ends_plain_value(p_[pos_ + 3])) {
        out = p_[pos_ + 1] | (p_[pos_ + 2] << 8);
        pos_ += 3;
        return true;
      }
    }
    return integer_other(out);
  }
  [[gnu::noinline]] bool integer_other(std::int64_t& out) {
    const int op = peek();
    switch (op) {
      case 0x4b:  // BININT1
        if (size_ - pos_ < 2) return false;
        out = p_[pos_ + 1];
        pos_ += 2;
        break;
      case 0x4d:  // BININT2
        if (size_ - pos_ < 3) return false;
        out = p_[pos_ + 1] | (p_[pos_ + 2] << 8);
        pos_ += 3;
        break;
      case 0x4a: {  // BININT
        if (size_ - pos_ < 5) return false;
        std::uint32_t u = 0;
        for (int k = 3; k >= 0; --k) u = (u << 8) | p_[pos_ + 1 + static_cast<std::size_t>(k)];
        out = static_cast<std::int32_t>(u);
        pos_ += 5;
        break;
      }
      case 0x8a: {  // LONG1 of up to 8 bytes
        if (size_ - pos_ < 2) return false;
        const std::size_t n = p_[pos_ + 1];
        if (n > 8 || size_ - pos_ - 2 < n) return false;
        std::uint64_t u = (n > 0 && (p_[pos_ + 1 + n] & 0x80)) ? ~std::uint64_t{0} : 0;
        for (std::size_t k = 0; k < n; ++k) {
          u &= ~(std::uint64_t{0xff} << (8 * k));
          u |= static_cast<std::uint64_t>(p_[pos_ + 2 + k]) << (8 * k);
        }
        out = static_cast<std::int64_t>(u);
        pos_ += 2 + n;
        break;
      }
      case 0x88:
      case 0x89:
        out = op == 0x88 ? 1 : 0;
        ++pos_;
        break;
      default: return false;
    }
    return memo_after(kOther);
  }
  /// float, or an int/bool (as Python's float(i)).
  bool floating(double& out) {
    if (peek() == 0x47) {
      if (size_ - pos_ < 9) return false;
      std::uint64_t bits = 0;
      for (std::size_t k = 1; k <= 8; ++k) bits = (bits << 8) | p_[pos_ + k];
      std::memcpy(&out, &bits, sizeof out);
      pos_ += 9;
      return memo_after(kOther);
    }
    std::int64_t i = 0;
    if (!integer(i)) return false;
    out = static_cast<double>(i);
    return true;
  }
  /// A str (checked to be UTF-8) or bytes: a view of the input.
  [[gnu::always_inline]] bool text(bool str, std::string_view& out) {
    // The common case inline: a short text (SHORT_BINUNICODE / SHORT_BINBYTES) in the frame.
    if (size_ - pos_ >= 2 && p_[pos_] == (str ? 0x8c : 0x43)) [[likely]] {
      const std::size_t at = pos_, n = p_[pos_ + 1];
      if (n <= size_ - pos_ - 2) [[likely]] {
        out = std::string_view(reinterpret_cast<const char*>(p_ + at + 2), n);
        pos_ = at + 2 + n;
        if (str && !utf8_ok(out)) return false;
        return memo_after(str ? kStr : kBytes, at);
      }
    }
    return text_other(str, out);
  }
  [[gnu::noinline]] bool text_other(bool str, std::string_view& out) {
    const int op = peek();
    if (op == 0x68 || op == 0x6a) return memo_get(str ? kStr : kBytes, out);
    const std::size_t at = pos_;
    if (!text_at(at, str, out)) return false;
    if (str && !utf8_ok(out)) return false;
    return memo_after(str ? kStr : kBytes, at);
  }

  /// EMPTY_DICT / EMPTY_LIST (and their memo slot, which only a memo reference could use: it
  /// would make the container shared, which only the Value path represents).
  bool open(bool dict) {
    if (peek() != (dict ? 0x7d : 0x5d)) return false;
    ++pos_;
    return memo_after(kOther);
  }
  /// MARK, opening a batch.
  bool mark() {
    if (peek() != 0x28) return false;
    ++pos_;
    return true;
  }
  /// The opcode op (SETITEMS, APPENDS, SETITEM, APPEND) is next: consumed.
  bool take(int op) {
    if (peek() != op) return false;
    ++pos_;
    return true;
  }

 private:
  enum : std::uint8_t { kOther, kStr, kBytes };
  struct Entry {
    std::uint8_t kind;
    std::size_t at;  // kStr/kBytes: where the text's opcode is
  };

  // The text opcode at `at` (SHORT_BINUNICODE, BINUNICODE, BINUNICODE8, or the bytes ones).
  bool text_at(std::size_t at, bool str, std::string_view& out) {
    if (at >= size_) return false;
    const unsigned op = p_[at];
    std::size_t header = 0, width = 0;
    if (str) {
      switch (op) {
        case 0x8c: header = 2, width = 1; break;
        case 0x58: header = 5, width = 4; break;
        case 0x8d: header = 9, width = 8; break;
        default: return false;
      }
    } else {
      switch (op) {
        case 0x43: header = 2, width = 1; break;
        case 0x42: header = 5, width = 4; break;
        case 0x8e: case 0x96: header = 9, width = 8; break;
        default: return false;
      }
    }
    if (size_ - at < header) return false;
    std::uint64_t n = 0;
    for (std::size_t k = width; k-- > 0;) n = (n << 8) | p_[at + 1 + k];
    if (n > size_ - at - header) return false;
    out = std::string_view(reinterpret_cast<const char*>(p_ + at + header), static_cast<std::size_t>(n));
    pos_ = at + header + static_cast<std::size_t>(n);
    return true;
  }
  // Whether op, after a value, is neither a memo opcode nor a FRAME (which memo_after handles).
  static bool ends_plain_value(unsigned op) noexcept { return !(op == 0x94 || op == 0x71 || op == 0x72 || op == 0x95); }
  // The memo opcodes that may follow a value: MEMOIZE, BINPUT, LONG_BINPUT (slots in order only).
  // (Inlined: after every value. One MEMOIZE, or none, is the common case; the rest is a loop.)
  [[gnu::always_inline]] bool memo_after(std::uint8_t kind, std::size_t at = 0) {
    if (pos_ == size_ || ends_plain_value(p_[pos_])) return true;
    if (p_[pos_] == 0x94) {  // MEMOIZE: the next slot
      memo_.push_back(Entry{kind, at});
      if (++pos_ == size_ || ends_plain_value(p_[pos_])) return true;
    }
    return memo_after_more(kind, at);
  }
  bool memo_after_more(std::uint8_t kind, std::size_t at) {
    for (;;) {
      const int op = peek();
      std::uint64_t index = 0;
      if (op == 0x94) {
        index = memo_.size();
        pos_ += 1;
      } else if (op == 0x71) {
        if (size_ - pos_ < 2) return false;
        index = p_[pos_ + 1];
        pos_ += 2;
      } else if (op == 0x72) {
        if (size_ - pos_ < 5) return false;
        for (std::size_t k = 4; k-- > 0;) index = (index << 8) | p_[pos_ + 1 + k];
        pos_ += 5;
      } else {
        return true;
      }
      if (index < memo_.size()) {
        memo_[static_cast<std::size_t>(index)] = Entry{kind, at};
      } else if (index == memo_.size()) {
        memo_.push_back(Entry{kind, at});
      } else {
        return false;  // out of order: the Value path handles it
      }
    }
  }
  bool memo_get(std::uint8_t kind, std::string_view& out) {
    std::uint64_t index = 0;
    if (p_[pos_] == 0x68) {
      if (size_ - pos_ < 2) return false;
      index = p_[pos_ + 1];
      pos_ += 2;
    } else {
      if (size_ - pos_ < 5) return false;
      for (std::size_t k = 4; k-- > 0;) index = (index << 8) | p_[pos_ + 1 + k];
      pos_ += 5;
    }
    if (index >= memo_.size() || memo_[static_cast<std::size_t>(index)].kind != kind) return false;
    const std::size_t resume = pos_;
    if (!text_at(memo_[static_cast<std::size_t>(index)].at, kind == kStr, out)) return false;
    pos_ = resume;
    if (out.size() / 64 + 1 > budget_) return false;
    budget_ -= out.size() / 64 + 1;
    return true;
  }

  struct Spare {
    std::vector<Entry> memo;
    bool busy = false;  // a Cursor of this thread has it (one inside a conversion takes its own)
  };
  static Spare& spare() noexcept {
    static thread_local Spare s;
    return s;
  }
  static constexpr std::size_t kKeepMemo = 1 << 16;  // entries

  const unsigned char* p_;
  std::size_t size_;
  std::size_t pos_ = 0;
  std::size_t budget_;  // elements memo references may still produce (as check_expansion counts)
  std::vector<Entry> memo_;
  bool owns_spare_ = false;
};

/// Reads x with the Cursor when Convert<T> has a read().
template <class T>
inline constexpr bool has_read_v = requires(Cursor& c, T& x) { Convert<T>::read(c, x); };

/// Writes x with the Pickler: directly when Convert<T> has a write(), else through its Value.
template <class T>
void write_any(Pickler& p, const T& x) {
  if constexpr (requires { Convert<T>::write(p, x); }) {
    Convert<T>::write(p, x);
  } else {
    p.value(Convert<T>::to(x));
  }
}

template <>
struct Convert<Value> {
  static constexpr bool kSupported = true, kLoadable = true;
  static Value to(const Value& v) { return v; }
  static bool holds(const Value&) { return true; }
  static Value from(const Value& v) { return v; }
};

// ---- None ----
template <class T>
  requires(std::is_same_v<T, std::nullptr_t> || std::is_same_v<T, std::nullopt_t> ||
           std::is_same_v<T, std::monostate>)
struct Convert<T, void> {
  static constexpr bool kSupported = true, kLoadable = !std::is_same_v<T, std::nullptr_t>;
  static Value to(const T&) { return Value(); }
  static bool holds(const Value& v) { return v.is_none(); }
  static T from(const Value& v) {
    if (!v.is_none()) ValueAccess::mismatch(v, "None");
    if constexpr (std::is_same_v<T, std::nullopt_t>) {
      return std::nullopt;
    } else {
      return T{};
    }
  }
};

// ---- bool ----
template <>
struct Convert<bool, void> {
  static constexpr bool kSupported = true, kLoadable = true;
  static Value to(bool b) { return ValueAccess::boolean(b); }
  static void write(Pickler& p, bool b) { p.boolean(b); }
  static bool read(Cursor& c, bool& out) { return c.boolean(out); }
  static bool holds(const Value& v) { return ValueAccess::is_bool(v); }
  static bool from(const Value& v) { return ValueAccess::get_bool(v); }
};

// ---- integers (not bool, not the character types) ----
template <class T>
  requires(std::is_integral_v<T> && !std::is_same_v<T, bool> && !is_char_v<T>)
struct Convert<T, void> {
  static constexpr bool kSupported = true, kLoadable = true;
  static Value to(T i) {
    if constexpr (std::is_signed_v<T>) {
      return ValueAccess::integer(static_cast<std::int64_t>(i));
    } else {
      return ValueAccess::unsigned_integer(static_cast<std::uint64_t>(i));
    }
  }
  static void write(Pickler& p, T i) {
    if constexpr (std::is_signed_v<T> || sizeof(T) < sizeof(std::int64_t)) {
      p.integer(static_cast<std::int64_t>(i));
    } else if (i <= static_cast<std::uint64_t>(INT64_MAX)) {
      p.integer(static_cast<std::int64_t>(i));
    } else {
      p.value(to(i));
    }
  }
  static bool read(Cursor& c, T& out) {
    std::int64_t i = 0;
    if (!c.integer(i) || !std::in_range<T>(i)) return false;
    out = static_cast<T>(i);
    return true;
  }
  static bool holds(const Value& v) {
    if (!ValueAccess::is_int(v)) return false;
    try {
      (void)from(v);
      return true;
    } catch (const std::out_of_range&) {
      return false;
    }
  }
  static T from(const Value& v) {
    if constexpr (std::is_signed_v<T>) {
      const std::int64_t i = ValueAccess::get_int64(v, "int");
      if (!std::in_range<T>(i)) ValueAccess::out_of_range(v, "a smaller integer type");
      return static_cast<T>(i);
    } else {
      const std::uint64_t u = ValueAccess::get_uint64(v, "int");
      if (!std::in_range<T>(u)) ValueAccess::out_of_range(v, "a smaller integer type");
      return static_cast<T>(u);
    }
  }
};

// ---- float ----
template <class T>
  requires std::is_floating_point_v<T>
struct Convert<T, void> {
  static constexpr bool kSupported = true, kLoadable = true;
  static Value to(T d) { return ValueAccess::floating(static_cast<double>(d)); }
  static void write(Pickler& p, T d) { p.floating(static_cast<double>(d)); }
  static bool read(Cursor& c, T& out) {
    double d = 0;
    if (!c.floating(d)) return false;
    out = static_cast<T>(d);
    return true;
  }
  static bool holds(const Value& v) { return ValueAccess::is_float(v); }
  static T from(const Value& v) { return static_cast<T>(ValueAccess::get_double(v)); }
};

// ---- str ----
template <>
struct Convert<std::string, void> {
  static constexpr bool kSupported = true, kLoadable = true;
  static Value to(const std::string& s) { return ValueAccess::str(s); }
  static void write(Pickler& p, const std::string& s) { p.str(s); }
  static bool read(Cursor& c, std::string& out) {
    std::string_view t;
    if (!c.text(true, t)) return false;
    out.assign(t);
    return true;
  }
  static bool holds(const Value& v) { return ValueAccess::is_str(v); }
  static std::string from(const Value& v) { return std::string(ValueAccess::get_str(v)); }
};
template <>
struct Convert<std::string_view, void> {  // write only: a view could not own what it reads
  static constexpr bool kSupported = true, kLoadable = false;
  static Value to(std::string_view s) { return ValueAccess::str(std::string(s)); }
  static void write(Pickler& p, std::string_view s) { p.str(s); }
  static bool holds(const Value& v) { return ValueAccess::is_str(v); }
};
template <>
struct Convert<const char*, void> {
  static constexpr bool kSupported = true, kLoadable = false;
  static Value to(const char* s) { return ValueAccess::str(std::string(s)); }
  static bool holds(const Value& v) { return ValueAccess::is_str(v); }
};
template <>
struct Convert<char*, void> : Convert<const char*, void> {};
template <std::size_t N>
struct Convert<char[N], void> {  // a string literal: its characters up to the terminating NUL
  static constexpr bool kSupported = true, kLoadable = false;
  static Value to(const char (&s)[N]) {
    const std::size_t n = (N > 0 && s[N - 1] == '\0') ? N - 1 : N;
    return ValueAccess::str(std::string(s, n));
  }
  static bool holds(const Value& v) { return ValueAccess::is_str(v); }
};

// ---- bytes ----
template <>
struct Convert<Bytes, void> {
  static constexpr bool kSupported = true, kLoadable = true;
  static Value to(const Bytes& b) { return ValueAccess::bytes(b); }
  static void write(Pickler& p, const Bytes& b) { p.bytes(b); }
  static bool read(Cursor& c, Bytes& out) {
    std::string_view t;
    if (!c.text(false, t)) return false;
    const auto* b = reinterpret_cast<const std::byte*>(t.data());
    out.assign(b, b + t.size());
    return true;
  }
  static bool holds(const Value& v) { return ValueAccess::is_bytes(v); }
  static Bytes from(const Value& v) { return ValueAccess::get_bytes(v); }
};

template <class T>
struct is_pair : std::false_type {};
template <class A, class B>
struct is_pair<std::pair<A, B>> : std::true_type {};

// ---- list: std::vector, std::array ----
template <class U, class A>
  requires(!std::is_same_v<U, std::byte> && Convert<U>::kSupported)
struct Convert<std::vector<U, A>, void> {
  using T = std::vector<U, A>;
  static constexpr bool kSupported = true, kLoadable = Convert<U>::kLoadable;
  static Value to(const T& v) {
    std::vector<Value> items;
    items.reserve(v.size());
    for (const auto& x : v) items.push_back(Convert<U>::to(x));
    return Value::list(std::move(items));
  }
  static void write(Pickler& p, const T& v) {
    auto batch = p.begin_list(v.size());
    for (const auto& x : v) {
      p.item_start(batch);
      write_any<U>(p, x);
      p.item_end(batch);
    }
    p.end(batch);
  }
  // A list: EMPTY_LIST, then batches (MARK items APPENDS) or single items (item APPEND).
  static bool read(Cursor& c, T& out)
    requires(!is_pair<U>::value && has_read_v<U>)
  {
    if (!c.open(false)) return false;
    out.clear();
    for (;;) {
      if (c.mark()) {
        while (!c.take(0x65)) {  // APPENDS
          U x{};
          if (!Convert<U>::read(c, x)) return false;
          out.push_back(std::move(x));
        }
        continue;
      }
      (void)c.peek();
      const std::size_t at = c.position();
      U x{};
      if (!Convert<U>::read(c, x)) return c.position() == at;  // not an item: the list is complete
      if (!c.take(0x61)) return false;  // APPEND
      out.push_back(std::move(x));
    }
  }
  static bool holds(const Value& v) {
    if (!ValueAccess::is_list(v)) return false;
    for (const Value& x : ValueAccess::items(v))
      if (!Convert<U>::holds(x)) return false;
    return true;
  }
  static T from(const Value& v) {
    T out;
    if constexpr (is_pair<U>::value) {
      if (ValueAccess::is_dict(v)) {  // a dict's items, in order
        const auto& kv = ValueAccess::items(v);
        out.reserve(kv.size() / 2);
        for (std::size_t i = 0; i + 1 < kv.size(); i += 2)
          out.emplace_back(Convert<typename U::first_type>::from(kv[i]),
                           Convert<typename U::second_type>::from(kv[i + 1]));
        return out;
      }
    }
    if (!ValueAccess::is_list(v) && !ValueAccess::is_tuple(v) && !ValueAccess::is_any_set(v))
      ValueAccess::mismatch(v, "list");
    const auto& items = ValueAccess::items(v);
    out.reserve(items.size());
    for (const Value& x : items) out.push_back(Convert<U>::from(x));
    return out;
  }
};
template <class U, std::size_t N>
  requires Convert<U>::kSupported
struct Convert<std::array<U, N>, void> {
  using T = std::array<U, N>;
  static constexpr bool kSupported = true, kLoadable = Convert<U>::kLoadable && std::is_default_constructible_v<U>;
  static Value to(const T& v) {
    std::vector<Value> items;
    items.reserve(N);
    for (const auto& x : v) items.push_back(Convert<U>::to(x));
    return Value::list(std::move(items));
  }
  static bool holds(const Value& v) {
    if (!ValueAccess::is_list(v) || ValueAccess::items(v).size() != N) return false;
    for (const Value& x : ValueAccess::items(v))
      if (!Convert<U>::holds(x)) return false;
    return true;
  }
  static T from(const Value& v) {
    if (!ValueAccess::is_list(v) && !ValueAccess::is_tuple(v)) ValueAccess::mismatch(v, "list");
    const auto& items = ValueAccess::items(v);
    if (items.size() != N) ValueAccess::mismatch(v, ("a list of " + std::to_string(N) + " items").c_str());
    T out{};
    for (std::size_t i = 0; i < N; ++i) out[i] = Convert<U>::from(items[i]);
    return out;
  }
};

// ---- tuple: std::tuple, std::pair ----
template <class... Ts>
  requires(Convert<Ts>::kSupported && ...)
struct Convert<std::tuple<Ts...>, void> {
  using T = std::tuple<Ts...>;
  static constexpr bool kSupported = true, kLoadable = (Convert<Ts>::kLoadable && ...);
  static Value to(const T& t) {
    return std::apply([](const Ts&... x) { return Value::tuple(std::vector<Value>{Convert<Ts>::to(x)...}); }, t);
  }
  static bool holds(const Value& v) {
    if (!ValueAccess::is_tuple(v) || ValueAccess::items(v).size() != sizeof...(Ts)) return false;
    const auto& items = ValueAccess::items(v);
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      return (Convert<Ts>::holds(items[I]) && ...);
    }(std::index_sequence_for<Ts...>{});
  }
  static T from(const Value& v) {
    if (!ValueAccess::is_tuple(v) && !ValueAccess::is_list(v)) ValueAccess::mismatch(v, "tuple");
    const auto& items = ValueAccess::items(v);
    if (items.size() != sizeof...(Ts))
      ValueAccess::mismatch(v, ("a tuple of " + std::to_string(sizeof...(Ts)) + " items").c_str());
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      return T(Convert<Ts>::from(items[I])...);
    }(std::index_sequence_for<Ts...>{});
  }
};
template <class A, class B>
  requires(Convert<A>::kSupported && Convert<B>::kSupported)
struct Convert<std::pair<A, B>, void> {
  using T = std::pair<A, B>;
  using Tuple = Convert<std::tuple<A, B>>;
  static constexpr bool kSupported = true, kLoadable = Tuple::kLoadable;
  static Value to(const T& p) { return Value::tuple({Convert<A>::to(p.first), Convert<B>::to(p.second)}); }
  static bool holds(const Value& v) { return Tuple::holds(v); }
  static T from(const Value& v) {
    auto t = Tuple::from(v);
    return T(std::move(std::get<0>(t)), std::move(std::get<1>(t)));
  }
};

// ---- dict: std::map, std::unordered_map ----
template <class M>
struct MapConvert {
  using K = typename M::key_type;
  using V = typename M::mapped_type;
  static constexpr bool kSupported = Convert<K>::kSupported && Convert<V>::kSupported;
  static constexpr bool kLoadable = Convert<K>::kLoadable && Convert<V>::kLoadable;
  static Value to(const M& m) {
    std::vector<std::pair<Value, Value>> items;
    items.reserve(m.size());
    for (const auto& [k, v] : m) items.emplace_back(Convert<K>::to(k), Convert<V>::to(v));
    return Value::dict(std::move(items));
  }
  // Written directly only when distinct C++ keys are distinct Python keys (str and integers), so
  // that no duplicates need merging as Value::dict merges them.
  static void write(Pickler& p, const M& m)
    requires(std::is_same_v<K, std::string> || (std::is_integral_v<K> && !is_char_v<K>))
  {
    auto batch = p.begin_dict(m.size());
    if constexpr (std::is_same_v<K, std::string> && std::is_integral_v<V> && !std::is_same_v<V, bool> &&
                  !is_char_v<V> && (std::is_signed_v<V> || sizeof(V) < sizeof(std::int64_t))) {
      for (const auto& [k, v] : m) p.str_int_item(batch, k, static_cast<std::int64_t>(v));
    } else {
      for (const auto& [k, v] : m) {
        p.item_start(batch);
        if constexpr (std::is_same_v<K, std::string>) {
          p.dict_key(k);
        } else {
          write_any<K>(p, k);
        }
        write_any<V>(p, v);
        p.item_end(batch);
      }
    }
    p.end(batch);
  }
  // A dict: EMPTY_DICT, then batches (MARK key value ... SETITEMS) or single items (key value
  // SETITEM); a key met again takes the last value, as in Python. Keys are str or integers only,
  // whose C++ equality is Python's (1 and True are one key in both).
  static bool read(Cursor& c, M& out)
    requires((std::is_same_v<K, std::string> || (std::is_integral_v<K> && !is_char_v<K>)) && has_read_v<K> &&
             has_read_v<V>)
  {
    if (!c.open(true)) return false;
    out.clear();
    if constexpr (std::is_same_v<K, std::string>) {
      // Each str key is built once, in its node, from its bytes in the input (no temporary
      // std::string moved in), with a hint at the end: a dict sent from a sorted map (or any dict
      // whose keys come in the map's order) costs one node and no search per item.
      return read_items<std::string_view>(
          c, [](Cursor& cur, std::string_view& k) { return cur.text(true, k); },
          [&](std::string_view k, V& v) {
            const std::size_t before = out.size();
            if constexpr (std::is_trivially_copyable_v<V>) {  // (v stays as it is when its node is dropped)
              auto it = out.emplace_hint(out.end(), std::piecewise_construct, std::forward_as_tuple(k.data(), k.size()),
                                         std::forward_as_tuple(v));
              if (out.size() == before) it->second = v;  // a key met again: the last value wins
            } else {  // (try_emplace moves v only into a new node)
              auto it = out.try_emplace(out.end(), std::string(k), std::move(v));
              if (out.size() == before) it->second = std::move(v);
            }
          });
    } else {
      return read_items<K>(
          c, [](Cursor& cur, K& k) { return Convert<K>::read(cur, k); },
          [&](K& k, V& v) {
            const std::size_t before = out.size();
            auto it = out.try_emplace(out.end(), std::move(k), std::move(v));  // (moves nothing when k is there)
            if (out.size() == before) it->second = std::move(v);
          });
    }
  }
  // read()'s items: batches (MARK key value ... SETITEMS) or single items (key value SETITEM),
  // each key read by read_key into a Key, each item stored by put.
  template <class Key, class ReadKey, class Put>
  static bool read_items(Cursor& c, ReadKey read_key, Put put) {
    for (;;) {
      if (c.mark()) {
        while (!c.take(0x75)) {  // SETITEMS
          Key k{};
          V v{};
          if (!read_key(c, k) || !Convert<V>::read(c, v)) return false;
          put(k, v);
        }
        continue;
      }
      (void)c.peek();
      const std::size_t at = c.position();
      Key k{};
      if (!read_key(c, k)) return c.position() == at;  // not a key: the dict is complete
      V v{};
      if (!Convert<V>::read(c, v) || !c.take(0x73)) return false;  // SETITEM
      put(k, v);
    }
  }
  static bool holds(const Value& v) {
    if (!ValueAccess::is_dict(v)) return false;
    const auto& kv = ValueAccess::items(v);
    for (std::size_t i = 0; i + 1 < kv.size(); i += 2)
      if (!Convert<K>::holds(kv[i]) || !Convert<V>::holds(kv[i + 1])) return false;
    return true;
  }
  static M from(const Value& v) {
    if (!ValueAccess::is_dict(v)) ValueAccess::mismatch(v, "dict");
    const auto& kv = ValueAccess::items(v);
    M out;
    if constexpr (requires { out.reserve(std::size_t{}); }) out.reserve(kv.size() / 2);
    for (std::size_t i = 0; i + 1 < kv.size(); i += 2) {
      // A dict sent from a sorted map arrives in order: a hint at the end makes each insert O(1).
      const std::size_t before = out.size();
      auto it = out.emplace_hint(out.end(), Convert<K>::from(kv[i]), Convert<V>::from(kv[i + 1]));
      if (out.size() == before) it->second = Convert<V>::from(kv[i + 1]);  // as d[k] = v: the last one wins
    }
    return out;
  }
};
template <class K, class V, class C, class A>
  requires MapConvert<std::map<K, V, C, A>>::kSupported
struct Convert<std::map<K, V, C, A>, void> : MapConvert<std::map<K, V, C, A>> {};
template <class K, class V, class H, class E, class A>
  requires MapConvert<std::unordered_map<K, V, H, E, A>>::kSupported
struct Convert<std::unordered_map<K, V, H, E, A>, void> : MapConvert<std::unordered_map<K, V, H, E, A>> {};

// ---- set: std::set, std::unordered_set ----
template <class S>
struct SetConvert {
  using U = typename S::key_type;
  static constexpr bool kSupported = Convert<U>::kSupported;
  static constexpr bool kLoadable = Convert<U>::kLoadable;
  static Value to(const S& s) {
    std::vector<Value> items;
    items.reserve(s.size());
    for (const auto& x : s) items.push_back(Convert<U>::to(x));
    return Value::set(std::move(items));
  }
  static bool holds(const Value& v) {
    if (!ValueAccess::is_set(v)) return false;
    for (const Value& x : ValueAccess::items(v))
      if (!Convert<U>::holds(x)) return false;
    return true;
  }
  static S from(const Value& v) {
    if (!ValueAccess::is_any_set(v)) ValueAccess::mismatch(v, "set");
    S out;
    for (const Value& x : ValueAccess::items(v)) out.insert(Convert<U>::from(x));
    return out;
  }
};
template <class U, class C, class A>
  requires SetConvert<std::set<U, C, A>>::kSupported
struct Convert<std::set<U, C, A>, void> : SetConvert<std::set<U, C, A>> {};
template <class U, class H, class E, class A>
  requires SetConvert<std::unordered_set<U, H, E, A>>::kSupported
struct Convert<std::unordered_set<U, H, E, A>, void> : SetConvert<std::unordered_set<U, H, E, A>> {};

// ---- std::optional: None or the value ----
template <class U>
  requires Convert<U>::kSupported
struct Convert<std::optional<U>, void> {
  static constexpr bool kSupported = true, kLoadable = Convert<U>::kLoadable;
  static Value to(const std::optional<U>& o) { return o ? Convert<U>::to(*o) : Value(); }
  static bool holds(const Value& v) { return v.is_none() || Convert<U>::holds(v); }
  static bool read(Cursor& c, std::optional<U>& out)
    requires has_read_v<U>
  {
    if (c.none()) {
      out.reset();
      return true;
    }
    U x{};
    if (!Convert<U>::read(c, x)) return false;
    out = std::move(x);
    return true;
  }
  static std::optional<U> from(const Value& v) {
    if (v.is_none()) return std::nullopt;
    return Convert<U>::from(v);
  }
};

}  // namespace mp::pickle::detail

namespace mp::pickle {

template <class T>
  requires(!std::is_same_v<T, Value> && detail::is_picklable_v<T>)
Value::Value(const T& v) : Value(detail::Convert<T>::to(v)) {}

template <class T>
bool Value::is() const {
  static_assert(detail::is_picklable_v<T>, "is<T>: T does not map to a pickle type");
  return detail::Convert<T>::holds(*this);
}

template <class T>
T Value::as() const {
  static_assert(detail::Convert<T>::kLoadable, "as<T>: T cannot be read from a pickle Value");
  return detail::Convert<T>::from(*this);
}

namespace detail {
/// dumps(obj, protocol), into out (its capacity reused: Connection::send pickles into its send
/// buffer without an allocation per message).
template <class T>
void dumps_into(Bytes& out, const T& obj, int protocol) {
  static_assert(is_picklable_v<T>, "pickle::dumps<T>: T does not map to a pickle type");
  if constexpr (std::is_same_v<T, Value>) {
    dump_value_into(out, obj, protocol);
  } else if constexpr (requires(Pickler& p) { Convert<T>::write(p, obj); }) {
    Pickler p(protocol);
    Convert<T>::write(p, obj);
    p.finish_into(out);
  } else {
    dump_value_into(out, Convert<T>::to(obj), protocol);
  }
}
}  // namespace detail

template <class T>
Bytes dumps(const T& obj, int protocol) {
  Bytes out;
  detail::dumps_into(out, obj, protocol);
  return out;
}

template <class T>
T loads(std::span<const std::byte> data) {
  static_assert(detail::Convert<T>::kLoadable, "pickle::loads<T>: T cannot be read from a pickle");
  if constexpr (std::is_same_v<T, Value>) {
    return detail::load_value(data);
  } else {
    if constexpr (detail::has_read_v<T>) {  // straight into T when the data has the usual shape
      detail::Cursor c(data);
      T out{};
      if (c.start() && detail::Convert<T>::read(c, out) && c.finish()) return out;
    }
    // A memo lets a short pickle refer to one object many times; copying it out into plain
    // containers may not grow beyond what is reasonable for the input.
    bool shares = false;
    Value v = detail::load_value(data, shares);
    if (shares) detail::check_expansion(v, (std::size_t{1} << 20) + 64 * data.size());
    try {
      return detail::Convert<T>::from(v);
    } catch (const std::out_of_range& e) {
      throw std::invalid_argument(e.what());
    }
  }
}

}  // namespace mp::pickle
