// mp::Pool beyond Python's: lazy bounded imap input, per-task time limits, worker ids, worker
// state and exit hooks, insights, and Ctrl-C, under every start method.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <csignal>
#include <fstream>
#include <numeric>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

int plus_one(int x) { return x + 1; }
int square(int x) { return x * x; }
int forever(int) {
  while (true) std::this_thread::sleep_for(1s);
}
int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
// Spins until the soft limit is signalled (10 s at most); 1 when it was.
int until_soft_limit(int) {
  auto give_up = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < give_up) {
    if (mp::pool::soft_time_limit_exceeded()) return 1;
    std::this_thread::sleep_for(1ms);
  }
  return 0;
}
// Polls with check_soft_time_limit(), which throws SoftTimeLimitExceeded.
int checks_soft_limit(int) {
  auto give_up = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < give_up) {
    mp::pool::check_soft_time_limit();
    std::this_thread::sleep_for(1ms);
  }
  return 0;
}
int my_worker_id(int) { return mp::pool::worker_id(); }
std::size_t size_of(const std::vector<int>& v) { return v.size(); }
int kill_on_5(int x) {
  if (x == 5) ::raise(SIGKILL);
  return mp::pool::worker_id();
}
int state_at(int i) {
  const auto& v = mp::pool::worker_state<std::vector<int>>();
  return v[static_cast<std::size_t>(i)] + static_cast<int>(v.size());
}
int wrong_state_type(int) { return static_cast<int>(mp::pool::worker_state<std::string>().size()); }
mp::Bytes exit_hook() { return mp::dumps(mp::pool::worker_id()); }

mp::PoolOptions options(const std::string& method, int processes) {
  mp::PoolOptions o;
  o.processes = processes;
  o.context = mp::get_context(method);
  return o;
}

std::size_t rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

bool runs(int pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return false;
  std::string line;
  std::getline(stat, line);
  auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
}

class PoolOptionsTest : public testing::TestWithParam<std::string> {};

TEST_P(PoolOptionsTest, imap_over_an_endless_range_runs_in_constant_memory_and_join_does_not_wait_for_it) {
  mp::Pool pool(options(GetParam(), 2));
  auto it = pool.imap(plus_one, std::views::iota(0), 4);
  for (int i = 0; i < 20000; ++i) ASSERT_EQ(it.next(30s), i + 1);
  auto before = rss_bytes();
  for (int i = 20000; i < 300000; ++i) ASSERT_EQ(it.next(30s), i + 1);
  auto after = rss_bytes();
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer keeps freed memory in quarantine (256 MiB by default): RSS says nothing here.
  (void)before;
  (void)after;
#else
  EXPECT_LT(after, before + (16u << 20)) << "RSS grew from " << before << " to " << after;
#endif
  // The iterator is abandoned, still alive: close() and join() return all the same.
  auto start = std::chrono::steady_clock::now();
  pool.close();
  pool.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
}

TEST_P(PoolOptionsTest, imap_unordered_over_a_lazy_view_yields_every_result_once) {
  mp::Pool pool(options(GetParam(), 2));
  std::multiset<int> seen;
  for (int r : pool.imap_unordered(square, std::views::iota(0, 3000), 7, 3)) seen.insert(r);
  ASSERT_EQ(seen.size(), 3000u);
  for (int i = 0; i < 3000; i += 101) EXPECT_EQ(seen.count(i * i), 1u) << i;
}

TEST_P(PoolOptionsTest, buffersize_bounds_how_far_the_input_is_read_ahead) {
  mp::Pool pool(options(GetParam(), 2));
  int pulled = 0;
  auto counted = std::views::iota(0) | std::views::transform([&pulled](int x) {
                   ++pulled;
                   return x;
                 });
  const int buffersize = 16;
  auto it = pool.imap(plus_one, counted, 1, buffersize);
  for (int i = 0; i < 500; ++i) {
    ASSERT_EQ(it.next(30s), i + 1);
    EXPECT_LE(pulled, i + 1 + buffersize);
  }
  EXPECT_GE(pulled, 500);
}

