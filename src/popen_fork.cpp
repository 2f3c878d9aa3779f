// The fork start method (Python: multiprocessing/popen_fork.py).
#include <csignal>
#include <cstdio>
#include <iostream>

#include "fork_safety.hpp"
#include "process_impl.hpp"

namespace mp::detail {

std::unique_ptr<Popen> popen_fork(StartRequest& request) {
  check_fork_with_threads();  // warns or throws (set_fork_with_threads) while other threads run
  // Buffered output written before start() must not be written twice (once by each process).
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  int parent = posix::current_pid();
  int pid = posix::fork_process();
  if (pid == 0) {
    // The child: it never returns into the caller's stack (that is the parent's business), and
    // leaves with _exit so that the parent's atexit handlers and static destructors do not run
    // here a second time. Library mutexes are consistent: each is held across fork() by its
    // pthread_atfork handlers.
    int code = 1;
    try {
      forkserver_forget_after_fork();
      // The parent's pidfd: opened here, then checked against getppid() so that it is known to
      // name the parent and not a process that reused its pid after the parent died.
      posix::UniqueFd parent_sentinel;
      try {
        parent_sentinel = posix::open_pidfd(parent);
        if (posix::parent_pid() != parent) parent_sentinel.reset();
      } catch (...) {
      }
      become_child(request.prep, std::move(parent_sentinel));
      Process& process = request.process;
      code = bootstrap([&process] { process.run(); });
    } catch (...) {
      code = 1;
    }
    posix::exit_immediately(code);
  }
  try {
    return std::make_unique<PopenPidfd>(pid, posix::open_pidfd(pid));
  } catch (...) {
    // Without a pidfd the child cannot be waited for as designed: do not leave it running.
    posix::send_signal(pid, SIGKILL);
    posix::reap(pid);
    throw;
  }
}

}  // namespace mp::detail
