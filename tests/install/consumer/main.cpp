// A user's program built against the installed package.
#include <multiprocessing.hpp>
#include <iostream>
#include <string>

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  auto [parent, child] = mp::Pipe();
  mp::Process p(mp::get_context("spawn"), [](mp::Connection c) { c.send(std::string("hello")); }, child);
  p.start();
  std::cout << "child said: " << parent.recv<std::string>() << std::endl;
  p.join();
  return p.exitcode() == 0 ? 0 : 1;
}
