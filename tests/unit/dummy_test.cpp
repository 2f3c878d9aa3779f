// mp::dummy: the API of mp:: on threads. The first part compiles ONE program body twice, once
// against mp:: (processes) and once against mp::dummy:: (threads), changing the namespace alone.
#include <multiprocessing.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

using namespace std::chrono_literals;

// The program: workers sum what a JoinableQueue hands them into a Value under a Lock, an Event
// and a Barrier line them up, a Pool squares numbers. Only `ns` differs between the two builds.
#define MP_SWITCHABLE_PROGRAM                                                                  \
  inline void worker(ns::JoinableQueue<int> q, ns::Value<int> total, ns::Lock lock, ns::Event go, \
                     ns::Barrier barrier, ns::Array<int> seen, int slot) {                     \
    go.wait();                                                                                 \
    barrier.wait();                                                                            \
    for (;;) {                                                                                 \
      int v = q.get();                                                                         \
      if (v < 0) {                                                                             \
        q.task_done();                                                                         \
        return;                                                                                \
      }                                                                                        \
      {                                                                                        \
        std::lock_guard guard(lock);                                                           \
        total.set_value(total.value() + v);                                                    \
      }                                                                                        \
      {                                                                                        \
        std::lock_guard guard(seen.get_lock());                                                \
        seen[static_cast<std::size_t>(slot)] += 1;                                             \
      }                                                                                        \
      q.task_done();                                                                           \
    }                                                                                          \
  }                                                                                            \
  inline int square(int x) { return x * x; }                                                   \
  inline int add(int a, int b) { return a + b; }                                               \
  inline int run_program() {                                                                   \
    ns::JoinableQueue<int> q(8);                                                               \
    ns::Value<int> total(0);                                                                   \
    ns::Lock lock;                                                                             \
    ns::Event go;                                                                              \
    ns::Barrier barrier(2);                                                                    \
    ns::Array<int> seen(2);                                                                    \
    std::vector<ns::Process> workers;                                                          \
    for (int i = 0; i < 2; ++i) workers.emplace_back(worker, q, total, lock, go, barrier, seen, i); \
    for (auto& p : workers) p.start();                                                         \
    go.set();                                                                                  \
    for (int i = 1; i <= 100; ++i) q.put(i);                                                   \
    q.put(-1);                                                                                 \
    q.put(-1);                                                                                 \
    q.join();                                                                                  \
    for (auto& p : workers) {                                                                  \
      p.join();                                                                                \
      if (p.exitcode() != 0) return -1;                                                        \
    }                                                                                          \
    const auto counts = seen.to_vector();                                                      \
    if (counts[0] + counts[1] != 100) return -2;                                               \
    ns::Pool pool(2);                                                                          \
    const std::vector<int> xs{1, 2, 3, 4};                                                     \
    const auto squares = pool.map(square, xs);                                                 \
    const int sum = std::accumulate(squares.begin(), squares.end(), 0);                        \
    const int applied = pool.apply(add, 2, 3);                                                 \
    pool.close();                                                                              \
    pool.join();                                                                               \
    return total.value() + sum + applied + (ns::cpu_count() >= 1 ? 0 : 1000);                  \
  }

namespace on_processes {
namespace ns = mp;
MP_SWITCHABLE_PROGRAM
}  // namespace on_processes

namespace on_threads {
namespace ns = mp::dummy;
MP_SWITCHABLE_PROGRAM
}  // namespace on_threads

namespace {

TEST(DummySwitch, TheSameProgramRunsOnProcessesAndOnThreads) {
  EXPECT_EQ(on_processes::run_program(), 5050 + 30 + 5);
  EXPECT_EQ(on_threads::run_program(), 5050 + 30 + 5);
}

// ---------------------------------------------------------------------------------------------
// Process

TEST(DummyProcess, RunsACapturingLambdaAndReportsExitcodes) {
  int seen = 0;
  std::string moved_in = "data";
  mp::dummy::Process p([&seen](const std::string& s, int k) { seen = static_cast<int>(s.size()) + k; }, moved_in, 3);
  EXPECT_FALSE(p.is_alive());
  EXPECT_EQ(p.pid(), std::nullopt);
  EXPECT_EQ(p.exitcode(), std::nullopt);
  p.start();
  p.join();
  EXPECT_EQ(seen, 7);
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(p.pid(), mp::current_process().pid());
  EXPECT_FALSE(p.is_alive());
  EXPECT_EQ(p.name().rfind("Thread-", 0), 0u);
}

TEST(DummyProcess, ATargetThatThrowsGivesExitcodeOne) {
  mp::dummy::Process p([] { throw std::runtime_error("boom (expected in this test)"); });
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 1);
}

