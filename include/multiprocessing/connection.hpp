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
#include <multiprocessing/reduction.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

namespace mp {

class Process;
class Connection;

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

  /// The codec's hooks (cereal convention): a Connection crosses to a spawned child as the index of
  /// its fd in the current detail::FdExport plus its direction flags. Saving outside an FdExport,
  /// or saving a closed connection, is std::invalid_argument / std::logic_error.
  template <class Archive>
  void save(Archive& ar) const {
    const std::int32_t index = detail::export_fd(fileno());
    const bool r = readable(), w = writable();
    ar(index, r, w);
  }
  template <class Archive>
  void load(Archive& ar) {
    std::int32_t index = -1;
    bool r = false, w = false;
    ar(index, r, w);
    *this = from_imported_fd(index, r, w);
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

// The one place each where send()/recv() encode and decode: a per-connection serializer (the
// later Serializer::pickle) switches here.
template <class T>
void Connection::send(const T& obj) {
  struct Trim {
    Connection* c;
    ~Trim() { c->trim_buffer(true); }
  } trim{this};
  Bytes& buffer = send_buffer();
  detail::dump_into(buffer, obj);  // reuses the buffer's capacity: no allocation in the steady state
  send_bytes(std::span<const std::byte>(buffer));
}

template <class T>
T Connection::recv() {
  struct Trim {
    Connection* c;
    ~Trim() { c->trim_buffer(false); }
  } trim{this};
  return mp::loads<T>(recv_message_view());
}

namespace connection {

/// Something wait() can wait on: a Connection (ready when a message or EOF is waiting), a Process
/// (ready when it has ended, through its sentinel) or any file descriptor (ready when readable).
/// Holds the descriptor only: the object must stay open while it is waited on.
class Waitable {
 public:
  Waitable(Connection& connection);  // std::logic_error when the connection is closed
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
