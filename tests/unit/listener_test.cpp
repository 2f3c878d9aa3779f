// Listener, Client, Address and the authentication handshake (Python: multiprocessing.connection's
// Listener/Client/deliver_challenge/answer_challenge, PROTOCOLS.md §2).
//
// Hostile peers are played by raw sockets in a thread of the test, so that every byte they send
// is chosen here; well-behaved peers are Client() in a thread or in a child process.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "auth.hpp"
#include "posix/fd.hpp"
#include "posix/socket.hpp"

using namespace std::chrono_literals;
namespace conn = mp::connection;
namespace posix = mp::detail::posix;
namespace auth = mp::detail::auth;

namespace {

constexpr auto kWait = 60s;
const mp::Bytes kKey = mp::bytes("secret password");

mp::Bytes hex(std::string_view text) {
  mp::Bytes out;
  auto digit = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  for (std::size_t i = 0; i + 1 < text.size();) {
    if (text[i] == ' ') {
      ++i;
      continue;
    }
    out.push_back(static_cast<std::byte>(digit(text[i]) * 16 + digit(text[i + 1])));
    i += 2;
  }
  return out;
}

mp::Bytes concat(std::string_view prefix, const mp::Bytes& rest) {
  mp::Bytes out = mp::bytes(prefix);
  out.insert(out.end(), rest.begin(), rest.end());
  return out;
}

// A raw connection to a listener: a Connection over a plain connected socket, for framed messages
// chosen by the test, plus the fd for unframed bytes.
mp::Connection raw_client(const conn::Address& where) {
  posix::SocketAddress a{where.family() == "AF_INET", where.host(), where.port(), where.path()};
  return mp::Connection(posix::connect_socket(a), true, true);
}

// The good client every refusal test ends with: the listener must still accept it.
std::future<std::string> good_client(const conn::Address& where, mp::Bytes key) {
  return std::async(std::launch::async, [where, key] {
    mp::Connection c = conn::Client(where, {.authkey = key});
    c.send(std::string("good"));
    return c.recv<std::string>();
  });
}

void expect_still_accepting(conn::Listener& listener, const mp::Bytes& key) {
  auto client = good_client(listener.address(), key);
  mp::Connection c = listener.accept();
  EXPECT_EQ(c.recv<std::string>(), "good");
  c.send(std::string("bye"));
  EXPECT_EQ(client.get(), "bye");
}

std::string unique_abstract_name(const char* what) {
  return std::string(1, '\0') + "mp-listener-test-" + what + "-" + std::to_string(::getpid());
}

// ---- Address ----

TEST(Address, inet_address_reports_its_parts) {
  conn::Address a("127.0.0.1", 5000);
  EXPECT_EQ(a.family(), "AF_INET");
  EXPECT_EQ(a.host(), "127.0.0.1");
  EXPECT_EQ(a.port(), 5000);
  EXPECT_EQ(a.path(), "");
  EXPECT_EQ(a.to_string(), "127.0.0.1:5000");
  EXPECT_FALSE(a.is_abstract());
}

TEST(Address, unix_and_abstract_addresses_report_their_parts) {
  conn::Address a(std::string("/tmp/x.sock"));
  EXPECT_EQ(a.family(), "AF_UNIX");
  EXPECT_EQ(a.path(), "/tmp/x.sock");
  EXPECT_EQ(a.port(), 0);
  EXPECT_EQ(a.to_string(), "/tmp/x.sock");
  conn::Address b(std::string("\0name", 5));
  EXPECT_TRUE(b.is_abstract());
  EXPECT_EQ(b.path().size(), 5u);
  EXPECT_EQ(b.to_string(), "@name");
  EXPECT_EQ(a, conn::Address(std::string("/tmp/x.sock")));
  EXPECT_NE(a, b);
}

TEST(Address, address_crosses_the_native_codec) {
  conn::Address a("localhost", 7);
  EXPECT_EQ(mp::loads<conn::Address>(mp::dumps(a)), a);
  conn::Address b(std::string("\0abs", 4));
  EXPECT_EQ(mp::loads<conn::Address>(mp::dumps(b)), b);
}

// ---- Listener basics ----

TEST(Listener, default_listener_uses_a_private_temp_folder_removed_by_close) {
  conn::Listener listener;
  conn::Address where = listener.address();
  ASSERT_EQ(where.family(), "AF_UNIX");
  std::filesystem::path path(where.path());
  std::filesystem::path folder = path.parent_path();
  EXPECT_EQ(folder.filename().string().rfind("pymp-", 0), 0u) << where.path();
  EXPECT_EQ(path.filename().string().rfind("listener-", 0), 0u) << where.path();
  struct stat st {};
  ASSERT_EQ(::stat(folder.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_TRUE(std::filesystem::exists(path));
  listener.close();
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(folder));
  listener.close();  // a second close does nothing
  EXPECT_TRUE(listener.closed());
  EXPECT_THROW(listener.accept(), std::logic_error);
}

TEST(Listener, destroying_the_last_copy_removes_the_temp_folder) {
  std::filesystem::path folder;
  {
    conn::Listener listener;
    conn::Listener copy = listener;
    folder = std::filesystem::path(listener.address().path()).parent_path();
    ASSERT_TRUE(std::filesystem::exists(folder));
  }
  EXPECT_FALSE(std::filesystem::exists(folder));
}

TEST(Listener, temp_folder_follows_TMPDIR) {
  std::filesystem::path base = std::filesystem::temp_directory_path() / ("mp-tmpdir-" + std::to_string(::getpid()));
  std::filesystem::create_directory(base);
  const char* old = std::getenv("TMPDIR");
  std::string saved = old ? old : "";
  ::setenv("TMPDIR", base.c_str(), 1);
  {
    conn::Listener listener;
    EXPECT_EQ(std::filesystem::path(listener.address().path()).parent_path().parent_path(), base);
  }
  if (old) ::setenv("TMPDIR", saved.c_str(), 1);
  else ::unsetenv("TMPDIR");
  EXPECT_TRUE(std::filesystem::is_empty(base));
  std::filesystem::remove(base);
}

TEST(Listener, copies_share_one_socket) {
  conn::Listener listener;
  conn::Listener copy = listener;
  EXPECT_EQ(copy.fileno(), listener.fileno());
  copy.close();
  EXPECT_TRUE(listener.closed());
}

TEST(Listener, inet_family_without_address_listens_on_localhost_with_a_free_port) {
  conn::Listener listener(std::nullopt, {.family = "AF_INET"});
  EXPECT_EQ(listener.address().family(), "AF_INET");
  EXPECT_EQ(listener.address().host(), "127.0.0.1");
  EXPECT_NE(listener.address().port(), 0);
}

TEST(Listener, host_names_resolve_and_the_real_address_is_reported) {
  conn::Listener listener(conn::Address("localhost", 0));
  EXPECT_EQ(listener.address().host(), "127.0.0.1");
  EXPECT_NE(listener.address().port(), 0);
}

TEST(Listener, bad_families_are_invalid_arguments) {
  EXPECT_THROW(conn::Listener(std::nullopt, {.family = "AF_PIPE"}), std::invalid_argument);
  EXPECT_THROW(conn::Listener(std::nullopt, {.family = "AF_INET6"}), std::invalid_argument);
  EXPECT_THROW(conn::Listener(conn::Address("127.0.0.1", 0), {.family = "AF_UNIX"}), std::invalid_argument);
  EXPECT_THROW(conn::Client(conn::Address(std::string("/nonexistent")), {.family = "AF_PIPE"}), std::invalid_argument);
  EXPECT_THROW(conn::Listener(conn::Address(std::string())), std::invalid_argument);
  EXPECT_THROW(conn::Listener(conn::Address(std::string(200, 'x'))), std::invalid_argument);
  EXPECT_THROW(conn::Listener(conn::Address("no-such-host.invalid", 0)), std::invalid_argument);
}

TEST(Listener, a_path_in_use_is_a_system_error_and_is_not_removed) {
  conn::Listener first;
  std::string path = first.address().path();
  try {
    conn::Listener second{conn::Address(path)};
    FAIL() << "bound twice";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code().value(), EADDRINUSE);
  }
  EXPECT_TRUE(std::filesystem::exists(path));
}

TEST(Listener, a_given_path_is_unlinked_by_close) {
  conn::Listener scratch;  // only for its private folder
  std::string path = std::filesystem::path(scratch.address().path()).parent_path() / "given.sock";
  conn::Listener listener{conn::Address(path)};
  EXPECT_TRUE(std::filesystem::exists(path));
  listener.close();
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(Listener, abstract_addresses_make_no_file_and_connect) {
  std::string name = unique_abstract_name("abstract");
  conn::Listener listener{conn::Address(name)};
  EXPECT_TRUE(listener.address().is_abstract());
  EXPECT_EQ(listener.address().path(), name);
  auto client = std::async(std::launch::async, [where = listener.address()] {
    conn::Client(where).send_bytes("abstract");
  });
  mp::Connection c = listener.accept();
  EXPECT_EQ(c.recv_bytes(), mp::bytes("abstract"));
  client.get();
  listener.close();
  // the name is free again as soon as the socket is closed
  conn::Listener again{conn::Address(name)};
}

TEST(Listener, last_accepted_reports_the_peer) {
  conn::Listener listener(conn::Address("127.0.0.1", 0));
  EXPECT_FALSE(listener.last_accepted().has_value());
  auto client = std::async(std::launch::async, [where = listener.address()] { return conn::Client(where); });
  mp::Connection c = listener.accept();
  ASSERT_TRUE(listener.last_accepted().has_value());
  EXPECT_EQ(listener.last_accepted()->host(), "127.0.0.1");
  EXPECT_NE(listener.last_accepted()->port(), 0);
  client.get();
}

TEST(Listener, wait_reports_a_listener_with_a_pending_connection) {
  conn::Listener listener;
  std::vector<conn::Waitable> ws{conn::Waitable(listener)};
  EXPECT_TRUE(conn::wait(ws, 0s).empty());
  mp::Connection client = conn::Client(listener.address());  // queued in the backlog
  auto ready = conn::wait(ws, kWait);
  ASSERT_EQ(ready.size(), 1u);
  EXPECT_EQ(ready[0].fileno(), listener.fileno());
  mp::Connection c = listener.accept();
  EXPECT_TRUE(conn::wait(ws, 0s).empty());
}

TEST(Listener, connections_are_streams_with_the_chosen_serializer) {
  conn::Listener listener(std::nullopt, {.serializer = conn::Serializer::pickle});
  mp::Connection client = conn::Client(listener.address(), {.serializer = conn::Serializer::pickle});
  mp::Connection c = listener.accept();
  EXPECT_EQ(c.serializer(), conn::Serializer::pickle);
  EXPECT_EQ(client.serializer(), conn::Serializer::pickle);
  EXPECT_EQ(posix::fd_kind(c.fileno()), posix::FdKind::stream);
  client.send_bytes("x");
  EXPECT_EQ(c.recv_bytes(), mp::bytes("x"));
  mp::Connection plain = conn::Client(listener.address());
  EXPECT_EQ(plain.serializer(), conn::Serializer::native);
}

// ---- Serializer::pickle ----

struct NativeOnly {
  int x = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(x);
  }
};

TEST(Serializer, pickle_sends_cpythons_bytes) {
  auto [a, b] = mp::Pipe();
  a.set_serializer(conn::Serializer::pickle);
  a.send(std::map<std::string, int>{{"a", 1}});  // PROTOCOLS.md §1: send({'a': 1})
  EXPECT_EQ(b.recv_bytes(), hex("80 04 95 0a 00 00 00 00 00 00 00 7d 94 8c 01 61 94 4b 01 73 2e"));
  b.send_bytes(std::span<const std::byte>(hex("80 04 4e 2e")));  // None
  EXPECT_TRUE(a.recv<mp::pickle::Value>().is_none());
  b.send_bytes(std::span<const std::byte>(mp::pickle::dumps(std::vector<int>{1, 2, 3})));
  EXPECT_EQ(a.recv<std::vector<int>>(), (std::vector<int>{1, 2, 3}));
}

TEST(Serializer, a_type_the_serializer_cannot_carry_is_refused_before_anything_moves) {
  auto [a, b] = mp::Pipe();
  a.set_serializer(conn::Serializer::pickle);
  EXPECT_THROW(a.send(NativeOnly{3}), std::invalid_argument);
  EXPECT_FALSE(b.poll());
  b.send(NativeOnly{4});
  EXPECT_THROW(a.recv<NativeOnly>(), std::invalid_argument);
  a.set_serializer(conn::Serializer::native);
  EXPECT_EQ(a.recv<NativeOnly>().x, 4);  // the message was left in place
  EXPECT_THROW(a.send(mp::pickle::Value(1)), std::invalid_argument);
  EXPECT_FALSE(b.poll());
}

void send_pickled_from_child(mp::Connection c) { c.send(std::string("from the child")); }

TEST(Serializer, the_serializer_crosses_to_a_spawned_child) {
  auto [a, b] = mp::Pipe();
  b.set_serializer(conn::Serializer::pickle);
  mp::Process child(mp::get_context("spawn"), send_pickled_from_child, b);
  child.start();
  mp::Bytes got = a.recv_bytes();
  ASSERT_GE(got.size(), 2u);
  EXPECT_EQ(got[0], std::byte{0x80});
  EXPECT_EQ(mp::pickle::loads<std::string>(got), "from the child");
  child.join(kWait);
  EXPECT_EQ(child.exitcode(), 0);
}

TEST(Client, connecting_nowhere_is_a_system_error) {
  conn::Listener scratch;
  std::string missing = std::filesystem::path(scratch.address().path()).parent_path() / "missing.sock";
  try {
    conn::Client(conn::Address(missing));
    FAIL();
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code().value(), ENOENT);
  }
  std::uint16_t port;
  {
    conn::Listener closed(conn::Address("127.0.0.1", 0));
    port = closed.address().port();
  }
  try {
    conn::Client(conn::Address("127.0.0.1", port));
    FAIL();
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code().value(), ECONNREFUSED);
  }
}

