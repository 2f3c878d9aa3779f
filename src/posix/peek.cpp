#include "posix/peek.hpp"

#include "posix/fd.hpp"

#include <sys/ioctl.h>
#include <sys/socket.h>

#include <cerrno>

namespace mp::detail::posix {

std::size_t peek_some(int fd, std::span<std::byte> buf) {
  const ssize_t n = retry_eintr([&] { return ::recv(fd, buf.data(), buf.size(), MSG_PEEK | MSG_DONTWAIT); });
  if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
  return static_cast<std::size_t>(check_unix(n, "recv(MSG_PEEK)"));
}

std::size_t bytes_ready(int fd) {
  int n = 0;
  check_unix(::ioctl(fd, FIONREAD, &n), "ioctl(FIONREAD)");
  return n > 0 ? static_cast<std::size_t>(n) : 0;
}

}  // namespace mp::detail::posix
