// Looking at what a stream socket holds without taking it, for the manager's accept loop
// (src/managers.cpp), which answers a connection's first request itself only when the whole
// request is already there. Only src/posix/ talks to the kernel.
#pragma once

#include <cstddef>
#include <span>

namespace mp::detail::posix {

/// recv(MSG_PEEK | MSG_DONTWAIT): copies up to buf.size() bytes of what the socket holds, leaving
/// them there; 0 when it holds nothing yet (or is at end of file). std::system_error on errors.
std::size_t peek_some(int fd, std::span<std::byte> buf);
/// ioctl(FIONREAD): the bytes the socket holds, ready to be read without waiting.
std::size_t bytes_ready(int fd);

}  // namespace mp::detail::posix
