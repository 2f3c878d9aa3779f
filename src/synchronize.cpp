// The public handles of multiprocessing.synchronize, and the Condition, Event and Barrier cores.
// Lock, RLock and the semaphores sit on the cores of semlock.cpp.
#include <multiprocessing/synchronize.hpp>

#include <multiprocessing/logging.hpp>

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <stdexcept>
#include <string>

#include "posix/futex.hpp"
#include "semlock.hpp"
#include "shared_block.hpp"

namespace mp {

namespace detail {

namespace {

[[noreturn, gnu::cold, gnu::noinline]] void throw_empty(const char* type) {
  throw std::logic_error(std::string("mp: use of an empty ") + type + " handle");
}

template <class Core>
inline Core& checked(const std::shared_ptr<Core>& core, const char* type) {
  if (!core) [[unlikely]] throw_empty(type);
  return *core;
}

// Spins for about a microsecond (a pause costs ~40 ns on current x86) before an Event or
// Condition waiter sleeps: the other side of a hand-off that is running on another CPU answers
// within that, which saves the sleep and the wake-up latency. Kept short because when both share
// one CPU (or the machine is loaded) the answer cannot come while this one spins.
constexpr int kEventSpins = 24;

}  // namespace

// ---- Condition ----
//
// Each waiter takes a slot in the Condition's segment (under the lock) holding its thread id,
// start time and a ticket, and sleeps on the slot's own futex word. notify(n) marks the n oldest
// waiting slots notified and wakes exactly those, so a notify is never "used up" by a waiter that
// arrived later or that already timed out (a timed-out waiter cancels its slot by a CAS that fails
// once notified). A waiter whose process died is skipped by notify(n) (CPython's Condition, whose
// notify waits for each woken sleeper to answer, would hang on it).
inline constexpr int kMaxConditionWaiters = 1024;

enum SlotState : std::uint32_t { kSlotFree = 0, kSlotWaiting = 1, kSlotNotified = 2, kSlotClaimed = 3 };

struct ConditionSlot {
  std::atomic<std::uint32_t> state;
  std::uint32_t tid;
  std::uint64_t start_time;
  std::uint64_t ticket;
};

struct ConditionBlock {
  BlockHeader header;
  std::atomic<std::uint32_t> high_water;  // slots at or above it have never been used
  std::uint32_t reserved;
  std::atomic<std::uint64_t> next_ticket;
  ConditionSlot slots[kMaxConditionWaiters];
};

// ---- Event ----

struct EventBlock {
  BlockHeader header;
  std::atomic<std::uint32_t> flag;     // the futex word
  std::atomic<std::uint32_t> waiters;  // set() wakes only when someone sleeps
};

struct EventCore {
  std::shared_ptr<SharedBlock> block;
  EventBlock* shared;
  explicit EventCore(std::shared_ptr<SharedBlock> b) : block(std::move(b)), shared(static_cast<EventBlock*>(block->data())) {}
};

// ---- Barrier ----
//
// A generation counter is the futex word: the last party to arrive bumps it and wakes everyone.
// How a generation ended (released, or broken/aborted/reset) is kept as one bit per generation
// (modulo 64) for its sleepers to read. Waiting parties record their thread in the segment; each
// waiter, every slice, checks the party that arrived after it (cyclically), so that if any
// waiting party dies some live waiter sees it and breaks the barrier.
struct BarrierParty {
  std::uint32_t tid;
  std::uint32_t reserved;
  std::uint64_t start_time;
};

struct BarrierBlock {
  BlockHeader header;
  RobustMutex mutex;
  std::atomic<std::uint32_t> generation;
  std::int32_t parties;
  std::atomic<std::int32_t> count;   // parties waiting in the current generation
  std::atomic<std::uint32_t> broken;
  std::uint64_t broken_generations;  // bit g % 64: generation g ended broken
  double default_timeout;            // seconds; < 0: none
  BarrierParty waiting[Barrier::kMaxParties];
};

struct BarrierCore {
  std::shared_ptr<SharedBlock> block;
  BarrierBlock* shared;
  explicit BarrierCore(std::shared_ptr<SharedBlock> b) : block(std::move(b)), shared(static_cast<BarrierBlock*>(block->data())) {}

  // The internal mutex is held for a few instructions only; it is robust like a Lock.
  void lock() { robust_lock(shared->mutex, MutexOwner::this_thread(), std::nullopt, "Barrier"); }
  void unlock() noexcept { robust_unlock(shared->mutex); }

