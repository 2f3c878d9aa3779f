// Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event and Barrier (Python's
// multiprocessing.synchronize): every method and misuse in one process, then the same objects
// shared with children under fork, spawn and forkserver.
//
// Children report through their exit code (a failed check exits with a distinct code).
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "posix/fd.hpp"
#include "shared_block.hpp"

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kWait = 60s;  // every wait is bounded; children here end in well under a second

// n atomic longs in an anonymous shared segment, a handle that crosses like the library's own.
class SharedInts {
 public:
  SharedInts() = default;
  explicit SharedInts(std::size_t n) : block_(mp::detail::SharedBlock::create(n * sizeof(std::atomic<long>), "test-ints")) {}
  std::atomic<long>& operator[](std::size_t i) const { return static_cast<std::atomic<long>*>(block_->data())[i]; }
  // A read-modify-write in two steps, which only a lock that excludes keeps exact.
  void unsafe_increment(std::size_t i) const {
    long seen = (*this)[i].load(std::memory_order_relaxed);
    if ((seen & 63) == 0) std::this_thread::yield();
    (*this)[i].store(seen + 1, std::memory_order_relaxed);
  }
  template <class A>
  void save(A& ar) const {
    std::int32_t index = mp::detail::export_fd(block_->fd());
    std::uint64_t size = block_->size();
    ar(index, size);
  }
  template <class A>
  void load(A& ar) {
    std::int32_t index = -1;
    std::uint64_t size = 0;
    ar(index, size);
    block_ = mp::detail::SharedBlock::adopt(mp::detail::posix::UniqueFd(mp::detail::import_fd(static_cast<std::size_t>(index))), size);
  }

 private:
  std::shared_ptr<mp::detail::SharedBlock> block_;
};

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// ---- child targets (function pointers: they run under every start method) ----

template <class L>
void add_under_lock(L lock, SharedInts ints, mp::Event go, int n) {
  if (!go.wait(kWait)) std::exit(3);
  for (int i = 0; i < n; ++i) {
    std::lock_guard guard(lock);
    ints.unsafe_increment(0);
  }
}

void use_semaphore(mp::Semaphore sem, SharedInts ints, mp::Event go, int n) {
  if (!go.wait(kWait)) std::exit(3);
  for (int i = 0; i < n; ++i) {
    if (!sem.acquire(true, kWait)) std::exit(4);
    long now = ints[0].fetch_add(1) + 1;
    long seen = ints[1].load();
    while (now > seen && !ints[1].compare_exchange_weak(seen, now)) {
    }
    if (i % 16 == 0) std::this_thread::yield();
    ints[0].fetch_sub(1);
    sem.release();
  }
}

void set_event(mp::Event ev) { ev.set(); }

void wait_event_then_set(mp::Event in, mp::Event out) {
  if (!in.wait(kWait)) std::exit(3);
  out.set();
}

void release_the_parents_lock(mp::Lock lock) {
  if (lock.acquire(false)) std::exit(3);  // the parent holds it
  lock.release();                         // a Lock may be released by any process
}

void release_the_parents_rlock(mp::RLock lock) {
  if (lock.is_owned()) std::exit(3);
  try {
    lock.release();
  } catch (const std::logic_error&) {
    std::exit(0);
  }
  std::exit(4);
}

void wait_on_condition(mp::Condition cond, SharedInts ints, mp::Event waiting) {
  cond.acquire();
  waiting.set();
  bool ok = cond.wait_for([&] { return ints[0].load() == 1; }, kWait);
  cond.release();
  std::exit(ok ? 0 : 5);
}

void barrier_party(mp::Barrier barrier, SharedInts ints) {
  ints[0].fetch_add(1);
  int index = barrier.wait(kWait);
  if (ints[0].load() != 3) std::exit(6);  // got through before everyone arrived
  if (index < 0 || index > 2) std::exit(7);
  ints[1 + static_cast<std::size_t>(index)].fetch_add(1);
}