// ---- authentication through Listener / Client ----

TEST(Authentication, right_key_in_a_child_process_round_trips) {
  conn::Listener listener(conn::Address("127.0.0.1", 0), {.authkey = kKey});
  conn::Address where = listener.address();
  mp::Process child(mp::get_context("fork"), [where] {
    mp::Connection c = conn::Client(where, {.authkey = kKey});
    c.send(std::string("hello"));
    c.send(c.recv<int>() * 2);
  });
  child.start();
  mp::Connection c = listener.accept();
  EXPECT_EQ(c.recv<std::string>(), "hello");
  c.send(21);
  EXPECT_EQ(c.recv<int>(), 42);
  child.join(kWait);
  EXPECT_EQ(child.exitcode(), 0);
}

void spawned_client(conn::Address where, mp::Bytes key) {
  mp::Connection c = conn::Client(where, {.authkey = key});
  c.send(std::string("spawned"));
}

TEST(Authentication, a_spawned_child_connects_with_an_address_argument) {
  conn::Listener listener(std::nullopt, {.authkey = kKey});
  mp::Process child(mp::get_context("spawn"), spawned_client, listener.address(), kKey);
  child.start();
  EXPECT_EQ(listener.accept().recv<std::string>(), "spawned");
  child.join(kWait);
  EXPECT_EQ(child.exitcode(), 0);
}

