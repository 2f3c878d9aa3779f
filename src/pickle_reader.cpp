// The unpickler: reads protocols 2-5 (and a stream with no PROTO) into a Value, never running
// code. GLOBAL/STACK_GLOBAL push a symbolic name that only REDUCE can use, and only for the
// allow-list below; every other global is refused when it is named.
//
// Memo references share structure: the memo and the stack hold Values whose containers are
// shared, and the opcodes that fill a container (APPENDS, SETITEMS, ADDITEMS) change it in place,
// so a memo entry taken when a list was empty sees its items (as in Python, where both are the
// same object). A container placed inside another one is sealed; changing a sealed container
// can only come from a reference cycle (`l = []; l.append(l)`), which is refused, so the result
// has no cycles. Shared containers stay shared in the result (loads<T> into plain C++ types
// checks first that copying them out stays within a budget).
//
// Limits: every length is checked against the bytes left before anything is allocated; the number
// of items put into containers is bounded by the input's size; nesting is bounded by kMaxDepth.
#include "pickle_internal.hpp"
#include "manager_pickle.hpp"

#include <bit>
#include <cstring>
#include <new>
#include <stdexcept>
#include <unordered_map>
#include <utility>

namespace mp::pickle::detail {
namespace {

// `object`: a global admitted only by the manager allow-list (load_manager_value); the Item's
// value holds its "module.name", and REDUCE/NEWOBJ/BUILD turn it into a tagged tuple (data only).
enum class Global : std::int8_t { none = -1, set, frozenset, list, bytearray, bytes, codecs_encode, object };

constexpr const char* kAllowed =
    "builtins.set, builtins.frozenset, builtins.list, builtins.bytearray, builtins.bytes (also as __builtin__.*) "
    "and _codecs.encode with 'latin1'";

struct Item {
  Value value;
  Global global = Global::none;
};

// The reader's stack and memo: a vector of Items whose appends are always inlined (a few per
// opcode; std::vector's are out-of-line calls in a function as large as Reader::run).
class Items {
 public:
  Items() noexcept = default;
  ~Items() {
    clear();
    ::operator delete(data_);
  }
  Items(const Items&) = delete;
  Items& operator=(const Items&) = delete;
  void swap(Items& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    std::swap(capacity_, other.capacity_);
  }

  std::size_t size() const noexcept { return size_; }
  std::size_t capacity() const noexcept { return capacity_; }
  bool empty() const noexcept { return size_ == 0; }
  Item* begin() noexcept { return data_; }
  Item* end() noexcept { return data_ + size_; }
  Item& operator[](std::size_t i) noexcept { return data_[i]; }
  const Item& operator[](std::size_t i) const noexcept { return data_[i]; }
  Item& back() noexcept { return data_[size_ - 1]; }
  const Item& back() const noexcept { return data_[size_ - 1]; }

  template <class... A>
  [[gnu::always_inline]] Item& emplace_back(A&&... a) {
    if (size_ == capacity_) [[unlikely]]
      grow(2 * capacity_ + 64);
    return *::new (static_cast<void*>(data_ + size_++)) Item(std::forward<A>(a)...);
  }
  [[gnu::always_inline]] void push_back(const Item& item) { emplace_back(item); }
  [[gnu::always_inline]] void push_back(Item&& item) { emplace_back(std::move(item)); }
  void pop_back() noexcept { data_[--size_].~Item(); }
  /// n items: the last ones dropped, or Nones added (as std::vector::resize).
  void resize(std::size_t n) {
    while (size_ > n) data_[--size_].~Item();
    while (size_ < n) emplace_back();
  }
  void clear() noexcept {
    while (size_ > 0) data_[--size_].~Item();
  }
  void reserve(std::size_t n) {
    if (n > capacity_) grow(n);
  }