  // Under the mutex: ends generation g as broken (or as released) and wakes its sleepers.
  void end_generation(std::uint32_t g, bool as_broken) noexcept {
    const std::uint64_t bit = std::uint64_t{1} << (g % 64);
    if (as_broken) {
      shared->broken_generations |= bit;
    } else {
      shared->broken_generations &= ~bit;
    }
    shared->count.store(0, std::memory_order_relaxed);
    shared->generation.store(g + 1, std::memory_order_release);
  }
  void wake_all() noexcept { posix::futex_wake(shared->generation, INT_MAX); }
};

}  // namespace detail

using detail::checked;

// ================= Lock =================

Lock::Lock() : core_(detail::LockCore::create(false)) {}

bool Lock::acquire(bool block, Timeout timeout) {
  auto& core = checked(core_, "Lock");
  // The uncontended case inline here: one CAS, no system call.
  if (detail::robust_try_lock(core.shared->mutex, detail::MutexOwner::this_process())) return true;
  return core.acquire(block, timeout);
}

void Lock::release() {
  // One exchange; FUTEX_WAKE only when someone sleeps.
  if (detail::robust_unlock(checked(core_, "Lock").shared->mutex) == 0) {
    throw std::logic_error("mp: release() of a Lock that is not locked");
  }
}

bool Lock::held_by_this_process() const { return checked(core_, "Lock").held_by_caller(); }

int Lock::fileno() const { return checked(core_, "Lock").block->fd(); }

Lock Lock::from_imported_fd(std::int32_t index) { return Lock(detail::LockCore::import(index, false)); }

// ================= RLock =================

RLock::RLock() : core_(detail::LockCore::create(true)) {}

bool RLock::acquire(bool block, Timeout timeout) { return checked(core_, "RLock").acquire(block, timeout); }

void RLock::release() { checked(core_, "RLock").release(); }

bool RLock::is_owned() const { return checked(core_, "RLock").held_by_caller(); }

int RLock::recursion_count() const {
  auto& core = checked(core_, "RLock");
  return core.held_by_caller() ? core.shared->count.load(std::memory_order_relaxed) : 0;
}

int RLock::fileno() const { return checked(core_, "RLock").block->fd(); }

RLock RLock::from_imported_fd(std::int32_t index) { return RLock(detail::LockCore::import(index, true)); }

// ================= Semaphore / BoundedSemaphore =================

namespace {

std::shared_ptr<detail::SemaphoreCore> make_semaphore(int value, bool bounded) {
  if (value < 0) throw std::invalid_argument("mp: a semaphore's initial value must be >= 0");
  auto block = detail::create_block<detail::SemaphoreBlock>(
      bounded ? detail::BlockType::bounded_semaphore : detail::BlockType::semaphore, bounded ? "mp-bsem" : "mp-sem");
  auto core = std::make_shared<detail::SemaphoreCore>(std::move(block));
  core->shared->value.store(static_cast<std::uint32_t>(value), std::memory_order_relaxed);
  core->shared->max_value = bounded ? value : INT_MAX;
  return core;
}

}  // namespace

Semaphore::Semaphore(int value) : core_(make_semaphore(value, false)) {}

Semaphore::Semaphore(int value, BoundedTag) : core_(make_semaphore(value, true)) {}

BoundedSemaphore::BoundedSemaphore(int value) : Semaphore(value, BoundedTag{}) {}

bool Semaphore::acquire(bool block, Timeout timeout) { return checked(core_, "Semaphore").acquire(block, timeout); }

void Semaphore::release() { checked(core_, "Semaphore").release(); }

int Semaphore::get_value() const {
  return static_cast<int>(checked(core_, "Semaphore").shared->value.load(std::memory_order_relaxed));
}

int Semaphore::fileno() const { return checked(core_, "Semaphore").block->fd(); }

std::shared_ptr<detail::SemaphoreCore> Semaphore::import_core(std::int32_t index, bool bounded) {
  auto block = detail::import_block(index, sizeof(detail::SemaphoreBlock),
                                    bounded ? detail::BlockType::bounded_semaphore : detail::BlockType::semaphore);
  return std::make_shared<detail::SemaphoreCore>(std::move(block));
}

// ================= Condition =================

struct Condition::Impl {
  std::shared_ptr<detail::LockCore> lock;
  std::shared_ptr<detail::SharedBlock> block;
  detail::ConditionBlock* shared;

  Impl(std::shared_ptr<detail::LockCore> l, std::shared_ptr<detail::SharedBlock> b)
      : lock(std::move(l)), block(std::move(b)), shared(static_cast<detail::ConditionBlock*>(block->data())) {}

