// The check made before a fork start when the process runs other threads (the policy of
// mp::set_fork_with_threads), and the registry of library threads that do not count.
#pragma once

namespace mp::detail {

/// Called by the fork start method before fork(): counts the other threads (less the registered
/// library ones) and, per the policy, says nothing, logs a warning (the first time in this
/// process; debug records after that) or throws ForkWithThreadsError.
void check_fork_with_threads();

/// The number of this process's threads besides the caller and the registered library threads;
/// -1 when /proc cannot tell.
int other_thread_count();

/// Lets the next check warn again (tests).
void reset_fork_with_threads_warning() noexcept;

/// While alive, the calling thread does not count as "another thread" for the check: for a
/// library thread that never holds, at a moment another thread may fork, a lock that a forked
/// child would take (the pool's dispatcher, for one: its locks guard state no child touches, and
/// the logger's lock is held across fork by pthread_atfork). Construct it first thing in the
/// thread's body. Up to kMaxForkSafeThreads at once; more are simply counted.
class ForkSafeThread {
 public:
  ForkSafeThread() noexcept;
  ~ForkSafeThread();
  ForkSafeThread(const ForkSafeThread&) = delete;
  ForkSafeThread& operator=(const ForkSafeThread&) = delete;

 private:
  int slot_ = -1;
};

inline constexpr int kMaxForkSafeThreads = 64;

}  // namespace mp::detail
