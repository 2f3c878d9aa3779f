#include <multiprocessing.hpp>
#include <iostream>
#include <string>

static void greet(mp::Connection conn, std::string who) {
  conn.send("hello " + who + " from " + mp::current_process().name());
}

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);             // first: spawn/forkserver children run their work here
  auto [parent, child] = mp::Pipe();
  mp::Process p(mp::get_context("spawn"), greet, child, std::string("world"));
  p.start();
  std::cout << parent.recv<std::string>() << "\n";   // hello world from Process-1
  p.join();
}
