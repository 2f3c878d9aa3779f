// Named shared memory (Python: multiprocessing.shared_memory, 3.8+): a block of memory that
// processes open by name, CPython's processes included.
//
// Names and semantics are CPython's on POSIX: a new segment is named "psm_" + 8 random lowercase
// hex digits; the OS name is "/" + name (/dev/shm/psm_...), mode 0600; name() has no leading
// slash. A user-given name gets a "/" prepended as CPython does (so name "/x" opens "//x", which
// the system treats as "/x", and name() reports "/x").
//
// Cleanup. A segment lives until unlink(), even after every process closed it. As in CPython, a
// segment this program created is registered with the resource tracker, a helper process that
// unlinks it when every process of the program is gone (even after a SIGKILL) and warns
// "resource_tracker: There appear to be N leaked shared_memory objects to clean up at shutdown";
// unlink() unregisters it. A segment only opened by name is not tracked (CPython 3.13's
// track=False; CPython 3.8-3.12 track it and so unlink a segment created by another program when
// the opening Python process exits).
#pragma once

#include <multiprocessing/base.hpp>
#include <multiprocessing/reduction.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

namespace mp::shared_memory {

/// A handle: copies share one mapping; close() on any copy closes it for all of them in this
/// process. Crosses to spawn/forkserver children as a Process argument by its fd (the child
/// maps the same segment even if it was unlinked meanwhile; the child does not track it), and to
/// fork children as a copy. Not synchronized: do not close() while another thread uses buf().
class SharedMemory {
 public:
  /// An empty handle (every call but close() throws std::logic_error); assign a real one to it.
  /// Exists so that a SharedMemory can be a member or be loaded by the codec. (Python's
  /// SharedMemory() raises ValueError; SharedMemory(std::nullopt) does the same here.)
  SharedMemory() noexcept;

  /// create: makes a new segment of size bytes (zero-filled) named name, or a fresh "psm_..." name
  /// when name is nullopt (retried on a clash). !create: opens the existing segment name; its size
  /// is the segment's (size is ignored).
  /// Throws std::invalid_argument for create with size 0, for !create without a name, or when an
  /// opened segment is empty; std::system_error EEXIST when create finds the name taken, ENOENT
  /// when !create finds no such segment, other errnos as the system reports them.
  explicit SharedMemory(std::optional<std::string> name, bool create = false, std::size_t size = 0);

  /// The mapped bytes. std::logic_error once closed.
  std::span<std::byte> buf();
  /// The segment's name, without the leading slash (Python's .name). Works after close().
  std::string name() const;
  /// The size of the segment when it was opened (fstat), which is the mapped size.
  std::size_t size() const;

  /// Unmaps the segment in this process (every copy of this handle). A second close() does nothing.
  void close();
  /// Removes the name (shm_unlink) and unregisters it from the resource tracker; processes that
  /// have the segment mapped keep it until they close it. Call it once, in one process. Works
  /// before or after close(). std::system_error ENOENT when the name is already gone.
  void unlink();

  template <class Archive>
  void save(Archive& ar) const {
    const std::int32_t index = detail::export_fd(export_fd_checked());
    const std::string os_name = os_name_checked();
    ar(index, os_name);
  }
  template <class Archive>
  void load(Archive& ar) {
    std::int32_t index = -1;
    std::string os_name;
    ar(index, os_name);
    *this = from_imported_fd(index, std::move(os_name));
  }

 private:
  struct Impl;
  explicit SharedMemory(std::shared_ptr<Impl> impl) noexcept;
  int export_fd_checked() const;
  std::string os_name_checked() const;
  static SharedMemory from_imported_fd(std::int32_t index, std::string os_name);
  Impl& impl() const;

  std::shared_ptr<Impl> impl_;
};

}  // namespace mp::shared_memory
