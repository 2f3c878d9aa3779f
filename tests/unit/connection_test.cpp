// Pipe() and Connection: every method, CPython's framing byte for byte, the stream and seqpacket
// modes, sizes around the record boundaries, wait(). Children are raw fork()s (this file tests
// the connection, not Process).
#include <gtest/gtest.h>
#include <multiprocessing/connection.hpp>
#include <multiprocessing/process.hpp>

#include "posix/fd.hpp"
#include "posix/socket.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

using namespace std::chrono_literals;
namespace posix = mp::detail::posix;

// Counts allocations, to check that the steady state of a connection allocates nothing. (GCC
// cannot see that the replaced operator new below is malloc, hence the pragma.)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
static std::atomic<long> g_allocations{0};
void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

mp::Bytes pattern(std::size_t n, unsigned seed = 1) {
  mp::Bytes b(n);
  std::uint32_t x = seed * 2654435761u + 1;
  for (std::size_t i = 0; i < n; ++i) {
    x = x * 1103515245u + 12345u;
    b[i] = static_cast<std::byte>(x >> 24);
  }
  return b;
}

std::string text(const mp::Bytes& b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); }

mp::Bytes raw(std::initializer_list<int> values) {
  mp::Bytes b;
  for (int v : values) b.push_back(static_cast<std::byte>(v));
  return b;
}

// A Connection on one end of a SOCK_STREAM socketpair (the mode of Listener/Client sockets) and the
// raw other end.
struct StreamPair {
  mp::Connection conn;
  posix::UniqueFd peer;
  StreamPair() {
    auto [a, b] = posix::stream_pair();
    conn = mp::Connection(std::move(a), true, true);
    peer = std::move(b);
  }
};

// Reads exactly n raw bytes from fd (a stream).
mp::Bytes read_raw(int fd, std::size_t n) {
  mp::Bytes b(n);
  EXPECT_EQ(posix::read_exact(fd, b), n);
  return b;
}

}  // namespace

TEST(Connection, pipe_carries_messages_both_ways) {
  auto [a, b] = mp::Pipe();
  EXPECT_TRUE(a.readable() && a.writable() && b.readable() && b.writable());
  a.send_bytes("ping");
  EXPECT_EQ(text(b.recv_bytes()), "ping");
  b.send_bytes("pong");
  EXPECT_EQ(text(a.recv_bytes()), "pong");
}

TEST(Connection, messages_keep_their_boundaries_and_order) {
  auto [a, b] = mp::Pipe();
  for (int i = 0; i < 50; ++i) a.send_bytes(std::string(static_cast<std::size_t>(i), static_cast<char>('a' + i % 26)));
  for (int i = 0; i < 50; ++i) EXPECT_EQ(text(b.recv_bytes()), std::string(static_cast<std::size_t>(i), static_cast<char>('a' + i % 26)));
  EXPECT_FALSE(b.poll());
}

TEST(Connection, empty_message_round_trips) {
  auto [a, b] = mp::Pipe();
  a.send_bytes(mp::Bytes{});
  a.send_bytes("");
  EXPECT_TRUE(b.recv_bytes().empty());
  std::vector<std::byte> buf(4);
  EXPECT_EQ(b.recv_bytes_into(buf, 4), 0u);
}

TEST(Connection, send_bytes_sends_the_slice_given_by_offset_and_size) {
  auto [a, b] = mp::Pipe();
  auto data = mp::bytes("0123456789");
  a.send_bytes(data, 2, 5);
  EXPECT_EQ(text(b.recv_bytes()), "23456");
  a.send_bytes(data, 7);
  EXPECT_EQ(text(b.recv_bytes()), "789");
  a.send_bytes(data, 10);
  EXPECT_EQ(text(b.recv_bytes()), "");
  a.send_bytes(data, 0, 0);
  EXPECT_EQ(text(b.recv_bytes()), "");
}

