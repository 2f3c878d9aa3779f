// docs/sharedctypes.rst: a compound update under a Value's lock; copy() and synchronized() of a
// RawArray.
#include <multiprocessing.hpp>

#include <cstdio>
#include <mutex>
#include <vector>

static void add_many(mp::Value<int> counter) {
  for (int i = 0; i < 1000; ++i) {
    // doc:begin compound
    { std::lock_guard g(counter.get_lock()); counter.get_obj() += 1; }
    // doc:end compound
  }
}

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  mp::Value<int> counter(0);
  std::vector<mp::Process> ps;
  for (int i = 0; i < 4; ++i) ps.emplace_back(add_many, counter);
  for (auto& p : ps) p.start();
  for (auto& p : ps) p.join();

  // doc:begin raw
  mp::RawArray<double> raw(4);
  raw[3] = 9.0;
  auto dup = mp::sharedctypes::copy(raw);          // RawArray<double>, new memory
  auto sync = mp::sharedctypes::synchronized(raw); // Array<double>, raw's memory
  { std::lock_guard g(sync.get_lock()); sync[0] = 2.0; }
  // raw[0] == 2.0, dup[3] == 9.0
  // doc:end raw
  std::printf("counter %d, raw[0] %g, dup[3] %g, dup[0] %g\n", counter.value(), raw[0], dup[3], dup[0]);
  return counter.value() == 4000 && raw[0] == 2.0 && dup[3] == 9.0 && dup[0] == 0.0 ? 0 : 1;
}