void semaphore_release(mp::Semaphore sem) { sem.release(); }

void bounded_over_release(mp::BoundedSemaphore sem) {
  try {
    sem.release();
  } catch (const std::logic_error&) {
    std::exit(0);
  }
  std::exit(4);
}

class SynchronizeTest : public testing::TestWithParam<std::string> {
 protected:
  mp::Context ctx() const { return mp::get_context(GetParam()); }
  static int run(mp::Process& p) {
    p.start();
    EXPECT_TRUE(p.join(kWait));
    return p.exitcode().value_or(-1000);
  }
  static void join_all(std::vector<mp::Process>& ps) {
    for (auto& p : ps) {
      EXPECT_TRUE(p.join(kWait));
      EXPECT_EQ(p.exitcode(), 0);
    }
  }
};

}  // namespace

// ================= one process =================

TEST(Lock, acquire_release_and_non_blocking_acquire) {
  mp::Lock lock;
  EXPECT_TRUE(lock.acquire());
  EXPECT_TRUE(lock.held_by_this_process());
  EXPECT_FALSE(lock.acquire(false));
  EXPECT_FALSE(lock.try_lock());
  lock.release();
  EXPECT_FALSE(lock.held_by_this_process());
  EXPECT_TRUE(lock.try_lock());
  lock.unlock();
}

TEST(Lock, a_timed_acquire_returns_false_on_time) {
  mp::Lock lock;
  lock.acquire();
  auto t0 = Clock::now();
  EXPECT_FALSE(lock.acquire(true, 50ms));
  double took = seconds_since(t0);
  EXPECT_GE(took, 0.045);
  EXPECT_LT(took, 2.0);
  // block = false ignores the timeout
  t0 = Clock::now();
  EXPECT_FALSE(lock.acquire(false, 5s));
  EXPECT_LT(seconds_since(t0), 1.0);
  lock.release();
}

TEST(Lock, releasing_an_unlocked_lock_is_a_logic_error) {
  mp::Lock lock;
  EXPECT_THROW(lock.release(), std::logic_error);
  lock.acquire();
  lock.release();
  EXPECT_THROW(lock.release(), std::logic_error);
}

TEST(Lock, another_thread_may_release_it_and_a_waiter_then_gets_it) {
  mp::Lock lock;
  lock.acquire();
  std::thread t([lock]() mutable { lock.release(); });
  t.join();
  EXPECT_TRUE(lock.acquire(false));
  // a blocked acquire is woken by a release from another thread
  std::atomic<bool> got{false};
  std::thread waiter([&] { got = lock.acquire(true, kWait); });
  std::this_thread::sleep_for(20ms);  // lets the waiter sleep (not needed for correctness)
  lock.release();
  waiter.join();
  EXPECT_TRUE(got);
  lock.release();
}

TEST(Lock, works_with_lock_guard_and_unique_lock) {
  mp::Lock lock;
  {
    std::lock_guard guard(lock);
    EXPECT_FALSE(lock.try_lock());
  }
  std::unique_lock ul(lock, std::try_to_lock);
  EXPECT_TRUE(ul.owns_lock());
  ul.unlock();
  EXPECT_TRUE(lock.try_lock());
  lock.release();
}

TEST(Lock, copies_share_one_lock_and_a_moved_from_handle_is_a_logic_error) {
  mp::Lock a;
  mp::Lock b = a;
  a.acquire();
  EXPECT_FALSE(b.acquire(false));
  b.release();
  mp::Lock c = std::move(a);
  EXPECT_THROW(a.acquire(), std::logic_error);  // NOLINT(bugprone-use-after-move): the documented state
  EXPECT_TRUE(c.acquire(false));
  c.release();
}

