// The authentication handshake (Python: multiprocessing.connection's deliver_challenge,
// answer_challenge and their helpers), byte for byte as PROTOCOLS.md §2 describes it:
// - as challenger we send #CHALLENGE#{sha256} + 40 random bytes, which every CPython 3.x answers
//   (3.11 and older with a bare HMAC-MD5 of all 48 bytes, 3.12+ with {sha256} + HMAC-SHA256);
// - as responder we follow CPython 3.12's _create_response exactly, the length test first: a
//   20-byte legacy challenge may well start with '{' (PROTOCOLS.md §2.5 shows a real one).
// MACs come from OpenSSL and are compared with CRYPTO_memcmp (constant time), as hmac.compare_digest.
// Unlike CPython, every message has a deadline, so that a silent peer cannot hang accept().
#include "auth.hpp"

#include <multiprocessing/connection.hpp>

#include "posix/fd.hpp"
#include "posix/process.hpp"
#include "posix/socket.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>
#include <stdexcept>
#include <string>

namespace mp {

namespace posix = detail::posix;

namespace detail::auth {
namespace {

struct Digest {
  std::string_view name;
  const EVP_MD* (*md)();
};

// CPython's _ALLOWED_DIGESTS (3.12+). sha512 is deliberately absent: CPython refuses it too.
const std::array<Digest, 5> kDigests = {{
    {"md5", EVP_md5},
    {"sha256", EVP_sha256},
    {"sha384", EVP_sha384},
    {"sha3_256", EVP_sha3_256},
    {"sha3_384", EVP_sha3_384},
}};
// The longest allowed name (CPython's _MAX_DIGEST_LEN): '}' must come within 1 + this + 1 bytes.
constexpr std::size_t kMaxDigestName = 8;

std::span<const std::byte> as_bytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

void append(Bytes& out, std::span<const std::byte> part) { out.insert(out.end(), part.begin(), part.end()); }

bool starts_with(std::span<const std::byte> message, std::string_view prefix) {
  return message.size() >= prefix.size() && std::memcmp(message.data(), prefix.data(), prefix.size()) == 0;
}

bool equals(std::span<const std::byte> message, std::string_view text) {
  return message.size() == text.size() && starts_with(message, text);
}

[[noreturn]] void timed_out() { throw TimeoutError("authentication handshake timed out"); }

}  // namespace

std::optional<Bytes> hmac(std::string_view digest, std::span<const std::byte> key, std::span<const std::byte> message) {
  auto it = std::find_if(kDigests.begin(), kDigests.end(), [&](const Digest& d) { return d.name == digest; });
  if (it == kDigests.end()) return std::nullopt;
  if (key.size() > static_cast<std::size_t>(INT_MAX)) throw std::invalid_argument("authkey too long");
  // OpenSSL wants a non-null key pointer even for an empty key (CPython 3.13 runs the handshake
  // with b'' too).
  static const unsigned char kEmpty = 0;
  const void* key_data = key.empty() ? static_cast<const void*>(&kEmpty) : static_cast<const void*>(key.data());
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (::HMAC(it->md(), key_data, static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(message.data()),
             message.size(), out, &length) == nullptr)
    throw std::runtime_error("HMAC-" + std::string(digest) + " failed in OpenSSL");
  const auto* first = reinterpret_cast<const std::byte*>(out);
  return Bytes(first, first + length);
}

std::optional<DigestAndPayload> split_digest(std::span<const std::byte> message) {
  // The legacy lengths come first, whatever the bytes (CPython's _LEGACY_LENGTHS).
  if (message.size() == 16 || message.size() == 20) return DigestAndPayload{"", message};
  if (message.empty() || message[0] != std::byte{'{'}) return std::nullopt;
  const std::size_t limit = std::min(message.size(), kMaxDigestName + 2);
  for (std::size_t curly = 1; curly < limit; ++curly) {
    if (message[curly] != std::byte{'}'}) continue;
    std::string_view name(reinterpret_cast<const char*>(message.data()) + 1, curly - 1);
    for (const auto& d : kDigests)
      if (d.name == name) return DigestAndPayload{d.name, message.subspan(curly + 1)};
    return std::nullopt;
  }
  return std::nullopt;
}

Bytes make_response(std::span<const std::byte> key, std::span<const std::byte> message) {
  if (message.size() < kMinChallenge)
    throw AuthenticationError("challenge too short: " + std::to_string(message.size()) + " bytes");
  auto split = split_digest(message);
  if (!split)
    throw AuthenticationError("unsupported message length, missing digest prefix, or unsupported digest");
  if (split->digest.empty()) return *hmac("md5", key, message);
  // The 3.12+ form: the MAC covers all of the message, its {name} prefix included.
  Bytes response;
  response.reserve(split->digest.size() + 2 + EVP_MAX_MD_SIZE);
  append(response, as_bytes("{"));
  append(response, as_bytes(split->digest));
  append(response, as_bytes("}"));
  append(response, *hmac(split->digest, key, message));
  return response;
}

bool verify_response(std::span<const std::byte> key, std::span<const std::byte> message,
                     std::span<const std::byte> response) {
  auto split = split_digest(response);
  if (!split) return false;
  // Any allowed digest is accepted, not only the one offered (as CPython 3.12+).
  auto expected = hmac(split->digest.empty() ? "md5" : split->digest, key, message);
  if (!expected || expected->size() != split->payload.size()) return false;
  return CRYPTO_memcmp(expected->data(), split->payload.data(), expected->size()) == 0;
}

Bytes read_message(Connection& connection, const posix::Deadline& deadline) {
  if (!connection.readable() || !connection.writable())
    throw std::logic_error("the authentication handshake needs an open duplex connection");
  return read_message(connection, deadline, posix::fd_kind(connection.fileno()));
}

Bytes read_message(Connection& connection, const posix::Deadline& deadline, posix::FdKind kind) {
  const int fd = connection.fileno();
  auto wait = [&] {
    if (!posix::wait_readable(fd, deadline)) timed_out();
  };
  auto too_long = [](std::uint64_t n) {
    throw AuthenticationError("handshake message too long (" + std::to_string(n) + " bytes; at most " +
                              std::to_string(kMaxMessage) + ")");
  };
  auto header_length = [&](const std::byte* h, std::size_t available, std::size_t& header_size) -> std::uint64_t {
    std::uint64_t word = 0;
    for (int i = 0; i < 4; ++i) word = (word << 8) | std::to_integer<std::uint64_t>(h[i]);
    header_size = 4;
    if (word == 0xffffffff) {
      // The long form: only ever legal for lengths above 2 GiB, far over the cap, but CPython
      // reads it for any length; the length decides.
      if (available < 12) {
        header_size = 12;
        return 0;
      }
      std::uint64_t n = 0;
      for (int i = 4; i < 12; ++i) n = (n << 8) | std::to_integer<std::uint64_t>(h[i]);
      header_size = 12;
      return n;
    }
    if (word > 0x7fffffff) throw AuthenticationError("bad handshake message header: negative length");
    return word;
  };

  Bytes message;
  if (kind == posix::FdKind::seqpacket) {
    // Pipe()'s records: the first holds the header and (for a message this small) all of the
    // payload. One byte more than the largest legal record shows a longer one as truncated.
    std::array<std::byte, 12 + kMaxMessage + 1> record;
    wait();
    auto r = posix::recv_record(fd, record);
    if (r.size == 0) throw EOFError("connection closed by the peer");
    if (r.truncated) throw AuthenticationError("handshake message too long (more than 256 bytes)");
    if (r.size < 4) throw AuthenticationError("bad handshake message header");
    std::size_t header_size = 0;
    std::uint64_t length = header_length(record.data(), r.size, header_size);
    if (r.size < header_size) throw AuthenticationError("bad handshake message header");
    if (length > kMaxMessage) too_long(length);
    if (r.size - header_size > length) throw AuthenticationError("bad handshake message: record longer than the message");
    message.assign(record.begin() + static_cast<std::ptrdiff_t>(header_size), record.begin() + static_cast<std::ptrdiff_t>(r.size));
    while (message.size() < length) {
      wait();
      const std::size_t want = static_cast<std::size_t>(length) - message.size();
      r = posix::recv_record(fd, std::span(record.data(), want + 1));
      if (r.size == 0) throw EOFError("got end of file during message");
      if (r.truncated || r.size > want) throw AuthenticationError("bad handshake message: record longer than the message");
      message.insert(message.end(), record.begin(), record.begin() + static_cast<std::ptrdiff_t>(r.size));
    }
    return message;
  }

  // A byte stream: exactly the header, then exactly the payload, each read after poll() says
  // there is something, so no read blocks past the deadline.
  const bool is_socket = kind != posix::FdKind::other;
  auto read_exactly = [&](std::span<std::byte> buf, bool at_start) {
    bool first = at_start;
    while (!buf.empty()) {
      std::size_t n = 0;
      // The rest of a message the peer sent in one write is usually there already: a socket is
      // read without waiting first (which saves a poll() per message); otherwise wait, then read.
      std::optional<std::size_t> got;
      if (is_socket && !first) got = posix::try_recv_some(fd, buf);
      if (got) {
        n = *got;
      } else {
        wait();
        n = posix::read_some(fd, is_socket, buf);
      }
      if (n == 0) {
        if (first) throw EOFError("connection closed by the peer");
        throw EOFError("got end of file during message");
      }
      first = false;
      buf = buf.subspan(n);
    }
  };
  std::array<std::byte, 12> header;
  read_exactly(std::span(header.data(), 4), true);
  std::size_t header_size = 0;
  std::uint64_t length = header_length(header.data(), 4, header_size);
  if (header_size == 12) {
    read_exactly(std::span(header.data() + 4, 8), false);
    length = header_length(header.data(), 12, header_size);
  }
  if (length > kMaxMessage) too_long(length);
  message.resize(static_cast<std::size_t>(length));
  read_exactly(message, false);
  return message;
}

namespace {

void deliver(Connection& connection, const Bytes& authkey, const posix::Deadline& deadline, posix::FdKind kind) {
  Bytes message;
  append(message, as_bytes("{sha256}"));
  append(message, posix::random_bytes(kNonceLength));
  Bytes challenge;
  append(challenge, as_bytes(kChallenge));
  append(challenge, message);
  connection.send_bytes(challenge);
  Bytes response = read_message(connection, deadline, kind);
  if (!verify_response(authkey, message, response)) {
    // The peer may already be gone; the verdict is then lost, but the refusal is what matters.
    try {
      connection.send_bytes(kFailure);
    } catch (const std::system_error&) {
    }
    throw AuthenticationError("digest received was wrong");
  }
  connection.send_bytes(kWelcome);
}

void answer(Connection& connection, const Bytes& authkey, const posix::Deadline& deadline, posix::FdKind kind) {
  Bytes challenge = read_message(connection, deadline, kind);
  if (!starts_with(challenge, kChallenge)) throw AuthenticationError("protocol error: expected a challenge");
  auto message = std::span<const std::byte>(challenge).subspan(kChallenge.size());
  connection.send_bytes(make_response(authkey, message));
  Bytes verdict = read_message(connection, deadline, kind);
  if (!equals(verdict, kWelcome)) throw AuthenticationError("digest sent was rejected");
}

// What kind of descriptor the connection has (asked once per handshake: a system call).
posix::FdKind checked_kind(Connection& connection) {
  if (!connection.readable() || !connection.writable())
    throw std::logic_error("the authentication handshake needs an open duplex connection");
  return posix::fd_kind(connection.fileno());
}

}  // namespace

void deliver_challenge(Connection& connection, const Bytes& authkey, const posix::Deadline& deadline) {
  deliver(connection, authkey, deadline, checked_kind(connection));
}

void answer_challenge(Connection& connection, const Bytes& authkey, const posix::Deadline& deadline) {
  answer(connection, authkey, deadline, checked_kind(connection));
}

void handshake(Connection& connection, const Bytes& authkey, const posix::Deadline& deadline, bool challenger_first) {
  const posix::FdKind kind = checked_kind(connection);
  if (challenger_first) {
    deliver(connection, authkey, deadline, kind);
    answer(connection, authkey, deadline, kind);
  } else {
    answer(connection, authkey, deadline, kind);
    deliver(connection, authkey, deadline, kind);
  }
}

}  // namespace detail::auth

namespace connection {

void deliver_challenge(Connection& connection, const Bytes& authkey, Timeout timeout) {
  detail::auth::deliver_challenge(connection, authkey, posix::deadline_after(timeout));
}

void answer_challenge(Connection& connection, const Bytes& authkey, Timeout timeout) {
  detail::auth::answer_challenge(connection, authkey, posix::deadline_after(timeout));
}

}  // namespace connection
}  // namespace mp