TEST(DummyProcess, TerminateAndKillThrowBecauseThreadsCannotBeStopped) {
  mp::dummy::Event stop;
  mp::dummy::Process p([stop]() mutable { stop.wait(); });
  p.start();
  EXPECT_THROW(p.terminate(), std::logic_error);
  EXPECT_THROW(p.kill(), std::logic_error);
  EXPECT_TRUE(p.is_alive());
  EXPECT_THROW(p.close(), std::logic_error);
  stop.set();
  p.join();
  p.close();
  EXPECT_THROW((void)p.exitcode(), std::logic_error);
}

TEST(DummyProcess, MisuseIsALogicError) {
  mp::dummy::Process p([] {});
  EXPECT_THROW(p.join(), std::logic_error);
  p.set_daemon(true);
  EXPECT_TRUE(p.daemon());
  p.start();
  EXPECT_THROW(p.start(), std::logic_error);
  EXPECT_THROW(p.set_daemon(false), std::logic_error);
  p.join();
}

TEST(DummyProcess, JoinWithATimeoutReturnsFalseWhileRunning) {
  mp::dummy::Event stop;
  mp::dummy::Process p([stop]() mutable { stop.wait(); });
  p.start();
  EXPECT_FALSE(p.join(10ms));
  stop.set();
  EXPECT_TRUE(p.join(10s));
}

TEST(DummyProcess, CurrentProcessAndActiveChildrenSeeTheThreads) {
  EXPECT_EQ(mp::dummy::current_process().name(), "MainThread");
  mp::dummy::Event stop;
  mp::dummy::Queue<std::string> names;
  mp::dummy::Process p([stop, names]() mutable {
    names.put(mp::dummy::current_process().name());
    stop.wait();
  });
  p.set_name("worker-a");
  p.start();
  EXPECT_EQ(names.get(10s), "worker-a");
  auto children = mp::dummy::active_children();
  EXPECT_NE(std::find(children.begin(), children.end(), &p), children.end());
  stop.set();
  p.join();
  children = mp::dummy::active_children();
  EXPECT_EQ(std::find(children.begin(), children.end(), &p), children.end());
}

struct Counter : mp::dummy::Process {
  std::atomic<int>* hits;
  explicit Counter(std::atomic<int>* h) : hits(h) {}
  void run() override { hits->fetch_add(5); }
};

TEST(DummyProcess, ASubclassMayOverrideRun) {
  std::atomic<int> hits{0};
  Counter c(&hits);
  c.start();
  c.join();
  EXPECT_EQ(hits.load(), 5);
  EXPECT_EQ(c.exitcode(), 0);
}

// ---------------------------------------------------------------------------------------------
// Queues

TEST(DummyQueue, FullEmptyAndTimeoutsAsMpQueue) {
  mp::dummy::Queue<std::unique_ptr<int>> q(1);
  q.put(std::make_unique<int>(4));
  EXPECT_TRUE(q.full());
  EXPECT_THROW(q.put_nowait(nullptr), mp::Full);
  EXPECT_THROW(q.put(nullptr, 20ms), mp::Full);
  EXPECT_EQ(*q.get(), 4);
  EXPECT_TRUE(q.empty());
  EXPECT_THROW(q.get_nowait(), mp::Empty);
  EXPECT_THROW(q.get(20ms), mp::Empty);
  q.close();
  EXPECT_THROW(q.put(nullptr), std::logic_error);
  q.join_thread();
}

TEST(DummyQueue, JoinableQueueWaitsForTaskDone) {
  mp::dummy::JoinableQueue<int> q;
  EXPECT_THROW(q.task_done(), std::logic_error);
  q.put(1);
  q.put(2);
  std::atomic<int> sum{0};
  std::thread consumer([&] {
    for (int i = 0; i < 2; ++i) {
      sum += q.get();
      q.task_done();
    }
  });
  q.join();
  EXPECT_EQ(sum.load(), 3);
  consumer.join();
}

TEST(DummyQueue, ABlockedPutResumesWhenSpaceAppears) {
  mp::dummy::Queue<int> q(1);
  q.put(1);
  std::thread producer([q]() mutable { q.put(2); });
  EXPECT_EQ(q.get(10s), 1);
  EXPECT_EQ(q.get(10s), 2);
  producer.join();
}

