// The C++ half of the benchmarks: each case measures this library and the raw OS limit for the
// same operation in one run, and prints one JSON object per case on stdout. bench/run.py adds
// CPython's figures (bench/cpython_bench.py) and prints the table.
//
//   mp_bench [--quick] [--case NAME[,NAME...]]
//   mp_bench --list        (the case names, one per line, in the order they run)
#include <multiprocessing.hpp>

#if __has_include(<boost/interprocess/ipc/message_queue.hpp>)
#include <boost/interprocess/ipc/message_queue.hpp>
#endif

#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <future>
#include <thread>
#include <mutex>
#include <new>
#include <string>
#include <vector>

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
bool quick = false;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct PerOp {
  double ours, raw;
};

// Seconds per operation of ours and of the raw limit: `repeats` runs of each body(n), alternated
// so that both see the same machine weather; the median of each.
PerOp measure(int repeats, long n, const std::function<double(long)>& ours, const std::function<double(long)>& raw) {
  std::vector<double> o, r;
  for (int i = 0; i < repeats; ++i) {
    o.push_back(ours(n) / static_cast<double>(n));
    r.push_back(raw(n) / static_cast<double>(n));
  }
  return {median(o), median(r)};
}

// Runs body with this process (and the children it starts) on one CPU: a ping-pong then measures
// the cost of the messages and context switches, not where the scheduler happened to put the
// two processes (cross-CPU wake-ups on a VM vary by 5x from run to run).
template <class F>
auto on_one_cpu(F body) {
  cpu_set_t saved, one;
  sched_getaffinity(0, sizeof saved, &saved);
  CPU_ZERO(&one);
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &saved)) {
      CPU_SET(c, &one);
      break;
    }
  sched_setaffinity(0, sizeof one, &one);
  auto result = body();
  sched_setaffinity(0, sizeof saved, &saved);
  return result;
}

void emit(const char* name, const char* unit, double ours, double raw) {
  std::printf("{\"case\": \"%s\", \"unit\": \"%s\", \"ours\": %.6g, \"raw\": %.6g}\n", name, unit, ours, raw);
  std::fflush(stdout);
}

void write_full(int fd, const void* p, size_t n) {
  auto* c = static_cast<const char*>(p);
  while (n) {
    ssize_t k = write(fd, c, n);
    if (k <= 0) _exit(3);
    c += k;
    n -= static_cast<size_t>(k);
  }
}
bool read_full(int fd, void* p, size_t n) {
  auto* c = static_cast<char*>(p);
  while (n) {
    ssize_t k = read(fd, c, n);
    if (k <= 0) return false;
    c += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

// ---- raw socketpair: the OS limit for pipes ----
// A child echoes fixed-size messages on a SOCK_STREAM socketpair; the parent times round trips.
double raw_pingpong(long n, size_t size) {
  int sv[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
  pid_t pid = fork();
  std::vector<char> buf(size);
  if (pid == 0) {
    close(sv[0]);
    while (read_full(sv[1], buf.data(), size)) write_full(sv[1], buf.data(), size);
    _exit(0);
  }
  close(sv[1]);
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    write_full(sv[0], buf.data(), size);
    read_full(sv[0], buf.data(), size);
  }
  double t = seconds_since(t0);
  close(sv[0]);
  waitpid(pid, nullptr, 0);
  return t;
}

// One-way throughput: the parent writes n messages of `size`, the child reads them and acks once.
double raw_throughput(long n, size_t size) {
  int sv[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
  pid_t pid = fork();
  std::vector<char> buf(size);
  if (pid == 0) {
    close(sv[0]);
    for (long i = 0; i < n; ++i)
      if (!read_full(sv[1], buf.data(), size)) _exit(1);
    write_full(sv[1], "k", 1);
    _exit(0);
  }
  close(sv[1]);
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) write_full(sv[0], buf.data(), size);
  read_full(sv[0], buf.data(), 1);
  double t = seconds_since(t0);
  close(sv[0]);
  waitpid(pid, nullptr, 0);
  return t;
}

// ---- ours ----
double ours_pingpong(long n, size_t size) {
  auto [a, b] = mp::Pipe();
  mp::Process echo([a = a, b = b, size]() mutable {
    a.close();
    std::vector<std::byte> buf(size);
    try {
      for (;;) {
        b.recv_bytes_into(buf);
        b.send_bytes(buf);
      }
    } catch (const mp::EOFError&) {
    }
  });
  echo.start();
  b.close();
  std::vector<std::byte> msg(size), in(size);
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    a.send_bytes(msg);
    a.recv_bytes_into(in);
  }
  double t = seconds_since(t0);
  a.close();
  echo.join();
  return t;
}

double ours_throughput(long n, size_t size) {
  auto [a, b] = mp::Pipe();
  mp::Process sink([a = a, b = b, n, size]() mutable {
    a.close();
    std::vector<std::byte> buf(size);
    for (long i = 0; i < n; ++i) b.recv_bytes_into(buf);
    b.send_bytes("k");
  });
  sink.start();
  b.close();
  std::vector<std::byte> msg(size);
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) a.send_bytes(msg);
  a.recv_bytes();
  double t = seconds_since(t0);
  sink.join();
  return t;
}

