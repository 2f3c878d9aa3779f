// docs/managers.rst: a SyncManager's dict and Namespace, and a proxy passed to a child process.
#include <multiprocessing.hpp>

#include <cstdio>
#include <string>

// doc:begin worker
void worker(mp::DictProxy<std::string, int> d) { d.set("done", 1); }
// doc:end worker

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  // doc:begin dict
  mp::SyncManager m = mp::Manager();            // a started manager (forked server process)
  auto d = m.dict<std::string, int>();
  d.set("a", 1);
  int a = d.get("a");                            // 1; d.get("zz") throws std::out_of_range
  // doc:end dict
  bool missing_throws = false;
  try {
    (void)d.get("zz");
  } catch (const std::out_of_range&) {
    missing_throws = true;
  }
  // doc:begin child
  mp::Process p(worker, d);
  p.start();
  p.join();
  // doc:end child
  const int done = d.get("done");                // 1: set by the child
  // doc:begin namespace
  mp::NamespaceProxy ns = m.Namespace();
  ns.set("x", 10);
  int x = ns.get<int>("x");      // ns.get("missing") throws mp::AttributeError
  // doc:end namespace
  bool no_attribute = false;
  try {
    (void)ns.get<int>("missing");
  } catch (const mp::AttributeError&) {
    no_attribute = true;
  }
  std::printf("a=%d done=%d x=%d\n", a, done, x);
  return a == 1 && missing_throws && done == 1 && x == 10 && no_attribute ? 0 : 1;
}