TEST(Authentication, wrong_key_fails_on_both_sides_and_the_listener_goes_on) {
  conn::Listener listener(std::nullopt, {.authkey = kKey});
  auto intruder = std::async(std::launch::async, [where = listener.address()] {
    try {
      conn::Client(where, {.authkey = mp::bytes("wrong")});
      return std::string("connected");
    } catch (const mp::AuthenticationError& e) {
      return std::string("refused");
    }
  });
  EXPECT_THROW(listener.accept(), mp::AuthenticationError);
  EXPECT_EQ(intruder.get(), "refused");
  ASSERT_TRUE(listener.last_accepted().has_value());
  expect_still_accepting(listener, kKey);
}

TEST(Authentication, client_refuses_a_listener_with_another_key) {
  conn::Listener listener(std::nullopt, {.authkey = mp::bytes("listener key")});
  auto server = std::async(std::launch::async, [&listener] {
    try {
      listener.accept();
      return std::string("accepted");
    } catch (const mp::AuthenticationError&) {
      return std::string("refused");
    }
  });
  EXPECT_THROW(conn::Client(listener.address(), {.authkey = mp::bytes("client key")}), mp::AuthenticationError);
  EXPECT_EQ(server.get(), "refused");
}

TEST(Authentication, authenticate_uses_the_process_authkey) {
  conn::Listener listener(std::nullopt, {.authenticate = true});
  conn::Address where = listener.address();
  mp::Process child(mp::get_context("fork"), [where] { conn::Client(where, {.authenticate = true}).send(7); });
  child.start();
  EXPECT_EQ(listener.accept().recv<int>(), 7);
  child.join(kWait);
  EXPECT_EQ(child.exitcode(), 0);
  // a client with another key is refused
  auto intruder = std::async(std::launch::async, [where] {
    EXPECT_THROW(conn::Client(where, {.authkey = mp::bytes("guess")}), mp::AuthenticationError);
  });
  EXPECT_THROW(listener.accept(), mp::AuthenticationError);
  intruder.get();
}

