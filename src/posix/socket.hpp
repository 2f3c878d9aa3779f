// Sockets for connections: socketpairs, the socket type of an fd, and the send/receive calls the
// message framing is built on (src/connection.cpp). Only src/posix/ talks to the kernel.
#pragma once

#include "posix/fd.hpp"

#include <cstddef>
#include <span>
#include <utility>
#include <vector>

namespace mp::detail::posix {

/// What kind of descriptor a connection was built on.
enum class FdKind {
  seqpacket,  // AF_UNIX SOCK_SEQPACKET: every read returns one record, never part of the next
  stream,     // a stream socket (socketpair, TCP, AF_UNIX SOCK_STREAM)
  other,      // not a socket (a pipe, a file): read()/write()
};
/// The kind of fd (getsockopt SO_TYPE; ENOTSOCK is `other`).
FdKind fd_kind(int fd);

/// socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC), with each socket's send buffer raised to
/// send_buffer bytes where the system allows it (net.core.wmem_max caps it).
std::pair<UniqueFd, UniqueFd> seqpacket_pair(int send_buffer);
/// socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC).
std::pair<UniqueFd, UniqueFd> stream_pair();
/// The socket's effective send buffer (SO_SNDBUF, as the kernel reports it).
int send_buffer_size(int fd);
/// shutdown(2) of one or both directions.
void shutdown_socket(int fd, bool read, bool write);

/// Sends a then b as ONE record of a SOCK_SEQPACKET socket (all or nothing; blocks for room).
/// MSG_NOSIGNAL: a gone peer is std::system_error(EPIPE), never SIGPIPE.
void send_record(int fd, std::span<const std::byte> a, std::span<const std::byte> b);
/// Writes all of a then b to a byte stream, looping over short writes and EINTR. Sockets use
/// sendmsg(MSG_NOSIGNAL); other fds writev() (a pipe whose reader is gone raises SIGPIPE there).
void send_all(int fd, bool is_socket, std::span<const std::byte> a, std::span<const std::byte> b);

struct Received {
  std::size_t size;  // 0: end of file
  bool truncated;    // the record was longer than the buffer (the rest is lost)
};
/// Receives one record of a SOCK_SEQPACKET socket into buf (EINTR retried).
Received recv_record(int fd, std::span<std::byte> buf);
/// Reads what is available of a byte stream, at most buf.size() bytes (blocks for at least one);
/// 0 is end of file. Sockets use recv(), other fds read().
std::size_t read_some(int fd, bool is_socket, std::span<std::byte> buf);

/// poll(2) for readability over fds until at least one is ready or the deadline passes (EINTR
/// retried with the same deadline). ready[i] is set for each fd that has data, EOF or an error.
/// std::system_error(EBADF) when one of them is not an open descriptor.
void poll_readable(std::span<const int> fds, const Deadline& deadline, std::vector<bool>& ready);

/// A hint that [p, p + n) be backed by transparent huge pages (madvise MADV_HUGEPAGE on the
/// 2 MiB-aligned part). For large receive buffers: on a virtual machine a 4 KiB page fault costs
/// microseconds, and faulting in a 2 GiB message page by page took seconds. Errors are ignored.
void advise_huge_pages(void* p, std::size_t n) noexcept;

}  // namespace mp::detail::posix