TEST(Connection, send_bytes_rejects_offset_or_size_beyond_the_buffer) {
  auto [a, b] = mp::Pipe();
  auto data = mp::bytes("0123456789");
  EXPECT_THROW(a.send_bytes(data, 11), std::invalid_argument);
  EXPECT_THROW(a.send_bytes(data, 5, 6), std::invalid_argument);
  EXPECT_THROW(a.send_bytes(data, 1, static_cast<std::size_t>(-1)), std::invalid_argument);
  EXPECT_FALSE(b.poll());  // nothing was sent
}

TEST(Connection, recv_bytes_into_writes_at_the_offset_and_returns_the_size) {
  auto [a, b] = mp::Pipe();
  a.send_bytes("abcdef");
  std::vector<std::byte> buf(16, std::byte{'.'});
  EXPECT_EQ(b.recv_bytes_into(buf, 4), 6u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(buf.data()), 12), "....abcdef..");
  a.send_bytes("xy");
  EXPECT_EQ(b.recv_bytes_into(std::span(buf).first(2)), 2u);  // exactly fits
  EXPECT_EQ(buf[0], std::byte{'x'});
}

TEST(Connection, recv_bytes_into_rejects_an_offset_beyond_the_buffer_without_reading) {
  auto [a, b] = mp::Pipe();
  a.send_bytes("abc");
  std::vector<std::byte> buf(4);
  EXPECT_THROW(b.recv_bytes_into(buf, 5), std::invalid_argument);
  EXPECT_EQ(b.recv_bytes_into(buf, 1), 3u);  // the message is still there
}

TEST(Connection, recv_bytes_into_a_small_buffer_throws_the_whole_message_and_stays_in_sync) {
  auto [a, b] = mp::Pipe();
  a.send_bytes("too long for the buffer");
  a.send_bytes("next");
  std::vector<std::byte> small(8);
  try {
    b.recv_bytes_into(small, 2);
    FAIL() << "no BufferTooShort";
  } catch (const mp::BufferTooShort& e) {
    EXPECT_EQ(text(e.message()), "too long for the buffer");
  }
  EXPECT_EQ(text(b.recv_bytes()), "next");
}

TEST(Connection, buffer_too_short_carries_a_large_message_whole) {
  auto [a, b] = mp::Pipe();
  auto big = pattern(3 << 20);
  std::thread sender([&, a = a]() mutable { a.send_bytes(big); });
  std::vector<std::byte> small(1000);
  try {
    b.recv_bytes_into(small);
    ADD_FAILURE() << "no BufferTooShort";
  } catch (const mp::BufferTooShort& e) {
    EXPECT_TRUE(e.message() == big);
  }
  sender.join();
}

TEST(Connection, recv_bytes_over_maxlength_leaves_a_duplex_connection_writable_only) {
  auto [a, b] = mp::Pipe();
  a.send_bytes("0123456789");
  try {
    b.recv_bytes(4);
    FAIL() << "no system_error";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code().value(), EMSGSIZE);
    EXPECT_NE(std::string(e.what()).find("bad message length"), std::string::npos);
  }
  EXPECT_FALSE(b.readable());
  EXPECT_TRUE(b.writable());
  EXPECT_FALSE(b.closed());
  EXPECT_THROW(b.recv_bytes(), std::logic_error);
  b.send_bytes("still writable");
  EXPECT_EQ(text(a.recv_bytes()), "still writable");
}

TEST(Connection, recv_bytes_over_maxlength_closes_a_read_only_connection) {
  auto [r, w] = mp::Pipe(false);
  w.send_bytes("0123456789");
  EXPECT_THROW(r.recv_bytes(9), std::system_error);
  EXPECT_TRUE(r.closed());
}

TEST(Connection, recv_bytes_accepts_a_message_of_exactly_maxlength) {
  auto [a, b] = mp::Pipe();
  a.send_bytes("0123");
  EXPECT_EQ(text(b.recv_bytes(4)), "0123");
  a.send_bytes("");
  EXPECT_EQ(text(b.recv_bytes(0)), "");
}