struct Point {
  double x = 0, y = 0;
  int id = 0;
  template <class Archive> void serialize(Archive& ar) { ar(x, y, id); }
};

double ours_typed_pingpong(long n) {
  auto [a, b] = mp::Pipe();
  mp::Process echo([a = a, b = b]() mutable {
    a.close();
    try {
      for (;;) b.send(b.recv<Point>());
    } catch (const mp::EOFError&) {
    }
  });
  echo.start();
  b.close();
  Point p{1.5, 2.5, 7};
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    a.send(p);
    p = a.recv<Point>();
  }
  double t = seconds_since(t0);
  a.close();
  echo.join();
  return t;
}

void noop() {}

double ours_start_join(long n, const char* method) {
  auto ctx = mp::get_context(method);
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    mp::Process p(ctx, noop);
    p.start();
    p.join();
  }
  return seconds_since(t0);
}

double raw_fork_join(long n) {
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    waitpid(pid, nullptr, 0);
  }
  return seconds_since(t0);
}

double raw_spawn_join(long n) {
  char self[4096];
  ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  self[len] = 0;
  char arg0[] = "mp_bench", arg1[] = "--raw-exit";
  char* argv[] = {arg0, arg1, nullptr};
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    pid_t pid;
    posix_spawn(&pid, self, nullptr, nullptr, argv, environ);
    waitpid(pid, nullptr, 0);
  }
  return seconds_since(t0);
}

// ---- synchronization ----
// Uncontended acquire+release: ours (a Lock in shared memory) against std::mutex in one process.
double ours_lock_uncontended(long n) {
  mp::Lock lock;
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    lock.acquire();
    lock.release();
  }
  return seconds_since(t0);
}

// With a second thread alive, as in any program where a lock matters: glibc's mutex skips the
// bus-locked instruction while a process has a single thread (SINGLE_THREAD_P), a shortcut no lock
// shared with other processes can take (3 ns instead of 11 ns on the reference machine).
double raw_mutex_uncontended(long n) {
  std::promise<void> done;
  std::thread idle([f = done.get_future()]() mutable { f.wait(); });
  std::mutex m;
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    m.lock();
    m.unlock();
  }
  double t = seconds_since(t0);
  done.set_value();
  idle.join();
  return t;
}

// Two processes handing control back and forth through two Events: one round trip per
// iteration (the child clears `ping` before it sets `pong`, so the next ping is never lost).
double ours_event_pingpong(long n) {
  mp::Event ping, pong;
  mp::Process child([ping, pong, n]() mutable {
    for (long i = 0; i < n; ++i) {
      ping.wait();
      ping.clear();
      pong.set();
    }
  });
  child.start();
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    ping.set();
    pong.wait();
    pong.clear();
  }
  double t = seconds_since(t0);
  child.join();
  return t;
}

