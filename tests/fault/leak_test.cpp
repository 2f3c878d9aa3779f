// Nothing is left behind: a "program" (a fork child of the test, which has no resource tracker of
// its own, so the child is a program tree of its own) creates every kind of object -- the shared
// ctypes, the synchronization primitives, pipes, SharedMemory segments (one unlinked, one
// leaked on purpose) and a spawn grandchild that leaks a segment of its own -- and then ends
// normally, by an exception, by abort(), or by SIGKILL. Afterwards /dev/shm and the temp folder
// must hold nothing new: the library's own objects are anonymous memfd segments, and the resource
// trackers unlink the leaked segments (and warn, as CPython's does) within a few seconds.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "resource_tracker.hpp"

using namespace std::chrono_literals;
using mp::shared_memory::SharedMemory;

namespace {

constexpr auto kWait = 60s;
constexpr auto kCleanupDeadline = 15s;

enum class End { normally = 0, by_exception = 1, by_abort = 2, by_sigkill = 3 };

std::set<std::string> list_dir(const std::string& dir) {
  std::set<std::string> out;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") out.insert(n);
    }
    ::closedir(d);
  }
  return out;
}

std::string temp_dir() {
  const char* t = std::getenv("TMPDIR");
  return t && *t ? t : "/tmp";
}

// The library's names in the temp folder (CPython's pymp- directories, our mp- files).
std::set<std::string> our_temp_entries() {
  std::set<std::string> out;
  for (auto& n : list_dir(temp_dir()))
    if (n.rfind("pymp-", 0) == 0 || n.rfind("mp-", 0) == 0) out.insert(n);
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::size_t count_of(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) ++n;
  return n;
}

// ---- the program ----

void grandchild_leaks_a_segment(mp::Connection report, mp::Value<long> value, mp::Array<double> array, mp::Lock lock,
                                mp::RLock rlock, mp::Event event) {
  value.set_value(value.value() + 1);
  array[0] = 1.0;
  if (!lock.acquire(true, 10s)) std::exit(40);
  lock.release();
  std::lock_guard guard(rlock);
  event.set();
  SharedMemory leaked(std::nullopt, true, 4096);
  leaked.buf()[0] = std::byte{1};
  report.send(leaked.name());
}

void program(mp::Connection report, std::string stderr_path, int how) {
  // Everything this program and its trackers write to stderr goes to the file (the trackers
  // inherit fd 2 when they start).
  int fd = ::open(stderr_path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) std::exit(30);
  ::dup2(fd, STDERR_FILENO);
  ::close(fd);

  mp::Value<long> value(7);
  mp::Array<double> array(100);
  mp::RawValue<int> raw_value(3);
  mp::RawArray<char> raw_array(4096);
  mp::Lock lock;
  mp::RLock rlock;
  mp::Semaphore semaphore(2);
  mp::BoundedSemaphore bounded(2);
  mp::Condition condition;
  mp::Event event;
  mp::Barrier barrier(2);
  auto [a, b] = mp::Pipe();
  SharedMemory unlinked(std::nullopt, true, 1000);
  unlinked.unlink();
  SharedMemory leaked(std::nullopt, true, 1000);
  std::vector<std::string> names{leaked.name(), unlinked.name()};

  // A spawn grandchild: a program tree of its own for the tracker (see resource_tracker.cpp).
  auto [r, w] = mp::Pipe(false);
  mp::Process g(mp::get_context("spawn"), grandchild_leaks_a_segment, w, value, array, lock, rlock, event);
  g.start();
  w.close();
  names.push_back(r.recv<std::string>());
  if (!g.join(kWait) || g.exitcode() != 0) std::exit(31);

  {
    std::lock_guard guard(value.get_lock());
    value.get_obj() += 1;
    lock.acquire();  // held while the program dies
    rlock.acquire();
  }
  report.send(names);
  switch (static_cast<End>(how)) {
    case End::normally:
      return;
    case End::by_exception:
      throw std::runtime_error("the program fails");
    case End::by_abort:
      std::abort();
    case End::by_sigkill:
      for (;;) ::pause();
  }
}

void run_and_check(End how) {
  // This test process must not have a tracker: the program's must be its own.
  ASSERT_EQ(mp::detail::resource_tracker::tracker_pid(), 0);
  auto shm_before = list_dir("/dev/shm");
  auto temp_before = our_temp_entries();
  char path[] = "/tmp/mp_leak_stderr_XXXXXX";
  int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ::close(fd);

  auto [r, w] = mp::Pipe(false);
  mp::Process p(mp::get_context("fork"), program, w, std::string(path), static_cast<int>(how));
  p.start();
  w.close();
  ASSERT_TRUE(r.poll(kWait)) << read_file(path);
  auto names = r.recv<std::vector<std::string>>();
  ASSERT_EQ(names.size(), 3u);
  if (how == End::by_sigkill) p.kill();
  ASSERT_TRUE(p.join(kWait));
  switch (how) {
    case End::normally: EXPECT_EQ(p.exitcode(), 0); break;
    case End::by_exception: EXPECT_EQ(p.exitcode(), 1); break;
    case End::by_abort: EXPECT_EQ(p.exitcode(), -SIGABRT); break;
    case End::by_sigkill: EXPECT_EQ(p.exitcode(), -SIGKILL); break;
  }

  // The trackers (the program's, and the grandchild's) clean up once their programs are gone.
  const std::string warning = "resource_tracker: There appear to be 1 leaked shared_memory objects to clean up at shutdown";
  std::set<std::string> added;
  std::string err;
  for (auto deadline = std::chrono::steady_clock::now() + kCleanupDeadline;;) {
    added.clear();
    for (auto& n : list_dir("/dev/shm"))
      if (!shm_before.count(n)) added.insert(n);
    err = read_file(path);
    if ((added.empty() && count_of(err, warning) >= 2) || std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(10ms);
  }
  for (auto& n : added) ADD_FAILURE() << "left in /dev/shm: " << n;
  for (auto& n : names) EXPECT_EQ(::access(("/dev/shm/" + n).c_str(), F_OK), -1) << n;
  EXPECT_EQ(count_of(err, warning), 2u) << err;
  EXPECT_NE(err.find(" /" + names[0]), std::string::npos) << err;  // the program's leak, by name
  EXPECT_NE(err.find(" /" + names[2]), std::string::npos) << err;  // the grandchild's
  EXPECT_EQ(err.find(names[1]), std::string::npos) << err;         // unlinked: not a leak
  if (how == End::by_exception) {
    EXPECT_NE(err.find("the program fails"), std::string::npos) << err;
  }
  EXPECT_EQ(our_temp_entries(), temp_before);
  ::unlink(path);
}

TEST(Leaks, a_program_that_ends_normally_leaves_nothing_behind) { run_and_check(End::normally); }
TEST(Leaks, a_program_that_ends_by_an_exception_leaves_nothing_behind) { run_and_check(End::by_exception); }
TEST(Leaks, a_program_that_aborts_leaves_nothing_behind) { run_and_check(End::by_abort); }
TEST(Leaks, a_program_killed_by_sigkill_leaves_nothing_behind) { run_and_check(End::by_sigkill); }

}  // namespace
