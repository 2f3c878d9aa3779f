// docs/pool.rst: options beyond Python's pool: a worker state, a soft time limit, the live
// progress line with insights, and the insights' summary.
#include <multiprocessing.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <thread>
#include <vector>

// doc:begin
using namespace std::chrono_literals;

// Each worker receives the table once, when it starts; tasks read it instead of receiving it.
long lookup(int i) {
  const auto& table = mp::pool::worker_state<std::vector<long>>();
  return table[static_cast<std::size_t>(i) % table.size()];
}

// A long task polls its soft time limit where stopping is safe.
int patient(int) {
  for (;;) {
    mp::pool::check_soft_time_limit();  // throws mp::SoftTimeLimitExceeded once the limit passed
    std::this_thread::sleep_for(1ms);
  }
}

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  mp::PoolOptions options;
  options.processes = 2;
  options.set_worker_state(std::vector<long>(1'000'000, 7));  // 8 MB, sent once per worker
  options.soft_time_limit = 100ms;                             // per task
  if (isatty(2)) {
    options.progress_fd = 2;            // "[pool] 6000/10000 tasks, ... | working 97% ..."
    options.progress_insights = true;
  }
  mp::Pool pool(options);
  std::vector<int> xs(10000);
  std::iota(xs.begin(), xs.end(), 0);
  std::vector<long> values = pool.map(lookup, xs, 100);  // every value is 7
  bool stopped = false;
  try {
    pool.apply(patient, 0);
  } catch (const mp::SoftTimeLimitExceeded&) {
    stopped = true;  // the task gave up after 100 ms; the pool goes on
  }
  std::printf("%s", pool.insights().summary().c_str());  // per worker: chunks, working, ...
  // doc:end
  bool all_seven = std::all_of(values.begin(), values.end(), [](long v) { return v == 7; });
  std::printf("all 7: %d, stopped by the soft limit: %d\n", all_seven, stopped);
  return all_seven && values.size() == xs.size() && stopped ? 0 : 1;
}