TEST(Connection, poll_is_false_when_empty_and_honours_its_timeout) {
  auto [a, b] = mp::Pipe();
  EXPECT_FALSE(b.poll());
  auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(b.poll(100ms));
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took, 100ms);
  EXPECT_LT(took, 5s);
  EXPECT_FALSE(b.poll(mp::Duration(-1)));  // a negative timeout does not wait
}

TEST(Connection, poll_is_true_once_a_message_is_there_and_stays_true_until_read) {
  auto [a, b] = mp::Pipe();
  a.send_bytes("x");
  EXPECT_TRUE(b.poll());
  EXPECT_TRUE(b.poll(10ms));
  b.recv_bytes();
  EXPECT_FALSE(b.poll());
}

TEST(Connection, poll_without_timeout_waits_for_a_message_from_another_thread) {
  auto [a, b] = mp::Pipe();
  std::thread sender([a = a]() mutable { a.send_bytes("late"); });
  EXPECT_TRUE(b.poll(std::nullopt));
  EXPECT_EQ(text(b.recv_bytes()), "late");
  sender.join();
}

TEST(Connection, poll_reports_end_of_file_as_ready) {
  auto [a, b] = mp::Pipe();
  a.close();
  EXPECT_TRUE(b.poll(std::nullopt));
  EXPECT_THROW(b.recv_bytes(), mp::EOFError);
}

TEST(Connection, recv_after_the_peer_closed_returns_what_was_sent_then_eof) {
  auto [a, b] = mp::Pipe();
  a.send_bytes("one");
  a.send_bytes("two");
  a.close();
  EXPECT_EQ(text(b.recv_bytes()), "one");
  EXPECT_EQ(text(b.recv_bytes()), "two");
  EXPECT_THROW(b.recv_bytes(), mp::EOFError);
  std::vector<std::byte> buf(4);
  EXPECT_THROW(b.recv_bytes_into(buf), mp::EOFError);
}

TEST(Connection, one_way_pipe_receives_on_the_first_and_sends_on_the_second) {
  auto [r, w] = mp::Pipe(false);
  EXPECT_TRUE(r.readable());
  EXPECT_FALSE(r.writable());
  EXPECT_TRUE(w.writable());
  EXPECT_FALSE(w.readable());
  EXPECT_GE(r.fileno(), 0);
  w.send_bytes("one way");
  EXPECT_EQ(text(r.recv_bytes()), "one way");
  EXPECT_THROW(r.send_bytes("x"), std::logic_error);
  EXPECT_THROW(w.recv_bytes(), std::logic_error);
  EXPECT_THROW(w.poll(), std::logic_error);
  std::vector<std::byte> buf(4);
  EXPECT_THROW(w.recv_bytes_into(buf), std::logic_error);
  // even through the raw fd, the unused direction is shut
  char c = 'x';
  EXPECT_EQ(::send(r.fileno(), &c, 1, MSG_NOSIGNAL), -1);
}

TEST(Connection, copies_share_one_connection_and_close_closes_all_of_them) {
  auto [a, b] = mp::Pipe();
  mp::Connection copy = b;
  a.send_bytes("shared");
  EXPECT_EQ(text(copy.recv_bytes()), "shared");
  EXPECT_EQ(copy.fileno(), b.fileno());
  b.close();
  EXPECT_TRUE(b.closed());
  EXPECT_TRUE(copy.closed());
  EXPECT_NO_THROW(copy.close());  // a second close does nothing
  EXPECT_NO_THROW(b.close());
  EXPECT_THROW(a.recv_bytes(), mp::EOFError);  // the fd really was closed
}

