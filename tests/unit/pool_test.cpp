// mp::Pool, AsyncResult and IMapIterator under every start method.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

int square(int x) { return x * x; }
// For inputs too large to square in an int.
int twice_plus_one(int x) { return 2 * x + 1; }
int add(int a, int b) { return a + b; }
int my_pid(int) { return static_cast<int>(::getpid()); }
std::string repeat(std::string s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}
int throw_runtime(int) { throw std::runtime_error("runtime boom"); }
int throw_out_of_range(int) { throw std::out_of_range("range boom"); }
int throw_int(int) { throw 42; }
struct Custom : std::runtime_error {
  Custom() : std::runtime_error("custom failure") {}
};
int throw_custom(int) { throw Custom{}; }
int fail_on_odd(int x) {
  if (x % 2 == 1) throw std::invalid_argument("odd " + std::to_string(x));
  return x;
}
void do_nothing(int) {}
int sleep_then(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
struct Doubler {
  int operator()(int x) const { return 2 * x; }
};

int initialized = 0;
void init_worker() { ++initialized; }
int read_initialized(int) { return initialized; }

std::vector<int> iota(int n) {
  std::vector<int> xs(static_cast<std::size_t>(n));
  std::iota(xs.begin(), xs.end(), 0);
  return xs;
}

mp::PoolOptions options(const std::string& method, int processes) {
  mp::PoolOptions o;
  o.processes = processes;
  o.context = mp::get_context(method);
  return o;
}

class PoolTest : public testing::TestWithParam<std::string> {};

TEST_P(PoolTest, map_returns_every_result_in_order) {
  mp::Pool pool(options(GetParam(), 2));
  auto xs = iota(100000);
  auto r = pool.map(twice_plus_one, xs);
  ASSERT_EQ(r.size(), xs.size());
  for (std::size_t i = 0; i < xs.size(); i += 997) EXPECT_EQ(r[i], twice_plus_one(xs[i]));
  EXPECT_EQ(r.back(), twice_plus_one(99999));
}

TEST_P(PoolTest, explicit_chunk_sizes_and_an_empty_input_work) {
  mp::Pool pool(options(GetParam(), 2));
  auto xs = iota(50);
  for (std::size_t cs : {1u, 7u, 50u, 100u}) EXPECT_EQ(pool.map(square, xs, cs)[49], 49 * 49);
  EXPECT_TRUE(pool.map(square, std::vector<int>{}).empty());
}

TEST_P(PoolTest, imap_yields_in_order_with_chunksize_1_and_7) {
  mp::Pool pool(options(GetParam(), 3));
  auto xs = iota(500);
  for (std::size_t cs : {1u, 7u}) {
    int i = 0;
    for (int r : pool.imap(square, xs, cs)) {
      EXPECT_EQ(r, square(i));
      ++i;
    }
    EXPECT_EQ(i, 500);
  }
}

TEST_P(PoolTest, imap_unordered_yields_every_result_once) {
  mp::Pool pool(options(GetParam(), 3));
  auto xs = iota(500);
  std::multiset<int> seen;
  for (int r : pool.imap_unordered(square, xs, 3)) seen.insert(r);
  std::multiset<int> expected;
  for (int x : xs) expected.insert(square(x));
  EXPECT_EQ(seen, expected);
}

TEST_P(PoolTest, next_past_the_end_throws_stop_iteration_and_next_times_out) {
  mp::Pool pool(options(GetParam(), 1));
  auto it = pool.imap(square, std::vector<int>{3});
  EXPECT_EQ(it.next(30s), 9);
  EXPECT_THROW(it.next(), mp::StopIteration);
  auto slow = pool.imap(sleep_then, std::vector<int>{3000});
  EXPECT_THROW(slow.next(10ms), mp::TimeoutError);
}

TEST_P(PoolTest, starmap_apply_and_stateless_objects_work) {
  mp::Pool pool(options(GetParam(), 2));
  std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
  EXPECT_EQ(pool.starmap(add, pairs), (std::vector<int>{3, 7, 11}));
  EXPECT_EQ(pool.apply(add, 20, 22), 42);
  EXPECT_EQ(pool.apply(repeat, std::string("ab"), 3), "ababab");
  EXPECT_EQ(pool.map(Doubler{}, std::vector<int>{1, 2}), (std::vector<int>{2, 4}));
  EXPECT_EQ(pool.apply([](int a) { return a - 1; }, 10), 9);
  // Without arguments (each item is a std::tuple<>).
  EXPECT_EQ(pool.apply([] { return 7; }), 7);
  EXPECT_EQ(pool.apply_async([] { return 8; }).get(), 8);
  EXPECT_EQ(pool.starmap([] { return 9; }, std::vector<std::tuple<>>(3)), (std::vector<int>{9, 9, 9}));
}

TEST_P(PoolTest, void_tasks_complete) {
  mp::Pool pool(options(GetParam(), 2));
  pool.map(do_nothing, iota(100));
  auto r = pool.apply_async(do_nothing, 1);
  r.get();
  EXPECT_TRUE(r.successful());
  int n = 0;
  for (auto it = pool.imap(do_nothing, iota(10)); n < 10; ++n) it.next();
  EXPECT_EQ(n, 10);
}

TEST_P(PoolTest, standard_exceptions_keep_their_type_and_others_become_remote_errors) {
  mp::Pool pool(options(GetParam(), 2));
  try {
    pool.apply(throw_runtime, 1);
    FAIL();
  } catch (const mp::RemoteError&) {
    FAIL() << "a std::runtime_error must keep its type";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "runtime boom");
  }
  EXPECT_THROW(pool.apply(throw_out_of_range, 1), std::out_of_range);
  try {
    pool.apply(throw_custom, 1);
    FAIL();
  } catch (const mp::RemoteError& e) {
    EXPECT_NE(e.type_name().find("Custom"), std::string::npos);
    EXPECT_STREQ(e.what(), "custom failure");
    EXPECT_NE(e.traceback().find("PoolWorker-"), std::string::npos) << e.traceback();
  }
  try {
    pool.apply(throw_int, 1);
    FAIL();
  } catch (const mp::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "int");
  }
  EXPECT_THROW(pool.map(fail_on_odd, iota(10)), std::invalid_argument);
  // imap raises at the positions that failed and yields the others
  auto it = pool.imap(fail_on_odd, iota(4));
  EXPECT_EQ(it.next(), 0);
  EXPECT_THROW(it.next(), std::invalid_argument);
  EXPECT_EQ(it.next(), 2);
  EXPECT_THROW(it.next(), std::invalid_argument);
}

