// docs/cluster.rst: one Pool program for a laptop and a cluster. Under `mpirun -n N` its tasks
// run on the N - 1 worker ranks; alone, a build with MPI spawns its workers with MPI_Comm_spawn,
// and a build without MPI uses the default local start method.
#include <multiprocessing.hpp>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <vector>

// doc:begin
double simulate(int seed) { return seed * 0.5; }  // any task: a function pointer

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);  // under mpirun: ranks >= 1 become the pool's workers here
  auto methods = mp::get_all_start_methods();
  if (std::find(methods.begin(), methods.end(), "mpi") != methods.end()) mp::set_start_method("mpi");
  mp::Pool pool(2);  // under mpirun, mp::Pool() takes one worker per worker rank
  std::vector<int> seeds(100000);
  std::iota(seeds.begin(), seeds.end(), 0);
  std::vector<double> results = pool.map(simulate, seeds);
  std::printf("%zu results, last %g (start method %s)\n", results.size(), results.back(),
              mp::get_start_method().c_str());
  return results.back() == 49999.5 ? 0 : 1;
}