TEST_P(PoolOptionsTest, an_input_that_throws_fails_at_its_position_and_ends_the_iteration) {
  mp::Pool pool(options(GetParam(), 2));
  auto failing = std::views::iota(0) | std::views::transform([](int x) {
                   if (x == 5) throw std::runtime_error("input broke");
                   return x;
                 });
  auto it = pool.imap(plus_one, failing, 2);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(it.next(30s), i + 1);
  EXPECT_THROW(it.next(30s), std::runtime_error);
  EXPECT_THROW(it.next(30s), mp::StopIteration);
  EXPECT_EQ(pool.apply(square, 4), 16);
}

TEST_P(PoolOptionsTest, a_bounded_imap_keeps_reading_its_input_after_close) {
  mp::Pool pool(options(GetParam(), 2));
  auto it = pool.imap(plus_one, std::views::iota(0, 5000), 1, 8);
  pool.close();
  EXPECT_THROW(pool.apply(square, 1), std::logic_error);
  long sum = 0, n = 0;
  for (int r : it) {
    sum += r;
    ++n;
  }
  EXPECT_EQ(n, 5000);
  EXPECT_EQ(sum, 5000L * 5001 / 2);
  pool.join();
}

TEST_P(PoolOptionsTest, a_soft_time_limit_is_seen_by_the_task) {
  mp::PoolOptions o = options(GetParam(), 2);
  o.soft_time_limit = 50ms;
  mp::Pool pool(o);
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(pool.apply(until_soft_limit, 0), 1);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_THROW(pool.apply(checks_soft_limit, 0), mp::SoftTimeLimitExceeded);
  // A quick task never sees it.
  EXPECT_EQ(pool.apply(square, 3), 9);
}

TEST_P(PoolOptionsTest, per_call_soft_limits_apply_to_that_call_only) {
  mp::Pool pool(options(GetParam(), 2));
  auto limited = pool.with_time_limits({.soft = 30ms});
  EXPECT_EQ(limited.apply(until_soft_limit, 0), 1);
  auto r = limited.map(until_soft_limit, std::vector<int>{0, 1, 2}, 1);
  EXPECT_EQ(r, (std::vector<int>{1, 1, 1}));
  // Without the limit, the task waits for the soft limit in vain (10 s): check it is not signalled.
  auto plain = pool.apply_async(until_soft_limit, 0);
  EXPECT_THROW(plain.get(300ms), mp::TimeoutError);
}

TEST_P(PoolOptionsTest, a_hard_time_limit_kills_the_worker_and_fails_only_that_task) {
  mp::PoolOptions o = options(GetParam(), 2);
  o.time_limit = 200ms;
  mp::Pool pool(o);
  auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(pool.apply(forever, 0), mp::TaskTimeLimitExceeded);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  auto it = pool.imap(sleep_ms, std::vector<int>{1, 100000, 2, 3});
  EXPECT_EQ(it.next(30s), 1);
  try {
    it.next(30s);
    FAIL() << "the second task must time out";
  } catch (const mp::TimeoutError& e) {  // TaskTimeLimitExceeded is a TimeoutError
    EXPECT_NE(std::string(e.what()).find("time limit"), std::string::npos) << e.what();
  }
  EXPECT_EQ(it.next(30s), 2);
  EXPECT_EQ(it.next(30s), 3);
  EXPECT_EQ(pool.apply(square, 7), 49);
}

TEST_P(PoolOptionsTest, a_per_call_hard_limit_overrides_none) {
  mp::Pool pool(options(GetParam(), 1));
  EXPECT_THROW(pool.with_time_limits({.hard = 100ms}).apply(forever, 0), mp::TaskTimeLimitExceeded);
  EXPECT_EQ(pool.apply(sleep_ms, 150), 150);  // no limit on this call
}

