// Shared ctypes objects (Python: multiprocessing.sharedctypes and multiprocessing.Value/Array):
// values and arrays of a trivially copyable T in memory shared between processes.
//
//   Value<T>     one T, guarded by an RLock (get_lock()) unless made with lock = false
//   Array<T>     n T's, guarded the same way
//   RawValue<T>  one T, no lock (Python's RawValue)
//   RawArray<T>  n T's, no lock (Python's RawArray)
//   sharedctypes::copy(raw)               a new raw object with the same contents
//   sharedctypes::synchronized(raw, lock) a Value/Array over raw's memory, guarded by lock
//
// Each object lives in an anonymous shared segment of its own (memfd, one page at least, one fd
// per object), so no name is ever left in /dev/shm; the kernel frees it when the last process
// holding it lets go. The objects are handles: copies share the memory (and the lock). They cross
// to a child as Process arguments under every start method (spawn/forkserver children receive the
// segment's fd, and the lock's) or are captured by a lambda under fork.
//
// value()/set_value()/to_vector() take the lock; get_obj() and operator[] are raw access: hold
// get_lock() for anything compound (`v.get_obj() += 1` under a std::lock_guard on v.get_lock()).
// The contents are T's bytes: a T holding pointers shares the pointers, not what they point to.
#pragma once

#include <multiprocessing/base.hpp>
#include <multiprocessing/reduction.hpp>
#include <multiprocessing/synchronize.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace mp {

template <class T> class Value;
template <class T> class Array;
template <class T> class RawValue;
template <class T> class RawArray;

namespace detail {

class SharedBlock;  // src/shared_block.hpp

/// The type-erased core of the four types: a zero-filled shared segment of a given size, shared by
/// copies. An empty SharedBuffer (default-constructed) has no memory.
class SharedBuffer {
 public:
  SharedBuffer() noexcept = default;
  /// A new zero-filled segment. std::system_error when the system refuses.
  SharedBuffer(std::size_t size, const char* debug_name);

  std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  bool has_memory() const noexcept { return block_ != nullptr; }

  template <class Archive>
  void save(Archive& ar) const {
    const std::int32_t index = detail::export_fd(fileno());
    const std::uint64_t size = size_;
    ar(index, size);
  }
  template <class Archive>
  void load(Archive& ar) {
    std::int32_t index = -1;
    std::uint64_t size = 0;
    ar(index, size);
    *this = from_imported_fd(index, size);
  }

 private:
  int fileno() const;
  static SharedBuffer from_imported_fd(std::int32_t index, std::uint64_t size);

  std::shared_ptr<SharedBlock> block_;
  std::byte* data_ = nullptr;  // cached from block_ so that element access is one load
  std::size_t size_ = 0;
};

/// std::invalid_argument: a received object's memory does not fit its type.
[[noreturn]] void throw_bad_shared_size(const char* type, std::size_t size, std::size_t element);
/// std::out_of_range for an index past the end.
[[noreturn]] void throw_index_error(const char* type, std::size_t index, std::size_t size);
/// std::logic_error: get_lock() of an object made with lock = false (or empty).
[[noreturn]] void throw_no_lock(const char* type);

/// Lets copy()/synchronized() reach the memory of the objects.
struct SharedctypesAccess {
  template <class X>
  static const SharedBuffer& buffer(const X& x) noexcept {
    return x.mem_;
  }
};

template <class T>
inline constexpr bool check_shared_type() {
  static_assert(std::is_trivially_copyable_v<T>,
                "mp::Value/Array/RawValue/RawArray<T>: T must be trivially copyable (the object lives in "
                "shared memory as T's bytes; use a Queue or a Manager for other types)");
  static_assert(!std::is_const_v<T> && !std::is_volatile_v<T> && !std::is_reference_v<T>,
                "mp::Value/Array/RawValue/RawArray<T>: T must be a plain object type");
  return true;
}

template <class T>
T* object_at(const SharedBuffer& mem, std::size_t i = 0) noexcept {
  // The memory is a mapping that another process may have written: T is trivially copyable, so
  // its bytes are a T (an implicit-lifetime object in mapped memory).
  return std::launder(reinterpret_cast<T*>(mem.data()) + i);
}

// The objects as received: memory that does not fit T (another type's, another build's) is
// refused rather than read past its end.
template <class T>
void check_received(const SharedBuffer& mem, bool array, const char* type) {
  if (array ? mem.size() % sizeof(T) != 0 : mem.size() != sizeof(T)) throw_bad_shared_size(type, mem.size(), sizeof(T));
}

}  // namespace detail

/// One T in shared memory, without a lock (Python's sharedctypes.RawValue).
template <class T>
class RawValue {
  static_assert(detail::check_shared_type<T>());

