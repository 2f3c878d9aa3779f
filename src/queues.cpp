// Queue, SimpleQueue and JoinableQueue (Python: multiprocessing.queues) over a ring in shared
// memory; the design is described in include/multiprocessing/queues.hpp.
//
// The segment: a QueueBlock header, then the ring. The tail (producers) and the head (consumers)
// are byte positions that only grow (the ring offset is position % capacity); a record is
// [u32 length][u32 kind] plus the payload rounded up to 8 bytes, so that a record header never
// wraps. Producers serialize among themselves on one RobustMutex (semlock.hpp), consumers on
// another, so that a producer and a consumer never wait for each other; each side reads the
// other's position only when the bound it kept from its last reading says "full" or "empty", so
// that with one producer and one consumer a message costs few cache-line transfers.
//
// Why nothing breaks when a process dies at any instant (SIGKILL):
// - put writes the record beyond the tail, then publishes the tail: a half-written record is
//   never visible, and the next producer simply overwrites it.
// - get copies the record out, then publishes the head: a consumer killed before that leaves the
//   item for the next one (it was not delivered: no duplicate); killed after, the item is lost
//   (the one item the contract allows).
// - a side publishes its item count, then its position (qsize(), maxsize and task_done() use the
//   counts); the pair is first written to the side's private `pending` fields, so the next
//   locker, which replaces a dead holder (robust_lock), sets the count back in step with the
//   position when the holder died between the two stores.
//
// Large items (> kInlineMax): why a side socket rather than chunks through the ring. Chunks would
// tie a consumer to one producer's stream for the whole item and hold small items up behind a
// 1 GiB one. Instead put() copies the bytes into a memfd segment (outside any lock), then, under
// the producers' lock, sends its fd on the queue's SOCK_SEQPACKET socketpair tagged with a sequence
// id and commits a marker record with the same id. The consumer that pops the marker receives,
// still under the consumers' lock, the socket's next messages: ids below the marker's are strays
// left by a process killed between the two steps (their memfd is simply closed); the marker's own
// message is always there, since it was sent before the marker was committed. The markers in the
// ring are capped in number (kMaxOutOfLine, counted by id) and in bytes (kOutOfLineBytes, counted
// by a running total each marker carries), so the socket's buffer never fills, a send never
// blocks under the lock, and a stream of large items does not pile up memory.
//
// Segments are recycled (a fresh memfd per item cost its pages' allocation, zeroing and one page
// fault each on both sides: 0.04 of memcpy for 4 MiB items). Whoever holds a segment's fd owns
// the segment: a consumer that has decoded an item sends the fd back on the socketpair's other
// direction (the pool); a producer takes one from there (without waiting) before it creates a new
// one. Each process keeps its mappings of the segments it used (QueueCore's cache, keyed by inode
// and a random token stamped at the segment's start), so that a steady stream costs one memcpy in
// and one memcpy out, no mmap and no page fault (mappings are populated at once: MADV_POPULATE).
// A process killed while it holds a segment's fd loses that segment, nothing else: the kernel
// frees it with the last fd and mapping, and the other processes' caches let go of it as they
// evict. The pool is capped in bytes (pool_bytes, conservative: a kill between a count and its
// send leaves it high, which only recycles less), and segments over kRecycleMax are never kept.
// A memfd has no name: nothing is ever left in /dev/shm.
//
// Large items are paced (pace()): a blocking put waits, briefly, while another 4 MiB or so is in
// flight, so that only two or three segments go round and the consumer reads each while it is
// still in the shared cache (the whole 32 MiB cap in flight kept 8 or more going round: 0.2 of
// memcpy instead of 0.8). Waits around large items spin for about one item's copy before they
// sleep (large_item_spin_ns): on a virtual machine a futex wake cost the waker about as much as
// the 4 MiB copy.
#include <multiprocessing/detail/queue_core.hpp>
#include <multiprocessing/logging.hpp>
#include <multiprocessing/reduction.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstring>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "posix/fd.hpp"
#include "posix/futex.hpp"
#include "posix/segments.hpp"
#include "posix/shm.hpp"
#include "posix/socket.hpp"
#include "semlock.hpp"
#include "shared_block.hpp"