TEST(Lock, crosses_only_inside_a_process_start) {
  mp::Lock lock;
  EXPECT_THROW(mp::dumps(lock), std::invalid_argument);
  static_assert(mp::detail::is_serializable_v<mp::Lock> && mp::detail::is_serializable_v<mp::RLock> &&
                mp::detail::is_serializable_v<mp::Semaphore> && mp::detail::is_serializable_v<mp::BoundedSemaphore> &&
                mp::detail::is_serializable_v<mp::Condition> && mp::detail::is_serializable_v<mp::Event> &&
                mp::detail::is_serializable_v<mp::Barrier>);
}

TEST(Lock, a_segment_of_another_type_is_refused_on_load) {
  mp::Lock lock;
  mp::Bytes data;
  std::vector<int> fds;
  {
    mp::detail::FdExport exported;
    data = mp::dumps(lock);
    for (int fd : exported.fds()) fds.push_back(mp::detail::posix::dup_cloexec(fd).release());
  }
  {
    mp::detail::FdImport imported(fds);
    EXPECT_THROW(mp::loads<mp::RLock>(data), std::invalid_argument);  // same size, other type tag
  }
  fds.clear();
  {
    mp::detail::FdExport exported;
    data = mp::dumps(lock);
    for (int fd : exported.fds()) fds.push_back(mp::detail::posix::dup_cloexec(fd).release());
  }
  {
    mp::detail::FdImport imported(fds);
    EXPECT_THROW(mp::loads<mp::Event>(data), std::invalid_argument);
  }
  fds.clear();
  {
    mp::detail::FdExport exported;
    data = mp::dumps(lock);
    for (int fd : exported.fds()) fds.push_back(mp::detail::posix::dup_cloexec(fd).release());
  }
  mp::detail::FdImport imported(fds);
  mp::Lock same = mp::loads<mp::Lock>(data);
  lock.acquire();
  EXPECT_FALSE(same.acquire(false));
  same.release();
}

TEST(Lock, uncontended_acquire_and_release_make_no_system_call) {
  // A million pairs through the system would cost at least 0.1 s of system time; in user space
  // they cost none. Measured on this thread only (RUSAGE_THREAD).
  mp::Lock lock;
  mp::RLock rlock;
  mp::Semaphore sem(1);
  mp::Event ev;
  lock.acquire();  // the first use caches the process's identity (one /proc read)
  lock.release();
  rlock.acquire();
  rlock.release();
  auto system_time = [] {
    rusage u{};
    getrusage(RUSAGE_THREAD, &u);
    return static_cast<double>(u.ru_stime.tv_sec) + static_cast<double>(u.ru_stime.tv_usec) / 1e6;
  };
  double s0 = system_time();
  auto t0 = Clock::now();
  for (int i = 0; i < 1000000; ++i) {
    lock.acquire();
    lock.release();
  }
  double lock_wall = seconds_since(t0);
  for (int i = 0; i < 1000000; ++i) {
    rlock.acquire();
    rlock.acquire();
    rlock.release();
    rlock.release();
    sem.acquire();
    sem.release();
    ev.set();
    ev.clear();
  }
  double sys = system_time() - s0;
  EXPECT_LT(sys, 0.05) << "system time spent in uncontended operations";
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  const double kWallBound = 2.0;  // instrumented builds run the fast path several times slower
#else
  const double kWallBound = 0.2;
#endif
  EXPECT_LT(lock_wall, kWallBound) << "1,000,000 uncontended Lock acquire/release pairs";
}

TEST(RLock, nests_for_its_owner_and_counts_levels) {
  mp::RLock r;
  EXPECT_FALSE(r.is_owned());
  EXPECT_TRUE(r.acquire());
  EXPECT_TRUE(r.acquire(false));
  EXPECT_TRUE(r.acquire(true, 10ms));
  EXPECT_EQ(r.recursion_count(), 3);
  r.release();
  r.release();
  EXPECT_TRUE(r.is_owned());
  r.release();
  EXPECT_FALSE(r.is_owned());
  EXPECT_THROW(r.release(), std::logic_error);
}

