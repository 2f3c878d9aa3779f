// docs/introduction.rst, "Exchanging objects between processes": a Pipe between parent and child.
#include <multiprocessing.hpp>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  // doc:begin
  auto [parent_conn, child_conn] = mp::Pipe();
  mp::Process p([](mp::Connection c) { c.send(std::vector<int>{42, 0}); }, child_conn);
  p.start();
  auto v = parent_conn.recv<std::vector<int>>();   // {42, 0}
  p.join();
  // doc:end
  std::printf("received %d %d\n", v.at(0), v.at(1));
  return v == std::vector<int>{42, 0} ? 0 : 1;
}
