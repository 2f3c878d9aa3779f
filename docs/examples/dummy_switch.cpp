// docs/dummy.rst: the same code on threads; only the namespace alias differs from processes.
#include <multiprocessing.hpp>

#include <cstdio>
#include <mutex>
#include <vector>

// doc:begin
namespace ns = mp::dummy;   // or mp

void worker(ns::JoinableQueue<int> q, ns::Value<int> total, ns::Lock lock) {
  for (int v; (v = q.get()) >= 0; q.task_done()) {
    std::lock_guard guard(lock);
    total.set_value(total.value() + v);
  }
  q.task_done();
}

int square(int x) { return x * x; }

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  ns::JoinableQueue<int> q;
  ns::Value<int> total(0);
  ns::Lock lock;
  ns::Process p(worker, q, total, lock);
  p.start();
  for (int i = 1; i <= 100; ++i) q.put(i);
  q.put(-1);
  q.join();
  p.join();                                  // total.value() == 5050

  ns::Pool pool(4);
  auto squares = pool.map(square, std::vector<int>{1, 2, 3, 4});   // {1, 4, 9, 16}
  std::printf("total %d, squares %d %d %d %d\n", total.value(), squares.at(0), squares.at(1),
              squares.at(2), squares.at(3));
  return total.value() == 5050 && squares == std::vector<int>{1, 4, 9, 16} ? 0 : 1;
}