namespace mp::detail {

namespace {

constexpr BlockType kQueueBlockType = static_cast<BlockType>(0x5155);  // "QU"
constexpr std::uint64_t kRingBytes = std::uint64_t{1} << 20;
constexpr std::size_t kInlineMax = 256 * 1024;
constexpr std::uint64_t kMaxOutOfLine = 64;
constexpr std::uint64_t kOutOfLineBytes = std::uint64_t{32} << 20;  // a large put waits beyond this in flight
constexpr std::size_t kRecycleMax = std::size_t{16} << 20;         // larger segments are used once
constexpr std::size_t kSegmentGrain = std::size_t{64} << 10;       // capacities are multiples of this
constexpr std::size_t kSegmentHeader = 64;                          // a recycled segment: [token] then the item
constexpr std::uint64_t kPoolBytesMax = std::uint64_t{32} << 20;    // returned segments kept at most
constexpr std::size_t kCacheEntries = 16;                            // per process and queue
constexpr std::size_t kCacheBytes = std::size_t{96} << 20;
// Pacing (pace()): a blocking put of a recyclable large item waits, up to kPaceGrace, while the
// items in flight would pass kPaceBytes with it, so that consumers read what was just written
// while it is still in the shared cache.
constexpr std::uint64_t kPaceBytes = std::uint64_t{8} << 20;
constexpr std::chrono::microseconds kPaceGrace{1000};
// How long a wait around a large item spins before it sleeps: about one copy of the item (taken
// at 8 bytes a nanosecond), within [kSpinMaxNs, kLargeSpinMaxNs].
constexpr std::int64_t kLargeSpinMaxNs = 500'000;
constexpr std::uint64_t kSegmentTag = 0x746e656d676553ull;           // "Segment": a pool message
constexpr std::uint32_t kInline = 1;
constexpr std::uint32_t kOutOfLine = 2;
constexpr std::uint64_t kRecordHeader = 8;
// The adaptive wait's spin, in time rather than pauses (a pause lasts 3 to 150 cycles depending
// on the CPU): at most 40 us, longer than a hand-off to a process running on another CPU takes
// and far shorter than a futex round trip; at least 1 us, so that the budget can grow back.
constexpr std::int64_t kSpinMaxNs = 40'000;
constexpr std::int64_t kSpinMinNs = 1'000;
constexpr std::int64_t kSpinStartNs = 10'000;
constexpr int kSpinsPerLook = 8;
constexpr std::chrono::microseconds kSettleLook{3};    // qsize(): how long a side may seem stuck
constexpr std::chrono::microseconds kEaseOffMax{50};   // see ease_off()
constexpr int kEaseOffPauses = 64;                     // between two looks at the consumers' head

// One side of the ring: the producers' or the consumers'. Each side has its own lock, so that a
// producer and a consumer never wait for each other, and keeps its lock and private fields on
// lines the other side does not touch.
struct alignas(64) Side {
  RobustMutex mutex;
  // The commit in progress: the position and item count about to be published. A process that
  // dies between publishing pos and items leaves them here for the next locker to finish.
  // pending_valid is 0 while the two are being written: a holder killed between them (a window
  // of an instruction, wider under sanitizers) left a position and a count of different commits.
  std::uint64_t pending_pos;
  std::uint64_t pending_items;
  std::uint32_t pending_valid;
  std::uint64_t other_pos;  // the other side's position as last read (a bound: it only grows)
  std::uint64_t oob_id;     // producers: the next out-of-line id; consumers: the last taken + 1
  std::uint64_t oob_bytes;  // producers: out-of-line bytes committed in all; consumers: taken
};

struct alignas(64) Published {
  std::atomic<std::uint64_t> pos;    // tail (producers) / head (consumers), bytes, only grows
  std::atomic<std::uint64_t> items;  // items put / taken in all
};

struct alignas(64) QueueBlock {
  BlockHeader header;
  std::uint64_t capacity;
  std::uint64_t maxsize;
  Side put_side;
  Published put_pub;
  Side get_side;
  Published get_pub;
  // Futex words, 1 while a getter (putter) is about to sleep or sleeps. The first put (get) that
  // finds 1 clears it and wakes them all; the next ones find 0 and make no system call, even
  // while the woken are still on their way (a waiter count would cost a wake per item then).
  alignas(64) std::atomic<std::uint32_t> get_armed;
  alignas(64) std::atomic<std::uint32_t> put_armed;
  alignas(64) std::atomic<std::uint64_t> tasks_done;  // JoinableQueue: unfinished = items put - this
  std::atomic<std::uint32_t> done_seq;                // futex: bumped when unfinished reaches 0
  std::atomic<std::uint32_t> join_waiters;
  alignas(64) std::atomic<std::uint64_t> pool_bytes;  // capacity of the segments in the pool
  // The CPU (+ 1; 0: unknown) a producer committed its last large item on, and a consumer took
  // its last one on: a wait around large items spins only if the other side runs elsewhere.
  std::atomic<std::uint32_t> put_cpu;
  std::atomic<std::uint32_t> get_cpu;
};

struct OutOfLineMarker {
  std::uint64_t id;
  std::uint64_t size;
  std::uint64_t bytes_end;  // the producers' oob_bytes once this item is counted
};

// A large item's segment as mapped in this process (shared by the cache and the leases). Its
// identity is its inode (stable while the cache's mapping holds the file) and the random token
// written at its start when it was made: inode numbers of the kernel's internal mounts are 32-bit
// and wrap, and a mapping taken for another segment would corrupt items.
struct Segment {
  std::uint64_t inode;
  std::uint64_t token;
  posix::Mapping map;
  std::byte* item() const noexcept { return static_cast<std::byte*>(map.data()) + kSegmentHeader; }
};

std::uint64_t new_token() noexcept {
  static std::atomic<std::uint64_t> counter{std::random_device{}()};
  std::uint64_t z = counter.fetch_add(0x9e3779b97f4a7c15ull, std::memory_order_relaxed) ^
                    (std::uint64_t{posix::own_pid()} << 40);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;  // splitmix64
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

constexpr std::int64_t large_item_spin_ns(std::size_t size) {
  return std::clamp(static_cast<std::int64_t>(size / 8), kSpinMaxNs, kLargeSpinMaxNs);
}

// Whether the other side's last large item was handled on the CPU this thread runs on now.
bool beside(const std::atomic<std::uint32_t>& other_cpu) noexcept {
  const std::uint32_t other = other_cpu.load(std::memory_order_relaxed);
  return other != 0 && other == static_cast<std::uint32_t>(posix::current_cpu() + 1);
}

constexpr std::size_t round_up(std::size_t n, std::size_t grain) { return (n + grain - 1) / grain * grain; }

void saturating_sub(std::atomic<std::uint64_t>& counter, std::uint64_t n) noexcept {
  std::uint64_t cur = counter.load(std::memory_order_relaxed);
  while (!counter.compare_exchange_weak(cur, cur - std::min(cur, n), std::memory_order_relaxed)) {
  }
}

constexpr std::uint64_t record_size(std::uint64_t payload) { return kRecordHeader + ((payload + 7) & ~std::uint64_t{7}); }

thread_local Bytes t_put_buffer;
thread_local Bytes t_get_buffer;

}  // namespace

class QueueCore : public std::enable_shared_from_this<QueueCore> {
 public:
  QueueCore(std::shared_ptr<SharedBlock> block, posix::UniqueFd send_end, posix::UniqueFd recv_end)
      : block_(std::move(block)),
        shared_(static_cast<QueueBlock*>(block_->data())),
        ring_(static_cast<std::byte*>(block_->data()) + sizeof(QueueBlock)),
        send_end_(std::move(send_end)),
        recv_end_(std::move(recv_end)) {}
  ~QueueCore() {
    Cache* cache = cache_.load(std::memory_order_acquire);
    if (cache != nullptr && cache->pid == posix::own_pid()) delete cache;  // else a parent's: left
  }
  QueueCore(const QueueCore&) = delete;
  QueueCore& operator=(const QueueCore&) = delete;

  // The item is head then body (two parts, so that a container's elements are copied once).
  bool put(std::span<const std::byte> head, std::span<const std::byte> body, bool block, Timeout timeout);
  bool get(bool block, Timeout timeout, std::span<const std::byte>& view, std::shared_ptr<void>& keep);
  void task_done();
  void join();
  // Finishes the commit of a side's holder found dead, so that the counts are exact again
  // without waiting for the next put (get) to take that side's lock.
  void settle(Side& side, Published& pub);
  void settle() {
    settle(shared_->put_side, shared_->put_pub);
    settle(shared_->get_side, shared_->get_pub);
  }