TEST(RLock, another_thread_can_neither_take_nor_release_it) {
  mp::RLock r;
  r.acquire();
  std::thread t([r]() mutable {
    EXPECT_FALSE(r.is_owned());
    EXPECT_FALSE(r.acquire(false));
    auto t0 = Clock::now();
    EXPECT_FALSE(r.acquire(true, 50ms));
    EXPECT_GE(seconds_since(t0), 0.045);
    EXPECT_THROW(r.release(), std::logic_error);
  });
  t.join();
  EXPECT_EQ(r.recursion_count(), 1);
  r.release();
  std::thread t2([r]() mutable {
    EXPECT_TRUE(r.acquire(false));
    r.release();
  });
  t2.join();
}

TEST(Semaphore, counts_units_and_reports_its_value) {
  mp::Semaphore s(2);
  EXPECT_EQ(s.get_value(), 2);
  EXPECT_TRUE(s.acquire());
  EXPECT_TRUE(s.acquire());
  EXPECT_FALSE(s.acquire(false));
  EXPECT_EQ(s.get_value(), 0);
  auto t0 = Clock::now();
  EXPECT_FALSE(s.acquire(true, 50ms));
  double took = seconds_since(t0);
  EXPECT_GE(took, 0.045);
  EXPECT_LT(took, 2.0);
  s.release();
  s.release();
  s.release();  // an unbounded semaphore may go above its initial value
  EXPECT_EQ(s.get_value(), 3);
  EXPECT_EQ(mp::Semaphore(0).get_value(), 0);
  EXPECT_THROW(mp::Semaphore(-1), std::invalid_argument);
}

TEST(Semaphore, a_release_wakes_a_blocked_acquire) {
  mp::Semaphore s(0);
  std::atomic<bool> got{false};
  std::thread t([&] { got = s.acquire(true, kWait); });
  std::this_thread::sleep_for(20ms);
  s.release();
  t.join();
  EXPECT_TRUE(got);
  EXPECT_EQ(s.get_value(), 0);
}

TEST(BoundedSemaphore, release_above_the_initial_value_is_a_logic_error) {
  mp::BoundedSemaphore b(2);
  EXPECT_THROW(b.release(), std::logic_error);
  EXPECT_TRUE(b.acquire());
  b.release();
  EXPECT_EQ(b.get_value(), 2);
  EXPECT_THROW(b.release(), std::logic_error);
  EXPECT_EQ(b.get_value(), 2);
  EXPECT_THROW(mp::BoundedSemaphore(-1), std::invalid_argument);
  mp::BoundedSemaphore one;
  EXPECT_TRUE(one.acquire(false));
  EXPECT_FALSE(one.acquire(false));
  one.release();
}

TEST(Condition, wait_and_notify_need_the_lock) {
  mp::Condition c;
  EXPECT_THROW(c.wait(10ms), std::logic_error);
  EXPECT_THROW(c.notify(), std::logic_error);
  EXPECT_THROW(c.notify_all(), std::logic_error);
  mp::Condition over_lock{mp::Lock()};
  EXPECT_THROW(over_lock.wait(10ms), std::logic_error);
  EXPECT_THROW(over_lock.notify(), std::logic_error);
  EXPECT_THROW(c.release(), std::logic_error);
}

TEST(Condition, a_wait_times_out_on_time_and_gives_back_every_level_of_the_lock) {
  mp::RLock r;
  mp::Condition c(r);
  c.acquire();
  c.acquire();
  std::atomic<bool> other_got_it{false};
  std::thread t([&, r]() mutable {
    // only possible while wait() has released both levels
    other_got_it = r.acquire(true, kWait);
    r.release();
  });
  auto t0 = Clock::now();
  EXPECT_FALSE(c.wait(200ms));
  double took = seconds_since(t0);
  t.join();
  EXPECT_TRUE(other_got_it);
  EXPECT_GE(took, 0.19);
  EXPECT_LT(took, 3.0);
  EXPECT_EQ(r.recursion_count(), 2);
  c.release();
  c.release();
  EXPECT_FALSE(r.is_owned());
}