  static std::shared_ptr<Impl> create(std::shared_ptr<detail::LockCore> lock) {
    if (!lock) throw std::logic_error("mp: a Condition over an empty lock handle");
    auto block = detail::create_block<detail::ConditionBlock>(detail::BlockType::condition, "mp-condition");
    return std::make_shared<Impl>(std::move(lock), std::move(block));
  }

  // Under the lock: a free slot for the calling thread, slots of dead waiters reclaimed when full.
  int claim_slot() {
    for (int attempt = 0; attempt < 2; ++attempt) {
      for (int i = 0; i < detail::kMaxConditionWaiters; ++i) {
        auto& slot = shared->slots[i];
        std::uint32_t expected = detail::kSlotFree;
        if (!slot.state.compare_exchange_strong(expected, detail::kSlotClaimed, std::memory_order_acquire)) continue;
        slot.tid = detail::posix::own_tid();
        slot.start_time = detail::posix::own_thread_start_time();
        slot.ticket = shared->next_ticket.fetch_add(1, std::memory_order_relaxed);
        auto high = shared->high_water.load(std::memory_order_relaxed);
        if (static_cast<std::uint32_t>(i) >= high) shared->high_water.store(static_cast<std::uint32_t>(i) + 1, std::memory_order_relaxed);
        slot.state.store(detail::kSlotWaiting, std::memory_order_release);
        return i;
      }
      // Full: slots left by waiters that died (waiting or notified) are free again.
      for (auto& slot : shared->slots) {
        std::uint32_t s = slot.state.load(std::memory_order_acquire);
        if ((s == detail::kSlotWaiting || s == detail::kSlotNotified) &&
            detail::posix::task_is_dead(slot.tid, slot.start_time, false)) {
          slot.state.compare_exchange_strong(s, detail::kSlotFree);
        }
      }
    }
    throw std::runtime_error("mp: too many waiters on one Condition (at most 1024)");
  }

  bool wait(Timeout timeout) {
    if (!lock->held_by_caller()) throw std::logic_error("mp: cannot wait on a Condition whose lock is not held");
    const auto deadline = detail::posix::deadline_after(timeout);
    auto& slot = shared->slots[claim_slot()];
    const std::int32_t levels = lock->release_fully();
    bool notified = false;
    try {
      for (int i = 0; i < detail::kEventSpins && slot.state.load(std::memory_order_acquire) == detail::kSlotWaiting; ++i) {
        detail::posix::spin_pause();
      }
      for (;;) {
        if (slot.state.load(std::memory_order_acquire) == detail::kSlotNotified) {
          notified = true;
          break;
        }
        if (!detail::posix::futex_wait(slot.state, detail::kSlotWaiting, deadline)) {
          std::uint32_t expected = detail::kSlotWaiting;
          // Cancel; failing means a notify() came in at the last moment: take it.
          notified = !slot.state.compare_exchange_strong(expected, detail::kSlotFree, std::memory_order_acquire);
          if (!notified) break;
          notified = true;
          break;
        }
      }
      if (notified) slot.state.store(detail::kSlotFree, std::memory_order_release);
    } catch (...) {
      std::uint32_t expected = detail::kSlotWaiting;
      if (!slot.state.compare_exchange_strong(expected, detail::kSlotFree)) slot.state.store(detail::kSlotFree);
      lock->restore(levels);
      throw;
    }
    lock->restore(levels);
    return notified;
  }

