// Pipes and connections: message channels between processes (Python: multiprocessing.connection,
// the Pipe() / Connection half of it, plus wait()).
//
// A Connection carries length-prefixed messages in CPython's framing (PROTOCOLS.md §1): a 4-byte
// big-endian signed length, or ff ff ff ff and an 8-byte length above 0x7FFFFFFF, then the payload.
// send()/recv() carry typed values through the native codec (reduction.hpp); send_bytes()/
// recv_bytes() carry raw byte strings, readable by CPython's recv_bytes() and back.
//
// A Connection is a handle: copies share one descriptor, close() on any copy closes it for every
// copy in this process, and the last copy to go closes it. Like CPython's, a Connection is not
// safe for concurrent use from several threads (two threads sending at once interleave messages);
// one thread sending while another receives on the same duplex connection is fine.
#pragma once

#include <multiprocessing/base.hpp>
#include <multiprocessing/pickle.hpp>
#include <multiprocessing/reduction.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace mp {

class Process;
class Connection;

namespace connection {
/// How send()/recv() encode values: native is the library's codec (reduction.hpp); pickle is
/// CPython's pickle, to talk to Python programs (see the Listeners and clients section below).
enum class Serializer { native, pickle };
}  // namespace connection

namespace detail::posix {
class UniqueFd;
}

/// A pair of connected Connections. duplex: both ends send and receive. !duplex: the first only
/// receives and the second only sends. Throws std::system_error when the system is out of fds.
std::pair<Connection, Connection> Pipe(bool duplex = true);

class Connection {
 public:
  /// A closed connection (every call but close()/closed()/readable()/writable() throws
  /// std::logic_error); assign a real one to it. Exists so that a Connection can be a member or be
  /// loaded by the codec.
  Connection() noexcept;
  /// Takes ownership of fd, a connected socket (SOCK_SEQPACKET from Pipe(), or SOCK_STREAM, e.g. a
  /// Listener/Client socket talking to CPython) or any other byte stream such as a pipe. The mode is
  /// found from the fd (SO_TYPE). Internal: for the library's own modules.
  Connection(detail::posix::UniqueFd fd, bool readable, bool writable);

  /// Sends obj as one message encoded by the native codec. Blocks while the peer's buffer is full.
  /// std::logic_error when closed or read-only; std::system_error (EPIPE, ECONNRESET) when the
  /// peer is gone. SIGPIPE is never raised for sockets.
  template <class T>
  void send(const T& obj);
  /// Receives one message and decodes it as a T. Blocks until one arrives (use poll() for a
  /// timeout). EOFError when the peer closed and nothing is left, or vanished mid-message;
  /// std::invalid_argument when the message is not a T; std::logic_error when closed or
  /// write-only; std::system_error on a malformed header or an OS error.
  template <class T>
  T recv();

  /// Sends buf[offset, offset + size) as one message (size: the rest of buf by default).
  /// std::invalid_argument when offset or size reach beyond buf; otherwise as send().
  void send_bytes(std::span<const std::byte> buf, std::size_t offset = 0, std::optional<std::size_t> size = {});
  /// Sends the characters of buf as one message.
  void send_bytes(std::string_view buf);
  /// Receives one message as bytes; blocks as recv(). A message longer than maxlength:
  /// std::system_error(EMSGSIZE, "bad message length"), its payload is left unread and the
  /// connection stops being readable (a read-only one is closed; a duplex one stays writable).
  Bytes recv_bytes(std::optional<std::size_t> maxlength = {});
  /// Receives one message into buf starting at offset and returns its size; blocks as recv().
  /// std::invalid_argument when offset > buf.size(). A message that does not fit in the rest of buf
  /// is consumed whole and thrown as BufferTooShort, whose message() holds it.
  std::size_t recv_bytes_into(std::span<std::byte> buf, std::size_t offset = 0);
  /// Whether a message (or EOF) is ready to be received, waiting up to timeout for one;
  /// poll(std::nullopt) waits forever. std::logic_error when closed or write-only.
  bool poll(Timeout timeout = Duration(0));
  /// The descriptor (for select/poll/wait). std::logic_error when closed.
  int fileno() const;
  /// Closes the connection for every copy in this process. A second close() does nothing.
  void close();
  bool closed() const noexcept;
  bool readable() const noexcept;
  bool writable() const noexcept;