TEST_P(PoolOptionsTest, worker_ids_are_stable_and_within_range_across_replacements) {
  EXPECT_EQ(mp::pool::worker_id(), -1);
  mp::Pool pool(options(GetParam(), 3));
  auto ids = pool.map(my_worker_id, std::vector<int>(60, 0), 1);
  for (int id : ids) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, 3);
  }
  auto it = pool.imap(kill_on_5, std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  for (int i = 0; i < 10; ++i) {
    if (i == 5) {
      EXPECT_THROW(it.next(30s), mp::WorkerLostError);
    } else {
      int id = it.next(30s);
      EXPECT_GE(id, 0);
      EXPECT_LT(id, 3);
    }
  }
  // Three, and the replacement of the killed one under its id (started by the dispatcher soon).
  int starts = 0;
  for (auto deadline = std::chrono::steady_clock::now() + 10s; std::chrono::steady_clock::now() < deadline;) {
    auto insights = pool.insights();
    ASSERT_EQ(insights.workers.size(), 3u);
    starts = 0;
    for (auto& w : insights.workers) starts += w.starts;
    if (starts == 4) break;
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(starts, 4);
}

TEST_P(PoolOptionsTest, worker_state_reaches_every_worker_once) {
  mp::PoolOptions o = options(GetParam(), 2);
  std::vector<int> state(1000);
  std::iota(state.begin(), state.end(), 0);
  o.set_worker_state(state);
  mp::Pool pool(o);
  auto r = pool.map(state_at, std::vector<int>{0, 10, 999});
  EXPECT_EQ(r, (std::vector<int>{1000, 1010, 1999}));
  EXPECT_THROW(pool.apply(wrong_state_type, 0), std::invalid_argument);
  EXPECT_THROW(mp::pool::worker_state<std::vector<int>>(), std::logic_error);
}

TEST_P(PoolOptionsTest, exit_hooks_results_are_collected_after_join) {
  mp::PoolOptions o = options(GetParam(), 2);
  o.worker_exit = exit_hook;
  mp::Pool pool(o);
  EXPECT_EQ(pool.map(square, std::vector<int>{1, 2, 3}), (std::vector<int>{1, 4, 9}));
  pool.close();
  pool.join();
  auto ids = pool.exit_results<int>();
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, (std::vector<int>{0, 1}));
}

TEST_P(PoolOptionsTest, insights_count_the_chunks_and_print_a_summary) {
  mp::Pool pool(options(GetParam(), 2));
  (void)pool.map(sleep_ms, std::vector<int>(20, 2), 1);
  auto insights = pool.insights();
  ASSERT_EQ(insights.workers.size(), 2u);
  std::int64_t chunks = 0;
  mp::Duration working{0};
  for (auto& w : insights.workers) {
    chunks += w.chunks;
    working += w.working;
    EXPECT_GT(w.pid, 0);
    EXPECT_GT(w.start_up.count(), 0.0);
  }
  EXPECT_EQ(chunks, 20);
  EXPECT_GE(working.count(), 0.035);  // 20 x 2 ms
  auto text = insights.summary();
  EXPECT_NE(text.find("worker 0"), std::string::npos) << text;
  EXPECT_NE(text.find("total: 20 chunks"), std::string::npos) << text;
}

TEST_P(PoolOptionsTest, insights_measure_the_time_spent_decoding_the_items_in_the_workers) {
  mp::Pool pool(options(GetParam(), 2));
  // 40 chunks of one 4 MB vector each: decoding them takes the workers measurable time.
  std::vector<std::vector<int>> items(40, std::vector<int>(1 << 20, 7));
  auto sizes = pool.map(size_of, items, 1);
  ASSERT_EQ(sizes.size(), 40u);
  auto total = pool.insights().total();
  EXPECT_EQ(total.chunks, 40);
  EXPECT_GT(total.serializing.count(), 0.0);
  EXPECT_LE(total.serializing.count(), total.working.count());
  EXPECT_NE(pool.insights().summary().find("serializing"), std::string::npos);
}

TEST_P(PoolOptionsTest, workers_ignore_sigint) {
  mp::Pool pool(options(GetParam(), 2));
  EXPECT_EQ(pool.apply(square, 2), 4);
  // Both workers ready (they ignore SIGINT from then on; a spawn child still starting does not yet).
  for (auto deadline = std::chrono::steady_clock::now() + 30s; std::chrono::steady_clock::now() < deadline;) {
    auto insights = pool.insights();
    if (std::all_of(insights.workers.begin(), insights.workers.end(),
                    [](const mp::WorkerInsights& w) { return w.start_up.count() > 0; }))
      break;
    std::this_thread::sleep_for(5ms);
  }
  std::vector<int> pids;
  for (auto* p : mp::active_children()) {
    if (p->name().rfind("PoolWorker-", 0) == 0) pids.push_back(p->pid().value_or(0));
  }
  ASSERT_EQ(pids.size(), 2u);
  for (int pid : pids) ::kill(pid, SIGINT);
  EXPECT_EQ(pool.map(square, std::vector<int>{1, 2, 3, 4}, 1), (std::vector<int>{1, 4, 9, 16}));
  for (int pid : pids) EXPECT_TRUE(runs(pid)) << pid;
}