TEST(Condition, notify_wakes_one_waiter_and_notify_all_the_rest) {
  mp::Condition c{mp::Lock()};
  std::atomic<int> waiting{0}, woken{0};
  std::vector<std::thread> ts;
  for (int i = 0; i < 3; ++i) {
    ts.emplace_back([&] {
      c.acquire();
      ++waiting;
      if (c.wait(kWait)) ++woken;
      c.release();
    });
  }
  // Once a thread has counted itself under the lock and we get the lock, it is waiting.
  for (auto until = Clock::now() + kWait; Clock::now() < until;) {
    std::lock_guard g(c);
    if (waiting == 3) break;
  }
  c.acquire();
  c.notify();
  c.release();
  for (auto until = Clock::now() + kWait; woken < 1 && Clock::now() < until;) std::this_thread::sleep_for(1ms);
  std::this_thread::sleep_for(50ms);  // a second waiter woken by mistake would show up here
  EXPECT_EQ(woken, 1);
  c.acquire();
  c.notify_all();
  c.release();
  for (auto& t : ts) t.join();
  EXPECT_EQ(woken, 3);
}

TEST(Condition, a_notify_before_the_wait_is_not_kept) {
  mp::Condition c;
  c.acquire();
  c.notify();
  EXPECT_FALSE(c.wait(30ms));
  c.release();
}

TEST(Condition, wait_for_returns_the_predicate_and_honours_one_deadline) {
  mp::Condition c;
  c.acquire();
  EXPECT_TRUE(c.wait_for([] { return true; }, 0ms));
  auto t0 = Clock::now();
  EXPECT_FALSE(c.wait_for([] { return false; }, 60ms));
  double took = seconds_since(t0);
  EXPECT_GE(took, 0.055);
  EXPECT_LT(took, 2.0);
  c.release();
}

TEST(Event, set_clear_and_a_timed_wait) {
  mp::Event ev;
  EXPECT_FALSE(ev.is_set());
  auto t0 = Clock::now();
  EXPECT_FALSE(ev.wait(50ms));
  double took = seconds_since(t0);
  EXPECT_GE(took, 0.045);
  EXPECT_LT(took, 2.0);
  ev.set();
  ev.set();
  EXPECT_TRUE(ev.is_set());
  EXPECT_TRUE(ev.wait(0ms));
  EXPECT_TRUE(ev.wait());
  ev.clear();
  EXPECT_FALSE(ev.is_set());
  EXPECT_FALSE(ev.wait(0ms));
}

TEST(Event, set_wakes_every_waiting_thread) {
  mp::Event ev;
  std::atomic<int> woken{0};
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i) ts.emplace_back([&] { woken += ev.wait(kWait) ? 1 : 0; });
  std::this_thread::sleep_for(20ms);
  ev.set();
  for (auto& t : ts) t.join();
  EXPECT_EQ(woken, 4);
}

TEST(Barrier, rejects_bad_arguments_and_an_empty_handle_is_a_logic_error) {
  EXPECT_THROW(mp::Barrier(0), std::invalid_argument);
  EXPECT_THROW(mp::Barrier(-3), std::invalid_argument);
  EXPECT_THROW(mp::Barrier(mp::Barrier::kMaxParties + 1), std::invalid_argument);
  EXPECT_THROW(mp::Barrier(2, mp::Duration(-1)), std::invalid_argument);
  EXPECT_NO_THROW(mp::Barrier(mp::Barrier::kMaxParties));
  mp::Barrier empty;
  EXPECT_THROW(empty.wait(), std::logic_error);
  EXPECT_THROW(empty.parties(), std::logic_error);
}

