// SharedMemory segments cross between this library and CPython's
// multiprocessing.shared_memory.SharedMemory by name, both ways (PROTOCOLS.md §5.1), for every
// CPython version found here. Versions that are not installed are reported as skipped tests.
//
// CPython 3.8-3.12 register a segment with their resource tracker even when they only open it,
// and so unlink it when the opening Python process exits (PROTOCOLS.md §5.2); the scripts
// unregister it right after opening (3.13+: track=False), as a Python user of a segment made by
// another program must.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "interop/python_peer.hpp"
#include "posix/fd.hpp"

using mp::shared_memory::SharedMemory;

namespace {

// Opens our segment by name, checks what we wrote and the size, writes an answer after it.
const char* kOpenScript = R"(
import sys
from multiprocessing import shared_memory, resource_tracker
name, size = sys.argv[1], int(sys.argv[2])
if sys.version_info >= (3, 13):
    shm = shared_memory.SharedMemory(name, track=False)
else:
    shm = shared_memory.SharedMemory(name)
    resource_tracker.unregister(shm._name, 'shared_memory')
assert shm.name == name, shm.name
assert shm.size == size, shm.size
assert bytes(shm.buf[:9]) == b'from C++\0'
shm.buf[9:20] = b'from Python'
shm.close()
)";

// Creates a segment, tells us its name over a Connection, waits until we wrote, checks, unlinks.
const char* kCreateScript = R"(
import sys
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
c = Connection(int(sys.argv[1]))
shm = shared_memory.SharedMemory(create=True, size=1000)
shm.buf[:11] = b'from Python'
c.send_bytes(shm.name.encode())
assert c.recv_bytes() == b'written'
ok = bytes(shm.buf[990:1000]) == b'C++ was here'[:10]
shm.close()
shm.unlink()
c.send_bytes(b'ok' if ok else b'bad')
c.recv_bytes()
)";

bool shm_exists(const std::string& name) {
  struct stat st {};
  return ::stat(("/dev/shm/" + name).c_str(), &st) == 0;
}

class SharedMemoryInterop : public testing::TestWithParam<std::string> {
 protected:
  const mp_test::Python* python() {
    auto it = mp_test::pythons().find(GetParam());
    return it == mp_test::pythons().end() ? nullptr : &it->second;
  }
};

TEST_P(SharedMemoryInterop, cpython_opens_our_segment_by_name_and_writes_into_it) {
  const auto* py = python();
  if (!py) GTEST_SKIP() << "CPython " << GetParam() << " is not installed here";
  SharedMemory shm(std::nullopt, true, 4096);
  std::memcpy(shm.buf().data(), "from C++", 9);
  pid_t pid = mp_test::start_python(*py, kOpenScript, {shm.name(), std::to_string(shm.size())});
  ASSERT_GT(pid, 0);
  EXPECT_EQ(mp_test::wait_exit(pid), 0);
  EXPECT_EQ(std::memcmp(shm.buf().data() + 9, "from Python", 11), 0);
  EXPECT_TRUE(shm_exists(shm.name()));  // Python did not take it away with it
  shm.close();
  shm.unlink();
}

TEST_P(SharedMemoryInterop, we_open_a_segment_cpython_created_and_it_sees_our_writes) {
  const auto* py = python();
  if (!py) GTEST_SKIP() << "CPython " << GetParam() << " is not installed here";
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  ::fcntl(sv[0], F_SETFD, FD_CLOEXEC);
  mp::Connection conn{mp::detail::posix::UniqueFd{sv[0]}, true, true};
  pid_t pid = mp_test::start_python(*py, kCreateScript, {std::to_string(sv[1])});
  ::close(sv[1]);
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(conn.poll(std::chrono::seconds(60)));
  auto raw = conn.recv_bytes();
  std::string name(reinterpret_cast<const char*>(raw.data()), raw.size());
  EXPECT_EQ(name.rfind("psm_", 0), 0u) << name;
  {
    SharedMemory shm(name);
    EXPECT_EQ(shm.name(), name);
    EXPECT_EQ(shm.size(), 1000u);
    EXPECT_EQ(std::memcmp(shm.buf().data(), "from Python", 11), 0);
    std::memcpy(shm.buf().data() + 990, "C++ was here", 10);
    shm.close();
  }
  conn.send_bytes("written");
  ASSERT_TRUE(conn.poll(std::chrono::seconds(60)));
  auto verdict = conn.recv_bytes();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(verdict.data()), verdict.size()), "ok");
  EXPECT_FALSE(shm_exists(name));  // Python unlinked it; our open did not track it
  EXPECT_THROW(SharedMemory{name}, std::system_error);
  conn.send_bytes("bye");
  EXPECT_EQ(mp_test::wait_exit(pid), 0);
}

INSTANTIATE_TEST_SUITE_P(CPython, SharedMemoryInterop, testing::Values("3.11", "3.12", "3.13"),
                         [](const testing::TestParamInfo<std::string>& p) { return "py" + p.param.substr(0, 1) + p.param.substr(2); });

}  // namespace
