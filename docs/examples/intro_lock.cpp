// docs/introduction.rst, "Synchronization between processes": one printer at a time.
#include <multiprocessing.hpp>

#include <cstdio>
#include <mutex>
#include <vector>

// doc:begin
void f(mp::Lock l, int i) {
  std::lock_guard guard(l);
  std::printf("hello world %d\n", i);
  std::fflush(stdout);   // the child's stdio buffer is flushed while the lock is held
}

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  mp::Lock lock;
  std::vector<mp::Process> ps;
  for (int num = 0; num < 10; ++num) ps.emplace_back(f, lock, num);
  for (auto& p : ps) p.start();
  for (auto& p : ps) p.join();
  for (auto& p : ps)
    if (p.exitcode() != 0) return 1;
  return 0;
}