 public:
  /// A new object holding initial. std::system_error when the system refuses the memory.
  explicit RawValue(T initial = T{}) : mem_(sizeof(T), "mp-RawValue") {
    std::memcpy(static_cast<void*>(mem_.data()), &initial, sizeof(T));
  }
  /// The value (a plain read: no lock).
  T value() const { return *detail::object_at<T>(mem_); }
  /// Stores v (a plain write: no lock).
  void set_value(const T& v) { std::memcpy(static_cast<void*>(mem_.data()), &v, sizeof(T)); }
  /// The object itself.
  T& get_obj() { return *detail::object_at<T>(mem_); }
  const T& get_obj() const { return *detail::object_at<T>(mem_); }

  template <class Archive>
  void save(Archive& ar) const {
    ar(mem_);
  }
  template <class Archive>
  void load(Archive& ar) {
    detail::SharedBuffer mem;
    ar(mem);
    detail::check_received<T>(mem, false, "RawValue");
    mem_ = std::move(mem);
  }

 private:
  friend struct detail::SharedctypesAccess;
  template <class U> friend class Value;
  explicit RawValue(detail::SharedBuffer mem) noexcept : mem_(std::move(mem)) {}
  detail::SharedBuffer mem_;
};

/// n T's in shared memory, without a lock (Python's sharedctypes.RawArray).
template <class T>
class RawArray {
  static_assert(detail::check_shared_type<T>());

 public:
  /// An empty handle: no memory, size() 0. Exists so that a RawArray can be a member or be loaded
  /// by the codec; passing it to another process is std::logic_error.
  RawArray() noexcept = default;
  /// size zero-filled elements. std::system_error when the system refuses the memory;
  /// std::length_error when size * sizeof(T) overflows.
  explicit RawArray(std::size_t size) : mem_(bytes_for(size), "mp-RawArray") {}
  /// The elements of init. (RawArray<int>{5} holds one 5; RawArray<int>(5) holds five zeros.)
  RawArray(std::initializer_list<T> init) : RawArray(init.size()) {
    if (init.size() != 0) std::memcpy(static_cast<void*>(mem_.data()), init.begin(), init.size() * sizeof(T));
  }

  std::size_t size() const noexcept { return mem_.size() / sizeof(T); }
  /// Element i (raw access). std::out_of_range when i >= size() (Python's IndexError).
  T& operator[](std::size_t i) {
    if (i >= size()) detail::throw_index_error("RawArray", i, size());
    return *detail::object_at<T>(mem_, i);
  }
  const T& operator[](std::size_t i) const {
    if (i >= size()) detail::throw_index_error("RawArray", i, size());
    return *detail::object_at<T>(mem_, i);
  }
  /// All the elements (raw access).
  std::span<T> get_obj() const noexcept { return {size() ? detail::object_at<T>(mem_) : nullptr, size()}; }
  /// A copy of the elements (Python's a[:]; a plain read: no lock).
  std::vector<T> to_vector() const {
    auto s = get_obj();
    return std::vector<T>(s.begin(), s.end());
  }

  template <class Archive>
  void save(Archive& ar) const {
    ar(mem_);
  }
  template <class Archive>
  void load(Archive& ar) {
    detail::SharedBuffer mem;
    ar(mem);
    detail::check_received<T>(mem, true, "RawArray");
    mem_ = std::move(mem);
  }

 private:
  friend struct detail::SharedctypesAccess;
  template <class U> friend class Array;
  static std::size_t bytes_for(std::size_t n) {
    if (n > SIZE_MAX / sizeof(T)) throw std::length_error("mp::RawArray: size * sizeof(T) overflows");
    return n * sizeof(T);
  }
  explicit RawArray(detail::SharedBuffer mem) noexcept : mem_(std::move(mem)) {}
  detail::SharedBuffer mem_;
};

/// One T in shared memory guarded by an RLock (Python's multiprocessing.Value; lock = false gives
/// a Value without a lock, as Python's returns a RawValue).
template <class T>
class Value {
  static_assert(detail::check_shared_type<T>());

 public:
  /// A new object holding initial, with a new RLock unless lock = false. std::system_error when
  /// the system refuses the memory.
  explicit Value(T initial = T{}, bool lock = true) : raw_(initial) {
    if (lock) lock_.emplace();
  }
  /// A Value over raw's memory guarded by lock (sharedctypes::synchronized).
  Value(RawValue<T> raw, RLock lock) : raw_(std::move(raw)), lock_(std::move(lock)) {}

  /// The value, read under the lock (blocks while another holds it).
  T value() const {
    if (!lock_) return raw_.value();
    std::lock_guard guard(*lock_);
    return raw_.value();
  }
  /// Stores v under the lock.
  void set_value(const T& v) {
    if (!lock_) return raw_.set_value(v);
    std::lock_guard guard(*lock_);
    raw_.set_value(v);
  }
  /// The object itself (raw access: hold get_lock() for compound updates).
  T& get_obj() { return raw_.get_obj(); }
  /// The lock. std::logic_error when made with lock = false.
  RLock& get_lock() {
    if (!lock_) detail::throw_no_lock("Value");
    return *lock_;
  }

  template <class Archive>
  void save(Archive& ar) const {
    ar(raw_, lock_);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(raw_, lock_);
  }