TEST(Barrier, threads_get_distinct_indices_and_it_can_be_reused) {
  mp::Barrier b(3);
  EXPECT_EQ(b.parties(), 3);
  EXPECT_EQ(b.n_waiting(), 0);
  for (int round = 0; round < 3; ++round) {
    std::vector<int> indices(3, -1);
    std::vector<std::thread> ts;
    for (int i = 0; i < 3; ++i) ts.emplace_back([&, i] { indices[static_cast<std::size_t>(i)] = b.wait(kWait); });
    for (auto& t : ts) t.join();
    std::sort(indices.begin(), indices.end());
    EXPECT_EQ(indices, (std::vector<int>{0, 1, 2}));
  }
  EXPECT_FALSE(b.broken());
  mp::Barrier one(1);
  EXPECT_EQ(one.wait(), 0);
}

TEST(Barrier, a_timeout_breaks_it_for_everyone_until_reset) {
  mp::Barrier b(2, mp::Duration(0.05));  // the default timeout
  auto t0 = Clock::now();
  EXPECT_THROW(b.wait(), mp::BrokenBarrierError);
  double took = seconds_since(t0);
  EXPECT_GE(took, 0.045);
  EXPECT_LT(took, 2.0);
  EXPECT_TRUE(b.broken());
  EXPECT_EQ(b.n_waiting(), 0);
  EXPECT_THROW(b.wait(kWait), mp::BrokenBarrierError);
  b.reset();
  EXPECT_FALSE(b.broken());
  int other = -1;
  std::thread t([&] { other = b.wait(kWait); });
  int mine = b.wait(kWait);
  t.join();
  EXPECT_EQ(mine + other, 1);
}

TEST(Barrier, abort_and_reset_break_the_parties_waiting) {
  mp::Barrier b(3);
  for (int use_abort = 0; use_abort < 2; ++use_abort) {
    std::atomic<int> broken{0};
    std::vector<std::thread> ts;
    for (int i = 0; i < 2; ++i) {
      ts.emplace_back([&] {
        try {
          b.wait(kWait);
        } catch (const mp::BrokenBarrierError&) {
          ++broken;
        }
      });
    }
    for (auto until = Clock::now() + kWait; b.n_waiting() < 2 && Clock::now() < until;) std::this_thread::sleep_for(1ms);
    EXPECT_EQ(b.n_waiting(), 2);
    if (use_abort) {
      b.abort();
    } else {
      b.reset();
    }
    for (auto& t : ts) t.join();
    EXPECT_EQ(broken, 2);
    EXPECT_EQ(b.broken(), use_abort == 1);
    b.reset();
  }
}

// ================= across processes =================

TEST_P(SynchronizeTest, four_processes_incrementing_under_a_lock_end_exact) {
  mp::Lock lock;
  SharedInts ints(1);
  mp::Event go;
  std::vector<mp::Process> ps;
  for (int i = 0; i < 4; ++i) ps.emplace_back(ctx(), add_under_lock<mp::Lock>, lock, ints, go, 100000);
  for (auto& p : ps) p.start();
  go.set();
  join_all(ps);
  EXPECT_EQ(ints[0].load(), 400000);
}

TEST_P(SynchronizeTest, four_processes_incrementing_under_an_rlock_end_exact) {
  mp::RLock lock;
  SharedInts ints(1);
  mp::Event go;
  std::vector<mp::Process> ps;
  for (int i = 0; i < 4; ++i) ps.emplace_back(ctx(), add_under_lock<mp::RLock>, lock, ints, go, 100000);
  for (auto& p : ps) p.start();
  go.set();
  join_all(ps);
  EXPECT_EQ(ints[0].load(), 400000);
}

