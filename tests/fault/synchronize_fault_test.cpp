// Robustness of the synchronization primitives against processes that die at the worst moment
// (as Boost.Interprocess's mutex_owner_dead_test): a Lock or RLock holder killed by SIGKILL or
// leaving by _exit, a Condition waiter killed while waiting, a Barrier party killed while waiting,
// and signals interrupting timed waits.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kWait = 60s;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Collects what the library logs in this process while it lives.
class LogCapture {
 public:
  LogCapture() : lines_(std::make_shared<Lines>()) {
    auto lines = lines_;
    mp::get_logger().add_handler([lines](int level, std::string_view, std::string_view message) {
      std::lock_guard g(lines->mutex);
      lines->text.push_back(std::to_string(level) + " " + std::string(message));
    });
  }
  ~LogCapture() { mp::get_logger().clear_handlers(); }
  bool contains(const std::string& needle) const {
    std::lock_guard g(lines_->mutex);
    for (auto& line : lines_->text) {
      if (line.find(needle) != std::string::npos) return true;
    }
    return false;
  }

 private:
  struct Lines {
    std::mutex mutex;
    std::vector<std::string> text;
  };
  std::shared_ptr<Lines> lines_;
};

// State letter of /proc/<pid>/stat ('Z' for a zombie), '?' when gone.
char process_state(int pid) {
  std::string all;
  try {
    // A process that dies while we read reads as ESRCH, which libstdc++ throws from underflow.
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    all.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } catch (const std::exception&) {
    return '?';
  }
  auto close = all.rfind(')');
  return close == std::string::npos || close + 2 >= all.size() ? '?' : all[close + 2];
}

// Kills p with SIGKILL and waits until the kernel has made it a zombie (reap = false; not
// reaped, so the library must see through the zombie) or until it has been reaped (reap = true).
void kill_now(mp::Process& p, bool reap) {
  ::kill(p.pid().value(), SIGKILL);
  if (reap) {
    ASSERT_TRUE(p.join(kWait));
    return;
  }
  // A forkserver child is the server's child: the server reaps it at once, so it goes from
  // running to gone; fork and spawn children stay zombies until joined.
  auto dead = [&] { char s = process_state(*p.pid()); return s == 'Z' || s == '?'; };
  for (auto until = Clock::now() + kWait; !dead() && Clock::now() < until;) std::this_thread::sleep_for(1ms);
  ASSERT_TRUE(dead());
}

template <class L>
void hold_forever(L lock, mp::Event holding) {
  lock.acquire();
  if constexpr (std::is_same_v<L, mp::RLock>) lock.acquire();  // two levels deep
  holding.set();
  for (;;) pause();
}

void hold_and_exit(mp::Lock lock) {
  lock.acquire();
  std::_Exit(0);
}

void rlock_hold_and_exit(mp::RLock lock) {
  lock.acquire();
  std::_Exit(0);
}

template <class L>
void acquire_in_turn(L lock, mp::Event waiting) {
  waiting.set();
  if (!lock.acquire(true, kWait)) std::exit(3);
  lock.release();
}

void wait_for_notify(mp::Condition cond, mp::Event waiting, mp::Event done) {
  cond.acquire();
  waiting.set();
  bool notified = cond.wait(kWait);
  cond.release();
  if (notified) done.set();
  std::exit(notified ? 0 : 5);
}

void wait_at_barrier(mp::Barrier barrier) {
  try {
    barrier.wait(kWait);
  } catch (const mp::BrokenBarrierError&) {
    std::exit(9);
  }
}

struct Case {
  std::string method;
  bool reap;
};

class RobustLockTest : public testing::TestWithParam<Case> {
 protected:
  mp::Context ctx() const { return mp::get_context(GetParam().method); }
};

}  // namespace

