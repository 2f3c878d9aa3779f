#include "posix/socket.hpp"

#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>

namespace mp::detail::posix {
namespace {

// Linux moves at most this many bytes per read/write call.
constexpr std::size_t kMaxIo = 0x7ffff000;

std::pair<UniqueFd, UniqueFd> make_pair(int type) {
  int sv[2];
  check_unix(::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv), "socketpair");
  return {UniqueFd(sv[0]), UniqueFd(sv[1])};
}

// Fills iov with the non-empty ones of a and b; returns how many.
int fill_iov(iovec (&iov)[2], std::span<const std::byte> a, std::span<const std::byte> b) {
  int n = 0;
  for (auto part : {a, b})
    if (!part.empty()) iov[n++] = iovec{const_cast<std::byte*>(part.data()), part.size()};
  return n;
}

}  // namespace

FdKind fd_kind(int fd) {
  int type = 0;
  socklen_t len = sizeof type;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == -1) {
    if (errno == ENOTSOCK) return FdKind::other;
    check_unix(-1, "getsockopt(SO_TYPE)");
  }
  return type == SOCK_SEQPACKET ? FdKind::seqpacket : FdKind::stream;
}

std::pair<UniqueFd, UniqueFd> seqpacket_pair(int send_buffer) {
  auto pair = make_pair(SOCK_SEQPACKET);
  // Best effort: the kernel silently caps the value at net.core.wmem_max; writers read the
  // effective size back (send_buffer_size) to size their records.
  for (int fd : {pair.first.get(), pair.second.get()})
    check_unix(::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &send_buffer, sizeof send_buffer), "setsockopt(SO_SNDBUF)");
  return pair;
}

std::pair<UniqueFd, UniqueFd> stream_pair() { return make_pair(SOCK_STREAM); }

int send_buffer_size(int fd) {
  int size = 0;
  socklen_t len = sizeof size;
  check_unix(::getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, &len), "getsockopt(SO_SNDBUF)");
  return size;
}

void shutdown_socket(int fd, bool read, bool write) {
  if (!read && !write) return;
  int how = read && write ? SHUT_RDWR : read ? SHUT_RD : SHUT_WR;
  check_unix(::shutdown(fd, how), "shutdown");
}

void send_record(int fd, std::span<const std::byte> a, std::span<const std::byte> b) {
  iovec iov[2];
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = static_cast<std::size_t>(fill_iov(iov, a, b));
  ssize_t n = retry_eintr([&] { return ::sendmsg(fd, &msg, MSG_NOSIGNAL); });
  check_unix(n, "sendmsg");
  // A SOCK_SEQPACKET send is atomic: it either queues the whole record or fails.
  if (static_cast<std::size_t>(n) != a.size() + b.size())
    throw std::system_error(EIO, std::system_category(), "sendmsg: partial record");
}

void send_all(int fd, bool is_socket, std::span<const std::byte> a, std::span<const std::byte> b) {
  while (!a.empty() || !b.empty()) {
    iovec iov[2];
    int count = fill_iov(iov, a.first(std::min(a.size(), kMaxIo)), b.first(std::min(b.size(), kMaxIo - std::min(a.size(), kMaxIo))));
    ssize_t n;
    if (is_socket) {
      msghdr msg{};
      msg.msg_iov = iov;
      msg.msg_iovlen = static_cast<std::size_t>(count);
      n = retry_eintr([&] { return ::sendmsg(fd, &msg, MSG_NOSIGNAL); });
      check_unix(n, "sendmsg");
    } else {
      n = retry_eintr([&] { return ::writev(fd, iov, count); });
      check_unix(n, "writev");
    }
    auto done = static_cast<std::size_t>(n);
    std::size_t from_a = std::min(done, a.size());
    a = a.subspan(from_a);
    b = b.subspan(done - from_a);
  }
}

Received recv_record(int fd, std::span<std::byte> buf) {
  iovec iov{buf.data(), std::min(buf.size(), kMaxIo)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  ssize_t n = retry_eintr([&] { return ::recvmsg(fd, &msg, 0); });
  check_unix(n, "recvmsg");
  return {static_cast<std::size_t>(n), (msg.msg_flags & MSG_TRUNC) != 0};
}

std::size_t read_some(int fd, bool is_socket, std::span<std::byte> buf) {
  std::size_t want = std::min(buf.size(), kMaxIo);
  ssize_t n = is_socket ? retry_eintr([&] { return ::recv(fd, buf.data(), want, 0); })
                        : retry_eintr([&] { return ::read(fd, buf.data(), want); });
  check_unix(n, is_socket ? "recv" : "read");
  return static_cast<std::size_t>(n);
}

void poll_readable(std::span<const int> fds, const Deadline& deadline, std::vector<bool>& ready) {
  std::vector<pollfd> polled(fds.size());
  for (std::size_t i = 0; i < fds.size(); ++i) polled[i] = pollfd{fds[i], POLLIN, 0};
  ready.assign(fds.size(), false);
  for (;;) {
    int n = ::poll(polled.data(), polled.size(), poll_timeout_ms(deadline));
    if (n == -1) {
      if (errno == EINTR) continue;
      check_unix(-1, "poll");
    }
    if (n == 0) {
      // poll() may wake a little before the steady_clock deadline: only give up once it passed.
      if (poll_timeout_ms(deadline) == 0) return;
      continue;
    }
    for (std::size_t i = 0; i < polled.size(); ++i) {
      if (polled[i].revents & POLLNVAL) throw std::system_error(EBADF, std::system_category(), "poll");
      // POLLHUP/POLLERR: EOF or an error, which the next read reports; ready either way.
      if (polled[i].revents & (POLLIN | POLLHUP | POLLERR)) ready[i] = true;
    }
    return;
  }
}

void advise_huge_pages(void* p, std::size_t n) noexcept {
  constexpr std::uintptr_t kHuge = 2 << 20;
  auto begin = (reinterpret_cast<std::uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  auto end = (reinterpret_cast<std::uintptr_t>(p) + n) & ~(kHuge - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

}  // namespace mp::detail::posix
