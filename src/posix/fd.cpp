#include "posix/fd.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace mp::detail::posix {

void UniqueFd::reset(int fd) noexcept {
  if (fd_ >= 0) ::close(fd_);  // never retried: Linux releases the fd even on EINTR
  fd_ = fd;
}

Deadline deadline_after(std::optional<std::chrono::duration<double>> timeout) {
  if (!timeout) return std::nullopt;
  auto now = std::chrono::steady_clock::now();
  double seconds = std::max(0.0, timeout->count());
  // Clamp absurd timeouts (days of years) to "a century" instead of overflowing the clock.
  seconds = std::min(seconds, 100.0 * 365 * 24 * 3600);
  return now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds));
}

int poll_timeout_ms(const Deadline& deadline) {
  if (!deadline) return -1;
  auto left = *deadline - std::chrono::steady_clock::now();
  if (left <= std::chrono::steady_clock::duration::zero()) return 0;
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return static_cast<int>(std::min<long long>(ms, 1 << 30));
}

static bool wait_for(int fd, short events, const Deadline& deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, poll_timeout_ms(deadline));
    if (n > 0) return true;
    if (n == 0) {
      // poll() may wake a little early relative to steady_clock; only give up once the deadline
      // has really passed.
      if (poll_timeout_ms(deadline) == 0) return false;
      continue;
    }
    if (errno != EINTR) check_unix(-1, "poll");
  }
}

bool wait_readable(int fd, const Deadline& deadline) { return wait_for(fd, POLLIN, deadline); }
bool wait_writable(int fd, const Deadline& deadline) { return wait_for(fd, POLLOUT, deadline); }

void write_all(int fd, std::span<const std::byte> buf) {
  while (!buf.empty()) {
    std::size_t chunk = std::min<std::size_t>(buf.size(), 0x7ffff000);
    ssize_t n = retry_eintr([&] { return ::write(fd, buf.data(), chunk); });
    check_unix(n, "write");
    buf = buf.subspan(static_cast<std::size_t>(n));
  }
}

std::size_t read_exact(int fd, std::span<std::byte> buf) {
  std::size_t done = 0;
  while (done < buf.size()) {
    std::size_t chunk = std::min<std::size_t>(buf.size() - done, 0x7ffff000);
    ssize_t n = retry_eintr([&] { return ::read(fd, buf.data() + done, chunk); });
    check_unix(n, "read");
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  return done;
}

void send_with_fds(int socket, std::span<const std::byte> data, std::span<const int> fds) {
  iovec iov{const_cast<std::byte*>(data.data()), data.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (!fds.empty()) {
    control.resize(CMSG_SPACE(fds.size_bytes()));
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(fds.size_bytes());
    std::memcpy(CMSG_DATA(c), fds.data(), fds.size_bytes());
  }
  ssize_t n = retry_eintr([&] { return ::sendmsg(socket, &msg, MSG_NOSIGNAL); });
  check_unix(n, "sendmsg");
  // A seqpacket socket sends all or nothing; on a stream socket the rest goes without the fds.
  if (static_cast<std::size_t>(n) < data.size()) write_all(socket, data.subspan(static_cast<std::size_t>(n)));
}

std::vector<std::byte> recv_with_fds(int socket, std::size_t max_data, std::vector<UniqueFd>& fds,
                                     std::size_t max_fds) {
  std::vector<std::byte> data(max_data);
  iovec iov{data.data(), data.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * std::max<std::size_t>(max_fds, 1)));
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  ssize_t n = retry_eintr([&] { return ::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC); });
  check_unix(n, "recvmsg");
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds.emplace_back(fd);  // owned even when over the limit, so that none leaks
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) throw std::system_error(EMSGSIZE, std::system_category(), "recvmsg: too many fds");
  data.resize(static_cast<std::size_t>(n));
  return data;
}

UniqueFd dup_cloexec(int fd) { return UniqueFd(check_unix(::fcntl(fd, F_DUPFD_CLOEXEC, 0), "fcntl(F_DUPFD_CLOEXEC)")); }

void blank_fds(std::span<const int> fds) noexcept {
  if (fds.empty()) return;
  const int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null < 0) return;
  for (int fd : fds) (void)::dup3(null, fd, O_CLOEXEC);
  ::close(null);
}

}  // namespace mp::detail::posix
