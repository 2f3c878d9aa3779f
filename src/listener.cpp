// Listener, Client and Address (Python: multiprocessing/connection.py, the Listener and Client
// functions with SocketListener/SocketClient, address_type and arbitrary_address).
//
// Connections from here are SOCK_STREAM sockets, framed as CPython frames them, so that either
// side may be a Python program. The handshake (auth.cpp) runs with one deadline for both halves.
#include <multiprocessing/connection.hpp>
#include <multiprocessing/logging.hpp>
#include <multiprocessing/process.hpp>

#include "auth.hpp"
#include "posix/fd.hpp"
#include "posix/process.hpp"
#include "posix/socket.hpp"

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <system_error>

namespace mp::connection {

namespace posix = detail::posix;

// ---- Address ----

Address::Address(std::string host, std::uint16_t port) : inet_(true), host_(std::move(host)), port_(port) {}
Address::Address(std::string path) : path_(std::move(path)) {}

std::string Address::family() const { return inet_ ? "AF_INET" : "AF_UNIX"; }
std::string Address::host() const { return inet_ ? host_ : std::string(); }
std::uint16_t Address::port() const { return inet_ ? port_ : 0; }
std::string Address::path() const { return inet_ ? std::string() : path_; }
bool Address::is_abstract() const { return !inet_ && !path_.empty() && path_[0] == '\0'; }

std::string Address::to_string() const {
  if (inet_) return host_ + ":" + std::to_string(port_);
  if (is_abstract()) {
    std::string out = "@";  // (appended, not "@" + substr: g++ 12 -O3 warns falsely on that)
    out.append(path_, 1, std::string::npos);
    return out;
  }
  return path_;
}

namespace {

posix::SocketAddress to_socket(const Address& a) {
  return posix::SocketAddress{a.family() == "AF_INET", a.host(), a.port(), a.path()};
}

Address from_socket(const posix::SocketAddress& a) { return a.inet ? Address(a.host, a.port) : Address(a.path); }

// The family named in options, checked; std::nullopt when none is named.
std::optional<std::string> checked_family(const Options& options) {
  if (!options.family) return std::nullopt;
  const std::string& f = *options.family;
  if (f == "AF_PIPE") throw std::invalid_argument("family AF_PIPE (named pipes) exists only on Windows");
  if (f != "AF_INET" && f != "AF_UNIX")
    throw std::invalid_argument("unknown family '" + f + "' (AF_INET or AF_UNIX)");
  return f;
}

void check_address(const Address& address, const Options& options) {
  auto family = checked_family(options);
  if (family && *family != address.family())
    throw std::invalid_argument("family " + *family + " does not match the " + address.family() + " address " +
                                address.to_string());
  if (address.family() == "AF_UNIX" && address.path().empty()) throw std::invalid_argument("AF_UNIX address: empty path");
}

// The key the handshake uses, if it runs: authkey, or current_process().authkey() when only
// `authenticate` is set (CPython's `authkey=None` with authenticate=True).
std::optional<Bytes> handshake_key(const Options& options) {
  if (options.authkey) return options.authkey;
  if (options.authenticate) return current_process().authkey();
  return std::nullopt;
}

// Runs both halves with one deadline. Any failure (wrong key, malformed or over-long message, EOF,
// timeout, an OS error on the socket) closes the connection and is an AuthenticationError.
void handshake(Connection& c, const Bytes& key, Timeout timeout, bool challenger_first, const std::string& peer) {
  auto deadline = posix::deadline_after(timeout);
  std::string why;
  try {
    // (Listener and Client make stream sockets: no need to ask the kernel.)
    detail::auth::handshake(c, key, deadline, challenger_first, posix::FdKind::stream);
    return;
  } catch (const AuthenticationError& e) {
    c.close();
    get_logger().info("authentication with " + peer + " failed: " + e.what());
    throw;
  } catch (const EOFError& e) {
    why = e.what();
  } catch (const TimeoutError& e) {
    why = e.what();
  } catch (const std::system_error& e) {
    why = e.what();
  }
  c.close();
  get_logger().info("authentication with " + peer + " failed: " + why);
  throw AuthenticationError("authentication handshake failed: " + why);
}

std::string temp_root() {
  for (const char* name : {"TMPDIR", "TMP", "TEMP"})
    if (const char* dir = std::getenv(name); dir && *dir) return dir;
  return "/tmp";
}

// CPython's arbitrary_address: 8 characters from a-z0-9_.
std::string random_name(const std::string& prefix) {
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789_";
  std::string name = prefix;
  for (std::byte b : posix::random_bytes(8)) name += kChars[std::to_integer<unsigned>(b) % (sizeof kChars - 1)];
  return name;
}

}  // namespace

// ---- Listener ----

struct Listener::Impl {
  posix::UniqueFd fd;
  Address address;
  Options options;
  std::optional<Bytes> key;
  std::optional<Address> last_accepted;
  std::string socket_file;  // a path socket to unlink on close (never an abstract name)
  std::string temp_dir;     // our private pymp- folder, removed on close
  int owner_pid = 0;        // only the creating process removes files (a forked copy must not)

