// Pipe() and Connection (Python: multiprocessing/connection.py, the Connection class and Pipe).
//
// Framing is CPython's (PROTOCOLS.md §1) on every kind of fd. How the bytes move depends on it:
// - Pipe() is a SOCK_SEQPACKET socketpair. A read on it never returns bytes of the next record,
//   and records never span two messages, so a small message (header + payload in one record) is
//   received with ONE recvmsg() and nothing is ever buffered across messages (buffering in user
//   space would break sharing the fd with forked children and poll()/wait() on it). A message is
//   cut into records of at most record_size bytes (a quarter of the send buffer, so that several
//   are in flight at once); the first one holds the header and the start of the payload and is at
//   most kFirstRecord bytes, which is the reader's first read. The following records are read
//   straight into the destination.
// - Stream sockets (Listener/Client, talking to CPython) and other fds (pipes): the 4-byte header is
//   read exactly, then the payload; a message is written with one sendmsg()/writev().
// A length read from the wire is never trusted for allocation: a payload is read into a buffer of
// at most kInitialReserve bytes, which grows as the data actually arrives.
#include <multiprocessing/connection.hpp>
#include <multiprocessing/process.hpp>

#include "posix/fd.hpp"
#include "posix/socket.hpp"
#include "spin_score.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <limits>
#include <string>
#include <system_error>

namespace mp {

namespace posix = detail::posix;

namespace {

static_assert(sizeof(std::size_t) == 8, "messages over 4 GiB need a 64-bit size_t");

// The send buffer asked for on each Pipe() socket (the kernel doubles it, and caps it at
// net.core.wmem_max). Measured on 1 MiB messages: 64 KiB records with the default 208 KiB buffer
// moved 4.8 GB/s, 256 KiB records in a 2 MiB buffer 21 GB/s, 512 KiB ones 25 GB/s.
constexpr int kSendBuffer = 1 << 20;
// The largest first record of a message, and the reader's first read (its scratch buffer).
constexpr std::size_t kFirstRecord = 64 << 10;
// The largest record any writer sends; also the room a growing reader keeps for the next one.
constexpr std::size_t kMaxRecord = 512 << 10;
// A length from the wire is allocated at most this much before its data has arrived.
constexpr std::size_t kInitialReserve = 16 << 20;
// Growing buffers from this size on are allocated apart and asked for huge pages (glibc maps
// blocks this large on their own, so the hint touches no other allocation).
constexpr std::size_t kHugeBuffer = 32 << 20;
// Reusable buffers above this size are released after the message that grew them.
constexpr std::size_t kKeepBuffer = 1 << 20;
// The longest spin of a read that waits (see Impl::read_first), and the longest wait it averages.
constexpr std::chrono::nanoseconds kMaxSpin = std::chrono::microseconds(100);
constexpr std::chrono::nanoseconds kMaxWaitSample = std::chrono::milliseconds(1);
// CPython writes lengths above this in the long form (ff ff ff ff + 8 bytes).
constexpr std::uint64_t kShortMax = 0x7fffffff;

void put_be32(std::byte* p, std::uint32_t v) {
  for (int i = 3; i >= 0; --i, v >>= 8) p[i] = static_cast<std::byte>(v & 0xff);
}
void put_be64(std::byte* p, std::uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) p[i] = static_cast<std::byte>(v & 0xff);
}
std::uint64_t get_be(const std::byte* p, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | std::to_integer<std::uint64_t>(p[i]);
  return v;
}

// The header for a payload of n bytes; returns its size (4 or 12).
std::size_t make_header(std::byte (&h)[12], std::uint64_t n) {
  if (n <= kShortMax) {
    put_be32(h, static_cast<std::uint32_t>(n));
    return 4;
  }
  put_be32(h, 0xffffffff);
  put_be64(h + 4, n);
  return 12;
}

// Grows buffer to size, keeping its contents. A large new block gets huge pages before anything
// touches it (Bytes is a std::vector: reserve() allocates without touching, resize() fills).
void grow_to(Bytes& buffer, std::size_t size) {
  if (size <= buffer.capacity() || size < kHugeBuffer) {
    buffer.resize(size);
    return;
  }
  Bytes bigger;
  bigger.reserve(size);
  posix::advise_huge_pages(bigger.data(), size);
  bigger.assign(buffer.begin(), buffer.end());
  bigger.resize(size);
  buffer.swap(bigger);
}

[[noreturn]] void throw_eof_mid_message() { throw EOFError("got end of file during message"); }

}  // namespace

