// shared_memory::SharedMemory (CPython's multiprocessing.shared_memory semantics and names) and
// the resource tracker's registration, under each start method.
//
// Children report through their exit code (a failed check exits with a distinct code).
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <functional>
#include <regex>
#include <string>
#include <thread>

#include "resource_tracker.hpp"

using namespace std::chrono_literals;
using mp::shared_memory::SharedMemory;

namespace {

constexpr auto kWait = 60s;

bool shm_exists(const std::string& name) {
  struct stat st {};
  return ::stat(("/dev/shm/" + name).c_str(), &st) == 0;
}

int errno_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::system_error& e) {
    return e.code().value();
  }
  return 0;
}

// A segment unlinked at the end of the test whatever happens, so that a failing test leaves
// nothing in /dev/shm either.
struct Unlinker {
  std::string name;
  ~Unlinker() {
    if (!name.empty()) ::unlink(("/dev/shm/" + name).c_str());
  }
};

// ---- child targets ----

void write_through_handle(SharedMemory shm, std::string text) {
  if (shm.size() < text.size()) std::exit(10);
  std::memcpy(shm.buf().data(), text.data(), text.size());
}

void write_by_name(std::string name, std::string text, bool fresh_process) {
  SharedMemory other(name);
  if (other.name() != name) std::exit(11);
  std::memcpy(other.buf().data(), text.data(), text.size());
  other.close();
  // Opening by name does not track: a spawn/forkserver child (which does not share its parent's
  // tracker) has none after it.
  if (fresh_process && mp::detail::resource_tracker::tracker_pid() != 0) std::exit(12);
}

void unlink_by_name(std::string name) { SharedMemory(name).unlink(); }

class SharedMemoryTest : public testing::TestWithParam<std::string> {
 protected:
  mp::Context ctx() const { return mp::get_context(GetParam()); }
  static int run(mp::Process& p) {
    p.start();
    EXPECT_TRUE(p.join(kWait));
    return p.exitcode().value_or(-1000);
  }
};

TEST_P(SharedMemoryTest, a_child_writes_through_a_handle_passed_as_an_argument) {
  SharedMemory shm(std::nullopt, true, 100);
  Unlinker guard{shm.name()};
  mp::Process p(ctx(), write_through_handle, shm, std::string("from the child"));
  EXPECT_EQ(run(p), 0);
  EXPECT_EQ(std::memcmp(shm.buf().data(), "from the child", 14), 0);
  shm.close();
  shm.unlink();
  EXPECT_FALSE(shm_exists(guard.name));
}

TEST_P(SharedMemoryTest, a_child_opens_the_segment_by_name_without_tracking_it) {
  SharedMemory shm(std::nullopt, true, 64);
  Unlinker guard{shm.name()};
  mp::Process p(ctx(), write_by_name, shm.name(), std::string("by name"), GetParam() != "fork");
  EXPECT_EQ(run(p), 0);
  EXPECT_EQ(std::memcmp(shm.buf().data(), "by name", 7), 0);
  // The child's exit did not remove it: only the creator's tracker would.
  EXPECT_TRUE(shm_exists(shm.name()));
  shm.unlink();
}

TEST_P(SharedMemoryTest, a_handle_passed_to_a_child_works_after_the_name_is_unlinked) {
  SharedMemory shm(std::nullopt, true, 32);
  shm.unlink();  // the child gets the segment itself (its fd), not the name
  mp::Process p(ctx(), write_through_handle, shm, std::string("still here"));
  EXPECT_EQ(run(p), 0);
  EXPECT_EQ(std::memcmp(shm.buf().data(), "still here", 10), 0);
}

TEST_P(SharedMemoryTest, a_child_can_unlink_a_segment_the_parent_created) {
  SharedMemory shm(std::nullopt, true, 16);
  Unlinker guard{shm.name()};
  mp::Process p(ctx(), unlink_by_name, shm.name());
  EXPECT_EQ(run(p), 0);
  EXPECT_FALSE(shm_exists(shm.name()));
  EXPECT_EQ(errno_of([&] { shm.unlink(); }), ENOENT);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, SharedMemoryTest, testing::Values("fork", "spawn", "forkserver"),
                         [](const testing::TestParamInfo<std::string>& param) { return param.param; });