TEST_P(SynchronizeTest, a_semaphore_under_contention_never_exceeds_its_value) {
  mp::Semaphore sem(3);
  SharedInts ints(2);  // [0] holders now, [1] most holders ever seen
  mp::Event go;
  std::vector<mp::Process> ps;
  for (int i = 0; i < 6; ++i) ps.emplace_back(ctx(), use_semaphore, sem, ints, go, 5000);
  for (auto& p : ps) p.start();
  go.set();
  join_all(ps);
  EXPECT_LE(ints[1].load(), 3);
  EXPECT_GE(ints[1].load(), 1);
  EXPECT_EQ(ints[0].load(), 0);
  EXPECT_EQ(sem.get_value(), 3);
}

TEST_P(SynchronizeTest, a_child_releases_a_semaphore_and_a_bounded_one_refuses_to_overflow) {
  mp::Semaphore sem(0);
  mp::Process p(ctx(), semaphore_release, sem);
  p.start();
  EXPECT_TRUE(sem.acquire(true, kWait));
  ASSERT_TRUE(p.join(kWait));
  EXPECT_EQ(p.exitcode(), 0);
  mp::BoundedSemaphore b(1);
  mp::Process q(ctx(), bounded_over_release, b);
  EXPECT_EQ(run(q), 0);
}

TEST_P(SynchronizeTest, events_wake_across_processes_both_ways) {
  mp::Event ev;
  mp::Process p(ctx(), set_event, ev);
  p.start();
  EXPECT_TRUE(ev.wait(kWait));
  ASSERT_TRUE(p.join(kWait));
  mp::Event in, out;
  mp::Process q(ctx(), wait_event_then_set, in, out);
  q.start();
  in.set();
  EXPECT_TRUE(out.wait(kWait));
  ASSERT_TRUE(q.join(kWait));
  EXPECT_EQ(q.exitcode(), 0);
}

TEST_P(SynchronizeTest, a_child_may_release_a_lock_the_parent_holds_but_not_an_rlock) {
  mp::Lock lock;
  lock.acquire();
  mp::Process p(ctx(), release_the_parents_lock, lock);
  EXPECT_EQ(run(p), 0);
  EXPECT_TRUE(lock.acquire(false));
  lock.release();
  mp::RLock r;
  r.acquire();
  mp::Process q(ctx(), release_the_parents_rlock, r);
  EXPECT_EQ(run(q), 0);
  EXPECT_TRUE(r.is_owned());
  r.release();
}

TEST_P(SynchronizeTest, a_condition_notify_wakes_a_waiting_child) {
  for (bool over_plain_lock : {false, true}) {
    mp::Condition cond = over_plain_lock ? mp::Condition(mp::Lock()) : mp::Condition();
    SharedInts ints(1);
    mp::Event waiting;
    mp::Process p(ctx(), wait_on_condition, cond, ints, waiting);
    p.start();
    ASSERT_TRUE(waiting.wait(kWait));
    cond.acquire();  // returns once the child's wait has released the lock
    ints[0] = 1;
    cond.notify_all();
    cond.release();
    ASSERT_TRUE(p.join(kWait));
    EXPECT_EQ(p.exitcode(), 0);
  }
}

TEST_P(SynchronizeTest, nobody_passes_a_barrier_of_three_processes_before_all_arrive) {
  mp::Barrier barrier(3);
  SharedInts ints(4);  // [0] arrived, [1..3] how often each index was returned
  std::vector<mp::Process> ps;
  for (int i = 0; i < 3; ++i) ps.emplace_back(ctx(), barrier_party, barrier, ints);
  for (auto& p : ps) p.start();
  join_all(ps);
  EXPECT_EQ(ints[1].load(), 1);
  EXPECT_EQ(ints[2].load(), 1);
  EXPECT_EQ(ints[3].load(), 1);
  EXPECT_EQ(barrier.parties(), 3);
  EXPECT_FALSE(barrier.broken());
}

INSTANTIATE_TEST_SUITE_P(StartMethods, SynchronizeTest, testing::Values("fork", "spawn", "forkserver"),
                         [](const testing::TestParamInfo<std::string>& param) { return param.param; });