TEST_P(PoolOptionsTest, sigint_in_the_parent_stops_a_map_with_keyboard_interrupt) {
  mp::PoolOptions o = options(GetParam(), 2);
  o.interrupt_on_sigint = true;
  std::vector<int> pids;
  struct sigaction before {};  // SIG_IGN when started in a shell's background
  ::sigaction(SIGINT, nullptr, &before);
  {
    mp::Pool pool(o);
    auto r = pool.map_async(forever, std::vector<int>(8, 0), 1);
    EXPECT_THROW(r.get(100ms), mp::TimeoutError);
    for (auto* p : mp::active_children()) {
      if (p->name().rfind("PoolWorker-", 0) == 0) pids.push_back(p->pid().value_or(0));
    }
    auto start = std::chrono::steady_clock::now();
    std::thread ctrl_c([] { ::kill(::getpid(), SIGINT); });
    EXPECT_THROW(r.get(10s), mp::KeyboardInterrupt);
    ctrl_c.join();
    EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
    EXPECT_THROW(pool.apply(square, 1), std::logic_error);  // terminated
    pool.join();
  }
  for (int pid : pids) EXPECT_FALSE(runs(pid)) << pid;
  // The previous disposition is back once the pool is gone.
  struct sigaction now {};
  ::sigaction(SIGINT, nullptr, &now);
  EXPECT_EQ(now.sa_handler, before.sa_handler);
}

// Runs 30 tasks of 10 ms with the progress display on a pipe; returns what was written there.
std::string progress_of_a_map(mp::PoolOptions o) {
  int fds[2];
  if (::pipe(fds) != 0) throw std::system_error(errno, std::generic_category(), "pipe");
  o.progress_fd = fds[1];
  std::string text;
  {
    mp::Pool pool(o);
    (void)pool.map(sleep_ms, std::vector<int>(30, 10), 1);
    // The last line is written by the dispatcher within its display period.
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (text.find("done") == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      pollfd p{fds[0], POLLIN, 0};
      if (::poll(&p, 1, 100) == 1) {
        char buf[4096];
        auto n = ::read(fds[0], buf, sizeof buf);
        if (n > 0) text.append(buf, static_cast<std::size_t>(n));
      }
    }
  }
  ::close(fds[0]);
  ::close(fds[1]);
  return text;
}

TEST_P(PoolOptionsTest, the_progress_display_counts_the_tasks_and_ends_with_done) {
  auto text = progress_of_a_map(options(GetParam(), 2));
  EXPECT_NE(text.find("30/30 tasks"), std::string::npos) << text;
  EXPECT_NE(text.find("done in"), std::string::npos) << text;
  EXPECT_NE(text.find("ETA"), std::string::npos) << text;  // at least one line while it ran (300 ms)
  EXPECT_EQ(text.find("| working"), std::string::npos) << text;
}

TEST_P(PoolOptionsTest, the_progress_display_shows_the_insights_when_asked) {
  mp::PoolOptions o = options(GetParam(), 2);
  o.progress_insights = true;
  auto text = progress_of_a_map(o);
  EXPECT_NE(text.find("30/30 tasks"), std::string::npos) << text;
  EXPECT_NE(text.find("| working "), std::string::npos) << text;
  EXPECT_NE(text.find("(serializing "), std::string::npos) << text;
}

// A waiting get() may run the call's callback on its own thread: terminate() from there must not
// wait for the thread that is running it.
TEST_P(PoolOptionsTest, a_callback_that_terminates_the_pool_does_not_deadlock_the_waiting_get) {
  mp::Pool pool(options(GetParam(), 2));
  EXPECT_EQ(pool.apply(square, 2), 4);  // the workers are up: the call goes straight to one
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 20; ++i) {
    mp::Pool inner(options(GetParam(), 1));
    EXPECT_EQ(inner.apply(square, 1), 1);
    auto r = inner.apply_async(square, std::tuple{3}, {.callback = [p = inner](const int&) mutable { p.terminate(); }});
    EXPECT_EQ(r.get(30s), 9);
    inner.join();
    if (GetParam() != "fork") break;  // one round is enough where starting workers is slow
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 60s);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, PoolOptionsTest, testing::Values("fork", "spawn", "forkserver"),
                         [](const testing::TestParamInfo<std::string>& param) { return param.param; });

}  // namespace
