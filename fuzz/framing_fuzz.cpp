// Fuzz target for the connection framing (PROTOCOLS.md §1): the input is the byte stream a peer
// sends, and the connection's readers must turn any of it into messages or documented errors.
//   input[0]      bit 0: 1 = a SOCK_SEQPACKET pair (Pipe's mode), 0 = a stream socketpair;
//                 the other bits choose the order of the reading calls
//   input[1..2]   seqpacket only: the record size the stream is cut into (1..131071 bytes)
//   input[3..]    the bytes, written by a thread (then the writing end is closed)
// The reader calls recv_bytes (with and without maxlength), recv_bytes_into (small and large
// buffers) and recv<T> for a few T until EOF. Only the documented exceptions may come out, a
// message is never longer than the input, and a length on the wire is never allocated before its
// bytes arrive (the Framing unit tests check a 1 TiB header; here libFuzzer's -malloc_limit_mb
// would catch it).
#include <multiprocessing/connection.hpp>

#include "posix/fd.hpp"
#include "posix/socket.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace posix = mp::detail::posix;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

// One reading call, chosen by op. Returns false once the connection can no longer be read.
bool read_one(mp::Connection& c, unsigned op, std::size_t input_size) {
  try {
    switch (op % 7) {
      case 0:
        check(c.recv_bytes().size() <= input_size);
        break;
      case 1:
        check(c.recv_bytes(64).size() <= 64);
        break;
      case 2: {
        std::vector<std::byte> buf(32);
        check(c.recv_bytes_into(buf, 3) <= 29);
        break;
      }
      case 3: {
        std::vector<std::byte> buf(4096);
        check(c.recv_bytes_into(buf) <= 4096);
        break;
      }
      case 4:
        check(c.recv<std::string>().size() <= input_size);
        break;
      case 5:
        check(c.recv<std::vector<std::int32_t>>().size() <= input_size);
        break;
      case 6:
        check(c.recv<std::map<std::string, std::int64_t>>().size() <= input_size);
        break;
    }
  } catch (const mp::BufferTooShort& e) {
    check(e.message().size() <= input_size);
  } catch (const mp::EOFError&) {
    return false;
  } catch (const std::invalid_argument&) {
    // a message that does not decode as the T asked for: the connection stays in sync
  } catch (const std::logic_error&) {
    return false;  // no longer readable (after a bad header or maxlength)
  } catch (const std::system_error& e) {
    const int code = e.code().value();
    check(code == EBADMSG || code == EMSGSIZE || code == ECONNRESET);
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  const bool seqpacket = data[0] & 1;
  const unsigned order = data[0] >> 1;
  const std::size_t record = ((std::size_t{data[1]} << 8) | data[2]) * 2 + 1;
  std::span<const std::byte> stream(reinterpret_cast<const std::byte*>(data) + 3, size - 3);

  auto [mine, theirs] = seqpacket ? posix::seqpacket_pair(1 << 20) : posix::stream_pair();
  mp::Connection c(std::move(mine), true, true);
  std::thread writer([&, fd = std::move(theirs)]() mutable {
    try {
      if (seqpacket) {
        for (std::size_t at = 0; at < stream.size(); at += record)
          posix::send_record(fd.get(), stream.subspan(at, std::min(record, stream.size() - at)), {});
      } else {
        // in uneven pieces, so that reads see headers and payloads cut anywhere
        for (std::size_t at = 0, piece = 1; at < stream.size(); at += piece, piece = piece * 3 % 1000 + 1)
          posix::send_all(fd.get(), true, stream.subspan(at, std::min(piece, stream.size() - at)), {});
      }
    } catch (const std::system_error&) {
      // the reader stopped early and closed its end
    }
    fd.reset();
  });
  for (unsigned i = 0; i < 100000 && read_one(c, order + i, stream.size()); ++i) {
  }
  c.close();
  writer.join();
  return 0;
}