TEST(Connection, every_call_on_a_closed_connection_is_a_logic_error) {
  auto [a, b] = mp::Pipe();
  a.close();
  std::vector<std::byte> buf(4);
  EXPECT_THROW(a.fileno(), std::logic_error);
  EXPECT_THROW(a.send_bytes("x"), std::logic_error);
  EXPECT_THROW(a.recv_bytes(), std::logic_error);
  EXPECT_THROW(a.recv_bytes_into(buf), std::logic_error);
  EXPECT_THROW(a.poll(), std::logic_error);
  EXPECT_THROW(mp::connection::Waitable{a}, std::logic_error);
}

TEST(Connection, a_default_constructed_connection_is_closed) {
  mp::Connection c;
  EXPECT_TRUE(c.closed());
  EXPECT_FALSE(c.readable());
  EXPECT_FALSE(c.writable());
  EXPECT_THROW(c.send_bytes("x"), std::logic_error);
  EXPECT_THROW(c.recv_bytes(), std::logic_error);
  EXPECT_NO_THROW(c.close());
}

TEST(Connection, the_last_copy_to_go_closes_the_descriptor) {
  int fd;
  {
    auto [a, b] = mp::Pipe();
    fd = a.fileno();
    mp::Connection copy = a;
    a = mp::Connection();
    EXPECT_NE(::fcntl(fd, F_GETFD), -1);  // the copy keeps it open
  }
  EXPECT_EQ(::fcntl(fd, F_GETFD), -1);
  EXPECT_EQ(errno, EBADF);
}

TEST(Connection, pipe_descriptors_are_close_on_exec) {
  auto [a, b] = mp::Pipe();
  EXPECT_TRUE(::fcntl(a.fileno(), F_GETFD) & FD_CLOEXEC);
  EXPECT_TRUE(::fcntl(b.fileno(), F_GETFD) & FD_CLOEXEC);
}

TEST(Connection, constructing_from_a_bad_fd_or_no_direction_is_invalid) {
  EXPECT_THROW(mp::Connection(posix::UniqueFd(), true, true), std::invalid_argument);
  auto [a, b] = posix::stream_pair();
  EXPECT_THROW(mp::Connection(std::move(a), false, false), std::invalid_argument);
}

// ---- sizes: every path of the record splitting, and the buffers' growth ----

TEST(Connection, messages_of_sizes_around_the_record_boundaries_round_trip) {
  auto [a, b] = mp::Pipe();
  const std::size_t k = 64 << 10, r = 512 << 10;
  const std::vector<std::size_t> sizes = {0,         1,         4,         k - 13,    k - 12,    k - 5,
                                          k - 4,     k - 3,     k,         k + 1,     r - 1,     r,
                                          r + 1,     2 * r - 4, 2 * r + 7, (3 << 20) + 5};
  std::thread sender([&, a = a]() mutable {
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      auto m = pattern(sizes[i], static_cast<unsigned>(i));
      a.send_bytes(m);
      a.send_bytes(m);
      a.send_bytes(m);
    }
  });
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    auto expected = pattern(sizes[i], static_cast<unsigned>(i));
    EXPECT_TRUE(b.recv_bytes() == expected) << "recv_bytes, size " << sizes[i];
    std::vector<std::byte> buf(sizes[i] + 3);
    EXPECT_EQ(b.recv_bytes_into(buf, 3), sizes[i]);
    EXPECT_TRUE(std::equal(expected.begin(), expected.end(), buf.begin() + 3)) << "recv_bytes_into, size " << sizes[i];
    EXPECT_TRUE(b.recv_bytes(sizes[i]) == expected) << "recv_bytes(maxlength), size " << sizes[i];
  }
  sender.join();
}

TEST(Connection, a_64_mib_message_round_trips) {
  auto [a, b] = mp::Pipe();
  auto big = pattern(64 << 20);
  std::thread sender([&, a = a]() mutable { a.send_bytes(big); });
  EXPECT_TRUE(b.recv_bytes() == big);
  sender.join();
}