TEST_P(RobustLockTest, a_lock_whose_holder_was_killed_is_recovered_within_two_seconds) {
  LogCapture log;
  mp::Lock lock;
  mp::Event holding;
  mp::Process p(ctx(), hold_forever<mp::Lock>, lock, holding);
  p.start();
  ASSERT_TRUE(holding.wait(kWait));
  EXPECT_FALSE(lock.acquire(false));
  kill_now(p, GetParam().reap);
  auto t0 = Clock::now();
  EXPECT_TRUE(lock.acquire(true, kWait));
  EXPECT_LT(seconds_since(t0), 2.0);
  EXPECT_TRUE(log.contains("Lock recovered: its holder, process " + std::to_string(*p.pid()) + ", died")) << "warning logged";
  lock.release();
  EXPECT_TRUE(lock.acquire(false));  // and it works normally afterwards
  lock.release();
  p.join(kWait);
}

TEST_P(RobustLockTest, an_rlock_whose_owner_was_killed_is_recovered_within_two_seconds) {
  LogCapture log;
  mp::RLock lock;
  mp::Event holding;
  mp::Process p(ctx(), hold_forever<mp::RLock>, lock, holding);
  p.start();
  ASSERT_TRUE(holding.wait(kWait));
  kill_now(p, GetParam().reap);
  auto t0 = Clock::now();
  EXPECT_TRUE(lock.acquire(true, kWait));
  EXPECT_LT(seconds_since(t0), 2.0);
  EXPECT_TRUE(log.contains("RLock recovered"));
  EXPECT_EQ(lock.recursion_count(), 1);  // the dead owner's levels are not inherited
  lock.release();
  EXPECT_FALSE(lock.is_owned());
  p.join(kWait);
}

TEST_P(RobustLockTest, a_holder_that_exits_without_releasing_does_not_lock_others_out) {
  mp::Lock lock;
  mp::Process p(ctx(), hold_and_exit, lock);
  p.start();
  if (GetParam().reap) {
    ASSERT_TRUE(p.join(kWait));
  }
  auto t0 = Clock::now();
  EXPECT_TRUE(lock.acquire(true, kWait));
  EXPECT_LT(seconds_since(t0), 2.0);
  lock.release();
  mp::RLock r;
  mp::Process q(ctx(), rlock_hold_and_exit, r);
  q.start();
  ASSERT_TRUE(q.join(kWait));
  t0 = Clock::now();
  EXPECT_TRUE(r.acquire(true, kWait));
  EXPECT_LT(seconds_since(t0), 2.0);
  r.release();
  p.join(kWait);
}

TEST_P(RobustLockTest, every_waiter_queued_behind_a_killed_holder_gets_the_lock_in_turn) {
  mp::Lock lock;
  mp::Event holding;
  mp::Process holder(ctx(), hold_forever<mp::Lock>, lock, holding);
  holder.start();
  ASSERT_TRUE(holding.wait(kWait));
  std::vector<mp::Process> waiters;
  std::vector<mp::Event> waiting(3);
  for (int i = 0; i < 3; ++i) waiters.emplace_back(ctx(), acquire_in_turn<mp::Lock>, lock, waiting[static_cast<std::size_t>(i)]);
  for (auto& w : waiters) w.start();
  for (auto& e : waiting) ASSERT_TRUE(e.wait(kWait));
  kill_now(holder, GetParam().reap);
  auto t0 = Clock::now();
  for (auto& w : waiters) {
    ASSERT_TRUE(w.join(kWait));
    EXPECT_EQ(w.exitcode(), 0);
  }
  EXPECT_LT(seconds_since(t0), 5.0);
  EXPECT_TRUE(lock.acquire(false));
  lock.release();
  holder.join(kWait);
}

TEST_P(RobustLockTest, a_timed_acquire_takes_over_from_a_dead_holder_before_giving_up) {
  mp::Lock lock;
  mp::Event holding;
  mp::Process p(ctx(), hold_forever<mp::Lock>, lock, holding);
  p.start();
  ASSERT_TRUE(holding.wait(kWait));
  kill_now(p, GetParam().reap);
  EXPECT_TRUE(lock.acquire(true, 20ms));  // shorter than a liveness slice
  lock.release();
  p.join(kWait);
}

