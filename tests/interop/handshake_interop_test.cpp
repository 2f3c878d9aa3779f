// CPython's multiprocessing.connection Listener/Client against ours, with the authentication
// handshake (PROTOCOLS.md §2), for every CPython version found here (3.11 speaks the legacy
// HMAC-MD5 form, 3.12+ the {sha256} form). Versions that are not installed are reported as skipped.
//
// A Python peer reports to the test through a pipe whose write end it inherits (its port, or the
// HMACs it computed), and through its exit code: 0 done, 3 AuthenticationError.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "auth.hpp"
#include "interop/python_peer.hpp"

using namespace std::chrono_literals;
namespace conn = mp::connection;

namespace {

constexpr auto kWait = 60s;

// Connects to the address in argv (host port, or a path), authenticates with the key in argv[1],
// then echoes one message reversed. AuthenticationError exits 3.
const char* kPythonClient = R"(
import sys
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
key = bytes.fromhex(sys.argv[1])
address = (sys.argv[2], int(sys.argv[3])) if len(sys.argv) > 3 else sys.argv[2]
try:
    c = Client(address, authkey=key)
except AuthenticationError:
    sys.exit(3)
c.send_bytes(b'hello from python')
m = c.recv_bytes()
c.send_bytes(m[::-1])
c.close()
)";

// Listens on 127.0.0.1 with the key in argv[1], writes its port to the fd in argv[2], accepts one
// connection and echoes one message reversed. AuthenticationError exits 3.
const char* kPythonListener = R"(
import os, sys
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener
key = bytes.fromhex(sys.argv[1])
with Listener(('127.0.0.1', 0), authkey=key) as l:
    os.write(int(sys.argv[2]), b'%d\n' % l.address[1])
    try:
        c = l.accept()
    except AuthenticationError:
        sys.exit(3)
    m = c.recv_bytes()
    c.send_bytes(m[::-1])
    assert c.recv_bytes() == b'done'
)";

// Writes hmac.new(key, message, name).hexdigest() for each digest named in argv[3:] to the fd in
// argv[1], one per line (key and message are hex in argv[2]).
const char* kPythonHmac = R"(
import hmac, os, sys
key, message = [bytes.fromhex(x) for x in sys.argv[2].split(':')]
out = ''.join(hmac.new(key, message, d).hexdigest() + '\n' for d in sys.argv[3:])
os.write(int(sys.argv[1]), out.encode())
)";

std::string to_hex(const mp::Bytes& b) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (std::byte x : b) {
    s += digits[std::to_integer<unsigned>(x) >> 4];
    s += digits[std::to_integer<unsigned>(x) & 15];
  }
  return s;
}

std::string reversed(std::string s) { return {s.rbegin(), s.rend()}; }

// A pipe whose write end a Python child inherits; read() collects what it wrote, with a timeout.
struct ReportPipe {
  int read_fd = -1, write_fd = -1;
  ReportPipe() {
    int p[2];
    EXPECT_EQ(::pipe(p), 0);
    read_fd = p[0];
    write_fd = p[1];
    ::fcntl(read_fd, F_SETFD, FD_CLOEXEC);
  }
  ~ReportPipe() {
    ::close(read_fd);
    if (write_fd >= 0) ::close(write_fd);
  }
  void close_write_end() {
    ::close(write_fd);
    write_fd = -1;
  }
  // Reads until a newline (or until EOF when until_eof); "" on timeout.
  std::string read(bool until_eof = false) {
    std::string out;
    for (;;) {
      pollfd p{read_fd, POLLIN, 0};
      if (::poll(&p, 1, 60000) != 1) return "";
      char buf[512];
      ssize_t n = ::read(read_fd, buf, sizeof buf);
      if (n <= 0) return out;
      out.append(buf, static_cast<std::size_t>(n));
      if (!until_eof && out.find('\n') != std::string::npos) return out;
    }
  }
};

class HandshakeInterop : public testing::TestWithParam<std::string> {
 protected:
  const mp_test::Python* python() {
    auto it = mp_test::pythons().find(GetParam());
    return it == mp_test::pythons().end() ? nullptr : &it->second;
  }
};

#define NEED_PYTHON()                                                                   \
  const mp_test::Python* py = python();                                                 \
  if (!py) GTEST_SKIP() << "CPython " << GetParam() << " is not installed here"

// Accepts one connection, failing the test rather than hanging when the peer never comes.
mp::Connection accept_within(conn::Listener& listener) {
  std::vector<conn::Waitable> ws{conn::Waitable(listener)};
  if (conn::wait(ws, kWait).empty()) throw std::runtime_error("no connection within the timeout");
  return listener.accept();
}

void echo_with_python_client(conn::Listener& listener, pid_t pid) {
  ASSERT_GT(pid, 0);
  mp::Connection c = accept_within(listener);
  EXPECT_EQ(c.recv_bytes(), mp::bytes("hello from python"));
  c.send_bytes("0123456789");
  EXPECT_EQ(c.recv_bytes(), mp::bytes("9876543210"));
  EXPECT_EQ(mp_test::wait_exit(pid), 0);
}

