#include "posix/segments.hpp"

#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace mp::detail::posix {

FileInfo file_info(int fd) {
  struct stat st {};
  check_unix(::fstat(fd, &st), "fstat");
  return {static_cast<std::uint64_t>(st.st_ino), static_cast<std::size_t>(st.st_size)};
}

bool read_at(int fd, void* buf, std::size_t n, std::size_t offset) {
  auto* to = static_cast<char*>(buf);
  while (n != 0) {
    const ssize_t k = retry_eintr([&] { return ::pread(fd, to, n, static_cast<off_t>(offset)); });
    check_unix(k, "pread");
    if (k == 0) return false;
    to += k;
    n -= static_cast<std::size_t>(k);
    offset += static_cast<std::size_t>(k);
  }
  return true;
}

void populate(void* p, std::size_t n) noexcept {
  if (p != nullptr && n != 0) (void)::madvise(p, n, MADV_POPULATE_WRITE);
}

bool try_send_with_fd(int socket, std::span<const std::byte> data, int fd) noexcept {
  iovec iov{const_cast<std::byte*>(data.data()), data.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  const ssize_t n = retry_eintr([&] { return ::sendmsg(socket, &msg, MSG_DONTWAIT | MSG_NOSIGNAL); });
  return n == static_cast<ssize_t>(data.size());
}

bool try_recv_with_fd(int socket, std::span<std::byte> data, std::size_t& got, UniqueFd& fd) {
  iovec iov{data.data(), data.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  const ssize_t n = retry_eintr([&] { return ::recvmsg(socket, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC); });
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
  check_unix(n, "recvmsg");
  fd.reset();
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int one;
      std::memcpy(&one, CMSG_DATA(c) + i * sizeof(int), sizeof one);
      if (!fd) {
        fd = UniqueFd(one);
      } else {
        UniqueFd extra(one);  // never sent by this library: closed
      }
    }
  }
  got = static_cast<std::size_t>(n);
  return true;
}

}  // namespace mp::detail::posix