long futex_call(std::atomic<std::uint32_t>* word, int op, std::uint32_t value) {
  return syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), op, value, nullptr, nullptr, 0);
}

// The raw limit: one futex word on a shared page; the parent writes 1 and wakes, the child
// writes 0 and wakes; each sleeps in FUTEX_WAIT while the word is not its turn.
double raw_futex_pingpong(long n) {
  void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  auto* word = new (page) std::atomic<std::uint32_t>(0);
  pid_t pid = fork();
  if (pid == 0) {
    for (long i = 0; i < n; ++i) {
      while (word->load() != 1) futex_call(word, FUTEX_WAIT, 0);
      word->store(0);
      futex_call(word, FUTEX_WAKE, 1);
    }
    _exit(0);
  }
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    word->store(1);
    futex_call(word, FUTEX_WAKE, 1);
    while (word->load() != 0) futex_call(word, FUTEX_WAIT, 1);
  }
  double t = seconds_since(t0);
  waitpid(pid, nullptr, 0);
  munmap(page, 4096);
  return t;
}

// n increments in all of a shared long from 2 processes (n/2 each), each under the Value's lock.
double ours_value_locked_increment(long n) {
  mp::Value<long> v(0);
  auto body = [](mp::Value<long> value, long k) {
    for (long i = 0; i < k; ++i) {
      std::lock_guard g(value.get_lock());
      value.get_obj() += 1;
    }
  };
  mp::Process child(body, v, n / 2);
  child.start();
  auto t0 = Clock::now();
  body(v, n - n / 2);
  child.join();
  double t = seconds_since(t0);
  if (v.value() != n) std::fprintf(stderr, "value_locked_increment: %ld != %ld\n", v.value(), n);
  return t;
}

// The raw limit: the same increments as one atomic fetch_add each, on a shared page.
double raw_atomic_increment(long n) {
  void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  auto* counter = new (page) std::atomic<long>(0);
  auto t0 = Clock::now();
  pid_t pid = fork();
  long mine = pid == 0 ? n / 2 : n - n / 2;
  for (long i = 0; i < mine; ++i) counter->fetch_add(1);
  if (pid == 0) _exit(0);
  waitpid(pid, nullptr, 0);
  double t = seconds_since(t0);
  munmap(page, 4096);
  return t;
}

// ---- queues ----
// Small items (32-byte Bytes) from one producer child to the parent; the rate in messages/s.
double ours_queue_small_1to1(long n) {
  mp::Queue<mp::Bytes> q;
  mp::Process producer([q, n]() mutable {
    mp::Bytes item(32);
    for (long i = 0; i < n; ++i) q.put(item);
  });
  producer.start();
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) (void)q.get();
  double t = seconds_since(t0);
  producer.join();
  return t;
}

// Two producer children, two consumer children (n items in all); the parent times until both
// consumers report.
double ours_queue_small_2to2(long n) {
  mp::Queue<mp::Bytes> q;
  mp::Queue<long> done;
  auto produce = [](mp::Queue<mp::Bytes> qq, long k) {
    mp::Bytes item(32);
    for (long i = 0; i < k; ++i) qq.put(item);
    qq.put(mp::Bytes{});  // a stop mark for one consumer
  };
  auto consume = [](mp::Queue<mp::Bytes> qq, mp::Queue<long> d) {
    long got = 0;
    while (!qq.get().empty()) ++got;
    d.put(got);
  };
  mp::Process c1(consume, q, done), c2(consume, q, done);
  c1.start();
  c2.start();
  auto t0 = Clock::now();
  mp::Process p1(produce, q, n / 2), p2(produce, q, n - n / 2);
  p1.start();
  p2.start();
  long total = done.get() + done.get();
  double t = seconds_since(t0);
  for (auto* p : {&p1, &p2, &c1, &c2}) p->join();
  if (total != n) std::fprintf(stderr, "queue_small_2to2: %ld != %ld\n", total, n);
  return t;
}