 private:
  [[gnu::noinline]] void grow(std::size_t n) {
    auto* fresh = static_cast<Item*>(::operator new(n * sizeof(Item)));
    for (std::size_t i = 0; i < size_; ++i) {
      ::new (static_cast<void*>(fresh + i)) Item(std::move(data_[i]));
      data_[i].~Item();
    }
    ::operator delete(data_);
    data_ = fresh;
    capacity_ = n;
  }
  Item* data_ = nullptr;
  std::size_t size_ = 0, capacity_ = 0;
};

std::string hex_byte(unsigned b) {
  const char* digits = "0123456789abcdef";
  return std::string("0x") + digits[(b >> 4) & 0xf] + digits[b & 0xf];
}

const char* refused_opcode_name(unsigned op) {
  switch (op) {
    case 'P': return "PERSID";
    case 'Q': return "BINPERSID";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 'i': return "INST";
    case 'o': return "OBJ";
    case 0x81: return "NEWOBJ";
    case 0x92: return "NEWOBJ_EX";
    case 'b': return "BUILD";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    default: return nullptr;
  }
}
const char* text_opcode_name(unsigned op) {
  switch (op) {
    case 'I': return "INT";
    case 'L': return "LONG";
    case 'F': return "FLOAT";
    case 'S': return "STRING";
    case 'T': return "BINSTRING";
    case 'U': return "SHORT_BINSTRING";
    case 'V': return "UNICODE";
    case 'p': return "PUT";
    case 'g': return "GET";
    default: return nullptr;
  }
}

class Reader {
 public:
  explicit Reader(std::span<const std::byte> data, bool manager = false)
      : manager_(manager),
        data_(reinterpret_cast<const unsigned char*>(data.data())),
        size_(data.size()),
        budget_(2 * data.size() + 4096) {
    stack_.swap(spare().stack);
    memo_.swap(spare().memo);
    marks_.swap(spare().marks);
  }
  ~Reader() {
    // The buffers go back for the thread's next loads (growing them is a good part of the cost of
    // a small pickle), unless they are large.
    give_back(stack_, spare().stack);
    give_back(memo_, spare().memo);
    give_back(marks_, spare().marks);
  }
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  bool shares() const { return shares_; }

