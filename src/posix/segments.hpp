// The system calls behind the queues' recycled large-item segments (src/queues.cpp): memfds that
// travel between processes as descriptors and stay mapped in each process that used them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "posix/fd.hpp"

namespace mp::detail::posix {

/// What fstat(2) says of a segment: its identity (the inode: stable while anyone holds the file,
/// which a cached mapping does) and its size.
struct FileInfo {
  std::uint64_t id;
  std::size_t size;
};
FileInfo file_info(int fd);

/// pread(2) of exactly n bytes at offset; false when the file is shorter. std::system_error otherwise.
bool read_at(int fd, void* buf, std::size_t n, std::size_t offset);

/// Fills the page tables of [p, p + n) at once (madvise MADV_POPULATE_WRITE), instead of one fault
/// per page on first touch: on a virtual machine a fault costs microseconds, and a 4 MiB item has
/// 1024 pages. Errors (an older kernel) are ignored: the pages then fault in as usual.
void populate(void* p, std::size_t n) noexcept;

/// Sends data plus one descriptor as one record without waiting (MSG_DONTWAIT | MSG_NOSIGNAL).
/// false when the record could not be sent now (a full buffer, a gone peer): nothing was sent.
bool try_send_with_fd(int socket, std::span<const std::byte> data, int fd) noexcept;
/// Receives one record with one descriptor without waiting. false when none is there; true with
/// the record's size in `got` (its fd in `fd`, invalid when it carried none).
bool try_recv_with_fd(int socket, std::span<std::byte> data, std::size_t& got, UniqueFd& fd);

}  // namespace mp::detail::posix