  /// How send()/recv() encode values on this connection (shared by its copies). Connections from
  /// Pipe() start native; those from a Listener or Client() use their Options::serializer.
  /// send_bytes()/recv_bytes() are never affected. A T that the chosen serializer cannot encode
  /// is std::invalid_argument at run time (a T that neither can is a compile-time error).
  connection::Serializer serializer() const noexcept;
  void set_serializer(connection::Serializer serializer) noexcept;

  /// The codec's hooks (cereal convention): a Connection crosses to a spawned child as the index of
  /// its fd in the current detail::FdExport plus its direction flags. Saving outside an FdExport,
  /// or saving a closed connection, is std::invalid_argument / std::logic_error.
  template <class Archive>
  void save(Archive& ar) const {
    const std::int32_t index = detail::export_fd(fileno());
    const bool r = readable(), w = writable();
    const bool pickled = serializer() == connection::Serializer::pickle;
    ar(index, r, w, pickled);
  }
  template <class Archive>
  void load(Archive& ar) {
    std::int32_t index = -1;
    bool r = false, w = false, pickled = false;
    ar(index, r, w, pickled);
    *this = from_imported_fd(index, r, w);
    if (pickled) set_serializer(connection::Serializer::pickle);
  }

 private:
  struct Impl;
  // The reusable buffer typed send() encodes into (cleared).
  Bytes& send_buffer();
  // Receives one message into the reusable receive buffer and returns a view of its payload,
  // valid until the next receive or trim_buffer(false).
  std::span<const std::byte> recv_message_view();
  // Releases the reusable send (or receive) buffer when a large message has grown it (a 2 GiB
  // message must not stay allocated), keeping a small one so that the steady state allocates
  // nothing. One side only: a thread may send while another receives.
  void trim_buffer(bool send) noexcept;
  static Connection from_imported_fd(std::int32_t index, bool readable, bool writable);

  std::shared_ptr<Impl> impl_;
};

namespace detail {
// Which serializers can carry a T: send() needs one of them at compile time, and the
// connection's serializer is checked at run time (before anything is sent or read).
template <class T>
inline constexpr bool native_sendable_v = is_serializable_v<T>;
template <class T>
inline constexpr bool pickle_sendable_v = pickle::detail::is_picklable_v<T>;
template <class T>
inline constexpr bool pickle_receivable_v = pickle::detail::Convert<std::remove_cvref_t<T>>::kLoadable;
[[noreturn]] void throw_not_serializable(bool pickle, bool sending);
}  // namespace detail

// The one place each where send()/recv() encode and decode, switched by the connection's
// serializer: the native codec, or CPython's pickle (protocol 4, what CPython 3.8-3.13 send).
template <class T>
void Connection::send(const T& obj) {
  static_assert(detail::native_sendable_v<T> || detail::pickle_sendable_v<T>,
                "Connection::send<T>: T crosses neither by the native codec nor by pickle");
  struct Trim {
    Connection* c;
    ~Trim() { c->trim_buffer(true); }
  };
  if (serializer() == connection::Serializer::pickle) {
    if constexpr (detail::pickle_sendable_v<T>) {
      Trim trim{this};
      Bytes& buffer = send_buffer();
      pickle::detail::dumps_into(buffer, obj, 4);  // reuses the buffer's capacity, as below
      send_bytes(std::span<const std::byte>(buffer));
    } else {
      detail::throw_not_serializable(true, true);
    }
    return;
  }
  if constexpr (detail::native_sendable_v<T>) {
    Trim trim{this};
    Bytes& buffer = send_buffer();
    detail::dump_into(buffer, obj);  // reuses the buffer's capacity: no allocation in the steady state
    send_bytes(std::span<const std::byte>(buffer));
  } else {
    detail::throw_not_serializable(false, true);
  }
}

