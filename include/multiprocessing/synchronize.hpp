// Synchronization primitives shared between processes (Python: multiprocessing.synchronize).
//
// Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event and Barrier live in shared memory (one
// anonymous memfd segment each) and block on futexes. An uncontended acquire/release is one atomic
// operation in user space: no system call. Every blocking call takes a Timeout (std::nullopt waits
// forever) measured against one steady_clock deadline.
//
// Each is a handle: copies refer to the same object. A handle crosses to a child as a Process
// argument under every start method (fork children inherit the mapping; spawn and forkserver
// children receive the segment's fd), or is captured by a lambda under fork. The object lives while
// any process holds a handle (or a mapping) to it.
//
// Robustness: a process (for RLock: a thread) that dies holding a Lock or RLock does not lock the
// others out. Waiters look at the holder every ~100 ms; once its death is seen (gone, or a zombie,
// also across pid reuse), one waiter takes the lock over and logs a warning on mp::get_logger().
// What the dead holder was doing under the lock is NOT undone: the data it guarded may be half
// updated, and the code that recovers must assume so. A Barrier party that dies while waiting
// breaks the barrier (BrokenBarrierError for the others). A Semaphore has no owner: units taken by
// a process that died are not given back (as with POSIX semaphores).
#pragma once

#include <multiprocessing/base.hpp>
#include <multiprocessing/reduction.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>

namespace mp {

namespace detail {
struct LockCore;
struct SemaphoreCore;
struct EventCore;
struct BarrierCore;
}  // namespace detail

/// A non-recursive lock (Python's multiprocessing.Lock, a semaphore of one): any thread of any
/// process may release it, but releasing it while it is not held is std::logic_error. A second
/// acquire() by the holder waits (deadlocks without a timeout), as in Python.
class Lock {
 public:
  /// A new, unlocked lock in a new shared segment. std::system_error when the system refuses.
  Lock();

  /// Blocks until the lock is acquired (block = true) or the timeout passes; true when acquired.
  /// block = false never waits (the timeout is ignored, as in Python). A holder found dead is
  /// replaced (see the header comment). std::logic_error on a moved-from handle.
  bool acquire(bool block = true, Timeout timeout = std::nullopt);
  /// Unlocks. std::logic_error when the lock is not held.
  void release();
  /// For std::lock_guard / std::unique_lock: acquire(), release(), acquire(false).
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return acquire(false); }

  /// Whether this process holds the lock (a plain Lock records the holding process, not thread).
  bool held_by_this_process() const;

  /// The codec's hooks: crosses to spawn/forkserver children as its segment's fd.
  template <class Archive>
  void save(Archive& ar) const {
    detail::save_fd_index(ar, fileno());
  }
  template <class Archive>
  void load(Archive& ar) {
    *this = from_imported_fd(detail::load_fd_index(ar));
  }

 private:
  friend class Condition;
  explicit Lock(std::shared_ptr<detail::LockCore> core) noexcept : core_(std::move(core)) {}
  int fileno() const;
  static Lock from_imported_fd(std::int32_t index);
  std::shared_ptr<detail::LockCore> core_;
};

/// A recursive lock (Python's multiprocessing.RLock): owned by one thread of one process, which may
/// acquire it again (each acquire needs its release). release() by a thread that does not own it,
/// or when it is not held, is std::logic_error.
class RLock {
 public:
  /// A new, unlocked recursive lock in a new shared segment. std::system_error when refused.
  RLock();

