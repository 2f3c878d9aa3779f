// mp::Process under each start method (as CPython's test_multiprocessing_{fork,spawn,forkserver}),
// the module functions (current_process, parent_process, active_children, cpu_count) and contexts.
//
// Children report through their exit code where possible (a check in the child exits with a
// distinct code), so that a failure names what went wrong without any other channel.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace {

constexpr auto kWait = 60s;  // every wait is bounded; children here end in milliseconds

// ---- child targets: function pointers and captureless lambdas work under every method ----

void do_nothing() {}
void exit_with(int code) { std::exit(code); }
void sleep_forever() {
  for (;;) pause();
}

// Redirects this child's stderr to path, then throws: the test reads the traceback there (a
// forkserver child's stderr is the server's, so it cannot simply be inherited from the test).
void throw_into(std::string path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) std::exit(20);
  ::dup2(fd, STDERR_FILENO);
  throw std::out_of_range("index 7 is past the end");
}

void check_identity(std::string name, bool daemon, mp::Bytes authkey, std::string parent_name, int parent_pid) {
  auto& me = mp::current_process();
  if (me.name() != name) std::exit(10);
  if (me.daemon() != daemon) std::exit(11);
  if (me.authkey() != authkey) std::exit(12);
  if (me.pid() != ::getpid()) std::exit(13);
  mp::Process* parent = mp::parent_process();
  if (!parent) std::exit(14);
  if (parent->name() != parent_name) std::exit(15);
  if (parent->pid() != parent_pid) std::exit(16);
  if (!parent->is_alive()) std::exit(17);
  if (!mp::active_children().empty()) std::exit(18);
  std::exit(0);
}

void check_name(std::string expected) { std::exit(mp::current_process().name() == expected ? 0 : 3); }

void start_grandchild(std::string method, std::string expected) {
  mp::Process g(mp::get_context(method), check_name, expected);
  g.start();
  if (!g.join(kWait)) std::exit(4);
  std::exit(*g.exitcode());
}

void echo(mp::Connection c, std::string word, int n) {
  c.send(word + std::to_string(n) + " from " + mp::current_process().name());
}

struct Stateless {
  void operator()(int code) const { std::exit(code); }
};

bool readable_now(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1;
}