  Value run() {
    while (true) {
      const std::size_t at = pos_;
      const unsigned op = read_u8();
      switch (op) {
        case 0x80: {  // PROTO
          const unsigned proto = read_u8();
          if (proto > 5) fail("unsupported pickle protocol " + std::to_string(proto), at);
          break;
        }
        case 0x95: {  // FRAME: the frame's opcodes follow; its length must fit in the input
          const std::uint64_t len = read_le<8>();
          if (len > size_ - pos_) fail("FRAME of " + std::to_string(len) + " bytes, only " + std::to_string(size_ - pos_) + " left", at);
          break;
        }
        case 0x2e: {  // STOP
          Value result = pop_value(at);
          if (pos_ != size_) fail(std::to_string(size_ - pos_) + " bytes of data after STOP", pos_);
          return result;
        }
        case 0x28: marks_.push_back(stack_.size()); break;  // MARK
        case 0x30:                                           // POP (or the mark right above)
          if (!marks_.empty() && marks_.back() == stack_.size()) {
            marks_.pop_back();
          } else {
            (void)pop(at);
          }
          break;
        case 0x31: (void)pop_mark(at); break;  // POP_MARK
        case 0x32: {                           // DUP
          check_top(at);
          Item copy = stack_.back();
          if (Raw::container(copy.value)) shares_ = true;
          stack_.push_back(std::move(copy));
          break;
        }
        case 0x4e: stack_.emplace_back(); break;                     // NONE
        case 0x88: Raw::set_bool(stack_.emplace_back().value, true); break;   // NEWTRUE
        case 0x89: Raw::set_bool(stack_.emplace_back().value, false); break;  // NEWFALSE
        case 0x4b: push_int(read_u8()); break;                       // BININT1
        case 0x4d: push_int(static_cast<std::int64_t>(read_le<2>())); break;  // BININT2
        case 0x4a:                                                   // BININT
          push_int(static_cast<std::int32_t>(static_cast<std::uint32_t>(read_le<4>())));
          break;
        case 0x8a: push(Raw::make_int_from_twos(read_text(read_u8(), at))); break;  // LONG1
        case 0x8b: {                                                                // LONG4
          const auto n = static_cast<std::int32_t>(static_cast<std::uint32_t>(read_le<4>()));
          if (n < 0) fail("LONG4 with a negative length", at);
          push(Raw::make_int_from_twos(read_text(static_cast<std::size_t>(n), at)));
          break;
        }
        case 0x47: {  // BINFLOAT, big-endian
          need(8, at);
          std::uint64_t bits = 0;
          for (int k = 0; k < 8; ++k) bits = (bits << 8) | data_[pos_++];
          Raw::set_float(stack_.emplace_back().value, std::bit_cast<double>(bits));
          break;
        }
        case 0x8c:  // SHORT_BINUNICODE, and the MEMOIZE that follows every str CPython writes (taken
                    // here as the next opcode would be, without a second trip through this switch)
          push_text(kStr, read_text(read_u8(), at), at);
          if (pos_ < size_ && data_[pos_] == 0x94) {
            ++pos_;
            put(static_cast<std::uint64_t>(memo_.size() + sparse_.size()), pos_ - 1);
            // and a small int after it (a dict's str -> int item), as its case below takes it
            if (size_ - pos_ >= 3 && data_[pos_] == 0x4b) {
              push_int(data_[pos_ + 1]);
              pos_ += 2;
            } else if (size_ - pos_ >= 4 && data_[pos_] == 0x4d) {
              push_int(data_[pos_ + 1] | (data_[pos_ + 2] << 8));
              pos_ += 3;
            }
          }
          break;
        case 0x58: push_text(kStr, read_text(read_le<4>(), at), at); break;    // BINUNICODE
        case 0x8d: push_text(kStr, read_text(read_le<8>(), at), at); break;    // BINUNICODE8
        case 0x43: push_text(kBytes, read_text(read_u8(), at), at); break;   // SHORT_BINBYTES
        case 0x42: push_text(kBytes, read_text(read_le<4>(), at), at); break;  // BINBYTES
        case 0x8e:                                                           // BINBYTES8
        case 0x96:  // BYTEARRAY8: a bytearray arrives as bytes
          push_text(kBytes, read_text(read_le<8>(), at), at);
          break;
        case 0x5d: push(Raw::make_container(kList, {})); break;   // EMPTY_LIST
        case 0x29: push(Raw::make_container(kTuple, {})); break;  // EMPTY_TUPLE
        case 0x7d: push(Raw::make_container(kDict, {})); break;   // EMPTY_DICT
        case 0x8f: push(Raw::make_container(kSet, {})); break;    // EMPTY_SET
        case 0x61: {                                              // APPEND
          Value item = pop_value(at);
          Container& list = target(kList, "APPEND", at);
          add_child(list, item, at);
          list.items.push_back(std::move(item));
          break;
        }
        case 0x65: {  // APPENDS: the items are taken from the stack in place
          const std::size_t mark = pop_mark_start(at);
          Container& list = target_below(mark, kList, "APPENDS", at);
          list.items.reserve(list.items.size() + (stack_.size() - mark));
          for (std::size_t i = mark; i < stack_.size(); ++i) {
            Value& v = plain(stack_[i], at);
            add_child(list, v, at);
            list.items.push_back(std::move(v));
          }
          stack_.resize(mark);
          break;
        }
        case 0x73: {  // SETITEM
          Value value = pop_value(at);
          Value key = pop_value(at);
          Container& dict = target(kDict, "SETITEM", at);
          add_child(dict, key, at);
          add_child(dict, value, at);
          dict_set(dict, std::move(key), std::move(value));
          break;
        }
        case 0x75: {  // SETITEMS
          const std::size_t mark = pop_mark_start(at);
          if ((stack_.size() - mark) % 2) fail("odd number of items for SETITEMS", at);
          Container& dict = target_below(mark, kDict, "SETITEMS", at);
          reserve_entries(dict, (stack_.size() - mark) / 2, 2);
          for (std::size_t i = mark; i < stack_.size(); i += 2) {
            Value& key = plain(stack_[i], at);
            Value& value = plain(stack_[i + 1], at);
            add_child(dict, key, at);
            add_child(dict, value, at);
            if (!dict_append_new_str(dict, key, value)) dict_set(dict, std::move(key), std::move(value));
          }
          stack_.resize(mark);
          break;
        }
        case 0x90: {  // ADDITEMS
          const std::size_t mark = pop_mark_start(at);
          Container& set = target_below(mark, kSet, "ADDITEMS", at);
          reserve_entries(set, stack_.size() - mark, 1);
          for (std::size_t i = mark; i < stack_.size(); ++i) {
            Value& v = plain(stack_[i], at);
            add_child(set, v, at);
            set_add(set, std::move(v));
          }
          stack_.resize(mark);
          break;
        }
        case 0x85:  // TUPLE1
        case 0x86:  // TUPLE2
        case 0x87: {  // TUPLE3
          const std::size_t n = op - 0x84;
          std::vector<Value> items(n);
          for (std::size_t i = n; i-- > 0;) items[i] = pop_value(at);
          push(build(kTuple, std::move(items), at));
          break;
        }
        case 0x74:    // TUPLE
        case 0x6c: {  // LIST (protocol 1)
          const std::size_t mark = pop_mark_start(at);
          std::vector<Value> items;
          items.reserve(stack_.size() - mark);
          for (std::size_t i = mark; i < stack_.size(); ++i) items.push_back(value_of(std::move(stack_[i]), at));
          stack_.resize(mark);
          push(build(op == 0x74 ? kTuple : kList, std::move(items), at));
          break;
        }
        case 0x64: {  // DICT (protocol 1)
          std::vector<Item> marked = pop_mark(at);
          if (marked.size() % 2) fail("odd number of items for DICT", at);
          Value dict = Raw::make_container(kDict, {});
          for (std::size_t i = 0; i < marked.size(); i += 2) {
            Value key = value_of(std::move(marked[i]), at);
            Value value = value_of(std::move(marked[i + 1]), at);
            add_child(*Raw::container(dict), key, at);
            add_child(*Raw::container(dict), value, at);
            dict_set(*Raw::container(dict), std::move(key), std::move(value));
          }
          push(std::move(dict));
          break;
        }
        case 0x91: {  // FROZENSET
          std::vector<Item> marked = pop_mark(at);
          Value set = Raw::make_container(kFrozenset, {});
          for (Item& x : marked) {
            Value v = value_of(std::move(x), at);
            add_child(*Raw::container(set), v, at);
            set_add(*Raw::container(set), std::move(v));
          }
          push(std::move(set));
          break;
        }
        case 0x94: {  // MEMOIZE
          check_top(at);
          put(static_cast<std::uint64_t>(memo_.size() + sparse_.size()), at);
          break;
        }
        case 0x71: check_top(at), put(read_u8(), at); break;  // BINPUT
        case 0x72: {                                          // LONG_BINPUT
          const std::uint64_t index = read_le<4>();
          if (index > 0x7fffffffu) fail("negative LONG_BINPUT argument", at);
          check_top(at);
          put(index, at);
          break;
        }
        case 0x68: fetch(read_u8(), at); break;     // BINGET
        case 0x6a: fetch(read_le<4>(), at); break;    // LONG_BINGET
        case 0x63: {                                // GLOBAL: "module\nname\n"
          const std::string module(read_line(at));
          const std::string name(read_line(at));
          push_global(module, name, at);
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          Value name = pop_value(at);
          Value module = pop_value(at);
          if (Raw::kind(module) != kStr || Raw::kind(name) != kStr) fail("STACK_GLOBAL requires str", at);
          push_global(Raw::text(module), Raw::text(name), at);
          break;
        }
        case 0x52: {  // REDUCE
          Value args = pop_value(at);
          Item callable = pop(at);
          if (callable.global == Global::none) fail("REDUCE of something that is not a global", at);
          if (Raw::kind(args) != kTuple) fail("REDUCE arguments must be a tuple", at);
          if (callable.global == Global::object) {
            push(tagged(callable.value, args, Value(), at));
          } else {
            push(reduce(callable.global, Raw::container(args)->items, at));
          }
          break;
        }
        case 0x81:  // NEWOBJ: manager objects only (Token, Namespace), kept as a tagged tuple
          if (manager_) {
            Value args = pop_value(at);
            Item cls = pop(at);
            if (cls.global != Global::object) fail("NEWOBJ of something that is not an admitted class", at);
            if (Raw::kind(args) != kTuple) fail("NEWOBJ arguments must be a tuple", at);
            push(tagged(cls.value, args, Value(), at));
            break;
          }
          [[fallthrough]];
        case 'b':  // BUILD: manager objects only; sets the state slot of the tagged tuple in place
          if (manager_ && op == 'b') {
            Value state = pop_value(at);
            check_top(at);
            Item& top = stack_.back();
            Container* c = Raw::container(top.value);
            if (top.global != Global::none || !is_tagged_object(top.value) || c->items.size() != 4)
              fail("BUILD on something that is not an admitted object", at);
            // A sealed object is already inside another container: setting its state now could
            // only come from a reference cycle through the state, which is refused.
            if (c->sealed) fail("BUILD on an object already inside another one (a reference cycle)", at);
            add_child(*c, state, at);
            c->items[3] = std::move(state);
            break;
          }
          [[fallthrough]];
        default: {
          if (const char* name = refused_opcode_name(op))
            fail(std::string("refusing opcode ") + name + ": it builds or finds arbitrary objects; only plain data is "
                 "accepted", at);
          if (const char* name = text_opcode_name(op))
            fail(std::string("protocol 0/1 text opcode ") + name + " is not supported (pickle with protocol 2 or later)", at);
          fail("invalid opcode " + hex_byte(op), at);
        }
      }
    }
  }

