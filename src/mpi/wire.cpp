// MPI's state in this process, messages of any size between ranks, and the worker ranks' side
// (see wire.hpp for the message format).
#include "mpi/wire.hpp"

#include <multiprocessing/logging.hpp>
#include <multiprocessing/pool.hpp>
#include <multiprocessing/process.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <thread>
#include <typeinfo>

#include "mpi/mpi_backend.hpp"
#include "pool_task_header.hpp"
#include "posix/process.hpp"
#include "process_impl.hpp"

namespace mp::detail::mpi {

bool built_in() noexcept { return true; }

namespace {

std::atomic<bool> g_initialized{false};
bool g_thread_multiple = false;
int g_init_pid = 0;
int g_rank = 0;
int g_size = 1;
MPI_Comm g_world = MPI_COMM_NULL;  // a duplicate of MPI_COMM_WORLD, for the pool's messages only

int piece_count(std::size_t size) {
  std::size_t piece = max_piece();
  std::size_t n = size / piece + (size % piece != 0 ? 1 : 0);
  if (n > static_cast<std::size_t>(std::numeric_limits<int>::max()))
    throw std::length_error("mp: a message too large for MPI");
  return static_cast<int>(n);
}

}  // namespace

std::size_t max_piece() {
  static const std::size_t piece = [] {
    std::size_t p = std::size_t{1} << 30;
    if (const char* env = std::getenv("MP_MPI_PIECE_BYTES")) {
      char* end = nullptr;
      unsigned long long v = std::strtoull(env, &end, 10);
      if (end != env && *end == '\0' && v >= 1 && v <= p) p = static_cast<std::size_t>(v);
    }
    return p;
  }();
  return piece;
}

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
  throw ProcessError(std::string("mp: MPI ") + what + " failed: " + std::string(text, static_cast<std::size_t>(len)));
}

std::unique_ptr<PendingSend> post_send(MPI_Comm comm, int dest, std::shared_ptr<const Bytes> data) {
  auto p = std::make_unique<PendingSend>();
  p->data = std::move(data);
  const Bytes& bytes = *p->data;
  std::size_t piece = max_piece();
  if (bytes.size() <= piece) {
    p->requests.resize(1);
    check(MPI_Isend(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, dest, kTagWhole, comm, &p->requests[0]),
          "Isend");
    return p;
  }
  int n = piece_count(bytes.size());
  p->size = bytes.size();
  p->requests.resize(static_cast<std::size_t>(n) + 1);
  check(MPI_Isend(&p->size, 8, MPI_BYTE, dest, kTagLarge, comm, &p->requests[0]), "Isend");
  for (int i = 0; i < n; ++i) {
    std::size_t first = static_cast<std::size_t>(i) * piece;
    std::size_t len = std::min(piece, bytes.size() - first);
    check(MPI_Isend(bytes.data() + first, static_cast<int>(len), MPI_BYTE, dest, kTagPiece, comm,
                    &p->requests[static_cast<std::size_t>(i) + 1]),
          "Isend");
  }
  return p;
}

bool test_send(PendingSend& p) {
  int done = 0;
  check(MPI_Testall(static_cast<int>(p.requests.size()), p.requests.data(), &done, MPI_STATUSES_IGNORE), "Testall");
  return done != 0;
}

void send_blocking(MPI_Comm comm, int dest, std::span<const std::byte> data) {
  std::size_t piece = max_piece();
  if (data.size() <= piece) {
    check(MPI_Send(data.data(), static_cast<int>(data.size()), MPI_BYTE, dest, kTagWhole, comm), "Send");
    return;
  }
  int n = piece_count(data.size());
  std::uint64_t size = data.size();
  check(MPI_Send(&size, 8, MPI_BYTE, dest, kTagLarge, comm), "Send");
  for (int i = 0; i < n; ++i) {
    std::size_t first = static_cast<std::size_t>(i) * piece;
    std::size_t len = std::min(piece, data.size() - first);
    check(MPI_Send(data.data() + first, static_cast<int>(len), MPI_BYTE, dest, kTagPiece, comm), "Send");
  }
}

