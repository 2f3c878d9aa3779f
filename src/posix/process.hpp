// Processes at the OS level: fork, posix_spawn, pidfds, wait statuses, signals, the code
// addresses that cross to spawned children "by name", and the few /proc and /sys reads the
// process module needs. Only src/posix/ talks to the kernel.
#pragma once

#include "posix/fd.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace mp::detail::posix {

/// fork(); 0 in the child, the pid in the parent. Throws std::system_error.
int fork_process();

/// posix_spawn of path with argv and the inherited environment. The fds in pass_fds stay open in
/// the child under the same numbers (everything else is O_CLOEXEC); the signal mask is emptied.
/// Returns the pid; throws std::system_error (ENOENT for a missing executable, ...).
int spawn_process(const std::string& path, const std::vector<std::string>& argv, std::span<const int> pass_fds);

/// pidfd_open(pid): an O_CLOEXEC fd that becomes readable when the process ends.
UniqueFd open_pidfd(int pid);

/// A connected pair of AF_UNIX SOCK_SEQPACKET sockets, both O_CLOEXEC.
std::pair<UniqueFd, UniqueFd> seqpacket_pair();

/// Sends one record on a seqpacket socket without SIGPIPE. False when the peer is gone
/// (EPIPE/ECONNRESET); other errors throw std::system_error.
bool send_record(int socket, std::span<const std::byte> data);

/// Reads and drops whatever is queued on a socket, without blocking. Closing a unix socket with
/// unread data makes the peer's next recv fail with ECONNRESET (before the records queued for
/// it), so the forkserver empties a dead child's socket before closing it.
void discard_pending(int socket) noexcept;

/// Python's exit code of a wait status: N for exit(N), -S for signal S.
int exitcode_from_status(int status);
/// waitpid(pid, WNOHANG): the exit code once the child ended, nullopt while it runs. A child
/// reaped elsewhere (ECHILD, e.g. SIGCHLD set to SIG_IGN) reports 255, as CPython's forkserver.
std::optional<int> try_reap(int pid);
/// waitpid(pid, 0) with EINTR retried.
int reap(int pid);
/// kill(pid, sig); a process that is already gone (ESRCH) is not an error.
void send_signal(int pid, int sig);

/// pthread_atfork: prepare runs before fork() in the forking thread, parent/child after it.
void at_fork(void (*prepare)(), void (*parent)(), void (*child)());

/// setenv(name, value) unless name is set already (the environment's own setting wins).
void set_env_default(const char* name, const char* value);

int current_pid() noexcept;
int parent_pid() noexcept;

/// fflush(nullptr) then _exit(code): leaves a forked child without running the parent's atexit
/// handlers and static destructors.
[[noreturn]] void exit_immediately(int code) noexcept;

/// n bytes from getrandom(2).
std::vector<std::byte> random_bytes(std::size_t n);

/// CPUs in this thread's affinity mask, limited by the cgroup v2 cpu.max quotas of this
/// process's cgroup and its ancestors (rounded up); at least 1.
int usable_cpu_count();

/// The process's argv as read from /proc/self/cmdline.
std::vector<std::string> read_cmdline();

/// A machine-code address as (module, offset from the module's load base), so that a child
/// running the same binary can find the same function whatever its ASLR layout. module is ""
/// for the main executable, else the path the dynamic linker loaded it from; build_id is the
/// module's NT_GNU_BUILD_ID note (empty when it has none).
struct CodeRef {
  std::string module;
  std::vector<std::byte> build_id;
  std::uint64_t offset = 0;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(module, build_id, offset);
  }
};
/// Throws std::invalid_argument when the address is not inside an executable segment of a
/// loaded module.
CodeRef code_ref_of(std::uintptr_t address);
/// The address of ref in this process. Throws std::runtime_error (saying why) when the module is
/// not loaded, is a different build, or the offset is not inside one of its executable segments.
std::uintptr_t resolve_code_ref(const CodeRef& ref);

/// The forkserver's signal plumbing: blocks SIGCHLD and returns a non-blocking signalfd for it;
/// SIGINT is ignored (a Ctrl-C reaches the user's processes, not the server).
UniqueFd forkserver_signals();
/// Reads whatever the signalfd holds (its content is not needed: waitpid finds the children).
void drain_signalfd(int fd);
/// In a child forked by the forkserver: unblocks every signal and restores SIGINT.
void reset_child_signals();
/// waitpid(-1, WNOHANG): {pid, exitcode} of one ended child, nullopt when none is left to reap.
std::optional<std::pair<int, int>> reap_any();

/// poll() on several fds for readability; returns the revents of each (retries EINTR, no
/// timeout).
std::vector<short> poll_readable(std::span<const int> fds);

}  // namespace mp::detail::posix