  /// As Lock::acquire(); the owner's acquire() nests and returns true at once.
  bool acquire(bool block = true, Timeout timeout = std::nullopt);
  /// Undoes one acquire(); the last one unlocks. std::logic_error when the calling thread does
  /// not own the lock.
  void release();
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return acquire(false); }

  /// Whether the calling thread owns the lock.
  bool is_owned() const;
  /// How many times the owner has acquired it (0 when the calling thread does not own it).
  int recursion_count() const;

  template <class Archive>
  void save(Archive& ar) const {
    detail::save_fd_index(ar, fileno());
  }
  template <class Archive>
  void load(Archive& ar) {
    *this = from_imported_fd(detail::load_fd_index(ar));
  }

 private:
  friend class Condition;
  explicit RLock(std::shared_ptr<detail::LockCore> core) noexcept : core_(std::move(core)) {}
  int fileno() const;
  static RLock from_imported_fd(std::int32_t index);
  std::shared_ptr<detail::LockCore> core_;
};

/// A counting semaphore (Python's multiprocessing.Semaphore). It has no owner: any process may
/// release, and units held by a process that died are not returned.
class Semaphore {
 public:
  /// std::invalid_argument when value < 0.
  explicit Semaphore(int value = 1);

  /// Takes one unit, waiting (block = true) up to timeout for one; true when taken.
  bool acquire(bool block = true, Timeout timeout = std::nullopt);
  /// Gives one unit back and wakes one waiter. std::overflow_error above INT_MAX units.
  void release();
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return acquire(false); }
  /// The units available now (a snapshot).
  int get_value() const;

  template <class Archive>
  void save(Archive& ar) const {
    const std::int32_t index = detail::export_fd(fileno());
    ar(index);
  }
  template <class Archive>
  void load(Archive& ar) {
    std::int32_t index = -1;
    ar(index);
    core_ = import_core(index, false);
  }

 protected:
  struct BoundedTag {};
  Semaphore(int value, BoundedTag);
  int fileno() const;
  static std::shared_ptr<detail::SemaphoreCore> import_core(std::int32_t index, bool bounded);
  std::shared_ptr<detail::SemaphoreCore> core_;
};

/// A Semaphore whose release() above the initial value is std::logic_error (Python's ValueError).
class BoundedSemaphore : public Semaphore {
 public:
  /// std::invalid_argument when value < 0.
  explicit BoundedSemaphore(int value = 1);

  template <class Archive>
  void save(Archive& ar) const {
    const std::int32_t index = detail::export_fd(fileno());
    ar(index);
  }
  template <class Archive>
  void load(Archive& ar) {
    std::int32_t index = -1;
    ar(index);
    core_ = import_core(index, true);
  }
};

/// A condition variable (Python's multiprocessing.Condition) over a Lock or an RLock.
/// wait() and notify() need the lock held by the caller: std::logic_error otherwise. For an RLock
/// that is exact (the calling thread must own it); a plain Lock records only the holding process,
/// so for it "held by any thread of this process" is what is checked.
class Condition {
 public:
  /// Over a new RLock.
  Condition();
  explicit Condition(Lock lock);
  explicit Condition(RLock lock);

  /// The underlying lock's acquire() / release().
  bool acquire(bool block = true, Timeout timeout = std::nullopt);
  void release();
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return acquire(false); }

  /// Releases the lock fully (an RLock: every level), waits for a notify() or the timeout, and
  /// re-acquires the lock (to the same level) before returning, even on timeout. True when
  /// notified, false on timeout. std::logic_error when the lock is not held by the caller.
  /// A waiter is woken only by a notify() issued after it began waiting.
  bool wait(Timeout timeout = std::nullopt);
  /// Waits until pred() is true or the timeout passes (one deadline for all waits); returns the
  /// last value of pred(). pred() runs with the lock held.
  template <class Pred>
  bool wait_for(Pred pred, Timeout timeout = std::nullopt);
  /// Wakes up to n of the processes/threads waiting, oldest first (a waiter whose process died is
  /// skipped). std::logic_error when the lock is not held by the caller.
  void notify(int n = 1);
  void notify_all();

  template <class Archive>
  void save(Archive& ar) const {
    std::int32_t lock_index = -1, cond_index = -1;
    bool recursive = false;
    save_fds(lock_index, cond_index, recursive);
    ar(recursive, lock_index, cond_index);
  }
  template <class Archive>
  void load(Archive& ar) {
    std::int32_t lock_index = -1, cond_index = -1;
    bool recursive = false;
    ar(recursive, lock_index, cond_index);
    *this = from_imported_fds(recursive, lock_index, cond_index);
  }

 private:
  struct Impl;
  explicit Condition(std::shared_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
  void save_fds(std::int32_t& lock_index, std::int32_t& cond_index, bool& recursive) const;
  static Condition from_imported_fds(bool recursive, std::int32_t lock_index, std::int32_t cond_index);
  std::shared_ptr<Impl> impl_;
};

