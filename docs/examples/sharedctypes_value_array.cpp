// docs/sharedctypes.rst, "Sharing state between processes": a Value and an Array in shared memory.
// doc:begin
#include <multiprocessing.hpp>

#include <cstdio>

void f(mp::Value<double> n, mp::Array<int> a) {
  n.set_value(3.1415927);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = -a[i];
}

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  mp::Value<double> num(0.0);
  mp::Array<int> arr{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  mp::Process p(f, num, arr);
  p.start();
  p.join();
  std::printf("%g\n", num.value());           // 3.14159
  for (int x : arr.to_vector()) std::printf("%d ", x);  // 0 -1 -2 -3 -4 -5 -6 -7 -8 -9
  std::printf("\n");
  return num.value() == 3.1415927 && arr.to_vector().at(9) == -9 ? 0 : 1;
}