TEST(Authentication, an_empty_key_still_runs_the_handshake) {
  conn::Listener listener(std::nullopt, {.authkey = mp::Bytes{}});
  auto ok = std::async(std::launch::async, [where = listener.address()] {
    conn::Client(where, {.authkey = mp::Bytes{}}).send_bytes("ok");
  });
  EXPECT_EQ(listener.accept().recv_bytes(), mp::bytes("ok"));
  ok.get();
  auto other = std::async(std::launch::async, [where = listener.address()] {
    EXPECT_THROW(conn::Client(where, {.authkey = mp::bytes("x")}), mp::AuthenticationError);
  });
  EXPECT_THROW(listener.accept(), mp::AuthenticationError);
  other.get();
}

TEST(Authentication, a_client_without_key_is_refused_by_a_keyed_listener) {
  conn::Listener listener(std::nullopt, {.authkey = kKey, .handshake_timeout = 5s});
  auto client = std::async(std::launch::async, [where = listener.address()] {
    mp::Connection c = conn::Client(where);
    // the listener's challenge arrives as an ordinary message; the client answers nonsense
    mp::Bytes challenge = c.recv_bytes();
    c.send_bytes("not a digest at all");
    return std::pair(challenge, c.recv_bytes());
  });
  EXPECT_THROW(listener.accept(), mp::AuthenticationError);
  auto [challenge, verdict] = client.get();
  ASSERT_EQ(challenge.size(), 59u);  // #CHALLENGE#{sha256} + 40 random bytes
  EXPECT_EQ(mp::Bytes(challenge.begin(), challenge.begin() + 19), mp::bytes("#CHALLENGE#{sha256}"));
  EXPECT_EQ(verdict, mp::bytes("#FAILURE#"));
  expect_still_accepting(listener, kKey);
}

