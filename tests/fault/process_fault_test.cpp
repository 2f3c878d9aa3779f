// Processes when something dies: the forkserver when its parent is SIGKILLed, daemonic children
// when their parent exits, a child whose parent vanished, a server that crashed, a missing
// executable.
//
// Each test runs its "parent" as a fork child of the test (an intermediate process), so that it
// can be killed or made to exit while the test watches, through pidfds and raw pipes.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

using namespace std::chrono_literals;

namespace {

constexpr auto kWait = 60s;

void do_nothing() {}
void sleep_forever() {
  for (;;) pause();
}

// Waits for the parent to die, then reports whether parent_process() saw it.
void wait_for_parent(mp::Connection out) {
  mp::Process* parent = mp::parent_process();
  if (!parent) {
    out.send(std::string("no parent"));
    return;
  }
  bool ended = parent->join(30s);
  out.send(std::string(ended && !parent->is_alive() ? "parent gone" : "parent still alive"));
}

struct RawPipe {
  int r = -1, w = -1;
  RawPipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::system_error(errno, std::system_category(), "pipe2");
    r = fds[0];
    w = fds[1];
  }
  ~RawPipe() {
    if (r >= 0) ::close(r);
    if (w >= 0) ::close(w);
  }
};

bool read_int(int fd, int& value, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return false;
  return ::read(fd, &value, sizeof value) == static_cast<ssize_t>(sizeof value);
}

void write_int(int fd, int value) {
  if (::write(fd, &value, sizeof value) != static_cast<ssize_t>(sizeof value)) std::exit(90);
}

int pidfd_of(int pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

bool readable_within(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
}

// The forkserver started by process `parent`: its child whose argv[1] is the server marker.
int find_forkserver_of(int parent) {
  DIR* d = ::opendir("/proc");
  if (!d) return -1;
  int found = -1;
  while (dirent* e = ::readdir(d)) {
    int pid = std::atoi(e->d_name);
    if (pid <= 0) continue;
    std::ifstream stat("/proc/" + std::string(e->d_name) + "/stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    auto close_paren = line.rfind(')');
    if (close_paren == std::string::npos) continue;
    std::istringstream rest(line.substr(close_paren + 2));
    char state;
    int ppid;
    if (!(rest >> state >> ppid) || ppid != parent) continue;
    std::ifstream cmd("/proc/" + std::string(e->d_name) + "/cmdline", std::ios::binary);
    std::string all((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
    if (all.find(std::string("\0--multiprocessing-forkserver\0", 30)) != std::string::npos) found = pid;
  }
  ::closedir(d);
  return found;
}

TEST(ProcessFault, the_forkserver_exits_when_its_parent_is_sigkilled) {
  RawPipe ready;
  mp::Process parent(mp::get_context("fork"), [w = ready.w] {
    mp::Process child(mp::get_context("forkserver"), do_nothing);
    child.start();
    child.join();
    write_int(w, child.exitcode().value_or(-1));
    sleep_forever();
  });
  parent.start();
  int code = -1;
  ASSERT_TRUE(read_int(ready.r, code, 60s));
  EXPECT_EQ(code, 0);
  int server = find_forkserver_of(*parent.pid());
  ASSERT_GT(server, 0) << "no forkserver found among the children of " << *parent.pid();
  int pidfd = pidfd_of(server);
  ASSERT_GE(pidfd, 0);
  parent.kill();
  ASSERT_TRUE(parent.join(kWait));
  EXPECT_TRUE(readable_within(pidfd, 30s)) << "the forkserver outlived its parent";
  ::close(pidfd);
}

class DaemonTest : public testing::TestWithParam<std::string> {};

TEST_P(DaemonTest, a_daemonic_child_is_terminated_when_its_parent_exits) {
  RawPipe report, go;
  std::string method = GetParam();
  mp::Process parent(mp::get_context("fork"), [method, w = report.w, r = go.r] {
    mp::Process daemon(mp::get_context(method), sleep_forever);
    daemon.set_daemon(true);
    daemon.start();
    write_int(w, *daemon.pid());
    int dummy;
    if (!read_int(r, dummy, 60s)) std::exit(91);
    // Returning ends this process normally: its exit function terminates the daemon.
  });
  parent.start();
  int daemon_pid = -1;
  ASSERT_TRUE(read_int(report.r, daemon_pid, 60s));
  int pidfd = pidfd_of(daemon_pid);  // the parent waits for "go": the daemon is alive here
  ASSERT_GE(pidfd, 0);
  write_int(go.w, 1);
  EXPECT_TRUE(readable_within(pidfd, 30s)) << "the daemon outlived its parent";
  ASSERT_TRUE(parent.join(kWait));
  EXPECT_EQ(parent.exitcode(), 0);
  ::close(pidfd);
}

TEST_P(DaemonTest, a_child_sees_its_parent_die) {
  auto [a, b] = mp::Pipe();
  std::string method = GetParam();
  mp::Process parent(mp::get_context("fork"), [method, b = b]() mutable {
    mp::Process child(mp::get_context(method), wait_for_parent, b);
    child.start();
    ::kill(::getpid(), SIGKILL);  // die without joining it
  });
  parent.start();
  ASSERT_TRUE(parent.join(kWait));
  EXPECT_EQ(parent.exitcode(), -SIGKILL);
  ASSERT_TRUE(a.poll(kWait));
  EXPECT_EQ(a.recv<std::string>(), "parent gone");
}

INSTANTIATE_TEST_SUITE_P(StartMethods, DaemonTest, testing::Values("fork", "spawn", "forkserver"),
                         [](const testing::TestParamInfo<std::string>& param) { return param.param; });

TEST(ProcessFault, a_new_forkserver_replaces_one_that_died) {
  mp::Process parent(mp::get_context("fork"), [] {
    auto ctx = mp::get_context("forkserver");
    mp::Process first(ctx, do_nothing);
    first.start();
    first.join();
    int server = find_forkserver_of(::getpid());
    if (server <= 0) std::exit(10);
    ::kill(server, SIGKILL);
    int fd = pidfd_of(server);
    if (fd >= 0 && !readable_within(fd, 30s)) std::exit(11);
    mp::Process second(ctx, [](int code) { std::exit(code); }, 23);
    second.start();
    if (!second.join(30s)) std::exit(12);
    std::exit(*second.exitcode() == 23 ? 0 : 13);
  });
  parent.start();
  ASSERT_TRUE(parent.join(kWait));
  EXPECT_EQ(parent.exitcode(), 0);
}

TEST(ProcessFault, a_missing_executable_makes_spawn_start_throw) {
  mp::set_executable("/nonexistent/program");
  mp::Process p(mp::get_context("spawn"), do_nothing);
  EXPECT_THROW(p.start(), std::system_error);
  mp::set_executable("");
  EXPECT_EQ(p.pid(), std::nullopt);
  EXPECT_TRUE(mp::active_children().empty());
}

TEST(ProcessFault, a_child_killed_before_reading_its_preparation_reports_the_signal) {
  // Kill the spawn child at once: start() must not fail or hang, and join reports the signal.
  for (int i = 0; i < 5; ++i) {
    mp::Process p(mp::get_context("spawn"), sleep_forever);
    p.start();
    p.kill();
    ASSERT_TRUE(p.join(kWait));
    EXPECT_EQ(p.exitcode(), -SIGKILL);
  }
}

}  // namespace
