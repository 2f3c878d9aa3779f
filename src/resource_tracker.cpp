// The resource tracker (Python: multiprocessing/resource_tracker.py).
//
// Design. One tracker process per program, started on first need by the first process that
// creates a named resource, and connected to it by a private AF_UNIX SOCK_SEQPACKET socketpair.
// The program's end is O_CLOEXEC but survives fork(), so fork children share the tracker and
// keep it alive, as in CPython (which passes the fd on explicitly). The tracker reads records
// (CPython's text protocol, one record each, no newline needed)
//     REGISTER:/psm_5729cba2:shared_memory    UNREGISTER:/psm_5729cba2:shared_memory    PROBE:0:noop
// and when its socket reaches EOF -- every process holding the program's end is gone, whether it
// returned from main, threw, or was SIGKILLed -- it unlinks what is still registered, warns on
// stderr as CPython does, and exits.
//
// How the tracker process starts: posix_spawn of /proc/self/exe with argv
// {argv0, "--multiprocessing-resource-tracker", "<fd>"}, recognised by an ELF constructor of this
// file ([[gnu::constructor]]; glibc passes argc/argv to it) before main() runs. Why not the other
// choices:
//  - fork() without exec would leave the tracker holding a copy-on-write image of the whole
//    program (a large heap stays allocated for the program's lifetime, and every page the program
//    writes afterwards gets copied) and every inherited fd (which would hide EOFs from peers).
//  - a marker in freeze_support (as the forkserver) needs the program to call freeze_support,
//    which a program that only uses fork and SharedMemory need not do; the constructor runs in any
//    program linked with this file, and before user code.
// The exec'd tracker is a clean, single-threaded process that holds only its socket (and
// stdin/stdout/stderr), ignores SIGINT/SIGTERM/SIGPIPE (a Ctrl-C of the program's process group
// must not kill the one process that cleans up after it), and may use the whole library.
//
// Difference from CPython: spawn and forkserver children do not inherit the tracker (only the
// fds of a Process's arguments cross to them); one that creates a segment starts a tracker of its
// own, which cleans up when that child and its own children are gone. A SharedMemory passed to
// such a child as an argument is registered in the parent's tracker only.
#include "resource_tracker.hpp"

#include <multiprocessing/logging.hpp>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "posix/fd.hpp"
#include "posix/process.hpp"
#include "posix/shm_named.hpp"
#include "posix/socket.hpp"
#include "process_impl.hpp"

namespace mp::detail::resource_tracker {

namespace {

constexpr std::size_t kMaxRecord = 4096;  // names are at most NAME_MAX (shm) or 108 (sockets)
constexpr auto kStartTimeout = std::chrono::seconds(30);  // an exec under a sanitizer may be slow

Bytes to_bytes(std::string_view s) {
  Bytes out(s.size());
  std::memcpy(out.data(), s.data(), s.size());
  return out;
}

// ---- the program's side ----

// Guarded by a mutex held across fork() (pthread_atfork), so that a forked child never finds it
// locked; the child keeps the socket: it shares its parent's tracker.
struct Client {
  std::mutex mutex;
  posix::UniqueFd socket;
  int pid = 0;
  bool pid_is_ours = false;  // the tracker is our child (a fork child's is its parent's)
  // What this process registered, to register again with a new tracker if the old one died.
  std::set<std::pair<std::string, std::string>> registered;
  bool warned = false;
};

Client& client() {
  static Client* c = [] {
    auto* created = new Client;
    posix::at_fork([] { client().mutex.lock(); }, [] { client().mutex.unlock(); },
                   [] {
                     client().pid_is_ours = false;
                     client().mutex.unlock();
                   });
    return created;
  }();
  return *c;
}

void forget_locked(Client& c) noexcept {
  c.socket.reset();
  if (c.pid > 0 && c.pid_is_ours) {
    try {
      posix::send_signal(c.pid, SIGKILL);  // a tracker that did not answer
      (void)posix::reap(c.pid);
    } catch (...) {
    }
  }
  c.pid = 0;
  c.pid_is_ours = false;
}

// Starts a tracker and waits for its "OK": a program whose /proc/self/exe is not this one (the
// library loaded into another program) fails here instead of silently tracking nothing.
void start_locked(Client& c) {
  auto [mine, theirs] = posix::seqpacket_pair();
  std::vector<std::string> argv{spawn_argv0(), kMarker, std::to_string(theirs.get())};
  const int pass[1] = {theirs.get()};
  c.pid = posix::spawn_process("/proc/self/exe", argv, pass);
  c.pid_is_ours = true;
  theirs.reset();
  c.socket = std::move(mine);
  bool ok = false;
  try {
    if (posix::wait_readable(c.socket.get(), posix::deadline_after(kStartTimeout))) {
      std::vector<posix::UniqueFd> fds;
      auto reply = posix::recv_with_fds(c.socket.get(), 16, fds, 0);
      ok = reply.size() == 2 && reply[0] == std::byte{'O'} && reply[1] == std::byte{'K'};
    }
  } catch (...) {
  }
  if (!ok) {
    forget_locked(c);
    throw std::runtime_error("the resource tracker process did not start");
  }
}

bool send_locked(Client& c, std::string_view command, std::string_view name, std::string_view type) {
  std::string record;
  record.reserve(command.size() + name.size() + type.size() + 2);
  record.append(command).append(":").append(name).append(":").append(type);
  if (record.size() > kMaxRecord) throw std::invalid_argument("name too long for the resource tracker");
  return posix::send_record(c.socket.get(), to_bytes(record));
}

void warn_once_locked(Client& c, const std::string& what) {
  if (c.warned) return;
  c.warned = true;
  get_logger().warning("resource_tracker: " + what + "; named resources of this process will not be cleaned up "
                       "if it is killed");
}

}  // namespace

void register_resource(const std::string& name, std::string_view type) noexcept {
  auto& c = client();
  std::lock_guard lock(c.mutex);
  try {
    c.registered.emplace(name, std::string(type));
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (!c.socket) {
        // A tracker that died (killed by someone) is restarted, and told everything again.
        if (c.pid > 0 && c.pid_is_ours) (void)posix::try_reap(c.pid);
        c.pid = 0;
        start_locked(c);
        bool all = true;
        for (const auto& [n, t] : c.registered) all = all && send_locked(c, "REGISTER", n, t);
        if (all) return;
        c.socket.reset();
        continue;
      }
      if (send_locked(c, "REGISTER", name, type)) return;
      c.socket.reset();  // the tracker is gone: start another
    }
    warn_once_locked(c, "the tracker process keeps dying");
  } catch (const std::exception& e) {
    try {
      warn_once_locked(c, e.what());
    } catch (...) {
    }
  }
}