TEST_P(PoolTest, callbacks_run_in_the_parent_before_the_result_is_ready) {
  mp::Pool pool(options(GetParam(), 2));
  const int parent = static_cast<int>(::getpid());
  std::atomic<int> where{0}, value{0};
  auto r = pool.apply_async(square, std::tuple{5}, {.callback = [&](const int& v) {
                                                      where = static_cast<int>(::getpid());
                                                      value = v;
                                                    }});
  r.wait();
  EXPECT_EQ(where, parent);
  EXPECT_EQ(value, 25);
  std::atomic<bool> errored{false};
  auto e = pool.map_async(fail_on_odd, iota(5), 1,
                          {.error_callback = [&](std::exception_ptr p) {
                            try {
                              std::rethrow_exception(p);
                            } catch (const std::invalid_argument&) {
                              errored = true;
                            } catch (...) {
                            }
                          }});
  EXPECT_TRUE(e.wait(30s));
  EXPECT_TRUE(errored);
  EXPECT_FALSE(e.successful());
}

TEST_P(PoolTest, get_with_a_timeout_throws_and_successful_before_ready_is_a_logic_error) {
  mp::Pool pool(options(GetParam(), 1));
  auto r = pool.apply_async(sleep_then, 3000);
  EXPECT_THROW(r.get(10ms), mp::TimeoutError);
  EXPECT_FALSE(r.ready());
  EXPECT_THROW((void)r.successful(), std::logic_error);
  EXPECT_FALSE(r.wait(1ms));
  pool.terminate();
  // WorkerLostError when the task was running, ProcessError when it was still queued (a spawn
  // worker may not have started yet on a slow machine): both are ProcessErrors.
  EXPECT_THROW(r.get(), mp::ProcessError);
}

TEST_P(PoolTest, the_initializer_runs_once_per_worker_and_maxtasksperchild_recycles) {
  auto o = options(GetParam(), 2);
  o.initializer = init_worker;
  o.maxtasksperchild = 2;
  mp::Pool pool(o);
  auto seen = pool.map(read_initialized, std::vector<int>(10, 0), 1);
  EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int v) { return v == 1; }));
  auto pids = pool.map(my_pid, std::vector<int>(8, 0), 1);
  EXPECT_GE(std::set<int>(pids.begin(), pids.end()).size(), 4u);
  pool.close();
  pool.join();
}

TEST_P(PoolTest, close_refuses_new_work_and_join_waits_for_the_queued_work) {
  mp::Pool pool(options(GetParam(), 2));
  auto r = pool.map_async(square, iota(1000), 10);
  EXPECT_THROW(pool.join(), std::logic_error);
  pool.close();
  EXPECT_THROW(pool.apply(square, 1), std::logic_error);
  pool.join();
  EXPECT_TRUE(r.ready());
  EXPECT_EQ(r.get()[999], 999 * 999);
  EXPECT_TRUE(mp::active_children().empty());
}

INSTANTIATE_TEST_SUITE_P(StartMethods, PoolTest, testing::Values("fork", "spawn", "forkserver"),
                         [](const testing::TestParamInfo<std::string>& param) { return param.param; });

TEST(Pool, chunksize_zero_follows_python_and_processes_must_be_positive) {
  EXPECT_THROW(mp::Pool(0), std::invalid_argument);
  mp::Pool pool(2);
  EXPECT_EQ(pool.map(square, iota(17))[16], 256);
  EXPECT_THROW(pool.imap(square, iota(3), 0), std::invalid_argument);
}

TEST(Pool, empty_results_and_iterators_throw_logic_error) {
  mp::AsyncResult<int> r;
  EXPECT_THROW(r.get(), std::logic_error);
  mp::IMapIterator<int> it;
  EXPECT_THROW(it.next(), std::logic_error);
}

}  // namespace