struct Connection::Impl {
  posix::UniqueFd fd;
  posix::FdKind kind = posix::FdKind::stream;
  bool readable = false;
  bool writable = false;
  connection::Serializer serializer = connection::Serializer::native;
  std::size_t record_size = 0;  // seqpacket writers: found on the first send
  Bytes scratch;                // receive buffer: the first record, typed payloads
  Bytes out;                    // typed send() encodes here
  detail::SpinScore spin;  // whether a blocking read spins first (see read_first)
  // How long this connection's waits took lately, in ns (read_first). Relaxed, as SpinScore: a
  // lost update only moves a heuristic.
  std::atomic<std::int64_t> typical_wait_ns{std::chrono::nanoseconds(detail::kSpinBudget).count() / 2};

  struct Header {
    std::uint64_t length;  // payload bytes
    std::size_t offset;    // seqpacket: where the payload starts in scratch
    std::size_t have;      // seqpacket: payload bytes already in scratch
  };

  bool is_socket() const { return kind != posix::FdKind::other; }

  static Impl& open(const std::shared_ptr<Impl>& impl) {
    if (!impl || !impl->fd) throw std::logic_error("handle is closed");
    return *impl;
  }
  static Impl& for_reading(const std::shared_ptr<Impl>& impl) {
    auto& c = open(impl);
    if (!c.readable) throw std::logic_error("connection is write-only");
    return c;
  }
  static Impl& for_writing(const std::shared_ptr<Impl>& impl) {
    auto& c = open(impl);
    if (!c.writable) throw std::logic_error("connection is read-only");
    return c;
  }

  // The stream is out of sync: stop reading from it, as CPython does after "bad message length".
  void stop_reading() {
    readable = false;
    if (!writable) fd.reset();
  }
  [[noreturn]] void bad_message(const char* what) {
    stop_reading();
    throw std::system_error(EBADMSG, std::system_category(), what);
  }

  std::size_t get_record_size() {
    if (record_size == 0) {
      // Records must fit the send buffer (else EMSGSIZE); a quarter of it keeps several in flight.
      auto buffer = static_cast<std::size_t>(posix::send_buffer_size(fd.get()));
      record_size = std::clamp<std::size_t>(buffer / 4 / 4096 * 4096, 4096, kMaxRecord);
    }
    return record_size;
  }

  void send_message(std::span<const std::byte> payload) {
    std::byte h[12];
    std::size_t header_size = make_header(h, payload.size());
    auto header = std::span<const std::byte>(h, header_size);
    if (kind != posix::FdKind::seqpacket) {
      posix::send_all(fd.get(), is_socket(), header, payload);
      return;
    }
    std::size_t record = get_record_size();
    std::size_t first = std::min(payload.size(), std::min(kFirstRecord, record) - header_size);
    posix::send_record(fd.get(), header, payload.first(first));
    for (std::size_t at = first; at < payload.size();) {
      std::size_t n = std::min(record, payload.size() - at);
      posix::send_record(fd.get(), payload.subspan(at, n), {});
      at += n;
    }
  }

  // Reads into buf; 0 is EOF. A seqpacket record longer than buf breaks the framing.
  std::size_t read_into(std::span<std::byte> buf) {
    if (kind != posix::FdKind::seqpacket) return posix::read_some(fd.get(), is_socket(), buf);
    auto r = posix::recv_record(fd.get(), buf);
    if (r.truncated) bad_message("bad message: record longer than the message");
    return r.size;
  }