 private:
  friend struct detail::SharedctypesAccess;
  RawValue<T> raw_;
  mutable std::optional<RLock> lock_;
};

/// n T's in shared memory guarded by an RLock (Python's multiprocessing.Array).
template <class T>
class Array {
  static_assert(detail::check_shared_type<T>());

 public:
  /// An empty handle: no memory and no lock, size() 0 (get_lock() is std::logic_error). Exists so
  /// that an Array can be a member or be loaded by the codec.
  Array() noexcept = default;
  /// size zero-filled elements, with a new RLock unless lock = false.
  explicit Array(std::size_t size, bool lock = true) : raw_(size) {
    if (lock) lock_.emplace();
  }
  /// The elements of init. (Array<int>{5} holds one 5; Array<int>(5) holds five zeros.)
  Array(std::initializer_list<T> init, bool lock = true) : raw_(init) {
    if (lock) lock_.emplace();
  }
  /// An Array over raw's memory guarded by lock (sharedctypes::synchronized).
  Array(RawArray<T> raw, RLock lock) : raw_(std::move(raw)), lock_(std::move(lock)) {}

  std::size_t size() const noexcept { return raw_.size(); }
  /// Element i (raw access, no lock). std::out_of_range when i >= size().
  T& operator[](std::size_t i) { return raw_[i]; }
  const T& operator[](std::size_t i) const { return raw_[i]; }
  /// All the elements (raw access).
  std::span<T> get_obj() const noexcept { return raw_.get_obj(); }
  /// A copy of the elements taken under the lock (Python's a[:]).
  std::vector<T> to_vector() const {
    if (!lock_) return raw_.to_vector();
    std::lock_guard guard(*lock_);
    return raw_.to_vector();
  }
  /// The lock. std::logic_error when made with lock = false (or empty).
  RLock& get_lock() {
    if (!lock_) detail::throw_no_lock("Array");
    return *lock_;
  }

  template <class Archive>
  void save(Archive& ar) const {
    ar(raw_, lock_);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(raw_, lock_);
  }

 private:
  friend struct detail::SharedctypesAccess;
  RawArray<T> raw_;
  mutable std::optional<RLock> lock_;
};

namespace detail {
template <class X>
struct SharedctypesTraits {
  static constexpr bool known = false;
};
template <class T>
struct SharedctypesTraits<RawValue<T>> {
  static constexpr bool known = true, raw = true;
  static RawValue<T> copy(const RawValue<T>& obj) { return RawValue<T>(obj.value()); }
  static Value<T> synchronized(RawValue<T> obj, RLock lock) { return Value<T>(std::move(obj), std::move(lock)); }
};
template <class T>
struct SharedctypesTraits<RawArray<T>> {
  static constexpr bool known = true, raw = true;
  static RawArray<T> copy(const RawArray<T>& obj) {
    RawArray<T> out(obj.size());
    auto from = obj.get_obj();
    if (!from.empty()) std::memcpy(static_cast<void*>(out.get_obj().data()), from.data(), from.size_bytes());
    return out;
  }
  static Array<T> synchronized(RawArray<T> obj, RLock lock) { return Array<T>(std::move(obj), std::move(lock)); }
};
template <class T>
struct SharedctypesTraits<Value<T>> {
  static constexpr bool known = true, raw = false;
  static RawValue<T> copy(const Value<T>& obj) { return RawValue<T>(obj.value()); }
};
template <class T>
struct SharedctypesTraits<Array<T>> {
  static constexpr bool known = true, raw = false;
  static RawArray<T> copy(const Array<T>& obj) {
    auto v = obj.to_vector();  // under the lock
    RawArray<T> out(v.size());
    if (!v.empty()) std::memcpy(static_cast<void*>(out.get_obj().data()), v.data(), v.size() * sizeof(T));
    return out;
  }
};
}  // namespace detail

namespace sharedctypes {
using mp::Array;
using mp::RawArray;
using mp::RawValue;
using mp::Value;

/// A new raw object (RawValue<T> / RawArray<T>) with the same contents as obj, in new memory.
/// obj may also be a Value/Array (read under its lock; the copy has no lock).
template <class Raw>
auto copy(const Raw& obj) {
  static_assert(detail::SharedctypesTraits<Raw>::known,
                "mp::sharedctypes::copy takes a RawValue, RawArray, Value or Array");
  return detail::SharedctypesTraits<Raw>::copy(obj);
}

/// A Value<T> / Array<T> over the SAME memory as obj, guarded by lock (default: a new RLock).
/// Writes through either are seen by the other; only the wrapper takes the lock.
template <class Raw>
auto synchronized(Raw obj, std::optional<RLock> lock = std::nullopt) {
  static_assert(detail::SharedctypesTraits<Raw>::known && detail::SharedctypesTraits<Raw>::raw,
                "mp::sharedctypes::synchronized takes a RawValue or a RawArray");
  return detail::SharedctypesTraits<Raw>::synchronized(std::move(obj), lock ? std::move(*lock) : RLock());
}
}  // namespace sharedctypes

}  // namespace mp