// ---------------------------------------------------------------------------------------------
// Synchronization primitives

TEST(DummySync, LockErrorsAndTimeouts) {
  mp::dummy::Lock lock;
  EXPECT_THROW(lock.release(), std::logic_error);
  EXPECT_TRUE(lock.acquire());
  EXPECT_FALSE(lock.acquire(false));
  EXPECT_FALSE(lock.acquire(true, 10ms));
  EXPECT_TRUE(lock.held_by_this_process());
  // Any thread may release a plain Lock.
  std::thread([lock]() mutable { lock.release(); }).join();
  EXPECT_TRUE(lock.try_lock());
  lock.release();
}

TEST(DummySync, RLockNestsAndBelongsToOneThread) {
  mp::dummy::RLock r;
  r.acquire();
  r.acquire();
  EXPECT_EQ(r.recursion_count(), 2);
  EXPECT_TRUE(r.is_owned());
  std::thread([r]() mutable {
    EXPECT_THROW(r.release(), std::logic_error);
    EXPECT_FALSE(r.acquire(true, 10ms));
    EXPECT_FALSE(r.is_owned());
  }).join();
  r.release();
  r.release();
  EXPECT_THROW(r.release(), std::logic_error);
}

TEST(DummySync, SemaphoresCountAndBoundedOnesRefuseTooManyReleases) {
  EXPECT_THROW(mp::dummy::Semaphore(-1), std::invalid_argument);
  mp::dummy::Semaphore s(2);
  EXPECT_TRUE(s.acquire());
  EXPECT_TRUE(s.acquire());
  EXPECT_FALSE(s.acquire(true, 10ms));
  s.release();
  s.release();
  s.release();  // unbounded
  EXPECT_EQ(s.get_value(), 3);
  mp::dummy::BoundedSemaphore b(1);
  EXPECT_THROW(b.release(), std::logic_error);
  b.acquire();
  b.release();
}

TEST(DummySync, ConditionWaitsForNotifyAndNeedsTheLock) {
  mp::dummy::Condition cond;
  EXPECT_THROW(cond.notify(), std::logic_error);
  EXPECT_THROW(cond.wait(), std::logic_error);
  int state = 0;
  std::thread waiter([&] {
    std::unique_lock guard(cond);
    EXPECT_TRUE(cond.wait_for([&] { return state == 1; }, 10s));
    state = 2;
    cond.notify_all();
  });
  {
    std::unique_lock guard(cond);
    state = 1;
    cond.notify();
    EXPECT_TRUE(cond.wait_for([&] { return state == 2; }, 10s));
  }
  waiter.join();
  std::unique_lock guard(cond);
  EXPECT_FALSE(cond.wait(10ms));
}

TEST(DummySync, ConditionOverAPlainLockRestoresTheLock) {
  mp::dummy::Lock lock;
  mp::dummy::Condition cond(lock);
  cond.acquire();
  EXPECT_FALSE(cond.wait(5ms));
  EXPECT_FALSE(lock.acquire(false));  // still held by us after the wait
  cond.release();
}

TEST(DummySync, EventWaitTimesOutThenSeesTheFlag) {
  mp::dummy::Event e;
  EXPECT_FALSE(e.wait(10ms));
  std::thread setter([e]() mutable { e.set(); });
  EXPECT_TRUE(e.wait(10s));
  setter.join();
  EXPECT_TRUE(e.is_set());
  e.clear();
  EXPECT_FALSE(e.is_set());
}

TEST(DummySync, BarrierGivesEachPartyAnIndexAndBreaksOnTimeoutAbortReset) {
  EXPECT_THROW(mp::dummy::Barrier(0), std::invalid_argument);
  EXPECT_THROW(mp::dummy::Barrier().wait(), std::logic_error);
  mp::dummy::Barrier b(3);
  std::vector<int> indexes(3);
  std::vector<std::thread> ts;
  for (int i = 0; i < 3; ++i) ts.emplace_back([&, i, b]() mutable { indexes[static_cast<std::size_t>(i)] = b.wait(10s); });
  for (auto& t : ts) t.join();
  std::sort(indexes.begin(), indexes.end());
  EXPECT_EQ(indexes, (std::vector<int>{0, 1, 2}));

  EXPECT_THROW(b.wait(10ms), mp::BrokenBarrierError);  // alone: times out, breaks it
  EXPECT_TRUE(b.broken());
  EXPECT_THROW(b.wait(), mp::BrokenBarrierError);
  b.reset();
  EXPECT_FALSE(b.broken());

  std::thread waiter([b]() mutable { EXPECT_THROW(b.wait(10s), mp::BrokenBarrierError); });
  while (b.n_waiting() == 0) std::this_thread::yield();
  b.abort();
  waiter.join();
  b.reset();

  std::thread waiter2([b]() mutable { EXPECT_THROW(b.wait(10s), mp::BrokenBarrierError); });
  while (b.n_waiting() == 0) std::this_thread::yield();
  b.reset();
  waiter2.join();
  EXPECT_FALSE(b.broken());
  EXPECT_EQ(b.parties(), 3);
}

