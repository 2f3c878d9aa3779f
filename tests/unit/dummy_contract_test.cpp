// The contract programs' scenarios (../shared/contract/*.cpp) rewritten for mp::dummy: the same
// calls on threads of this process. Where a scenario cannot exist for threads, a comment says
// why (a thread cannot exit() alone, be killed, or die holding a lock without its process).
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

using namespace std::chrono_literals;
namespace ns = mp::dummy;

namespace {

// ---- contract/process.cpp ----

struct Greeter : ns::Process {
  mp::Connection out;
  explicit Greeter(mp::Connection c) : out(c) {}
  void run() override { out.send(std::string("hello from ") + ns::current_process().name()); }
};

void throw_error() { throw std::runtime_error("boom (expected in this test)"); }

TEST(DummyContractProcess, main_thread_and_cpu_count) {
  EXPECT_EQ(ns::current_process().name(), "MainThread");
  EXPECT_GE(ns::cpu_count(), 1);
}

TEST(DummyContractProcess, any_callable_with_captures_runs_in_a_thread) {
  auto [a, b] = ns::Pipe();
  int secret = 42;
  ns::Process p([&, b = b]() mutable {
    b.send(secret + 1);
    b.send(ns::current_process().name());
  });
  EXPECT_FALSE(p.pid().has_value());
  p.start();
  EXPECT_TRUE(p.pid().has_value());
  EXPECT_EQ(a.recv<int>(), 43);
  EXPECT_EQ(a.recv<std::string>().rfind("Thread-", 0), 0u);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_FALSE(p.is_alive());
}

// Exit codes: an exception gives 1. exit(N) and signals end the whole process, so they have no
// thread counterpart; terminate() and kill() refuse instead.
TEST(DummyContractProcess, exit_codes_and_what_cannot_stop_a_thread) {
  ns::Process t(throw_error);
  t.start();
  t.join();
  EXPECT_EQ(t.exitcode(), 1);

  ns::Event stop;
  ns::Process s([stop]() mutable { stop.wait(); });
  s.start();
  EXPECT_FALSE(s.join(100ms));
  EXPECT_TRUE(s.is_alive());
  EXPECT_THROW(s.terminate(), std::logic_error);
  EXPECT_THROW(s.kill(), std::logic_error);
  stop.set();
  s.join();
  EXPECT_EQ(s.exitcode(), 0);
}

TEST(DummyContractProcess, run_overridden_by_a_subclass) {
  auto [a, b] = ns::Pipe();
  Greeter g(b);
  g.set_name("greeter");
  g.start();
  EXPECT_EQ(a.recv<std::string>(), "hello from greeter");
  g.join();
}

TEST(DummyContractProcess, active_children_and_daemon_flag) {
  ns::Event stop;
  ns::Process p([stop]() mutable { stop.wait(); });
  p.set_daemon(true);
  EXPECT_TRUE(p.daemon());
  p.start();
  EXPECT_EQ(ns::active_children().size(), 1u);
  stop.set();
  p.join();
  EXPECT_TRUE(ns::active_children().empty());
}

TEST(DummyContractProcess, starting_twice_is_a_logic_error) {
  EXPECT_THROW(
      [] {
        ns::Process p([] {});
        p.start();
        p.join();
        p.start();
      }(),
      std::logic_error);
}

// ---- contract/pipe.cpp ----

struct Point {
  double x = 0, y = 0;
  std::string label;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(x, y, label);
  }
  bool operator==(const Point&) const = default;
};

TEST(DummyContractPipe, an_echo_thread_round_trips_everything) {
  auto [a, b] = ns::Pipe();
  ns::Process echo([b = b]() mutable {
    for (;;) {
      mp::Bytes m;
      try {
        m = b.recv_bytes();
      } catch (const mp::EOFError&) {
        return;
      }
      b.send_bytes(m);
    }
  });
  echo.start();
  // (no b.close() here: a thread shares this process's one copy of b, which the echo thread uses)

  a.send(std::vector<int>{1, 2, 3});
  EXPECT_EQ(a.recv<std::vector<int>>(), (std::vector<int>{1, 2, 3}));
  a.send(std::map<std::string, double>{{"pi", 3.14159}});
  EXPECT_EQ((a.recv<std::map<std::string, double>>().at("pi")), 3.14159);
  a.send(std::tuple<int, std::string, bool>{1, "two", true});
  EXPECT_EQ((a.recv<std::tuple<int, std::string, bool>>()), (std::tuple<int, std::string, bool>{1, "two", true}));
  a.send(Point{1.5, -2.0, "p"});
  EXPECT_EQ(a.recv<Point>(), (Point{1.5, -2.0, "p"}));

  std::string text = "0123456789";
  a.send_bytes(std::span(reinterpret_cast<const std::byte*>(text.data()), text.size()), 2, 5);
  mp::Bytes got = a.recv_bytes();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(got.data()), got.size()), "23456");
  a.send_bytes("abcdef");
  std::vector<std::byte> buf(16);
  EXPECT_EQ(a.recv_bytes_into(buf, 4), 6u);
  EXPECT_EQ(buf[4], std::byte{'a'});
  a.send_bytes("too long for the buffer");
  std::vector<std::byte> small(4);
  try {
    a.recv_bytes_into(small);
    ADD_FAILURE() << "no BufferTooShort";
  } catch (const mp::BufferTooShort& e) {
    EXPECT_EQ(e.message().size(), 23u);
  }

  EXPECT_FALSE(a.poll());
  EXPECT_FALSE(a.poll(50ms));
  a.send(1);
  EXPECT_TRUE(a.poll(60s));
  EXPECT_EQ(a.recv<int>(), 1);

  mp::Bytes big(16 << 20, std::byte{7});
  a.send_bytes(big);
  EXPECT_EQ(a.recv_bytes(), big);

  a.close();
  EXPECT_TRUE(a.closed());
  echo.join();
  EXPECT_EQ(echo.exitcode(), 0);
}

