// The shared memory behind every handle of the synchronization and shared-state modules (Lock,
// Event, Value, Array, ...; later the queues): one anonymous memfd segment per object.
//
// Why memfd and no resource tracker for these: an anonymous segment has no name in /dev/shm, so
// there is nothing to unlink and nothing a SIGKILL can leave behind; the kernel frees it when the
// last process holding its fd or a mapping of it is gone, which is exactly "the object lives while
// any process holds it". Fork children inherit the mapping; spawn and forkserver children receive
// the fd (a handle's save() exports it through detail::FdExport, its load() maps it again).
// Only shared_memory::SharedMemory, whose segments CPython opens by name, needs names and a tracker.
#pragma once

#include <cstddef>
#include <memory>
#include <stdexcept>

#include "posix/fd.hpp"
#include "posix/shm.hpp"

namespace mp::detail {

class SharedBlock {
 public:
  /// A new zero-filled block of size bytes. std::system_error when the system refuses.
  static std::shared_ptr<SharedBlock> create(std::size_t size, const char* debug_name) {
    auto fd = posix::memfd(size, debug_name);
    return std::shared_ptr<SharedBlock>(new SharedBlock(std::move(fd), size));
  }
  /// Maps a block received from another process (its size is the file's). std::invalid_argument
  /// when the size is not expected_size (a handle of another type, or of a different build).
  static std::shared_ptr<SharedBlock> adopt(posix::UniqueFd fd, std::size_t expected_size) {
    std::size_t size = posix::file_size(fd.get());
    if (size != expected_size) throw std::invalid_argument("mp: a shared object of the wrong size was received");
    return std::shared_ptr<SharedBlock>(new SharedBlock(std::move(fd), size));
  }

  void* data() const noexcept { return mapping_.data(); }
  std::size_t size() const noexcept { return mapping_.size(); }
  /// The memfd, for handles to export to spawn/forkserver children.
  int fd() const noexcept { return fd_.get(); }

 private:
  SharedBlock(posix::UniqueFd fd, std::size_t size) : fd_(std::move(fd)), mapping_(fd_.get(), size) {}

  posix::UniqueFd fd_;
  posix::Mapping mapping_;
};

}  // namespace mp::detail