  QueueBlock& shared() const noexcept { return *shared_; }
  int block_fd() const noexcept { return block_->fd(); }
  int send_fd() const noexcept { return send_end_.get(); }
  int recv_fd() const noexcept { return recv_end_.get(); }
  std::atomic<bool> closed{false};
  std::atomic<std::int64_t> put_spin_ns{kSpinStartNs};  // wait_loop's adaptive spin budgets, this process's
  std::atomic<std::int64_t> get_spin_ns{kSpinStartNs};
  std::atomic<std::int64_t> get_spin_max_ns{kSpinMaxNs};  // longer after a large item (see get)
  std::atomic<std::int64_t> pace_spin_ns{kLargeSpinMaxNs};  // pace()'s spin, this process's

  /// Hands a segment whose item was decoded back to the pool (or lets it go when the pool is full).
  void give_back(posix::UniqueFd fd, std::size_t capacity) noexcept;

 private:
  bool lock(Side& side, const Published& pub, const posix::Deadline& deadline);
  static void finish_dead_commit(Side& side, Published& pub) noexcept;
  static void unlock(Side& side) noexcept { robust_unlock(side.mutex); }
  // Publishes a side's new count and position (the position is the commit).
  static void publish(Side& side, Published& pub, std::uint64_t pos, std::uint64_t items) noexcept {
    std::atomic_ref(side.pending_valid).store(0, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);  // before the new pending values
    side.pending_pos = pos;
    side.pending_items = items;
    std::atomic_ref(side.pending_valid).store(1, std::memory_order_release);
    // The count first, so that an item that can be taken is already counted (task_done() checks
    // against it). With the armed word read after the unlock (wake_armed), a Dekker pair against a
    // waiter that arms and then reads the position (wait_loop): the store must be ordered before
    // that load. A seq_cst store costs a locked instruction on x86; the unlock's exchange, which
    // comes in between, is one already (and on AArch64 a store-release is never reordered with a
    // later load-acquire), so a release store suffices and a put or get costs two locked
    // instructions (lock, unlock) instead of three.
    pub.items.store(items, std::memory_order_release);
    pub.pos.store(pos, std::memory_order_release);
  }
  void copy_in(std::uint64_t pos, const void* src, std::size_t n) noexcept;
  void copy_out(std::uint64_t pos, void* dst, std::size_t n) const noexcept;
  // One attempt under the lock; Attempt::retry when the lock was not taken in time.
  enum class Attempt { done, no_room, timed_out };
  Attempt try_put(std::span<const std::byte> head, std::span<const std::byte> body, posix::UniqueFd* oob_fd,
                  const posix::Deadline& deadline);
  Attempt try_get(std::span<const std::byte>& view, std::shared_ptr<void>& keep, const posix::Deadline& deadline);
  bool receive_out_of_line(const OutOfLineMarker& marker, std::span<const std::byte>& view, std::shared_ptr<void>& keep);
  // A blocking put into a ring nearly full lets the consumers drain some first (a little).
  void ease_off(std::uint64_t need, const posix::Deadline& deadline) noexcept;
  // Waits (a little) until the out-of-line items in flight leave room for one of size bytes.
  void pace(std::size_t size, const posix::Deadline& deadline);
  // A segment of at least size bytes for put(), its fd in fd: from the pool, else a new one.
  // nullptr (fd set, not mapped) for an item too large to recycle.
  std::shared_ptr<Segment> acquire_segment(std::size_t size, posix::UniqueFd& fd);
  // This process's mapping of the recycled segment behind fd (cached by inode and token);
  // nullptr when fd is not one.
  std::shared_ptr<Segment> map_segment(int fd, const posix::FileInfo& info);
  // This process's mappings of segments. A fork child starts with a fresh cache: the parent's
  // mutex may have been held, at the fork, by a thread that does not exist in the child, and its
  // list may have been mid-change (the parent's copy is left as it is: its mappings stay).
  struct Cache {
    std::uint32_t pid;
    std::mutex mutex;
    std::vector<std::shared_ptr<Segment>> segments;  // least recently used first
    std::size_t bytes = 0;
    explicit Cache(std::uint32_t p) : pid(p) {}
  };
  Cache& cache();
  static std::shared_ptr<Segment> cache_insert(Cache& cache, std::shared_ptr<Segment> segment);
  // Called after publish() and the unlock (whose exchange orders the published position before
  // the load of the armed word): a Dekker pair with wait_loop's store of 1 and its next attempt.
  static void wake_armed(std::atomic<std::uint32_t>& armed) noexcept {
    if (armed.load(std::memory_order_seq_cst) != 0 && armed.exchange(0, std::memory_order_seq_cst) != 0) {
      posix::futex_wake(armed, INT_MAX);
    }
  }
  static void notify(std::atomic<std::uint32_t>& seq, std::atomic<std::uint32_t>& waiters) noexcept {
    if (waiters.load(std::memory_order_seq_cst) != 0) {
      seq.fetch_add(1, std::memory_order_seq_cst);
      posix::futex_wake(seq, INT_MAX);
    }
  }