Bytes receive_matched(MPI_Comm comm, MPI_Message& message, const MPI_Status& status) {
  int count = 0;
  check(MPI_Get_count(&status, MPI_BYTE, &count), "Get_count");
  if (status.MPI_TAG == kTagWhole) {
    Bytes out(static_cast<std::size_t>(count));
    check(MPI_Mrecv(out.data(), count, MPI_BYTE, &message, MPI_STATUS_IGNORE), "Mrecv");
    return out;
  }
  if (status.MPI_TAG != kTagLarge || count != 8) {
    Bytes junk(static_cast<std::size_t>(count));
    check(MPI_Mrecv(junk.data(), count, MPI_BYTE, &message, MPI_STATUS_IGNORE), "Mrecv");
    throw std::invalid_argument("mp: an MPI message with an unexpected tag " + std::to_string(status.MPI_TAG));
  }
  std::uint64_t size = 0;
  check(MPI_Mrecv(&size, 8, MPI_BYTE, &message, MPI_STATUS_IGNORE), "Mrecv");
  Bytes out(static_cast<std::size_t>(size));
  std::size_t piece = max_piece();
  int n = piece_count(out.size());
  for (int i = 0; i < n; ++i) {
    std::size_t first = static_cast<std::size_t>(i) * piece;
    std::size_t len = std::min(piece, out.size() - first);
    check(MPI_Recv(out.data() + first, static_cast<int>(len), MPI_BYTE, status.MPI_SOURCE, kTagPiece, comm,
                   MPI_STATUS_IGNORE),
          "Recv");
  }
  return out;
}

std::chrono::microseconds Backoff::pause() const {
  auto quiet = std::chrono::steady_clock::now() - last_;
  if (quiet < std::chrono::milliseconds(2)) return std::chrono::microseconds(0);
  if (quiet < std::chrono::milliseconds(50)) return std::chrono::microseconds(20);
  return std::chrono::microseconds(500);
}

// ---- initialization ----

bool launched_by_mpi_launcher() noexcept {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"}) {
    if (std::getenv(name)) return true;
  }
  return false;
}

bool initialized() noexcept { return g_initialized.load(); }
bool thread_multiple() noexcept { return g_thread_multiple; }
int init_pid() noexcept { return g_init_pid; }
int world_rank() noexcept { return g_rank; }
int world_size() noexcept { return g_size; }
MPI_Comm world_comm() noexcept { return g_world; }

void ensure_initialized(int* argc, char*** argv) {
  static std::mutex once;
  std::lock_guard lock(once);
  if (g_initialized) return;
  int already = 0;
  MPI_Initialized(&already);
  if (!already) {
    // A singleton spawns its workers on this one host unless told otherwise: let them
    // oversubscribe the cores as a local Pool does (a launcher's own setting wins).
    if (!launched_by_mpi_launcher()) posix::set_env_default("OMPI_MCA_rmaps_base_oversubscribe", "1");
    int provided = 0;
    check(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided), "Init_thread");
    if (provided < MPI_THREAD_SERIALIZED)
      throw ProcessError("mp: the MPI library does not support threads (MPI_THREAD_SERIALIZED), which the mpi "
                         "start method needs");
  }
  int level = 0;
  MPI_Query_thread(&level);
  g_thread_multiple = level == MPI_THREAD_MULTIPLE;
  g_init_pid = static_cast<int>(posix::current_pid());
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  g_initialized = true;
}

// ---- the worker ranks ----

namespace {

void send_answer(MPI_Comm comm, int parent, const Bytes& out) { send_blocking(comm, parent, out); }

Bytes error_answer(char tag, std::uint64_t pool, const std::uint64_t* seq, const TaskError& error) {
  Bytes out{std::byte(tag)};
  put_u64(out, pool);
  if (seq) put_u64(out, *seq);
  pool_append(out, error);
  return out;
}

}  // namespace