TEST(DummyContractPipe, maxlength_eof_and_one_way_pipes) {
  {
    auto [c1, c2] = ns::Pipe();
    c2.send_bytes("0123456789");
    EXPECT_THROW(c1.recv_bytes(4), std::system_error);
    EXPECT_TRUE(!c1.readable() && c1.writable());
  }
  {
    auto [r, w] = ns::Pipe();
    w.close();
    EXPECT_THROW(r.recv<int>(), mp::EOFError);
  }
  {
    auto [r, w] = ns::Pipe(false);
    EXPECT_TRUE(r.readable() && !r.writable());
    std::thread writer([w = w]() mutable { w.send(std::string("one way")); });
    EXPECT_EQ(r.recv<std::string>(), "one way");
    writer.join();
  }
}

// ---- contract/queues.cpp ----

struct Job {
  int id = 0;
  std::vector<double> data;
};

void producer(ns::Queue<long> q, long from, long to) {
  for (long i = from; i < to; ++i) q.put(i);
}

TEST(DummyContractQueues, two_producers_every_item_exactly_once) {
  ns::Queue<long> q;
  const long n = 100000;
  ns::Process p1(producer, q, 0L, n / 2), p2(producer, q, n / 2, n);
  p1.start();
  p2.start();
  long sum = 0;
  for (long i = 0; i < n; ++i) sum += q.get();
  p1.join();
  p2.join();
  EXPECT_EQ(sum, n * (n - 1) / 2);
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.qsize(), 0u);
}

TEST(DummyContractQueues, last_words_bounded_queues_and_big_items) {
  {
    ns::Queue<std::string> q;
    ns::Process p([q]() mutable { q.put("last words"); });
    p.start();
    p.join();
    EXPECT_EQ(q.get(5s), "last words");
  }
  {
    ns::Queue<int> q(2);
    ns::Process filler([q]() mutable {
      q.put(1);
      q.put(2);
    });
    filler.start();
    filler.join();
    EXPECT_TRUE(q.full());
    EXPECT_THROW(q.put_nowait(3), mp::Full);
    EXPECT_THROW(q.put(3, 50ms), mp::Full);
    EXPECT_EQ(q.get(), 1);
    EXPECT_EQ(q.get_nowait(), 2);
    EXPECT_THROW(q.get_nowait(), mp::Empty);
    EXPECT_THROW(q.get(50ms), mp::Empty);
    EXPECT_THROW(q.get_no_wait(), mp::Empty);
  }
  {
    // Nothing is serialized on threads: Job needs no serialize().
    ns::Queue<Job> q;
    ns::Process p([q]() mutable {
      q.put(Job{1, std::vector<double>(1 << 20, 0.5)});
      q.put(Job{2, {}});
    });
    p.start();
    Job a = q.get(), b = q.get();
    p.join();
    EXPECT_TRUE(a.id == 1 && a.data.size() == (1u << 20) && a.data.back() == 0.5);
    EXPECT_TRUE(b.id == 2 && b.data.empty());
  }
}

TEST(DummyContractQueues, joinable_queue_and_simple_queue) {
  ns::JoinableQueue<int> jobs;
  ns::Value<long> total(0);
  ns::Process worker([jobs, total]() mutable {
    for (;;) {
      int j = jobs.get();
      if (j < 0) {
        jobs.task_done();
        return;
      }
      {
        std::lock_guard g(total.get_lock());
        total.get_obj() += j;
      }
      jobs.task_done();
    }
  });
  worker.start();
  for (int i = 1; i <= 100; ++i) jobs.put(i);
  jobs.join();
  EXPECT_EQ(total.value(), 5050);
  jobs.put(-1);
  worker.join();
  EXPECT_THROW(jobs.task_done(), std::logic_error);

  ns::SimpleQueue<std::string> q;
  EXPECT_TRUE(q.empty());
  ns::Process p([q]() mutable { q.put("simple"); });
  p.start();
  EXPECT_EQ(q.get(), "simple");
  p.join();
}

