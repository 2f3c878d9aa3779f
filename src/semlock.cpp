// Lock, RLock, Semaphore and BoundedSemaphore over futexes in shared memory (Python: the SemLock
// of Modules/_multiprocessing/semaphore.c), and the robust mutex word.
#include "semlock.hpp"

#include <multiprocessing/logging.hpp>
#include <multiprocessing/reduction.hpp>

#include <climits>
#include <stdexcept>
#include <string>

#include "posix/futex.hpp"

namespace mp::detail {

namespace {

constexpr std::uint64_t kStartMask = (std::uint64_t{1} << 40) - 1;
// Spins before sleeping: a holder usually releases within a few hundred nanoseconds, far less than
// the two context switches of a futex sleep and wake.
constexpr int kSpins = 40;

void record_holder(RobustMutex& m, const MutexOwner& me) noexcept {
  m.holder.store((std::uint64_t{me.id} << 40) | (me.start_time & kStartMask), std::memory_order_relaxed);
}

}  // namespace

// The word's holder has been seen not to release for a whole slice: if it is dead, take the
// mutex over by a CAS from exactly the word it left (so that of several waiters only one wins,
// and a holder that released meanwhile is not robbed).
bool robust_take_over_if_dead(RobustMutex& m, const MutexOwner& me, const char* what, bool* recovered) {
  std::uint32_t c = m.word.load(std::memory_order_relaxed);
  std::uint32_t id = c & RobustMutex::kIdMask;
  if (id == 0) return false;
  std::uint64_t record = m.holder.load(std::memory_order_relaxed);
  std::uint64_t start = (record >> 40) == id ? (record & kStartMask) : 0;
  if (!posix::task_is_dead(id, start, !me.thread_level)) return false;
  if (!m.word.compare_exchange_strong(c, me.id | RobustMutex::kWaitersBit, std::memory_order_acquire,
                                      std::memory_order_relaxed)) {
    return false;
  }
  record_holder(m, me);
  if (recovered) *recovered = true;
  get_logger().warning(std::string(what) + " recovered: its holder, " + (me.thread_level ? "thread " : "process ") +
                       std::to_string(id) + ", died");
  return true;
}

bool robust_lock(RobustMutex& m, const MutexOwner& me, const posix::Deadline& deadline, const char* what,
                 bool* recovered) {
  for (int i = 0; i < kSpins; ++i) {
    std::uint32_t c = m.word.load(std::memory_order_relaxed);
    if (c == 0 && robust_try_lock(m, me)) return true;
    if (c & RobustMutex::kWaitersBit) break;  // others sleep already: queue behind them
    posix::spin_pause();
  }
  // Once this thread has slept it takes the mutex with the waiters bit set, as it cannot know
  // whether others still sleep (Drepper's mutex3): at worst one needless FUTEX_WAKE.
  const std::uint32_t mine = me.id | RobustMutex::kWaitersBit;
  for (;;) {
    std::uint32_t c = m.word.load(std::memory_order_relaxed);
    if (c == 0) {
      if (m.word.compare_exchange_weak(c, mine, std::memory_order_acquire, std::memory_order_relaxed)) {
        record_holder(m, me);
        return true;
      }
      continue;
    }
    if (!(c & RobustMutex::kWaitersBit)) {
      if (!m.word.compare_exchange_weak(c, c | RobustMutex::kWaitersBit, std::memory_order_relaxed)) continue;
      c |= RobustMutex::kWaitersBit;
    }
    auto now = std::chrono::steady_clock::now();
    if (deadline && now >= *deadline) {
      // Before giving up, one look at the holder: a timed acquire must not fail on a dead one.
      return robust_take_over_if_dead(m, me, what, recovered);
    }
    posix::Deadline slice_end = now + kLivenessSlice;
    if (deadline && *deadline < *slice_end) slice_end = deadline;
    if (!posix::futex_wait(m.word, c, slice_end)) {
      // A whole slice without a release: the holder may have died.
      if (robust_take_over_if_dead(m, me, what, recovered)) return true;
    }
  }
}

std::shared_ptr<SharedBlock> import_block(std::int32_t index, std::size_t size, BlockType type) {
  if (index < 0) throw std::invalid_argument("mp: a synchronization handle with a bad fd index was received");
  posix::UniqueFd fd(import_fd(static_cast<std::size_t>(index)));
  auto block = SharedBlock::adopt(std::move(fd), size);
  const auto* header = static_cast<const BlockHeader*>(block->data());
  if (header->magic != kBlockMagic || header->type != type) {
    throw std::invalid_argument("mp: the shared object received is not of the expected type");
  }
  return block;
}

// ---- Lock and RLock ----

std::shared_ptr<LockCore> LockCore::create(bool recursive) {
  auto block = create_block<LockBlock>(recursive ? BlockType::rlock : BlockType::lock, recursive ? "mp-rlock" : "mp-lock");
  return std::make_shared<LockCore>(std::move(block), recursive);
}

std::shared_ptr<LockCore> LockCore::import(std::int32_t index, bool recursive) {
  auto block = import_block(index, sizeof(LockBlock), recursive ? BlockType::rlock : BlockType::lock);
  return std::make_shared<LockCore>(std::move(block), recursive);
}

bool LockCore::acquire(bool may_block, Timeout timeout) {
  RobustMutex& m = shared->mutex;
  const MutexOwner me = owner();
  if (recursive) {
    std::uint32_t c = m.word.load(std::memory_order_relaxed);
    if ((c & RobustMutex::kIdMask) == me.id) {
      // Ours, unless a dead thread of another process held it under the same tid (then the start
      // times differ): that is a recovery, not a nested acquire.
      std::uint64_t record = m.holder.load(std::memory_order_relaxed);
      // (This thread writes the record right after taking the word, so a record of another id
      // means that another task with this tid took it and died before writing its own.)
      if ((record >> 40) == me.id && (record & kStartMask) == (me.start_time & kStartMask)) {
        std::int32_t n = shared->count.load(std::memory_order_relaxed);
        if (n == INT_MAX) throw std::overflow_error("mp: RLock acquired too many times");
        shared->count.store(n + 1, std::memory_order_relaxed);
        return true;
      }
      if (m.word.compare_exchange_strong(c, me.id | RobustMutex::kWaitersBit, std::memory_order_acquire)) {
        record_holder(m, me);
        shared->count.store(1, std::memory_order_relaxed);
        get_logger().warning("RLock recovered: its holder, thread " + std::to_string(me.id) + ", died");
        return true;
      }
    }
  }
  bool taken = robust_try_lock(m, me);
  if (!taken) {
    if (!may_block) return false;
    taken = robust_lock(m, me, posix::deadline_after(timeout), recursive ? "RLock" : "Lock");
  }
  if (taken && recursive) shared->count.store(1, std::memory_order_relaxed);
  return taken;
}

void LockCore::release() {
  RobustMutex& m = shared->mutex;
  if (recursive) {
    if (robust_holder(m) != posix::own_tid()) {
      throw std::logic_error("mp: cannot release an RLock that the calling thread does not own");
    }
    std::int32_t n = shared->count.load(std::memory_order_relaxed);
    if (n > 1) {
      shared->count.store(n - 1, std::memory_order_relaxed);
      return;
    }
    shared->count.store(0, std::memory_order_relaxed);
    robust_unlock(m);
    return;
  }
  if (robust_unlock(m) == 0) throw std::logic_error("mp: release() of a Lock that is not locked");
}

bool LockCore::held_by_caller() const noexcept {
  return robust_holder(shared->mutex) == (recursive ? posix::own_tid() : posix::own_pid());
}

std::int32_t LockCore::release_fully() {
  if (!held_by_caller()) throw std::logic_error("mp: the Condition's lock is not held by the caller");
  std::int32_t levels = 1;
  if (recursive) {
    levels = shared->count.load(std::memory_order_relaxed);
    shared->count.store(0, std::memory_order_relaxed);
  }
  robust_unlock(shared->mutex);
  return levels;
}

void LockCore::restore(std::int32_t levels) {
  acquire(true, std::nullopt);
  if (recursive) shared->count.store(levels, std::memory_order_relaxed);
}

// ---- Semaphore ----

bool SemaphoreCore::acquire(bool may_block, Timeout timeout) {
  auto& value = shared->value;
  std::uint32_t v = value.load(std::memory_order_relaxed);
  while (v > 0) {
    if (value.compare_exchange_weak(v, v - 1, std::memory_order_acquire, std::memory_order_relaxed)) return true;
  }
  if (!may_block) return false;
  const posix::Deadline deadline = posix::deadline_after(timeout);
  // The waiters count and the value form a Dekker pair (both seq_cst): either release() sees this
  // waiter and wakes it, or this waiter sees the unit (and futex_wait refuses to sleep on a
  // value that is no longer 0).
  shared->waiters.fetch_add(1, std::memory_order_seq_cst);
  struct Leave {
    std::atomic<std::uint32_t>& waiters;
    ~Leave() { waiters.fetch_sub(1, std::memory_order_seq_cst); }
  } leave{shared->waiters};
  for (;;) {
    v = value.load(std::memory_order_seq_cst);
    while (v > 0) {
      if (value.compare_exchange_weak(v, v - 1, std::memory_order_seq_cst, std::memory_order_relaxed)) return true;
    }
    if (!posix::futex_wait(value, 0, deadline)) {
      v = value.load(std::memory_order_seq_cst);
      while (v > 0) {
        if (value.compare_exchange_weak(v, v - 1, std::memory_order_seq_cst, std::memory_order_relaxed)) return true;
      }
      return false;
    }
  }
}

void SemaphoreCore::release() {
  auto& value = shared->value;
  const auto max_value = static_cast<std::uint32_t>(shared->max_value);
  std::uint32_t v = value.load(std::memory_order_relaxed);
  do {
    if (v >= max_value) {
      if (shared->max_value == INT_MAX) throw std::overflow_error("mp: Semaphore released beyond INT_MAX");
      throw std::logic_error("mp: BoundedSemaphore released too many times");
    }
  } while (!value.compare_exchange_weak(v, v + 1, std::memory_order_seq_cst, std::memory_order_relaxed));
  if (shared->waiters.load(std::memory_order_seq_cst) > 0) posix::futex_wake(value, 1);
}

}  // namespace mp::detail
