// The forkserver (Python: multiprocessing/forkserver.py): the server loop, and the client side
// that starts it on first use.
//
// The server is a fresh run of this executable ("--multiprocessing-forkserver <fd>"), entered
// from freeze_support before any user code: it is single-threaded and clean, so forking it is
// cheap and safe. It talks to the one process that started it over a private socketpair
// (nobody else can connect), and exits when that socket reaches EOF (its parent is gone);
// children it forked keep running. Each process that uses forkserver gets its own server: a
// forked child forgets its parent's (forkserver_forget_after_fork), a spawned child never
// inherits it (O_CLOEXEC).
//
// Protocol on the control socket (SOCK_SEQPACKET): the parent sends 'F' with one fd, the child
// end of a per-child socketpair. The server forks; the child runs spawn_child_main on that fd;
// the server writes 'P'+pid on it, then 'S'+exitcode once it has reaped the child (SIGCHLD
// arrives on a signalfd; every child is reaped, whoever it was).
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>

#include "process_impl.hpp"

namespace mp::detail {

namespace {

void send_int_record(int socket, char tag, int value) {
  std::byte rec[5];
  rec[0] = std::byte(tag);
  std::int32_t v = value;
  std::memcpy(rec + 1, &v, sizeof v);
  try {
    (void)posix::send_record(socket, rec);  // the parent may be gone: nothing to do then
  } catch (...) {
  }
}

// The client's view of its server. The mutex is held across fork() (pthread_atfork) so that a
// forked child never finds it locked; the child then forgets the server anyway.
struct Client {
  std::mutex mutex;
  posix::UniqueFd control;
  int server_pid = 0;
};

Client& client() {
  static Client* c = [] {
    auto* created = new Client;
    posix::at_fork([] { client().mutex.lock(); }, [] { client().mutex.unlock(); }, [] { client().mutex.unlock(); });
    return created;
  }();
  return *c;
}

void start_server_locked(Client& c) {
  auto [mine, theirs] = posix::seqpacket_pair();
  std::vector<std::string> argv{spawn_argv0(), kForkserverMarker, std::to_string(theirs.get())};
  const int pass[1] = {theirs.get()};
  c.server_pid = posix::spawn_process(spawn_executable(), argv, pass);
  c.control = std::move(mine);
}

void forget_locked(Client& c) noexcept {
  c.control.reset();  // EOF: a server still alive exits
  if (c.server_pid > 0) {
    try {
      (void)posix::try_reap(c.server_pid);
    } catch (...) {
    }
  }
  c.server_pid = 0;
}

}  // namespace

void forkserver_request(posix::UniqueFd child_end) {
  auto& c = client();
  std::lock_guard lock(c.mutex);
  const std::byte tag{'F'};
  for (int attempt = 0;; ++attempt) {
    if (!c.control) start_server_locked(c);
    try {
      const int pass[1] = {child_end.get()};
      posix::send_with_fds(c.control.get(), std::span<const std::byte>(&tag, 1), pass);
      return;
    } catch (const std::system_error& e) {
      bool gone = e.code().value() == EPIPE || e.code().value() == ECONNRESET;
      if (!gone || attempt > 0) throw;
      forget_locked(c);  // the server died: start a new one and try once more
    }
  }
}

void forkserver_lost() noexcept {
  auto& c = client();
  std::lock_guard lock(c.mutex);
  forget_locked(c);
}

void forkserver_forget_after_fork() noexcept {
  auto& c = client();
  c.control.reset();
  c.server_pid = 0;  // not our child
}

void forkserver_main(int control_fd) {
  try {
    posix::UniqueFd control(control_fd);
    posix::UniqueFd signals = posix::forkserver_signals();
    std::map<int, posix::UniqueFd> children;  // pid -> its socket
    for (;;) {
      int fds[2] = {control.get(), signals.get()};
      auto revents = posix::poll_readable(fds);
      if (revents[1]) {
        posix::drain_signalfd(signals.get());
        while (auto ended = posix::reap_any()) {
          auto it = children.find(ended->first);
          if (it == children.end()) continue;
          posix::discard_pending(it->second.get());  // a preparation the child never read
          send_int_record(it->second.get(), 'S', ended->second);
          children.erase(it);
        }
      }
      if (!revents[0]) continue;
      std::vector<posix::UniqueFd> got;
      auto request = posix::recv_with_fds(control.get(), 16, got, 4);
      if (request.empty() && got.empty()) break;  // EOF: the parent is gone
      if (request.size() != 1 || request[0] != std::byte{'F'} || got.size() != 1) continue;  // ignored (fds closed)
      int pid = 0;
      try {
        pid = posix::fork_process();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "mp forkserver: %s\n", e.what());
        continue;  // the socket closes: the parent sees EOF instead of a pid
      }
      if (pid == 0) {
        // The child: keep only its own socket; become a spawn-like child.
        posix::reset_child_signals();
        int sock = got[0].release();
        children.clear();
        control.reset();
        signals.reset();
        spawn_child_main(sock);
      }
      // The pid is recorded before the next waitpid loop, so an early exit is never missed.
      send_int_record(got[0].get(), 'P', pid);
      children.emplace(pid, std::move(got[0]));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mp forkserver: %s\n", e.what());
    posix::exit_immediately(1);
  }
  posix::exit_immediately(0);
}

}  // namespace mp::detail