template <class T>
T Connection::recv() {
  static_assert(detail::native_sendable_v<T> || detail::pickle_receivable_v<T>,
                "Connection::recv<T>: T crosses neither by the native codec nor by pickle");
  if (serializer() == connection::Serializer::pickle) {
    if constexpr (detail::pickle_receivable_v<T>) {
      struct Trim {
        Connection* c;
        ~Trim() { c->trim_buffer(false); }
      } trim{this};
      return pickle::loads<T>(recv_message_view());
    } else {
      detail::throw_not_serializable(true, false);
    }
  } else {
    if constexpr (detail::native_sendable_v<T>) {
      struct Trim {
        Connection* c;
        ~Trim() { c->trim_buffer(false); }
      } trim{this};
      return mp::loads<T>(recv_message_view());
    } else {
      detail::throw_not_serializable(false, false);
    }
  }
}

namespace connection {

// ---- Listeners and clients (Python: multiprocessing.connection.Listener, Client, ...) ----
//
// A Listener accepts connections on a socket; Client() connects to one. Both give ordinary
// Connections over SOCK_STREAM sockets, framed as CPython frames them, so either side may be a
// Python program. With an authkey, CPython's HMAC handshake (PROTOCOLS.md §2) runs both ways on
// every connection: the listener challenges first, then the client; both the 3.11 form (bare
// HMAC-MD5) and the 3.12+ form ({sha256}-prefixed digests) are spoken and understood.

/// A socket address: AF_INET (an IPv4 host name or dotted address, and a port) or AF_UNIX (a
/// filesystem path, or, when it starts with '\0', a name in Linux's abstract namespace, which is
/// never a file and goes away with the last socket using it).
class Address {
 public:
  /// An empty AF_UNIX address (path ""), for the codec and for assignment; Listener and Client
  /// refuse it with std::invalid_argument.
  Address() = default;
  /// AF_INET. host: a name ("localhost") or a dotted IPv4 address; "" or "0.0.0.0" listens on
  /// every interface. port 0 asks a Listener for a free port (address() tells which).
  Address(std::string host, std::uint16_t port);
  /// AF_UNIX. A path longer than the kernel allows (107 bytes; 108 for an abstract name) is
  /// std::invalid_argument when it is used.
  Address(std::string path);

  std::string family() const;       // "AF_INET" or "AF_UNIX"
  std::string host() const;         // AF_INET; "" for AF_UNIX
  std::uint16_t port() const;       // AF_INET; 0 for AF_UNIX
  std::string path() const;         // AF_UNIX (abstract names keep their leading '\0'); "" for AF_INET
  bool is_abstract() const;         // AF_UNIX and the path starts with '\0'
  /// "host:port" for AF_INET; the path for AF_UNIX, an abstract name shown as "@name" (as ss(8)
  /// shows it).
  std::string to_string() const;

  friend bool operator==(const Address&, const Address&) = default;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(inet_, host_, port_, path_);
  }

 private:
  bool inet_ = false;
  std::string host_;
  std::uint16_t port_ = 0;
  std::string path_;
};

/// The longest a whole authentication handshake may take by default (Options::handshake_timeout):
/// CPython has no limit, but a peer that connects and then stays silent must not block accept()
/// forever.
inline constexpr Duration kHandshakeTimeout{60.0};

/// Options of Listener and Client() (Python's keyword arguments).
struct Options {
  /// "AF_INET" or "AF_UNIX" (std::invalid_argument for anything else; "AF_PIPE" is Windows-only).
  /// Without an address it picks the kind of fresh address a Listener makes (default AF_UNIX);
  /// with one it must match the address's family.
  std::optional<std::string> family{};
  int backlog = 1;                 // Listener only: listen(2)'s backlog
  /// Set: the HMAC handshake runs both ways on every connection (an empty key too, as in
  /// CPython 3.13+). Unset: no handshake (unless authenticate).
  std::optional<Bytes> authkey{};
  /// true without authkey: use current_process().authkey().
  bool authenticate = false;
  /// The serializer of the connections made (Connection::set_serializer).
  Serializer serializer = Serializer::native;
  /// The limit on the whole handshake of one connection (beyond CPython, which waits forever);
  /// std::nullopt: no limit.
  Timeout handshake_timeout = kHandshakeTimeout;
};

