// The demo that `./dev demo` runs. Part 1: the main process starts one worker per start method
// (fork, spawn, forkserver), hands each chunks of work over a Pipe and collects the answers.
// Part 2: producer processes fill a shared-memory Queue, and a Pool of workers squares what they
// produced, with a worker killed on purpose in the middle: the pool reports it and goes on.
#include <multiprocessing.hpp>

#include <chrono>
#include <csignal>
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

// Runs in a producer: puts its share of the numbers 1..n on the queue, then a -1 as "done".
static void produce(mp::Queue<int> queue, int first, int last) {
  for (int x = first; x <= last; ++x) queue.put(x);
  queue.put(-1);
}

static long long square(int x) { return static_cast<long long>(x) * x; }

static long long square_or_die(int x) {
  if (x == 13) raise(SIGKILL);  // a worker that dies mid-task
  return square(x);
}

// Part 2: two producers fill a queue; the parent drains it and hands the numbers to a pool.
static bool pool_over_a_queue() {
  mp::Queue<int> queue;
  mp::Process p1(produce, queue, 1, 500), p2(produce, queue, 501, 1000);
  p1.start();
  p2.start();
  std::vector<int> numbers;
  for (int done = 0; done < 2;) {
    int x = queue.get(std::chrono::seconds(60));
    if (x < 0)
      ++done;
    else
      numbers.push_back(x);
  }
  p1.join();
  p2.join();
  std::printf("[queue     ] 2 producers put %zu numbers on a shared-memory queue\n", numbers.size());

  mp::Pool pool(2);
  auto squares = pool.map(square, numbers);
  long long sum = std::accumulate(squares.begin(), squares.end(), 0LL);
  std::printf("[pool      ] 2 workers squared them: sum = %lld (expected %lld)\n", sum, 1000LL * 1001 * 2001 / 6);
  try {
    pool.map(square_or_die, std::vector<int>{11, 12, 13, 14});
  } catch (const mp::WorkerLostError& e) {
    std::printf("[pool      ] a worker was killed mid-task; the pool says: %s\n", e.what());
  }
  long long after = pool.apply(square, 12);
  std::printf("[pool      ] and goes on with a new worker: 12 squared is %lld\n", after);
  pool.close();
  pool.join();
  return sum == 1000LL * 1001 * 2001 / 6 && after == 144;
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
  std::printf("total over all workers: %lld (expected %lld)\n\n", total, 3LL * 2000 * 2001 * 4001 / 6);
  bool pool_ok = pool_over_a_queue();
  return total == 3LL * 2000 * 2001 * 4001 / 6 && pool_ok ? 0 : 1;
}
