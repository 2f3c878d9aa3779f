// The library's logger: levels, handlers, the stderr format, and lines that never interleave.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <thread>
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
  }
  void TearDown() override {
    mp::get_logger().clear_handlers();
    mp::get_logger().set_level(0);
  }
};

// Runs body with stderr redirected to a pipe and returns what it wrote. A thread drains the pipe
// meanwhile, so that writers never block on a full pipe.
template <class F>
std::string capture_stderr(F body) {
  int fds[2];
  EXPECT_EQ(pipe2(fds, O_CLOEXEC), 0);
  std::string out;
  std::thread reader([&] {
    char buf[4096];
    for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
  });
  int saved = dup(STDERR_FILENO);
  dup2(fds[1], STDERR_FILENO);
  close(fds[1]);
  body();
  dup2(saved, STDERR_FILENO);  // the last write end in this process goes: the reader sees EOF
  close(saved);
  reader.join();
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

}  // namespace