  std::shared_ptr<SharedBlock> block_;
  QueueBlock* shared_;
  std::byte* ring_;
  posix::UniqueFd send_end_;
  posix::UniqueFd recv_end_;
  std::atomic<Cache*> cache_{nullptr};  // owned, but for a parent's copy found in a fork child
};

namespace {

// What a consumer holds while it decodes a large item from a recycled segment: the mapping and
// the segment's fd, handed back to the pool when the decoding is over.
struct Lease {
  std::shared_ptr<QueueCore> core;
  std::shared_ptr<Segment> segment;
  posix::UniqueFd fd;
  std::size_t capacity;
  Lease(std::shared_ptr<QueueCore> c, std::shared_ptr<Segment> s, posix::UniqueFd f, std::size_t cap)
      : core(std::move(c)), segment(std::move(s)), fd(std::move(f)), capacity(cap) {}
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease() { core->give_back(std::move(fd), capacity); }
};

// The adaptive wait shared by put and get: attempt; on "no room" spin a little re-attempting,
// then arm the futex word and sleep on it until it is cleared or the deadline passes. Arming
// precedes the attempt that decides to sleep, and the other side clears the word (and wakes)
// after its change: so a change is never missed (the futex refuses to sleep on a cleared word).
//
// The spin is adaptive (per process and direction, as glibc's adaptive mutexes), in time: a wait
// that succeeds while spinning keeps a budget of at least twice what it took (up to kSpinMaxNs);
// a spin that ends in a sleep halves it, down to kSpinMinNs. The floor matters: the budget used to
// fall to zero after a few sleeps and then never grew back (only a successful spin grows it), so
// a ping-pong paid a futex round trip per message for good once the machine had been busy for a
// moment. When the other side runs on another CPU, items arrive within the spin and nobody
// sleeps; when it is not on a CPU (more runnable tasks than CPUs), spinning only delays it, and
// the budget soon shrinks to the floor. Tried and dropped: a growth rule on "near misses" (a sleep
// that ended soon; on a loaded machine the other side often got to run only because this one
// slept) and sched_yield() while spinning (a yielding task waits behind every other runnable one:
// 1.9 us instead of 0.5 us per round trip on a quiet machine, no better on a loaded one).
template <class Attempt, class Ready>
bool wait_loop(Attempt attempt, Ready ready, std::atomic<std::uint32_t>& armed, std::atomic<std::int64_t>& spin_ns,
               bool block, const posix::Deadline& deadline, std::int64_t spin_max_ns = kSpinMaxNs) {
  using R = decltype(attempt());
  using Clock = std::chrono::steady_clock;
  R r = attempt();
  if (r == R::done) return true;
  if (r == R::timed_out || !block) return false;
  const std::int64_t budget = spin_ns.load(std::memory_order_relaxed);
  const Clock::time_point start = Clock::now();
  auto elapsed_ns = [&start](Clock::time_point now) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(now - start).count();
  };
  for (;;) {
    // The other side is looked at every few pauses only: each look pulls its cache line over,
    // which stalls that side's next publish; a burst of items then travels in one go.
    for (int i = 0; i < kSpinsPerLook; ++i) posix::spin_pause();
    const Clock::time_point now = Clock::now();
    const std::int64_t waited = elapsed_ns(now);
    if (ready()) {
      r = attempt();
      if (r == R::done) {
        if (2 * waited > budget) spin_ns.store(std::min(spin_max_ns, 2 * waited), std::memory_order_relaxed);
        return true;
      }
      if (r == R::timed_out) return false;
    }
    if (waited >= budget || (deadline && now >= *deadline)) break;
  }
  const auto adapt_after_sleep = [&] { spin_ns.store(std::max(kSpinMinNs, budget / 2), std::memory_order_relaxed); };
  for (;;) {
    // Armed before the attempt that decides to sleep: a change published after that attempt
    // finds the word armed and wakes this waiter (the futex refuses to sleep on a cleared word).
    armed.store(1, std::memory_order_seq_cst);
    r = attempt();
    if (r == R::done) {
      adapt_after_sleep();
      return true;
    }
    if (r == R::timed_out) return false;
    if (deadline && Clock::now() >= *deadline) return false;
    // A slice bounds the sleep so that a waiter also notices a change made by a process that died
    // before it could wake anyone (killed right after a commit).
    posix::Deadline slice = Clock::now() + kLivenessSlice;
    if (deadline && *deadline < *slice) slice = deadline;
    posix::futex_wait(armed, 1, slice);
  }
}

}  // namespace

bool QueueCore::lock(Side& side, const Published& pub, const posix::Deadline& deadline) {
  const MutexOwner me = MutexOwner::this_process();
  if (robust_try_lock(side.mutex, me)) return true;
  bool recovered = false;
  if (!robust_lock(side.mutex, me, deadline, "Queue", &recovered)) return false;
  if (recovered) finish_dead_commit(side, const_cast<Published&>(pub));
  return true;
}

void QueueCore::finish_dead_commit(Side& side, Published& pub) noexcept {
  // The dead holder may have published its count and not its position: the count follows the
  // position (the commit), whichever of the two stores it died between. Pending values being
  // written mean it died before publishing anything: the published pair is consistent.
  if (std::atomic_ref(side.pending_valid).load(std::memory_order_acquire) == 0) return;
  const bool committed = pub.pos.load(std::memory_order_relaxed) == side.pending_pos;
  pub.items.store(committed ? side.pending_items : side.pending_items - 1, std::memory_order_release);
}

void QueueCore::settle(Side& side, Published& pub) {
  const std::uint32_t holder = robust_holder(side.mutex);
  if (holder == 0) return;
  // Reading /proc for the holder's liveness costs tens of microseconds, and a side's lock is
  // often held at the instant of a look while items flow (qsize() or empty() polled while
  // producers run): a live side shows itself first by changing its lock word or its position
  // within a short look; only a holder that seems stuck is looked up.
  const std::uint64_t pos = pub.pos.load(std::memory_order_relaxed);
  const auto until = std::chrono::steady_clock::now() + kSettleLook;
  do {
    for (int i = 0; i < kSpinsPerLook; ++i) posix::spin_pause();
    if (robust_holder(side.mutex) != holder || pub.pos.load(std::memory_order_relaxed) != pos) return;
  } while (std::chrono::steady_clock::now() < until);
  if (!robust_take_over_if_dead(side.mutex, MutexOwner::this_process(), "Queue")) return;
  finish_dead_commit(side, pub);
  unlock(side);
}

void QueueCore::copy_in(std::uint64_t pos, const void* src, std::size_t n) noexcept {
  if (n == 0) return;  // src may be null then (an empty item), which memcpy does not allow
  const std::uint64_t at = pos % shared_->capacity;
  const std::size_t first = static_cast<std::size_t>(std::min<std::uint64_t>(n, shared_->capacity - at));
  std::memcpy(ring_ + at, src, first);
  if (first < n) std::memcpy(ring_, static_cast<const std::byte*>(src) + first, n - first);
}

void QueueCore::copy_out(std::uint64_t pos, void* dst, std::size_t n) const noexcept {
  if (n == 0) return;
  const std::uint64_t at = pos % shared_->capacity;
  const std::size_t first = static_cast<std::size_t>(std::min<std::uint64_t>(n, shared_->capacity - at));
  std::memcpy(dst, ring_ + at, first);
  if (first < n) std::memcpy(static_cast<std::byte*>(dst) + first, ring_, n - first);
}

QueueCore::Attempt QueueCore::try_put(std::span<const std::byte> head, std::span<const std::byte> body,
                                      posix::UniqueFd* oob_fd, const posix::Deadline& deadline) {
  QueueBlock& q = *shared_;
  Side& side = q.put_side;
  if (!lock(side, q.put_pub, deadline)) return Attempt::timed_out;
  const std::uint64_t tail = q.put_pub.pos.load(std::memory_order_relaxed);
  const std::uint64_t items = q.put_pub.items.load(std::memory_order_relaxed);
  const std::uint64_t size = head.size() + body.size();
  const std::uint64_t payload = oob_fd ? sizeof(OutOfLineMarker) : size;
  const std::uint64_t need = record_size(payload);
  // The consumers' head is read only when the bound kept from the last reading says "no room".
  if (q.capacity - (tail - side.other_pos) < need) {  // stored atomically: ease_off() reads it without the lock
    std::atomic_ref(side.other_pos).store(q.get_pub.pos.load(std::memory_order_seq_cst), std::memory_order_relaxed);
  }
  bool room = q.capacity - (tail - side.other_pos) >= need;
  if (room && q.maxsize != 0) room = items - q.get_pub.items.load(std::memory_order_acquire) < q.maxsize;
  if (room && oob_fd) {
    room = side.oob_id - std::atomic_ref(q.get_side.oob_id).load(std::memory_order_relaxed) < kMaxOutOfLine &&
           side.oob_bytes - std::atomic_ref(q.get_side.oob_bytes).load(std::memory_order_relaxed) < kOutOfLineBytes;
    // The counts run ahead of the consumers' for good when a producer died between counting its
    // item and committing it; an empty ring has nothing in flight whatever they say.
    if (!room) room = q.get_pub.pos.load(std::memory_order_seq_cst) == tail;
  }
  if (!room) {
    unlock(side);
    return Attempt::no_room;
  }
  std::uint32_t header[2] = {static_cast<std::uint32_t>(payload), oob_fd ? kOutOfLine : kInline};
  if (oob_fd) {
    // Stored atomically: pace() reads it without the lock.
    std::atomic_ref(side.oob_bytes).store(side.oob_bytes + size, std::memory_order_relaxed);
    OutOfLineMarker marker{side.oob_id++, size, side.oob_bytes};
    try {
      const int fds[1] = {oob_fd->get()};
      posix::send_with_fds(send_end_.get(), std::as_bytes(std::span(&marker, 1)), fds);
    } catch (...) {
      unlock(side);
      throw;
    }
    copy_in(tail + kRecordHeader, &marker, sizeof marker);
    q.put_cpu.store(static_cast<std::uint32_t>(posix::current_cpu() + 1), std::memory_order_relaxed);
  } else {
    copy_in(tail + kRecordHeader, head.data(), head.size());
    copy_in(tail + kRecordHeader + head.size(), body.data(), body.size());
  }
  copy_in(tail, header, sizeof header);
  publish(side, q.put_pub, tail + need, items + 1);
  unlock(side);
  wake_armed(q.get_armed);
  return Attempt::done;
}

QueueCore::Cache& QueueCore::cache() {
  Cache* current = cache_.load(std::memory_order_acquire);
  const std::uint32_t pid = posix::own_pid();
  if (current != nullptr && current->pid == pid) return *current;
  auto fresh = std::make_unique<Cache>(pid);
  // Two threads of a new child may race here: one cache wins, the other thread uses it.
  if (cache_.compare_exchange_strong(current, fresh.get(), std::memory_order_acq_rel)) return *fresh.release();
  return *current;
}

std::shared_ptr<Segment> QueueCore::cache_insert(Cache& cache, std::shared_ptr<Segment> segment) {
  auto& list = cache.segments;
  list.push_back(segment);
  cache.bytes += segment->map.size();
  // The least recently used go first; a mapping still leased lives on until its lease ends.
  while (list.size() > 1 && (list.size() > kCacheEntries || cache.bytes > kCacheBytes)) {
    cache.bytes -= list.front()->map.size();
    list.erase(list.begin());
  }
  return segment;
}

std::shared_ptr<Segment> QueueCore::map_segment(int fd, const posix::FileInfo& info) {
  std::uint64_t token = 0;
  if (info.size < kSegmentHeader || !posix::read_at(fd, &token, sizeof token, 0)) return nullptr;
  Cache& cache = this->cache();
  std::lock_guard guard(cache.mutex);
  auto& list = cache.segments;
  for (auto it = list.begin(); it != list.end(); ++it) {
    if ((*it)->inode != info.id || (*it)->token != token) continue;
    auto found = *it;
    list.erase(it);
    cache.bytes -= found->map.size();
    if (found->map.size() == info.size) return cache_insert(cache, std::move(found));
    break;  // resized by someone: mapped again below
  }
  auto segment = std::make_shared<Segment>(Segment{info.id, token, posix::Mapping(fd, info.size)});
  posix::populate(segment->map.data(), segment->map.size());
  return cache_insert(cache, std::move(segment));
}

std::shared_ptr<Segment> QueueCore::acquire_segment(std::size_t size, posix::UniqueFd& fd) {
  if (size > kRecycleMax) {
    fd = posix::memfd(size, "mp-queue-item");
    return nullptr;
  }
  // A few looks into the pool: a segment too small for this item is let go (a stream of items of
  // one size soon has only segments of that size).
  for (int tries = 0; tries < 4; ++tries) {
    std::uint64_t tag = 0;
    std::size_t got = 0;
    posix::UniqueFd back;
    if (!posix::try_recv_with_fd(send_end_.get(), std::as_writable_bytes(std::span(&tag, 1)), got, back)) break;
    if (!back || got != sizeof tag || tag != kSegmentTag) continue;
    const posix::FileInfo info = posix::file_info(back.get());
    saturating_sub(shared_->pool_bytes, info.size);
    if (info.size < size + kSegmentHeader) continue;
    if (auto segment = map_segment(back.get(), info)) {
      fd = std::move(back);
      return segment;
    }
  }
  const std::size_t capacity = round_up(size + kSegmentHeader, kSegmentGrain);
  fd = posix::memfd(capacity, "mp-queue-item");
  auto segment = std::make_shared<Segment>(
      Segment{posix::file_info(fd.get()).id, new_token(), posix::Mapping(fd.get(), capacity)});
  posix::populate(segment->map.data(), capacity);
  std::memcpy(segment->map.data(), &segment->token, sizeof segment->token);
  Cache& cache = this->cache();
  std::lock_guard guard(cache.mutex);
  return cache_insert(cache, std::move(segment));
}

void QueueCore::give_back(posix::UniqueFd fd, std::size_t capacity) noexcept {
  if (!fd || capacity > kRecycleMax + kSegmentHeader + kSegmentGrain) return;
  std::atomic<std::uint64_t>& pool = shared_->pool_bytes;
  std::uint64_t cur = pool.load(std::memory_order_relaxed);
  do {
    if (cur + capacity > kPoolBytesMax) return;  // enough kept: this one is let go
  } while (!pool.compare_exchange_weak(cur, cur + capacity, std::memory_order_relaxed));
  const std::uint64_t tag = kSegmentTag;
  if (!posix::try_send_with_fd(recv_end_.get(), std::as_bytes(std::span(&tag, 1)), fd.get())) {
    saturating_sub(pool, capacity);
  }
}

// Why a producer eases off: when consumers are slower, the ring stays nearly full, and a producer
// that takes each record's worth of room as it is freed reads the consumers' head on every put.
// That pulls the line the consumers write on every get, whose next locked instruction (the
// unlock) then waits for the line to come back: the consumer, already the slower side, paid a
// cross-CPU transfer per item (the lock's compare-exchange held 85% of its samples). Instead
// the producer waits, looking at the head about once a microsecond, until a quarter of the ring
// is free (or kEaseOffMax passes: then it goes on with the room there is); its bound then holds
// for thousands of puts. Nothing is armed: consumers make no system call for it.
void QueueCore::ease_off(std::uint64_t need, const posix::Deadline& deadline) noexcept {
  QueueBlock& q = *shared_;
  const std::uint64_t tail = q.put_pub.pos.load(std::memory_order_relaxed);
  const auto free_after = [&](std::uint64_t head) { return q.capacity - std::min(q.capacity, tail - std::min(tail, head)); };
  if (free_after(std::atomic_ref(q.put_side.other_pos).load(std::memory_order_relaxed)) >= need) return;
  const std::uint64_t first_head = q.get_pub.pos.load(std::memory_order_relaxed);
  if (free_after(first_head) >= q.capacity / 4) return;
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  for (;;) {
    for (int i = 0; i < kEaseOffPauses; ++i) posix::spin_pause();
    const Clock::time_point now = Clock::now();
    const std::uint64_t head = q.get_pub.pos.load(std::memory_order_relaxed);
    if (free_after(head) >= q.capacity / 4) return;
    // No consumer moved during the first look: none is running (one shares this CPU, or waits
    // for one), and spinning would only keep it from running.
    if (head == first_head) return;
    if (now - start >= kEaseOffMax || (deadline && now >= *deadline)) return;
  }
}

// Why large items are paced: a producer that runs ahead by the whole cap (32 MiB of 4 MiB items)
// keeps 8 or more segments going round, more than the shared cache holds with the items it copies
// from and to, so each segment has left the cache before the consumer reads it: measured on a
// 32 MiB L3, two processes copying 4 MiB through 2 or 3 segments reached 0.7-0.9 of one memcpy's
// bandwidth, through 8 segments 0.4, through 12 0.3. Only a blocking put waits, and for
// kPaceGrace at most: a slow or dead consumer lets the producer go on as before (up to the cap).
void QueueCore::pace(std::size_t size, const posix::Deadline& deadline) {
  QueueBlock& q = *shared_;
  const auto near = [&] {
    const std::uint64_t in_flight = std::atomic_ref(q.put_side.oob_bytes).load(std::memory_order_relaxed) -
                                    std::atomic_ref(q.get_side.oob_bytes).load(std::memory_order_relaxed);
    // An empty ring has nothing in flight whatever the counts say (a producer that died between
    // counting and committing leaves them apart for good).
    return in_flight == 0 || in_flight + size <= kPaceBytes ||
           q.get_pub.pos.load(std::memory_order_relaxed) == q.put_pub.pos.load(std::memory_order_relaxed);
  };
  if (near()) return;
  posix::Deadline until = std::chrono::steady_clock::now() + kPaceGrace;
  if (deadline && *deadline < *until) until = deadline;
  enum class Paced { done, no_room, timed_out };
  // The wait lasts about one consumer's copy of an item: spun rather than slept through, so that
  // the consumer that makes room need not wake this producer (see try_get). A wait that outlasted
  // such a spin (a consumer busy with its items) halves the next spin; one that fit restores it.
  // On the consumer's CPU nothing is spun: that would only keep it from running.
  const std::int64_t full = large_item_spin_ns(size);
  const std::int64_t spin = beside(q.get_cpu) ? kSpinMinNs : std::min(full, pace_spin_ns.load(std::memory_order_relaxed));
  std::atomic<std::int64_t> budget{spin};
  const auto start = std::chrono::steady_clock::now();
  (void)wait_loop([&] { return near() ? Paced::done : Paced::no_room; }, near, q.put_armed, budget, true, until, spin);
  const auto waited = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start);
  pace_spin_ns.store(waited.count() < full ? full : std::max(kSpinMinNs, spin / 2), std::memory_order_relaxed);
}