TEST(Connection, LARGE_a_message_over_2_gib_goes_in_the_long_form_and_round_trips) {
  const std::size_t n = (std::size_t{1} << 31) + 5;  // above 0x7FFFFFFF: the long header
  // The sender's copy, the receiver's buffer and its last growth step: ~3.5 n at the peak.
  long pages = ::sysconf(_SC_AVPHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0 && static_cast<double>(pages) * static_cast<double>(page) < 4.0 * static_cast<double>(n))
    GTEST_SKIP() << "not enough free memory for a 2 GiB message";
  mp::Bytes big(n);
  for (std::size_t i = 0; i < n; i += 4093) big[i] = static_cast<std::byte>(i / 4093);
  big[n - 1] = std::byte{0x5a};

  {  // the bytes on a stream socket: ff ff ff ff + 8-byte length, then the payload
    StreamPair s;
    std::thread sender([&] { s.conn.send_bytes(big); });
    EXPECT_TRUE(read_raw(s.peer.get(), 12) == raw({0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 5}));
    std::vector<std::byte> sink(1 << 20);
    std::size_t left = n;
    while (left) left -= posix::read_exact(s.peer.get(), std::span(sink).first(std::min(left, sink.size())));
    sender.join();
  }
  {  // through a Pipe
    auto [a, b] = mp::Pipe();
    std::thread sender([&, a = a]() mutable { a.send_bytes(big); });
    mp::Bytes got = b.recv_bytes();
    sender.join();
    EXPECT_EQ(got.size(), n);
    EXPECT_TRUE(got == big);
  }
}

// ---- CPython's framing, byte for byte (PROTOCOLS.md §1) ----

TEST(Framing, send_bytes_writes_cpythons_header_and_payload_on_a_stream) {
  StreamPair s;
  s.conn.send_bytes("");
  EXPECT_TRUE(read_raw(s.peer.get(), 4) == raw({0, 0, 0, 0}));
  s.conn.send_bytes("hello");
  EXPECT_TRUE(read_raw(s.peer.get(), 9) == raw({0, 0, 0, 5, 0x68, 0x65, 0x6c, 0x6c, 0x6f}));
  auto big = pattern(100000);
  s.conn.send_bytes(big);
  EXPECT_TRUE(read_raw(s.peer.get(), 4) == raw({0, 1, 0x86, 0xa0}));
  EXPECT_TRUE(read_raw(s.peer.get(), big.size()) == big);
}

TEST(Framing, a_pipe_carries_the_same_bytes_one_record_per_small_message) {
  auto [a, b] = mp::Pipe();
  a.send_bytes("hello");
  std::byte record[64];
  ssize_t n = ::recv(b.fileno(), record, sizeof record, 0);
  ASSERT_EQ(n, 9);
  EXPECT_TRUE(mp::Bytes(record, record + 9) == raw({0, 0, 0, 5, 0x68, 0x65, 0x6c, 0x6c, 0x6f}));
}

TEST(Framing, recv_bytes_reads_cpythons_short_form_from_a_stream) {
  StreamPair s;
  posix::write_all(s.peer.get(), raw({0, 0, 0, 5, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0, 0, 0, 0}));
  EXPECT_EQ(text(s.conn.recv_bytes()), "hello");
  EXPECT_EQ(text(s.conn.recv_bytes()), "");
}

TEST(Framing, recv_bytes_accepts_the_long_form_for_a_small_message) {
  StreamPair s;
  posix::write_all(s.peer.get(), raw({0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 3, 'a', 'b', 'c'}));
  EXPECT_EQ(text(s.conn.recv_bytes()), "abc");
  // and on a pipe, where the whole message is one record
  auto [a, b] = mp::Pipe();
  auto m = raw({0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 3, 'a', 'b', 'c'});
  ASSERT_EQ(::send(a.fileno(), m.data(), m.size(), 0), static_cast<ssize_t>(m.size()));
  EXPECT_EQ(text(b.recv_bytes()), "abc");
}

