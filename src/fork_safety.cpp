// Starting a fork child from a process that runs other threads (Python 3.12+ warns in
// os.fork(); loky refuses). The child is a copy of the whole memory but of the calling thread
// only: whatever lock another thread held at that instant (malloc's are repaired by glibc, the
// library's own by pthread_atfork, but a user's std::mutex or another library's are not) is held
// forever in the child, which deadlocks the first time it takes it.
#include <multiprocessing/context.hpp>
#include <multiprocessing/logging.hpp>

#include <array>
#include <atomic>
#include <string>
#include <vector>

#include "fork_safety.hpp"
#include "posix/process.hpp"
#include "posix/threads.hpp"

namespace mp {
namespace {

std::atomic<int> g_policy{static_cast<int>(ForkWithThreads::warn)};
std::atomic<bool> g_warned{false};
// Lock-free so that a fork never copies it half-updated under a lock: a tid per slot, 0 = free.
std::array<std::atomic<int>, detail::kMaxForkSafeThreads> g_safe_tids{};

bool is_registered(int tid) {
  for (auto& slot : g_safe_tids)
    if (slot.load(std::memory_order_acquire) == tid) return true;
#if defined(__SANITIZE_THREAD__)
  // ThreadSanitizer's runtime starts a background thread with the first pthread_create, every
  // signal blocked; it holds no lock a child takes (the runtime handles fork itself).
  if (detail::posix::blocks_every_signal(tid)) return true;
#endif
  return false;
}

}  // namespace

void set_fork_with_threads(ForkWithThreads policy) { g_policy.store(static_cast<int>(policy)); }

ForkWithThreads get_fork_with_threads() { return static_cast<ForkWithThreads>(g_policy.load()); }

namespace detail {

ForkSafeThread::ForkSafeThread() noexcept {
  // A forked child has none of these threads: forget them there, so that a thread of the child
  // that is later given a recycled tid is counted.
  static const bool forget_in_children = [] {
    try {
      posix::at_fork(nullptr, nullptr, [] {
        for (auto& slot : g_safe_tids) slot.store(0, std::memory_order_relaxed);
      });
      return true;
    } catch (...) {
      return false;  // ENOMEM: the child then keeps stale tids, which only ever silence a warning
    }
  }();
  (void)forget_in_children;
  int tid = posix::current_tid();
  for (int i = 0; i < kMaxForkSafeThreads; ++i) {
    int expected = 0;
    if (g_safe_tids[static_cast<std::size_t>(i)].compare_exchange_strong(expected, tid)) {
      slot_ = i;
      return;
    }
  }
}

ForkSafeThread::~ForkSafeThread() {
  if (slot_ >= 0) g_safe_tids[static_cast<std::size_t>(slot_)].store(0, std::memory_order_release);
}

int other_thread_count() {
  auto tids = posix::thread_ids();
  if (tids.empty()) return -1;
  int self = posix::current_tid();
  int others = 0;
  for (int tid : tids)
    if (tid != self && !is_registered(tid)) ++others;
  return others;
}

void reset_fork_with_threads_warning() noexcept { g_warned = false; }

void check_fork_with_threads() {
  auto policy = get_fork_with_threads();
  if (policy == ForkWithThreads::allow) return;
  auto& log = get_logger();
  // Counting costs a /proc read: skip it when a warning would go nowhere.
  if (policy == ForkWithThreads::warn && !log.is_enabled_for(levels::warning)) return;
  int others = other_thread_count();
  if (others <= 0) return;
  std::string what = "mp: this process (pid " + std::to_string(posix::current_pid()) + ") runs " +
                     std::to_string(others) + (others == 1 ? " other thread" : " other threads") +
                     " while starting a 'fork' child: the child copies the memory but only the calling thread, "
                     "so a lock any other thread holds right now stays locked in the child and may deadlock it; "
                     "use the 'forkserver' (or 'spawn') start method, or start the fork children before the threads";
  if (policy == ForkWithThreads::error) throw ForkWithThreadsError(what);
  if (!g_warned.exchange(true)) {
    log.warning(what);
  } else if (log.is_enabled_for(levels::debug)) {
    log.debug(what);
  }
}

}  // namespace detail
}  // namespace mp
