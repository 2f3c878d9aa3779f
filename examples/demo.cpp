// The demo that `./dev demo` runs: the main process starts one worker per start method (fork,
// spawn, forkserver), hands each a chunk of work over a Pipe, and collects the answers.
#include <multiprocessing.hpp>

#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

struct Answer {
  std::string worker;  // the worker's process name
  int pid = 0;
  long long sum_of_squares = 0;
  template <class Archive> void serialize(Archive& ar) { ar(worker, pid, sum_of_squares); }
};

// Runs in the worker: answers chunks until an empty one says there is no more work. (Waiting for
// EOF instead would need the fork child to close its inherited copy of the parent's end first.)
static void worker(mp::Connection conn) {
  for (;;) {
    auto chunk = conn.recv<std::vector<int>>();
    if (chunk.empty()) return;
    long long sum = 0;
    for (int x : chunk) sum += static_cast<long long>(x) * x;
    conn.send(Answer{mp::current_process().name(), *mp::current_process().pid(), sum});
  }
}

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);  // in a spawn/forkserver child: runs its work and exits here

  std::printf("multiprocessing for C++: %d CPUs usable, main process %d (%s)\n\n", mp::cpu_count(),
              *mp::current_process().pid(), mp::current_process().name().c_str());

  long long total = 0;
  for (const char* method : {"fork", "spawn", "forkserver"}) {
    auto [parent_end, child_end] = mp::Pipe();
    mp::Process p(mp::get_context(method), worker, child_end);
    p.start();
    child_end.close();  // the child holds its own copy now
    std::printf("[%-10s] started %s, pid %d\n", method, p.name().c_str(), *p.pid());

    for (int round = 0; round < 2; ++round) {
      std::vector<int> chunk(1000);
      std::iota(chunk.begin(), chunk.end(), round * 1000 + 1);
      parent_end.send(chunk);
      auto answer = parent_end.recv<Answer>();
      std::printf("[%-10s]   %s (pid %d): sum of squares of %d..%d = %lld\n", method, answer.worker.c_str(),
                  answer.pid, chunk.front(), chunk.back(), answer.sum_of_squares);
      total += answer.sum_of_squares;
    }
    parent_end.send(std::vector<int>{});  // no more work: the worker returns
    p.join();
    std::printf("[%-10s] %s exited with code %d\n\n", method, p.name().c_str(), *p.exitcode());
  }
  std::printf("total over all workers: %lld (expected %lld)\n", total, 3LL * 2000 * 2001 * 4001 / 6);
  return total == 3LL * 2000 * 2001 * 4001 / 6 ? 0 : 1;
}
