// docs/logging.rst: the library's lifecycle lines on standard error, in Python's format.
#include <multiprocessing.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  // doc:begin
  mp::log_to_stderr(mp::levels::info);
  mp::Process p([] {});
  p.start();   // [INFO/Process-1] child process calling self.run()
  p.join();    // [INFO/Process-1] process shutting down ... process exiting with exitcode 0
  // doc:end
  std::printf("exitcode %d\n", p.exitcode().value_or(-1));
  return p.exitcode() == 0 ? 0 : 1;
}