 private:
  struct Spare {
    Items stack, memo;
    std::vector<std::size_t> marks;
  };
  static Spare& spare() {
    static thread_local Spare buffers;
    return buffers;
  }
  template <class V>
  static void give_back(V& mine, V& spare) {
    constexpr std::size_t kKeepBytes = 2 * 1024 * 1024;
    mine.clear();
    if (mine.capacity() * sizeof(mine[0]) <= kKeepBytes && mine.capacity() > spare.capacity()) mine.swap(spare);
  }

  [[noreturn]] void fail(const std::string& what, std::size_t at) const {
    throw std::invalid_argument("pickle: " + what + " (at offset " + std::to_string(at) + ")");
  }

  // ---- input ----
  // (The reads are inlined into run(), once per opcode; their failures are out of line.)
  [[noreturn, gnu::cold, gnu::noinline]] void truncated(std::uint64_t n, std::size_t at) const {
    fail("truncated data: " + std::to_string(n) + " bytes needed, " + std::to_string(size_ - pos_) + " left", at);
  }
  [[noreturn, gnu::cold, gnu::noinline]] void no_stop() const { fail("truncated data: no STOP opcode", pos_); }
  [[gnu::always_inline]] void need(std::uint64_t n, std::size_t at) const {
    if (n > size_ - pos_) [[unlikely]]
      truncated(n, at);
  }
  [[gnu::always_inline]] unsigned read_u8() {
    if (pos_ >= size_) [[unlikely]]
      no_stop();
    return data_[pos_++];
  }
  template <std::size_t W>
  [[gnu::always_inline]] std::uint64_t read_le() {
    need(W, pos_ - 1);
    std::uint64_t v = 0;
    if constexpr (std::endian::native == std::endian::little) {
      std::memcpy(&v, data_ + pos_, W);
    } else {
      for (std::size_t k = 0; k < W; ++k) v |= static_cast<std::uint64_t>(data_[pos_ + k]) << (8 * k);
    }
    pos_ += W;
    return v;
  }
  [[gnu::always_inline]] std::string_view read_text(std::uint64_t n, std::size_t at) {
    need(n, at);
    std::string_view s(reinterpret_cast<const char*>(data_ + pos_), static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }
  std::string_view read_line(std::size_t at) {
    const void* nl = std::memchr(data_ + pos_, '\n', size_ - pos_);
    if (!nl) fail("truncated data: GLOBAL without its newline", at);
    const std::size_t n = static_cast<std::size_t>(static_cast<const unsigned char*>(nl) - (data_ + pos_));
    std::string_view s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n + 1;
    return s;
  }

  // ---- stack ----
  std::size_t fence() const { return marks_.empty() ? 0 : marks_.back(); }
  // A new None on top of the stack. (Inlined: a push per opcode; the stack keeps its capacity
  // from one loads to the next, so the growth is out of line and rare.)
  [[gnu::always_inline]] Item& push_slot() {
    return stack_.emplace_back();
  }
  void push(Value&& v) { push_slot().value = std::move(v); }
  [[gnu::always_inline]] void push_int(std::int64_t i) { Raw::init_int(push_slot().value, i); }
  // A str or bytes read from the opcode at `at`, made in place on the stack.
  [[gnu::always_inline]] void push_text(Kind kind, std::string_view text, std::size_t at) {
    if (kind == kStr && !utf8_ok(text)) [[unlikely]]
      bad_utf8(at);
    Raw::init_text(push_slot().value, kind, text);
  }
  [[noreturn, gnu::cold, gnu::noinline]] void bad_utf8(std::size_t at) const {
    fail("a str that is not valid UTF-8 (lone surrogates are not supported)", at);
  }
  [[noreturn, gnu::cold, gnu::noinline]] void underflow(std::size_t at) const { fail("stack underflow", at); }
  [[gnu::always_inline]] void check_top(std::size_t at) const {
    if (stack_.size() <= fence()) [[unlikely]]
      underflow(at);
  }
  Item pop(std::size_t at) {
    check_top(at);
    Item item = std::move(stack_.back());
    stack_.pop_back();
    return item;
  }
  Value value_of(Item&& item, std::size_t at) {
    // A manager class used as data (RebuildProxy's first argument) becomes (tag, "module.name").
    if (item.global == Global::object) return build(kTuple, {Raw::make_bytes(std::string(kObjectTag)), item.value}, at);
    if (item.global != Global::none) fail("a global is only accepted as the callable of REDUCE", at);
    return std::move(item.value);
  }
  Value pop_value(std::size_t at) { return value_of(pop(at), at); }
  // value_of() in place: the item's value, to be moved from by the caller.
  Value& plain(Item& item, std::size_t at) {
    if (item.global != Global::none) {
      item.value = value_of(std::move(item), at);
      item.global = Global::none;
    }
    return item.value;
  }
  std::vector<Item> pop_mark(std::size_t at) {
    if (marks_.empty()) fail("could not find MARK", at);
    const std::size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<Item> items(std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(mark)),
                            std::make_move_iterator(stack_.end()));
    stack_.resize(mark);
    return items;
  }
  // The start of the items above the last MARK, which is removed; the items stay on the stack for
  // the caller to take in place (and then to drop with stack_.resize(mark)).
  std::size_t pop_mark_start(std::size_t at) {
    if (marks_.empty()) fail("could not find MARK", at);
    const std::size_t mark = marks_.back();
    marks_.pop_back();
    return mark;
  }
  // The container on top of the stack, to be filled in place.
  Container& target(Kind kind, const char* op, std::size_t at) { return target_below(stack_.size(), kind, op, at); }
  // The container right below stack position `end`, to be filled in place.
  Container& target_below(std::size_t end, Kind kind, const char* op, std::size_t at) {
    if (end <= fence()) fail("stack underflow", at);
    const Item& top = stack_[end - 1];
    if (top.global != Global::none || Raw::kind(top.value) != kind)
      fail(std::string(op) + " on a " + (top.global != Global::none ? std::string("global") : top.value.type_name()), at);
    Container* c = Raw::container(top.value);
    if (c->sealed)
      fail(std::string(op) + " on a container that is already inside another one: a reference cycle, which is "
           "not supported", at);
    return *c;
  }
  // Accounts for `child` going into `parent`: the budget, the nesting depth, and sealing.
  [[gnu::always_inline]] void add_child(Container& parent, const Value& child, std::size_t at) {
    if (budget_ == 0) [[unlikely]]
      fail("too many items for the size of the input", at);
    --budget_;
    if (Container* c = Raw::container(child)) add_container(parent, *c, at);
  }
  [[gnu::noinline]] void add_container(Container& parent, Container& c, std::size_t at) {
    if (&c == &parent) fail("a container inside itself: a reference cycle, which is not supported", at);
    c.sealed = true;
    if (c.depth + 1 > parent.depth) parent.depth = c.depth + 1;
    if (parent.depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth) + " levels", at);
  }
  Value build(Kind kind, std::vector<Value> items, std::size_t at) {
    Value v = Raw::make_container(kind, {});
    Container& c = *Raw::container(v);
    for (const Value& x : items) add_child(c, x, at);
    if (kind == kSet || kind == kFrozenset) {
      for (Value& x : items) set_add(c, std::move(x));
    } else {
      c.items = std::move(items);
    }
    return v;
  }

