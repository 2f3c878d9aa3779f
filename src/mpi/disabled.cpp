// The "mpi" start method in a build without MPI (MP_WITH_MPI=OFF or MPI not found): it does not
// exist (get_all_start_methods() does not list it, Context("mpi") throws), so these are never
// reached with an "mpi" context; freeze_support has nothing to do.
#include <stdexcept>

#include "mpi/mpi_backend.hpp"

namespace mp::detail::mpi {

bool built_in() noexcept { return false; }

void freeze_support(int, char**) {}

std::shared_ptr<PoolBackend> make_pool_backend(std::optional<int>, void (*)(), std::optional<int>) {
  throw std::invalid_argument(
      "mp: this build of the library has no MPI support (configure with -DMP_WITH_MPI=ON and an MPI "
      "library such as Debian's libopenmpi-dev installed)");
}

}  // namespace mp::detail::mpi
