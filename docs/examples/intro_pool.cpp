// docs/introduction.rst, "Using a pool of workers".
#include <multiprocessing.hpp>

#include <cstdio>
#include <vector>

// doc:begin
int f(int x) { return x * x; }

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  mp::Pool pool(5);
  std::vector<int> squares = pool.map(f, std::vector<int>{1, 2, 3});   // {1, 4, 9}
  auto r = pool.apply_async(f, 10);                                   // r.get() == 100
  int hundred = r.get();
  std::printf("%d %d %d, %d\n", squares.at(0), squares.at(1), squares.at(2), hundred);
  return squares == std::vector<int>{1, 4, 9} && hundred == 100 ? 0 : 1;
}
