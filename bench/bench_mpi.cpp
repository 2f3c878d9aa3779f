// The "mpi" start method against mpi4py.futures (bench/mpi_bench.py runs both under mpirun with
// 2 worker ranks and prints the ratios). Run as `mpirun -n 3 bench_mpi [--quick]`: rank 0 prints
// one JSON line per case; the other ranks are the pool's workers.
//   mpi_map_1M_ints      Pool::map of a trivial function over 1,000,000 ints, chunksize 125000
//                        (what Python's Pool picks for 2 workers), in Mtasks/s
//   mpi_apply_roundtrip  apply_async(f, x).get() one after another, in µs per round trip
#include <multiprocessing.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <vector>

namespace {

int plus_one(int x) { return x + 1; }

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  mp::PoolOptions options;
  options.processes = 2;
  options.context = mp::get_context("mpi");
  mp::Pool pool(options);

  std::vector<int> xs(1'000'000);
  std::iota(xs.begin(), xs.end(), 0);
  const std::size_t chunksize = 125'000;
  (void)pool.map(plus_one, xs, chunksize);  // warm up: code references resolved, buffers grown
  double best = 1e300;
  for (int rep = 0; rep < (quick ? 2 : 7); ++rep) {
    auto t = std::chrono::steady_clock::now();
    auto out = pool.map(plus_one, xs, chunksize);
    double s = seconds_since(t);
    if (out.size() != xs.size() || out.back() != 1'000'000) {
      std::fprintf(stderr, "bench_mpi: wrong map result\n");
      return 1;
    }
    best = std::min(best, s);
  }
  std::printf("{\"case\": \"mpi_map_1M_ints\", \"unit\": \"Mtasks/s\", \"ours\": %.6g}\n", 1.0 / best);

  const int n = quick ? 200 : 5000;
  for (int i = 0; i < 100; ++i) (void)pool.apply_async(plus_one, i).get();
  double best_rt = 1e300;
  for (int rep = 0; rep < 3; ++rep) {
    auto t = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) {
      if (pool.apply_async(plus_one, i).get() != i + 1) return 1;
    }
    best_rt = std::min(best_rt, seconds_since(t) / n);
  }
  std::printf("{\"case\": \"mpi_apply_roundtrip\", \"unit\": \"us/rt\", \"ours\": %.6g}\n", best_rt * 1e6);
  std::fflush(stdout);
  pool.close();
  pool.join();
  return 0;
}