// ---------------------------------------------------------------------------------------------
// Value and Array

TEST(DummyShared, ValueAndArrayShareBetweenCopiesAndCheckBounds) {
  mp::dummy::Value<std::string> v("a");  // any type: nothing crosses a process boundary
  auto copy = v;
  copy.set_value("b");
  EXPECT_EQ(v.value(), "b");
  mp::dummy::Value<int> raw(1, false);
  EXPECT_THROW(raw.get_lock(), std::logic_error);
  mp::dummy::Array<int> a{1, 2, 3};
  a[1] = 20;
  EXPECT_EQ(a.to_vector(), (std::vector<int>{1, 20, 3}));
  EXPECT_THROW(a[3], std::out_of_range);
  EXPECT_EQ(mp::dummy::Array<int>().size(), 0u);
  EXPECT_THROW(mp::dummy::Array<int>().get_lock(), std::logic_error);
}

TEST(DummyShared, ManyThreadsIncrementUnderTheLock) {
  mp::dummy::Value<long> counter(0);
  std::vector<mp::dummy::Process> ps;
  for (int i = 0; i < 4; ++i) {
    ps.emplace_back([counter]() mutable {
      for (int k = 0; k < 1000; ++k) {
        std::lock_guard guard(counter.get_lock());
        counter.get_obj() += 1;
      }
    });
  }
  for (auto& p : ps) p.start();
  for (auto& p : ps) p.join();
  EXPECT_EQ(counter.value(), 4000);
}

// ---------------------------------------------------------------------------------------------
// Pool

struct Oops : std::runtime_error {
  int code;
  Oops(int c) : std::runtime_error("oops"), code(c) {}
};

TEST(DummyPool, MapsCapturingLambdasInOrder) {
  mp::dummy::Pool pool(3);
  int base = 100;  // not const: the lambda really captures it
  std::vector<int> xs(50);
  std::iota(xs.begin(), xs.end(), 0);
  auto out = pool.map([&base](int x) { return base + x; }, xs);
  ASSERT_EQ(out.size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(out[static_cast<std::size_t>(i)], 100 + i);
  std::vector<std::tuple<std::string, int>> pairs{{"a", 1}, {"b", 2}};
  auto joined = pool.starmap([](const std::string& s, int n) { return s + std::to_string(n); }, pairs);
  EXPECT_EQ(joined, (std::vector<std::string>{"a1", "b2"}));
  EXPECT_TRUE(pool.map([](int x) { return x; }, std::vector<int>{}).empty());
}

TEST(DummyPool, ExceptionsAreRethrownAsTheyAre) {
  mp::dummy::Pool pool(2);
  try {
    pool.apply([](int c) -> int { throw Oops(c); }, 7);
    FAIL() << "no exception";
  } catch (const Oops& e) {
    EXPECT_EQ(e.code, 7);
  }
  EXPECT_THROW(pool.map([](int x) { if (x == 3) throw Oops(x); return x; }, std::vector<int>{1, 2, 3, 4}), Oops);
  auto it = pool.imap([](int x) { if (x == 1) throw Oops(x); return x; }, std::vector<int>{0, 1, 2});
  EXPECT_EQ(it.next(), 0);
  EXPECT_THROW(it.next(), Oops);
  EXPECT_EQ(it.next(), 2);
  EXPECT_THROW(it.next(), mp::StopIteration);
}

TEST(DummyPool, ImapOrderedAndUnorderedYieldEverything) {
  mp::dummy::Pool pool(2);
  std::vector<int> xs{5, 6, 7, 8, 9};
  std::vector<int> got;
  for (int v : pool.imap([](int x) { return 2 * x; }, xs, 2)) got.push_back(v);
  EXPECT_EQ(got, (std::vector<int>{10, 12, 14, 16, 18}));
  got.clear();
  for (int v : pool.imap_unordered([](int x) { return 2 * x; }, xs)) got.push_back(v);
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<int>{10, 12, 14, 16, 18}));
}