bool readable_within(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class ProcessTest : public testing::TestWithParam<std::string> {
 protected:
  mp::Context ctx() const { return mp::get_context(GetParam()); }
  // Starts, joins (bounded) and returns the exit code.
  static int run(mp::Process& p) {
    p.start();
    EXPECT_TRUE(p.join(kWait));
    return p.exitcode().value_or(-1000);
  }
};

TEST_P(ProcessTest, exit_code_is_zero_after_a_normal_return) {
  mp::Process p(ctx(), do_nothing);
  EXPECT_EQ(run(p), 0);
  EXPECT_FALSE(p.is_alive());
}

TEST_P(ProcessTest, exit_code_is_n_after_std_exit) {
  mp::Process p(ctx(), exit_with, 7);
  EXPECT_EQ(run(p), 7);
}

TEST_P(ProcessTest, a_captureless_lambda_and_a_stateless_object_run) {
  mp::Process a(ctx(), [](int x, std::string s) { std::exit(x + static_cast<int>(s.size())); }, 3, std::string("abcd"));
  EXPECT_EQ(run(a), 7);
  mp::Process b(ctx(), Stateless{}, 9);
  EXPECT_EQ(run(b), 9);
}

TEST_P(ProcessTest, exit_code_is_one_and_the_exception_is_printed_when_run_throws) {
  std::string path = testing::TempDir() + "mp_traceback_" + GetParam() + std::to_string(::getpid());
  mp::Process p(ctx(), throw_into, path);
  EXPECT_EQ(run(p), 1);
  std::string text = read_file(path);
  ::unlink(path.c_str());
  EXPECT_NE(text.find("Process " + p.name() + ":"), std::string::npos) << text;
  EXPECT_NE(text.find("Traceback"), std::string::npos) << text;
  EXPECT_NE(text.find("std::out_of_range: index 7 is past the end"), std::string::npos) << text;
}

TEST_P(ProcessTest, terminate_and_kill_give_minus_the_signal) {
  mp::Process t(ctx(), sleep_forever);
  t.start();
  t.terminate();
  ASSERT_TRUE(t.join(kWait));
  EXPECT_EQ(t.exitcode(), -SIGTERM);
  mp::Process k(ctx(), sleep_forever);
  k.start();
  k.kill();
  ASSERT_TRUE(k.join(kWait));
  EXPECT_EQ(k.exitcode(), -SIGKILL);
  k.kill();  // no-op once reaped
  k.terminate();
}

TEST_P(ProcessTest, join_with_a_timeout_returns_false_while_the_child_runs) {
  mp::Process p(ctx(), sleep_forever);
  p.start();
  auto begin = std::chrono::steady_clock::now();
  EXPECT_FALSE(p.join(50ms));
  EXPECT_GE(std::chrono::steady_clock::now() - begin, 50ms);
  EXPECT_TRUE(p.is_alive());
  EXPECT_EQ(p.exitcode(), std::nullopt);
  p.kill();
  EXPECT_TRUE(p.join(kWait));
  EXPECT_FALSE(p.is_alive());
}

TEST_P(ProcessTest, pid_is_set_by_start) {
  mp::Process p(ctx(), do_nothing);
  EXPECT_EQ(p.pid(), std::nullopt);
  p.start();
  ASSERT_TRUE(p.pid().has_value());
  EXPECT_GT(*p.pid(), 0);
  EXPECT_NE(*p.pid(), ::getpid());
  p.join();
}

TEST_P(ProcessTest, the_child_sees_its_name_daemon_flag_authkey_and_parent) {
  for (bool daemon : {false, true}) {
    mp::Bytes key = mp::bytes(daemon ? "a daemon's key" : "another key");
    mp::Process p(ctx(), check_identity, std::string("worker-x"), daemon, key, mp::current_process().name(), int(::getpid()));
    p.set_name("worker-x");
    p.set_daemon(daemon);
    p.set_authkey(key);
    EXPECT_EQ(run(p), 0) << "daemon " << daemon;
  }
}

TEST_P(ProcessTest, the_authkey_is_inherited_from_the_current_process) {
  mp::Process p(ctx(), do_nothing);
  EXPECT_EQ(p.authkey(), mp::current_process().authkey());
  EXPECT_EQ(p.authkey().size(), 32u);
}

TEST_P(ProcessTest, default_names_count_up_and_grandchildren_have_nested_names) {
  mp::Process a(ctx(), do_nothing), b(ctx(), do_nothing);
  ASSERT_EQ(a.name().rfind("Process-", 0), 0u);
  int na = std::stoi(a.name().substr(8)), nb = std::stoi(b.name().substr(8));
  EXPECT_EQ(nb, na + 1);
  mp::Process c(ctx(), start_grandchild, GetParam(), std::string());
  // The child's first child is "<child's name>:1".
  c = mp::Process(ctx(), start_grandchild, GetParam(), "Process-" + std::to_string(nb + 2) + ":1");
  EXPECT_EQ(c.name(), "Process-" + std::to_string(nb + 2));
  EXPECT_EQ(run(c), 0);
}

TEST_P(ProcessTest, the_sentinel_becomes_readable_when_the_child_ends) {
  mp::Process p(ctx(), sleep_forever);
  p.start();
  int fd = p.sentinel();
  EXPECT_FALSE(readable_now(fd));
  p.terminate();
  EXPECT_TRUE(readable_within(fd, 60s));
  p.join();
  EXPECT_EQ(p.exitcode(), -SIGTERM);
}

TEST_P(ProcessTest, active_children_lists_running_children_only) {
  EXPECT_TRUE(mp::active_children().empty());
  mp::Process p(ctx(), sleep_forever);
  p.start();
  auto kids = mp::active_children();
  ASSERT_EQ(kids.size(), 1u);
  EXPECT_EQ(kids[0], &p);
  p.terminate();
  p.join();
  EXPECT_TRUE(mp::active_children().empty());
}

TEST_P(ProcessTest, a_moved_process_stays_the_active_child) {
  std::vector<mp::Process> procs;
  for (int i = 0; i < 4; ++i) procs.emplace_back(ctx(), sleep_forever);
  for (auto& p : procs) p.start();
  procs.emplace_back(ctx(), sleep_forever);  // reallocates: the started ones move
  auto kids = mp::active_children();
  EXPECT_EQ(kids.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_NE(std::find(kids.begin(), kids.end(), &procs[static_cast<std::size_t>(i)]), kids.end());
  for (int i = 0; i < 4; ++i) procs[static_cast<std::size_t>(i)].kill();
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(procs[static_cast<std::size_t>(i)].join(kWait));
  EXPECT_TRUE(mp::active_children().empty());
}

TEST_P(ProcessTest, a_destroyed_process_object_leaves_its_child_running_and_reaped_later) {
  int pid;
  {
    mp::Process p(ctx(), sleep_forever);
    p.start();
    pid = *p.pid();
  }
  EXPECT_EQ(::kill(pid, 0), 0);  // still running
  EXPECT_TRUE(mp::active_children().empty());  // its object is gone
  ::kill(pid, SIGKILL);
}

TEST_P(ProcessTest, a_connection_crosses_as_an_argument) {
  auto [a, b] = mp::Pipe();
  mp::Process p(ctx(), echo, b, std::string("word-"), 5);
  p.start();
  ASSERT_TRUE(a.poll(kWait));
  EXPECT_EQ(a.recv<std::string>(), "word-5 from " + p.name());
  EXPECT_TRUE(p.join(kWait));
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(ProcessTest, many_children_run_at_once) {
  const int n = GetParam() == "forkserver" ? 50 : 20;
  std::vector<mp::Process> procs;
  for (int i = 0; i < n; ++i) procs.emplace_back(ctx(), exit_with, i % 100);
  for (auto& p : procs) p.start();
  for (int i = 0; i < n; ++i) {
    auto& p = procs[static_cast<std::size_t>(i)];
    ASSERT_TRUE(p.join(kWait));
    EXPECT_EQ(p.exitcode(), i % 100);
  }
}

TEST_P(ProcessTest, start_twice_and_join_before_start_are_logic_errors) {
  mp::Process p(ctx(), do_nothing);
  EXPECT_THROW(p.join(), std::logic_error);
  EXPECT_THROW(p.sentinel(), std::logic_error);
  p.start();
  EXPECT_THROW(p.start(), std::logic_error);
  p.join();
  EXPECT_THROW(p.start(), std::logic_error);
  EXPECT_THROW(p.set_daemon(true), std::logic_error);
}

TEST_P(ProcessTest, close_while_running_is_a_logic_error_and_methods_after_close_too) {
  mp::Process p(ctx(), sleep_forever);
  p.start();
  EXPECT_THROW(p.close(), std::logic_error);
  p.kill();
  p.join();
  p.close();
  p.close();  // a second close does nothing
  EXPECT_THROW(p.is_alive(), std::logic_error);
  EXPECT_THROW(p.join(), std::logic_error);
  EXPECT_THROW(p.pid(), std::logic_error);
  EXPECT_THROW(p.exitcode(), std::logic_error);
  EXPECT_THROW(p.sentinel(), std::logic_error);
  EXPECT_THROW(p.start(), std::logic_error);
  EXPECT_FALSE(p.name().empty());
}

TEST_P(ProcessTest, a_capturing_lambda_runs_under_fork_only) {
  int secret = 5;
  mp::Process p(ctx(), [secret] { std::exit(secret); });
  if (GetParam() == "fork") {
    EXPECT_EQ(run(p), 5);
    return;
  }
  try {
    p.start();
    FAIL() << "start() accepted a capturing lambda under " << GetParam();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("lambda"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(GetParam()), std::string::npos) << e.what();
  }
  EXPECT_EQ(p.pid(), std::nullopt);
}

struct Overrider : mp::Process {
  explicit Overrider(const mp::Context& c) : mp::Process(c, do_nothing) {}
  void run() override { std::exit(42); }
};

TEST_P(ProcessTest, a_subclass_overriding_run_works_under_fork_only) {
  Overrider p(ctx());
  if (GetParam() == "fork") {
    EXPECT_EQ(run(p), 42);
    return;
  }
  try {
    p.start();
    FAIL() << "start() accepted a subclass under " << GetParam();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("Overrider"), std::string::npos) << e.what();
  }
}

TEST_P(ProcessTest, a_process_without_target_exits_zero) {
  mp::Process p;
  if (GetParam() != "fork") p = mp::Process(ctx(), do_nothing);
  EXPECT_EQ(run(p), 0);
}

TEST_P(ProcessTest, the_child_logs_as_cpython_does_when_log_to_stderr_is_on) {
  if (GetParam() == "forkserver") GTEST_SKIP() << "a forkserver child writes to the server's stderr, not the test's";
  std::string path = testing::TempDir() + "mp_log_" + GetParam() + std::to_string(::getpid());
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  int saved = ::dup(STDERR_FILENO);
  ::dup2(fd, STDERR_FILENO);
  ::close(fd);
  mp::log_to_stderr(mp::levels::info);
  mp::Process p(ctx(), exit_with, 0);
  p.start();
  bool joined = p.join(kWait);
  mp::get_logger().clear_handlers();
  mp::get_logger().set_level(0);
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  ASSERT_TRUE(joined);
  std::string text = read_file(path);
  ::unlink(path.c_str());
  EXPECT_NE(text.find("[INFO/" + p.name() + "] child process calling self.run()"), std::string::npos) << text;
}

TEST_P(ProcessTest, the_child_logs_its_exit_code_after_run_returns) {
  if (GetParam() == "forkserver") GTEST_SKIP() << "a forkserver child writes to the server's stderr, not the test's";
  std::string path = testing::TempDir() + "mp_log2_" + GetParam() + std::to_string(::getpid());
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  int saved = ::dup(STDERR_FILENO);
  ::dup2(fd, STDERR_FILENO);
  ::close(fd);
  mp::log_to_stderr(mp::levels::info);
  mp::Process p(ctx(), do_nothing);
  p.start();
  bool joined = p.join(kWait);
  mp::get_logger().clear_handlers();
  mp::get_logger().set_level(0);
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  ASSERT_TRUE(joined);
  std::string text = read_file(path);
  ::unlink(path.c_str());
  EXPECT_NE(text.find("[INFO/" + p.name() + "] process shutting down"), std::string::npos) << text;
  EXPECT_NE(text.find("[INFO/" + p.name() + "] process exiting with exitcode 0"), std::string::npos) << text;
}

INSTANTIATE_TEST_SUITE_P(StartMethods, ProcessTest, testing::Values("fork", "spawn", "forkserver"),
                         [](const testing::TestParamInfo<std::string>& param) { return param.param; });

// ---- not per start method ----

TEST(ProcessModule, the_main_process_is_named_main_process_and_has_no_parent) {
  EXPECT_EQ(mp::current_process().name(), "MainProcess");
  EXPECT_EQ(mp::current_process().pid(), ::getpid());
  EXPECT_EQ(mp::current_process().authkey().size(), 32u);
  EXPECT_TRUE(mp::current_process().is_alive());
  EXPECT_EQ(mp::parent_process(), nullptr);
  EXPECT_THROW(mp::current_process().join(), std::logic_error);
  EXPECT_THROW(mp::current_process().start(), std::logic_error);
}

TEST(ProcessModule, cpu_count_is_at_least_one_and_at_most_the_affinity_mask) {
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  EXPECT_GE(mp::cpu_count(), 1);
  EXPECT_LE(mp::cpu_count(), CPU_COUNT(&set));
}

TEST(ProcessModule, start_methods_are_listed_and_contexts_are_checked) {
  auto all = mp::get_all_start_methods();
  // and "mpi" last in a build with MPI (docs/cluster.rst)
  std::vector<std::string> local(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(all.size(), 3)));
  EXPECT_EQ(local, (std::vector<std::string>{"fork", "spawn", "forkserver"}));
  EXPECT_TRUE(all.size() == 3 || (all.size() == 4 && all[3] == "mpi"));
  EXPECT_EQ(mp::get_context("spawn").start_method(), "spawn");
  EXPECT_THROW(mp::get_context("vfork"), std::invalid_argument);
  EXPECT_THROW(mp::set_start_method("vfork"), std::invalid_argument);
  std::string current = mp::get_start_method();  // fixes the default, as in Python
  EXPECT_THROW(mp::set_start_method("spawn"), std::logic_error);
  mp::set_start_method("spawn", true);
  EXPECT_EQ(mp::get_start_method(), "spawn");
  EXPECT_EQ(mp::get_context().start_method(), "spawn");
  mp::Process p(exit_with, 3);  // the default method at start(): spawn
  p.start();
  EXPECT_TRUE(p.join(kWait));
  EXPECT_EQ(p.exitcode(), 3);
  mp::set_start_method(current, true);
  EXPECT_EQ(mp::get_start_method(), current);
}

TEST(ProcessModule, a_copying_constructor_call_is_not_taken_for_a_target) {
  static_assert(!std::is_copy_constructible_v<mp::Process>);
  static_assert(std::is_nothrow_move_constructible_v<mp::Process>);
  static_assert(!std::is_constructible_v<mp::Process, mp::Context>);
}

#ifdef MP_NO_FREEZE_SUPPORT_HELPER
TEST(ProcessModule, a_spawned_child_that_starts_a_process_before_freeze_support_is_told_to_call_it) {
  // The helper's main() starts a Process without calling freeze_support: run as our spawn
  // child, it must get the std::logic_error (it exits 42 when the message names freeze_support).
  mp::set_executable(MP_NO_FREEZE_SUPPORT_HELPER);
  mp::Process p(mp::get_context("spawn"), do_nothing);
  p.start();
  mp::set_executable("");
  ASSERT_TRUE(p.join(kWait));
  EXPECT_EQ(p.exitcode(), 42);
}

TEST(ProcessModule, a_spawned_child_of_another_build_refuses_to_run_the_target) {
  // The helper calls freeze_support when MP_HELPER_FREEZE is set: it reads the preparation,
  // finds that it is not the parent's build, and exits 1 without running anything.
  ::setenv("MP_HELPER_FREEZE", "1", 1);
  mp::set_executable(MP_NO_FREEZE_SUPPORT_HELPER);
  mp::Process p(mp::get_context("spawn"), exit_with, 0);
  p.start();
  mp::set_executable("");
  ::unsetenv("MP_HELPER_FREEZE");
  ASSERT_TRUE(p.join(kWait));
  EXPECT_EQ(p.exitcode(), 1);
}
#endif

}  // namespace