  void close() noexcept {
    fd.reset();
    if (owner_pid != posix::current_pid()) return;
    if (!socket_file.empty()) posix::unlink_path(socket_file);
    if (!temp_dir.empty()) posix::remove_dir(temp_dir);
    socket_file.clear();
    temp_dir.clear();
  }
  ~Impl() { close(); }

  static Impl& open(const std::shared_ptr<Impl>& impl) {
    if (!impl || !impl->fd) throw std::logic_error("listener is closed");
    return *impl;
  }
};

Listener::Listener(std::optional<Address> address, Options options) {
  auto impl = std::make_shared<Impl>();
  impl->owner_pid = posix::current_pid();
  if (address) {
    check_address(*address, options);
  } else {
    auto family = checked_family(options).value_or("AF_UNIX");
    if (family == "AF_INET") {
      address = Address("127.0.0.1", 0);
    } else {
      // CPython: <tmp>/pymp-XXXXXXXX/listener-XXXXXXXX, the folder private (mkdtemp's 0700).
      impl->temp_dir = posix::make_temp_dir(temp_root(), "pymp-");
      address = Address(impl->temp_dir + "/" + random_name("listener-"));
      impl->socket_file = address->path();  // ours: safe to unlink even if listen() fails after bind()
    }
  }
  impl->key = handshake_key(options);
  impl->options = std::move(options);
  // From here on, a failure removes the folder made above (impl's destructor).
  impl->fd = posix::listen_socket(to_socket(*address), impl->options.backlog);
  if (address->family() == "AF_INET") {
    impl->address = from_socket(posix::local_address(impl->fd.get()));  // the real port for port 0
  } else {
    impl->address = *address;
    if (!address->is_abstract()) impl->socket_file = address->path();
  }
  get_logger().debug("listening on " + impl->address.to_string());
  impl_ = std::move(impl);
}

Connection Listener::accept() {
  auto& im = Impl::open(impl_);
  posix::SocketAddress peer;
  posix::UniqueFd fd = posix::accept_socket(im.fd.get(), peer);
  Connection c(std::move(fd), true, true);
  c.set_serializer(im.options.serializer);
  im.last_accepted = from_socket(peer);  // set before the handshake, as CPython
  std::string who = im.last_accepted->to_string();
  if (who.empty()) who = "an unnamed AF_UNIX client";
  if (im.key) handshake(c, *im.key, im.options.handshake_timeout, true, who);
  // (the message only when it is logged: building it is a good part of an accept's user time)
  if (get_logger().is_enabled_for(levels::debug))
    get_logger().debug("accepted a connection on " + im.address.to_string() + " from " + who);
  return c;
}

void Listener::close() {
  if (impl_) impl_->close();
}

bool Listener::closed() const noexcept { return !impl_ || !impl_->fd; }

Address Listener::address() const {
  if (!impl_) throw std::logic_error("listener is empty");
  return impl_->address;
}

std::optional<Address> Listener::last_accepted() const { return impl_ ? impl_->last_accepted : std::nullopt; }

int Listener::fileno() const { return Impl::open(impl_).fd.get(); }

// ---- Client ----

Connection Client(const Address& address, Options options) {
  check_address(address, options);
  auto key = handshake_key(options);
  Connection c(posix::connect_socket(to_socket(address)), true, true);
  c.set_serializer(options.serializer);
  if (key) handshake(c, *key, options.handshake_timeout, false, address.to_string());
  if (get_logger().is_enabled_for(levels::debug)) get_logger().debug("connected to " + address.to_string());
  return c;
}

}  // namespace mp::connection