TEST_P(HandshakeInterop, python_client_with_the_right_key_connects_over_tcp) {
  NEED_PYTHON();
  const mp::Bytes key = mp::bytes("interop key");
  conn::Listener listener(conn::Address("127.0.0.1", 0), {.authkey = key});
  auto where = listener.address();
  echo_with_python_client(listener, mp_test::start_python(*py, kPythonClient,
                                                          {to_hex(key), where.host(), std::to_string(where.port())}));
}

TEST_P(HandshakeInterop, python_client_with_the_right_key_connects_over_unix_sockets) {
  NEED_PYTHON();
  const mp::Bytes key = mp::bytes("another key");
  conn::Listener listener(std::nullopt, {.authkey = key});
  echo_with_python_client(listener, mp_test::start_python(*py, kPythonClient, {to_hex(key), listener.address().path()}));
}

TEST_P(HandshakeInterop, python_client_with_the_process_authkey_connects) {
  NEED_PYTHON();
  conn::Listener listener(std::nullopt, {.authenticate = true});
  echo_with_python_client(listener, mp_test::start_python(*py, kPythonClient,
                                                          {to_hex(mp::current_process().authkey()), listener.address().path()}));
}

TEST_P(HandshakeInterop, python_client_with_a_wrong_key_is_refused_on_both_sides) {
  NEED_PYTHON();
  conn::Listener listener(conn::Address("127.0.0.1", 0), {.authkey = mp::bytes("right")});
  auto where = listener.address();
  pid_t pid = mp_test::start_python(*py, kPythonClient,
                                    {to_hex(mp::bytes("wrong")), where.host(), std::to_string(where.port())});
  ASSERT_GT(pid, 0);
  EXPECT_THROW(accept_within(listener), mp::AuthenticationError);
  EXPECT_EQ(mp_test::wait_exit(pid), 3);
  // and the listener goes on: the same Python with the right key gets in
  echo_with_python_client(listener, mp_test::start_python(*py, kPythonClient,
                                                          {to_hex(mp::bytes("right")), where.host(), std::to_string(where.port())}));
}

TEST_P(HandshakeInterop, our_client_connects_to_a_python_listener) {
  NEED_PYTHON();
  const mp::Bytes key = mp::bytes("python listens");
  ReportPipe report;
  pid_t pid = mp_test::start_python(*py, kPythonListener, {to_hex(key), std::to_string(report.write_fd)});
  ASSERT_GT(pid, 0);
  report.close_write_end();
  std::string port = report.read();
  ASSERT_FALSE(port.empty()) << "the Python listener did not report its port";
  mp::Connection c = conn::Client(conn::Address("127.0.0.1", static_cast<std::uint16_t>(std::stoi(port))), {.authkey = key});
  c.send_bytes("from c++");
  EXPECT_EQ(c.recv_bytes(), mp::bytes(reversed("from c++")));
  c.send_bytes("done");
  EXPECT_EQ(mp_test::wait_exit(pid), 0);
}

TEST_P(HandshakeInterop, our_client_with_a_wrong_key_is_refused_by_a_python_listener) {
  NEED_PYTHON();
  ReportPipe report;
  pid_t pid = mp_test::start_python(*py, kPythonListener, {to_hex(mp::bytes("right")), std::to_string(report.write_fd)});
  ASSERT_GT(pid, 0);
  report.close_write_end();
  std::string port = report.read();
  ASSERT_FALSE(port.empty());
  EXPECT_THROW(conn::Client(conn::Address("127.0.0.1", static_cast<std::uint16_t>(std::stoi(port))),
                            {.authkey = mp::bytes("wrong")}),
               mp::AuthenticationError);
  EXPECT_EQ(mp_test::wait_exit(pid), 3);
}

// Our MACs against Python's hmac module, for every digest the handshake allows, with a key and
// message of awkward sizes (an empty key too, as 3.13 allows).
TEST_P(HandshakeInterop, every_allowed_digest_matches_pythons_hmac) {
  NEED_PYTHON();
  const std::vector<std::string> digests = {"md5", "sha256", "sha384", "sha3_256", "sha3_384"};
  for (const mp::Bytes& key : {mp::Bytes{}, mp::bytes("k"), mp::Bytes(200, std::byte{0x5c})}) {
    mp::Bytes message = mp::bytes("{sha256}");
    for (int i = 0; i < 40; ++i) message.push_back(static_cast<std::byte>(i * 37));
    ReportPipe report;
    std::vector<std::string> args = {std::to_string(report.write_fd), to_hex(key) + ":" + to_hex(message)};
    args.insert(args.end(), digests.begin(), digests.end());
    pid_t pid = mp_test::start_python(*py, kPythonHmac, args);
    ASSERT_GT(pid, 0);
    report.close_write_end();
    std::string lines = report.read(true);
    EXPECT_EQ(mp_test::wait_exit(pid), 0);
    std::string ours;
    for (auto& d : digests) ours += to_hex(*mp::detail::auth::hmac(d, key, message)) + "\n";
    EXPECT_EQ(lines, ours) << "key of " << key.size() << " bytes";
  }
}

INSTANTIATE_TEST_SUITE_P(Versions, HandshakeInterop, testing::Values("3.11", "3.12", "3.13"),
                         [](const auto& p) { return "py" + std::string(1, p.param[2]) + p.param.substr(3); });

}  // namespace