  // Reads exactly buf.size() bytes of a message whose header has been read.
  void read_exact(std::span<std::byte> buf) {
    while (!buf.empty()) {
      std::size_t n = read_into(buf);
      if (n == 0) throw_eof_mid_message();
      buf = buf.subspan(n);
    }
  }

  // The read that waits for the next message, with adaptive spinning (src/spin_score.hpp):
  // retrying a non-blocking read for a few microseconds catches a quick reply without sleeping
  // (measured: a cross-CPU 8-byte round trip falls from ~45 us to ~4 us). A message that is
  // already there costs no more than a plain read.
  // How long a spin lasts follows how long this connection's waits take: twice their running
  // average, from kSpinBudget up to kMaxSpin, so that a peer which answers in 30-50 us (a
  // 1,000-item dict pickled and unpickled) is caught as well as one answering in 5 us, and the
  // wake-up (~20 us on a VM, paid at both ends of a round trip) is saved. A peer slower than
  // kMaxSpin makes the spins miss, and SpinScore stops them as before.
  std::size_t read_first(std::span<std::byte> buf) {
    if (kind == posix::FdKind::other) return read_into(buf);
    const auto start = std::chrono::steady_clock::now();
    if (spin.should_spin()) {
      const std::chrono::nanoseconds typical(typical_wait_ns.load(std::memory_order_relaxed));
      auto until = start + std::clamp<std::chrono::nanoseconds>(2 * typical, detail::kSpinBudget, kMaxSpin);
      for (bool first_try = true;; first_try = false) {
        std::optional<std::size_t> n;
        if (kind == posix::FdKind::seqpacket) {
          if (auto r = posix::try_recv_record(fd.get(), buf)) {
            if (r->truncated) bad_message("bad message: record longer than the message");
            n = r->size;
          }
        } else {
          n = posix::try_recv_some(fd.get(), buf);
        }
        if (n) {
          if (!first_try) {
            spin.caught();
            note_wait(std::chrono::steady_clock::now() - start);
          }
          return *n;
        }
        if (std::chrono::steady_clock::now() >= until) break;
      }
      spin.missed();
    }
    const std::size_t n = read_into(buf);
    note_wait(std::chrono::steady_clock::now() - start);
    return n;
  }
  // A running average that rises fast (a slower peer must not cost many missed spins) and falls
  // slowly; one long wait (an idle peer) counts as kMaxWaitSample.
  void note_wait(std::chrono::nanoseconds waited) {
    const std::int64_t w = std::min<std::chrono::nanoseconds>(waited, kMaxWaitSample).count();
    const std::int64_t typical = typical_wait_ns.load(std::memory_order_relaxed);
    typical_wait_ns.store(typical + (w - typical) / (w > typical ? 2 : 8), std::memory_order_relaxed);
  }

  Header read_header() {
    if (kind == posix::FdKind::seqpacket) {
      if (scratch.size() < kFirstRecord) scratch.resize(kFirstRecord);
      std::size_t n = read_first(std::span(scratch.data(), kFirstRecord));
      if (n == 0) throw EOFError("connection closed by the peer");
      if (n < 4) bad_message("bad message header");
      auto word = static_cast<std::uint32_t>(get_be(scratch.data(), 4));
      Header h{word, 4, 0};
      if (word == 0xffffffff) {
        if (n < 12) bad_message("bad message header");
        h = Header{get_be(scratch.data() + 4, 8), 12, 0};
      } else if (word > kShortMax) {
        bad_message("bad message header: negative length");
      }
      h.have = n - h.offset;
      if (h.have > h.length) bad_message("bad message: record longer than the message");
      return h;
    }
    std::byte b[8];
    std::size_t got = 0;
    while (got < 4) {
      auto rest = std::span(b + got, 4 - got);
      std::size_t n = got == 0 ? read_first(rest) : read_into(rest);
      if (n == 0) {
        if (got == 0) throw EOFError("connection closed by the peer");
        throw_eof_mid_message();
      }
      got += n;
    }
    auto word = static_cast<std::uint32_t>(get_be(b, 4));
    if (word == 0xffffffff) {
      read_exact(std::span(b, 8));
      return Header{get_be(b, 8), 0, 0};
    }
    if (word > kShortMax) bad_message("bad message header: negative length");
    return Header{word, 0, 0};
  }