  // ---- memo ----
  // (MEMOIZE, the next slot, is the common case: inlined.)
  [[gnu::always_inline]] void put(std::uint64_t index, std::size_t at) {
    if (index == memo_.size() && sparse_.empty() && memo_.size() < memo_.capacity()) [[likely]] {
      memo_.push_back(stack_.back());  // (a copy shares a long text's box)
      return;
    }
    put_slow(index, at);
  }
  [[gnu::noinline]] void put_slow(std::uint64_t index, std::size_t at) {
    (void)at;
    const Item& top = stack_.back();
    Item entry = top;  // (a copy shares a long text's box)
    if (index < memo_.size()) {
      memo_[index] = std::move(entry);
    } else if (index == memo_.size()) {
      memo_.push_back(std::move(entry));
      if (!sparse_.empty()) sparse_.erase(static_cast<std::uint32_t>(index));
    } else {
      sparse_[static_cast<std::uint32_t>(index)] = std::move(entry);
    }
  }
  void fetch(std::uint64_t index, std::size_t at) {
    const Item* entry = nullptr;
    if (index < memo_.size()) {
      entry = &memo_[index];
    } else {
      auto it = sparse_.find(static_cast<std::uint32_t>(index));
      if (it == sparse_.end()) fail("memo key " + std::to_string(index) + " was never stored", at);
      entry = &it->second;
    }
    // A shared container or long text: copying the result out may cost more than its size.
    if (Raw::container(entry->value) || Raw::text(entry->value).size() > 64) shares_ = true;
    stack_.push_back(*entry);
  }