TEST(Framing, a_header_below_minus_one_is_rejected_and_stops_reading) {
  StreamPair s;
  posix::write_all(s.peer.get(), raw({0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 0}));
  EXPECT_THROW(s.conn.recv_bytes(), std::system_error);
  EXPECT_FALSE(s.conn.readable());
  EXPECT_TRUE(s.conn.writable());

  auto [a, b] = mp::Pipe();
  auto m = raw({0x80, 0, 0, 0});
  ASSERT_EQ(::send(a.fileno(), m.data(), m.size(), 0), 4);
  EXPECT_THROW(b.recv_bytes(), std::system_error);
  EXPECT_FALSE(b.readable());
}

TEST(Framing, a_truncated_header_or_payload_is_eof_error) {
  for (auto bytes : {raw({0, 0}), raw({0, 0, 0, 5, 'h', 'e'}), raw({0xff, 0xff, 0xff, 0xff, 0, 0})}) {
    StreamPair s;
    posix::write_all(s.peer.get(), bytes);
    s.peer.reset();
    EXPECT_THROW(s.conn.recv_bytes(), mp::EOFError);
  }
  StreamPair s;
  posix::write_all(s.peer.get(), raw({0, 0, 0, 5, 'h', 'e'}));
  s.peer.reset();
  std::vector<std::byte> buf(16);
  EXPECT_THROW(s.conn.recv_bytes_into(buf), mp::EOFError);
}

