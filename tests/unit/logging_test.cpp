// The library's logger: levels, handlers, the stderr format, and lines that never interleave.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace {

struct Record {
  int level;
  std::string process_name, message;
};

class LoggingTest : public testing::Test {
 protected:
  void SetUp() override {
    mp::get_logger().clear_handlers();
    mp::get_logger().set_level(0);
    // A pool replaces workers by forking from its dispatcher thread: the fork-with-threads warning
    // (tests/unit/safe_fork_test.cpp) would only add lines to the captured output here.
    mp::set_fork_with_threads(mp::ForkWithThreads::allow);
  }
  void TearDown() override {
    mp::get_logger().clear_handlers();
    mp::get_logger().set_level(0);
    mp::set_fork_with_threads(mp::ForkWithThreads::warn);
  }
};

// Runs body with stderr redirected to a pipe and returns what it wrote. The pipe is made large
// enough for everything a test writes rather than drained by a thread: a thread would make every
// fork in body a fork of a multi-threaded process (which ThreadSanitizer refuses once the child
// starts threads, as a manager's server does).
template <class F>
std::string capture_stderr(F body) {
  int fds[2];
  EXPECT_EQ(pipe2(fds, O_CLOEXEC), 0);
  EXPECT_GE(fcntl(fds[1], F_SETPIPE_SZ, 1 << 20), 1 << 20);
  int saved = dup(STDERR_FILENO);
  dup2(fds[1], STDERR_FILENO);
  close(fds[1]);
  body();
  dup2(saved, STDERR_FILENO);  // the last write end in this process goes: the read below ends
  close(saved);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
  close(fds[0]);
  return out;
}

TEST_F(LoggingTest, is_silent_until_configured) {
  EXPECT_FALSE(mp::get_logger().is_enabled_for(mp::levels::critical));
  auto out = capture_stderr([] { mp::get_logger().critical("nobody hears this"); });
  EXPECT_EQ(out, "");
}

TEST_F(LoggingTest, handlers_receive_level_process_name_and_message) {
  std::vector<Record> seen;
  mp::get_logger().add_handler([&](int level, std::string_view name, std::string_view message) {
    seen.push_back({level, std::string(name), std::string(message)});
  });
  mp::get_logger().info("hello");
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].level, mp::levels::info);
  EXPECT_EQ(seen[0].process_name, "MainProcess");
  EXPECT_EQ(seen[0].message, "hello");
}

TEST_F(LoggingTest, records_below_the_level_are_dropped) {
  int count = 0;
  mp::get_logger().add_handler([&](int, std::string_view, std::string_view) { ++count; });
  mp::get_logger().set_level(mp::levels::warning);
  mp::get_logger().info("dropped");
  mp::get_logger().subwarning("dropped");
  mp::get_logger().warning("kept");
  mp::get_logger().log(mp::levels::error, "kept");
  EXPECT_EQ(count, 2);
  EXPECT_EQ(mp::get_logger().level(), mp::levels::warning);
}

TEST_F(LoggingTest, a_throwing_handler_does_not_reach_the_caller) {
  int later = 0;
  mp::get_logger().add_handler([](int, std::string_view, std::string_view) { throw std::runtime_error("x"); });
  mp::get_logger().add_handler([&](int, std::string_view, std::string_view) { ++later; });
  EXPECT_NO_THROW(mp::get_logger().error("e"));
  EXPECT_EQ(later, 1);
}

TEST_F(LoggingTest, log_to_stderr_writes_python_formatted_lines) {
  auto out = capture_stderr([] {
    mp::log_to_stderr(mp::levels::info);
    mp::get_logger().debug("hidden");
    mp::get_logger().info("child process calling self.run()");
    mp::get_logger().log(mp::levels::subwarning, "sub");
    mp::get_logger().log(42, "odd level");
  });
  EXPECT_EQ(out,
            "[INFO/MainProcess] child process calling self.run()\n"
            "[SUBWARNING/MainProcess] sub\n"
            "[Level 42/MainProcess] odd level\n");
}

TEST_F(LoggingTest, level_names_are_pythons) {
  EXPECT_EQ(mp::level_name(mp::levels::subdebug), "SUBDEBUG");
  EXPECT_EQ(mp::level_name(mp::levels::debug), "DEBUG");
  EXPECT_EQ(mp::level_name(mp::levels::critical), "CRITICAL");
}