  // ---- globals ----
  void push_global(std::string_view module, std::string_view name, std::size_t at) {
    Global g = Global::none;
    if (module == "builtins" || module == "__builtin__") {
      if (name == "set") g = Global::set;
      else if (name == "frozenset") g = Global::frozenset;
      else if (name == "list") g = Global::list;
      else if (name == "bytearray") g = Global::bytearray;
      else if (name == "bytes") g = Global::bytes;
    } else if (module == "_codecs" && name == "encode") {
      g = Global::codecs_encode;
    }
    if (g == Global::none && manager_ && manager_admits(module, name)) {
      stack_.push_back(Item{Raw::make_str_unchecked(std::string(module) + "." + std::string(name)), Global::object});
      return;
    }
    if (g == Global::none) {
      std::string shown = std::string(module.substr(0, 200)) + "." + std::string(name.substr(0, 200));
      fail("refusing to load global '" + shown + "': only " + kAllowed + " are allowed", at);
    }
    stack_.push_back(Item{Value(), g});
  }

  // The manager allow-list (PROTOCOLS.md §3.4). Names only: nothing is imported or called.
  static bool manager_admits(std::string_view module, std::string_view name) {
    const auto ends = [&](std::string_view suffix) {
      return name.size() >= suffix.size() && name.substr(name.size() - suffix.size()) == suffix;
    };
    if (module == "multiprocessing.managers")
      return name == "Token" || name == "Namespace" || name == "RebuildProxy" || name == "AutoProxy" || ends("Proxy");
    if (module == "array") return name == "array";
    // The exceptions of the typeids whose names do not say so (Queue.get, Barrier.wait).
    if (module == "queue" || module == "_queue") return name == "Empty" || name == "Full";
    if (module == "threading") return name == "BrokenBarrierError";
    // Exceptions, from builtins or user modules (a '#ERROR' reply may carry __main__.MyError).
    if (module.empty() || module.size() > 200 || name.empty() || name.size() > 200) return false;
    return ends("Error") || ends("Exception") || ends("Warning") || ends("Exit") || ends("Interrupt") ||
           (module == "builtins" && name == "StopIteration");
  }
  static bool is_tagged_object(const Value& v) {
    if (Raw::kind(v) != kTuple) return false;
    const auto& items = Raw::container(v)->items;
    return items.size() >= 2 && Raw::kind(items[0]) == kBytes && Raw::text(items[0]) == kObjectTag;
  }
  Value tagged(const Value& name, const Value& args, Value state, std::size_t at) {
    return build(kTuple, {Raw::make_bytes(std::string(kObjectTag)), name, args, std::move(state)}, at);
  }

