#include "posix/shm_named.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <csignal>

namespace mp::detail::posix {

UniqueFd shm_open_named(const std::string& os_name, bool create) {
  int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0);
  // shm_open is open(2) on /dev/shm: it may be interrupted like any open.
  int fd = retry_eintr([&] { return ::shm_open(os_name.c_str(), flags, 0600); });
  if (fd == -1) throw std::system_error(errno, std::system_category(), "shm_open " + os_name);
  return UniqueFd(fd);
}

void shm_unlink_named(const std::string& os_name) {
  if (::shm_unlink(os_name.c_str()) == -1) throw std::system_error(errno, std::system_category(), "shm_unlink " + os_name);
}

bool try_shm_unlink_named(const std::string& os_name) noexcept { return ::shm_unlink(os_name.c_str()) == 0; }

void truncate_fd(int fd, std::size_t size) {
  check_unix(retry_eintr([&] { return ::ftruncate(fd, static_cast<off_t>(size)); }), "ftruncate");
}

void ignore_signals(std::initializer_list<int> signals) noexcept {
  for (int sig : signals) {
    struct sigaction sa {};
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    (void)::sigaction(sig, &sa, nullptr);
  }
}

}  // namespace mp::detail::posix
