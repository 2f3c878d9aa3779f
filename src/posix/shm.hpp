// Shared memory: anonymous memfd segments for the library's own objects, and named POSIX
// segments (/dev/shm) for shared_memory::SharedMemory, which CPython opens by name.
#pragma once

#include <cstddef>
#include <string>

#include "posix/fd.hpp"

namespace mp::detail::posix {

/// A new anonymous segment of `size` zero bytes (memfd_create, MFD_CLOEXEC): no name anywhere, so
/// nothing can be left behind; the kernel frees it when the last fd and mapping are gone.
UniqueFd memfd(std::size_t size, const char* debug_name);

/// The size of the file behind fd (fstat).
std::size_t file_size(int fd);

/// A MAP_SHARED read-write mapping of the whole of fd; unmapped by the destructor.
class Mapping {
 public:
  Mapping() = default;
  Mapping(int fd, std::size_t size);
  Mapping(Mapping&& other) noexcept;
  Mapping& operator=(Mapping&& other) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping();

  void* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }

 private:
  void* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace mp::detail::posix