// ---- contract/synchronize.cpp ----

void add_many(ns::Lock lock, ns::Value<long> counter, ns::Event go, int n) {
  go.wait();
  for (int i = 0; i < n; ++i) {
    std::lock_guard guard(lock);
    long seen = counter.get_obj();
    std::this_thread::yield();
    counter.get_obj() = seen + 1;
  }
}

TEST(DummyContractSynchronize, a_lock_makes_read_modify_write_exact) {
  ns::Lock lock;
  ns::Value<long> counter(0, false);  // (the contract's RawValue: no lock of its own)
  ns::Event go;
  std::vector<ns::Process> ps;
  for (int i = 0; i < 4; ++i) ps.emplace_back(add_many, lock, counter, go, 20000);
  for (auto& p : ps) p.start();
  go.set();
  for (auto& p : ps) p.join();
  EXPECT_EQ(counter.value(), 80000);
}

TEST(DummyContractSynchronize, locks_semaphores_and_their_errors) {
  ns::Lock lock;
  EXPECT_TRUE(lock.acquire());
  EXPECT_FALSE(lock.acquire(false));
  EXPECT_FALSE(lock.acquire(true, 50ms));
  lock.release();
  EXPECT_TRUE(lock.try_lock());
  lock.unlock();

  ns::RLock r;
  EXPECT_TRUE(r.acquire());
  EXPECT_TRUE(r.acquire());
  r.release();
  r.release();
  EXPECT_THROW(r.release(), std::logic_error);

  ns::Semaphore s(2);
  EXPECT_TRUE(s.acquire());
  EXPECT_TRUE(s.acquire());
  EXPECT_FALSE(s.acquire(false));
  EXPECT_EQ(s.get_value(), 0);
  s.release();
  s.release();
  s.release();
  EXPECT_EQ(s.get_value(), 3);
  ns::BoundedSemaphore b(1);
  EXPECT_TRUE(b.acquire());
  b.release();
  EXPECT_THROW(b.release(), std::logic_error);
}

TEST(DummyContractSynchronize, event_condition_and_barrier_between_threads) {
  {
    ns::Event ev;
    EXPECT_FALSE(ev.is_set());
    EXPECT_FALSE(ev.wait(20ms));
    ns::Process p([ev]() mutable { ev.set(); });
    p.start();
    EXPECT_TRUE(ev.wait(60s));
    p.join();
    ev.clear();
    EXPECT_FALSE(ev.is_set());
  }
  {
    ns::Condition cond;
    ns::Value<int> ready(0, false);
    ns::Event waiting, done;
    ns::Process p([cond, ready, waiting, done]() mutable {
      cond.acquire();
      waiting.set();
      bool ok = cond.wait_for([&] { return ready.value() == 1; }, 120s);
      cond.release();
      if (ok) done.set();
    });
    p.start();
    EXPECT_TRUE(waiting.wait(60s));
    cond.acquire();
    ready.set_value(1);
    cond.notify_all();
    cond.release();
    EXPECT_TRUE(done.wait(60s));
    p.join();
  }
  {
    ns::Barrier barrier(3);
    ns::Value<int> arrived(0);
    std::atomic<int> early{0};
    auto arrive_and_wait = [&early](ns::Barrier bar, ns::Value<int> n) {
      {
        std::lock_guard g(n.get_lock());
        n.get_obj() += 1;
      }
      bar.wait(60s);
      if (n.value() != 3) ++early;
    };
    ns::Process p1(arrive_and_wait, barrier, arrived), p2(arrive_and_wait, barrier, arrived);
    p1.start();
    p2.start();
    arrive_and_wait(barrier, arrived);
    p1.join();
    p2.join();
    EXPECT_EQ(early.load(), 0);
    EXPECT_EQ(barrier.parties(), 3);
  }
  // (the contract's "a holder that dies": a thread cannot die alone while its process goes on)
}

// ---- contract/sharedctypes.cpp ----

void fill(ns::Value<double> num, ns::Array<int> arr) {
  num.set_value(3.1415927);
  for (std::size_t i = 0; i < arr.size(); ++i) arr[i] = -arr[i];
}