  // Reads the rest of a payload of `length` bytes into buffer[base, base + length), of which
  // `have` bytes are there already. The buffer grows as the data arrives (see kInitialReserve),
  // four times at a step: never more than four times what has arrived (plus kInitialReserve).
  void read_growing(Bytes& buffer, std::size_t base, std::uint64_t length, std::size_t have) {
    auto first = static_cast<std::size_t>(base + std::min<std::uint64_t>(length, std::max(kInitialReserve, have)));
    if (first > buffer.size()) grow_to(buffer, first);
    else buffer.resize(first);
    std::size_t done = have;
    while (done < length) {
      std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(length - done, kMaxRecord));
      std::size_t room = buffer.size() - base - done;
      if (room < want) {
        std::size_t size = buffer.size() - base;
        std::uint64_t grown = std::max<std::uint64_t>(std::uint64_t{size} * 4, done + want);
        grow_to(buffer, base + static_cast<std::size_t>(std::min(length, grown)));
        room = buffer.size() - base - done;
      }
      std::size_t n = read_into(std::span(buffer.data() + base + done, room));
      if (n == 0) throw_eof_mid_message();
      done += n;
    }
  }

  // A whole message into a new Bytes (recv_bytes, BufferTooShort).
  Bytes read_payload(const Header& h) {
    Bytes result;
    result.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(h.length, std::max(kInitialReserve, h.have))));
    if (h.have) result.assign(scratch.data() + h.offset, scratch.data() + h.offset + h.have);
    read_growing(result, 0, h.length, h.have);
    return result;
  }
};

Connection::Connection() noexcept = default;

Connection::Connection(posix::UniqueFd fd, bool readable, bool writable) {
  if (!fd) throw std::invalid_argument("Connection: invalid file descriptor");
  if (!readable && !writable) throw std::invalid_argument("at least one of `readable` and `writable` must be true");
  auto impl = std::make_shared<Impl>();
  impl->kind = posix::fd_kind(fd.get());
  impl->fd = std::move(fd);
  impl->readable = readable;
  impl->writable = writable;
  impl_ = std::move(impl);
}

Connection Connection::from_imported_fd(std::int32_t index, bool readable, bool writable) {
  if (index < 0) throw std::invalid_argument("Connection: bad fd index");
  posix::UniqueFd fd(detail::import_fd(static_cast<std::size_t>(index)));
  return Connection(std::move(fd), readable, writable);
}

std::pair<Connection, Connection> Pipe(bool duplex) {
  auto [a, b] = posix::seqpacket_pair(kSendBuffer);
  if (!duplex) {
    // The unused directions are shut, so that a misuse fails loudly in every process sharing them.
    posix::shutdown_socket(a.get(), false, true);
    posix::shutdown_socket(b.get(), true, false);
  }
  return {Connection(std::move(a), true, duplex), Connection(std::move(b), duplex, true)};
}

void Connection::send_bytes(std::span<const std::byte> buf, std::size_t offset, std::optional<std::size_t> size) {
  auto& c = Impl::for_writing(impl_);
  if (offset > buf.size()) throw std::invalid_argument("send_bytes: buffer length < offset");
  std::size_t n = size.value_or(buf.size() - offset);
  if (n > buf.size() - offset) throw std::invalid_argument("send_bytes: buffer length < offset + size");
  c.send_message(buf.subspan(offset, n));
}

void Connection::send_bytes(std::string_view buf) {
  send_bytes(std::span(reinterpret_cast<const std::byte*>(buf.data()), buf.size()));
}

