// File descriptors and the few system calls on them that every module needs. Only src/posix/
// talks to the kernel; the rest of the library goes through these wrappers.
#pragma once

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <vector>

namespace mp::detail::posix {

/// Throws std::system_error(errno) with `what` when result is -1; returns result otherwise.
template <class T>
T check_unix(T result, const char* what) {
  if (result == static_cast<T>(-1)) throw std::system_error(errno, std::system_category(), what);
  return result;
}

/// Points each fd at /dev/null (the numbers stay open, their files are let go). For a fork's
/// child handler: async-signal-safe, and never fails (an fd it cannot blank stays as it was).
void blank_fds(std::span<const int> fds) noexcept;

/// Retries a call while it fails with EINTR (never use it for close()).
template <class F>
auto retry_eintr(F call) {
  for (;;) {
    auto r = call();
    if (r != -1 || errno != EINTR) return r;
  }
}

/// Owns one file descriptor; closes it in the destructor (errors are ignored there, as the fd is
/// released by close() even when it reports one).
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  int release() noexcept {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1) noexcept;

 private:
  int fd_ = -1;
};

/// A steady_clock deadline for a timeout given as seconds; nullopt is "never".
using Deadline = std::optional<std::chrono::steady_clock::time_point>;
Deadline deadline_after(std::optional<std::chrono::duration<double>> timeout);
/// Milliseconds left until the deadline for poll(): -1 for never, 0 once passed (rounded up so
/// that a wait never ends before its deadline).
int poll_timeout_ms(const Deadline& deadline);

/// Waits until fd is readable (data, EOF or error) or the deadline passes; true when readable.
/// Retries EINTR with the same deadline.
bool wait_readable(int fd, const Deadline& deadline);
/// Same for writable.
bool wait_writable(int fd, const Deadline& deadline);

/// Writes all of buf, looping over short writes and EINTR (Linux moves at most 0x7ffff000 bytes
/// per call). Throws std::system_error; EPIPE/ECONNRESET included.
void write_all(int fd, std::span<const std::byte> buf);
/// Reads exactly buf.size() bytes. Returns the number read before EOF (less than buf.size()
/// only at EOF). Throws std::system_error on errors.
std::size_t read_exact(int fd, std::span<std::byte> buf);

/// Sends data plus file descriptors (SCM_RIGHTS) in one message on a unix socket.
void send_with_fds(int socket, std::span<const std::byte> data, std::span<const int> fds);
/// Receives one message of at most max_data bytes plus up to max_fds descriptors (made
/// O_CLOEXEC). Returns the data; the fds go to `fds`. An empty result with no fds is EOF.
std::vector<std::byte> recv_with_fds(int socket, std::size_t max_data, std::vector<UniqueFd>& fds,
                                     std::size_t max_fds);

/// fcntl(F_DUPFD_CLOEXEC): a new descriptor for the same file, close-on-exec.
UniqueFd dup_cloexec(int fd);

}  // namespace mp::detail::posix
