// Fuzz target for the manager server's request decoding and dispatch (src/managers.cpp): the
// bytes a client sends after the handshake. The input is a sequence of request messages, each a
// 2-byte little-endian length and that many bytes (the rest of the input is the last message),
// fed to one server (detail::managers::RequestSandbox: SyncManager's typeids, no sockets, no call
// waits), so that a create can be followed by calls on the object it made (ids are "10000",
// "10001", ... in order). Every message must get a reply that a client can load: a pickled
// (kind, payload) tuple of a known kind, never a crash, a hang or an exception. Seeds:
// fuzz/corpus/manager/ (requests pickled by CPython 3.11: every typeid, good and bad calls).
#include "manager_pickle.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>

namespace {

[[noreturn]] void fail(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "manager_fuzz: %s %s\n", what, detail.c_str());
  std::abort();
}

void check_reply(const std::string& reply) {
  mp::pickle::Value v;
  try {
    v = mp::detail::managers::load_reply(std::span(reinterpret_cast<const std::byte*>(reply.data()), reply.size()));
  } catch (const std::exception& e) {
    fail("a client cannot load the reply:", e.what());
  }
  const std::string kind = v[std::size_t{0}].as<std::string>();
  if (kind != "#RETURN" && kind != "#ERROR" && kind != "#TRACEBACK" && kind != "#UNSERIALIZABLE" && kind != "#PROXY")
    fail("unknown reply kind", kind);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static mp::detail::managers::RequestSandbox server;
  server.reset();
  std::size_t at = 0;
  int messages = 0;
  while (at < size && messages++ < 64) {
    std::size_t n = size - at;
    if (n >= 2) {
      const std::size_t declared = data[at] | (std::size_t{data[at + 1]} << 8);
      at += 2;
      n = std::min(declared, size - at);
    } else {
      at += n;
      n = 0;
    }
    std::string reply;
    try {
      reply = server.handle(std::span(reinterpret_cast<const std::byte*>(data + at), n));
    } catch (const std::exception& e) {
      fail("handle() threw:", e.what());
    }
    check_reply(reply);
    at += n;
  }
  return 0;
}