bool QueueCore::put(std::span<const std::byte> head, std::span<const std::byte> body, bool block, Timeout timeout) {
  if (closed.load(std::memory_order_relaxed)) throw std::logic_error("mp: put() on a Queue closed in this process");
  const posix::Deadline deadline = timeout ? posix::deadline_after(timeout) : posix::Deadline();
  posix::UniqueFd oob;
  std::shared_ptr<Segment> segment;
  const std::size_t size = head.size() + body.size();
  if (size > kInlineMax) {
    // Copied out of line before any lock is taken: only the fd's hand-off happens under it.
    if (block && size <= kRecycleMax) pace(size, deadline);
    segment = acquire_segment(size, oob);
    if (segment) {
      std::byte* to = segment->item();
      if (!head.empty()) std::memcpy(to, head.data(), head.size());  // an empty span's data may be null
      if (!body.empty()) std::memcpy(to + head.size(), body.data(), body.size());
    } else {
      // Too large to recycle: write() rather than a mapping fills the new pages without a fault
      // per page.
      posix::write_all(oob.get(), head);
      posix::write_all(oob.get(), body);
    }
  }
  posix::UniqueFd* oob_ptr = oob ? &oob : nullptr;
  QueueBlock& q = *shared_;
  if (block) ease_off(record_size(oob_ptr ? sizeof(OutOfLineMarker) : size), deadline);
  const bool done = wait_loop([&] { return try_put(head, body, oob_ptr, deadline); },
                              [&] {
                                return q.put_pub.pos.load(std::memory_order_relaxed) -
                                           q.get_pub.pos.load(std::memory_order_relaxed) <
                                       q.capacity / 2;
                              },
                              q.put_armed, put_spin_ns, block, deadline);
  // Not sent (no room in time): the segment goes back to the pool rather than to waste.
  if (!done && segment) give_back(std::move(oob), segment->map.size());
  return done;
}

