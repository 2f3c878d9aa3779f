// docs/managers.rst, "Using a remote manager": a manager serving a registered C++ type over TCP,
// and a client that creates an object there and calls its methods. Here the server runs in a
// child process on a free port, which it reports over a Pipe; across machines it would be a
// program of its own on a fixed port, e.g. Address("", 50000).
#include <multiprocessing.hpp>

#include <cstdint>
#include <cstdio>

// doc:begin counter
struct Counter {
  std::int64_t n = 0;
  void add(std::int64_t k) { n += k; }
  std::int64_t get() const { return n; }
};
// doc:end counter

using mp::connection::Address;

// doc:begin server
void serve(Address address, mp::Connection ready) {
  mp::BaseManager m(address, mp::bytes("abracadabra"));
  m.register_type<Counter>("Counter").method("add", &Counter::add).method("get", &Counter::get);
  mp::Server server = m.get_server();
  ready.send(server.address());           // the real port, when given port 0
  server.serve_forever();                 // until a client sends 'shutdown'
}
// doc:end server

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  auto [reader, writer] = mp::Pipe(false);
  mp::Process server(serve, Address("127.0.0.1", 0), writer);
  server.start();
  if (!reader.poll(mp::Duration(30.0))) return 1;
  const Address where = reader.recv<Address>();
  // doc:begin client
  // (or a Python client: BaseManager.register('Counter'); m.connect(); m.Counter().add(1))
  mp::BaseManager c(where, mp::bytes("abracadabra"));
  c.connect();
  mp::BaseProxy counter = c.create("Counter");
  counter.callmethod<void>("add", 1);
  counter.callmethod<void>("add", 41);
  auto n = counter.callmethod<std::int64_t>("get");   // 42
  // doc:end client
  std::printf("counter at %s: %lld\n", where.to_string().c_str(), static_cast<long long>(n));
  c.shutdown();
  server.join();
  return n == 42 && server.exitcode() == 0 ? 0 : 1;
}