// ---- hostile clients ----

struct Hostile {
  const char* name;
  void (*act)(mp::Connection&);
};

void send_garbage(mp::Connection& c) {
  c.recv_bytes();
  c.send_bytes("garbage garbage garbage garbage");
}
void send_300_bytes(mp::Connection& c) {
  c.recv_bytes();
  c.send_bytes(std::string(300, 'A'));
}
void send_huge_header(mp::Connection& c) {
  c.recv_bytes();
  auto h = hex("7f ff ff ff 00 01 02");
  ASSERT_EQ(::send(c.fileno(), h.data(), h.size(), MSG_NOSIGNAL), static_cast<ssize_t>(h.size()));
}
void send_negative_header(mp::Connection& c) {
  c.recv_bytes();
  auto h = hex("ff ff ff fe");
  ASSERT_EQ(::send(c.fileno(), h.data(), h.size(), MSG_NOSIGNAL), static_cast<ssize_t>(h.size()));
}
void send_long_form_header(mp::Connection& c) {
  c.recv_bytes();
  auto h = hex("ff ff ff ff 00 00 01 00 00 00 00 00");
  ASSERT_EQ(::send(c.fileno(), h.data(), h.size(), MSG_NOSIGNAL), static_cast<ssize_t>(h.size()));
}
void close_at_once(mp::Connection& c) { c.close(); }
void close_mid_message(mp::Connection& c) {
  c.recv_bytes();
  auto h = hex("00 00 00 10 01 02");
  ASSERT_EQ(::send(c.fileno(), h.data(), h.size(), MSG_NOSIGNAL), static_cast<ssize_t>(h.size()));
  c.close();
}
void send_empty_response(mp::Connection& c) {
  c.recv_bytes();
  c.send_bytes("");
}
void send_sha512_response(mp::Connection& c) {
  mp::Bytes challenge = c.recv_bytes();
  auto message = std::span<const std::byte>(challenge).subspan(11);
  auto mac = auth::hmac("sha256", kKey, message);
  c.send_bytes(concat("{sha512}", *mac));
}

class HostileClient : public testing::TestWithParam<Hostile> {};