// The raw limit for small messages: a single-producer single-consumer ring of 32-byte slots on a
// shared page, both sides spinning (no lock, no codec, no waiting in the kernel).
double raw_spsc_ring(long n) {
  constexpr long kSlots = 4096;
  struct Ring {
    alignas(64) std::atomic<long> head;
    alignas(64) std::atomic<long> tail;
    alignas(64) char slots[kSlots][32];
  };
  void* mem = mmap(nullptr, sizeof(Ring), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  auto* ring = new (mem) Ring{};
  pid_t pid = fork();
  char item[32] = {};
  if (pid == 0) {
    for (long i = 0; i < n; ++i) {
      while (i - ring->head.load(std::memory_order_acquire) >= kSlots) {
      }
      std::memcpy(ring->slots[i % kSlots], item, 32);
      ring->tail.store(i + 1, std::memory_order_release);
    }
    _exit(0);
  }
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    while (ring->tail.load(std::memory_order_acquire) <= i) {
    }
    std::memcpy(item, ring->slots[i % kSlots], 32);
    ring->head.store(i + 1, std::memory_order_release);
  }
  double t = seconds_since(t0);
  waitpid(pid, nullptr, 0);
  munmap(mem, sizeof(Ring));
  return t;
}

// 4 MiB items from a producer child to the parent; the rate in MiB/s.
double ours_queue_4mib(long n) {
  mp::Queue<mp::Bytes> q;
  mp::Process producer([q, n]() mutable {
    mp::Bytes item(4 << 20, std::byte{1});
    for (long i = 0; i < n; ++i) q.put(item);
  });
  producer.start();
  (void)q.get();  // the first one warms both sides up
  auto t0 = Clock::now();
  for (long i = 1; i < n; ++i) (void)q.get();
  double t = seconds_since(t0);
  producer.join();
  return t * static_cast<double>(n) / static_cast<double>(std::max(1L, n - 1)) / 4.0;
}

// The raw limit for large items: memcpy bandwidth of 4 MiB blocks in one process.
double raw_memcpy_4mib(long n) {
  std::vector<char> a(4 << 20, 1), b(4 << 20);
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    std::memcpy(b.data(), a.data(), a.size());
    asm volatile("" : : "r"(b.data()) : "memory");
  }
  return seconds_since(t0) / 4.0;
}

// A round trip through two queues: the parent puts a long, a child gets it and puts it back.
double ours_queue_pingpong(long n) {
  mp::Queue<long> ping, pong;
  mp::Process echo([ping, pong]() mutable {
    for (;;) {
      long v = ping.get();
      pong.put(v);
      if (v < 0) return;
    }
  });
  echo.start();
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    ping.put(i);
    (void)pong.get();
  }
  double t = seconds_since(t0);
  ping.put(-1);
  (void)pong.get();
  echo.join();
  return t;
}

// The raw limit: one word on a shared page, both sides spinning.
double raw_spin_pingpong(long n) {
  void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  auto* word = new (page) std::atomic<long>(0);
  pid_t pid = fork();
  if (pid == 0) {
    for (long i = 0; i < n; ++i) {
      while (word->load(std::memory_order_acquire) != 2 * i + 1) {
      }
      word->store(2 * i + 2, std::memory_order_release);
    }
    _exit(0);
  }
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    word->store(2 * i + 1, std::memory_order_release);
    while (word->load(std::memory_order_acquire) != 2 * i + 2) {
    }
  }
  double t = seconds_since(t0);
  waitpid(pid, nullptr, 0);
  munmap(page, 4096);
  return t;
}

// ---- pools ----
// Two workers (fork), started before the clock; the rate of tiny tasks in tasks/s, or one
// apply_async round trip. The raw limit: the same calls made in this process, or our own pipe
// round trip (what one task's request and answer cost at least).
int pool_tiny(int x) { return x + 1; }

double ours_pool_map(long n) {
  mp::Pool pool(2);
  std::vector<int> xs(static_cast<std::size_t>(n), 1);
  auto t0 = Clock::now();
  auto r = pool.map(pool_tiny, xs);
  double t = seconds_since(t0);
  if (r.size() != xs.size()) std::fprintf(stderr, "pool_map: wrong size\n");
  return t;
}

