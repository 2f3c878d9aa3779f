// The pickler: writes a Value as CPython 3.8-3.13's C pickler (Modules/_pickle.c) does, byte for
// byte, for protocols 2-5. What decides the bytes, checked against the real python3 in
// tests/interop/pickle_interop_test.cpp:
//  - framing (protocol 4+): a frame opens with the first write after PROTO or after a commit, and
//    is committed at the start of saving a value once it holds >= 64 KiB, before a str/bytes
//    payload of >= 64 KiB (which is written outside any frame), and at the end; a frame under 4
//    bytes is written without its FRAME header;
//  - the memo: every str, bytes, non-empty tuple, list, dict, set and frozenset gets the next
//    index (MEMOIZE from protocol 4, BINPUT/LONG_BINPUT before), and the same object met again is
//    a BINGET. "Same object" is Python's identity: here a container shared by copies of a Value,
//    plus the objects CPython always shares ('' and b'' and the one-byte bytes, and in protocol 2
//    the globals and the 'latin1' constant), and str dict keys met again (see save_key);
//  - batches as _pickle.c's batch_list_exact / batch_dict_exact / save_set: a 1-item list or dict
//    uses APPEND/SETITEM; otherwise MARK ... APPENDS/SETITEMS/ADDITEMS per 1000 items, where dicts
//    and sets (not lists) write one more, empty, batch after an exact multiple of 1000.
#include "pickle_internal.hpp"

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mp::pickle::detail {
namespace {

constexpr std::size_t kFrameSizeTarget = 64 * 1024;
constexpr std::size_t kFrameSizeMin = 4;
constexpr std::size_t kFrameHeaderSize = 9;
constexpr std::size_t kBatchSize = 1000;
constexpr std::size_t kNoFrame = static_cast<std::size_t>(-1);

// Copies n <= 16 bytes as two overlapping words (or the first, middle and last byte of 1-3): no
// loop whose end the branch predictor has to guess (keys and short strs are mostly this size).
[[gnu::always_inline]] inline void copy_short(unsigned char* dst, const char* src, std::size_t n) {
  if (n >= 8) {
    std::memcpy(dst, src, 8);
    std::memcpy(dst + n - 8, src + n - 8, 8);
  } else if (n >= 4) {
    std::memcpy(dst, src, 4);
    std::memcpy(dst + n - 4, src + n - 4, 4);
  } else if (n > 0) {
    dst[0] = static_cast<unsigned char>(src[0]);
    dst[n / 2] = static_cast<unsigned char>(src[n / 2]);
    dst[n - 1] = static_cast<unsigned char>(src[n - 1]);
  }
}

// The str dict keys written so far and their memo slots: an open-addressing table (no allocation
// per key; dicts of records repeat the same few keys thousands of times).
class KeyMemo {
 public:
  // The slot of `text` if it was written, else nullptr after remembering that it will be written
  // as `index`.
  const std::uint32_t* find_or_add(std::string_view text, std::uint32_t index) {
    if (2 * (count_ + 1) > entries_.size()) grow();
    const std::size_t h = hash_text(text);
    const std::size_t mask = entries_.size() - 1;
    for (std::size_t i = h & mask;; i = (i + 1) & mask) {
      Entry& e = entries_[i];
      if (!e.used) {
        e = Entry{text, h, index, true};
        ++count_;
        return nullptr;
      }
      if (e.hash == h && e.text == text) return &e.index;
    }
  }

 private:
  struct Entry {
    std::string_view text;
    std::size_t hash = 0;
    std::uint32_t index = 0;
    bool used = false;
  };
  void grow() {
    std::vector<Entry> old = std::move(entries_);
    entries_.assign(old.empty() ? 64 : 2 * old.size(), Entry{});
    const std::size_t mask = entries_.size() - 1;
    for (const Entry& e : old) {
      if (!e.used) continue;
      std::size_t i = e.hash & mask;
      while (entries_[i].used) i = (i + 1) & mask;
      entries_[i] = e;
    }
  }
  std::vector<Entry> entries_;
  std::size_t count_ = 0;
};

// The first dict's str keys and their memo slots (Writer::first_keys_): an array of plain
// entries with an inlined append (std::vector's out-of-line emplace_back took the key by
// reference through memory, and reading it back as one word stalled on the two just stored).
class FirstKeys {
 public:
  FirstKeys() noexcept = default;
  ~FirstKeys() { std::free(data_); }
  FirstKeys(const FirstKeys&) = delete;
  FirstKeys& operator=(const FirstKeys&) = delete;
  void swap(FirstKeys& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    std::swap(capacity_, other.capacity_);
  }
  [[gnu::always_inline]] void push(const char* text, std::size_t size, std::uint32_t index) {
    if (size_ == capacity_) [[unlikely]]
      grow();
    data_[size_++] = Entry{text, size, index};
  }
  template <class F>
  void for_each(F f) const {
    for (std::size_t i = 0; i < size_; ++i) f(std::string_view(data_[i].text, data_[i].size), data_[i].index);
  }
  void clear() noexcept { size_ = 0; }
  std::size_t capacity() const noexcept { return capacity_; }

 private:
  struct Entry {
    const char* text;
    std::size_t size;
    std::uint32_t index;
  };
  [[gnu::noinline]] void grow() {
    const std::size_t capacity = 2 * capacity_ + 256;
    auto* grown = static_cast<Entry*>(std::realloc(data_, capacity * sizeof(Entry)));
    if (!grown) throw std::bad_alloc();
    data_ = grown;
    capacity_ = capacity;
  }
  Entry* data_ = nullptr;
  std::size_t size_ = 0, capacity_ = 0;
};

// The output buffer: a thread's writers reuse one (growing it is a good part of the cost of a
// large pickle: fresh pages, copies), and the result is copied out once at the end. A writer
// started while another one of the thread holds it (a Pickler inside a conversion) takes its own.
struct Scratch {
  unsigned char* data = nullptr;
  std::size_t capacity = 0;
  FirstKeys first_keys;  // (Writer::first_keys_'s buffer)
  bool busy = false;
  ~Scratch() { std::free(data); }
};
Scratch& scratch() {
  static thread_local Scratch s;
  return s;
}
constexpr std::size_t kKeepScratch = 16 * 1024 * 1024;
constexpr std::size_t kKeepFirstKeys = 1 << 16;

}  // namespace

class Writer {
 public:
  explicit Writer(int protocol) : protocol_(protocol) {
    if (protocol < 2 || protocol > 5)
      throw std::invalid_argument("pickle::dumps: protocol " + std::to_string(protocol) +
                                  " is not supported (2, 3, 4 and 5 are)");
    Scratch& s = scratch();
    if (!s.busy) {
      s.busy = true;
      owns_scratch_ = true;
      buf_ = s.data;
      cap_ = s.capacity;
      s.data = nullptr;
      s.capacity = 0;
      first_keys_.swap(s.first_keys);
    }
    const std::uint8_t header[2] = {0x80, static_cast<std::uint8_t>(protocol_)};
    write(header, 2);
    framing_ = protocol_ >= 4;
  }
  ~Writer() {
    if (owns_scratch_) {
      Scratch& s = scratch();
      s.busy = false;
      if (cap_ <= kKeepScratch) {
        std::free(s.data);
        s.data = buf_;
        s.capacity = cap_;
        buf_ = nullptr;
      }
      first_keys_.clear();
      if (first_keys_.capacity() <= kKeepFirstKeys) first_keys_.swap(s.first_keys);
    }
    std::free(buf_);
  }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  Bytes finish() {
    Bytes out;
    finish_into(out);
    return out;
  }
  void finish_into(Bytes& out) {
    write_op(0x2e);  // STOP
    commit_frame();
    const auto* p = reinterpret_cast<const std::byte*>(buf_);
    out.assign(p, p + len_);
  }

  // ---- the Pickler's operations: each one what save() does for the matching Value ----
  void put_value(const Value& v) { save(v, depth_); }
  void put_none() {
    opcode_boundary();
    write_op(0x4e);
  }
  void put_bool(bool b) {
    opcode_boundary();
    write_op(b ? 0x88 : 0x89);
  }
  void put_int(std::int64_t i) {
    opcode_boundary();
    save_int(i);
  }
  void put_float(double d) {
    opcode_boundary();
    save_float(d);
  }
  void put_text(Kind k, std::string_view t) {
    if (k == kStr && !utf8_ok(t)) throw std::invalid_argument("pickle: a str must be valid UTF-8 (without surrogates)");
    opcode_boundary();
    save_text(k, t);
  }
  [[gnu::always_inline]] void put_str_int(std::string_view key, std::int64_t value) {
    if (key.empty() || !utf8_ok(key)) [[unlikely]] {
      put_key(key);
    } else {
      opcode_boundary();
      save_key_text(key);
    }
    opcode_boundary();
    save_int(value);
  }
  void put_key(std::string_view t) {
    if (!utf8_ok(t)) throw std::invalid_argument("pickle: a str must be valid UTF-8 (without surrogates)");
    if (t.empty()) return put_text(kStr, t);
    opcode_boundary();
    save_key_text(t);
  }
  void begin_container(std::uint8_t empty_op) {
    opcode_boundary();
    if (depth_ + 1 > kMaxDepth)
      throw std::invalid_argument("pickle::dumps: a value nested deeper than " + std::to_string(kMaxDepth) + " levels");
    if (empty_op == 0x7d) dict_started();
    write_op(empty_op);
    memoize();
    ++depth_;
  }
  void end_container() { --depth_; }
  void keep(const Value& v) { kept_.push_back(v); }

  // ---- output (public for the Pickler's batch marks) ----
  void write_op(std::uint8_t op) { *grab(1) = op; }

 private:
  // ---- output and frames ----
  // buf_ (cap_ bytes, from malloc) grows by doubling and holds len_ bytes of output; opcodes are
  // written in place through grab().
  // (Inlined: every opcode takes its bytes here. Opening a frame and growing are out of line.)
  [[gnu::always_inline]] unsigned char* grab(std::size_t n) {
    if ((framing_ && frame_start_ == kNoFrame) || cap_ - len_ < n) [[unlikely]]
      grab_slow(n);
    unsigned char* p = buf_ + len_;
    len_ += n;
    return p;
  }
  [[gnu::noinline]] void grab_slow(std::size_t n) {
    if (framing_ && frame_start_ == kNoFrame) {
      frame_start_ = len_;
      room(kFrameHeaderSize);
      len_ += kFrameHeaderSize;
    }
    room(n);
  }
  void write(const void* data, std::size_t n) {
    unsigned char* p = grab(n);
    if (n != 0) std::memcpy(p, data, n);  // data may be null when n is 0
  }
  void room(std::size_t n) {
    if (cap_ - len_ >= n) return;
    if (n > std::numeric_limits<std::size_t>::max() / 4 - len_) throw std::length_error("pickle::dumps: output too large");
    const std::size_t cap = std::max({cap_ * 2, len_ + n, std::size_t{4096}});
    auto* grown = static_cast<unsigned char*>(std::realloc(buf_, cap));
    if (!grown) throw std::bad_alloc();
    buf_ = grown;
    cap_ = cap;
  }
  void write_op_u8(std::uint8_t op, std::uint8_t arg) {
    unsigned char* p = grab(2);
    p[0] = op;
    p[1] = arg;
  }
  void write_op_le(std::uint8_t op, std::uint64_t arg, std::size_t width) {
    unsigned char* p = grab(1 + width);
    p[0] = op;
    for (std::size_t k = 0; k < width; ++k) p[1 + k] = static_cast<std::uint8_t>(arg >> (8 * k));
  }

  void commit_frame() {
    if (!framing_ || frame_start_ == kNoFrame) return;
    const std::size_t len = len_ - frame_start_ - kFrameHeaderSize;
    if (len >= kFrameSizeMin) {
      buf_[frame_start_] = 0x95;
      for (std::size_t k = 0; k < 8; ++k)
        buf_[frame_start_ + 1 + k] = static_cast<unsigned char>((static_cast<std::uint64_t>(len) >> (8 * k)) & 0xff);
    } else {
      std::memmove(buf_ + frame_start_, buf_ + frame_start_ + kFrameHeaderSize, len);
      len_ -= kFrameHeaderSize;
    }
    frame_start_ = kNoFrame;
  }
  void opcode_boundary() {
    if (framing_ && frame_start_ != kNoFrame && len_ - frame_start_ - kFrameHeaderSize >= kFrameSizeTarget)
      commit_frame();
  }
  // An opcode with a payload: payloads of 64 KiB or more go outside any frame.
  void write_payload(const void* header, std::size_t header_size, std::string_view data) {
    const bool bypass = data.size() >= kFrameSizeTarget;
    const bool framing = framing_;
    if (bypass) {
      commit_frame();
      framing_ = false;
    }
    unsigned char* p = grab(header_size + data.size());
    for (std::size_t k = 0; k < header_size; ++k) *p++ = static_cast<const unsigned char*>(header)[k];
    if (data.size() <= 16) {  // (short texts, the common case, without a call to memcpy)
      copy_short(p, data.data(), data.size());
    } else {
      std::memcpy(p, data.data(), data.size());
    }
    framing_ = framing;
  }

  // ---- memo ----
  std::uint32_t memoize() {
    const std::uint32_t index = memo_count_++;
    if (protocol_ >= 4) {
      write_op(0x94);  // MEMOIZE
    } else if (index < 256) {
      write_op_u8(0x71, static_cast<std::uint8_t>(index));  // BINPUT
    } else {
      write_op_le(0x72, index, 4);  // LONG_BINPUT
    }
    return index;
  }
  void get(std::uint32_t index) {
    if (index < 256) {
      write_op_u8(0x68, static_cast<std::uint8_t>(index));  // BINGET
    } else {
      write_op_le(0x6a, index, 4);  // LONG_BINGET
    }
  }
  // The objects CPython always shares: '' (slot 0), b'' (slot 1), one-byte bytes (2 + byte).
  std::optional<std::uint32_t>* singleton(Kind k, std::string_view t) {
    if (k == kStr && t.empty()) return &singletons_[0];
    if (k == kBytes && t.empty()) return &singletons_[1];
    if (k == kBytes && t.size() == 1) return &singletons_[2 + static_cast<unsigned char>(t[0])];
    return nullptr;
  }

  // ---- values ----
  void save(const Value& v, std::size_t depth) {
    opcode_boundary();
    const Kind k = Raw::kind(v);
    Container* c = Raw::container(v);
    const bool shared = c && Raw::container_use_count(v) > 1;
    if (shared) {
      if (auto it = memo_.find(c); it != memo_.end()) return get(it->second);
    }
    if (k == kStr || k == kBytes) return save_text(k, Raw::text(v));
    if (c && depth + 1 > kMaxDepth)
      throw std::invalid_argument("pickle::dumps: a value nested deeper than " + std::to_string(kMaxDepth) + " levels");

    switch (k) {
      case kNone: write_op(0x4e); break;
      case kBool: write_op(Raw::get_bool(v) ? 0x88 : 0x89); break;
      case kInt: save_int(Raw::get_int(v)); break;
      case kBigInt: save_long(Raw::text(v)); break;
      case kFloat: save_float(Raw::get_float(v)); break;
      case kTuple: save_tuple(*c, shared, depth); break;
      case kList:
        write_op(0x5d);  // EMPTY_LIST
        memoize_container(*c, shared);
        save_list_items(c->items, depth);
        break;
      case kDict: save_dict(*c, shared, depth); break;
      case kSet: save_set(*c, shared, depth); break;
      case kFrozenset: save_frozenset(*c, shared, depth); break;
      default: throw std::logic_error("pickle::dumps: a Value of unknown kind");
    }
  }

  void save_float(double d) {
    const auto bits = std::bit_cast<std::uint64_t>(d);
    std::uint8_t b[9] = {0x47};
    for (int i = 0; i < 8; ++i) b[1 + i] = static_cast<std::uint8_t>(bits >> (8 * (7 - i)));
    write(b, 9);
  }
  // A str or bytes (after opcode_boundary()): a memo reference for the shared singletons.
  void save_text(Kind k, std::string_view t) {
    std::optional<std::uint32_t>* single = singleton(k, t);
    if (single && *single) return get(**single);
    const std::uint32_t index = k == kStr ? save_str(t) : save_bytes(t);
    if (single) *single = index;
  }

  // Only a container that several Values hold can be met twice (and so needs remembering).
  void memoize_container(const Container& c, bool shared) {
    const std::uint32_t index = memoize();
    if (shared) memo_.emplace(&c, index);
  }

  [[gnu::always_inline]] void save_int(std::int64_t i) {
    if (i >= 0 && i <= 0xff) {
      write_op_u8(0x4b, static_cast<std::uint8_t>(i));  // BININT1
    } else if (i >= 0 && i <= 0xffff) {
      write_op_le(0x4d, static_cast<std::uint64_t>(i), 2);  // BININT2
    } else if (i >= -0x80000000LL && i <= 0x7fffffffLL) {
      write_op_le(0x4a, static_cast<std::uint64_t>(static_cast<std::uint32_t>(static_cast<std::int32_t>(i))), 4);
    } else {
      save_long(int64_to_twos(i));
    }
  }
  void save_long(std::string_view le) {
    if (le.size() < 256) {
      write_op_u8(0x8a, static_cast<std::uint8_t>(le.size()));  // LONG1
    } else {
      if (le.size() > 0x7fffffffu) throw std::invalid_argument("pickle::dumps: int too large to pickle");
      write_op_le(0x8b, le.size(), 4);  // LONG4
    }
    write(le.data(), le.size());
  }

  [[gnu::always_inline]] std::uint32_t save_str(std::string_view s) {
    if (s.size() < 256 && protocol_ >= 4) [[likely]] {  // the common case in one piece: SHORT_BINUNICODE, MEMOIZE
      unsigned char* p = grab(2 + s.size() + 1);
      p[0] = 0x8c;
      p[1] = static_cast<unsigned char>(s.size());
      if (s.size() <= 16) {  // (short texts, the common case, without a call to memcpy)
        copy_short(p + 2, s.data(), s.size());
      } else {
        std::memcpy(p + 2, s.data(), s.size());
      }
      p[2 + s.size()] = 0x94;
      return memo_count_++;
    }
    return save_str_other(s);
  }
  [[gnu::noinline]] std::uint32_t save_str_other(std::string_view s) {
    std::uint8_t header[9];
    std::size_t header_size = 0;
    if (s.size() > 0xffffffffu) {
      if (protocol_ < 4) throw std::invalid_argument("pickle::dumps: a str over 4 GiB needs protocol 4 or later");
      header[0] = 0x8d;  // BINUNICODE8
      for (std::size_t k = 0; k < 8; ++k) header[1 + k] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(s.size()) >> (8 * k));
      header_size = 9;
    } else {
      header[0] = 0x58;  // BINUNICODE
      for (std::size_t k = 0; k < 4; ++k) header[1 + k] = static_cast<std::uint8_t>(s.size() >> (8 * k));
      header_size = 5;
    }
    write_payload(header, header_size, s);
    return memoize();
  }

  std::uint32_t save_bytes(std::string_view b) {
    if (protocol_ < 3) return save_bytes_protocol2(b);
    std::uint8_t header[9];
    std::size_t header_size = 0;
    if (b.size() < 256) {
      header[0] = 0x43;  // SHORT_BINBYTES
      header[1] = static_cast<std::uint8_t>(b.size());
      header_size = 2;
    } else if (b.size() > 0xffffffffu) {
      if (protocol_ < 4) throw std::invalid_argument("pickle::dumps: bytes over 4 GiB need protocol 4 or later");
      header[0] = 0x8e;  // BINBYTES8
      for (std::size_t k = 0; k < 8; ++k) header[1 + k] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(b.size()) >> (8 * k));
      header_size = 9;
    } else {
      header[0] = 0x42;  // BINBYTES
      for (std::size_t k = 0; k < 4; ++k) header[1 + k] = static_cast<std::uint8_t>(b.size() >> (8 * k));
      header_size = 5;
    }
    write_payload(header, header_size, b);
    return memoize();
  }

  // Protocol 2 has no bytes opcode: CPython writes _codecs.encode(str, 'latin1'), or
  // __builtin__.bytes() for b''.
  std::uint32_t save_bytes_protocol2(std::string_view b) {
    if (b.empty()) {
      save_global(builtin_bytes_, "__builtin__\nbytes\n");
      write_op(0x29);  // EMPTY_TUPLE
    } else {
      save_global(codecs_encode_, "_codecs\nencode\n");
      std::string text;  // the bytes as latin-1 code points, in UTF-8
      text.reserve(b.size() * 2);
      for (char ch : b) {
        const auto c = static_cast<unsigned char>(ch);
        if (c < 0x80) {
          text += ch;
        } else {
          text += static_cast<char>(0xc0 | (c >> 6));
          text += static_cast<char>(0x80 | (c & 0x3f));
        }
      }
      save_str(text);
      if (latin1_) {
        get(*latin1_);
      } else {
        latin1_ = save_str("latin1");
      }
      write_op(0x86);  // TUPLE2
      memoize();
    }
    write_op(0x52);  // REDUCE
    return memoize();
  }

  void save_global(std::optional<std::uint32_t>& slot, const char* module_and_name) {
    if (slot) return get(*slot);
    write_op(0x63);  // GLOBAL
    write(module_and_name, std::strlen(module_and_name));
    slot = memoize();
  }

  void save_tuple(const Container& c, bool shared, std::size_t depth) {
    const auto& items = c.items;
    if (items.empty()) {
      write_op(0x29);  // EMPTY_TUPLE, never memoized
      return;
    }
    if (items.size() > 3) write_op(0x28);  // MARK
    for (const Value& x : items) save(x, depth + 1);
    static constexpr std::uint8_t kTupleOps[] = {0, 0x85, 0x86, 0x87};
    write_op(items.size() <= 3 ? kTupleOps[items.size()] : 0x74);
    memoize_container(c, shared);
  }

  void save_list_items(const std::vector<Value>& items, std::size_t depth) {
    if (items.empty()) return;
    if (items.size() == 1) {
      save(items[0], depth + 1);
      write_op(0x61);  // APPEND
      return;
    }
    std::size_t total = 0;
    do {
      write_op(0x28);  // MARK
      for (std::size_t n = 0; total < items.size() && n < kBatchSize; ++n) save(items[total++], depth + 1);
      write_op(0x65);  // APPENDS
    } while (total < items.size());
  }

  void save_dict(const Container& c, bool shared, std::size_t depth) {
    dict_started();
    write_op(0x7d);  // EMPTY_DICT
    memoize_container(c, shared);
    const auto& items = c.items;
    const std::size_t pairs = items.size() / 2;
    if (pairs == 0) return;
    if (pairs == 1) {
      save_key(items[0], depth + 1);
      save(items[1], depth + 1);
      write_op(0x73);  // SETITEM
      return;
    }
    std::size_t pair = 0, n = 0;
    do {
      write_op(0x28);  // MARK
      for (n = 0; pair < pairs && n < kBatchSize; ++n, ++pair) {
        save_key(items[2 * pair], depth + 1);
        const Value& value = items[2 * pair + 1];
        if (Raw::kind(value) == kInt) {  // (the common value, as save() writes it)
          opcode_boundary();
          save_int(Raw::get_int(value));
        } else {
          save(value, depth + 1);
        }
      }
      write_op(0x75);  // SETITEMS
    } while (n == kBatchSize);
  }

  // Dict keys that are str are written once and then referenced: in Python the same key in many
  // dicts is nearly always one object (literals and attribute names are interned, json.loads
  // shares its keys), and CPython writes it as a memo reference.
  void save_key(const Value& key, std::size_t depth) {
    if (Raw::kind(key) != kStr || Raw::text(key).empty()) return save(key, depth);
    opcode_boundary();
    save_key_text(Raw::text(key));
  }
  [[gnu::always_inline]] void save_key_text(std::string_view text) {
    // While only one dict has been started its keys are all different (a dict's keys are): they
    // are only listed, and hashed when a second dict starts (a pickle of one big dict never is).
    if (!keys_indexed_) {
      first_keys_.push(text.data(), text.size(), memo_count_);
      save_str(text);
      return;
    }
    // (the memo index the str is about to get; save_str allocates it)
    if (const std::uint32_t* slot = keys_.find_or_add(text, memo_count_)) return get(*slot);
    save_str(text);
  }
  void dict_started() {
    if (keys_indexed_ || ++dicts_ < 2) return;
    first_keys_.for_each([&](std::string_view text, std::uint32_t index) { (void)keys_.find_or_add(text, index); });
    first_keys_.clear();
    keys_indexed_ = true;
  }

  void save_set(const Container& c, bool shared, std::size_t depth) {
    if (protocol_ < 4) return save_set_reduce(c, shared, depth, builtin_set_, "set");
    write_op(0x8f);  // EMPTY_SET
    memoize_container(c, shared);
    const auto& items = c.items;
    if (items.empty()) return;
    std::size_t total = 0, n = 0;
    do {
      write_op(0x28);  // MARK
      for (n = 0; total < items.size() && n < kBatchSize; ++n) save(items[total++], depth + 1);
      write_op(0x90);  // ADDITEMS
    } while (n == kBatchSize);
  }

  void save_frozenset(const Container& c, bool shared, std::size_t depth) {
    if (protocol_ < 4) return save_set_reduce(c, shared, depth, builtin_frozenset_, "frozenset");
    write_op(0x28);  // MARK
    for (const Value& x : c.items) save(x, depth + 1);
    write_op(0x91);  // FROZENSET
    memoize_container(c, shared);
  }

  // Protocols 2-3: set(list) / frozenset(list) through REDUCE.
  void save_set_reduce(const Container& c, bool shared, std::size_t depth, std::optional<std::uint32_t>& slot,
                       const char* name) {
    const std::string global = std::string(protocol_ == 2 ? "__builtin__" : "builtins") + "\n" + name + "\n";
    save_global(slot, global.c_str());
    write_op(0x5d);  // EMPTY_LIST: list(obj), a temporary memoized like any list
    memoize();
    save_list_items(c.items, depth);
    write_op(0x85);  // TUPLE1: the arguments (list,)
    memoize();
    write_op(0x52);  // REDUCE
    memoize_container(c, shared);
  }

  int protocol_;
  std::size_t depth_ = 0;  // the Pickler's nesting
  bool owns_scratch_ = false;  // buf_ is the thread's scratch buffer, given back at the end
  unsigned char* buf_ = nullptr;
  std::size_t cap_ = 0;
  std::size_t len_ = 0;
  bool framing_ = false;
  std::size_t frame_start_ = kNoFrame;
  std::uint32_t memo_count_ = 0;
  std::unordered_map<const Container*, std::uint32_t> memo_;  // shared containers written: their slots
  std::optional<std::uint32_t> singletons_[2 + 256];
  KeyMemo keys_;  // str dict keys written: their slots
  FirstKeys first_keys_;  // the first dict's, until a second one
  std::size_t dicts_ = 0;
  bool keys_indexed_ = false;
  std::vector<Value> kept_;  // the Pickler's temporaries written (after they are written: a copy
                             // made before would make their containers look shared)
  std::optional<std::uint32_t> builtin_bytes_, codecs_encode_, latin1_, builtin_set_, builtin_frozenset_;
};

