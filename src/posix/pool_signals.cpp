#include "posix/pool_signals.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <mutex>
#include <system_error>

namespace mp::detail::posix {

namespace {
int g_pipe[2] = {-1, -1};
bool g_installed = false;
struct sigaction g_previous {};
std::mutex g_mutex;

extern "C" void on_sigint(int) {
  int saved = errno;
  char c = 'i';
  if (g_pipe[1] >= 0) (void)!::write(g_pipe[1], &c, 1);
  errno = saved;
}
}  // namespace

void ignore_sigint() noexcept { ::signal(SIGINT, SIG_IGN); }

int sigint_watch_fd() {
  std::lock_guard lock(g_mutex);
  if (g_pipe[0] < 0) {
    if (::pipe2(g_pipe, O_CLOEXEC | O_NONBLOCK) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
  }
  if (!g_installed) {
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (::sigaction(SIGINT, &sa, &g_previous) != 0) throw std::system_error(errno, std::generic_category(), "sigaction");
    g_installed = true;
  }
  return g_pipe[0];
}

bool take_sigint() noexcept {
  if (g_pipe[0] < 0) return false;
  bool any = false;
  char buf[64];
  while (::read(g_pipe[0], buf, sizeof buf) > 0) any = true;
  return any;
}

void restore_sigint() noexcept {
  std::lock_guard lock(g_mutex);
  if (!g_installed) return;
  ::sigaction(SIGINT, &g_previous, nullptr);
  g_installed = false;
}

}  // namespace mp::detail::posix
