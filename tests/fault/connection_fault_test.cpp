// Connections when things go wrong: a writer killed in the middle of a message, peers that
// vanish, EINTR storms during blocking calls, wait() over children that come and go. Children are
// raw fork()s that only call async-signal-safe functions before _exit.
#include <gtest/gtest.h>
#include <multiprocessing/connection.hpp>

#include "posix/fd.hpp"
#include "posix/socket.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
namespace posix = mp::detail::posix;

namespace {

// Forks a child that runs body() and _exits with its result (2 if it threw).
template <class F>
pid_t fork_child(F body) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int code = 2;
    try {
      code = body();
    } catch (...) {
    }
    ::_exit(code);
  }
  return pid;
}

// Waits for the child to end; a child still there after 60 s is killed and fails the test, so that
// a bug shows as a failure rather than a hang.
int reap(pid_t pid) {
  int status = 0;
  auto deadline = std::chrono::steady_clock::now() + 60s;
  for (;;) {
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r == -1 && errno != EINTR) return -1;
    if (std::chrono::steady_clock::now() > deadline) {
      ADD_FAILURE() << "child " << pid << " did not end";
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return status;
    }
    std::this_thread::sleep_for(1ms);
  }
}

// Raises SIGALRM every `period` while it lives, with a handler that does nothing and no
// SA_RESTART: every blocking call in this thread keeps failing with EINTR.
class SignalStorm {
 public:
  explicit SignalStorm(std::chrono::microseconds period) {
    struct sigaction sa {};
    sa.sa_handler = [](int) {};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    ::sigaction(SIGALRM, &sa, &old_);
    itimerval t{};
    t.it_interval.tv_usec = static_cast<suseconds_t>(period.count());
    t.it_value.tv_usec = static_cast<suseconds_t>(period.count());
    ::setitimer(ITIMER_REAL, &t, nullptr);
  }
  ~SignalStorm() {
    itimerval t{};
    ::setitimer(ITIMER_REAL, &t, nullptr);
    ::sigaction(SIGALRM, &old_, nullptr);
  }

 private:
  struct sigaction old_ {};
};

}  // namespace

TEST(ConnectionFault, a_writer_killed_in_the_middle_of_a_large_message_gives_eof_error_on_a_pipe) {
  auto [a, b] = mp::Pipe();
  mp::Bytes big(64 << 20, std::byte{1});
  pid_t pid = fork_child([&, b = b]() mutable {
    b.send_bytes(big);  // blocks: the socket holds a few MiB at most, and nobody reads the rest
    return 0;
  });
  ASSERT_GT(pid, 0);
  b.close();
  // The first record has arrived, so the child is inside send_bytes (it cannot finish alone).
  ASSERT_TRUE(a.poll(60s));
  ::kill(pid, SIGKILL);
  int status = reap(pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  EXPECT_THROW(a.recv_bytes(), mp::EOFError);
}

TEST(ConnectionFault, a_writer_killed_in_the_middle_of_a_large_message_gives_eof_error_on_a_stream) {
  auto [x, y] = posix::stream_pair();
  mp::Connection a(std::move(x), true, true), b(std::move(y), true, true);
  mp::Bytes big(64 << 20, std::byte{1});
  pid_t pid = fork_child([&, b = b]() mutable {
    b.send_bytes(big);
    return 0;
  });
  ASSERT_GT(pid, 0);
  b.close();
  ASSERT_TRUE(a.poll(60s));
  ::kill(pid, SIGKILL);
  reap(pid);
  std::vector<std::byte> buf(big.size());
  EXPECT_THROW(a.recv_bytes_into(buf), mp::EOFError);
}

TEST(ConnectionFault, a_writer_killed_while_the_reader_is_blocked_gives_eof_error_not_a_hang) {
  auto [a, b] = mp::Pipe();
  mp::Bytes big(16 << 20, std::byte{1});
  pid_t pid = fork_child([&, b = b]() mutable {
    b.send_bytes(big);
    return 0;
  });
  ASSERT_GT(pid, 0);
  b.close();
  // The reader is inside recv_bytes (taking what arrives) when the kill lands.
  std::atomic<bool> reading{false};
  std::thread killer([&] {
    while (!reading.load()) std::this_thread::yield();
    ::kill(pid, SIGKILL);
  });
  reading = true;
  bool eof = false;
  try {
    a.recv_bytes();  // may complete if the whole message got through before the kill
    EXPECT_THROW(a.recv_bytes(), mp::EOFError);
    eof = true;
  } catch (const mp::EOFError&) {
    eof = true;
  }
  EXPECT_TRUE(eof);
  killer.join();
  reap(pid);
}

TEST(ConnectionFault, a_reader_whose_peer_process_exited_gets_eof_error) {
  auto [a, b] = mp::Pipe();
  pid_t pid = fork_child([&, a = a, b = b]() mutable {
    a.close();
    b.send_bytes("last words");
    return 0;
  });
  ASSERT_GT(pid, 0);
  b.close();
  reap(pid);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(a.recv_bytes().data()), 10), "last words");
  EXPECT_THROW(a.recv_bytes(), mp::EOFError);
  EXPECT_THROW(a.recv_bytes(), mp::EOFError);  // and stays so
}