TEST(DummyContractSharedctypes, a_thread_negates_an_array_and_sets_a_double) {
  ns::Value<double> num(0.0);
  ns::Array<int> arr{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  ns::Process p(fill, num, arr);
  p.start();
  p.join();
  EXPECT_EQ(num.value(), 3.1415927);
  EXPECT_EQ(arr.to_vector(), (std::vector<int>{0, -1, -2, -3, -4, -5, -6, -7, -8, -9}));

  ns::Value<long> v(0);
  {
    std::lock_guard g(v.get_lock());
    v.get_obj() += 5;
  }
  EXPECT_EQ(v.value(), 5);
  ns::Value<long> unlocked(1, false);
  EXPECT_THROW(unlocked.get_lock(), std::logic_error);
  // (RawValue, RawArray, sharedctypes::copy/synchronized and SharedMemory exist for memory
  // shared between processes; threads share all memory, so mp::dummy has no counterpart.)
}

// ---- contract/pool.cpp ----

int square(int x) { return x * x; }
int add(int a, int b) { return a + b; }
int fail_on_three(int x) {
  if (x == 3) throw std::invalid_argument("three is not allowed");
  return x;
}
struct Custom : std::exception {
  const char* what() const noexcept override { return "custom failure"; }
};
int throw_custom(int) { throw Custom{}; }

TEST(DummyContractPool, map_imap_starmap_apply_and_results) {
  ns::Pool pool(2);
  std::vector<int> xs(1000);
  std::iota(xs.begin(), xs.end(), 0);
  auto squares = pool.map(square, xs);
  EXPECT_TRUE(squares.size() == 1000 && squares[999] == 998001);
  int offset = 1;  // threads: a capturing lambda is fine
  EXPECT_EQ(pool.map([offset](int x) { return x + offset; }, xs, 7)[0], 1);
  int i = 0;
  bool ordered = true;
  for (int r : pool.imap(square, xs)) ordered = ordered && r == square(i++);
  EXPECT_TRUE(ordered && i == 1000);
  std::multiset<int> unordered;
  for (int r : pool.imap_unordered(square, xs, 10)) unordered.insert(r);
  EXPECT_TRUE(unordered.size() == 1000 && *unordered.rbegin() == 998001);
  std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}};
  EXPECT_EQ(pool.starmap(add, pairs), (std::vector<int>{3, 7}));
  EXPECT_EQ(pool.apply(add, 20, 22), 42);
  auto r = pool.apply_async(square, 12);
  EXPECT_EQ(r.get(60s), 144);
  EXPECT_TRUE(r.ready() && r.successful());

  ns::Event gate;
  auto slow = pool.apply_async([gate]() mutable {
    gate.wait();
    return 1;
  });
  EXPECT_THROW(slow.get(10ms), mp::TimeoutError);
  EXPECT_FALSE(slow.ready());
  gate.set();
  slow.wait();
  EXPECT_TRUE(slow.successful());
  EXPECT_EQ(slow.get(), 1);
  pool.close();
  pool.join();
}

TEST(DummyContractPool, callbacks_and_exceptions) {
  ns::Pool pool(2);
  std::atomic<int> seen{0};
  auto r = pool.map_async(square, std::vector<int>{1, 2, 3}, 0,
                          {.callback = [&](const std::vector<int>& v) { seen = v[2]; }});
  r.wait();
  EXPECT_EQ(seen.load(), 9);
  EXPECT_EQ(r.get()[2], 9);
  std::atomic<bool> errored{false};
  auto e = pool.apply_async(fail_on_three, std::tuple{3}, {.error_callback = [&](std::exception_ptr) { errored = true; }});
  e.wait();
  EXPECT_TRUE(errored.load());
  EXPECT_FALSE(e.successful());
  EXPECT_THROW(pool.map(fail_on_three, std::vector<int>{1, 2, 3, 4}), std::invalid_argument);
  // Threads rethrow the very exception: Custom keeps its type (mp:: gives RemoteError).
  EXPECT_THROW(pool.apply(throw_custom, 1), Custom);
  // (the contract's "a worker killed mid-task": a thread cannot be killed alone)
  EXPECT_EQ(pool.apply(square, 9), 81);
  pool.close();
  pool.join();
}

thread_local int initialized = 0;

TEST(DummyContractPool, initializer_and_maxtasksperchild) {
  ns::PoolOptions o;
  o.processes = 1;
  o.initializer = [] { initialized = 7; };
  o.maxtasksperchild = 2;
  ns::Pool p(o);
  std::vector<int> six(6, 0);
  auto seen = p.map([](int) { return initialized; }, six, 1);
  EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int v) { return v == 7; }));
  auto ids = p.map([](int) { return std::this_thread::get_id(); }, six, 1);
  EXPECT_GE(std::set<std::thread::id>(ids.begin(), ids.end()).size(), 3u);
  p.terminate();
  p.join();
}

}  // namespace