double raw_local_map(long n) {
  std::vector<int> xs(static_cast<std::size_t>(n), 1);
  auto t0 = Clock::now();
  std::vector<int> r;
  r.reserve(xs.size());
  for (int x : xs) r.push_back(pool_tiny(x));
  double t = seconds_since(t0);
  if (r.size() != xs.size()) std::fprintf(stderr, "local_map: wrong size\n");
  return t;
}

double ours_pool_imap(long n) {
  mp::Pool pool(2);
  std::vector<int> xs(static_cast<std::size_t>(n), 1);
  auto t0 = Clock::now();
  long sum = 0;
  for (int v : pool.imap(pool_tiny, xs, 1)) sum += v;
  double t = seconds_since(t0);
  if (sum != 2 * n) std::fprintf(stderr, "pool_imap: wrong sum\n");
  return t;
}

// The same imap with every option of issue 11 on but idle: time limits of an hour, a worker state,
// an exit hook, interrupt_on_sigint, and the progress line with insights (on /dev/null). Its "raw"
// column is the plain imap of the same run, so "of raw" is what the options cost when they are on.
mp::Bytes pool_exit_hook() { return mp::dumps(0); }
double ours_pool_imap_all_options(long n) {
  mp::PoolOptions o;
  o.processes = 2;
  o.soft_time_limit = std::chrono::hours(1);
  o.time_limit = std::chrono::hours(1);
  o.set_worker_state(std::vector<int>(1000, 1));
  o.worker_exit = pool_exit_hook;
  o.interrupt_on_sigint = true;
  FILE* devnull = std::fopen("/dev/null", "w");
  o.progress_fd = fileno(devnull);
  o.progress_insights = true;
  double t = 0;
  {
    mp::Pool pool(o);
    std::vector<int> xs(static_cast<std::size_t>(n), 1);
    auto t0 = Clock::now();
    long sum = 0;
    for (int v : pool.imap(pool_tiny, xs, 1)) sum += v;
    t = seconds_since(t0);
    if (sum != 2 * n) std::fprintf(stderr, "pool_imap_all_options: wrong sum\n");
  }
  std::fclose(devnull);
  return t;
}

double ours_pool_apply_async(long n) {
  mp::Pool pool(2);
  (void)pool.apply(pool_tiny, 0);
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) (void)pool.apply_async(pool_tiny, 1).get();
  return seconds_since(t0);
}

// Worker state: a task that reads a 100 MiB read-only table, the table sent once per worker with
// the pool (PoolOptions::set_worker_state; pool start-up included in the time) against the same
// table passed as an argument to every task (the "raw" column here).
constexpr std::size_t kStateBytes = 100u << 20;
std::uint64_t state_probe(int i) {
  const auto& table = mp::pool::worker_state<std::vector<std::uint8_t>>();
  return table[static_cast<std::size_t>(i) * 4096 % table.size()];
}
std::uint64_t argument_probe(std::vector<std::uint8_t> table, int i) {
  return table[static_cast<std::size_t>(i) * 4096 % table.size()];
}

double ours_pool_worker_state(long n) {
  std::vector<std::uint8_t> table(kStateBytes, 1);
  auto t0 = Clock::now();
  mp::PoolOptions o;
  o.processes = 2;
  o.context = mp::get_context("fork");
  o.set_worker_state(table);
  mp::Pool pool(o);
  std::uint64_t sum = 0;
  for (long i = 0; i < n; ++i) sum += pool.apply(state_probe, static_cast<int>(i));
  double t = seconds_since(t0);
  if (sum != static_cast<std::uint64_t>(n)) std::fprintf(stderr, "pool_worker_state: wrong sum\n");
  return t;
}

