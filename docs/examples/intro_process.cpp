// docs/introduction.rst, "The Process class": start a process, wait for it.
#include <multiprocessing.hpp>

#include <cstdio>
#include <string>

// doc:begin
static void f(std::string name) { std::printf("hello %s\n", name.c_str()); }

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  mp::Process p(f, std::string("bob"));
  p.start();
  p.join();
  return p.exitcode() == 0 ? 0 : 1;
}
