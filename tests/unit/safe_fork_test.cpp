// Starting a fork child while other threads run: a warning that names the risk and the way out,
// an error under ForkWithThreads::error, silence when the process is single-threaded or when the
// start method does not fork this process (spawn, forkserver).
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <chrono>
#include <cstdlib>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fork_safety.hpp"

using namespace std::chrono_literals;

namespace {

void nothing() {}
int twice(int x) { return 2 * x; }

struct Record {
  int level;
  std::string message;
};

// A thread of the test's own that stays blocked (so it exists) until the object dies.
class BusyThread {
 public:
  BusyThread()
      : thread_([this] {
          std::unique_lock lock(mutex_);
          changed_.wait(lock, [this] { return stop_; });
        }) {}
  ~BusyThread() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  bool stop_ = false;
  std::thread thread_;
};

class SafeForkTest : public testing::Test {
 protected:
  void SetUp() override {
    mp::get_logger().clear_handlers();
    mp::get_logger().set_level(mp::levels::debug);
    mp::get_logger().add_handler([this](int level, std::string_view, std::string_view message) {
      std::lock_guard lock(mutex_);
      records_.push_back({level, std::string(message)});
    });
    mp::set_fork_with_threads(mp::ForkWithThreads::warn);
    mp::detail::reset_fork_with_threads_warning();
  }
  void TearDown() override {
    mp::set_fork_with_threads(mp::ForkWithThreads::warn);
    mp::get_logger().clear_handlers();
    mp::get_logger().set_level(0);
  }
  std::vector<Record> fork_records(int level) {
    std::lock_guard lock(mutex_);
    std::vector<Record> out;
    for (auto& r : records_)
      if (r.level == level && r.message.find("'fork' child") != std::string::npos) out.push_back(r);
    return out;
  }
  // A thread that was joined can linger in /proc/self/task for a moment after join() returns.
  static void wait_single_threaded() {
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (mp::detail::other_thread_count() != 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(1ms);
    ASSERT_EQ(mp::detail::other_thread_count(), 0);
  }
  static void run_child(const std::string& method) {
    mp::Process p(mp::get_context(method), &nothing);
    p.start();
    ASSERT_TRUE(p.join(30s));
    EXPECT_EQ(p.exitcode(), 0);
  }

  std::mutex mutex_;
  std::vector<Record> records_;
};

TEST_F(SafeForkTest, the_default_policy_is_warn) {
  EXPECT_EQ(mp::get_fork_with_threads(), mp::ForkWithThreads::warn);
}

TEST_F(SafeForkTest, threads_are_counted_from_proc) {
  wait_single_threaded();
  {
    BusyThread a, b;
    EXPECT_EQ(mp::detail::other_thread_count(), 2);
  }
}

TEST_F(SafeForkTest, a_fork_start_with_another_thread_running_logs_one_warning_naming_the_risk) {
  BusyThread busy;
  run_child("fork");
  auto warnings = fork_records(mp::levels::warning);
  ASSERT_EQ(warnings.size(), 1u);
  const auto& m = warnings[0].message;
  EXPECT_NE(m.find("1 other thread"), std::string::npos) << m;
  EXPECT_NE(m.find("deadlock"), std::string::npos) << m;
  EXPECT_NE(m.find("forkserver"), std::string::npos) << m;
  // Later fork starts say it at debug level only: a pool replacing workers does not flood the log.
  run_child("fork");
  EXPECT_EQ(fork_records(mp::levels::warning).size(), 1u);
  EXPECT_EQ(fork_records(mp::levels::debug).size(), 1u);
}

TEST_F(SafeForkTest, a_single_threaded_fork_start_logs_nothing) {
  wait_single_threaded();
  run_child("fork");
  EXPECT_TRUE(fork_records(mp::levels::warning).empty());
  EXPECT_TRUE(fork_records(mp::levels::debug).empty());
}

TEST_F(SafeForkTest, spawn_and_forkserver_starts_do_not_warn) {
  BusyThread busy;
  run_child("spawn");
  run_child("forkserver");
  EXPECT_TRUE(fork_records(mp::levels::warning).empty());
}

TEST_F(SafeForkTest, allow_silences_the_warning) {
  mp::set_fork_with_threads(mp::ForkWithThreads::allow);
  BusyThread busy;
  run_child("fork");
  EXPECT_TRUE(fork_records(mp::levels::warning).empty());
}

TEST_F(SafeForkTest, error_mode_throws_fork_with_threads_error_and_forks_nothing) {
  mp::set_fork_with_threads(mp::ForkWithThreads::error);
  {
    BusyThread busy;
    mp::Process p(mp::get_context("fork"), &nothing);
    try {
      p.start();
      FAIL() << "start() did not throw";
    } catch (const mp::ForkWithThreadsError& e) {
      EXPECT_NE(std::string(e.what()).find("forkserver"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(p.pid().has_value());
    EXPECT_TRUE(mp::active_children().empty());
  }
  // It is a ProcessError, so code that catches the library's errors catches it too.
  static_assert(std::is_base_of_v<mp::ProcessError, mp::ForkWithThreadsError>);
  // Without the other thread the same start works.
  wait_single_threaded();
  run_child("fork");
}

TEST_F(SafeForkTest, error_mode_makes_a_fork_pool_refuse_to_start_while_threads_run) {
  mp::set_fork_with_threads(mp::ForkWithThreads::error);
  BusyThread busy;
  mp::PoolOptions o;
  o.processes = 2;
  o.context = mp::get_context("fork");
  EXPECT_THROW(mp::Pool pool(o), mp::ForkWithThreadsError);
  o.context = mp::get_context("forkserver");
  mp::Pool pool(o);
  EXPECT_EQ(pool.apply(&twice, 21), 42);
}

int exit_now(int) { std::_Exit(4); }

// Under the error policy a fork pool cannot replace a worker (its dispatcher thread forks while
// the caller's thread runs): the tasks that wait for a worker must fail, not wait forever.
TEST_F(SafeForkTest, error_mode_a_fork_pool_that_cannot_replace_a_worker_does_not_hang) {
  wait_single_threaded();
  mp::set_fork_with_threads(mp::ForkWithThreads::error);
  mp::PoolOptions o;
  o.processes = 1;
  o.context = mp::get_context("fork");
  mp::Pool pool(o);  // single-threaded here: the first worker starts
  auto lost = pool.apply_async(&exit_now, 0);
  ASSERT_TRUE(lost.wait(30s));
  EXPECT_THROW(lost.get(), mp::WorkerLostError);
  // No worker can be started (forking while the dispatcher runs is refused): the task fails
  // with the reason rather than waiting forever.
  auto next = pool.apply_async(&twice, 2);
  ASSERT_TRUE(next.wait(30s));
  EXPECT_THROW(next.get(), mp::ProcessError);
}

TEST_F(SafeForkTest, a_fork_pool_started_while_threads_run_warns) {
  BusyThread busy;
  mp::PoolOptions o;
  o.processes = 2;
  o.context = mp::get_context("fork");
  mp::Pool pool(o);
  EXPECT_EQ(pool.apply(&twice, 4), 8);
  EXPECT_EQ(fork_records(mp::levels::warning).size(), 1u);
}

TEST_F(SafeForkTest, a_registered_library_thread_does_not_count) {
  wait_single_threaded();
  std::mutex m;
  std::condition_variable cv;
  bool registered = false, stop = false;
  std::thread t([&] {
    mp::detail::ForkSafeThread safe;
    std::unique_lock lock(m);
    registered = true;
    cv.notify_all();
    cv.wait(lock, [&] { return stop; });
  });
  {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return registered; });
  }
  EXPECT_EQ(mp::detail::other_thread_count(), 0);
  run_child("fork");
  EXPECT_TRUE(fork_records(mp::levels::warning).empty());
  {
    std::lock_guard lock(m);
    stop = true;
  }
  cv.notify_all();
  t.join();
}

// A pool's dispatcher thread only guards state that no forked child touches (and the logger's
// lock is held across fork): a plain fork start next to a running pool is not the risk warned of.
TEST_F(SafeForkTest, a_pools_dispatcher_thread_does_not_make_fork_starts_warn) {
  wait_single_threaded();
  mp::PoolOptions o;
  o.processes = 1;
  o.context = mp::get_context("forkserver");
  mp::Pool pool(o);
  EXPECT_EQ(pool.apply(&twice, 1), 2);
  run_child("fork");
  EXPECT_TRUE(fork_records(mp::levels::warning).empty());
  pool.close();
  pool.join();
}

}  // namespace