TEST(ConnectionFault, a_header_cut_short_by_a_dying_writer_is_eof_error) {
  auto [x, y] = posix::stream_pair();
  mp::Connection a(std::move(x), true, true);
  pid_t pid = fork_child([fd = y.get()] {
    const char partial[] = {0, 0};
    return ::write(fd, partial, 2) == 2 ? 0 : 1;
  });
  ASSERT_GT(pid, 0);
  y.reset();
  reap(pid);
  EXPECT_THROW(a.recv_bytes(), mp::EOFError);
}

TEST(ConnectionFault, closing_with_an_unread_message_resets_the_peer) {
  // Documented (API.md): the peer's next read may fail with ECONNRESET instead of EOFError.
  auto [a, b] = mp::Pipe();
  a.send_bytes("never read");
  b.close();
  try {
    a.recv_bytes();
    FAIL() << "no error";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code().value(), ECONNRESET);
  } catch (const mp::EOFError&) {
    // also allowed by the contract
  }
}

TEST(ConnectionFault, poll_keeps_its_deadline_through_a_signal_storm) {
  auto [a, b] = mp::Pipe();
  SignalStorm storm(2ms);
  auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(b.poll(150ms));
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took, 150ms);
  EXPECT_LT(took, 5s);
  start = std::chrono::steady_clock::now();
  EXPECT_TRUE(mp::connection::wait({b}, 150ms).empty());
  took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took, 150ms);
  EXPECT_LT(took, 5s);
}

TEST(ConnectionFault, blocking_send_and_recv_survive_a_signal_storm) {
  // SIGALRM goes to any thread of the process; both threads sit in blocking calls while it rains.
  auto [a, b] = mp::Pipe();
  auto [x, y] = posix::stream_pair();
  mp::Connection c(std::move(x), true, true), d(std::move(y), true, true);
  mp::Bytes big(32 << 20);
  for (std::size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<std::byte>(i >> 12);
  SignalStorm storm(200us);
  std::thread sender([&, a = a]() mutable {
    for (int i = 0; i < 3; ++i) a.send_bytes(big);
    for (int i = 0; i < 3; ++i) c.send_bytes(big);
  });
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(b.recv_bytes() == big);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(d.recv_bytes() == big);
  sender.join();
}

TEST(ConnectionFault, wait_follows_children_and_descriptors_as_they_become_ready) {
  // Three children, each with its own pipe; a fourth waitable is a plain fd that turns readable
  // (EOF) when the last child exits and its write end goes with it.
  struct Child {
    mp::Connection mine;
    pid_t pid;
  };
  int gone[2];
  ASSERT_EQ(::pipe2(gone, O_CLOEXEC), 0);
  posix::UniqueFd gone_r(gone[0]), gone_w(gone[1]);
  std::vector<Child> children;
  std::vector<mp::Connection> theirs;
  for (int i = 0; i < 3; ++i) {
    auto pipe = mp::Pipe();  // (not a structured binding: clang before 16 cannot capture one)
    mp::Connection& mine = pipe.first;
    mp::Connection& child_end = pipe.second;
    pid_t pid = fork_child([&, i, c = child_end]() mutable {
      // the parent's ends it inherited: held here, they would keep its own end from seeing EOF
      mine.close();
      for (auto& earlier : children) earlier.mine.close();
      // wait for the parent's go, answer, then wait for EOF
      auto go = c.recv_bytes();
      c.send_bytes(std::string(1, static_cast<char>('0' + i)));
      try {
        c.recv_bytes();
      } catch (const mp::EOFError&) {
      }
      return 0;
    });
    ASSERT_GT(pid, 0);
    child_end.close();
    children.push_back({mine, pid});
  }
  gone_w.reset();  // only the children hold the write end now
  std::vector<mp::connection::Waitable> ws;
  for (auto& c : children) ws.emplace_back(c.mine);
  ws.emplace_back(gone_r.get());
  EXPECT_TRUE(mp::connection::wait(ws, 0s).empty());

  children[2].mine.send_bytes("go");
  auto ready = mp::connection::wait(ws, 60s);
  ASSERT_EQ(ready.size(), 1u);
  EXPECT_EQ(ready[0].fileno(), children[2].mine.fileno());
  EXPECT_EQ(children[2].mine.recv_bytes()[0], std::byte{'2'});

  children[0].mine.send_bytes("go");
  children[1].mine.send_bytes("go");
  std::vector<int> got;
  while (got.size() < 2) {
    for (auto& r : mp::connection::wait(ws, 60s)) {
      for (int i = 0; i < 2; ++i)
        if (r.fileno() == children[i].mine.fileno()) {
          EXPECT_EQ(children[i].mine.recv_bytes()[0], static_cast<std::byte>('0' + i));
          got.push_back(i);
        }
    }
  }
  EXPECT_TRUE(mp::connection::wait(ws, 0s).empty());
  for (auto& c : children) c.mine.close();  // EOF: the children exit
  for (auto& c : children) EXPECT_TRUE(WIFEXITED(reap(c.pid)));
  ready = mp::connection::wait({gone_r.get()}, 60s);
  EXPECT_EQ(ready.size(), 1u);
}
