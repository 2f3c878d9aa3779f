// Futexes shared between processes, and the identity and liveness of the processes and threads
// that hold them (Python has no counterpart: CPython's SemLock sits on POSIX semaphores, which
// cannot tell who holds them).
//
// The futex calls never use FUTEX_PRIVATE_FLAG: the words live in MAP_SHARED memory and waiters
// and wakers are in different processes. Timed waits take an absolute steady_clock deadline
// (FUTEX_WAIT_BITSET on CLOCK_MONOTONIC), so that a loop of waits keeps one deadline however
// often it is woken or interrupted.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "posix/fd.hpp"

namespace mp::detail::posix {

static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t) &&
                  std::atomic<std::uint32_t>::is_always_lock_free,
              "a futex word is a plain 32-bit word");

/// Sleeps while word == expected, until woken, the value differs, a signal arrives or the
/// deadline passes. Returns false only when the deadline has passed; true otherwise (the caller
/// re-checks its condition: wake-ups may be spurious).
bool futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected, const Deadline& deadline);
/// Wakes up to count waiters of word (INT_MAX: all).
void futex_wake(std::atomic<std::uint32_t>& word, int count) noexcept;

// The identity caches behind own_pid() ... (an uncontended acquire reads them inline).
namespace identity {
extern std::atomic<std::uint32_t> pid;
extern std::atomic<std::uint64_t> process_start;
extern thread_local std::uint32_t tid;
extern thread_local std::uint64_t thread_start;
std::uint32_t load_pid() noexcept;
std::uint32_t load_tid() noexcept;
std::uint64_t load_process_start() noexcept;
std::uint64_t load_thread_start() noexcept;
}  // namespace identity

/// This process's pid, cached (getpid() is a system call in glibc); refreshed in fork children.
inline std::uint32_t own_pid() noexcept {
  std::uint32_t pid = identity::pid.load(std::memory_order_relaxed);
  return pid != 0 ? pid : identity::load_pid();
}
/// The calling thread's id (gettid), cached per thread; refreshed in fork children.
inline std::uint32_t own_tid() noexcept { return identity::tid != 0 ? identity::tid : identity::load_tid(); }
/// The start time (/proc/<id>/stat field 22, clock ticks since boot) of this process and of the
/// calling thread, cached like the ids. 0 when /proc cannot be read (then read again each time).
inline std::uint64_t own_process_start_time() noexcept {
  std::uint64_t start = identity::process_start.load(std::memory_order_relaxed);
  return start != 0 ? start : identity::load_process_start();
}
inline std::uint64_t own_thread_start_time() noexcept {
  return identity::thread_start != 0 ? identity::thread_start : identity::load_thread_start();
}

/// Whether the task (a process when whole_process, else a thread) with this id has died: it is
/// gone, it is a zombie (a dead child not yet reaped), or start_time (when not 0) is not its start
/// time, i.e. the id now belongs to another task. A process whose main thread has exited while
/// other threads run is alive. When nothing can be learnt (no /proc), the task counts as alive.
bool task_is_dead(std::uint32_t id, std::uint64_t start_time, bool whole_process) noexcept;

/// The CPU the calling thread runs on now (sched_getcpu: read from the rseq area or the vDSO, no
/// system call), or -1 when unknown. A waiter spins only while the side it waits for can run at
/// the same time: on the same CPU, spinning only delays it.
int current_cpu() noexcept;

/// One CPU-friendly pause in a spin loop.
inline void spin_pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace mp::detail::posix
