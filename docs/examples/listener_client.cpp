// docs/listeners.rst: a Listener and a Client in another process, with an authentication key.
#include <multiprocessing.hpp>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  // doc:begin
  namespace conn = mp::connection;
  conn::Listener listener(conn::Address("127.0.0.1", 0), {.authkey = mp::bytes("secret password")});
  conn::Address where = listener.address();          // the real port
  mp::Process client([where] {
    mp::Connection c = conn::Client(where, {.authkey = mp::bytes("secret password")});
    c.send(std::string("hello"));
  });
  client.start();
  mp::Connection c = listener.accept();               // runs the handshake
  std::string hello = c.recv<std::string>();
  // doc:end
  client.join();
  std::printf("%s from %s\n", hello.c_str(), listener.last_accepted()->to_string().c_str());
  return hello == "hello" && client.exitcode() == 0 ? 0 : 1;
}