bool QueueCore::receive_out_of_line(const OutOfLineMarker& marker, std::span<const std::byte>& view,
                                    std::shared_ptr<void>& keep) {
  for (;;) {
    if (!posix::wait_readable(recv_end_.get(), std::chrono::steady_clock::now())) return false;
    std::vector<posix::UniqueFd> fds;
    auto data = posix::recv_with_fds(recv_end_.get(), sizeof(OutOfLineMarker), fds, 1);
    OutOfLineMarker got{};
    if (data.size() != sizeof got || fds.size() != 1) return false;
    std::memcpy(&got, data.data(), sizeof got);
    if (got.id < marker.id) continue;  // a stray of a producer or consumer that died
    const posix::FileInfo info = posix::file_info(fds[0].get());
    if (got.id != marker.id || got.size != marker.size || info.size < marker.size) return false;
    const auto size = static_cast<std::size_t>(marker.size);
    if (size <= kRecycleMax) {  // a recycled segment (put() decides by the same rule)
      auto segment = info.size >= size + kSegmentHeader ? map_segment(fds[0].get(), info) : nullptr;
      if (!segment) return false;
      view = std::span<const std::byte>(segment->item(), size);
      keep = std::make_shared<Lease>(shared_from_this(), std::move(segment), std::move(fds[0]), info.size);
    } else {
      auto map = std::make_shared<posix::Mapping>(fds[0].get(), size);
      posix::populate(map->data(), map->size());
      view = std::span<const std::byte>(static_cast<const std::byte*>(map->data()), size);
      keep = std::move(map);
    }
    return true;
  }
}