// ---- one process ----

TEST(SharedMemory, a_new_segment_has_a_cpython_name_mode_0600_and_the_exact_size) {
  SharedMemory shm(std::nullopt, true, 10);
  Unlinker guard{shm.name()};
  EXPECT_TRUE(std::regex_match(shm.name(), std::regex("psm_[0-9a-f]{8}"))) << shm.name();
  struct stat st {};
  ASSERT_EQ(::stat(("/dev/shm/" + shm.name()).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_size, 10);
  EXPECT_EQ(shm.size(), 10u);
  EXPECT_EQ(shm.buf().size(), 10u);
  for (std::byte b : shm.buf()) EXPECT_EQ(b, std::byte{0});
  shm.close();
  shm.unlink();
  EXPECT_FALSE(shm_exists(guard.name));
}

TEST(SharedMemory, names_differ_between_segments) {
  SharedMemory a(std::nullopt, true, 1), b(std::nullopt, true, 1);
  EXPECT_NE(a.name(), b.name());
  a.unlink();
  b.unlink();
}

TEST(SharedMemory, a_second_handle_opened_by_name_sees_the_same_bytes_and_size) {
  SharedMemory shm(std::nullopt, true, 5000);
  Unlinker guard{shm.name()};
  SharedMemory other(shm.name());
  EXPECT_EQ(other.size(), 5000u);
  EXPECT_EQ(other.name(), shm.name());
  shm.buf()[4999] = std::byte{42};
  EXPECT_EQ(other.buf()[4999], std::byte{42});
  other.close();
  shm.close();
  shm.unlink();
}

TEST(SharedMemory, a_given_name_is_used_as_is_and_reported_without_the_slash) {
  std::string name = "mp_test_" + std::to_string(::getpid());
  SharedMemory shm(name, true, 8);
  Unlinker guard{name};
  EXPECT_EQ(shm.name(), name);
  EXPECT_TRUE(shm_exists(name));
  shm.unlink();
  EXPECT_FALSE(shm_exists(name));
}

TEST(SharedMemory, a_name_with_a_leading_slash_is_reported_with_it_as_cpython_does) {
  std::string name = "mp_test_slash_" + std::to_string(::getpid());
  SharedMemory shm("/" + name, true, 8);  // CPython opens "//name", which the system reads as "/name"
  Unlinker guard{name};
  EXPECT_EQ(shm.name(), "/" + name);
  EXPECT_TRUE(shm_exists(name));
  SharedMemory same(name);
  EXPECT_EQ(same.size(), 8u);
  shm.unlink();
  EXPECT_FALSE(shm_exists(name));
}

TEST(SharedMemory, creating_an_existing_name_is_eexist) {
  SharedMemory shm(std::nullopt, true, 8);
  Unlinker guard{shm.name()};
  EXPECT_EQ(errno_of([&] { SharedMemory again(shm.name(), true, 8); }), EEXIST);
  shm.unlink();
}

TEST(SharedMemory, opening_a_missing_name_is_enoent) {
  EXPECT_EQ(errno_of([] { SharedMemory missing("psm_nothere0"); }), ENOENT);
}

TEST(SharedMemory, bad_arguments_are_invalid_argument) {
  EXPECT_THROW(SharedMemory(std::nullopt, true, 0), std::invalid_argument);
  EXPECT_THROW(SharedMemory(std::nullopt, false, 10), std::invalid_argument);
  EXPECT_THROW(SharedMemory(std::nullopt), std::invalid_argument);
}

TEST(SharedMemory, close_unmaps_every_copy_and_twice_is_harmless) {
  SharedMemory shm(std::nullopt, true, 8);
  Unlinker guard{shm.name()};
  SharedMemory copy = shm;
  copy.close();
  EXPECT_THROW(shm.buf(), std::logic_error);
  EXPECT_NO_THROW(shm.close());
  EXPECT_EQ(shm.size(), 8u);  // name and size outlive close(), as in Python
  EXPECT_EQ(shm.name(), guard.name);
  shm.unlink();  // after close()
  EXPECT_FALSE(shm_exists(guard.name));
}

TEST(SharedMemory, unlink_before_close_keeps_the_mapping_usable) {
  SharedMemory shm(std::nullopt, true, 8);
  shm.unlink();
  EXPECT_FALSE(shm_exists(shm.name()));
  shm.buf()[0] = std::byte{1};
  EXPECT_EQ(shm.buf()[0], std::byte{1});
  EXPECT_EQ(errno_of([&] { shm.unlink(); }), ENOENT);
  shm.close();
}

TEST(SharedMemory, an_empty_handle_throws_logic_error_except_close) {
  SharedMemory empty;
  EXPECT_THROW(empty.buf(), std::logic_error);
  EXPECT_THROW((void)empty.name(), std::logic_error);
  EXPECT_THROW((void)empty.size(), std::logic_error);
  EXPECT_THROW(empty.unlink(), std::logic_error);
  EXPECT_NO_THROW(empty.close());
  static_assert(mp::detail::is_serializable_v<SharedMemory>);
}

TEST(SharedMemory, a_handle_outside_a_process_argument_cannot_be_encoded) {
  SharedMemory shm(std::nullopt, true, 8);
  Unlinker guard{shm.name()};
  EXPECT_THROW((void)mp::dumps(shm), std::invalid_argument);
  shm.unlink();
}

TEST(SharedMemory, opening_an_empty_segment_is_invalid_argument) {
  std::string name = "mp_test_empty_" + std::to_string(::getpid());
  Unlinker guard{name};
  int fd = ::open(("/dev/shm/" + name).c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ::close(fd);
  EXPECT_THROW(SharedMemory{name}, std::invalid_argument);
  EXPECT_TRUE(shm_exists(name));  // somebody else's segment: left alone
}

// Run in a spawn child: a fresh process, which has no tracker until it creates a segment.
void check_tracker_starts_on_create(std::string opened_name) {
  {
    SharedMemory opened(opened_name);
    if (opened.size() != 4096) std::exit(10);
    if (mp::detail::resource_tracker::tracker_pid() != 0) std::exit(11);
  }
  SharedMemory created(std::nullopt, true, 8);
  int pid = mp::detail::resource_tracker::tracker_pid();
  if (pid <= 0) std::exit(12);
  if (::kill(pid, 0) != 0) std::exit(13);
  created.unlink();
  SharedMemory another(std::nullopt, true, 8);
  if (mp::detail::resource_tracker::tracker_pid() != pid) std::exit(14);  // one tracker per process
  another.unlink();
}

TEST(ResourceTracker, a_created_segment_starts_the_tracker_and_an_opened_one_does_not) {
  std::string name = "mp_test_track_" + std::to_string(::getpid());
  Unlinker guard{name};
  int fd = ::open(("/dev/shm/" + name).c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 4096), 0);
  ::close(fd);
  mp::Process p(mp::get_context("spawn"), check_tracker_starts_on_create, name);
  p.start();
  ASSERT_TRUE(p.join(kWait));
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_TRUE(shm_exists(name));  // opened, not created: the child's tracker leaves it alone
}

TEST(ResourceTracker, a_killed_tracker_is_replaced_and_told_what_is_registered) {
  SharedMemory first(std::nullopt, true, 8);
  Unlinker guard1{first.name()};
  int pid = mp::detail::resource_tracker::tracker_pid();
  ASSERT_GT(pid, 0);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  // The next registration finds it gone (EPIPE/ECONNRESET once its socket is closed) and starts
  // another; wait until the old one is really dead so that the send must fail.
  for (auto deadline = std::chrono::steady_clock::now() + 10s;
       ::kill(pid, 0) == 0 && std::chrono::steady_clock::now() < deadline;) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) break;
    std::this_thread::sleep_for(1ms);
  }
  SharedMemory second(std::nullopt, true, 8);
  Unlinker guard2{second.name()};
  int replacement = mp::detail::resource_tracker::tracker_pid();
  EXPECT_GT(replacement, 0);
  EXPECT_NE(replacement, pid);
  first.unlink();
  second.unlink();
}

}  // namespace
