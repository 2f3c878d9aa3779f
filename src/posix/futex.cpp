#include "posix/futex.hpp"

#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <system_error>

namespace mp::detail::posix {

namespace {

long futex(std::atomic<std::uint32_t>& word, int op, std::uint32_t value, const timespec* timeout,
           std::uint32_t value3) noexcept {
  return ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), op, value, timeout, nullptr, value3);
}

void forget_identity_after_fork() noexcept;

[[maybe_unused]] const bool g_registered = [] {
  ::pthread_atfork(nullptr, nullptr, forget_identity_after_fork);
  return true;
}();

struct TaskStat {
  char state = '?';
  long num_threads = 0;
  std::uint64_t start_time = 0;
};

enum class StatResult { ok, gone, unknown };

// Reads /proc/<id>/stat. The command name (field 2) may hold spaces and parentheses, so the
// fields are counted from the last ')'. /proc/<tid> exists for every thread, listed or not.
StatResult read_stat(std::uint32_t id, TaskStat& out) noexcept {
  char path[48];
  std::snprintf(path, sizeof path, "/proc/%u/stat", id);
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return (errno == ENOENT || errno == ESRCH) ? StatResult::gone : StatResult::unknown;
  char buf[1024];
  ssize_t n;
  do {
    n = ::read(fd, buf, sizeof buf - 1);
  } while (n < 0 && errno == EINTR);
  ::close(fd);
  // A task that dies between open() and read() reads as ESRCH or empty.
  if (n <= 0) return (n == 0 || errno == ESRCH) ? StatResult::gone : StatResult::unknown;
  buf[n] = '\0';
  char* p = std::strrchr(buf, ')');
  if (!p || p[1] != ' ') return StatResult::unknown;
  p += 2;
  // p is at field 3 (state); field 20 is num_threads, field 22 starttime.
  out.state = *p;
  int field = 3;
  while (*p && field < 22) {
    while (*p && *p != ' ') ++p;
    if (*p == ' ') ++p;
    ++field;
    if (field == 20) out.num_threads = std::strtol(p, nullptr, 10);
    if (field == 22) out.start_time = std::strtoull(p, nullptr, 10);
  }
  return field == 22 ? StatResult::ok : StatResult::unknown;
}

std::uint64_t start_time_of(std::uint32_t id) noexcept {
  TaskStat st;
  return read_stat(id, st) == StatResult::ok ? st.start_time : 0;
}

}  // namespace

// ---- identity caches ----
// getpid()/gettid() are system calls, and an uncontended acquire must make none: the ids are
// cached and the fork child handler clears the caches (the forking thread is the only one left in
// the child, so clearing its thread_local and the globals is enough).
namespace identity {
std::atomic<std::uint32_t> pid{0};
std::atomic<std::uint64_t> process_start{0};
thread_local std::uint32_t tid = 0;
thread_local std::uint64_t thread_start = 0;

std::uint32_t load_pid() noexcept {
  auto id = static_cast<std::uint32_t>(::getpid());
  pid.store(id, std::memory_order_relaxed);
  return id;
}
std::uint32_t load_tid() noexcept { return tid = static_cast<std::uint32_t>(::gettid()); }
std::uint64_t load_process_start() noexcept {
  std::uint64_t start = start_time_of(own_pid());
  process_start.store(start, std::memory_order_relaxed);
  return start;
}
std::uint64_t load_thread_start() noexcept { return thread_start = start_time_of(own_tid()); }
}  // namespace identity

namespace {
void forget_identity_after_fork() noexcept {
  identity::pid.store(0, std::memory_order_relaxed);
  identity::process_start.store(0, std::memory_order_relaxed);
  identity::tid = 0;
  identity::thread_start = 0;
}
}  // namespace

bool futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected, const Deadline& deadline) {
  timespec ts{};
  const timespec* timeout = nullptr;
  if (deadline) {
    // steady_clock is CLOCK_MONOTONIC on Linux, the clock FUTEX_WAIT_BITSET uses without
    // FUTEX_CLOCK_REALTIME; the timeout is absolute, so a retried wait keeps the same deadline.
    auto since_epoch = deadline->time_since_epoch();
    if (since_epoch.count() < 0) return false;
    auto secs = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
    ts.tv_sec = static_cast<time_t>(secs.count());
    ts.tv_nsec = static_cast<long>(std::chrono::duration_cast<std::chrono::nanoseconds>(since_epoch - secs).count());
    timeout = &ts;
  }
  long r = futex(word, FUTEX_WAIT_BITSET, expected, timeout, FUTEX_BITSET_MATCH_ANY);
  if (r == 0) return true;
  switch (errno) {
    case EAGAIN:  // the word had already changed
    case EINTR:   // a signal: the caller re-checks and waits again with the same deadline
      return true;
    case ETIMEDOUT:
      return false;
    default:
      throw std::system_error(errno, std::system_category(), "futex wait");
  }
}

void futex_wake(std::atomic<std::uint32_t>& word, int count) noexcept {
  futex(word, FUTEX_WAKE, static_cast<std::uint32_t>(count), nullptr, 0);
}

bool task_is_dead(std::uint32_t id, std::uint64_t start_time, bool whole_process) noexcept {
  if (id == 0 || id > static_cast<std::uint32_t>(INT_MAX)) return false;
  TaskStat st;
  switch (read_stat(id, st)) {
    case StatResult::gone:
      return true;
    case StatResult::unknown:
      // No /proc: kill(pid, 0) still tells a reaped process from a live one (not a zombie).
      return whole_process && ::kill(static_cast<pid_t>(id), 0) == -1 && errno == ESRCH;
    case StatResult::ok:
      break;
  }
  if (start_time != 0 && st.start_time != start_time) return true;  // the id was reused
  if (st.state == 'Z' || st.state == 'X') {
    // A process whose main thread called pthread_exit() shows 'Z' while its other threads run.
    return !(whole_process && st.num_threads > 1);
  }
  return false;
}

int current_cpu() noexcept { return ::sched_getcpu(); }

}  // namespace mp::detail::posix