TEST(DummyPool, AsyncResultsCallbacksAndTimeouts) {
  mp::dummy::Pool pool(1);
  mp::dummy::Event release;
  auto blocked = pool.apply_async([release]() mutable { release.wait(); return 1; });
  EXPECT_FALSE(blocked.ready());
  EXPECT_THROW(blocked.get(10ms), mp::TimeoutError);
  EXPECT_THROW((void)blocked.successful(), std::logic_error);
  std::atomic<int> called{0};
  auto r = pool.apply_async([](int a, int b) { return a * b; }, std::tuple<int, int>(6, 7),
                            mp::dummy::Callbacks<int>{[&](const int& v) { called = v; }, {}});
  auto m = pool.map_async([](int x) { return x + 1; }, std::vector<int>{1, 2});
  release.set();
  EXPECT_EQ(blocked.get(10s), 1);
  EXPECT_EQ(r.get(10s), 42);
  EXPECT_EQ(called.load(), 42);
  EXPECT_TRUE(r.successful());
  EXPECT_EQ(m.get(10s), (std::vector<int>{2, 3}));
  std::atomic<int> voids{0};
  pool.map([&](int x) { voids += x; }, std::vector<int>{1, 2, 3});
  EXPECT_EQ(voids.load(), 6);
}

TEST(DummyPool, ErrorCallbacksReceiveTheTasksException) {
  mp::dummy::Pool pool(2);
  std::atomic<int> code{0};
  auto r = pool.map_async([](int x) -> int { throw Oops(x); }, std::vector<int>{9}, 0,
                          mp::dummy::Callbacks<std::vector<int>>{{}, [&](std::exception_ptr e) {
                                                                   try {
                                                                     std::rethrow_exception(e);
                                                                   } catch (const Oops& o) {
                                                                     code = o.code;
                                                                   }
                                                                 }});
  r.wait();
  EXPECT_FALSE(r.successful());
  EXPECT_EQ(code.load(), 9);  // the callback has run once the result is ready
}

TEST(DummyPool, CloseJoinAndTerminateFollowMpPool) {
  mp::dummy::Pool pool(1);
  EXPECT_THROW(pool.join(), std::logic_error);
  mp::dummy::Event release, running;
  auto first = pool.apply_async([release, running]() mutable {
    running.set();
    release.wait();
    return 1;
  });
  auto second = pool.apply_async([] { return 2; });
  ASSERT_TRUE(running.wait(10s));
  pool.terminate();  // fails the queued task; the running one cannot be stopped
  release.set();
  pool.join();  // waits for the running one
  EXPECT_EQ(first.get(10s), 1);
  EXPECT_THROW(second.get(10s), mp::ProcessError);
  EXPECT_THROW(pool.apply([] { return 0; }), std::logic_error);

  mp::dummy::Pool other(2);
  auto later = other.map_async([](int x) { return x; }, std::vector<int>{1, 2, 3});
  other.close();
  EXPECT_THROW(other.map([](int x) { return x; }, std::vector<int>{1}), std::logic_error);
  other.join();
  EXPECT_EQ(later.get(10s), (std::vector<int>{1, 2, 3}));
}

TEST(DummyPool, InitializerAndMaxtasksperchild) {
  std::atomic<int> inits{0};
  mp::dummy::PoolOptions options;
  options.processes = 2;
  options.initializer = [&] { ++inits; };
  options.maxtasksperchild = 1;
  {
    mp::dummy::Pool pool(options);
    auto out = pool.map([](int x) { return x * 3; }, std::vector<int>{1, 2, 3, 4, 5}, 1);
    EXPECT_EQ(out, (std::vector<int>{3, 6, 9, 12, 15}));
    pool.close();
    pool.join();
  }
  EXPECT_GE(inits.load(), 5);  // one worker per task
  EXPECT_THROW(mp::dummy::Pool(0), std::invalid_argument);
}

TEST(DummyPipe, IsTheRealPipeWorkingBetweenThreads) {
  auto [a, b] = mp::dummy::Pipe();
  mp::dummy::Process p([b = b]() mutable { b.send(std::string("hi")); });
  p.start();
  EXPECT_EQ(a.recv<std::string>(), "hi");
  p.join();
}

}  // namespace