Bytes dump_value(const Value& value, int protocol) {
  Bytes out;
  dump_value_into(out, value, protocol);
  return out;
}
void dump_value_into(Bytes& out, const Value& value, int protocol) {
  Writer w(protocol);
  w.put_value(value);
  w.finish_into(out);
}

// ---- Pickler ----

Pickler::Pickler(int protocol) : w_(std::make_unique<Writer>(protocol)) {}
Pickler::~Pickler() = default;
void Pickler::value(const Value& v) {
  w_->put_value(v);
  // v may be a temporary (a C++ value without a direct write, converted): the memo and the key
  // memo now refer to its containers and strings, which must outlive the pickling.
  if (Raw::container(v)) w_->keep(v);
}
void Pickler::none() { w_->put_none(); }
void Pickler::boolean(bool b) { w_->put_bool(b); }
void Pickler::integer(std::int64_t i) { w_->put_int(i); }
void Pickler::floating(double d) { w_->put_float(d); }
void Pickler::str(std::string_view utf8) { w_->put_text(kStr, utf8); }
void Pickler::bytes(std::span<const std::byte> b) {
  w_->put_text(kBytes, std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
}
void Pickler::dict_key(std::string_view utf8) { w_->put_key(utf8); }
Pickler::Batch Pickler::begin_list(std::size_t items) {
  w_->begin_container(0x5d);  // EMPTY_LIST
  return Batch{items, 0, false};
}
Pickler::Batch Pickler::begin_dict(std::size_t pairs) {
  w_->begin_container(0x7d);  // EMPTY_DICT
  return Batch{pairs, 0, true};
}
// Batches as Writer::save_list_items and save_dict write them.
void Pickler::item_start(Batch& b) {
  if (b.total >= 2 && b.done % kBatchSize == 0) w_->write_op(0x28);  // MARK
}
void Pickler::item_end(Batch& b) {
  ++b.done;
  if (b.total == 1) {
    w_->write_op(b.dict ? 0x73 : 0x61);  // SETITEM, APPEND
  } else if (b.done % kBatchSize == 0 || b.done == b.total) {
    w_->write_op(b.dict ? 0x75 : 0x65);  // SETITEMS, APPENDS
  }
}
void Pickler::str_int_item(Batch& b, std::string_view key, std::int64_t value) {
  if (b.total >= 2 && b.done % kBatchSize == 0) w_->write_op(0x28);  // MARK (as item_start)
  w_->put_str_int(key, value);
  if (++b.done % kBatchSize == 0 || b.done == b.total) {  // (as item_end)
    if (b.total == 1) {
      w_->write_op(0x73);  // SETITEM
    } else {
      w_->write_op(0x75);  // SETITEMS
    }
  }
}
void Pickler::end(const Batch& b) {
  if (b.done != b.total) throw std::logic_error("pickle::dumps: a container changed size while it was written");
  if (b.dict && b.total >= 2 && b.total % kBatchSize == 0) {  // the empty batch after an exact multiple
    w_->write_op(0x28);
    w_->write_op(0x75);
  }
  w_->end_container();
}
Bytes Pickler::finish() { return w_->finish(); }
void Pickler::finish_into(Bytes& out) { w_->finish_into(out); }

}  // namespace mp::pickle::detail
