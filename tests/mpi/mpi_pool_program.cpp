// Pools of the "mpi" start method, run under mpirun by tests/mpi/CMakeLists.txt (one scenario per
// test: the program's first argument). Rank 0 runs the scenario; the other ranks are the pool's
// workers (mp::freeze_support never returns there). Prints "N passed, N failed" and exits 0
// only when nothing failed.
//
// The "contract" scenario is the contract program pool.cpp (../shared/contract) with the "mpi"
// context, less what MPI cannot do: a rank killed mid-task ends the whole MPI job (Open MPI), so
// there is no die_on_five, and ranks are not replaced, so maxtasksperchild gives no new pids.
#include <multiprocessing.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <unistd.h>

using namespace std::chrono_literals;

namespace {

int g_passed = 0;
int g_failed = 0;

#define CHECK(cond)                                                                    \
  do {                                                                                 \
    if (cond) {                                                                        \
      ++g_passed;                                                                      \
    } else {                                                                           \
      ++g_failed;                                                                      \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
    }                                                                                  \
  } while (0)

#define CHECK_THROWS(type, expr)                                                       \
  do {                                                                                 \
    try {                                                                              \
      (void)(expr);                                                                    \
      ++g_failed;                                                                      \
      std::fprintf(stderr, "%s:%d: no %s from %s\n", __FILE__, __LINE__, #type, #expr); \
    } catch (const type&) {                                                            \
      ++g_passed;                                                                      \
    } catch (const std::exception& e) {                                                \
      ++g_failed;                                                                      \
      std::fprintf(stderr, "%s:%d: %s threw another exception: %s\n", __FILE__, __LINE__, #expr, e.what()); \
    }                                                                                  \
  } while (0)

int square(int x) { return x * x; }
int add(int a, int b) { return a + b; }
int my_pid(int) { return static_cast<int>(getpid()); }
int fail_on_three(int x) {
  if (x == 3) throw std::invalid_argument("three is not allowed");
  return x;
}
struct Custom : std::exception {
  const char* what() const noexcept override { return "custom failure"; }
};
int throw_custom(int) { throw Custom{}; }
int throw_out_of_range(int x) {
  if (x % 1000 == 999) throw std::out_of_range("index " + std::to_string(x));
  return x;
}
int wait_for_go(std::string segment) {
  mp::shared_memory::SharedMemory gate(segment);
  while (std::atomic_ref(gate.buf()[0]).load() == std::byte{0}) std::this_thread::sleep_for(1ms);
  gate.close();
  return 1;
}
// The same, saying it started (byte 1), so the parent knows the task is running on a rank.
int flag_and_wait_for_go(std::string segment) {
  mp::shared_memory::SharedMemory gate(segment);
  std::atomic_ref(gate.buf()[1]).store(std::byte{1});
  while (std::atomic_ref(gate.buf()[0]).load() == std::byte{0}) std::this_thread::sleep_for(1ms);
  gate.close();
  return 1;
}
int initialized = 0;
void init_worker() { initialized = 7; }
int read_initialized(int) { return initialized; }
std::uint64_t byte_sum(const std::vector<std::uint8_t>& v) {
  std::uint64_t s = 0;
  for (auto b : v) s += b;
  return s;
}
std::vector<std::uint8_t> make_bytes(std::size_t n) {
  std::vector<std::uint8_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::uint8_t>(i * 7);
  return v;
}
std::string describe(int x) { return std::to_string(x) + ":" + std::to_string(x * x); }

mp::Context mpi() { return mp::get_context("mpi"); }

void contract() {
  auto methods = mp::get_all_start_methods();
  CHECK(std::find(methods.begin(), methods.end(), "mpi") != methods.end());
  {
    mp::Pool pool(mp::PoolOptions{.processes = 2, .context = mpi()});

    std::vector<int> xs(1000);
    std::iota(xs.begin(), xs.end(), 0);
    auto squares = pool.map(square, xs);
    CHECK(squares.size() == 1000 && squares[999] == 998001);
    CHECK(pool.map([](int x) { return x + 1; }, xs, 7)[0] == 1);

    int i = 0;
    bool ordered = true;
    for (int r : pool.imap(square, xs)) ordered = ordered && r == square(i++);
    CHECK(ordered && i == 1000);

    std::multiset<int> unordered;
    for (int r : pool.imap_unordered(square, xs, 10)) unordered.insert(r);
    CHECK(unordered.size() == 1000 && *unordered.rbegin() == 998001);

    std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}};
    CHECK((pool.starmap(add, pairs) == std::vector<int>{3, 7}));

    CHECK(pool.apply(add, 20, 22) == 42);
    auto r = pool.apply_async(square, 12);
    CHECK(r.get(60s) == 144);
    CHECK(r.ready() && r.successful());

    // The tasks run in other processes: the ranks (this test runs them on one host).
    auto pids = pool.map(my_pid, std::vector<int>(64, 0), 1);
    CHECK(std::find(pids.begin(), pids.end(), static_cast<int>(getpid())) == pids.end());

    mp::shared_memory::SharedMemory gate(std::nullopt, true, 1);
    auto slow = pool.apply_async(wait_for_go, gate.name());
    CHECK_THROWS(mp::TimeoutError, slow.get(10ms));
    CHECK(!slow.ready());
    std::atomic_ref(gate.buf()[0]).store(std::byte{1});
    slow.wait();
    CHECK(slow.successful());
    CHECK(slow.get() == 1);
    gate.close();
    gate.unlink();
  }

  mp::set_start_method("mpi", true);
  mp::Pool pool(2);
  {
    std::atomic<int> seen{0};
    auto r = pool.map_async(square, std::vector<int>{1, 2, 3}, 0,
                            {.callback = [&](const std::vector<int>& v) { seen = v[2]; }});
    r.wait();
    CHECK(seen == 9);
    CHECK(r.get()[2] == 9);

    std::atomic<bool> errored{false};
    auto e = pool.apply_async(fail_on_three, std::tuple{3}, {.error_callback = [&](std::exception_ptr) { errored = true; }});
    e.wait();
    CHECK(errored);
    CHECK(!e.successful());
  }
  CHECK_THROWS(std::invalid_argument, pool.map(fail_on_three, std::vector<int>{1, 2, 3, 4}));
  try {
    pool.apply(throw_custom, 1);
    CHECK(false);
  } catch (const mp::RemoteError& e) {
    CHECK(std::string(e.what()).find("custom failure") != std::string::npos);
    CHECK(e.type_name().find("Custom") != std::string::npos);
  }
  CHECK(pool.apply(square, 9) == 81);
  pool.close();
  pool.join();
  CHECK_THROWS(std::logic_error, pool.apply(square, 1));

  {
    mp::Pool p(mp::PoolOptions{.processes = 1, .initializer = init_worker, .maxtasksperchild = 2});
    std::vector<int> six(6, 0);
    auto seen = p.map(read_initialized, six, 1);
    CHECK(std::all_of(seen.begin(), seen.end(), [](int v) { return v == 7; }));
    p.terminate();
    p.join();
  }
}

void map_100k() {
  mp::Pool pool(mp::PoolOptions{.context = mpi()});
  std::vector<int> xs(100000);
  std::iota(xs.begin(), xs.end(), 0);
  auto out = pool.map(square, xs);
  bool ok = out.size() == xs.size();
  for (std::size_t i = 0; ok && i < xs.size(); ++i) ok = out[i] == square(xs[i]);
  CHECK(ok);
  auto small = pool.map(square, xs, 1000);
  CHECK(small == out);
  std::vector<std::string> strings = pool.map(describe, std::vector<int>(xs.begin(), xs.begin() + 20000));
  CHECK(strings.size() == 20000 && strings[12345] == describe(12345));
}

void imap_ordering() {
  mp::Pool pool(mp::PoolOptions{.processes = 2, .context = mpi()});
  std::vector<int> xs(20000);
  std::iota(xs.begin(), xs.end(), 0);
  for (std::size_t chunksize : {1, 3, 100}) {
    int i = 0;
    bool ordered = true;
    for (int r : pool.imap(square, xs, chunksize)) ordered = ordered && r == square(i++);
    CHECK(ordered && i == 20000);
    std::vector<int> got;
    for (int r : pool.imap_unordered(square, xs, chunksize)) got.push_back(r);
    std::sort(got.begin(), got.end());
    std::vector<int> want(xs.size());
    std::transform(xs.begin(), xs.end(), want.begin(), square);
    CHECK(got == want);
  }
  // The input of an imap is read as the results are consumed, also after close().
  auto it = pool.imap(square, xs, 1);
  pool.close();
  int n = 0;
  bool ordered = true;
  for (int r : it) ordered = ordered && r == square(n++);
  CHECK(ordered && n == 20000);
  pool.join();
}

void exceptions() {
  mp::Pool pool(mp::PoolOptions{.processes = 2, .context = mpi()});
  CHECK_THROWS(std::invalid_argument, pool.apply(fail_on_three, 3));
  std::vector<int> xs(5000);
  std::iota(xs.begin(), xs.end(), 0);
  CHECK_THROWS(std::out_of_range, pool.map(throw_out_of_range, xs, 10));
  try {
    pool.apply(throw_custom, 1);
    CHECK(false);
  } catch (const mp::RemoteError& e) {
    CHECK(e.type_name().find("Custom") != std::string::npos);
    CHECK(std::string(e.what()).find("custom failure") != std::string::npos);
  }
  // imap: each item's own exception, in its place
  int i = 0, errors = 0;
  auto it = pool.imap(throw_out_of_range, std::vector<int>(xs.begin(), xs.begin() + 3000), 7);
  while (true) {
    try {
      int v = it.next();
      CHECK(v == i);
    } catch (const mp::StopIteration&) {
      break;
    } catch (const std::out_of_range&) {
      ++errors;
      CHECK(i % 1000 == 999);
    }
    ++i;
  }
  CHECK(errors == 3 && i == 3000);
  CHECK(pool.apply(square, 5) == 25);  // the pool is still usable
}

void big_argument() {
  mp::Pool pool(mp::PoolOptions{.processes = 2, .context = mpi()});
  auto big = make_bytes(std::size_t{256} << 20);
  std::uint64_t want = byte_sum(big);
  CHECK(pool.apply(byte_sum, big) == want);
  big.clear();
  big.shrink_to_fit();
  auto back = pool.apply(make_bytes, std::size_t{256} << 20);  // a 256 MiB result
  CHECK(back.size() == (std::size_t{256} << 20) && back[12345] == static_cast<std::uint8_t>(12345 * 7));
}

void terminate() {
  mp::Pool pool(mp::PoolOptions{.processes = 2, .context = mpi()});
  mp::shared_memory::SharedMemory gate(std::nullopt, true, 2);
  auto running = pool.apply_async(flag_and_wait_for_go, gate.name());
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (std::atomic_ref(gate.buf()[1]).load() == std::byte{0} && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(1ms);
  CHECK(std::atomic_ref(gate.buf()[1]).load() == std::byte{1});
  auto queued = pool.map_async(square, std::vector<int>(100, 2), 1);
  auto start = std::chrono::steady_clock::now();
  pool.terminate();
  CHECK(std::chrono::steady_clock::now() - start < 5s);  // promptly, though a task still runs
  CHECK_THROWS(mp::WorkerLostError, running.get(5s));
  try {
    queued.get(5s);
  } catch (const mp::ProcessError&) {
    ++g_passed;  // WorkerLostError is a ProcessError too: chunks running or not yet run
  } catch (...) {
    ++g_failed;
  }
  pool.join();
  CHECK_THROWS(std::logic_error, pool.apply(square, 1));
  // Let the rank finish its task, so that it stops at exit; another pool works meanwhile.
  std::atomic_ref(gate.buf()[0]).store(std::byte{1});
  mp::Pool again(mp::PoolOptions{.processes = 2, .context = mpi()});
  CHECK(again.apply(square, 6) == 36);
  gate.close();
  gate.unlink();
}

// Pools share the worker ranks; a pool may ask for more processes than there are ranks.
void shared_ranks() {
  mp::Pool a(mp::PoolOptions{.processes = 2, .context = mpi()});
  mp::Pool b(mp::PoolOptions{.processes = 5, .context = mpi()});
  CHECK(b.apply(square, 3) == 9);
  std::vector<int> xs(3000);
  std::iota(xs.begin(), xs.end(), 0);
  auto ra = a.map_async(square, xs, 10);
  auto rb = b.map_async(describe, xs, 7);
  auto pids = b.map(my_pid, std::vector<int>(50, 0), 1);
  CHECK(std::set<int>(pids.begin(), pids.end()).size() <= 2);  // 5 "processes" on 2 ranks
  CHECK(ra.get(60s)[2999] == square(2999));
  CHECK(rb.get(60s)[2999] == describe(2999));
  a.close();
  a.join();
  CHECK(b.apply(add, 1, 2) == 3);  // b goes on after a ended
}

// Alone (no mpirun), a pool whose workers cannot be spawned says how to launch.
void spawn_error() {
  mp::set_executable("/nonexistent/program");
  try {
    mp::Pool pool(mp::PoolOptions{.processes = 2, .context = mpi()});
    CHECK(false);
  } catch (const mp::ProcessError& e) {
    CHECK(std::string(e.what()).find("mpirun -n 3") != std::string::npos);
  }
}

// The same lines with and without mpirun (the same_output test compares them).
void output() {
  mp::set_start_method("mpi");
  mp::Pool pool(2);
  std::vector<int> xs(50);
  std::iota(xs.begin(), xs.end(), -10);
  for (auto& s : pool.map(describe, xs)) std::printf("%s\n", s.c_str());
  for (int v : pool.imap(square, xs, 3)) std::printf("%d ", v);
  std::printf("\n");
  try {
    pool.apply(fail_on_three, 3);
  } catch (const std::invalid_argument& e) {
    std::printf("invalid_argument: %s\n", e.what());
  }
  std::printf("%d\n", pool.apply(add, 40, 2));
  ++g_passed;
}

}  // namespace

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  std::string scenario = argc > 1 ? argv[1] : "contract";
  try {
    if (scenario == "contract") {
      contract();
    } else if (scenario == "map_100k") {
      map_100k();
    } else if (scenario == "imap") {
      imap_ordering();
    } else if (scenario == "exceptions") {
      exceptions();
    } else if (scenario == "big_argument") {
      big_argument();
    } else if (scenario == "terminate") {
      terminate();
    } else if (scenario == "shared_ranks") {
      shared_ranks();
    } else if (scenario == "spawn_error") {
      spawn_error();
    } else if (scenario == "output") {
      output();
      return g_failed == 0 ? 0 : 1;
    } else {
      std::fprintf(stderr, "unknown scenario %s\n", scenario.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "scenario %s threw: %s\n", scenario.c_str(), e.what());
    ++g_failed;
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
