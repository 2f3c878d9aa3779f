// The "mpi" start method: pools whose workers are MPI ranks (docs/cluster.rst).
//
// This header is compiled in every build; src/mpi/backend.cpp implements it when the library is
// built with MPI (CMake option MP_WITH_MPI, cmake/MpMpi.cmake), src/mpi/disabled.cpp otherwise.
// Nothing here includes <mpi.h>: the rest of the library never sees MPI.
//
// The seam with the local pool (src/pool.cpp): Pool::Impl makes a PoolBackend when its context
// is "mpi" and forwards submit / close / terminate / join to it. The backend takes the very
// PoolJob / PoolChunk work the local dispatcher takes, and a worker rank runs a chunk with the
// same pool_runner the local workers run (found by code reference, as they find it).
#pragma once

#include <multiprocessing/detail/pool_job.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

namespace mp::detail::mpi {

/// Whether this build has the "mpi" start method.
bool built_in() noexcept;

/// Called by mp::freeze_support after the spawn/forkserver markers were checked. Under mpirun
/// (Open MPI, MPICH or PMIx environment): initializes MPI; rank 0 returns (the parent) and ranks
/// >= 1 become pool workers that never return. A worker started by MPI_Comm_spawn (the marker
/// kWorkerMarker in argv[1]) never returns either. Anywhere else: does nothing.
void freeze_support(int argc, char** argv);

inline constexpr const char* kWorkerMarker = "--multiprocessing-mpi-worker";

/// A pool's work as the MPI side runs it; the methods mirror Pool's.
class PoolBackend {
 public:
  virtual ~PoolBackend() = default;
  virtual int processes() const = 0;
  /// std::logic_error when the pool is terminated, or closed unless after_close (the rest of an
  /// imap's lazily read input); ProcessError when MPI failed.
  virtual void submit(std::shared_ptr<PoolJob> job, std::vector<PoolChunk> chunks, bool after_close) = 0;
  virtual void close() = 0;
  virtual void terminate() = 0;
  virtual void join() = 0;
  /// PoolWaiter::help: a thread waiting for a result receives answers itself for a while (no
  /// thread wake-up on the way back); returns when done(ctx), at the deadline, or when idle.
  virtual void help(bool (*done)(void*), void* ctx, std::optional<std::chrono::steady_clock::time_point> deadline) = 0;
};

/// The backend of a Pool with the "mpi" context. processes defaults to the number of worker
/// ranks (under mpirun) or cpu_count() (a singleton, which spawns its workers). Throws
/// std::invalid_argument for bad options, ProcessError (saying how to launch) when there are no
/// worker ranks and none can be spawned.
std::shared_ptr<PoolBackend> make_pool_backend(std::optional<int> processes, void (*initializer)(),
                                               std::optional<int> maxtasksperchild);

}  // namespace mp::detail::mpi