  Value reduce(Global g, const std::vector<Value>& args, std::size_t at) {
    const auto bad = [&](const char* what) {
      fail(std::string("REDUCE of ") + what + " with arguments it does not take from a pickle of plain data", at);
    };
    switch (g) {
      case Global::set:
      case Global::frozenset:
      case Global::list: {
        const char* name = g == Global::set ? "builtins.set" : g == Global::frozenset ? "builtins.frozenset" : "builtins.list";
        const Kind kind = g == Global::set ? kSet : g == Global::frozenset ? kFrozenset : kList;
        if (args.empty()) return Raw::make_container(kind, {});
        const Kind from = Raw::kind(args[0]);
        if (args.size() != 1 || !(from == kList || from == kTuple || from == kSet || from == kFrozenset)) bad(name);
        return build(kind, Raw::container(args[0])->items, at);
      }
      case Global::bytearray:
      case Global::bytes: {
        if (args.empty()) return Raw::make_bytes("");
        if (args.size() != 1 || Raw::kind(args[0]) != kBytes) bad(g == Global::bytes ? "builtins.bytes" : "builtins.bytearray");
        return args[0];
      }
      case Global::codecs_encode: {
        if (args.size() != 2 || Raw::kind(args[0]) != kStr || Raw::kind(args[1]) != kStr ||
            (Raw::text(args[1]) != "latin1" && Raw::text(args[1]) != "latin-1"))
          bad("_codecs.encode (only (str, 'latin1'), as protocol 2 writes bytes, is accepted)");
        const std::string_view s = Raw::text(args[0]);  // valid UTF-8: code points <= 0xff become bytes
        std::string out;
        out.reserve(s.size());
        for (std::size_t i = 0; i < s.size(); ++i) {
          const auto c = static_cast<unsigned char>(s[i]);
          if (c < 0x80) {
            out += static_cast<char>(c);
          } else if ((c == 0xc2 || c == 0xc3) && i + 1 < s.size()) {
            out += static_cast<char>(((c & 0x03) << 6) | (static_cast<unsigned char>(s[++i]) & 0x3f));
          } else {
            fail("_codecs.encode: a code point above U+00FF cannot be encoded as latin1", at);
          }
        }
        return Raw::make_bytes(std::move(out));
      }
      case Global::object: break;  // handled by the caller
      case Global::none: break;
    }
    fail("REDUCE of an unknown global", at);
  }

  bool manager_;  // the manager allow-list is on (load_manager_value)
  bool shares_ = false;  // a container was pushed a second time (by a memo reference or DUP)
  const unsigned char* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
  std::size_t budget_;  // items that may still be put into containers
  Items stack_;
  std::vector<std::size_t> marks_;
  Items memo_;
  std::unordered_map<std::uint32_t, Item> sparse_;  // memo indices stored out of order
};

}  // namespace

Value load_value(std::span<const std::byte> data) { return Reader(data).run(); }
Value load_value(std::span<const std::byte> data, bool& shares) {
  Reader reader(data);
  Value v = reader.run();
  shares = reader.shares();
  return v;
}
Value load_manager_value(std::span<const std::byte> data) { return Reader(data, true).run(); }

}  // namespace mp::pickle::detail
