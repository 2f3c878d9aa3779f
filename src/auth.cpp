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
#include "spin_score.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/params.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

namespace mp {

namespace posix = detail::posix;

namespace detail::auth {
namespace {

struct Digest {
  std::string_view name;
  const char* openssl_name;
};

// CPython's _ALLOWED_DIGESTS (3.12+). sha512 is deliberately absent: CPython refuses it too.
const std::array<Digest, 5> kDigests = {{
    {"md5", "MD5"},
    {"sha256", "SHA256"},
    {"sha384", "SHA384"},
    {"sha3_256", "SHA3-256"},
    {"sha3_384", "SHA3-384"},
}};

// An HMAC context with its digest set but no key, made once per digest and only ever copied.
// HMAC() looks up the HMAC implementation and then the digest by name on every call (OpenSSL 3's
// fetches, with their locks: 0.9 of its 1.5 us, times four MACs in a row per handshake); a copy
// of this is 0.5 us. Copying only reads it, so threads share it.
struct MacTemplate {
  EVP_MAC* mac = nullptr;
  EVP_MAC_CTX* ctx = nullptr;
  explicit MacTemplate(const char* digest) {
    mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    if (mac) ctx = EVP_MAC_CTX_new(mac);
    char* name = const_cast<char*>(digest);  // (OSSL_PARAM's type; only read)
    const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, name, 0),
                                 OSSL_PARAM_construct_end()};
    if (ctx && EVP_MAC_CTX_set_params(ctx, params) != 1) {
      EVP_MAC_CTX_free(ctx);
      ctx = nullptr;
    }
  }
  ~MacTemplate() {
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
  }
  MacTemplate(const MacTemplate&) = delete;
  MacTemplate& operator=(const MacTemplate&) = delete;
};

const MacTemplate& mac_template(std::size_t digest) {
  // (built on first use, each once, thread-safely: function-local statics)
  static const MacTemplate t0(kDigests[0].openssl_name), t1(kDigests[1].openssl_name),
      t2(kDigests[2].openssl_name), t3(kDigests[3].openssl_name), t4(kDigests[4].openssl_name);
  static const std::array<const MacTemplate*, 5> all = {&t0, &t1, &t2, &t3, &t4};
  return *all[digest];
}

struct MacCtxFree {
  void operator()(EVP_MAC_CTX* c) const noexcept { EVP_MAC_CTX_free(c); }
};

// The longest allowed name (CPython's _MAX_DIGEST_LEN): '}' must come within 1 + this + 1 bytes.
constexpr std::size_t kMaxDigestName = 8;
// Whether a handshake read spins before it sleeps (src/spin_score.hpp). The process's, not the
// handshake's: a handshake has only two or three waits to learn from.
SpinScore& handshake_spin() {
  static SpinScore score(64);
  return score;
}

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
  auto failed = [&]() -> std::optional<Bytes> {
    throw std::runtime_error("HMAC-" + std::string(digest) + " failed in OpenSSL");
  };
  const MacTemplate& t = mac_template(static_cast<std::size_t>(it - kDigests.begin()));
  if (!t.ctx) return failed();
  std::unique_ptr<EVP_MAC_CTX, MacCtxFree> ctx(EVP_MAC_CTX_dup(t.ctx));
  // OpenSSL wants a non-null key pointer even for an empty key (CPython 3.13 runs the handshake
  // with b'' too).
  static const unsigned char kEmpty = 0;
  const auto* key_data = key.empty() ? &kEmpty : reinterpret_cast<const unsigned char*>(key.data());
  unsigned char out[EVP_MAX_MD_SIZE];
  std::size_t length = 0;
  if (!ctx || EVP_MAC_init(ctx.get(), key_data, key.size(), nullptr) != 1 ||
      EVP_MAC_update(ctx.get(), reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1 ||
      EVP_MAC_final(ctx.get(), out, &length, sizeof out) != 1)
    return failed();
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

// ---- the handshake of Listener and Client, on a stream socket ----
//
// The same messages in the same order as CPython, but each side writes what it can without
// waiting: the client sends its own challenge with its response, and the listener then answers
// it with its verdict, in one write. Four flights instead of six, and every message but the
// listener's last is read with whatever else has arrived (one recv, not header then payload).
// That is safe because in the handshake each side sends nothing after a message until the peer
// has answered it, except after the client's final verdict, which the listener reads exactly (at
// most its 13 bytes): what the client sends after the handshake stays in the socket. A CPython
// peer reads exactly, so our early challenge waits in its socket until it asks for it.

// The length header (4 bytes, or 12 for the long form) of a message of n bytes, then the bytes.
void append_frame(Bytes& out, std::span<const std::byte> message) {
  const auto n = static_cast<std::uint32_t>(message.size());  // (at most kMaxMessage here)
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::byte>((n >> shift) & 0xff));
  append(out, message);
}

// Reads messages from a stream socket into a small buffer, possibly several per recv().
class StreamReader {
 public:
  StreamReader(int fd, const posix::Deadline& deadline) : fd_(fd), deadline_(deadline) {}

