// docs/pool.rst: map, apply_async, imap and imap_unordered on a pool of 4 workers.
#include <multiprocessing.hpp>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <vector>

// doc:begin
int square(int x) { return x * x; }

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  std::vector<int> xs(10);
  std::iota(xs.begin(), xs.end(), 0);                 // 0, 1, ..., 9
  mp::Pool pool(4);                                   // 4 workers; default cpu_count()
  std::vector<int> squares = pool.map(square, xs);    // in order, chunked
  auto r = pool.apply_async(square, 12);              // r.get() == 144
  std::vector<int> in_order, as_finished;
  for (int v : pool.imap(square, xs)) in_order.push_back(v);              // in order, as they arrive
  for (int v : pool.imap_unordered(square, xs)) as_finished.push_back(v);  // as they finish
  std::sort(as_finished.begin(), as_finished.end());  // the same squares, in another order
  const int r_value = r.get();                        // 144
  std::printf("squares[9] = %d, r = %d\n", squares.at(9), r_value);
  return squares.at(9) == 81 && r_value == 144 && in_order == squares && as_finished == squares ? 0 : 1;
}                                                     // ~Pool: terminate()