// Many processes logging long lines to one pipe at once: every line arrives whole.
TEST_F(LoggingTest, lines_from_many_processes_never_interleave) {
  const int kChildren = 4, kLines = 200;
  std::string out = capture_stderr([&] {
    mp::log_to_stderr(mp::levels::info);
    std::vector<mp::Process> children;
    for (int c = 0; c < kChildren; ++c)
      children.emplace_back([c] {
        std::string body(300, static_cast<char>('a' + c));
        for (int i = 0; i < kLines; ++i) mp::get_logger().warning(body);
      });
    for (auto& p : children) p.start();
    for (auto& p : children) {
      ASSERT_TRUE(p.join(std::chrono::seconds(120)));
      EXPECT_EQ(p.exitcode(), 0);
    }
  });
  int whole = 0;
  std::size_t pos = 0;
  while (pos < out.size()) {
    auto end = out.find('\n', pos);
    ASSERT_NE(end, std::string::npos);
    std::string line = out.substr(pos, end - pos);
    pos = end + 1;
    if (line.find("child process") != std::string::npos || line.find("process ") != std::string::npos) continue;
    auto body = line.substr(line.find("] ") + 2);
    ASSERT_EQ(body.size(), 300u) << line;
    EXPECT_EQ(body.find_first_not_of(body[0]), std::string::npos) << line;
    ++whole;
  }
  EXPECT_EQ(whole, kChildren * kLines);
}

// Checks that every line of out is a whole "[LEVEL/Name] body" record whose body is one letter
// repeated `length` times, and returns how many such lines there were.
int count_whole_lines(const std::string& out, std::size_t length) {
  int whole = 0;
  std::istringstream lines(out);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.find("] ") == std::string::npos) {
      ADD_FAILURE() << "not a record: " << line.substr(0, 80);
      continue;
    }
    auto body = line.substr(line.find("] ") + 2);
    if (body.size() != length) continue;  // a lifecycle line of the children
    if (body.find_first_not_of(body[0]) != std::string::npos) {
      ADD_FAILURE() << "mixed line: " << line.substr(0, 80);
      continue;
    }
    ++whole;
  }
  return whole;
}

void log_long_lines(int letter) {
  std::string body(8000, static_cast<char>('a' + letter));  // beyond PIPE_BUF
  for (int i = 0; i < 100; ++i) mp::get_logger().warning(body);
}

// The same through a regular file (as `prog 2> log.txt`), from spawned children, with lines longer
// than PIPE_BUF: each record is still one write(2) of the whole line.
TEST_F(LoggingTest, lines_from_many_spawned_processes_to_a_file_never_interleave) {
  char path[] = "/tmp/mp-logging-test-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  unlink(path);
  int saved = dup(STDERR_FILENO);
  dup2(fd, STDERR_FILENO);
  mp::log_to_stderr(mp::levels::info);
  std::vector<mp::Process> children;
  for (int c = 0; c < 4; ++c) children.emplace_back(mp::get_context("spawn"), &log_long_lines, c);
  for (auto& p : children) p.start();
  bool all_joined = true;
  for (auto& p : children) all_joined = p.join(std::chrono::seconds(120)) && all_joined;
  dup2(saved, STDERR_FILENO);
  close(saved);
  mp::get_logger().clear_handlers();
  std::string out;
  lseek(fd, 0, SEEK_SET);
  char buf[65536];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
  close(fd);
  ASSERT_TRUE(all_joined);
  for (auto& p : children) EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(count_whole_lines(out, 8000), 4 * 100);
  // spawned children log under their own names, with the parent's level (sent with the preparation)
  EXPECT_NE(out.find("/Process-"), std::string::npos);
  EXPECT_NE(out.find("] child process calling self.run()"), std::string::npos);
}

// A handler of the parent, inherited by a fork child, sees the child's records with its name.
TEST_F(LoggingTest, a_forked_childs_records_carry_its_level_and_name) {
  auto [r, w] = mp::Pipe(false);
  mp::get_logger().set_level(mp::levels::warning);
  mp::get_logger().add_handler([w = w](int level, std::string_view name, std::string_view message) mutable {
    w.send(std::tuple<int, std::string, std::string>(level, std::string(name), std::string(message)));
  });
  mp::Process child([] { mp::get_logger().error("from the child"); });
  child.set_name("LoggingChild");
  child.start();
  ASSERT_TRUE(r.poll(std::chrono::seconds(60)));
  auto [level, name, message] = r.recv<std::tuple<int, std::string, std::string>>();
  EXPECT_EQ(level, mp::levels::error);
  EXPECT_EQ(name, "LoggingChild");
  EXPECT_EQ(message, "from the child");
  ASSERT_TRUE(child.join(std::chrono::seconds(60)));
  mp::get_logger().clear_handlers();
}

void nothing() {}

TEST_F(LoggingTest, a_childs_start_and_exit_are_logged_as_python_does) {
  auto out = capture_stderr([] {
    mp::log_to_stderr(mp::levels::debug);
    for (const char* method : {"fork", "spawn"}) {
      mp::Process p(mp::get_context(method), &nothing);
      p.set_name(std::string("Life-") + method);
      p.start();
      ASSERT_TRUE(p.join(std::chrono::seconds(60)));
    }
    mp::get_logger().clear_handlers();
  });
  for (const char* method : {"fork", "spawn"}) {
    std::string name = std::string("Life-") + method;
    EXPECT_NE(out.find("[INFO/" + name + "] child process calling self.run()\n"), std::string::npos) << out;
    EXPECT_NE(out.find("[INFO/" + name + "] process exiting with exitcode 0\n"), std::string::npos) << out;
    EXPECT_NE(out.find("[DEBUG/MainProcess] started " + name + " (pid "), std::string::npos) << out;
  }
}

