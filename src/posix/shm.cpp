#include "posix/shm.hpp"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <utility>

namespace mp::detail::posix {

UniqueFd memfd(std::size_t size, const char* debug_name) {
  UniqueFd fd(check_unix(::memfd_create(debug_name, MFD_CLOEXEC), "memfd_create"));
  check_unix(retry_eintr([&] { return ::ftruncate(fd.get(), static_cast<off_t>(size)); }), "ftruncate");
  return fd;
}

std::size_t file_size(int fd) {
  struct stat st {};
  check_unix(::fstat(fd, &st), "fstat");
  return static_cast<std::size_t>(st.st_size);
}

Mapping::Mapping(int fd, std::size_t size) : size_(size) {
  if (size == 0) return;  // mmap refuses empty mappings; an empty segment has no bytes to share
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) check_unix(-1, "mmap");
  data_ = p;
}

Mapping::Mapping(Mapping&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

Mapping& Mapping::operator=(Mapping&& other) noexcept {
  if (this != &other) {
    if (data_) ::munmap(data_, size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

Mapping::~Mapping() {
  if (data_) ::munmap(data_, size_);
}

}  // namespace mp::detail::posix
