// The native codec: how values cross the process boundary (Python: multiprocessing.reduction,
// the ForkingPickler). mp::dumps / mp::loads<T> over cereal archives of our own.
//
// What crosses: arithmetic types, enums (as their underlying type), std::string, mp::Bytes,
// std::vector, std::array, std::deque, std::list, std::map, std::unordered_map, std::set,
// std::unordered_set, std::optional, std::variant, std::monostate, std::pair, std::tuple, nested
// freely; trivially copyable aggregates without a serialization of their own, as their bytes
// (padding included; their bool and enum members are not checked on load); any class with the
// cereal convention
//     template <class Archive> void serialize(Archive& ar) { ar(a, b, c); }
// or free serialize / save+load / save_minimal+load_minimal functions as cereal users write them.
// A type that is loaded must be default-constructible.
//
// The layout (fixed, little-endian): arithmetic values as their bytes (bool: one byte, 0 or 1),
// sizes as uint64 before the elements, std::optional as a bool then the value, std::variant as an
// int32 index then the value, std::monostate as one zero byte, class members in order.
//
// loads() reads bytes from other processes and trusts none of them: truncated, malformed or
// mistyped input, or bytes left over after the value, is std::invalid_argument naming the type
// and what was wrong; a size is checked against the bytes left before anything is allocated
// for it. (So a container can hold no more elements that encode to nothing, e.g. a type whose
// serialize writes nothing or std::tuple<>, than there are bytes after its size.)
#pragma once

#include <multiprocessing/base.hpp>
#include <multiprocessing/detail/codec.hpp>

#include <cstdint>
#include <span>
#include <vector>

namespace mp {

/// The encoding of obj. Throws what a type's own save throws (e.g. std::invalid_argument for a
/// handle outside a Process argument).
template <class T>
Bytes dumps(const T& obj) {
  Bytes out;
  detail::dump_into(out, obj);
  return out;
}

/// The T encoded in data, which must hold exactly one T. Throws std::invalid_argument.
template <class T>
T loads(std::span<const std::byte> data) {
  T out{};
  detail::load_from(data, out);
  return out;
}

namespace detail {

// (is_serializable_v<T>, dump_into(out, obj) and load_from(data, out): see detail/codec.hpp)

/// While an FdExport lives on this thread, handles (Connection, later Queue, Lock, ...) that are
/// saved by the codec register a file descriptor with export_fd() and write the index it returns;
/// the process that starts a spawn/forkserver child then passes fds() to it (SCM_RIGHTS). The fds
/// are not owned by the FdExport: they stay valid as long as the handles saved.
class FdExport {
 public:
  FdExport();
  ~FdExport();
  FdExport(const FdExport&) = delete;
  FdExport& operator=(const FdExport&) = delete;
  const std::vector<int>& fds() const noexcept { return fds_; }

 private:
  friend int export_fd(int fd);
  std::vector<int> fds_;
  FdExport* previous_;
};

/// While an FdImport lives on this thread, handles loaded by the codec take their descriptors
/// from it: import_fd(index) hands over ownership of fds[index] (once; a second claim of the same
/// index, or an index out of range, is std::invalid_argument). Descriptors nobody claimed are
/// closed by the destructor.
class FdImport {
 public:
  explicit FdImport(std::vector<int> fds);
  ~FdImport();
  FdImport(const FdImport&) = delete;
  FdImport& operator=(const FdImport&) = delete;

 private:
  friend int import_fd(std::size_t index);
  std::vector<int> fds_;
  FdImport* previous_;
};

/// Registers fd with the innermost FdExport of this thread and returns its index. Without one:
/// std::invalid_argument ("a <handle> crosses processes only as a Process argument").
int export_fd(int fd);
/// Takes the fd at index from the innermost FdImport of this thread (see FdImport).
int import_fd(std::size_t index);

/// A handle's save() when its state is one fd: writes the fd's FdExport index.
template <class Archive>
void save_fd_index(Archive& ar, int fd) {
  const std::int32_t index = export_fd(fd);
  ar(index);
}
/// The matching load(): the index that save_fd_index wrote (the handle claims it with import_fd).
template <class Archive>
std::int32_t load_fd_index(Archive& ar) {
  std::int32_t index = -1;
  ar(index);
  return index;
}

}  // namespace detail
}  // namespace mp
