// shared_memory::SharedMemory (Python: multiprocessing/shared_memory.py), POSIX half.
#include <multiprocessing/shared_memory.hpp>

#include <cstdio>
#include <stdexcept>
#include <system_error>

#include "posix/fd.hpp"
#include "posix/process.hpp"
#include "posix/shm.hpp"
#include "posix/shm_named.hpp"
#include "resource_tracker.hpp"

namespace mp::shared_memory {

namespace {

// CPython's _make_filename: "/psm_" + hex of (14 - len("/psm_")) // 2 = 4 random bytes, so that the
// OS name stays within 14 characters (the most some systems allow).
std::string make_filename() {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string name = "/psm_";
  for (std::byte b : detail::posix::random_bytes(4)) {
    auto v = static_cast<unsigned>(b);
    name += kHex[v >> 4];
    name += kHex[v & 15];
  }
  return name;
}

}  // namespace

struct SharedMemory::Impl {
  std::string os_name;  // CPython's _name: what shm_open/shm_unlink get, with the leading slash
  std::size_t size = 0;
  detail::posix::UniqueFd fd;
  detail::posix::Mapping mapping;
  bool closed = false;
};

SharedMemory::SharedMemory() noexcept = default;
SharedMemory::SharedMemory(std::shared_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}

SharedMemory::SharedMemory(std::optional<std::string> name, bool create, std::size_t size) {
  namespace posix = detail::posix;
  if (create && size == 0) throw std::invalid_argument("SharedMemory: 'size' must be a positive number different from zero");
  if (!name && !create) throw std::invalid_argument("SharedMemory: 'name' can only be None if create=True");
  auto impl = std::make_shared<Impl>();
  if (!name) {
    for (;;) {
      impl->os_name = make_filename();
      try {
        impl->fd = posix::shm_open_named(impl->os_name, true);
        break;
      } catch (const std::system_error& e) {
        if (e.code().value() != EEXIST) throw;  // a clash of random names: draw another
      }
    }
  } else {
    impl->os_name = "/" + *name;
    impl->fd = posix::shm_open_named(impl->os_name, create);
  }
  try {
    if (create) posix::truncate_fd(impl->fd.get(), size);
    impl->size = posix::file_size(impl->fd.get());
    if (impl->size == 0) throw std::invalid_argument("SharedMemory: cannot map the empty segment " + impl->os_name);
    impl->mapping = posix::Mapping(impl->fd.get(), impl->size);
  } catch (...) {
    // A segment made here and unusable is removed (CPython removes it on OSError); one that
    // somebody else made is left alone.
    if (create) (void)posix::try_shm_unlink_named(impl->os_name);
    throw;
  }
  // Registered only once it exists and is ours: the tracker must never unlink somebody else's.
  if (create) detail::resource_tracker::register_resource(impl->os_name, detail::resource_tracker::kSharedMemory);
  impl_ = std::move(impl);
}

SharedMemory::Impl& SharedMemory::impl() const {
  if (!impl_) throw std::logic_error("SharedMemory: an empty handle (default-constructed)");
  return *impl_;
}

std::span<std::byte> SharedMemory::buf() {
  auto& i = impl();
  if (i.closed) throw std::logic_error("SharedMemory: buf() of a closed segment (" + i.os_name + ")");
  return {static_cast<std::byte*>(i.mapping.data()), i.mapping.size()};
}

std::string SharedMemory::name() const {
  const auto& n = impl().os_name;
  // CPython strips exactly one leading slash (the one it prepended).
  return !n.empty() && n.front() == '/' ? n.substr(1) : n;
}

std::size_t SharedMemory::size() const { return impl().size; }

void SharedMemory::close() {
  if (!impl_ || impl_->closed) return;
  impl_->mapping = detail::posix::Mapping();
  impl_->fd.reset();
  impl_->closed = true;
}

void SharedMemory::unlink() {
  auto& i = impl();
  detail::posix::shm_unlink_named(i.os_name);
  detail::resource_tracker::unregister_resource(i.os_name, detail::resource_tracker::kSharedMemory);
}

int SharedMemory::export_fd_checked() const {
  auto& i = impl();
  if (i.closed) throw std::logic_error("SharedMemory: a closed segment cannot be passed to another process (" + i.os_name + ")");
  return i.fd.get();
}

std::string SharedMemory::os_name_checked() const { return impl().os_name; }

SharedMemory SharedMemory::from_imported_fd(std::int32_t index, std::string os_name) {
  namespace posix = detail::posix;
  if (index < 0) throw std::invalid_argument("SharedMemory: bad fd index in a received handle");
  posix::UniqueFd fd(detail::import_fd(static_cast<std::size_t>(index)));
  auto impl = std::make_shared<Impl>();
  impl->os_name = std::move(os_name);
  impl->size = posix::file_size(fd.get());
  if (impl->size == 0) throw std::invalid_argument("SharedMemory: received an empty segment " + impl->os_name);
  impl->fd = std::move(fd);
  impl->mapping = posix::Mapping(impl->fd.get(), impl->size);
  return SharedMemory(std::move(impl));
}

}  // namespace mp::shared_memory