/// A listening socket (Python: multiprocessing.connection.Listener). A handle: copies share one
/// socket; close() on any copy closes it for all, and the last copy closes it. Only the process
/// that created the listener removes its socket file and temporary folder (a forked child that
/// drops its copy leaves them alone). Not for use by several threads at once.
class Listener {
 public:
  /// Binds and listens. No address: a fresh one of options.family: AF_UNIX (the default) makes
  /// <$TMPDIR or /tmp>/pymp-XXXXXXXX/listener-XXXXXXXX, the folder private (0700) and removed with
  /// the listener; AF_INET binds localhost on a free port. AF_INET listeners set SO_REUSEADDR;
  /// an AF_UNIX path is unlinked by close() (never an abstract name). Throws
  /// std::invalid_argument for a bad family or address, std::system_error when bind/listen fail
  /// (EADDRINUSE, an AF_UNIX path that exists, ...).
  explicit Listener(std::optional<Address> address = std::nullopt, Options options = {});

  /// Waits (without a timeout, as CPython) for a connection and returns it. With a key, runs
  /// deliver_challenge then answer_challenge on it first, within options.handshake_timeout: any
  /// failure of the handshake (wrong key, a malformed or over-long message, the peer closing or
  /// staying silent) is AuthenticationError, the connection is closed and the listener stays
  /// usable. std::logic_error when closed; std::system_error on OS errors.
  Connection accept();
  /// Closes the socket and removes its file and temporary folder. A second close() does nothing.
  void close();
  bool closed() const noexcept;
  /// The bound address: the real port for port 0, the dotted host ("localhost" becomes
  /// "127.0.0.1"). std::logic_error on an empty handle.
  Address address() const;
  /// The peer address of the last accepted connection (an unbound AF_UNIX client has path "").
  std::optional<Address> last_accepted() const;
  /// The listening socket's descriptor (readable when a connection is waiting); std::logic_error
  /// when closed.
  int fileno() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

/// Connects to a Listener (ours or CPython's) at address (Python: multiprocessing.connection.
/// Client). With a key, runs answer_challenge then deliver_challenge within
/// options.handshake_timeout; any failure of the handshake is AuthenticationError (the socket is
/// closed). std::invalid_argument for a bad family/address; std::system_error when the connection
/// fails (ECONNREFUSED, ENOENT, ...). options.backlog is ignored.
Connection Client(const Address& address, Options options = {});

/// The challenger's half of the handshake (PROTOCOLS.md §2): sends #CHALLENGE#{sha256} + 40
/// random bytes, reads the response (at most 256 bytes) and accepts a bare 16-byte HMAC-MD5 or a
/// {name}-prefixed HMAC for name in md5, sha256, sha384, sha3_256, sha3_384 (CPython's list);
/// answers #WELCOME# or #FAILURE#. Throws AuthenticationError when the response is wrong or
/// malformed or longer than 256 bytes, EOFError when the peer closes, TimeoutError when the
/// handshake takes longer than timeout, std::system_error on OS errors. The connection must be
/// readable and writable (std::logic_error).
void deliver_challenge(Connection& connection, const Bytes& authkey, Timeout timeout = kHandshakeTimeout);
/// The responder's half: reads the challenge (a bare legacy one or a {name}-prefixed one), sends
/// the HMAC and expects #WELCOME#. Throws as deliver_challenge (AuthenticationError also when the
/// verdict is #FAILURE# or anything but #WELCOME#). The seed's answerChallenge.
void answer_challenge(Connection& connection, const Bytes& authkey, Timeout timeout = kHandshakeTimeout);

/// Something wait() can wait on: a Connection (ready when a message or EOF is waiting), a Listener
/// (ready when a connection is waiting to be accepted), a Process (ready when it has ended, through
/// its sentinel) or any file descriptor (ready when readable). Holds the descriptor only: the
/// object must stay open while it is waited on.
class Waitable {
 public:
  Waitable(Connection& connection);  // std::logic_error when the connection is closed
  Waitable(Listener& listener);      // std::logic_error when the listener is closed
  Waitable(Process& process);        // the process's sentinel(); std::logic_error before start()
  Waitable(int fd);
  int fileno() const noexcept { return fd_; }

 private:
  int fd_;
};

/// Waits until at least one of objects is ready or timeout passes (std::nullopt: forever) and
/// returns the ready ones in input order (empty on timeout). Uses poll(2): no FD_SETSIZE limit.
/// std::system_error(EBADF) when a descriptor is not open.
std::vector<Waitable> wait(const std::vector<Waitable>& objects, Timeout timeout = std::nullopt);

}  // namespace connection
}  // namespace mp