  /// The next message. With `limit`, at most that many bytes (header included) are taken from the
  /// socket for it unless its header announces more, so that nothing after it is read.
  Bytes next(std::optional<std::size_t> limit = std::nullopt) {
    bool first = true;  // (EOF before any byte of the message is "closed by the peer")
    for (;;) {
      if (auto m = parse()) return std::move(*m);
      const std::size_t have = end_ - begin_;
      if (have > 0) first = false;
      compact();
      std::size_t want = buffer_.size() - end_;
      if (limit) want = std::min(want, std::max(*limit, need_) - have);
      fill(std::max<std::size_t>(want, 1), first);
      first = false;
    }
  }
  /// Whether a whole message is already here (it can be read without waiting).
  bool has_message() {
    if (end_ - begin_ < 4) return false;
    std::size_t header = 0, length = 0;
    return peek_header(header, length) && end_ - begin_ >= header + length;
  }
  bool empty() const noexcept { return begin_ == end_; }

 private:
  // The header at begin_: false when not all of it is here yet. Throws for a bad or too long one.
  bool peek_header(std::size_t& header, std::size_t& length) {
    const std::byte* h = buffer_.data() + begin_;
    const std::size_t have = end_ - begin_;
    std::uint64_t word = 0;
    for (int i = 0; i < 4; ++i) word = (word << 8) | std::to_integer<std::uint64_t>(h[i]);
    header = 4;
    if (word == 0xffffffff) {
      header = 12;
      if (have < 12) return false;
      word = 0;
      for (int i = 4; i < 12; ++i) word = (word << 8) | std::to_integer<std::uint64_t>(h[i]);
    } else if (word > 0x7fffffff) {
      throw AuthenticationError("bad handshake message header: negative length");
    }
    if (word > kMaxMessage)
      throw AuthenticationError("handshake message too long (" + std::to_string(word) + " bytes; at most " +
                                std::to_string(kMaxMessage) + ")");
    length = static_cast<std::size_t>(word);
    return true;
  }
  // Takes a whole message off the buffer; sets need_ (bytes the current message needs in all).
  std::optional<Bytes> parse() {
    need_ = 4;
    if (end_ - begin_ < 4) return std::nullopt;
    std::size_t header = 0, length = 0;
    if (!peek_header(header, length)) {
      need_ = header;
      return std::nullopt;
    }
    need_ = header + length;
    if (end_ - begin_ < need_) return std::nullopt;
    const std::byte* p = buffer_.data() + begin_ + header;
    Bytes message(p, p + length);
    begin_ += need_;
    if (begin_ == end_) begin_ = end_ = 0;
    return message;
  }
  void compact() noexcept {
    if (begin_ == 0) return;
    std::memmove(buffer_.data(), buffer_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  // Reads what there is (at least one byte). A reply from a peer on another CPU usually comes
  // within microseconds, and sleeping for it costs a wake-up by inter-CPU interrupt (several per
  // handshake): as Connection's reads do, retry a non-blocking read first while that pays off.
  void fill(std::size_t want, bool first) {
    auto room = std::span(buffer_.data() + end_, want);
    std::optional<std::size_t> got;
    if (spin_ && handshake_spin().should_spin()) {
      const auto until = std::chrono::steady_clock::now() + kSpinBudget;
      got = posix::try_recv_some(fd_, room);
      if (!got) {  // (a reply already there says nothing about spinning)
        while (!got && std::chrono::steady_clock::now() < until) got = posix::try_recv_some(fd_, room);
        if (got) {
          handshake_spin().caught();
        } else {
          handshake_spin().missed();
          spin_ = false;  // (nor again in this handshake)
        }
      }
    }
    // (Without a spin, wait first: the reply is rarely there already, and a read that finds
    // nothing is a system call for nothing.)
    for (;;) {
      if (!got) {
        if (!posix::wait_readable(fd_, deadline_)) timed_out();
        got = posix::try_recv_some(fd_, room);
        continue;
      }
      if (*got == 0) {
        if (first) throw EOFError("connection closed by the peer");
        throw EOFError("got end of file during message");
      }
      end_ += *got;
      return;
    }
  }

  int fd_;
  const posix::Deadline& deadline_;
  // Room for a whole message (12 + kMaxMessage) after any part of the next one.
  std::array<std::byte, 4 * (12 + kMaxMessage)> buffer_;
  std::size_t begin_ = 0, end_ = 0, need_ = 4;
  bool spin_ = true;
};

constexpr std::size_t kVerdictFrame = 4 + kWelcome.size();  // #WELCOME# and #FAILURE#: 9 bytes
static_assert(kWelcome.size() == kFailure.size());

// "{sha256}" + 40 random bytes: the payload of our challenge, which the response's MAC covers.
Bytes new_challenge_payload() {
  Bytes message;
  message.reserve(8 + kNonceLength);
  append(message, as_bytes("{sha256}"));
  append(message, posix::random_bytes(kNonceLength));
  return message;
}

void refuse(int fd) {
  // The peer may already be gone; the verdict is then lost, but the refusal is what matters.
  Bytes out;
  append_frame(out, as_bytes(kFailure));
  try {
    posix::send_all(fd, true, out, {});
  } catch (const std::system_error&) {
  }
  throw AuthenticationError("digest received was wrong");
}

void stream_handshake(int fd, const Bytes& authkey, const posix::Deadline& deadline, bool challenger_first) {
  StreamReader in(fd, deadline);
  auto respond = [&](const Bytes& challenge) {
    if (!starts_with(challenge, kChallenge)) throw AuthenticationError("protocol error: expected a challenge");
    return make_response(authkey, std::span<const std::byte>(challenge).subspan(kChallenge.size()));
  };
  Bytes out;
  out.reserve(2 * (4 + kMaxMessage));
  const Bytes ours = new_challenge_payload();
  Bytes our_challenge;
  append(our_challenge, as_bytes(kChallenge));
  append(our_challenge, ours);
  if (challenger_first) {
    // The listener: challenge; check the response; welcome (+ the answer to the client's
    // challenge when it came with its response); its verdict, read exactly.
    append_frame(out, our_challenge);
    posix::send_all(fd, true, out, {});
    Bytes response = in.next();
    if (!verify_response(authkey, ours, response)) refuse(fd);
    out.clear();
    append_frame(out, as_bytes(kWelcome));
    const bool early = in.has_message();
    if (early) append_frame(out, respond(in.next()));
    posix::send_all(fd, true, out, {});
    if (!early) {
      out.clear();
      append_frame(out, respond(in.next()));
      posix::send_all(fd, true, out, {});
    }
    Bytes verdict = in.next(kVerdictFrame);
    if (!equals(verdict, kWelcome)) throw AuthenticationError("digest sent was rejected");
  } else {
    // The client: the response and our challenge at once; the verdict on ours; the listener's
    // response (usually with the verdict); our verdict.
    append_frame(out, respond(in.next()));
    append_frame(out, our_challenge);
    posix::send_all(fd, true, out, {});
    Bytes verdict = in.next();
    if (!equals(verdict, kWelcome)) throw AuthenticationError("digest sent was rejected");
    Bytes response = in.next();
    if (!verify_response(authkey, ours, response)) refuse(fd);
    out.clear();
    append_frame(out, as_bytes(kWelcome));
    posix::send_all(fd, true, out, {});
  }
  // The peer sends nothing more before it has our last message: anything here broke the protocol.
  if (!in.empty()) throw AuthenticationError("protocol error: data after the handshake");
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
  handshake(connection, authkey, deadline, challenger_first, checked_kind(connection));
}

void handshake(Connection& connection, const Bytes& authkey, const posix::Deadline& deadline, bool challenger_first,
               posix::FdKind kind) {
  if (!connection.readable() || !connection.writable())
    throw std::logic_error("the authentication handshake needs an open duplex connection");
  if (kind == posix::FdKind::stream) return stream_handshake(connection.fileno(), authkey, deadline, challenger_first);
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