double ours_pool_state_as_argument(long n) {
  std::vector<std::uint8_t> table(kStateBytes, 1);
  auto t0 = Clock::now();
  mp::PoolOptions o;
  o.processes = 2;
  o.context = mp::get_context("fork");
  mp::Pool pool(o);
  std::uint64_t sum = 0;
  for (long i = 0; i < n; ++i) sum += pool.apply(argument_probe, table, static_cast<int>(i));
  double t = seconds_since(t0);
  if (sum != static_cast<std::uint64_t>(n)) std::fprintf(stderr, "pool_state_as_argument: wrong sum\n");
  return t;
}

double ours_pool_start(long n) {
  auto ctx = mp::get_context("fork");
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    mp::PoolOptions o;
    o.processes = 2;
    o.context = ctx;
    mp::Pool pool(o);
    pool.close();
    pool.join();
  }
  return seconds_since(t0);
}

#if __has_include(<boost/interprocess/ipc/message_queue.hpp>)
#define MP_BENCH_HAVE_BOOST 1
// Boost.Interprocess's message_queue (Debian's libboost-dev) with the same 32-byte messages, one
// producer child to the parent: the usual C++ answer to "a queue between processes".
double boost_queue_small_1to1(long n) {
  namespace bip = boost::interprocess;
  const std::string name = "bench_boost_mq_" + std::to_string(getpid());
  bip::message_queue::remove(name.c_str());
  bip::message_queue mq(bip::create_only, name.c_str(), 4096, 32);
  pid_t pid = fork();
  if (pid == 0) {
    char item[32] = {};
    for (long i = 0; i < n; ++i) mq.send(item, sizeof item, 0);
    _exit(0);
  }
  bip::message_queue::remove(name.c_str());  // both processes have it mapped: the name can go
  char item[32];
  bip::message_queue::size_type got = 0;
  unsigned priority = 0;
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) mq.receive(item, sizeof item, got, priority);
  double t = seconds_since(t0);
  waitpid(pid, nullptr, 0);
  return t;
}
#endif

// A manager's proxied dict: d["k"] = i; d["k"] per operation (two round trips to the manager
// process, as Python's DictProxy makes them). The manager is started before the clock runs.
double ours_manager_dict_set_get(long n) {
  mp::SyncManager m = mp::Manager();
  auto d = m.dict<std::string, long>();
  d.set("k", 0);
  (void)d.get("k");  // the proxy's channel is open
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    d.set("k", i);
    if (d.get("k") != i) std::abort();
  }
  return seconds_since(t0);
}

// A manager started (its server in a forked child, which reports its address) and shut down
// (the 'shutdown' request, then the child reaped), n times.
double ours_manager_start_shutdown(long n) {
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    mp::SyncManager m = mp::Manager();
    m.shutdown();
  }
  return seconds_since(t0);
}

}  // namespace

namespace {
bool list_only = false;  // --list: name the cases, run none
}  // namespace

// `only` is empty (every case) or a comma-separated list of case names (bench_listener.cpp uses it too).
bool bench_case_selected(const std::string& only, const char* name) {
  if (list_only) {
    std::printf("%s\n", name);
    return false;
  }
  if (only.empty()) return true;
  for (std::size_t start = 0;;) {
    const std::size_t end = only.find(',', start);
    if (only.compare(start, end == std::string::npos ? std::string::npos : end - start, name) == 0) return true;
    if (end == std::string::npos) return false;
    start = end + 1;
  }
}

namespace bench_listener {
void run(const std::string& only, bool quick);
}