TEST_P(HostileClient, is_refused_and_the_listener_goes_on_accepting) {
  conn::Listener listener(std::nullopt, {.authkey = kKey, .handshake_timeout = 10s});
  auto act = GetParam().act;
  std::thread peer([where = listener.address(), act] {
    mp::Connection c = raw_client(where);
    act(c);
    // hold the connection until the listener gives up on it (EOF), so that its verdict comes
    // from what was sent, not from the close
    try {
      if (!c.closed())
        while (c.poll(kWait)) c.recv_bytes();
    } catch (const std::exception&) {
    }
  });
  auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(listener.accept(), mp::AuthenticationError);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s) << "refused only by the timeout";
  peer.join();
  expect_still_accepting(listener, kKey);
}

INSTANTIATE_TEST_SUITE_P(Kinds, HostileClient,
                         testing::Values(Hostile{"garbage", send_garbage}, Hostile{"over_256_bytes", send_300_bytes},
                                         Hostile{"huge_header", send_huge_header},
                                         Hostile{"negative_header", send_negative_header},
                                         Hostile{"long_form_header", send_long_form_header},
                                         Hostile{"closes_at_once", close_at_once},
                                         Hostile{"closes_mid_message", close_mid_message},
                                         Hostile{"empty_response", send_empty_response},
                                         Hostile{"sha512_response", send_sha512_response}),
                         [](const auto& p) { return std::string(p.param.name); });

TEST(Authentication, a_silent_client_is_refused_after_the_handshake_timeout) {
  conn::Listener listener(std::nullopt, {.authkey = kKey, .handshake_timeout = 300ms});
  mp::Connection silent = raw_client(listener.address());
  auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(listener.accept(), mp::AuthenticationError);
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took, 300ms);
  EXPECT_LT(took, 10s);
  expect_still_accepting(listener, kKey);
}

TEST(Authentication, a_client_stalling_mid_message_is_refused_after_the_timeout) {
  conn::Listener listener(std::nullopt, {.authkey = kKey, .handshake_timeout = 300ms});
  mp::Connection stalling = raw_client(listener.address());
  std::thread peer([&stalling] {
    stalling.recv_bytes();
    auto h = hex("00 00 00 10 01 02");  // 2 of the 16 bytes announced, then nothing
    ::send(stalling.fileno(), h.data(), h.size(), MSG_NOSIGNAL);
  });
  EXPECT_THROW(listener.accept(), mp::AuthenticationError);
  peer.join();
  expect_still_accepting(listener, kKey);
}

TEST(Authentication, a_client_gives_up_on_a_silent_listener_after_the_timeout) {
  conn::Listener listener;  // accepts nothing: connect() completes through the backlog
  auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(conn::Client(listener.address(), {.authkey = kKey, .handshake_timeout = 300ms}),
               mp::AuthenticationError);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 300ms);
}

// ---- the handshake functions themselves ----

TEST(Handshake, works_on_a_pipe_in_both_orders) {
  auto [a, b] = mp::Pipe();
  std::thread peer([b = b]() mutable {
    conn::answer_challenge(b, kKey);
    conn::deliver_challenge(b, kKey);
  });
  conn::deliver_challenge(a, kKey);
  conn::answer_challenge(a, kKey);
  peer.join();
}

TEST(Handshake, wrong_key_on_a_pipe_fails_both_sides) {
  auto [a, b] = mp::Pipe();
  std::thread peer([b = b]() mutable { EXPECT_THROW(conn::answer_challenge(b, mp::bytes("other")), mp::AuthenticationError); });
  EXPECT_THROW(conn::deliver_challenge(a, kKey), mp::AuthenticationError);
  peer.join();
}

TEST(Handshake, needs_a_duplex_open_connection) {
  auto [r, w] = mp::Pipe(false);
  EXPECT_THROW(conn::deliver_challenge(r, kKey), std::logic_error);
  EXPECT_THROW(conn::answer_challenge(w, kKey), std::logic_error);
  mp::Connection closed;
  EXPECT_THROW(conn::deliver_challenge(closed, kKey), std::logic_error);
}

TEST(Handshake, over_long_message_on_a_pipe_is_refused) {
  auto [a, b] = mp::Pipe();
  b.send_bytes(std::string(257, 'x'));
  EXPECT_THROW(conn::answer_challenge(a, kKey), mp::AuthenticationError);
}

TEST(Handshake, pipe_timeout_is_a_TimeoutError) {
  auto [a, b] = mp::Pipe();
  EXPECT_THROW(conn::answer_challenge(a, kKey, 100ms), mp::TimeoutError);
}