TEST_P(RobustLockTest, a_condition_waiter_killed_while_waiting_does_not_take_a_notify) {
  mp::Condition cond;
  mp::Event a_waiting, a_done, b_waiting, b_done;
  mp::Process a(ctx(), wait_for_notify, cond, a_waiting, a_done);
  a.start();
  ASSERT_TRUE(a_waiting.wait(kWait));
  cond.acquire();  // a is inside wait() once its lock is free
  cond.release();
  kill_now(a, GetParam().reap);
  mp::Process b(ctx(), wait_for_notify, cond, b_waiting, b_done);
  b.start();
  ASSERT_TRUE(b_waiting.wait(kWait));
  cond.acquire();
  cond.notify();  // one: the dead (older) waiter must be skipped
  cond.release();
  EXPECT_TRUE(b_done.wait(10s));
  ASSERT_TRUE(b.join(kWait));
  EXPECT_EQ(b.exitcode(), 0);
  a.join(kWait);
}

TEST_P(RobustLockTest, a_barrier_whose_waiting_party_was_killed_breaks) {
  LogCapture log;
  mp::Barrier barrier(3);
  mp::Process a(ctx(), wait_at_barrier, barrier);
  a.start();
  for (auto until = Clock::now() + kWait; barrier.n_waiting() < 1 && Clock::now() < until;) std::this_thread::sleep_for(1ms);
  ASSERT_EQ(barrier.n_waiting(), 1);
  kill_now(a, GetParam().reap);
  auto t0 = Clock::now();
  EXPECT_THROW(barrier.wait(kWait), mp::BrokenBarrierError);
  EXPECT_LT(seconds_since(t0), 2.0);
  EXPECT_TRUE(barrier.broken());
  EXPECT_TRUE(log.contains("Barrier broken"));
  // the other order: the party that arrives after this one dies
  barrier.reset();
  mp::Process b(ctx(), wait_at_barrier, barrier);
  std::atomic<bool> broke{false};
  std::thread self([&] {
    try {
      barrier.wait(kWait);
    } catch (const mp::BrokenBarrierError&) {
      broke = true;
    }
  });
  for (auto until = Clock::now() + kWait; barrier.n_waiting() < 1 && Clock::now() < until;) std::this_thread::sleep_for(1ms);
  b.start();
  for (auto until = Clock::now() + kWait; barrier.n_waiting() < 2 && Clock::now() < until;) std::this_thread::sleep_for(1ms);
  ASSERT_EQ(barrier.n_waiting(), 2);
  kill_now(b, GetParam().reap);
  self.join();
  EXPECT_TRUE(broke);
  a.join(kWait);
  b.join(kWait);
}

INSTANTIATE_TEST_SUITE_P(
    StartMethods, RobustLockTest,
    testing::Values(Case{"fork", false}, Case{"fork", true}, Case{"spawn", false}, Case{"spawn", true},
                    Case{"forkserver", false}, Case{"forkserver", true}),
    [](const testing::TestParamInfo<Case>& param) { return param.param.method + (param.param.reap ? "_reaped" : "_zombie"); });

namespace {
void on_signal(int) {}
}  // namespace

TEST(TimedWaits, signals_neither_shorten_nor_stretch_a_timed_wait) {
  struct sigaction sa {};
  sa.sa_handler = on_signal;  // no SA_RESTART: every signal interrupts the futex wait
  struct sigaction old {};
  ::sigaction(SIGUSR1, &sa, &old);
  mp::Lock lock;
  lock.acquire();
  mp::Event ev;
  mp::Semaphore sem(0);
  const pthread_t me = pthread_self();
  std::atomic<bool> stop{false};
  std::thread storm([&] {
    while (!stop) {
      pthread_kill(me, SIGUSR1);
      std::this_thread::sleep_for(1ms);
    }
  });
  auto check = [](auto&& wait) {
    auto t0 = Clock::now();
    EXPECT_FALSE(wait());
    double took = seconds_since(t0);
    EXPECT_GE(took, 0.295);
    EXPECT_LT(took, 3.0);
  };
  std::thread other([&] { check([&] { return lock.acquire(true, 300ms); }); });
  other.join();  // (the storm hits this thread; the lock owner is this process, so another thread waits)
  check([&] { return ev.wait(300ms); });
  check([&] { return sem.acquire(true, 300ms); });
  mp::Condition cond;
  cond.acquire();
  check([&] { return cond.wait(300ms); });
  cond.release();
  stop = true;
  storm.join();
  ::sigaction(SIGUSR1, &old, nullptr);
  lock.release();
}