TEST(Framing, a_huge_length_with_little_data_fails_at_eof_without_allocating_it) {
  // 1 TiB cannot be allocated here: reaching EOF (not bad_alloc) shows the reader did not try.
  StreamPair s;
  posix::write_all(s.peer.get(), raw({0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
  s.peer.reset();
  EXPECT_THROW(s.conn.recv_bytes(), mp::EOFError);

  StreamPair t;  // BufferTooShort would collect the whole message: same rule
  posix::write_all(t.peer.get(), raw({0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0, 0, 0, 0, 0, 1, 2, 3}));
  t.peer.reset();
  std::vector<std::byte> buf(16);
  EXPECT_THROW(t.conn.recv_bytes_into(buf), mp::EOFError);
}

TEST(Framing, a_stream_connection_round_trips_messages_of_every_size) {
  auto [x, y] = posix::stream_pair();
  mp::Connection a(std::move(x), true, true), b(std::move(y), true, true);
  const std::vector<std::size_t> sizes = {0, 1, 16384, 16385, 1 << 20, (5 << 20) + 3};
  std::thread sender([&] {
    for (std::size_t i = 0; i < sizes.size(); ++i) a.send_bytes(pattern(sizes[i], static_cast<unsigned>(i)));
  });
  for (std::size_t i = 0; i < sizes.size(); ++i)
    EXPECT_TRUE(b.recv_bytes() == pattern(sizes[i], static_cast<unsigned>(i))) << sizes[i];
  sender.join();
}

TEST(Framing, a_connection_over_an_os_pipe_works_as_a_stream) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  mp::Connection r{posix::UniqueFd(fds[0]), true, false}, w{posix::UniqueFd(fds[1]), false, true};
  w.send_bytes("through a pipe");
  EXPECT_TRUE(r.poll());
  EXPECT_EQ(text(r.recv_bytes()), "through a pipe");
  w.close();
  EXPECT_THROW(r.recv_bytes(), mp::EOFError);
}

// ---- processes ----

TEST(Connection, a_forked_child_uses_its_inherited_copy) {
  auto [a, b] = mp::Pipe();
  pid_t pid = ::fork();
  ASSERT_NE(pid, -1);
  if (pid == 0) {
    a.close();
    try {
      mp::Bytes m = b.recv_bytes();
      m.push_back(std::byte{'!'});
      b.send_bytes(m);
    } catch (...) {
      ::_exit(2);
    }
    ::_exit(0);
  }
  b.close();
  a.send_bytes("hi");
  EXPECT_EQ(text(a.recv_bytes()), "hi!");
  EXPECT_THROW(a.recv_bytes(), mp::EOFError);  // the child exited: every copy of b is gone
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(Connection, sending_to_a_closed_peer_is_epipe_not_sigpipe) {
  auto [a, b] = mp::Pipe();
  b.close();
  try {
    a.send_bytes("nobody listens");
    FAIL() << "no error";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code().value(), EPIPE);
  }
  StreamPair s;
  s.peer.reset();
  EXPECT_THROW(s.conn.send_bytes("nobody"), std::system_error);
}

// ---- typed messages ----

struct Point {
  double x = 0, y = 0;
  std::string label;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(x, y, label);
  }
  bool operator==(const Point&) const = default;
};

TEST(Connection, typed_values_round_trip) {
  auto [a, b] = mp::Pipe();
  a.send(std::vector<int>{1, 2, 3});
  EXPECT_EQ(b.recv<std::vector<int>>(), (std::vector<int>{1, 2, 3}));
  a.send(std::map<std::string, double>{{"pi", 3.14159}});
  EXPECT_EQ((b.recv<std::map<std::string, double>>().at("pi")), 3.14159);
  a.send(std::tuple<int, std::string, bool>{1, "two", true});
  EXPECT_EQ((b.recv<std::tuple<int, std::string, bool>>()), (std::tuple<int, std::string, bool>{1, "two", true}));
  a.send(Point{1.5, -2.0, "p"});
  EXPECT_EQ(b.recv<Point>(), (Point{1.5, -2.0, "p"}));
}

TEST(Connection, a_large_typed_value_round_trips_on_a_pipe_and_a_stream) {
  std::vector<std::uint32_t> v(3 << 20);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<std::uint32_t>(i * 7);
  auto [a, b] = mp::Pipe();
  std::thread sender([&, a = a]() mutable { a.send(v); });
  EXPECT_TRUE(b.recv<std::vector<std::uint32_t>>() == v);
  sender.join();
  StreamPair s;
  auto [x, y] = posix::stream_pair();
  mp::Connection c(std::move(x), true, true), d(std::move(y), true, true);
  std::thread sender2([&] { c.send(v); });
  EXPECT_TRUE(d.recv<std::vector<std::uint32_t>>() == v);
  sender2.join();
}

TEST(Connection, recv_of_the_wrong_type_is_invalid_argument_and_stays_in_sync) {
  auto [a, b] = mp::Pipe();
  a.send(std::string("not an int"));
  a.send(7);
  EXPECT_THROW(b.recv<int>(), std::invalid_argument);
  EXPECT_EQ(b.recv<int>(), 7);
}

TEST(Connection, the_steady_state_allocates_nothing_per_message) {
  auto pipe = mp::Pipe();  // (not a structured binding: clang before 16 cannot capture one)
  mp::Connection &a = pipe.first, &b = pipe.second;
  auto [x, y] = posix::stream_pair();
  mp::Connection c(std::move(x), true, true), d(std::move(y), true, true);
  std::vector<std::byte> buf(64);
  auto one_round = [&] {
    a.send(12345);
    EXPECT_EQ(b.recv<int>(), 12345);
    a.send_bytes("abc");
    EXPECT_EQ(b.recv_bytes_into(buf), 3u);
    c.send(std::uint64_t{9});
    EXPECT_EQ(d.recv<std::uint64_t>(), 9u);
  };
  one_round();  // the first message sizes the reusable buffers
  long before = g_allocations.load();
  for (int i = 0; i < 100; ++i) one_round();
  EXPECT_EQ(g_allocations.load() - before, 0);
  a.send_bytes("abc");
  EXPECT_EQ(b.recv_bytes().size(), 3u);  // returns a new Bytes: the counter does see allocations
  EXPECT_GT(g_allocations.load() - before, 0);
}

// ---- wait() ----

TEST(Wait, returns_the_ready_objects_in_input_order) {
  auto [a1, b1] = mp::Pipe();
  auto [a2, b2] = mp::Pipe();
  auto [a3, b3] = mp::Pipe();
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  posix::UniqueFd pr(fds[0]), pw(fds[1]);
  a3.send_bytes("3");
  a1.send_bytes("1");
  posix::write_all(pw.get(), mp::bytes("x"));
  auto ready = mp::connection::wait({b1, b2, b3, pr.get()}, 10s);
  ASSERT_EQ(ready.size(), 3u);
  EXPECT_EQ(ready[0].fileno(), b1.fileno());
  EXPECT_EQ(ready[1].fileno(), b3.fileno());
  EXPECT_EQ(ready[2].fileno(), pr.get());
}

TEST(Wait, counts_end_of_file_as_ready) {
  auto [a1, b1] = mp::Pipe();
  auto [a2, b2] = mp::Pipe();
  a2.close();
  auto ready = mp::connection::wait({b1, b2}, 10s);
  ASSERT_EQ(ready.size(), 1u);
  EXPECT_EQ(ready[0].fileno(), b2.fileno());
}

TEST(Wait, returns_nothing_when_the_timeout_passes) {
  auto [a1, b1] = mp::Pipe();
  auto [a2, b2] = mp::Pipe();
  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(mp::connection::wait({b1, b2}, 100ms).empty());
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took, 100ms);
  EXPECT_LT(took, 5s);
  EXPECT_TRUE(mp::connection::wait({b1, b2}, 0s).empty());
}