Bytes Connection::recv_bytes(std::optional<std::size_t> maxlength) {
  auto& c = Impl::for_reading(impl_);
  auto h = c.read_header();
  if (maxlength && h.length > *maxlength) {
    c.stop_reading();
    throw std::system_error(EMSGSIZE, std::system_category(), "bad message length");
  }
  return c.read_payload(h);
}

std::size_t Connection::recv_bytes_into(std::span<std::byte> buf, std::size_t offset) {
  auto& c = Impl::for_reading(impl_);
  if (offset > buf.size()) throw std::invalid_argument("recv_bytes_into: offset too large");
  auto h = c.read_header();
  if (h.length > buf.size() - offset) {
    Bytes whole = c.read_payload(h);
    throw BufferTooShort("recv_bytes_into: buffer too small for a message of " + std::to_string(whole.size()) + " bytes",
                         std::move(whole));
  }
  auto dest = buf.subspan(offset, static_cast<std::size_t>(h.length));
  if (h.have) std::memcpy(dest.data(), c.scratch.data() + h.offset, h.have);
  c.read_exact(dest.subspan(h.have));
  return dest.size();
}

std::span<const std::byte> Connection::recv_message_view() {
  auto& c = Impl::for_reading(impl_);
  auto h = c.read_header();
  if (h.have < h.length) c.read_growing(c.scratch, h.offset, h.length, h.have);
  return std::span<const std::byte>(c.scratch.data() + h.offset, static_cast<std::size_t>(h.length));
}

Bytes& Connection::send_buffer() {
  auto& c = Impl::for_writing(impl_);
  c.out.clear();
  return c.out;
}

void Connection::trim_buffer(bool send) noexcept {
  if (!impl_) return;
  Bytes& buffer = send ? impl_->out : impl_->scratch;
  if (buffer.capacity() > kKeepBuffer) Bytes().swap(buffer);
}

bool Connection::poll(Timeout timeout) {
  auto& c = Impl::for_reading(impl_);
  return posix::wait_readable(c.fd.get(), posix::deadline_after(timeout));
}

int Connection::fileno() const { return Impl::open(impl_).fd.get(); }

void Connection::close() {
  if (impl_) impl_->fd.reset();
}

bool Connection::closed() const noexcept { return !impl_ || !impl_->fd; }
bool Connection::readable() const noexcept { return impl_ && impl_->readable; }
bool Connection::writable() const noexcept { return impl_ && impl_->writable; }

connection::Serializer Connection::serializer() const noexcept {
  return impl_ ? impl_->serializer : connection::Serializer::native;
}
void Connection::set_serializer(connection::Serializer serializer) noexcept {
  if (impl_) impl_->serializer = serializer;
}

namespace detail {

void throw_not_serializable(bool pickle, bool sending) {
  throw std::invalid_argument(std::string("Connection::") + (sending ? "send" : "recv") + ": this type cannot be " +
                              (sending ? "sent" : "received") + " with the connection's serializer (" +
                              (pickle ? "pickle" : "native") + ")");
}

}  // namespace detail

namespace connection {

Waitable::Waitable(Connection& connection) : fd_(connection.fileno()) {}
Waitable::Waitable(Listener& listener) : fd_(listener.fileno()) {}
Waitable::Waitable(Process& process) : fd_(process.sentinel()) {}
Waitable::Waitable(int fd) : fd_(fd) {}

std::vector<Waitable> wait(const std::vector<Waitable>& objects, Timeout timeout) {
  std::vector<int> fds;
  fds.reserve(objects.size());
  for (const auto& w : objects) fds.push_back(w.fileno());
  std::vector<bool> ready;
  posix::poll_readable(fds, posix::deadline_after(timeout), ready);
  std::vector<Waitable> result;
  for (std::size_t i = 0; i < objects.size(); ++i)
    if (ready[i]) result.push_back(objects[i]);
  return result;
}

}  // namespace connection
}  // namespace mp