TEST(Handshake, peer_closing_is_an_EOFError) {
  auto [a, b] = mp::Pipe();
  b.close();
  EXPECT_THROW(conn::answer_challenge(a, kKey), mp::EOFError);
}

// The 3.11 capture of PROTOCOLS.md §2.5 (key b'secret'): the legacy response starts with '{' and
// must still be read as a bare MD5 (the length test comes first).
TEST(Handshake, legacy_challenge_gets_the_captured_md5_response) {
  mp::Bytes m1 = hex("81 4c 6f 2e db 5b 17 1e cf 8c b1 71 45 52 2c 44 ee 00 60 fd");
  mp::Bytes r1 = hex("7b f1 56 c6 5e 59 bd 66 79 d0 17 2b d5 fc 67 73");
  EXPECT_EQ(auth::make_response(mp::bytes("secret"), m1), r1);
  EXPECT_TRUE(auth::verify_response(mp::bytes("secret"), m1, r1));
  mp::Bytes m2 = hex("f8 7f b9 4d 27 ea 77 ce ce dd 66 69 6a cd 7f 28 67 22 8c 9b");
  mp::Bytes r2 = hex("27 09 57 60 1b d6 0a 35 a7 8d dc 62 7a 46 2c 71");
  EXPECT_EQ(auth::make_response(mp::bytes("secret"), m2), r2);
  EXPECT_FALSE(auth::verify_response(mp::bytes("secre7"), m2, r2));
}

TEST(Handshake, modern_challenge_is_answered_with_a_prefixed_mac_of_all_of_it) {
  mp::Bytes m = concat("{sha256}", mp::Bytes(40, std::byte{7}));
  mp::Bytes r = auth::make_response(kKey, m);
  EXPECT_EQ(r, concat("{sha256}", *auth::hmac("sha256", kKey, m)));
  EXPECT_EQ(r.size(), 40u);
  mp::Bytes md5 = concat("{md5}", mp::Bytes(40, std::byte{1}));
  EXPECT_EQ(auth::make_response(kKey, md5).size(), 21u);
  EXPECT_EQ(auth::make_response(kKey, concat("{sha3_384}", mp::Bytes(40, std::byte{1}))).size(), 58u);
}

TEST(Handshake, responder_refuses_what_cpython_refuses) {
  EXPECT_THROW(auth::make_response(kKey, mp::Bytes(19)), mp::AuthenticationError);
  EXPECT_THROW(auth::make_response(kKey, mp::Bytes(32)), mp::AuthenticationError);
  EXPECT_THROW(auth::make_response(kKey, concat("{sha512}", mp::Bytes(40))), mp::AuthenticationError);
  EXPECT_THROW(auth::make_response(kKey, concat("{sha256", mp::Bytes(40))), mp::AuthenticationError);
  EXPECT_THROW(auth::make_response(kKey, concat("{verylongname}", mp::Bytes(40))), mp::AuthenticationError);
  // a 16- or 20-byte challenge is legacy whatever it holds
  EXPECT_EQ(auth::make_response(kKey, concat("{sha256}", mp::Bytes(12))).size(), 16u);
}

TEST(Handshake, challenger_accepts_every_allowed_digest_and_nothing_else) {
  mp::Bytes m = concat("{sha256}", mp::Bytes(40, std::byte{9}));
  for (const char* d : {"md5", "sha256", "sha384", "sha3_256", "sha3_384"})
    EXPECT_TRUE(auth::verify_response(kKey, m, concat("{" + std::string(d) + "}", *auth::hmac(d, kKey, m)))) << d;
  EXPECT_TRUE(auth::verify_response(kKey, m, *auth::hmac("md5", kKey, m)));  // bare MD5 (3.11)
  EXPECT_FALSE(auth::hmac("sha512", kKey, m).has_value());
  EXPECT_FALSE(auth::verify_response(kKey, m, mp::Bytes(20)));
  EXPECT_FALSE(auth::verify_response(kKey, m, concat("{sha256}", mp::Bytes(32))));
  mp::Bytes mac = *auth::hmac("sha256", kKey, m);
  mac.pop_back();
  EXPECT_FALSE(auth::verify_response(kKey, m, concat("{sha256}", mac)));
  EXPECT_FALSE(auth::verify_response(kKey, m, {}));
}

}  // namespace