namespace {
bool selected(const std::string& only, const char* name) { return bench_case_selected(only, name); }
}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--raw-exit") == 0) return 0;  // the raw posix_spawn target
  mp::freeze_support(argc, argv);
  std::string only;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    if (std::strcmp(argv[i], "--case") == 0 && i + 1 < argc) only = argv[++i];
    if (std::strcmp(argv[i], "--list") == 0) list_only = true;
  }
  const int reps = quick ? 1 : 5;
  auto scale = [&](long n) { return quick ? std::max(1L, n / 50) : n; };

  auto report = [](const char* name, const char* unit, double scale_to_unit, PerOp m, bool rate) {
    if (rate)
      emit(name, unit, scale_to_unit / m.ours, scale_to_unit / m.raw);
    else
      emit(name, unit, scale_to_unit * m.ours, scale_to_unit * m.raw);
  };
  auto ours_pp = [](long k) { return ours_pingpong(k, 8); };
  auto raw_pp = [](long k) { return raw_pingpong(k, 8); };
  if (selected(only, "pipe_pingpong_8B"))
    report("pipe_pingpong_8B", "us/roundtrip", 1e6, measure(reps, scale(20000), ours_pp, raw_pp), false);
  if (selected(only, "pipe_pingpong_8B_1cpu"))
    report("pipe_pingpong_8B_1cpu", "us/roundtrip", 1e6,
           on_one_cpu([&] { return measure(reps, scale(20000), ours_pp, raw_pp); }), false);
  if (selected(only, "pipe_throughput_1MiB"))
    report("pipe_throughput_1MiB", "MiB/s", 1.0,
           measure(reps, scale(2000), [](long k) { return ours_throughput(k, 1 << 20); },
                   [](long k) { return raw_throughput(k, 1 << 20); }),
           true);
  // The raw limit of a typed send is our own untyped round trip of the same 24 bytes: what the
  // codec costs on top. On one CPU, for the same reason as the ping-pong.
  if (selected(only, "pipe_typed_struct_1cpu"))
    report("pipe_typed_struct_1cpu", "us/roundtrip", 1e6, on_one_cpu([&] {
             return measure(reps, scale(20000), ours_typed_pingpong, [](long k) { return ours_pingpong(k, 24); });
           }),
           false);
  if (selected(only, "process_fork"))
    report("process_fork", "ms/start+join", 1e3,
           measure(reps, scale(500), [](long k) { return ours_start_join(k, "fork"); }, raw_fork_join), false);
  if (selected(only, "process_spawn"))
    report("process_spawn", "ms/start+join", 1e3,
           measure(reps, scale(50), [](long k) { return ours_start_join(k, "spawn"); }, raw_spawn_join), false);
  if (selected(only, "process_forkserver")) {
    ours_start_join(1, "forkserver");  // the server starts once per program: not part of the figure
    report("process_forkserver", "ms/start+join", 1e3,
           measure(reps, scale(200), [](long k) { return ours_start_join(k, "forkserver"); }, raw_fork_join), false);
  }
  if (selected(only, "lock_uncontended"))
    report("lock_uncontended", "ns/acq+rel", 1e9, measure(reps, scale(5000000), ours_lock_uncontended, raw_mutex_uncontended),
           false);
  if (selected(only, "lock_pingpong_2proc"))
    report("lock_pingpong_2proc", "us/roundtrip", 1e6, measure(reps, scale(50000), ours_event_pingpong, raw_futex_pingpong),
           false);
  // The same hand-off with both processes on one CPU: what it costs when spinning cannot help.
  if (selected(only, "lock_pingpong_2proc_1cpu"))
    report("lock_pingpong_2proc_1cpu", "us/roundtrip", 1e6,
           on_one_cpu([&] { return measure(reps, scale(50000), ours_event_pingpong, raw_futex_pingpong); }), false);
  if (selected(only, "value_locked_increment_2proc"))
    report("value_locked_increment_2proc", "Mincr/s", 1e-6,
           measure(reps, scale(4000000), ours_value_locked_increment, raw_atomic_increment), true);
  if (selected(only, "queue_small_1to1"))
    report("queue_small_1to1", "Mmsg/s", 1e-6, measure(reps, scale(2000000), ours_queue_small_1to1, raw_spsc_ring), true);
#ifdef MP_BENCH_HAVE_BOOST
  // Side by side with Boost.Interprocess: here the "raw" column is Boost's message_queue.
  if (selected(only, "queue_small_1to1_boost"))
    report("queue_small_1to1_boost", "Mmsg/s", 1e-6,
           measure(reps, scale(2000000), ours_queue_small_1to1, boost_queue_small_1to1), true);
  // The same with both processes on one CPU: which placement the scheduler picks decides the free
  // case (a CPU each: Boost's lock is contended; one CPU: it is not), so both are reported.
  if (selected(only, "queue_small_1to1_boost_1cpu"))
    report("queue_small_1to1_boost_1cpu", "Mmsg/s", 1e-6,
           on_one_cpu([&] { return measure(reps, scale(2000000), ours_queue_small_1to1, boost_queue_small_1to1); }),
           true);
