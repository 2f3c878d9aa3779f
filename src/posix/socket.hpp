// Sockets for connections: socketpairs, the socket type of an fd, and the send/receive calls the
// message framing is built on (src/connection.cpp). Only src/posix/ talks to the kernel.
#pragma once

#include "posix/fd.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
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
/// recv_record without waiting: nullopt when no record is there yet.
std::optional<Received> try_recv_record(int fd, std::span<std::byte> buf);
/// recv() of what a stream socket has, without waiting: nullopt when nothing is there yet.
std::optional<std::size_t> try_recv_some(int fd, std::span<std::byte> buf);
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

// ---- listening and connecting sockets (Listener / Client) ----

/// A socket address as the listener code sees it: AF_INET (a dotted IPv4 host and a port) or
/// AF_UNIX (a path; a leading '\0' is an abstract name).
struct SocketAddress {
  bool inet = false;
  std::string host;
  std::uint16_t port = 0;
  std::string path;
};

/// socket + SO_REUSEADDR (AF_INET) + bind + listen, SOCK_STREAM | SOCK_CLOEXEC. An AF_INET host
/// name is resolved with getaddrinfo (IPv4 only; "" is INADDR_ANY). std::invalid_argument for a
/// host that does not resolve or an AF_UNIX path that is too long; std::system_error otherwise.
UniqueFd listen_socket(const SocketAddress& address, int backlog);
/// socket + connect (blocking; EINTR waits for the connection to finish). Errors as listen_socket.
UniqueFd connect_socket(const SocketAddress& address);
/// accept4(SOCK_CLOEXEC), retrying EINTR and the errors Linux reports on the new connection that
/// the accept(2) man page says to treat as EAGAIN (ECONNABORTED, ...). The peer's address goes to
/// peer.
UniqueFd accept_socket(int listening, SocketAddress& peer);
/// getsockname(2) of a socket.
SocketAddress local_address(int fd);

/// mkdtemp(dir/prefixXXXXXX): a new private (0700) folder; returns its path.
std::string make_temp_dir(const std::string& dir, const std::string& prefix);
/// unlink(2) / rmdir(2); false when it failed (errno set). For cleanup paths that must not throw.
bool unlink_path(const std::string& path) noexcept;
bool remove_dir(const std::string& path) noexcept;

}  // namespace mp::detail::posix
