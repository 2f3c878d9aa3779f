// mp::Pool when workers die, when tasks never end, and when the pool's own process is killed.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

// The workers here crash on purpose: let SIGSEGV kill them as it would without a sanitizer (whose
// own handler would turn the signal into "exited with code 1").
#if defined(__SANITIZE_ADDRESS__)
extern "C" const char* __asan_default_options() { return "handle_segv=0"; }
#endif
#if defined(__SANITIZE_THREAD__)
extern "C" const char* __tsan_default_options() { return "handle_segv=0"; }
#endif

namespace {

int square(int x) { return x * x; }
int kill_on_5(int x) {
  if (x == 5) ::raise(SIGKILL);
  return x;
}
int segv_on_5(int x) {
  if (x == 5) ::raise(SIGSEGV);
  return x;
}
int exit_on_5(int x) {
  if (x == 5) std::exit(3);
  return x;
}
int abort_on_5(int x) {
  if (x == 5) std::abort();
  return x;
}
int forever(int) {
  while (true) std::this_thread::sleep_for(1s);
}
int pid_after_sleep(int) {
  std::this_thread::sleep_for(3ms);
  return static_cast<int>(::getpid());
}

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

// A process that is gone or a zombie no longer runs.
bool runs(int pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return false;
  std::string line;
  std::getline(stat, line);
  auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
}

std::vector<int> worker_pids() {
  std::vector<int> pids;
  for (auto* p : mp::active_children()) pids.push_back(p->pid().value_or(0));
  return pids;
}

struct Death {
  const char* name;
  int (*task)(int);
  const char* expected;  // in the WorkerLostError's message
};

class PoolFaultTest : public testing::TestWithParam<std::tuple<std::string, int>> {
 protected:
  static constexpr Death kDeaths[] = {
      {"sigkill", kill_on_5, "SIGKILL"},
      {"segfault", segv_on_5, "SIGSEGV"},
      {"exit", exit_on_5, "exited with code 3"},
      {"abort", abort_on_5, "SIGABRT"},
  };
  const Death& death() const { return kDeaths[std::get<1>(GetParam())]; }
  std::string method() const { return std::get<0>(GetParam()); }
};

TEST_P(PoolFaultTest, a_dying_worker_fails_its_task_and_the_pool_stays_usable) {
  mp::Pool pool(options(method(), 2));
  try {
    pool.map(death().task, iota(10), 1);
    FAIL() << "map must raise";
  } catch (const mp::WorkerLostError& e) {
    EXPECT_NE(std::string(e.what()).find(death().expected), std::string::npos) << e.what();
  }
  EXPECT_EQ(pool.apply(square, 9), 81);

  std::atomic<bool> errored{false};
  auto r = pool.apply_async(death().task, std::tuple{5}, {.error_callback = [&](std::exception_ptr) { errored = true; }});
  EXPECT_TRUE(r.wait(30s));
  EXPECT_TRUE(errored);
  EXPECT_THROW(r.get(), mp::WorkerLostError);

  auto it = pool.imap(death().task, iota(10));
  for (int i = 0; i < 10; ++i) {
    if (i == 5) {
      EXPECT_THROW(it.next(30s), mp::WorkerLostError);
    } else {
      EXPECT_EQ(it.next(30s), i);
    }
  }
  EXPECT_EQ(pool.map(square, iota(100))[99], 99 * 99);
  pool.close();
  pool.join();
}

using DeathParam = std::tuple<std::string, int>;
std::string death_name(const testing::TestParamInfo<DeathParam>& info) {
  static const char* names[] = {"sigkill", "segfault", "exit", "abort"};
  return std::get<0>(info.param) + "_" + names[std::get<1>(info.param)];
}

INSTANTIATE_TEST_SUITE_P(Deaths, PoolFaultTest,
                         testing::Combine(testing::Values("fork", "spawn", "forkserver"), testing::Values(0, 1, 2, 3)),
                         death_name);

class PoolLifecycleTest : public testing::TestWithParam<std::string> {};

TEST_P(PoolLifecycleTest, workers_killed_at_random_during_imap_fail_only_their_tasks) {
  mp::Pool pool(options(GetParam(), 3));
  const int n = 300;
  int ok = 0, lost = 0, kills = 0;
  auto it = pool.imap(pid_after_sleep, iota(n));
  for (int i = 0; i < n; ++i) {
    try {
      int pid = it.next(60s);
      ++ok;
      if (i % 40 == 10 && kills < 5) {
        ::kill(pid, SIGKILL);
        ++kills;
      }
    } catch (const mp::WorkerLostError&) {
      ++lost;
    }
  }
  EXPECT_EQ(ok + lost, n);
  EXPECT_GE(lost, 1);
  EXPECT_LE(lost, kills);  // one running chunk (of one task) per killed worker at most
  EXPECT_THROW(it.next(), mp::StopIteration);
  EXPECT_EQ(pool.map(square, iota(50))[49], 49 * 49);
}

TEST_P(PoolLifecycleTest, terminate_returns_promptly_while_tasks_run_forever) {
  mp::Pool pool(options(GetParam(), 2));
  auto r = pool.map_async(forever, iota(16), 1);  // more than the workers can hold ahead
  auto one = pool.apply_async(square, 3);
  EXPECT_THROW(r.get(100ms), mp::TimeoutError);
  auto pids = worker_pids();
  ASSERT_EQ(pids.size(), 2u);
  auto start = std::chrono::steady_clock::now();
  pool.terminate();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  EXPECT_THROW(r.get(1s), mp::WorkerLostError);
  EXPECT_THROW(one.get(1s), mp::ProcessError);
  pool.join();
  for (int pid : pids) EXPECT_FALSE(runs(pid)) << pid;
  EXPECT_TRUE(worker_pids().empty());
}

TEST_P(PoolLifecycleTest, destroying_a_pool_with_pending_work_does_not_hang) {
  auto start = std::chrono::steady_clock::now();
  mp::AsyncResult<std::vector<int>> r;
  {
    mp::Pool pool(options(GetParam(), 2));
    r = pool.map_async(forever, iota(10), 1);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_TRUE(r.ready());
  EXPECT_THROW(r.get(), mp::ProcessError);
}

TEST_P(PoolLifecycleTest, no_worker_is_left_running_or_unreaped_after_join) {
  mp::Pool pool(options(GetParam(), 2));
  EXPECT_EQ(pool.map(square, iota(10))[3], 9);
  auto pids = worker_pids();
  EXPECT_EQ(pids.size(), 2u);
  pool.close();
  pool.join();
  for (int pid : pids) EXPECT_FALSE(std::ifstream("/proc/" + std::to_string(pid) + "/stat")) << pid;
}

// Runs a pool in a child, sends its workers' pids to the test, then waits to be killed.
void pool_owner(mp::Connection report, std::string method) {
  mp::Pool pool(options(method, 2));
  (void)pool.map(square, iota(4));
  report.send(worker_pids());
  while (true) std::this_thread::sleep_for(1s);
}

TEST_P(PoolLifecycleTest, workers_exit_when_the_pools_process_is_killed) {
  auto [receive, send] = mp::Pipe(false);
  mp::Process owner(mp::get_context("fork"), pool_owner, send, GetParam());
  owner.start();
  send.close();
  ASSERT_TRUE(receive.poll(60s));
  auto pids = receive.recv<std::vector<int>>();
  ASSERT_EQ(pids.size(), 2u);
  for (int pid : pids) EXPECT_TRUE(runs(pid));
  owner.kill();
  ASSERT_TRUE(owner.join(10s));
  auto deadline = std::chrono::steady_clock::now() + 5s;
  for (int pid : pids) {
    while (runs(pid) && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
    EXPECT_FALSE(runs(pid)) << "worker " << pid << " outlived its pool";
  }
}

INSTANTIATE_TEST_SUITE_P(StartMethods, PoolLifecycleTest, testing::Values("fork", "spawn", "forkserver"),
                         [](const testing::TestParamInfo<std::string>& param) { return param.param; });

}  // namespace