TEST(Wait, without_timeout_waits_until_something_is_ready) {
  auto [a, b] = mp::Pipe();
  std::thread sender([a = a]() mutable { a.send_bytes("go"); });
  auto ready = mp::connection::wait({b});
  ASSERT_EQ(ready.size(), 1u);
  EXPECT_EQ(ready[0].fileno(), b.fileno());
  sender.join();
}

TEST(Wait, a_process_is_ready_once_it_has_ended) {
  auto [a, b] = mp::Pipe();
  mp::Process p([b = b]() mutable { b.recv_bytes(); });  // ends when told to
  p.start();
  b.close();
  mp::connection::Waitable w(p);
  EXPECT_EQ(w.fileno(), p.sentinel());
  EXPECT_TRUE(mp::connection::wait({w}, 0s).empty());
  a.send_bytes("end");
  auto ready = mp::connection::wait({w}, 60s);
  ASSERT_EQ(ready.size(), 1u);
  EXPECT_EQ(ready[0].fileno(), p.sentinel());
  EXPECT_TRUE(p.join(10s));
  EXPECT_EQ(p.exitcode(), 0);
}

TEST(Wait, a_descriptor_that_is_not_open_is_ebadf) {
  auto [a, b] = posix::stream_pair();
  int fd = a.get();
  a.reset();
  EXPECT_THROW(mp::connection::wait({fd}, 0s), std::system_error);
}

// ---- crossing to a spawned child: the codec's save/load ----

TEST(Connection, saving_a_connection_outside_an_fd_export_is_invalid_argument) {
  auto [a, b] = mp::Pipe();
  EXPECT_THROW(mp::dumps(a), std::invalid_argument);
}

TEST(Connection, a_connection_crosses_as_a_descriptor_index_and_its_directions) {
  auto [r, w] = mp::Pipe(false);
  mp::Bytes saved;
  std::vector<int> fds;
  {
    mp::detail::FdExport exported;
    saved = mp::dumps(w);
    fds = exported.fds();
  }
  ASSERT_EQ(fds.size(), 1u);
  EXPECT_EQ(fds[0], w.fileno());
  // what a spawned child does with the fds it was passed: its own copies
  mp::Connection loaded;
  {
    mp::detail::FdImport imported({posix::dup_cloexec(fds[0]).release()});
    loaded = mp::loads<mp::Connection>(saved);
  }
  EXPECT_NE(loaded.fileno(), w.fileno());
  EXPECT_TRUE(loaded.writable());
  EXPECT_FALSE(loaded.readable());
  loaded.send_bytes("via the loaded copy");
  EXPECT_EQ(text(r.recv_bytes()), "via the loaded copy");
}