int kill_on_3(int x) {
  if (x == 3) ::raise(SIGKILL);
  return x;
}

TEST_F(LoggingTest, a_pool_logs_worker_start_loss_replacement_and_exit) {
  auto out = capture_stderr([] {
    mp::log_to_stderr(mp::levels::debug);
    {
      mp::PoolOptions o;
      o.processes = 1;
      o.context = mp::get_context("fork");
      mp::Pool pool(o);
      auto r = pool.map_async(&kill_on_3, std::vector<int>{1, 2, 3}, 1);
      EXPECT_TRUE(r.wait(std::chrono::seconds(60)));
      EXPECT_THROW(r.get(), mp::WorkerLostError);
      EXPECT_EQ(pool.apply(&kill_on_3, 7), 7);
      pool.close();
      pool.join();
    }
    mp::get_logger().clear_handlers();
  });
  EXPECT_NE(out.find("[DEBUG/MainProcess] pool started worker PoolWorker-1 (pid "), std::string::npos) << out;
  EXPECT_NE(out.find("[DEBUG/PoolWorker-1] pool worker started\n"), std::string::npos) << out;
  EXPECT_TRUE(std::regex_search(out, std::regex(R"(\[WARNING/MainProcess\] mp: pool worker PoolWorker-1 \(pid \d+\) )"
                                                R"(was killed by SIGKILL \(exit code -9\) while running a task)")))
      << out;
  // the replacement
  EXPECT_NE(out.find("[DEBUG/MainProcess] pool replaced a worker: started PoolWorker-2 (pid "), std::string::npos) << out;
  // the replacement's polite exit at close()
  EXPECT_NE(out.find("[DEBUG/PoolWorker-2] pool worker exiting after "), std::string::npos) << out;
  EXPECT_TRUE(std::regex_search(out, std::regex(R"(\[DEBUG/MainProcess\] pool worker PoolWorker-2 \(pid \d+\) exited with code 0)")))
      << out;
}

TEST_F(LoggingTest, a_listener_logs_connections_accepted_and_refused) {
  auto out = capture_stderr([] {
    mp::log_to_stderr(mp::levels::debug);
    mp::connection::Options good;
    good.authkey = mp::Bytes(8, std::byte{1});
    mp::connection::Listener listener(std::nullopt, good);
    auto address = listener.address();
    std::thread client([address] {
      mp::connection::Options o;
      o.authkey = mp::Bytes(8, std::byte{1});
      auto c = mp::connection::Client(address, o);
      c.send(1);
      mp::connection::Options bad;
      bad.authkey = mp::Bytes(8, std::byte{2});
      EXPECT_THROW(mp::connection::Client(address, bad), mp::AuthenticationError);
    });
    auto accepted = listener.accept();
    EXPECT_EQ(accepted.recv<int>(), 1);
    EXPECT_THROW(listener.accept(), mp::AuthenticationError);
    client.join();
    mp::get_logger().clear_handlers();
  });
  EXPECT_NE(out.find("[DEBUG/MainProcess] accepted a connection on "), std::string::npos) << out;
  EXPECT_NE(out.find("[INFO/MainProcess] authentication with "), std::string::npos) << out;
}

TEST_F(LoggingTest, a_lock_recovered_from_a_dead_holder_is_a_warning) {
  std::vector<Record> seen;
  mp::get_logger().add_handler([&](int level, std::string_view name, std::string_view message) {
    seen.push_back({level, std::string(name), std::string(message)});
  });
  mp::get_logger().set_level(mp::levels::warning);  // the child's own records stay quiet
  mp::Lock lock;
  mp::Process p([lock]() mutable {
    lock.acquire();
    std::_Exit(0);
  });
  p.start();
  ASSERT_TRUE(p.join(std::chrono::seconds(60)));
  ASSERT_TRUE(lock.acquire(true, std::chrono::seconds(10)));
  lock.release();
  bool found = false;
  for (auto& r : seen)
    found = found || (r.level == mp::levels::warning && r.message.find("recovered") != std::string::npos &&
                      r.process_name == "MainProcess");
  EXPECT_TRUE(found);
}

TEST_F(LoggingTest, a_manager_logs_objects_created_and_disposed) {
  auto out = capture_stderr([] {
    mp::log_to_stderr(mp::levels::debug);
    {
      mp::SyncManager manager;
      manager.start();
      {
        auto list = manager.list<int>();
        list.append(1);
      }
      manager.shutdown();
    }
    mp::get_logger().clear_handlers();
  });
  EXPECT_TRUE(std::regex_search(out, std::regex(R"(\] manager created a list object with id (\w+)\n)"))) << out;
  EXPECT_NE(out.find("] manager disposing of object with id "), std::string::npos) << out;
}

}  // namespace