#endif
  if (selected(only, "queue_small_2to2"))
    report("queue_small_2to2", "Mmsg/s", 1e-6, measure(reps, scale(2000000), ours_queue_small_2to2, raw_spsc_ring), true);
  if (selected(only, "queue_4MiB"))
    report("queue_4MiB", "MiB/s", 1.0, measure(reps, scale(500), ours_queue_4mib, raw_memcpy_4mib), true);
  if (selected(only, "queue_pingpong"))
    report("queue_pingpong", "us/roundtrip", 1e6, measure(reps, scale(100000), ours_queue_pingpong, raw_spin_pingpong),
           false);
  if (selected(only, "pool_map_10k_tiny"))
    report("pool_map_10k_tiny", "Mtasks/s", 1e-6,
           measure(reps, 1, [&](long) { return ours_pool_map(scale(10000)) / static_cast<double>(scale(10000)); },
                   [&](long) { return raw_local_map(scale(10000)) / static_cast<double>(scale(10000)); }),
           true);
  if (selected(only, "pool_map_1M_tiny"))
    report("pool_map_1M_tiny", "Mtasks/s", 1e-6,
           measure(reps, 1, [&](long) { return ours_pool_map(scale(1000000)) / static_cast<double>(scale(1000000)); },
                   [&](long) { return raw_local_map(scale(1000000)) / static_cast<double>(scale(1000000)); }),
           true);
  if (selected(only, "pool_imap_chunksize1_100k"))
    report("pool_imap_chunksize1_100k", "ktasks/s", 1e-3,
           measure(reps, 1, [&](long) { return ours_pool_imap(scale(100000)) / static_cast<double>(scale(100000)); },
                   [&](long) { return ours_pingpong(scale(100000), 8) / static_cast<double>(scale(100000)); }),
           true);
  if (selected(only, "pool_imap_chunksize1_100k_all_options"))
    report("pool_imap_chunksize1_100k_all_options", "ktasks/s", 1e-3,
           measure(reps, 1,
                   [&](long) { return ours_pool_imap_all_options(scale(100000)) / static_cast<double>(scale(100000)); },
                   [&](long) { return ours_pool_imap(scale(100000)) / static_cast<double>(scale(100000)); }),
           true);
  if (selected(only, "pool_worker_state_100MiB"))
    report("pool_worker_state_100MiB", "ms/task", 1e3,
           measure(reps, scale(20), ours_pool_worker_state, ours_pool_state_as_argument), false);
  if (selected(only, "pool_apply_async_roundtrip"))
    report("pool_apply_async_roundtrip", "us/roundtrip", 1e6,
           measure(reps, scale(5000), ours_pool_apply_async, [](long k) { return ours_pingpong(k, 8); }), false);
  if (selected(only, "pool_start_close_join_fork"))
    report("pool_start_close_join_fork", "ms/pool", 1e3, measure(reps, scale(100), ours_pool_start, raw_fork_join),
           false);
  // The raw limit: the same two 8-byte round trips between two processes over a raw pipe.
  if (selected(only, "manager_dict_set_get"))
    report("manager_dict_set_get", "us/set+get", 1e6,
           measure(reps, scale(20000), ours_manager_dict_set_get, [](long k) { return raw_pingpong(2 * k, 8); }), false);
  // The raw limit: a fork and join of a child that does nothing.
  if (selected(only, "manager_start_shutdown"))
    report("manager_start_shutdown", "ms/start+stop", 1e3,
           measure(reps, scale(200), ours_manager_start_shutdown, raw_fork_join), false);
  bench_listener::run(only, quick);
  return 0;
}