void unregister_resource(const std::string& name, std::string_view type) noexcept {
  auto& c = client();
  std::lock_guard lock(c.mutex);
  try {
    c.registered.erase({name, std::string(type)});
    if (c.socket) (void)send_locked(c, "UNREGISTER", name, type);
  } catch (...) {
    // Unregistering is a courtesy: the tracker finds the name gone at shutdown and says nothing.
  }
}

int tracker_pid() noexcept {
  auto& c = client();
  std::lock_guard lock(c.mutex);
  return c.socket ? c.pid : 0;
}

namespace {

// ---- the tracker process ----

// Unlinks one resource; true when it still existed (a real leak).
bool cleanup(const std::string& type, const std::string& name) noexcept {
  if (type == kSharedMemory) return posix::try_shm_unlink_named(name);
  if (type == kSocket) return posix::unlink_path(name);
  return false;
}

void say(const std::string& line) noexcept {
  try {
    std::string text = line + "\n";
    posix::write_all(2, std::as_bytes(std::span(text.data(), text.size())));  // one write: lines never interleave
  } catch (...) {
  }
}

[[noreturn]] void tracker_main(int fd) {
  posix::ignore_signals({SIGINT, SIGTERM, SIGPIPE});
  posix::UniqueFd socket(fd);
  std::map<std::string, std::set<std::string>> cache;  // type -> names, as CPython's
  try {
    if (!posix::send_record(socket.get(), to_bytes("OK"))) posix::exit_immediately(0);
    for (;;) {
      std::vector<posix::UniqueFd> fds;
      auto rec = posix::recv_with_fds(socket.get(), kMaxRecord + 1, fds, 0);
      if (rec.empty()) break;  // EOF: every process of the program is gone
      std::string line(reinterpret_cast<const char*>(rec.data()), rec.size());
      while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
      // CMD:name:type; a name may hold ':' (a socket path), so split at the first and last.
      auto first = line.find(':'), last = line.rfind(':');
      if (first == std::string::npos || first == last) {
        say("resource_tracker: malformed record '" + line + "'");
        continue;
      }
      std::string command = line.substr(0, first), name = line.substr(first + 1, last - first - 1),
                  type = line.substr(last + 1);
      if (command == "PROBE") continue;
      if (type != kSharedMemory && type != kSocket) {
        say("resource_tracker: cannot register " + name + " for automatic cleanup: unknown resource type " + type);
        continue;
      }
      if (command == "REGISTER") {
        cache[type].insert(name);
      } else if (command == "UNREGISTER") {
        cache[type].erase(name);
      } else {
        say("resource_tracker: unrecognized command '" + command + "'");
      }
    }
  } catch (const std::exception& e) {
    say(std::string("resource_tracker: ") + e.what() + "; cleaning up now");
  }
  // Only what still existed counts as leaked: a name another process unlinked without telling
  // this tracker (a spawn child's unlink() reaches its own tracker) is no leak.
  for (const auto& [type, names] : cache) {
    std::vector<std::string> leaked;
    for (const auto& name : names)
      if (cleanup(type, name)) leaked.push_back(name);
    if (leaked.empty()) continue;
    std::string message = "resource_tracker: There appear to be " + std::to_string(leaked.size()) + " leaked " + type +
                          " objects to clean up at shutdown:";
    for (const auto& name : leaked) message += " " + name;
    say(message);
  }
  posix::exit_immediately(0);
}

// Runs before main() in every program linked with this file; does nothing unless this process is
// a tracker (see the design note at the top).
[[gnu::constructor(101)]] void tracker_entry(int argc, char** argv, char** /*envp*/) {
  if (argc != 3 || !argv || !argv[1] || !argv[2] || std::strcmp(argv[1], kMarker) != 0) return;
  char* end = nullptr;
  long fd = std::strtol(argv[2], &end, 10);
  if (end == argv[2] || *end != '\0' || fd < 0 || fd > 1 << 20) {
    std::fprintf(stderr, "mp: resource tracker: bad file descriptor argument '%s'\n", argv[2]);
    std::_Exit(1);
  }
  tracker_main(static_cast<int>(fd));
}

}  // namespace

}  // namespace mp::detail::resource_tracker
