// The shared-memory layouts and the core operations of Lock, RLock, Semaphore and
// BoundedSemaphore (Python: the _multiprocessing.SemLock type behind multiprocessing.synchronize),
// plus the robust mutex word that Condition and Barrier reuse.
//
// Every block starts with a BlockHeader (a magic and a type tag) that is checked when a block
// arrives from another process, so that a Lock's fd loaded as an Event is refused.
#pragma once

#include <multiprocessing/base.hpp>

#include <atomic>
#include <cstdint>
#include <memory>

#include "posix/fd.hpp"
#include "posix/futex.hpp"
#include "shared_block.hpp"

namespace mp::detail {

inline constexpr std::uint32_t kBlockMagic = 0x6b53706du;  // "mpSk"

enum class BlockType : std::uint32_t {
  lock = 1,
  rlock = 2,
  semaphore = 3,
  bounded_semaphore = 4,
  condition = 5,
  event = 6,
  barrier = 7,
};

struct BlockHeader {
  std::uint32_t magic;
  BlockType type;
};

/// Creates a zero-filled block for a T (which starts with a BlockHeader) and stamps the header.
template <class T>
std::shared_ptr<SharedBlock> create_block(BlockType type, const char* debug_name) {
  auto block = SharedBlock::create(sizeof(T), debug_name);
  auto* header = static_cast<BlockHeader*>(block->data());
  header->type = type;
  header->magic = kBlockMagic;
  return block;
}

/// Maps a block received as the fd at `index` of the current FdImport and checks its header.
/// std::invalid_argument when it is not a block of this type.
std::shared_ptr<SharedBlock> import_block(std::int32_t index, std::size_t size, BlockType type);

/// How long a waiter sleeps before it looks whether the holder (or a barrier party) is alive.
inline constexpr std::chrono::milliseconds kLivenessSlice{100};

// ---- the robust mutex word ----
//
// word: 0 when free; otherwise the holder's id (a pid, or for a thread-owned mutex a tid) in the
// low bits, plus kWaitersBit once someone sleeps on it (the classic three-state futex mutex of
// Drepper's "Futexes Are Tricky": the bit makes release() call FUTEX_WAKE only when needed).
// Because the word itself names the holder, a holder killed at any instant is identified.
// holder: (id << 40) | start time of that id, written right after the word is taken, so that a
// waiter can tell a dead holder from a new task that was given the same id. A holder killed
// between the two writes leaves a record of another id, and then only "is the id alive" is asked.
struct RobustMutex {
  static constexpr std::uint32_t kWaitersBit = 0x80000000u;
  static constexpr std::uint32_t kIdMask = 0x3fffffffu;  // Linux pids and tids are < 2^22

  std::atomic<std::uint32_t> word;
  std::uint32_t reserved;
  std::atomic<std::uint64_t> holder;
};

/// Who takes a RobustMutex: a process (Lock: any of its threads may release) or a thread.
struct MutexOwner {
  std::uint32_t id;
  std::uint64_t start_time;
  bool thread_level;

  static MutexOwner this_process() noexcept {
    return {posix::own_pid(), posix::own_process_start_time(), false};
  }
  static MutexOwner this_thread() noexcept { return {posix::own_tid(), posix::own_thread_start_time(), true}; }
};

inline bool robust_try_lock(RobustMutex& m, const MutexOwner& me) noexcept {
  std::uint32_t expected = 0;
  if (!m.word.compare_exchange_strong(expected, me.id, std::memory_order_acquire, std::memory_order_relaxed)) {
    return false;
  }
  m.holder.store((std::uint64_t{me.id} << 40) | (me.start_time & ((std::uint64_t{1} << 40) - 1)),
                 std::memory_order_relaxed);
  return true;
}

/// Takes the mutex, waiting until the deadline; false on timeout. A holder found dead is replaced
/// and a warning naming `what` is logged. Returns through `recovered` whether that happened.
bool robust_lock(RobustMutex& m, const MutexOwner& me, const posix::Deadline& deadline, const char* what,
                 bool* recovered = nullptr);

/// Takes the mutex at once if its holder is dead (logging a warning naming `what`); false when it
/// is free or its holder lives. For a look that must not wait behind a live holder.
bool robust_take_over_if_dead(RobustMutex& m, const MutexOwner& me, const char* what, bool* recovered = nullptr);

/// Frees the mutex and wakes one waiter when there are any. Returns the word as it was (0: it
/// was not held, and nothing was changed).
inline std::uint32_t robust_unlock(RobustMutex& m) noexcept;

/// The holder's id, 0 when free.
inline std::uint32_t robust_holder(const RobustMutex& m) noexcept {
  return m.word.load(std::memory_order_relaxed) & RobustMutex::kIdMask;
}

inline void robust_wake_one(RobustMutex& m) noexcept { posix::futex_wake(m.word, 1); }

inline std::uint32_t robust_unlock(RobustMutex& m) noexcept {
  std::uint32_t old = m.word.exchange(0, std::memory_order_release);
  if (old & RobustMutex::kWaitersBit) robust_wake_one(m);
  return old;
}

// ---- Lock and RLock ----

struct LockBlock {
  BlockHeader header;
  RobustMutex mutex;
  std::atomic<std::int32_t> count;  // RLock: the owner's recursion depth (only the owner writes it)
};

struct LockCore {
  std::shared_ptr<SharedBlock> block;
  LockBlock* shared;
  bool recursive;

  LockCore(std::shared_ptr<SharedBlock> b, bool is_recursive)
      : block(std::move(b)), shared(static_cast<LockBlock*>(block->data())), recursive(is_recursive) {}

  static std::shared_ptr<LockCore> create(bool recursive);
  static std::shared_ptr<LockCore> import(std::int32_t index, bool recursive);

  MutexOwner owner() const noexcept { return recursive ? MutexOwner::this_thread() : MutexOwner::this_process(); }

  bool acquire(bool may_block, Timeout timeout);
  void release();
  /// RLock: the calling thread owns it. Lock: this process holds it.
  bool held_by_caller() const noexcept;

  /// For Condition::wait(): releases every level (checked: std::logic_error when not held by
  /// the caller) and returns how many to restore.
  std::int32_t release_fully();
  /// Re-acquires (blocking) and restores the level.
  void restore(std::int32_t levels);
};

// ---- Semaphore and BoundedSemaphore ----

struct SemaphoreBlock {
  BlockHeader header;
  std::atomic<std::uint32_t> value;    // the futex word: the units available
  std::atomic<std::uint32_t> waiters;  // how many sleep on value (release() wakes only if any)
  std::int32_t max_value;              // BoundedSemaphore: the initial value; else INT_MAX
};

struct SemaphoreCore {
  std::shared_ptr<SharedBlock> block;
  SemaphoreBlock* shared;

  explicit SemaphoreCore(std::shared_ptr<SharedBlock> b)
      : block(std::move(b)), shared(static_cast<SemaphoreBlock*>(block->data())) {}

  bool acquire(bool may_block, Timeout timeout);
  void release();
};

}  // namespace mp::detail
