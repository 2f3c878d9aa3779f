// Named POSIX shared memory (/dev/shm) for shared_memory::SharedMemory, whose segments CPython
// opens by name, and the few other calls the resource tracker needs. Only src/posix/ talks to
// the kernel.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <string>

#include "posix/fd.hpp"

namespace mp::detail::posix {

/// shm_open(os_name) read-write, O_CLOEXEC, mode 0600 (CPython's). create: O_CREAT | O_EXCL, so
/// an existing name is std::system_error(EEXIST); otherwise a missing name is ENOENT.
UniqueFd shm_open_named(const std::string& os_name, bool create);

/// shm_unlink(os_name); std::system_error (ENOENT for a missing name).
void shm_unlink_named(const std::string& os_name);

/// shm_unlink(os_name) without throwing: true when a name was removed.
bool try_shm_unlink_named(const std::string& os_name) noexcept;

/// ftruncate(fd, size) with EINTR retried; std::system_error.
void truncate_fd(int fd, std::size_t size);

/// Sets each of the signals to SIG_IGN (the resource tracker outlives a Ctrl-C of its program,
/// as CPython's does, and cleans up after it).
void ignore_signals(std::initializer_list<int> signals) noexcept;

}  // namespace mp::detail::posix