template <class Pred>
bool Condition::wait_for(Pred pred, Timeout timeout) {
  // As Python's Condition.wait_for: one end time, the remaining time recomputed before each wait.
  std::optional<std::chrono::steady_clock::time_point> end;
  if (timeout) {
    end = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(*timeout);
  }
  bool result = pred();
  while (!result) {
    Timeout remaining;
    if (end) {
      remaining = Duration(*end - std::chrono::steady_clock::now());
      if (remaining->count() <= 0) break;
    }
    wait(remaining);
    result = pred();
  }
  return result;
}

/// A flag processes wait for (Python's multiprocessing.Event).
class Event {
 public:
  /// A new, clear event.
  Event();
  bool is_set() const;
  /// Sets the flag and wakes every waiter.
  void set();
  void clear();
  /// Waits until the flag is set or the timeout passes; returns the flag (false on timeout).
  bool wait(Timeout timeout = std::nullopt);

  template <class Archive>
  void save(Archive& ar) const {
    detail::save_fd_index(ar, fileno());
  }
  template <class Archive>
  void load(Archive& ar) {
    *this = from_imported_fd(detail::load_fd_index(ar));
  }

 private:
  explicit Event(std::shared_ptr<detail::EventCore> core) noexcept : core_(std::move(core)) {}
  int fileno() const;
  static Event from_imported_fd(std::int32_t index);
  std::shared_ptr<detail::EventCore> core_;
};

/// A barrier for a fixed number of parties (Python's multiprocessing.Barrier, threading.Barrier
/// without the action). A party that dies while waiting breaks it.
class Barrier {
 public:
  /// The largest number of parties (each waiting party has a slot in the shared segment).
  static constexpr int kMaxParties = 1024;

  /// An empty handle (every call throws std::logic_error); assign a real one to it. Exists so that
  /// a Barrier can be a member or be loaded by the codec.
  Barrier() noexcept = default;

  /// std::invalid_argument when parties < 1 or > kMaxParties, or the timeout is negative.
  /// timeout: the default for wait().
  explicit Barrier(int parties, Timeout timeout = std::nullopt);

  /// Waits until `parties` processes/threads have called wait(); returns this caller's arrival
  /// index, 0 .. parties-1. BrokenBarrierError when the barrier is broken, or is broken, aborted
  /// or reset while waiting, or when the timeout (this call's, else the barrier's) passes, which
  /// breaks it for everyone.
  int wait(Timeout timeout = std::nullopt);
  /// Back to the initial state; parties waiting now get BrokenBarrierError.
  void reset();
  /// Breaks the barrier: waiting and future calls to wait() get BrokenBarrierError until reset().
  void abort();
  int parties() const;
  /// How many parties wait now (0 while broken).
  int n_waiting() const;
  bool broken() const;

  template <class Archive>
  void save(Archive& ar) const {
    detail::save_fd_index(ar, fileno());
  }
  template <class Archive>
  void load(Archive& ar) {
    *this = from_imported_fd(detail::load_fd_index(ar));
  }

 private:
  explicit Barrier(std::shared_ptr<detail::BarrierCore> core) noexcept : core_(std::move(core)) {}
  int fileno() const;
  static Barrier from_imported_fd(std::int32_t index);
  std::shared_ptr<detail::BarrierCore> core_;
};

}  // namespace mp