QueueCore::Attempt QueueCore::try_get(std::span<const std::byte>& view, std::shared_ptr<void>& keep,
                                      const posix::Deadline& deadline) {
  QueueBlock& q = *shared_;
  Side& side = q.get_side;
  // Nothing to take, seen without the lock (the common case of a consumer that keeps up). The
  // producers' position is read only when the consumers' bound says "empty": it changes with
  // every put, and reading it on every get pulled its line over once per item, which also
  // stalled the producer's next publish.
  const std::uint64_t seen_head = q.get_pub.pos.load(std::memory_order_relaxed);
  if (std::atomic_ref(side.other_pos).load(std::memory_order_relaxed) == seen_head &&
      q.put_pub.pos.load(std::memory_order_acquire) == seen_head) {
    return Attempt::no_room;
  }
  if (!lock(side, q.get_pub, deadline)) return Attempt::timed_out;
  for (;;) {
    const std::uint64_t head = q.get_pub.pos.load(std::memory_order_relaxed);
    const std::uint64_t taken = q.get_pub.items.load(std::memory_order_relaxed);
    if (head == side.other_pos) {  // stored atomically: read without the lock above
      std::atomic_ref(side.other_pos).store(q.put_pub.pos.load(std::memory_order_seq_cst), std::memory_order_relaxed);
    }
    const std::uint64_t tail = side.other_pos;
    if (head == tail) {
      unlock(side);
      return Attempt::no_room;
    }
    std::uint32_t header[2];
    copy_out(head, header, sizeof header);
    const std::uint64_t size = record_size(header[0]);
    if (header[1] == kInline && size <= tail - head) {
      Bytes& buffer = t_get_buffer;
      buffer.resize(header[0]);
      copy_out(head + kRecordHeader, buffer.data(), header[0]);
      publish(side, q.get_pub, head + size, taken + 1);
      unlock(side);
      wake_armed(q.put_armed);
      view = std::span<const std::byte>(buffer);
      return Attempt::done;
    }
    if (header[1] == kOutOfLine && header[0] == sizeof(OutOfLineMarker) && size <= tail - head) {
      OutOfLineMarker marker{};
      copy_out(head + kRecordHeader, &marker, sizeof marker);
      // The marker is taken before its message is received: a consumer killed in between leaves
      // a stray message (skipped by id), never a marker whose message is gone.
      publish(side, q.get_pub, head + size, taken + 1);
      std::atomic_ref(side.oob_id).store(marker.id + 1, std::memory_order_relaxed);
      std::atomic_ref(side.oob_bytes).store(marker.bytes_end, std::memory_order_relaxed);
      bool ok = false;
      try {
        ok = receive_out_of_line(marker, view, keep);
      } catch (...) {
        unlock(side);
        wake_armed(q.put_armed);
        throw;
      }
      if (!ok) {
        get_logger().error("Queue: an out-of-line item was lost (its sender or a receiver died)");
        continue;
      }
      unlock(side);
      wake_armed(q.put_armed);
      return Attempt::done;
    }
    // Not a record (committed records never look so): the ring is emptied rather than read out
    // of bounds.
    get_logger().error("Queue: the ring was found damaged; its items are dropped");
    publish(side, q.get_pub, tail, q.put_pub.items.load(std::memory_order_acquire));
  }
}

