// The MPI side of the "mpi" start method: MPI's state in this process, and how one message of
// any size crosses between two ranks (only src/mpi/ includes this header, and <mpi.h>).
//
// A message is a byte string whose first byte says what it is:
//   parent -> worker  'i' u64 pool <CodeRef of the initializer>        (run it once; answer 'k')
//                     't' u64 pool u64 seq u64 header_size <header> <items>   (a chunk)
//                     's'                                               (stop; answer 'q')
//   worker -> parent  'k' u64 pool                 'E' u64 pool <TaskError>   (initializer ran / threw)
//                     'r' u64 pool u64 seq <results, as pool_runner encodes them>
//                     'e' u64 pool u64 seq <TaskError>   (the chunk could not run at all)
//                     'q'                                (stopping)
// The header is the TaskHeader of the job (src/pool_task_header.hpp: code references of its runner and task), the items
// the chunk's encoded std::vector<Item>: the same bytes the local pool sends down a worker's pipe.
//
// MPI counts are int: a message up to max_piece() bytes is one MPI message (tag kTagWhole);
// a longer one is its size (tag kTagLarge, 8 bytes) followed by pieces (tag kTagPiece) of at
// most max_piece() bytes. MPI keeps messages between two ranks on one communicator in order, so
// the pieces of one message are never mixed with another's.
#pragma once

#include <mpi.h>

#include <multiprocessing/base.hpp>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "posix/process.hpp"

namespace mp::detail::mpi {

inline constexpr int kTagWhole = 1;
inline constexpr int kTagLarge = 2;
inline constexpr int kTagPiece = 3;

/// The largest MPI message: 1 GiB, or the environment variable MP_MPI_PIECE_BYTES (at least 1;
/// the tests use it to send large messages in many pieces without needing gigabytes).
std::size_t max_piece();

/// Throws ProcessError "mp: MPI <what> failed: <MPI's error string>" unless rc is MPI_SUCCESS.
void check(int rc, const char* what);

/// Sends posted with MPI_Isend, and what they send from (kept alive until they complete).
struct PendingSend {
  std::shared_ptr<const Bytes> data;
  std::uint64_t size = 0;  // the kTagLarge header
  std::vector<MPI_Request> requests;
};
/// Posts the sends of data to dest on comm.
std::unique_ptr<PendingSend> post_send(MPI_Comm comm, int dest, std::shared_ptr<const Bytes> data);
/// True once every send of p completed.
bool test_send(PendingSend& p);
/// A blocking send (the worker ranks' answers).
void send_blocking(MPI_Comm comm, int dest, std::span<const std::byte> data);

/// Receives the whole message a probe matched (its pieces too, from the same source).
Bytes receive_matched(MPI_Comm comm, MPI_Message& message, const MPI_Status& status);

/// Appends a u64 in host order (both ends run the same binary).
inline void put_u64(Bytes& out, std::uint64_t v) {
  const auto* p = reinterpret_cast<const std::byte*>(&v);
  out.insert(out.end(), p, p + sizeof v);
}
/// Reads a u64 at offset; std::invalid_argument past the end.
inline std::uint64_t get_u64(std::span<const std::byte> in, std::size_t offset) {
  if (in.size() < offset + 8) throw std::invalid_argument("mp: a malformed MPI pool message");
  std::uint64_t v = 0;
  std::memcpy(&v, in.data() + offset, sizeof v);
  return v;
}

/// Polling with backoff: MPI has no file descriptor to wait on, so a waiting rank probes. Right
/// after a message it yields between probes (a reply to a short task comes back in microseconds);
/// after a quiet while it sleeps between probes, up to half a millisecond, so idle ranks cost
/// almost no CPU.
class Backoff {
 public:
  void busy() { last_ = std::chrono::steady_clock::now(); }
  /// How long to pause now (zero: just yield).
  std::chrono::microseconds pause() const;

 private:
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

// ---- MPI's state in this process ----

/// Initializes MPI (MPI_THREAD_MULTIPLE, at least SERIALIZED) once; registers the exit handler.
void ensure_initialized(int* argc, char*** argv);
bool initialized() noexcept;
/// The process that initialized MPI.
int init_pid() noexcept;
/// Whether MPI calls may come from several threads at once (MPI_THREAD_MULTIPLE was provided).
bool thread_multiple() noexcept;
/// Rank and size of MPI_COMM_WORLD (0 and 1 before initialization).
int world_rank() noexcept;
int world_size() noexcept;
/// The pools' duplicate of MPI_COMM_WORLD (MPI_COMM_NULL unless launched by mpirun).
MPI_Comm world_comm() noexcept;
/// Whether this process was started by mpirun / mpiexec (its environment says so).
bool launched_by_mpi_launcher() noexcept;

/// The worker ranks' loop: runs what parent sends on comm until 's'.
void worker_loop(MPI_Comm comm, int parent);

/// Called once at exit in the parent (rank 0 or a singleton) after MPI was initialized: stops
/// the pools' engine and the workers, then finalizes MPI (backend.cpp).
void shut_down_parent();

}  // namespace mp::detail::mpi
