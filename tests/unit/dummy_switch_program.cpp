// One program, built twice: with -DNS=mp (processes) and with -DNS=mp::dummy (threads). Nothing
// else changes; both builds run as tests and must print the same lines (tests/unit/dummy_switch.cmake).
#include <multiprocessing.hpp>

#include <cstdio>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>

#ifndef NS
#error "build with -DNS=mp or -DNS=mp::dummy"
#endif

namespace {

int square(int x) { return x * x; }
int add(int a, int b) { return a + b; }

void producer(NS::Queue<int> q, int from, int to) {
  for (int i = from; i < to; ++i) q.put(i);
}

void consumer(NS::JoinableQueue<int> jobs, NS::Value<long> total, NS::Lock lock, NS::Array<int> per_worker, int slot) {
  for (;;) {
    int j = jobs.get();
    if (j < 0) {
      jobs.task_done();
      return;
    }
    {
      std::lock_guard g(lock);
      total.set_value(total.value() + j);
    }
    {
      std::lock_guard g(per_worker.get_lock());
      per_worker[static_cast<std::size_t>(slot)] += 1;
    }
    jobs.task_done();
  }
}

void rendezvous(NS::Barrier barrier, NS::Semaphore slots, NS::Value<int> inside, NS::Value<int> most) {
  barrier.wait();
  slots.acquire();
  {
    std::lock_guard g(inside.get_lock());
    inside.get_obj() += 1;
    if (inside.get_obj() > most.value()) most.set_value(inside.get_obj());
  }
  {
    std::lock_guard g(inside.get_lock());
    inside.get_obj() -= 1;
  }
  slots.release();
}

void signaller(NS::Condition cond, NS::Value<int> flag, NS::Event done) {
  cond.acquire();
  flag.set_value(1);
  cond.notify_all();
  cond.release();
  done.set();
}

void echo_upper(NS::Connection c) {
  auto s = c.recv<std::string>();
  for (auto& ch : s) ch = static_cast<char>(ch - 'a' + 'A');
  c.send(s);
}

}  // namespace

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);  // (the program's entry point, not the API being switched)

  // Queue: two producers, every item once
  {
    NS::Queue<int> q;
    NS::Process p1(producer, q, 0, 500), p2(producer, q, 500, 1000);
    p1.start();
    p2.start();
    long sum = 0;
    for (int i = 0; i < 1000; ++i) sum += q.get();
    p1.join();
    p2.join();
    std::printf("queue sum %ld exitcodes %d %d\n", sum, *p1.exitcode(), *p2.exitcode());
  }
  // JoinableQueue, Value, Lock, Array
  {
    NS::JoinableQueue<int> jobs(16);
    NS::Value<long> total(0);
    NS::Lock lock;
    NS::Array<int> per_worker(3);
    std::vector<NS::Process> workers;
    for (int i = 0; i < 3; ++i) workers.emplace_back(consumer, jobs, total, lock, per_worker, i);
    for (auto& w : workers) w.start();
    for (int i = 1; i <= 200; ++i) jobs.put(i);
    for (int i = 0; i < 3; ++i) jobs.put(-1);
    jobs.join();
    for (auto& w : workers) w.join();
    auto counts = per_worker.to_vector();
    std::printf("joinable total %ld items %d active %zu\n", total.value(), std::accumulate(counts.begin(), counts.end(), 0),
                NS::active_children().size());
  }
  // Barrier, Semaphore
  {
    NS::Barrier barrier(4);
    NS::Semaphore slots(2);
    NS::Value<int> inside(0), most(0);
    std::vector<NS::Process> ps;
    for (int i = 0; i < 4; ++i) ps.emplace_back(rendezvous, barrier, slots, inside, most);
    for (auto& p : ps) p.start();
    for (auto& p : ps) p.join();
    std::printf("semaphore most inside <= 2: %s, free slots %d\n", most.value() <= 2 ? "yes" : "no", slots.get_value());
  }
  // Condition, Event, RLock
  {
    NS::Condition cond;
    NS::Value<int> flag(0);
    NS::Event done;
    cond.acquire();
    NS::Process p(signaller, cond, flag, done);
    p.start();
    bool seen = cond.wait_for([&] { return flag.value() == 1; }, std::chrono::seconds(60));
    cond.release();
    bool set = done.wait(std::chrono::seconds(60));
    p.join();
    NS::RLock r;
    r.acquire();
    bool again = r.acquire(false);
    r.release();
    r.release();
    std::printf("condition %d event %d rlock reentrant %d\n", seen, set, again);
  }
  // Pipe
  {
    auto [a, b] = NS::Pipe();
    NS::Process p(echo_upper, b);
    p.start();
    a.send(std::string("switch"));
    std::printf("pipe %s\n", a.recv<std::string>().c_str());
    p.join();
  }
  // Pool
  {
    NS::Pool pool(2);
    std::vector<int> xs(100);
    std::iota(xs.begin(), xs.end(), 0);
    auto squares = pool.map(square, xs);
    long imap_sum = 0;
    for (int v : pool.imap(square, xs)) imap_sum += v;
    std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}};
    auto sums = pool.starmap(add, pairs);
    auto async = pool.apply_async(add, 40, 2);
    std::printf("pool map %d imap %ld starmap %d %d apply %d async %d\n", squares[99], imap_sum, sums[0], sums[1],
                pool.apply(square, 7), async.get(std::chrono::seconds(60)));
    pool.close();
    pool.join();
  }
  std::printf("cpu_count >= 1: %s\n", NS::cpu_count() >= 1 ? "yes" : "no");
  return 0;
}
