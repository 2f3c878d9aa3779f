// The spawn start method (Python: multiprocessing/popen_spawn_posix.py): a fresh run of this
// executable, told by argv to read its preparation from one inherited socket.
#include <csignal>

#include "process_impl.hpp"

namespace mp::detail {

std::unique_ptr<Popen> popen_spawn(StartRequest& request) {
  // One private socketpair per child; only the child's end is inherited (every other fd of the
  // library is O_CLOEXEC), as CPython's spawnv_passfds.
  auto [parent_end, child_end] = posix::seqpacket_pair();
  std::vector<std::string> argv{spawn_argv0(), kSpawnMarker, std::to_string(child_end.get())};
  const int pass[1] = {child_end.get()};
  int pid = posix::spawn_process(spawn_executable(), argv, pass);
  child_end.reset();
  try {
    auto popen = std::make_unique<PopenPidfd>(pid, posix::open_pidfd(pid));
    // The child gets our pidfd as its parent's sentinel (parent_process()->is_alive()).
    auto self = posix::open_pidfd(posix::current_pid());
    // false: the child is already gone; its exit code tells why.
    (void)send_preparation(parent_end.get(), request.prep, self.get(), request.handle_fds);
    return popen;
  } catch (...) {
    posix::send_signal(pid, SIGKILL);
    posix::reap(pid);
    throw;
  }
}

}  // namespace mp::detail
