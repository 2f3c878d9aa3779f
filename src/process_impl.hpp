// Internals of mp::Process shared by process.cpp, spawn.cpp and the popen_* / forkserver files
// (Python: the private parts of process.py, spawn.py and popen_*.py).
#pragma once

#include <multiprocessing/process.hpp>

#include "logging_state.hpp"
#include "posix/fd.hpp"
#include "posix/process.hpp"

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace mp::detail {

/// A started child as seen by the process that started it (Python's Popen objects): one
/// implementation per start method.
class Popen {
 public:
  explicit Popen(int pid) : pid_(pid) {}
  virtual ~Popen() = default;
  Popen(const Popen&) = delete;
  Popen& operator=(const Popen&) = delete;

  int pid() const noexcept { return pid_; }
  virtual int sentinel() const noexcept = 0;
  /// Waits until the child has ended or the deadline passes (a past deadline: just poll);
  /// returns the exit code once known (and keeps it).
  virtual std::optional<int> wait(const posix::Deadline& deadline) = 0;
  std::optional<int> poll() { return wait(std::chrono::steady_clock::time_point{}); }
  /// Signals the child unless it is known to have ended (its pid may be reused after that).
  void send_signal(int sig);

 protected:
  int pid_;
  std::optional<int> returncode_;
};

/// A child with a pidfd sentinel that this process reaps with waitpid (fork and spawn).
class PopenPidfd : public Popen {
 public:
  PopenPidfd(int pid, posix::UniqueFd pidfd) : Popen(pid), pidfd_(std::move(pidfd)) {}
  int sentinel() const noexcept override { return pidfd_.get(); }
  std::optional<int> wait(const posix::Deadline& deadline) override;

 private:
  posix::UniqueFd pidfd_;
};

/// The per-process facts a child needs to become a Process of its own (Python's preparation
/// data plus the recipe).
struct Preparation {
  std::uint32_t magic = 0x3150504d;  // "MPP1": a child of another library version refuses it
  std::string name;
  std::vector<int> identity;
  Bytes authkey;
  bool daemon = false;
  int parent_pid = 0;
  std::string parent_name;
  LogConfig log;
  bool has_entry = false;        // false: a Process without target (run() does nothing)
  posix::CodeRef entry;          // the spawn_entry<F, A...> instantiation
  bool has_fn = false;
  posix::CodeRef fn;             // the target, when it is a function pointer
  Bytes args;                    // the codec's encoding of the argument tuple

  template <class Archive>
  void serialize(Archive& ar) {
    ar(magic, name, identity, authkey, daemon, parent_pid, parent_name, log, has_entry, entry, has_fn, fn, args);
  }
};

/// Everything start() hands to a start method.
struct StartRequest {
  Process& process;
  Process::Impl& impl;
  // spawn/forkserver only: the preparation and the handle fds found while encoding the args.
  Preparation prep;
  std::vector<int> handle_fds;
};

std::unique_ptr<Popen> popen_fork(StartRequest& request);            // popen_fork.cpp
std::unique_ptr<Popen> popen_spawn(StartRequest& request);           // popen_spawn_posix.cpp
std::unique_ptr<Popen> popen_forkserver(StartRequest& request);      // popen_forkserver.cpp

// ---- spawn.cpp: the preparation's wire format and the child side of spawn/forkserver ----

/// Sends the preparation and the fds (the parent's pidfd first, then the handles) on a
/// seqpacket socket to a child that runs spawn_child_main. False when the child is already gone.
bool send_preparation(int socket, const Preparation& prep, int parent_pidfd, std::span<const int> handle_fds);
/// The child side: reads the preparation, becomes that process, runs the recipe and exits.
[[noreturn]] void spawn_child_main(int socket);
/// The executable spawn runs, and argv[0] for it.
std::string spawn_executable();
std::string spawn_argv0();
/// Called by freeze_support with the program's argv.
void remember_argv(int argc, char** argv);
/// In a program started with "--multiprocessing-fork" whose freeze_support has not run yet:
/// std::logic_error telling to call it.
void check_freeze_support_ran();

inline constexpr const char* kSpawnMarker = "--multiprocessing-fork";
inline constexpr const char* kForkserverMarker = "--multiprocessing-forkserver";

// ---- forkserver.cpp ----

/// The server loop, run by freeze_support in the server process.
[[noreturn]] void forkserver_main(int control_socket);
/// Hands the child end of a fresh socketpair to this process's server (started on first use,
/// restarted once if it died), which forks a child reading its preparation from it and writes
/// the child's pid and later its exit code on it.
void forkserver_request(posix::UniqueFd child_end);
/// The server did not answer: forget it, so that the next request starts a new one.
void forkserver_lost() noexcept;
/// In a forked child: forget the parent's server (each process gets its own).
void forkserver_forget_after_fork() noexcept;

// ---- context.cpp ----

/// The default start method, fixed on first use (Python's DefaultContext.get_context()).
std::string actual_start_method();

// ---- process.cpp ----

/// Makes this (new) process the child described by prep: name, identity, authkey, parent,
/// fresh counters and children list. parent_sentinel: the parent's pidfd, if known.
void become_child(const Preparation& prep, posix::UniqueFd parent_sentinel);
/// Python's BaseProcess._bootstrap: logs, runs `body` catching what it throws (printed as a
/// traceback, exit code 1), then the exit function (daemonic children terminated, children
/// joined). Returns the exit code.
int bootstrap(const std::function<void()>& body);
/// Demangled name of a type.
std::string demangle(const std::type_info& type);

}  // namespace mp::detail

namespace mp {

struct Process::Impl {
  enum class Kind { child, current, parent };
  Kind kind = Kind::child;
  Process* owner = nullptr;  // kept up to date by moves; null for an orphaned running child
  std::string name;
  std::vector<int> identity;
  bool daemon = false;
  Bytes authkey;
  std::optional<std::string> method;  // nullopt: the default method at start()
  detail::ProcessTarget target;
  std::unique_ptr<detail::Popen> popen;
  int starter_pid = 0;  // the process that called start(): only it may join
  bool closed = false;
  // Kind::current / Kind::parent: the process's pid; Kind::parent: its pidfd (-1 when the
  // parent was already gone) and exit code once seen.
  int pid = 0;
  detail::posix::UniqueFd parent_sentinel;
  bool parent_ended = false;
};

}  // namespace mp
