// Fuzz target for the authentication handshake (PROTOCOLS.md §2): the input is what a hostile peer
// sends, and our side must end in success or a documented exception, never a crash, a hang or an
// out-of-bounds read.
//   input[0]      bit 0: 1 = a SOCK_SEQPACKET pair (Pipe's mode), 0 = a stream socketpair;
//                 bits 1-2: our side runs 0 deliver_challenge, 1 answer_challenge, 2 the
//                 listener's order (deliver then answer), 3 the client's order
//   input[1]      seqpacket only: the record size the stream is cut into (1..256 bytes)
//   input[2..]    the bytes, written by a thread, which then shuts its writing side
// The pure parts (make_response, verify_response, split_digest) also get the input's bytes
// directly, as a challenge and as a response.
#include <multiprocessing/connection.hpp>

#include "auth.hpp"
#include "posix/fd.hpp"
#include "posix/socket.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <system_error>
#include <thread>

namespace posix = mp::detail::posix;
namespace auth = mp::detail::auth;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

const mp::Bytes kKey = mp::bytes("fuzz key");

void pure_parts(std::span<const std::byte> bytes) {
  try {
    mp::Bytes r = auth::make_response(kKey, bytes);
    // a response is a bare MD5 or {name} + MAC, and the challenger accepts it
    check(r.size() == 16 || (r.size() > 16 && r[0] == std::byte{'{'}));
    check(auth::verify_response(kKey, bytes, r));
  } catch (const mp::AuthenticationError&) {
  }
  if (auto split = auth::split_digest(bytes)) check(split->payload.size() <= bytes.size());
  static const mp::Bytes kMessage = [] {
    mp::Bytes m = mp::bytes("{sha256}");
    m.resize(48, std::byte{0x42});
    return m;
  }();
  (void)auth::verify_response(kKey, kMessage, bytes);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const bool seqpacket = data[0] & 1;
  const unsigned role = (data[0] >> 1) & 3;
  const std::size_t record = std::size_t{data[1]} + 1;
  std::span<const std::byte> stream(reinterpret_cast<const std::byte*>(data) + 2, size - 2);
  pure_parts(stream);

  auto [mine, theirs] = seqpacket ? posix::seqpacket_pair(1 << 20) : posix::stream_pair();
  mp::Connection c(std::move(mine), true, true);
  const int peer = theirs.get();
  std::thread writer([&] {
    try {
      if (seqpacket) {
        for (std::size_t at = 0; at < stream.size(); at += record)
          posix::send_record(peer, stream.subspan(at, std::min(record, stream.size() - at)), {});
      } else {
        for (std::size_t at = 0, piece = 1; at < stream.size(); at += piece, piece = piece * 3 % 100 + 1)
          posix::send_all(peer, true, stream.subspan(at, std::min(piece, stream.size() - at)), {});
      }
      posix::shutdown_socket(peer, false, true);  // EOF for our reader; our sends still succeed
    } catch (const std::system_error&) {
      // our side gave up and closed its end
    }
  });
  // The peer always ends with EOF, so the deadline is never reached: a TimeoutError is a hang.
  auto deadline = posix::deadline_after(std::chrono::seconds(20));
  try {
    switch (role) {
      case 0: auth::deliver_challenge(c, kKey, deadline); break;
      case 1: auth::answer_challenge(c, kKey, deadline); break;
      // Both halves as Listener (2) and Client (3) run them: on a stream socket, the handshake
      // that writes ahead and reads several messages at once (auth.cpp's StreamReader).
      case 2: auth::handshake(c, kKey, deadline, true); break;
      default: auth::handshake(c, kKey, deadline, false); break;
    }
    // Success needs a right MAC of our random challenge: only answer_challenge alone can get
    // there (a hostile challenger can send #WELCOME# to anything).
    check(role == 1);
  } catch (const mp::AuthenticationError&) {
  } catch (const mp::EOFError&) {
  } catch (const mp::TimeoutError&) {
    check(false);
  } catch (const std::system_error& e) {
    const int code = e.code().value();
    check(code == EPIPE || code == ECONNRESET);
  }
  c.close();
  writer.join();
  return 0;
}