void worker_loop(MPI_Comm comm, int parent) {
  auto& log = get_logger();
  TaskHeaderCache task;
  Bytes out;
  Backoff backoff;
  while (true) {
    int flag = 0;
    MPI_Message message;
    MPI_Status status;
    check(MPI_Improbe(parent, MPI_ANY_TAG, comm, &flag, &message, &status), "Improbe");
    if (!flag) {
      auto pause = backoff.pause();
      if (pause.count() == 0) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(pause);
      }
      continue;
    }
    Bytes msg = receive_matched(comm, message, status);
    backoff.busy();
    if (msg.empty()) continue;
    std::span<const std::byte> in(msg);
    char kind = static_cast<char>(msg[0]);
    if (kind == 's') {
      send_answer(comm, parent, Bytes{std::byte{'q'}});
      break;
    }
    if (kind == 'i') {
      std::uint64_t pool = get_u64(in, 1);
      try {
        auto ref = mp::loads<posix::CodeRef>(in.subspan(9));
        auto init = reinterpret_cast<void (*)()>(posix::resolve_code_ref(ref));
        init();
        Bytes ok{std::byte{'k'}};
        put_u64(ok, pool);
        send_answer(comm, parent, ok);
      } catch (...) {
        send_answer(comm, parent, error_answer('E', pool, nullptr, describe_current_exception(typeid(void (*)()))));
      }
      continue;
    }
    if (kind != 't') {
      log.warning("mp: an MPI pool worker received an unknown message");
      continue;
    }
    std::uint64_t pool = get_u64(in, 1);
    std::uint64_t seq = get_u64(in, 9);
    try {
      std::uint64_t header_size = get_u64(in, 17);
      auto rest = in.subspan(25);
      if (header_size > rest.size()) throw std::invalid_argument("mp: malformed pool task message (header size)");
      auto header = rest.first(static_cast<std::size_t>(header_size));
      rest = rest.subspan(static_cast<std::size_t>(header_size));
      task.resolve(header);
      out.clear();
      out.push_back(std::byte{'r'});
      put_u64(out, pool);
      put_u64(out, seq);
      task.runner()(task.fn(), rest, out);
    } catch (...) {
      out = error_answer('e', pool, &seq, describe_current_exception(typeid(PoolRunner)));
    }
    msg.clear();
    msg.shrink_to_fit();  // a 256 MiB argument need not stay while its result goes out
    send_answer(comm, parent, out);
    out.clear();
    if (out.capacity() > (std::size_t{1} << 24)) out.shrink_to_fit();
  }
  if (log.is_enabled_for(levels::debug)) log.debug("MPI pool worker stopping");
}

void freeze_support(int argc, char** argv) {
  bool spawned = argc >= 2 && argv && argv[1] && std::strcmp(argv[1], kWorkerMarker) == 0;
  if (!spawned && !launched_by_mpi_launcher()) return;
  try {
    ensure_initialized(&argc, &argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    std::exit(1);
  }
  MPI_Comm parent = MPI_COMM_NULL;
  MPI_Comm_get_parent(&parent);
  if (spawned && parent == MPI_COMM_NULL) {
    std::fprintf(stderr, "mp::freeze_support: %s given, but this process was not started by MPI_Comm_spawn\n",
                 kWorkerMarker);
    std::exit(1);
  }
  if (!spawned) {
    // Collective: every rank of the launch makes the pools' communicator.
    if (MPI_Comm_dup(MPI_COMM_WORLD, &g_world) != MPI_SUCCESS) {
      std::fprintf(stderr, "mp::freeze_support: MPI_Comm_dup failed\n");
      std::exit(1);
    }
    MPI_Comm_set_errhandler(g_world, MPI_ERRORS_RETURN);
  }
  if (!spawned && world_rank() == 0) {
    // The parent: its pools use ranks 1..size-1. MPI is finalized at exit, after the workers stop.
    std::atexit([] { shut_down_parent(); });
    return;
  }
  int code = 0;
  MPI_Comm comm = spawned ? parent : g_world;
  try {
    current_process().set_name("MpiWorker-" + std::to_string(spawned ? world_rank() + 1 : world_rank()));
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    worker_loop(comm, 0);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mp: MPI pool worker (rank %d) failed: %s\n", world_rank(), e.what());
    code = 1;
  }
  if (code != 0) MPI_Abort(MPI_COMM_WORLD, code);
  if (spawned) {
    MPI_Comm_disconnect(&comm);
  } else {
    MPI_Comm_free(&g_world);
  }
  MPI_Finalize();
  std::fflush(nullptr);
  std::exit(0);
}

}  // namespace mp::detail::mpi