  void notify(int n) {
    if (!lock->held_by_caller()) throw std::logic_error("mp: cannot notify on a Condition whose lock is not held");
    if (n <= 0) return;
    // Collect the waiting slots; under the lock no slot can become waiting meanwhile (only a
    // waiting one can be cancelled, which the CAS below notices).
    std::array<std::pair<std::uint64_t, int>, detail::kMaxConditionWaiters> waiting;
    std::size_t count = 0;
    const auto high = std::min<std::uint32_t>(shared->high_water.load(std::memory_order_relaxed), detail::kMaxConditionWaiters);
    for (std::uint32_t i = 0; i < high; ++i) {
      if (shared->slots[i].state.load(std::memory_order_acquire) == detail::kSlotWaiting) {
        waiting[count++] = {shared->slots[i].ticket, static_cast<int>(i)};
      }
    }
    // When everyone is to be woken, which of them are dead does not matter (their slots are
    // reclaimed when the Condition is full). Otherwise the oldest live ones are chosen.
    const bool choose = count > static_cast<std::size_t>(n);
    if (choose) std::sort(waiting.begin(), waiting.begin() + static_cast<std::ptrdiff_t>(count));
    int woken = 0;
    for (std::size_t k = 0; k < count && woken < n; ++k) {
      auto& slot = shared->slots[waiting[k].second];
      std::uint32_t expected = detail::kSlotWaiting;
      if (choose && detail::posix::task_is_dead(slot.tid, slot.start_time, false)) {
        slot.state.compare_exchange_strong(expected, detail::kSlotFree);
        continue;
      }
      if (slot.state.compare_exchange_strong(expected, detail::kSlotNotified, std::memory_order_release)) {
        detail::posix::futex_wake(slot.state, 1);
        ++woken;
      }
    }
  }
};

Condition::Condition() : impl_(Impl::create(detail::LockCore::create(true))) {}

Condition::Condition(Lock lock) : impl_(Impl::create(std::move(lock.core_))) {}

Condition::Condition(RLock lock) : impl_(Impl::create(std::move(lock.core_))) {}

bool Condition::acquire(bool block, Timeout timeout) { return checked(impl_, "Condition").lock->acquire(block, timeout); }

void Condition::release() { checked(impl_, "Condition").lock->release(); }

bool Condition::wait(Timeout timeout) { return checked(impl_, "Condition").wait(timeout); }

void Condition::notify(int n) { checked(impl_, "Condition").notify(n); }

void Condition::notify_all() { checked(impl_, "Condition").notify(INT_MAX); }

void Condition::save_fds(std::int32_t& lock_index, std::int32_t& cond_index, bool& recursive) const {
  auto& impl = checked(impl_, "Condition");
  recursive = impl.lock->recursive;
  lock_index = detail::export_fd(impl.lock->block->fd());
  cond_index = detail::export_fd(impl.block->fd());
}

Condition Condition::from_imported_fds(bool recursive, std::int32_t lock_index, std::int32_t cond_index) {
  auto lock = detail::LockCore::import(lock_index, recursive);
  auto block = detail::import_block(cond_index, sizeof(detail::ConditionBlock), detail::BlockType::condition);
  return Condition(std::make_shared<Impl>(std::move(lock), std::move(block)));
}

// ================= Event =================

Event::Event()
    : core_(std::make_shared<detail::EventCore>(
          detail::create_block<detail::EventBlock>(detail::BlockType::event, "mp-event"))) {}

bool Event::is_set() const { return checked(core_, "Event").shared->flag.load(std::memory_order_acquire) != 0; }

void Event::set() {
  auto& s = *checked(core_, "Event").shared;
  // Dekker pair with wait(): the flag and the waiters count are both seq_cst.
  if (s.flag.exchange(1, std::memory_order_seq_cst) == 0 && s.waiters.load(std::memory_order_seq_cst) > 0) {
    detail::posix::futex_wake(s.flag, INT_MAX);
  }
}

void Event::clear() { checked(core_, "Event").shared->flag.store(0, std::memory_order_seq_cst); }

bool Event::wait(Timeout timeout) {
  auto& s = *checked(core_, "Event").shared;
  if (s.flag.load(std::memory_order_acquire)) return true;
  const auto deadline = detail::posix::deadline_after(timeout);
  for (int i = 0; i < detail::kEventSpins; ++i) {
    detail::posix::spin_pause();
    if (s.flag.load(std::memory_order_acquire)) return true;
  }
  s.waiters.fetch_add(1, std::memory_order_seq_cst);
  struct Leave {
    std::atomic<std::uint32_t>& waiters;
    ~Leave() { waiters.fetch_sub(1, std::memory_order_seq_cst); }
  } leave{s.waiters};
  while (!s.flag.load(std::memory_order_seq_cst)) {
    if (!detail::posix::futex_wait(s.flag, 0, deadline)) return s.flag.load(std::memory_order_seq_cst) != 0;
  }
  return true;
}

int Event::fileno() const { return checked(core_, "Event").block->fd(); }

Event Event::from_imported_fd(std::int32_t index) {
  return Event(std::make_shared<detail::EventCore>(
      detail::import_block(index, sizeof(detail::EventBlock), detail::BlockType::event)));
}

// ================= Barrier =================

Barrier::Barrier(int parties, Timeout timeout) {
  if (parties < 1 || parties > kMaxParties) {
    throw std::invalid_argument("mp: a Barrier needs 1 to " + std::to_string(kMaxParties) + " parties");
  }
  if (timeout && !(timeout->count() >= 0)) throw std::invalid_argument("mp: a Barrier's timeout must be >= 0");
  auto core = std::make_shared<detail::BarrierCore>(
      detail::create_block<detail::BarrierBlock>(detail::BlockType::barrier, "mp-barrier"));
  core->shared->parties = parties;
  core->shared->default_timeout = timeout ? timeout->count() : -1.0;
  core_ = std::move(core);
}

int Barrier::wait(Timeout timeout) {
  auto& core = checked(core_, "Barrier");
  auto& s = *core.shared;
  if (!timeout && s.default_timeout >= 0) timeout = Duration(s.default_timeout);
  const auto deadline = detail::posix::deadline_after(timeout);
  const auto me = detail::MutexOwner::this_thread();

  core.lock();
  if (s.broken.load(std::memory_order_relaxed)) {
    core.unlock();
    throw BrokenBarrierError("mp: the Barrier is broken");
  }
  const std::uint32_t g = s.generation.load(std::memory_order_relaxed);
  const int index = s.count.load(std::memory_order_relaxed);
  s.waiting[index] = {me.id, 0, me.start_time};
  if (index + 1 == s.parties) {
    core.end_generation(g, false);
    core.unlock();
    core.wake_all();
    return index;
  }
  s.count.store(index + 1, std::memory_order_relaxed);
  core.unlock();

  // Under the mutex, after generation g ended: how.
  auto outcome = [&] {
    const bool was_broken = (s.broken_generations >> (g % 64)) & 1;
    core.unlock();
    if (was_broken) throw BrokenBarrierError("mp: the Barrier was broken, aborted or reset while waiting");
    return index;
  };
  for (;;) {
    const auto now = std::chrono::steady_clock::now();
    detail::posix::Deadline slice_end = now + detail::kLivenessSlice;
    if (deadline && *deadline < *slice_end) slice_end = deadline;
    const bool woken = detail::posix::futex_wait(s.generation, g, slice_end);
    if (s.generation.load(std::memory_order_acquire) != g) {
      core.lock();
      return outcome();
    }
    if (woken) continue;
    core.lock();
    if (s.generation.load(std::memory_order_relaxed) != g) return outcome();
    if (deadline && std::chrono::steady_clock::now() >= *deadline) {
      s.broken.store(1, std::memory_order_relaxed);
      core.end_generation(g, true);
      core.unlock();
      core.wake_all();
      throw BrokenBarrierError("mp: Barrier.wait() timed out (the barrier is now broken)");
    }
    // The party that arrived after this one (cyclically): if any waiting party has died, the
    // live waiter just before it in this cycle sees it.
    const int n = s.count.load(std::memory_order_relaxed);
    if (n >= 2) {
      const auto& other = s.waiting[(index + 1) % n];
      if (other.tid != me.id && detail::posix::task_is_dead(other.tid, other.start_time, false)) {
        s.broken.store(1, std::memory_order_relaxed);
        core.end_generation(g, true);
        core.unlock();
        core.wake_all();
        get_logger().warning("Barrier broken: a waiting party, thread " + std::to_string(other.tid) + ", died");
        throw BrokenBarrierError("mp: a party waiting at the Barrier died (the barrier is now broken)");
      }
    }
    core.unlock();
  }
}

void Barrier::reset() {
  auto& core = checked(core_, "Barrier");
  core.lock();
  const std::uint32_t g = core.shared->generation.load(std::memory_order_relaxed);
  const bool had_waiters = core.shared->count.load(std::memory_order_relaxed) > 0;
  if (had_waiters) core.end_generation(g, true);
  core.shared->broken.store(0, std::memory_order_relaxed);
  core.unlock();
  if (had_waiters) core.wake_all();
}

void Barrier::abort() {
  auto& core = checked(core_, "Barrier");
  core.lock();
  core.shared->broken.store(1, std::memory_order_relaxed);
  core.end_generation(core.shared->generation.load(std::memory_order_relaxed), true);
  core.unlock();
  core.wake_all();
}

int Barrier::parties() const { return checked(core_, "Barrier").shared->parties; }

int Barrier::n_waiting() const {
  auto& s = *checked(core_, "Barrier").shared;
  return s.broken.load(std::memory_order_relaxed) ? 0 : s.count.load(std::memory_order_relaxed);
}

bool Barrier::broken() const { return checked(core_, "Barrier").shared->broken.load(std::memory_order_relaxed) != 0; }

int Barrier::fileno() const { return checked(core_, "Barrier").block->fd(); }

Barrier Barrier::from_imported_fd(std::int32_t index) {
  return Barrier(std::make_shared<detail::BarrierCore>(
      detail::import_block(index, sizeof(detail::BarrierBlock), detail::BlockType::barrier)));
}

}  // namespace mp
