// CPython's own multiprocessing.connection.Connection on one end of a socket, ours on the other:
// the framing (PROTOCOLS.md §1) must agree byte for byte, both ways, for every CPython version
// found here. Versions that are not installed are reported as skipped tests.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <fcntl.h>
#include <sys/socket.h>

#include <string>

#include "interop/python_peer.hpp"
#include "posix/fd.hpp"

namespace {

// Echoes every message back reversed (so that the answer proves Python parsed it), until b'quit'.
const char* kEchoScript = R"(
import sys
from multiprocessing.connection import Connection
c = Connection(int(sys.argv[1]))
while True:
    m = c.recv_bytes()
    if m == b'quit':
        break
    c.send_bytes(m[::-1] if len(m) < (1 << 30) else m)
c.close()
)";

struct PythonEcho {
  mp::Connection conn;
  pid_t pid = -1;
};

// Starts the echo script with one end of a stream socketpair (what Listener/Client sockets are).
PythonEcho start_echo(const mp_test::Python& py) {
  int sv[2];
  EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  fcntl(sv[0], F_SETFD, FD_CLOEXEC);  // ours; the other end stays open in the child
  PythonEcho echo{mp::Connection(mp::detail::posix::UniqueFd(sv[0]), true, true), -1};
  echo.pid = mp_test::start_python(py, kEchoScript, {std::to_string(sv[1])});
  close(sv[1]);
  return echo;
}

mp::Bytes pattern(std::size_t n) {
  mp::Bytes b(n);
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::byte>((i * 131 + n) & 0xff);
  return b;
}

class FramingInterop : public testing::TestWithParam<std::string> {};

TEST_P(FramingInterop, messages_of_every_header_size_cross_both_ways) {
  auto it = mp_test::pythons().find(GetParam());
  if (it == mp_test::pythons().end()) GTEST_SKIP() << "CPython " << GetParam() << " is not installed here";
  PythonEcho echo = start_echo(it->second);
  ASSERT_GT(echo.pid, 0);
  for (std::size_t n : {0u, 1u, 5u, 255u, 256u, 16383u, 16384u, 16385u, 65536u, 1u << 20, 20u << 20}) {
    mp::Bytes sent = pattern(n);
    echo.conn.send_bytes(sent);
    ASSERT_TRUE(echo.conn.poll(std::chrono::seconds(60))) << n;
    mp::Bytes got = echo.conn.recv_bytes();
    ASSERT_EQ(got.size(), n);
    EXPECT_TRUE(std::equal(sent.rbegin(), sent.rend(), got.begin())) << "message of " << n << " bytes";
  }
  echo.conn.send_bytes("quit");
  EXPECT_EQ(mp_test::wait_exit(echo.pid), 0);
  // Python closed its end: EOF here, as CPython's reader would see.
  EXPECT_THROW(echo.conn.recv_bytes(), mp::EOFError);
}

INSTANTIATE_TEST_SUITE_P(CPython, FramingInterop, testing::Values("3.11", "3.12", "3.13"),
                         [](const testing::TestParamInfo<std::string>& p) { return "py" + p.param.substr(0, 1) + p.param.substr(2); });

// The long form (ff ff ff ff + 8-byte length) only appears above 2 GiB - 1: one such message each
// way with the default python3. Needs about 3 × 2 GiB of memory between the two processes.
TEST(FramingInteropLarge, a_message_over_2_gib_crosses_both_ways) {
  if (mp_test::pythons().empty()) GTEST_SKIP() << "no python3 here";
  long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (static_cast<double>(pages) * static_cast<double>(page) < 9e9) GTEST_SKIP() << "needs ~9 GB of free memory";
  PythonEcho echo = start_echo(mp_test::pythons().begin()->second);
  const std::size_t n = (std::size_t{1} << 31) + 3;
  {
    mp::Bytes big(n, std::byte{0x5a});
    big[n - 1] = std::byte{0x01};
    echo.conn.send_bytes(big);
  }
  mp::Bytes got = echo.conn.recv_bytes();
  ASSERT_EQ(got.size(), n);
  EXPECT_EQ(got[0], std::byte{0x5a});
  EXPECT_EQ(got[n - 1], std::byte{0x01});  // echoed unreversed: order kept
  got = {};
  echo.conn.send_bytes("quit");
  EXPECT_EQ(mp_test::wait_exit(echo.pid), 0);
}

TEST(FramingInteropVersions, reports_which_cpython_versions_were_found) {
  std::string found;
  for (auto& [v, py] : mp_test::pythons()) found += v + " ";
  std::printf("CPython versions found: %s\n", found.empty() ? "none" : found.c_str());
  for (const char* want : {"3.11", "3.12", "3.13"})
    if (!mp_test::pythons().count(want)) std::printf("CPython %s: MISSING (its interop tests are skipped)\n", want);
  ASSERT_FALSE(mp_test::pythons().empty()) << "no python3 at all: interop is untested";
}

}  // namespace