bool QueueCore::get(bool block, Timeout timeout, std::span<const std::byte>& view, std::shared_ptr<void>& keep) {
  const posix::Deadline deadline = timeout ? posix::deadline_after(timeout) : posix::Deadline();
  QueueBlock& q = *shared_;
  const bool got = wait_loop([&] { return try_get(view, keep, deadline); },
                             [&] {
                               return q.put_pub.pos.load(std::memory_order_relaxed) !=
                                      q.get_pub.pos.load(std::memory_order_relaxed);
                             },
                             q.get_armed, get_spin_ns, block, deadline, get_spin_max_ns.load(std::memory_order_relaxed));
  if (got && keep) {
    // After a large item the next one is likely on its way, its copy taking about as long as
    // this one's: the next get may spin that long before it sleeps. A sleeping consumer costs
    // the producer a futex wake per item, which on a virtual machine took 85 us (longer than the
    // 4 MiB copy itself: the woken task preempted the waker).
    // Unless the producer runs on this CPU: then spinning only keeps it from running.
    q.get_cpu.store(static_cast<std::uint32_t>(posix::current_cpu() + 1), std::memory_order_relaxed);
    const bool apart = !beside(q.put_cpu);
    const std::int64_t spin = apart ? large_item_spin_ns(view.size()) : kSpinMaxNs;
    get_spin_max_ns.store(spin, std::memory_order_relaxed);
    const std::int64_t budget = get_spin_ns.load(std::memory_order_relaxed);
    if (apart ? budget < spin : budget > spin) get_spin_ns.store(spin, std::memory_order_relaxed);
  } else if (got && get_spin_max_ns.load(std::memory_order_relaxed) != kSpinMaxNs) {
    get_spin_max_ns.store(kSpinMaxNs, std::memory_order_relaxed);
  }
  return got;
}

void QueueCore::task_done() {
  QueueBlock& q = *shared_;
  std::uint64_t n = q.tasks_done.load(std::memory_order_relaxed);
  do {
    if (n >= q.put_pub.items.load(std::memory_order_acquire)) throw std::logic_error("mp: task_done() called too many times");
  } while (!q.tasks_done.compare_exchange_weak(n, n + 1, std::memory_order_seq_cst, std::memory_order_relaxed));
  if (n + 1 == q.put_pub.items.load(std::memory_order_seq_cst)) notify(q.done_seq, q.join_waiters);
}

void QueueCore::join() {
  QueueBlock& q = *shared_;
  for (;;) {
    q.join_waiters.fetch_add(1, std::memory_order_seq_cst);
    const std::uint32_t seen = q.done_seq.load(std::memory_order_seq_cst);
    const bool done = q.tasks_done.load(std::memory_order_seq_cst) >= q.put_pub.items.load(std::memory_order_seq_cst);
    if (!done) posix::futex_wait(q.done_seq, seen, std::chrono::steady_clock::now() + kLivenessSlice);
    q.join_waiters.fetch_sub(1, std::memory_order_seq_cst);
    if (done) return;
  }
}

// ---- the free functions of queue_core.hpp ----

std::shared_ptr<QueueCore> queue_create(std::size_t maxsize) {
  auto block = SharedBlock::create(sizeof(QueueBlock) + kRingBytes, "mp-queue");
  auto* q = static_cast<QueueBlock*>(block->data());
  q->capacity = kRingBytes;
  q->maxsize = maxsize;
  q->header.type = kQueueBlockType;
  q->header.magic = kBlockMagic;
  auto [send_end, recv_end] = posix::seqpacket_pair(1 << 20);
  return std::make_shared<QueueCore>(std::move(block), std::move(send_end), std::move(recv_end));
}

std::shared_ptr<QueueCore> queue_import(std::int32_t block, std::int32_t send_end, std::int32_t recv_end) {
  if (send_end < 0 || recv_end < 0) throw std::invalid_argument("mp: a Queue handle with a bad fd index was received");
  auto b = import_block(block, sizeof(QueueBlock) + kRingBytes, kQueueBlockType);
  const auto* q = static_cast<const QueueBlock*>(b->data());
  if (q->capacity != kRingBytes) throw std::invalid_argument("mp: the Queue received has a ring of another size");
  posix::UniqueFd s(import_fd(static_cast<std::size_t>(send_end)));
  posix::UniqueFd r(import_fd(static_cast<std::size_t>(recv_end)));
  return std::make_shared<QueueCore>(std::move(b), std::move(s), std::move(r));
}

void queue_export(const QueueCore& core, std::int32_t (&out)[3]) {
  out[0] = export_fd(core.block_fd());
  out[1] = export_fd(core.send_fd());
  out[2] = export_fd(core.recv_fd());
}

Bytes& queue_put_buffer() noexcept { return t_put_buffer; }

void queue_trim_buffers() noexcept {
  constexpr std::size_t kKeep = 16 << 20;  // kept: a stream of 4-8 MiB items reuses its buffers
  if (t_put_buffer.capacity() > kKeep) Bytes().swap(t_put_buffer);
  if (t_get_buffer.capacity() > kKeep) Bytes().swap(t_get_buffer);
}

bool queue_put(QueueCore& core, std::span<const std::byte> head, std::span<const std::byte> body, bool block,
               Timeout timeout) {
  return core.put(head, body, block, timeout);
}

bool queue_get(QueueCore& core, bool block, Timeout timeout, std::span<const std::byte>& view,
               std::shared_ptr<void>& keep) {
  return core.get(block, timeout, view, keep);
}

std::size_t queue_qsize(QueueCore& core) {
  // A side's holder killed between publishing its count and its position leaves the count one
  // ahead until the next locker repairs it; repaired here, so that qsize() is exact once the
  // queue is quiet.
  core.settle();
  // Taken first: the count put is then at least as recent (a consumer may publish its count
  // before the producer of that item has published its own, hence the clamp).
  const QueueBlock& q = core.shared();
  const std::uint64_t taken = q.get_pub.items.load(std::memory_order_acquire);
  const std::uint64_t put = q.put_pub.items.load(std::memory_order_acquire);
  return put > taken ? static_cast<std::size_t>(put - taken) : 0;
}

bool queue_full(QueueCore& core) {
  const QueueBlock& q = core.shared();
  return q.maxsize != 0 && queue_qsize(core) >= q.maxsize;
}

void queue_close(QueueCore& core) noexcept { core.closed.store(true, std::memory_order_relaxed); }
bool queue_closed(const QueueCore& core) noexcept { return core.closed.load(std::memory_order_relaxed); }
void queue_task_done(QueueCore& core) { core.task_done(); }
void queue_join(QueueCore& core) { core.join(); }

void queue_throw_empty_handle() { throw std::logic_error("mp: use of an empty Queue handle"); }
void queue_throw_full() { throw Full("mp: the queue is full"); }
void queue_throw_empty() { throw Empty("mp: the queue is empty"); }

}  // namespace mp::detail
