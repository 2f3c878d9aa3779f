// Process pools (Python: multiprocessing/pool.py), the non-template half.
//
// Each worker is an mp::Process of the pool's context running pool_worker_main with its own
// Pipe to the pool. The parent's dispatcher thread owns the workers: it sends chunks to idle
// workers, receives their results, runs the jobs' completion (and the user's callbacks), and
// watches every worker's sentinel. Because every chunk sent to a worker is recorded in that
// worker's in-flight list, and a worker answers its chunks in order, a dead worker's first
// unanswered chunk is exactly the one it was running: that chunk fails with WorkerLostError,
// chunks sent to it but not started go back to the queue, and a new worker takes its place.
//
// Messages on a worker's pipe (one per Connection message):
//   parent -> worker  't' u64 header_size <header: code refs of runner and task>
//                         u32 count, u8 timed, count x (u64 size, <items of one chunk>)   (a batch)
//                     's'                         (stop: the pool is closing)
//   worker -> parent  'k'                         (ready: the initializer has run)
//                     'R' u32 count, count x (u8 'r'|'e', u64 run_ns, u64 size, <results | TaskError>)
// Tiny chunks of one job travel in batches (the batch grows while the chunks run in microseconds
// and falls back to one when they do not), and a worker sends the results it gathered when its
// batch is done, when 200 us passed, or before it would wait: two syscalls per batch instead of
// per task. A slot of shared memory per worker (WorkerSlot) tells the pool how many chunks the
// worker began and when its current task started, so that when it dies the pool still knows
// exactly which chunk was running (the others run again or for the first time elsewhere), and
// can enforce time limits. The slot also counts the messages each side wrote to the pipe: a side
// waiting for the other spins on that count for a few microseconds before it sleeps in poll
// (SpinScore), and reads what it announces without polling.
// The dispatcher starts with the first task: a pool closed before any gets 's' from close() and
// is reaped by join() on the caller's thread (a pool's start and join cost little more than the
// forks).
// A worker also exits when its parent dies (it waits on the parent's sentinel with its pipe).
#include <multiprocessing/connection.hpp>
#include <multiprocessing/logging.hpp>
#include <multiprocessing/pool.hpp>
#include <multiprocessing/process.hpp>
#include <multiprocessing/sharedctypes.hpp>

#include <cxxabi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <latch>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <typeinfo>

#include "fork_safety.hpp"
#include "pool_task_header.hpp"
#include "spin_score.hpp"
#include "posix/fd.hpp"
#include "posix/futex.hpp"
#include "posix/pool_signals.hpp"
#include "mpi/mpi_backend.hpp"
#include "posix/process.hpp"
#include "posix/socket.hpp"

namespace mp::detail {

namespace {

// The standard exception types that keep their type across the pipe, by kind number.
enum Kind : std::int32_t {
  kOther = 0,
  kRuntimeError,
  kLogicError,
  kInvalidArgument,
  kDomainError,
  kLengthError,
  kOutOfRange,
  kRangeError,
  kOverflowError,
  kUnderflowError,
  kBadAlloc,
  kProcessError,
  kTimeoutError,
  kWorkerLostError,
  kEOFError,
  kStopIteration,
  kTaskTimeLimit,
  kSoftTimeLimit,
};

Kind kind_of(const std::type_info& t) {
  if (t == typeid(std::runtime_error)) return kRuntimeError;
  if (t == typeid(std::logic_error)) return kLogicError;
  if (t == typeid(std::invalid_argument)) return kInvalidArgument;
  if (t == typeid(std::domain_error)) return kDomainError;
  if (t == typeid(std::length_error)) return kLengthError;
  if (t == typeid(std::out_of_range)) return kOutOfRange;
  if (t == typeid(std::range_error)) return kRangeError;
  if (t == typeid(std::overflow_error)) return kOverflowError;
  if (t == typeid(std::underflow_error)) return kUnderflowError;
  if (t == typeid(std::bad_alloc)) return kBadAlloc;
  if (t == typeid(mp::ProcessError)) return kProcessError;
  if (t == typeid(mp::TimeoutError)) return kTimeoutError;
  if (t == typeid(mp::WorkerLostError)) return kWorkerLostError;
  if (t == typeid(mp::EOFError)) return kEOFError;
  if (t == typeid(mp::StopIteration)) return kStopIteration;
  if (t == typeid(mp::TaskTimeLimitExceeded)) return kTaskTimeLimit;
  if (t == typeid(mp::SoftTimeLimitExceeded)) return kSoftTimeLimit;
  return kOther;
}

std::string worker_description() {
  return "pool worker " + current_process().name() + " (pid " + std::to_string(posix::current_pid()) + ")";
}

}  // namespace

TaskError describe_current_exception(const std::type_info& task) {
  TaskError e;
  const std::type_info* type = abi::__cxa_current_exception_type();
  e.type_name = type ? type_name(*type) : std::string("unknown");
  e.kind = type ? kind_of(*type) : kOther;
  try {
    throw;
  } catch (const std::exception& ex) {
    e.what = ex.what();
  } catch (...) {
    e.what = "an exception of type " + e.type_name + " (not derived from std::exception)";
  }
  e.traceback = "raised by task " + type_name(task) + " in " + worker_description();
  return e;
}

std::exception_ptr make_task_exception(const TaskError& e) {
  switch (e.kind) {
    case kRuntimeError: return std::make_exception_ptr(std::runtime_error(e.what));
    case kLogicError: return std::make_exception_ptr(std::logic_error(e.what));
    case kInvalidArgument: return std::make_exception_ptr(std::invalid_argument(e.what));
    case kDomainError: return std::make_exception_ptr(std::domain_error(e.what));
    case kLengthError: return std::make_exception_ptr(std::length_error(e.what));
    case kOutOfRange: return std::make_exception_ptr(std::out_of_range(e.what));
    case kRangeError: return std::make_exception_ptr(std::range_error(e.what));
    case kOverflowError: return std::make_exception_ptr(std::overflow_error(e.what));
    case kUnderflowError: return std::make_exception_ptr(std::underflow_error(e.what));
    case kBadAlloc: return std::make_exception_ptr(std::bad_alloc());
    case kProcessError: return std::make_exception_ptr(mp::ProcessError(e.what));
    case kTimeoutError: return std::make_exception_ptr(mp::TimeoutError(e.what));
    case kWorkerLostError: return std::make_exception_ptr(mp::WorkerLostError(e.what));
    case kEOFError: return std::make_exception_ptr(mp::EOFError(e.what));
    case kStopIteration: return std::make_exception_ptr(mp::StopIteration(e.what));
    case kTaskTimeLimit: return std::make_exception_ptr(mp::TaskTimeLimitExceeded(e.what));
    case kSoftTimeLimit: return std::make_exception_ptr(mp::SoftTimeLimitExceeded(e.what));
    default: return std::make_exception_ptr(RemoteError(e.type_name, e.what, e.traceback));
  }
}

void log_pool_callback_error() noexcept {
  try {
    std::string what = "unknown exception";
    try {
      throw;
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    get_logger().error("pool callback raised: " + what);
  } catch (...) {
  }
}


// ---- shared with the worker through its slot ----

namespace {
WorkerSlot* g_slot = nullptr;  // in a worker: its slot
int g_worker_id = -1;
const Bytes* g_state = nullptr;  // in a worker of a pool with a worker state
bool g_timed = false;  // the running message's tasks have time limits: record when each starts

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
std::int64_t load(std::int64_t& word) { return std::atomic_ref(word).load(std::memory_order_acquire); }
void store(std::int64_t& word, std::int64_t v) { std::atomic_ref(word).store(v, std::memory_order_release); }
// A message count of the slot: one more, after the message was written (two threads of the pool
// may write to a worker, so the increment is atomic).
void announce(std::int64_t& word) { std::atomic_ref(word).fetch_add(1, std::memory_order_release); }

// Waits up to spin_ns for ready() (true), spinning when the score allows it (src/spin_score.hpp).
template <class Ready>
bool spin_until(Ready ready, std::int64_t spin_ns, SpinScore& s) {
  if (ready()) return true;
  if (!s.should_spin()) return false;
  const std::int64_t start = now_ns();
  for (;;) {
    for (int i = 0; i < 8; ++i) posix::spin_pause();
    if (ready()) {
      s.caught();
      return true;
    }
    if (now_ns() - start >= spin_ns) break;
  }
  s.missed();
  return false;
}
}  // namespace

PoolStateCache& pool_worker_state_cache() noexcept {
  static PoolStateCache cache;
  return cache;
}
Bytes pool_state_encode(const std::type_info& type, const Bytes& value) {
  std::string name = type.name();
  Bytes out;
  out.reserve(4 + name.size() + value.size());
  auto n = static_cast<std::uint32_t>(name.size());
  const auto* p = reinterpret_cast<const std::byte*>(&n);
  out.insert(out.end(), p, p + 4);
  const auto* q = reinterpret_cast<const std::byte*>(name.data());
  out.insert(out.end(), q, q + name.size());
  out.insert(out.end(), value.begin(), value.end());
  return out;
}

std::span<const std::byte> pool_state_value(const std::type_info& type) {
  if (!g_state) throw std::logic_error("mp: pool::worker_state(): no worker state here (outside a pool worker, or none set)");
  std::span<const std::byte> rest(*g_state);
  std::uint32_t n = 0;
  if (rest.size() < 4) throw std::invalid_argument("mp: pool::worker_state(): malformed state");
  std::memcpy(&n, rest.data(), 4);
  rest = rest.subspan(4);
  if (rest.size() < n) throw std::invalid_argument("mp: pool::worker_state(): malformed state");
  std::string name(reinterpret_cast<const char*>(rest.data()), n);
  if (name != type.name()) {
    int status = 0;
    char* demangled = abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status);
    std::string set = status == 0 && demangled ? demangled : name;
    std::free(demangled);
    throw std::invalid_argument("mp: pool::worker_state<" + type_name(type) + ">(): the state set is a " + set);
  }
  return rest.subspan(n);
}

void pool_task_started() noexcept {
  if (!g_slot || !g_timed) return;
  store(g_slot->task_started_ns, now_ns());
  store(g_slot->tasks_started, load(g_slot->tasks_started) + 1);
}

// Serialization time for the insights costs two clock reads per phase, as much as a tiny task
// itself: so it is measured on every chunk after one that ran for kLongChunkNs or more, and on
// one in kSerializeSample shorter chunks, which then counts that many times (an estimate).
namespace {
constexpr std::int64_t kLongChunkNs = 20'000;
constexpr std::int64_t kSerializeSample = 16;
std::int64_t g_serialize_weight = 0;  // how many chunks the running chunk's measure stands for
}  // namespace

std::int64_t pool_serialize_begin() noexcept { return g_serialize_weight > 0 ? now_ns() : 0; }

void pool_serialize_end(std::int64_t begin) noexcept {
  if (begin == 0 || !g_slot) return;
  store(g_slot->serializing_ns, load(g_slot->serializing_ns) + (now_ns() - begin) * g_serialize_weight);
}

namespace {

// ---- the worker ----

template <class T>
T read_raw(std::span<const std::byte>& rest) {
  T v{};
  if (rest.size() < sizeof v) throw std::invalid_argument("mp: malformed pool message");
  std::memcpy(&v, rest.data(), sizeof v);
  rest = rest.subspan(sizeof v);
  return v;
}
template <class T>
void write_raw(Bytes& out, T v) {
  const auto* p = reinterpret_cast<const std::byte*>(&v);
  out.insert(out.end(), p, p + sizeof v);
}
template <class T>
void patch_raw(Bytes& out, std::size_t at, T v) {
  std::memcpy(out.data() + at, &v, sizeof v);
}

// Gathers a worker's results until they are sent as one 'R' message.
struct ResultBatch {
  Bytes out{std::byte{'R'}, std::byte{0}, std::byte{0}, std::byte{0}, std::byte{0}};
  std::uint32_t count = 0;
  std::int64_t first_ns = 0;

  std::size_t begin_record() {
    std::size_t at = out.size();
    out.resize(at + 17);
    if (count == 0) first_ns = now_ns();
    return at;
  }
  void end_record(std::size_t at, char tag, std::int64_t run_ns) {
    out[at] = static_cast<std::byte>(tag);
    patch_raw(out, at + 1, static_cast<std::uint64_t>(run_ns));
    patch_raw(out, at + 9, static_cast<std::uint64_t>(out.size() - at - 17));
    ++count;
  }
  void flush(Connection& conn, WorkerSlot& slot) {
    if (count == 0) return;
    patch_raw(out, 1, count);
    conn.send_bytes(out);
    announce(slot.results_sent);
    out.resize(5);
    count = 0;
  }
};

// A thread waiting for its own result watches its worker's count of messages sent for
// kSpinBudget before it sleeps (a quick task's result then costs it no wake-up); a worker whose
// results went out watches the pool's count for its next message as long (see SpinScore). A
// sleeping reader is woken by an inter-CPU interrupt, which costs tens of microseconds on a VM,
// on both sides: with both spinning, an apply() round trip is two writes and two reads. An
// earlier worker spin that always polled its pipe made round trips on a loaded 2-CPU VM 2-10x
// slower (it took the CPU its caller needed): SpinScore stops the spin where it does not pay off.
// Results wait at most this long for the rest of their batch.
constexpr std::int64_t kFlushAfterNs = 200'000;

// pool_end is the pool's end of conn: under fork the worker inherits it, and must close it to see
// EOF when the pool's process dies. pool_pid is that process: its pidfd is watched too, since
// workers forked later also inherit the pool's ends of their siblings' pipes.
void pool_worker_main(Connection conn, Connection pool_end, std::int64_t pool_pid, posix::CodeRef initializer,
                      bool has_initializer, std::int64_t maxtasks, RawValue<WorkerSlot> slot, int worker_id,
                      bool has_state, Bytes state, bool has_exit, posix::CodeRef exit_hook) {
  pool_end.close();
  posix::ignore_sigint();  // a terminal's Ctrl-C is the parent's to handle
  posix::UniqueFd pool_process;
  try {
    pool_process = posix::open_pidfd(static_cast<int>(pool_pid));
  } catch (const std::exception&) {
    return;  // the pool's process is gone already
  }
  g_slot = &slot.get_obj();
  g_worker_id = worker_id;
  if (has_state) g_state = &state;
  auto& log = get_logger();
  if (log.is_enabled_for(levels::debug)) log.debug("pool worker started");
  if (has_initializer) {
    auto init = reinterpret_cast<void (*)()>(posix::resolve_code_ref(initializer));
    init();
  }
  conn.send_bytes(std::string_view("k"));
  announce(slot.get_obj().results_sent);
  const int parent_sentinel = pool_process.get();

  TaskHeaderCache task;
  ResultBatch results;
  std::int64_t done = 0;
  std::int64_t last_run_ns = 0, tiny_chunks = 0;  // which chunks' serialization is measured
  bool stop = false;
  std::int64_t received = 0;  // messages read: the pool announces in the slot how many it wrote
  SpinScore spin;
  auto& my_slot = slot.get_obj();
  while (!stop) {
    // received can pass the count for a moment: a message read (after poll) before its announce.
    if (load(my_slot.messages_sent) <= received) {
      results.flush(conn, my_slot);
      auto news = [&] { return load(my_slot.messages_sent) > received; };
      if (!spin_until(news, std::chrono::nanoseconds(kSpinBudget).count(), spin)) {
        auto ready = connection::wait({connection::Waitable(conn), connection::Waitable(parent_sentinel)});
        bool conn_ready = false;
        for (auto& w : ready) conn_ready = conn_ready || w.fileno() == conn.fileno();
        if (!conn_ready) {
          if (log.is_enabled_for(levels::debug)) log.debug("pool worker exiting: the pool's process is gone");
          return;
        }
      }
    }
    Bytes msg;
    try {
      msg = conn.recv_bytes();
    } catch (const mp::EOFError&) {
      return;  // the pool's end closed: it is gone
    } catch (const std::system_error&) {
      return;  // ECONNRESET: the pool's process died with our results unread
    }
    ++received;
    if (msg.empty()) continue;
    if (msg[0] == std::byte{'s'}) break;
    std::span<const std::byte> rest(msg);
    std::uint32_t count = 1;
    try {
      if (msg[0] != std::byte{'t'}) throw std::invalid_argument("mp: malformed pool task message");
      rest = rest.subspan(1);
      auto header_size = read_raw<std::uint64_t>(rest);
      if (header_size > rest.size()) throw std::invalid_argument("mp: malformed pool task message (header size)");
      auto header = rest.first(static_cast<std::size_t>(header_size));
      rest = rest.subspan(static_cast<std::size_t>(header_size));
      count = read_raw<std::uint32_t>(rest);
      g_timed = read_raw<std::uint8_t>(rest) != 0;
      task.resolve(header);
    } catch (...) {
      // The whole message is unusable: every chunk in it fails with the same error.
      auto error = describe_current_exception(typeid(PoolRunner));
      for (std::uint32_t i = 0; i < count; ++i) {
        store(slot.get_obj().chunks_started, load(slot.get_obj().chunks_started) + 1);
        auto at = results.begin_record();
        pool_append(results.out, error);
        results.end_record(at, 'e', 0);
      }
      results.flush(conn, my_slot);
      done += count;
      if (maxtasks > 0 && done >= maxtasks) break;
      continue;
    }
    for (std::uint32_t i = 0; i < count; ++i) {
      auto t0 = now_ns();
      // The start time first: a parent that sees the chunk started must not measure a time limit
      // from the previous task's start (or from 0, in a new worker).
      if (g_timed) store(slot.get_obj().task_started_ns, t0);
      store(slot.get_obj().chunks_started, load(slot.get_obj().chunks_started) + 1);
      auto at = results.begin_record();
      try {
        auto size = read_raw<std::uint64_t>(rest);
        if (size > rest.size()) throw std::invalid_argument("mp: malformed pool task message (chunk size)");
        auto items = rest.first(static_cast<std::size_t>(size));
        rest = rest.subspan(static_cast<std::size_t>(size));
        g_serialize_weight = last_run_ns >= kLongChunkNs             ? 1
                             : ++tiny_chunks % kSerializeSample == 0 ? kSerializeSample
                                                                     : 0;
        task.runner()(task.fn(), items, results.out);
        last_run_ns = now_ns() - t0;
        results.end_record(at, 'r', last_run_ns);
      } catch (...) {
        results.out.resize(at + 17);
        pool_append(results.out, describe_current_exception(typeid(PoolRunner)));
        results.end_record(at, 'e', now_ns() - t0);
      }
      if (maxtasks > 0 && ++done >= maxtasks) {
        stop = true;
        break;
      }
      if (now_ns() - results.first_ns > kFlushAfterNs) results.flush(conn, my_slot);
    }
  }
  results.flush(conn, my_slot);
  if (has_exit) {
    // Its result goes to the pool ('x'), which keeps it for Pool::exit_results().
    try {
      auto hook = reinterpret_cast<Bytes (*)()>(posix::resolve_code_ref(exit_hook));
      Bytes out{std::byte{'x'}};
      Bytes r = hook();
      out.insert(out.end(), r.begin(), r.end());
      conn.send_bytes(out);
      announce(my_slot.results_sent);
    } catch (const std::exception& e) {
      log.error(std::string("pool worker exit hook failed: ") + e.what());
    }
  }
  if (log.is_enabled_for(levels::debug)) log.debug("pool worker exiting after " + std::to_string(done) + " tasks");
}

std::string signal_name(int sig) {
  switch (sig) {
    case 1: return "SIGHUP";
    case 2: return "SIGINT";
    case 3: return "SIGQUIT";
    case 4: return "SIGILL";
    case 6: return "SIGABRT";
    case 7: return "SIGBUS";
    case 8: return "SIGFPE";
    case 9: return "SIGKILL";
    case 11: return "SIGSEGV";
    case 13: return "SIGPIPE";
    case 15: return "SIGTERM";
    default: return "signal " + std::to_string(sig);
  }
}

std::string describe_exit(std::optional<int> code) {
  if (!code) return "ended";
  if (*code < 0) return "was killed by " + signal_name(-*code) + " (exit code " + std::to_string(*code) + ")";
  return "exited with code " + std::to_string(*code);
}

// The prefetch rule: a worker holding a message gets more (up to kMaxMessages) only while all
// its chunks sent and unanswered fit in half its pipe's send buffer (at least kMaxMessages x
// kPrefetchLimit), so a send never blocks on a busy worker; the prefetch keeps a worker busy
// while the dispatcher is waking up to hand it more (large chunks too: map() of a million ints
// cuts 500 kB chunks, and a worker waiting for its next one idled ~15% of the time).
constexpr std::size_t kPrefetchLimit = 16 * 1024;
constexpr int kMaxMessages = 4;
// A batch of tiny chunks grows up to this many chunks (doubling while they run under
// kTinyChunkNs each) and falls back to one chunk when they do not.
constexpr std::size_t kMaxBatch = 64;
constexpr std::int64_t kTinyChunkNs = 20'000;
// A thread reading its own result polls its worker's pipe in slices this long (the dispatcher
// may have taken the message first), and the dispatcher polls the pipes it left to such a thread
// again after this long.
constexpr auto kHelpSlice = std::chrono::milliseconds(2);
// A waiting thread reads its worker's pipe for at most this long, then leaves a long task's
// result to the dispatcher (no pointless wake-ups every slice on either thread).
constexpr auto kHelpLimit = std::chrono::milliseconds(20);
// How soon the dispatcher looks again at a worker whose next chunk has a time limit but has not
// started (the worker's start of a task wakes nobody).
constexpr auto kLimitRecheck = std::chrono::milliseconds(2);
// How often the progress display is rewritten.
constexpr auto kProgressEvery = std::chrono::milliseconds(100);

}  // namespace
}  // namespace mp::detail

namespace mp {

struct Pool::Impl final : detail::PoolWaiter {
  struct Chunk {
    std::shared_ptr<detail::PoolJob> job;
    std::shared_ptr<const Bytes> header;
    detail::PoolChunk chunk;
    std::int64_t seq = 0;       // its position among the chunks sent to its worker
    bool last = false;          // the last chunk of its message
  };
  struct Worker {
    int number = 0;
    int id = 0;  // 0..processes-1, stable: a replacement takes the id of the worker it replaces
    Process process;
    Connection conn;
    RawValue<detail::WorkerSlot> slot;
    std::deque<Chunk> in_flight;
    std::int64_t sent = 0;      // chunks sent
    std::int64_t answered = 0;  // chunks whose results arrived
    int messages = 0;           // messages whose last chunk is unanswered
    std::size_t prefetch_bytes = 0;  // the prefetch rule's limit (see kPrefetchLimit)
    std::atomic<bool> ready{false};  // its initializer ran ('k' arrived)
    std::atomic<bool> eof{false};    // its pipe closed or failed: nothing more is sent or read
    bool dead = false;               // its sentinel fired: nothing more is sent (under mutex)
    std::mutex read_mutex;           // one reader of its pipe at a time
    std::atomic<std::int64_t> results_read{0};  // messages read from its pipe (written under read_mutex)
    detail::SpinScore spin;  // whether a thread waiting for its results spins first
    std::atomic<bool> direct{false}; // a thread waiting for its result reads its pipe
    std::int64_t soft_signalled = -1;  // the task whose soft limit was signalled (dispatcher)
    std::optional<std::int64_t> timed_out;  // the chunk it was killed for (hard limit)
    std::chrono::steady_clock::time_point started_at, ready_at;  // under mutex
  };
  enum class State { running, closed, terminated };

  Context context;
  int processes = 1;
  void (*initializer)() = nullptr;
  std::int64_t maxtasks = 0;
  std::optional<Duration> soft_time_limit, time_limit;
  std::shared_ptr<const Bytes> worker_state;
  Bytes (*worker_exit)() = nullptr;
  int sigint_fd = -1;          // interrupt_on_sigint: readable when SIGINT arrived
  bool interrupted = false;    // under mutex
  std::vector<WorkerInsights> stats;  // by worker id, under mutex
  std::vector<Duration> stats_alive;  // per id: time alive after ready, of processes gone
  std::vector<Bytes> exit_results;    // under mutex
  // The progress display (progress_fd >= 0), under mutex: chunks submitted and completed since the
  // pool was last idle, when that run started, and when the line was last written.
  int progress_fd = -1;
  bool progress_insights = false;  // the line also shows PoolInsights::shares()
  std::int64_t progress_submitted = 0, progress_done = 0;
  bool progress_shown_done = true;
  std::chrono::steady_clock::time_point progress_start, progress_last;

  // Shared with the callers' threads, under mutex.
  mutable std::mutex mutex;
  State state = State::running;
  std::deque<Chunk> queue;
  std::map<std::uintptr_t, std::shared_ptr<const Bytes>> headers;  // code refs by runner ^ fn
  bool joining = false;  // join() was called: imap input is no longer read
  std::vector<std::weak_ptr<detail::PoolJob>> lazy_jobs;  // imap jobs whose input may go on

  // Changed by the dispatcher only, under mutex; a worker's in_flight and sent too, and sends to
  // a worker happen under mutex (they never block: see can_take), from the dispatcher or from a
  // thread that submits or waits and finds a worker idle (one thread hop less per task).
  std::vector<std::shared_ptr<Worker>> workers;
  int next_number = 1;
  Connection wake_read, wake_write;
  std::atomic<bool> wake_pending{false};
  // The dispatcher and its wake pipe start with the first submit (or at once for
  // interrupt_on_sigint): a pool that is only started and joined (or that waits long before its
  // first task) costs no thread, and its workers get 's' straight from close(). Set under mutex,
  // after wake_read and wake_write.
  std::atomic<bool> dispatcher_started{false};
  std::thread dispatcher;
  std::mutex join_mutex;
  bool stopped_inline = false;  // under join_mutex: shut_down() ran on a caller's thread (no dispatcher)
  bool stop_sent = false;       // under mutex: close() sent 's' to every worker (no dispatcher)
  int owner_pid = 0;            // the process that made the pool: the only one that may stop its workers
  // The "mpi" context: the tasks run on MPI ranks (src/mpi/); no local workers, no dispatcher.
  std::shared_ptr<detail::mpi::PoolBackend> mpi;

  explicit Impl(PoolOptions options) : context(options.context.value_or(get_context())) {
    if (context.start_method() == "mpi") {
      if (options.soft_time_limit || options.time_limit || options.worker_state || options.worker_exit ||
          options.interrupt_on_sigint)
        throw std::invalid_argument("mp: Pool: time limits, worker_state, worker_exit and interrupt_on_sigint are not "
                                    "supported with the mpi start method");
      mpi = detail::mpi::make_pool_backend(options.processes, options.initializer, options.maxtasksperchild);
      processes = mpi->processes();
      return;
    }
    processes = options.processes ? *options.processes : cpu_count();  // cpu_count() reads /proc and /sys
    if (processes < 1) throw std::invalid_argument("mp: Pool: the number of processes must be at least 1");
    if (options.maxtasksperchild) {
      if (*options.maxtasksperchild < 1) throw std::invalid_argument("mp: Pool: maxtasksperchild must be at least 1");
      maxtasks = *options.maxtasksperchild;
    }
    initializer = options.initializer;
    soft_time_limit = options.soft_time_limit;
    time_limit = options.time_limit;
    worker_state = options.worker_state;
    worker_exit = options.worker_exit;
    progress_fd = options.progress_fd;
    progress_insights = options.progress_insights;
    stats.resize(static_cast<std::size_t>(processes));
    stats_alive.resize(static_cast<std::size_t>(processes), Duration(0));
    for (int i = 0; i < processes; ++i) stats[static_cast<std::size_t>(i)].worker_id = i;
    if (options.interrupt_on_sigint) {
      sigint_fd = detail::posix::sigint_watch_fd();
      (void)detail::posix::take_sigint();
      ++sigint_users();
    }
    owner_pid = detail::posix::current_pid();
    for (int i = 0; i < processes; ++i) start_worker(i);
    if (sigint_fd >= 0) {
      std::lock_guard lock(mutex);
      start_dispatcher_locked();
    }
  }

  // Under mutex.
  void start_dispatcher_locked() {
    if (dispatcher_started.load(std::memory_order_relaxed)) return;
    auto [r, w] = Pipe(false);
    wake_read = std::move(r);
    wake_write = std::move(w);
    // Wait until the thread is registered fork-safe: a fork start right after this call must not
    // count it as a foreign thread and warn.
    std::latch registered(1);
    dispatcher = std::thread([this, &registered] { run(registered); });
    registered.wait();
    dispatcher_started.store(true, std::memory_order_release);
  }

  ~Impl() override {
    try {
      terminate();
    } catch (...) {
    }
    if (sigint_fd >= 0 && --sigint_users() == 0) detail::posix::restore_sigint();
  }

  static std::atomic<int>& sigint_users() {
    static std::atomic<int> users{0};  // pools made with interrupt_on_sigint (constructed and destroyed on any thread)
    return users;
  }

  int free_id() const {
    std::vector<bool> used(static_cast<std::size_t>(processes), false);
    for (auto& w : workers) {
      if (w->id >= 0 && w->id < processes) used[static_cast<std::size_t>(w->id)] = true;
    }
    for (int i = 0; i < processes; ++i) {
      if (!used[static_cast<std::size_t>(i)]) return i;
    }
    return processes;
  }

  void start_worker(int id) {
    auto w = std::make_shared<Worker>();
    w->number = next_number++;
    w->id = id;
    auto [parent_end, child_end] = Pipe(true);
    detail::posix::CodeRef init_ref;
    bool has_init = initializer != nullptr;
    if (has_init) init_ref = detail::posix::code_ref_of(reinterpret_cast<std::uintptr_t>(initializer));
    detail::posix::CodeRef exit_ref;
    if (worker_exit) exit_ref = detail::posix::code_ref_of(reinterpret_cast<std::uintptr_t>(worker_exit));
    w->process = Process(context, &detail::pool_worker_main, child_end, parent_end,
                         static_cast<std::int64_t>(detail::posix::current_pid()), init_ref, has_init, maxtasks,
                         w->slot, id, worker_state != nullptr, worker_state ? *worker_state : Bytes{},
                         worker_exit != nullptr, exit_ref);
    w->started_at = std::chrono::steady_clock::now();
    w->process.set_name("PoolWorker-" + std::to_string(w->number));
    w->process.set_daemon(true);
    w->process.start();
    child_end.close();
    w->conn = std::move(parent_end);
    try {
      w->prefetch_bytes = static_cast<std::size_t>(detail::posix::send_buffer_size(w->conn.fileno())) / 2;
    } catch (const std::exception&) {
    }
    // At most 1 MiB: with Connection's records of at most 512 kB, a few records in all, below the
    // receive queue's limit on messages (net.unix.max_dgram_qlen, 10 by default).
    w->prefetch_bytes = std::clamp(w->prefetch_bytes, detail::kPrefetchLimit * detail::kMaxMessages, std::size_t{1} << 20);
    auto& log = get_logger();
    if (log.is_enabled_for(levels::debug)) {
      const bool replacement = w->number > processes;
      log.debug(std::string(replacement ? "pool replaced a worker: started " : "pool started worker ") +
                w->process.name() + " (pid " + std::to_string(*w->process.pid()) + ")");
    }
    std::lock_guard lock(mutex);
    if (static_cast<std::size_t>(id) < stats.size()) {
      auto& st = stats[static_cast<std::size_t>(id)];
      st.pid = w->process.pid().value_or(0);
      ++st.starts;
    }
    workers.push_back(std::move(w));
  }

  // What a worker's process reported in its slot: it stops counting when it dies.
  static Duration serializing(Worker& w) {
    return std::chrono::nanoseconds(detail::load(w.slot.get_obj().serializing_ns));
  }

  // Under mutex: a worker's time alive after it became ready ends (it died or the pool stopped).
  void retire_locked(Worker& w) {
    if (!w.ready || static_cast<std::size_t>(w.id) >= stats.size()) return;
    stats_alive[static_cast<std::size_t>(w.id)] +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - w.ready_at);
    stats[static_cast<std::size_t>(w.id)].serializing += serializing(w);
    w.ready = false;
  }

  PoolInsights insights() const {
    std::lock_guard lock(mutex);
    return insights_locked();
  }
  PoolInsights insights_locked() const {
    PoolInsights out;
    out.workers = stats;
    auto now = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < stats.size(); ++i) {
      Duration alive = stats_alive[i];
      for (auto& w : workers) {
        if (static_cast<std::size_t>(w->id) != i || !w->ready) continue;
        alive += std::chrono::duration<double>(now - w->ready_at);
        out.workers[i].serializing += serializing(*w);
      }
      out.workers[i].waiting = std::max(Duration(0), alive - out.workers[i].working);
    }
    return out;
  }

  void wake() {
    if (!dispatcher_started.load(std::memory_order_acquire)) return;  // nobody to wake
    if (!wake_pending.exchange(true)) {
      try {
        wake_write.send_bytes(std::string_view("w"));
      } catch (...) {
      }
    }
  }

  std::shared_ptr<const Bytes> header_for(const detail::PoolJob& job) {
    auto key = reinterpret_cast<std::uintptr_t>(job.runner) * 31 ^ reinterpret_cast<std::uintptr_t>(job.fn);
    {
      std::lock_guard lock(mutex);
      auto it = headers.find(key);
      if (it != headers.end()) return it->second;
    }
    auto bytes = std::make_shared<const Bytes>(detail::encode_task_header(job.runner, job.fn));
    std::lock_guard lock(mutex);
    return headers.emplace(key, std::move(bytes)).first->second;
  }

  void submit(std::shared_ptr<detail::PoolJob> job, std::vector<detail::PoolChunk> chunks) {
    if (mpi) {
      if (job->soft_time_limit || job->time_limit)
        throw std::invalid_argument("mp: Pool: per-task time limits are not supported with the mpi start method");
      bool after_close = false;
      {
        std::lock_guard lock(mutex);
        if (state != State::running && (state == State::terminated || joining || !job->lazy_input))
          throw std::logic_error("mp: Pool not running (it was closed or terminated)");
        after_close = state != State::running;
      }
      return mpi->submit(std::move(job), std::move(chunks), after_close);
    }
    auto header = header_for(*job);
    if (!dispatcher_started.load(std::memory_order_acquire)) read_ready_messages();
    bool queued = false;
    bool wake_for_limits = false;  // the dispatcher watches the clock of tasks with limits
    {
      std::lock_guard lock(mutex);
      if (state != State::running) {
        if (state == State::terminated || joining || !job->lazy_input)
          throw std::logic_error("mp: Pool not running (it was closed or terminated)");
      }
      start_dispatcher_locked();  // first: a thread that cannot start leaves nothing queued
      if (job->soft_time_limit || job->time_limit || soft_time_limit || time_limit) wake_for_limits = true;
      if (job->lazy_input) {
        std::erase_if(lazy_jobs, [](const std::weak_ptr<detail::PoolJob>& j) { return j.expired(); });
        if (std::none_of(lazy_jobs.begin(), lazy_jobs.end(), [&](auto& j) { return j.lock() == job; }))
          lazy_jobs.push_back(job);
      }
      if (progress_fd >= 0) {
        // A new run starts once the last one's "done" line is out; until then the line goes on.
        if (progress_done == progress_submitted && progress_shown_done) {
          progress_submitted = progress_done = 0;
          progress_start = std::chrono::steady_clock::now();
        }
        progress_submitted += static_cast<std::int64_t>(chunks.size());
        progress_shown_done = false;
      }
      bool was_empty = queue.empty();
      for (auto& c : chunks) queue.push_back(Chunk{job, header, std::move(c)});
      // Idle workers take the first chunks now, from this thread; the dispatcher sees their
      // results on the pipes it polls anyway.
      if (was_empty) assign_locked(true);
      queued = !queue.empty();
    }
    if (queued || wake_for_limits) wake();
  }

  // Before the dispatcher runs, the first submit reads the workers' ready messages ('k') that
  // have arrived, so that it hands those workers their first chunks itself (the dispatcher,
  // started by this submit, would take a thread start and two turns to do it).
  void read_ready_messages() {
    std::vector<std::shared_ptr<Worker>> ws;
    {
      std::lock_guard lock(mutex);
      ws = workers;
    }
    for (auto& w : ws) {
      if (announced(*w) <= w->results_read.load(std::memory_order_relaxed)) continue;
      Completions done;
      {
        std::lock_guard read_lock(w->read_mutex);
        read_locked(*w, false, done, true);
      }
      deliver(done);
    }
  }

  bool is_dispatcher_thread() const {
    return dispatcher_started.load(std::memory_order_acquire) && std::this_thread::get_id() == dispatcher.get_id();
  }

  void close() {
    get_logger().debug("closing pool");
    {
      std::lock_guard lock(mutex);
      if (state == State::running) state = State::closed;
      // Never given a task: nothing can come any more (a submit after close() needs an imap
      // started before), so the workers may leave now, while the caller goes on to join().
      if (!mpi && state == State::closed && !dispatcher_started.load(std::memory_order_relaxed) && !stop_sent &&
          owner_pid == detail::posix::current_pid()) {
        stop_sent = true;
        for (auto& w : workers) send_stop(*w);
      }
    }
    if (mpi) return mpi->close();
    wake();
  }

  void send_stop(Worker& w) {
    if (w.eof) return;
    try {
      w.conn.send_bytes(std::string_view("s"));
      detail::announce(w.slot.get_obj().messages_sent);
    } catch (...) {
    }
  }

  // How many messages w announced: those beyond results_read are in its pipe.
  static std::int64_t announced(Worker& w) { return detail::load(w.slot.get_obj().results_sent); }

  void terminate() {
    get_logger().debug("terminating pool");
    {
      std::lock_guard lock(mutex);
      state = State::terminated;
    }
    if (mpi) return mpi->terminate();
    wake();
    if (is_dispatcher_thread()) return;  // from a callback: the dispatcher stops after it
    join_dispatcher();
  }

  void join() {
    {
      std::lock_guard lock(mutex);
      if (state == State::running) throw std::logic_error("mp: Pool::join() before close() or terminate()");
      joining = true;
    }
    get_logger().debug("joining pool workers");
    if (mpi) return mpi->join();
    wake();
    if (is_dispatcher_thread()) throw std::logic_error("mp: Pool::join() from a callback of the same pool");
    join_dispatcher();
  }

  void join_dispatcher() {
    std::lock_guard lock(join_mutex);
    if (dispatcher_started.load(std::memory_order_acquire)) {
      if (dispatcher.joinable()) dispatcher.join();
      return;
    }
    // No dispatcher was started (no task was ever submitted; none can be now, the state is not
    // running): this thread stops the workers, once, and only in the pool's own process.
    if (stopped_inline || owner_pid != detail::posix::current_pid()) return;
    stopped_inline = true;
    shut_down();
  }

  // ---- sending ----

  bool can_take(const Worker& w, std::size_t size) const {
    if (!w.ready || w.eof || w.dead) return false;
    if (maxtasks > 0 && w.sent >= maxtasks) return false;
    if (w.in_flight.empty()) return true;
    if (w.messages >= detail::kMaxMessages) return false;
    std::size_t pending = size;
    for (auto& c : w.in_flight) pending += c.chunk.items.size();
    return pending <= w.prefetch_bytes;
  }

  // Sends the first chunk of the queue to w, with the next ones of the same job when they are
  // tiny (its batch). Under mutex.
  void send_batch(Worker& w) {
    auto job = queue.front().job;
    std::size_t limit = std::max<std::size_t>(1, job->batch);
    if (maxtasks > 0) limit = std::min(limit, static_cast<std::size_t>(maxtasks - w.sent));
    std::size_t n = 1, bytes = queue.front().chunk.items.size();
    while (n < limit && n < queue.size() && queue[n].job == job &&
           bytes + queue[n].chunk.items.size() <= detail::kPrefetchLimit) {
      bytes += queue[n].chunk.items.size();
      ++n;
    }
    const Bytes& header = *queue.front().header;
    Bytes msg;
    msg.reserve(1 + 8 + header.size() + 4 + 1 + 8 * n + bytes);
    msg.push_back(std::byte{'t'});
    detail::write_raw(msg, static_cast<std::uint64_t>(header.size()));
    msg.insert(msg.end(), header.begin(), header.end());
    detail::write_raw(msg, static_cast<std::uint32_t>(n));
    bool timed = job->soft_time_limit || job->time_limit || soft_time_limit || time_limit;
    detail::write_raw(msg, static_cast<std::uint8_t>(timed ? 1 : 0));
    for (std::size_t i = 0; i < n; ++i) {
      const Bytes& items = queue[i].chunk.items;
      detail::write_raw(msg, static_cast<std::uint64_t>(items.size()));
      msg.insert(msg.end(), items.begin(), items.end());
    }
    try {
      w.conn.send_bytes(msg);
      detail::announce(w.slot.get_obj().messages_sent);
    } catch (const std::exception&) {
      // The worker is gone: the chunks never reached it and stay queued. Its pipe is still read
      // to the end (results it sent before dying are there), so this is not eof.
      w.dead = true;
      return;
    }
    for (std::size_t i = 0; i < n; ++i) {
      Chunk c = std::move(queue.front());
      queue.pop_front();
      c.seq = w.sent++;
      c.last = i + 1 == n;
      w.in_flight.push_back(std::move(c));
    }
    ++w.messages;
  }

  // Two passes so that every idle worker gets a message before any worker gets a second (the
  // second pass only when prefetch is allowed). Under mutex.
  void assign_locked(bool idle_only) {
    for (int pass = 0; pass < (idle_only ? 1 : 2); ++pass) {
      for (auto& w : workers) {
        while (!queue.empty()) {
          if (pass == 0 && !w->in_flight.empty()) break;
          if (!can_take(*w, queue.front().chunk.items.size())) break;
          std::int64_t before = w->sent;
          send_batch(*w);
          if (w->sent == before || pass == 0) break;
        }
        if (queue.empty()) return;
      }
    }
  }

  void assign() {
    std::lock_guard lock(mutex);
    assign_locked(false);
  }

  // ---- receiving ----

  // A chunk's outcome, read from a worker's pipe, to be delivered to its job once the pipe's
  // read lock is released (a callback may call terminate(), which needs that lock).
  struct Record {
    Chunk chunk;
    char tag;
    std::span<const std::byte> body;  // in message
  };
  struct Completions {
    std::deque<Bytes> messages;  // stable addresses for the bodies
    std::vector<Record> records;
    void deliver() {
      for (auto& r : records) {
        if (r.tag == 'r') {
          r.chunk.job->chunk_done(r.chunk.chunk.index, r.body);
        } else {
          std::exception_ptr error;
          try {
            error = detail::make_task_exception(mp::loads<detail::TaskError>(r.body));
          } catch (...) {
            error = std::current_exception();
          }
          r.chunk.job->chunk_failed(r.chunk.chunk.index, error);
        }
      }
      records.clear();
      messages.clear();
    }
  };

  // Takes one message of w (under w's read_mutex): pops the chunks it answers, in order, and
  // leaves their delivery to done.
  void handle(Worker& w, Bytes message, Completions& done) {
    const Bytes& msg = done.messages.emplace_back(std::move(message));
    if (msg.empty()) return;
    char tag = static_cast<char>(msg[0]);
    if (tag == 'k') {
      std::lock_guard lock(mutex);
      w.ready_at = std::chrono::steady_clock::now();
      if (static_cast<std::size_t>(w.id) < stats.size())
        stats[static_cast<std::size_t>(w.id)].start_up += std::chrono::duration<double>(w.ready_at - w.started_at);
      w.ready = true;
      return;
    }
    if (tag == 'x') {
      std::lock_guard lock(mutex);
      exit_results.emplace_back(msg.begin() + 1, msg.end());
      return;
    }
    auto& records = done.records;
    try {
      if (tag != 'R') throw std::invalid_argument("unexpected message");
      std::span<const std::byte> rest(msg);
      rest = rest.subspan(1);
      auto count = detail::read_raw<std::uint32_t>(rest);
      std::lock_guard lock(mutex);
      records.reserve(records.size() + std::min<std::size_t>(count, w.in_flight.size()));
      for (std::uint32_t i = 0; i < count; ++i) {
        char t = static_cast<char>(detail::read_raw<std::uint8_t>(rest));
        auto run_ns = static_cast<std::int64_t>(detail::read_raw<std::uint64_t>(rest));
        auto size = detail::read_raw<std::uint64_t>(rest);
        if (size > rest.size() || (t != 'r' && t != 'e') || w.in_flight.empty())
          throw std::invalid_argument("malformed results");
        Chunk c = std::move(w.in_flight.front());
        w.in_flight.pop_front();
        ++w.answered;
        ++progress_done;
        if (c.last) --w.messages;
        auto& batch = c.job->batch;
        batch = run_ns < detail::kTinyChunkNs ? std::min(batch * 2, detail::kMaxBatch) : 1;
        if (static_cast<std::size_t>(w.id) < stats.size()) {
          auto& st = stats[static_cast<std::size_t>(w.id)];
          ++st.chunks;
          st.working += std::chrono::duration<double>(std::chrono::nanoseconds(run_ns));
        }
        records.push_back(Record{std::move(c), t, rest.first(static_cast<std::size_t>(size))});
        rest = rest.subspan(static_cast<std::size_t>(size));
      }
    } catch (const std::exception& e) {
      get_logger().warning("pool: unexpected message from worker " + std::to_string(w.number) + ": " + e.what());
    }
  }

  // Reads what a worker sent (everything up to EOF when drain).
  void read_from(Worker& w, bool drain) {
    Completions done;
    {
      std::lock_guard read_lock(w.read_mutex);
      read_locked(w, drain, done);
    }
    deliver(done);
  }
  // Completes the chunks read; the progress line's "done" goes out before the caller wakes, so
  // that what the caller prints next does not land in the middle of the line.
  void deliver(Completions& done) {
    if (progress_fd >= 0 && !done.records.empty()) show_progress();
    done.deliver();
  }
  // announced_only: only the messages the worker announced in its slot (no poll; EOF and a message
  // not yet counted are left to the dispatcher, which polls the pipe).
  void read_locked(Worker& w, bool drain, Completions& done, bool announced_only = false) {
    int resets = 0;
    for (int n = 0; n < 256 || drain; ++n) {
      if (w.eof) return;
      Bytes msg;
      try {
        // results_read can pass the count for a moment: a message read (after poll) before its
        // announce. A read of an announced message never blocks.
        if (!drain && w.results_read.load(std::memory_order_relaxed) >= announced(w) &&
            (announced_only || !w.conn.poll(Duration(0))))
          return;  // nothing more, or another thread took it
        msg = w.conn.recv_bytes();
      } catch (const std::system_error& e) {
        // A worker that died with chunks unread in its socket makes the kernel report
        // ECONNRESET once, before the results it did send: read on, or they would be lost.
        if (e.code() == std::errc::connection_reset && ++resets < 4) continue;
        w.eof = true;
        return;
      } catch (const std::exception&) {
        w.eof = true;
        return;
      }
      w.results_read.fetch_add(1, std::memory_order_relaxed);
      handle(w, std::move(msg), done);
    }
  }

  // PoolWaiter: a thread waiting for job reads the pipe of the worker running it.
  void help(const detail::PoolJob* job, bool (*done)(void*), void* ctx,
            std::optional<std::chrono::steady_clock::time_point> deadline) override {
    if (mpi) return mpi->help(done, ctx, deadline);
    std::shared_ptr<Worker> w;
    {
      std::lock_guard lock(mutex);
      if (state == State::terminated) return;
      for (auto& candidate : workers) {
        if (!candidate->eof && !candidate->dead && !candidate->in_flight.empty() &&
            candidate->in_flight.front().job.get() == job) {
          w = candidate;
          break;
        }
      }
    }
    if (!w || w->direct.exchange(true)) return;
    struct Release {
      Worker& w;
      ~Release() { w.direct = false; }
    } release{*w};
    // Best effort: on any failure (or a long task), the caller waits on its condition variable
    // and the dispatcher delivers the result.
    try {
      auto start = std::chrono::steady_clock::now();
      auto spin_end = start + detail::kSpinBudget;
      auto news = [&w] { return announced(*w) > w->results_read.load(std::memory_order_relaxed); };
      while (!done(ctx)) {
        {
          std::lock_guard lock(mutex);
          if (state == State::terminated || w->eof || w->dead || w->in_flight.empty() ||
              w->in_flight.front().job.get() != job)
            return;
        }
        auto now = std::chrono::steady_clock::now();
        if (deadline && now >= *deadline) return;
        if (now - start > detail::kHelpLimit) return;
        if (now < spin_end) {
          // The worker's count of messages sent, watched without a syscall or a lock; once the
          // spin is over (or declined), this thread sleeps in poll.
          auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(spin_end - now).count();
          if (!detail::spin_until(news, left, w->spin)) spin_end = now;
        }
        bool readable;
        Completions arrived;
        {
          // Under the read lock: shut_down() closes the pipe under it, after setting eof.
          std::lock_guard read_lock(w->read_mutex);
          if (w->eof) return;
          if (news()) {
            readable = true;
            read_locked(*w, false, arrived, true);
          } else if (std::chrono::steady_clock::now() < spin_end) {
            readable = false;  // another thread took it: look again
          } else {
            now = std::chrono::steady_clock::now();
            auto slice = std::chrono::duration_cast<std::chrono::steady_clock::duration>(detail::kHelpSlice);
            if (deadline) slice = std::min(slice, *deadline - now);
            readable = w->conn.poll(std::chrono::duration<double>(std::max(slice, decltype(slice)::zero())));
            if (readable) read_locked(*w, false, arrived);
          }
        }
        deliver(arrived);
        if (readable) {
          std::lock_guard lock(mutex);
          if (!queue.empty()) assign_locked(false);
        }
      }
    } catch (const std::exception&) {
    }
  }

  // A worker's sentinel fired: fail the chunk it was running, run the others elsewhere, replace it.
  void bury(std::size_t i) {
    std::shared_ptr<Worker> wp = workers[i];
    Worker& w = *wp;
    {
      std::lock_guard lock(mutex);
      w.dead = true;
    }
    read_from(w, true);
    w.process.join();
    auto code = w.process.exitcode();
    std::string who = w.process.name() + " (pid " + std::to_string(w.process.pid().value_or(0)) + ")";
    auto& log = get_logger();
    std::optional<Chunk> lost;
    std::int64_t started = detail::load(w.slot.get_obj().chunks_started);
    {
      std::lock_guard lock(mutex);
      w.eof = true;
      retire_locked(w);
      // Chunks are answered in order: those before the one it was running finished but their
      // results died with it (they run again), those after it never started.
      std::deque<Chunk> again;
      for (auto& c : w.in_flight) {
        if (c.seq == started - 1 && !lost) {
          lost = std::move(c);
        } else {
          again.push_back(std::move(c));
        }
      }
      w.in_flight.clear();
      for (auto it = again.rbegin(); it != again.rend(); ++it) queue.push_front(std::move(*it));
    }
    if (lost) {
      {
        std::lock_guard lock(mutex);
        ++progress_done;
      }
      std::exception_ptr error;
      if (w.timed_out && *w.timed_out == lost->seq) {
        std::string what = "mp: a task ran past its time limit; pool worker " + who + " was killed";
        if (log.is_enabled_for(levels::warning)) log.warning(what);
        error = std::make_exception_ptr(TaskTimeLimitExceeded(what));
      } else {
        std::string what = "mp: pool worker " + who + " " + detail::describe_exit(code) + " while running a task";
        if (log.is_enabled_for(levels::warning)) log.warning(what);
        error = std::make_exception_ptr(WorkerLostError(what));
      }
      lost->job->chunk_failed(lost->chunk.index, error);
    } else if (log.is_enabled_for(levels::debug)) {
      log.debug("pool worker " + who + " " + detail::describe_exit(code));
    }
    try {
      w.process.close();
    } catch (...) {
    }
    std::lock_guard lock(mutex);
    workers.erase(workers.begin() + static_cast<std::ptrdiff_t>(i));
  }

  // Closed: whether an imap's input may still bring work (until join()).
  bool input_pending() {
    std::lock_guard lock(mutex);
    if (joining) return false;
    std::erase_if(lazy_jobs, [](const std::weak_ptr<detail::PoolJob>& j) { return j.expired(); });
    return !lazy_jobs.empty();
  }

  bool work_left() {
    std::lock_guard lock(mutex);
    if (!queue.empty()) return true;
    for (auto& w : workers) {
      if (!w->in_flight.empty()) return true;
    }
    return false;
  }

  State current_state() const {
    std::lock_guard lock(mutex);
    return state;
  }

  // The limits of the task w is running: signals a soft limit, kills the worker at a hard one.
  // Returns when to look again (nullopt: no limit applies).
  std::optional<std::chrono::steady_clock::time_point> check_limits(Worker& w) {
    std::optional<Duration> soft, hard;
    std::int64_t seq;
    {
      std::lock_guard lock(mutex);
      if (w.dead || w.eof || w.in_flight.empty() || w.timed_out) return std::nullopt;
      seq = detail::load(w.slot.get_obj().chunks_started) - 1;
      if (seq < w.answered) {
        // Its next chunk has not started yet: look again soon if a limit will apply to it.
        auto& job = *w.in_flight.front().job;
        if (job.soft_time_limit || job.time_limit || soft_time_limit || time_limit)
          return std::chrono::steady_clock::now() + detail::kLimitRecheck;
        return std::nullopt;
      }
      auto index = static_cast<std::size_t>(seq - w.answered);
      if (index >= w.in_flight.size()) return std::nullopt;
      auto& job = *w.in_flight[index].job;
      soft = job.soft_time_limit ? job.soft_time_limit : soft_time_limit;
      hard = job.time_limit ? job.time_limit : time_limit;
    }
    if (!soft && !hard) return std::nullopt;
    auto& slot = w.slot.get_obj();
    std::int64_t task = detail::load(slot.tasks_started);
    auto started = std::chrono::steady_clock::time_point(std::chrono::nanoseconds(detail::load(slot.task_started_ns)));
    auto now = std::chrono::steady_clock::now();
    std::optional<std::chrono::steady_clock::time_point> next;
    auto at = [&](Duration d) { return started + std::chrono::duration_cast<std::chrono::nanoseconds>(d); };
    if (soft && w.soft_signalled != task) {
      if (now >= at(*soft)) {
        detail::store(slot.soft_expired_task, task);
        w.soft_signalled = task;
      } else {
        next = at(*soft);
      }
    } else if (soft) {
      // Signalled already, or the chunk's next task has not counted itself yet: look again soon.
      next = now + detail::kLimitRecheck;
    }
    if (hard) {
      if (now >= at(*hard)) {
        w.timed_out = seq;
        try {
          w.process.kill();
        } catch (...) {
        }
      } else {
        next = next ? std::min(*next, at(*hard)) : at(*hard);
      }
    }
    return next;
  }

  // Writes the progress line when due (every kProgressEvery, and once when a run of work ends);
  // returns when to write it next.
  std::optional<std::chrono::steady_clock::time_point> show_progress() {
    if (progress_fd < 0) return std::nullopt;
    std::string line;
    std::optional<std::chrono::steady_clock::time_point> next;
    {
      std::lock_guard lock(mutex);
      if (progress_shown_done) return std::nullopt;
      auto now = std::chrono::steady_clock::now();
      bool finished = progress_done >= progress_submitted;
      if (!finished && now - progress_last < detail::kProgressEvery) return progress_last + detail::kProgressEvery;
      progress_last = now;
      double elapsed = std::chrono::duration<double>(now - progress_start).count();
      double rate = elapsed > 0 ? static_cast<double>(progress_done) / elapsed : 0.0;
      char buf[160];
      if (finished) {
        std::snprintf(buf, sizeof buf, "\r[pool] %lld/%lld tasks, %.1f tasks/s, done in %.1f s",
                      static_cast<long long>(progress_done), static_cast<long long>(progress_submitted), rate, elapsed);
        progress_shown_done = true;
      } else {
        double eta = rate > 0 ? static_cast<double>(progress_submitted - progress_done) / rate : 0.0;
        std::snprintf(buf, sizeof buf, "\r[pool] %lld/%lld tasks, %.1f tasks/s, ETA %.1f s",
                      static_cast<long long>(progress_done), static_cast<long long>(progress_submitted), rate, eta);
        next = now + detail::kProgressEvery;
      }
      line = buf;
      if (progress_insights) {
        if (auto time_shares = insights_locked().shares(); !time_shares.empty()) line += " | " + time_shares;
      }
      line += finished ? "        \n" : "        ";
    }
    try {
      detail::posix::write_all(progress_fd, std::as_bytes(std::span(line.data(), line.size())));
    } catch (const std::exception&) {
      // The display is gone (a closed pipe): the pool goes on without it.
    }
    return next;
  }

  void fail_queued(const std::exception_ptr& error) {
    std::deque<Chunk> left;
    {
      std::lock_guard lock(mutex);
      left.swap(queue);
    }
    for (auto& c : left) c.job->chunk_failed(c.chunk.index, error);
  }

  void run(std::latch& registered) {
    // Holds no lock across a fork: a fork child is safe with this thread running.
    detail::ForkSafeThread fork_safe;
    registered.count_down();
    try {
      loop();
    } catch (const std::exception& e) {
      get_logger().critical(std::string("pool dispatcher failed: ") + e.what());
      std::lock_guard lock(mutex);
      state = State::terminated;
    }
    shut_down();
  }

  void loop() {
    bool restart_failed = false;
    // A worker that cannot start is retried every 100 ms, but logged once and then at most every
    // kStartErrorLogEvery (the retries may go on for as long as the pool runs).
    std::optional<std::chrono::steady_clock::time_point> start_error_logged;
    constexpr auto kStartErrorLogEvery = std::chrono::seconds(5);
    std::vector<char> busy;
    while (true) {
      State s = current_state();
      if (s == State::terminated) return;
      bool waiting_for_input = false;
      if (s == State::closed && !work_left()) {
        if (!input_pending()) return;
        waiting_for_input = true;  // an iterator that is dropped does not wake us: look again
      }
      // Replace workers that ended (maxtasksperchild, deaths) while there is a use for them.
      restart_failed = false;
      while (static_cast<int>(workers.size()) < processes && (s == State::running || work_left())) {
        try {
          start_worker(free_id());
        } catch (const std::exception& e) {
          auto now = std::chrono::steady_clock::now();
          if (!start_error_logged || now - *start_error_logged >= kStartErrorLogEvery) {
            start_error_logged = now;
            get_logger().error(std::string("pool could not start a worker: ") + e.what() +
                               " (retried every 100 ms, logged every 5 s at most)");
          }
          restart_failed = true;
          // With no worker left, the queued tasks would wait for one forever: they fail with
          // the reason (e.g. ForkWithThreadsError); later tasks try again.
          if (workers.empty()) fail_queued(std::current_exception());
          break;
        }
      }
      assign();

      std::optional<std::chrono::steady_clock::time_point> wake_at;
      if (restart_failed || waiting_for_input)
        wake_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
      std::vector<connection::Waitable> waitables;
      waitables.reserve(1 + 2 * workers.size());
      waitables.emplace_back(wake_read);
      if (sigint_fd >= 0) waitables.emplace_back(sigint_fd);
      busy.assign(workers.size(), 0);
      {
        std::lock_guard lock(mutex);  // submitting threads send to workers too
        for (std::size_t i = 0; i < workers.size(); ++i) busy[i] = !workers[i]->in_flight.empty();
      }
      for (std::size_t i = 0; i < workers.size(); ++i) {
        auto& w = workers[i];
        if (soft_time_limit || time_limit || busy[i]) {
          if (auto t = check_limits(*w)) wake_at = wake_at ? std::min(*wake_at, *t) : *t;
        }
        if (w->direct) {
          // A waiting thread reads this pipe; look again soon in case it stops.
          auto t = std::chrono::steady_clock::now() + detail::kHelpSlice;
          wake_at = wake_at ? std::min(*wake_at, t) : t;
        } else if (!w->eof) {
          waitables.emplace_back(w->conn);
        }
        waitables.emplace_back(w->process);
      }
      if (auto t = show_progress()) wake_at = wake_at ? std::min(*wake_at, *t) : *t;
      Timeout timeout;
      if (wake_at) {
        timeout = std::max(Duration(0), std::chrono::duration<double>(*wake_at - std::chrono::steady_clock::now()));
      }
      auto ready = connection::wait(waitables, timeout);
      for (auto& r : ready) {
        if (r.fileno() == wake_read.fileno()) {
          (void)wake_read.recv_bytes();
          wake_pending = false;
        } else if (sigint_fd >= 0 && r.fileno() == sigint_fd && detail::posix::take_sigint()) {
          get_logger().warning("pool: SIGINT: terminating the pool");
          std::lock_guard lock(mutex);
          interrupted = true;
          state = State::terminated;
        }
      }
      for (auto& w : workers) {
        if (w->eof || w->direct) continue;
        for (auto& r : ready) {
          if (r.fileno() == w->conn.fileno()) {
            read_from(*w, false);
            break;
          }
        }
      }
      for (std::size_t i = workers.size(); i-- > 0;) {
        int sentinel = workers[i]->process.sentinel();
        for (auto& r : ready) {
          if (r.fileno() == sentinel) {
            bury(i);
            break;
          }
        }
      }
    }
  }

  // Stops every worker: politely when the pool was closed and the work is done, by signals when
  // it was terminated. Fails whatever was not done.
  void shut_down() {
    bool terminated = current_state() == State::terminated;
    auto& log = get_logger();
    if (!terminated) {
      bool sent;
      {
        std::lock_guard lock(mutex);
        sent = stop_sent;
      }
      if (!sent) {
        for (auto& w : workers) send_stop(*w);
      }
    } else {
      for (auto& w : workers) {
        try {
          w->process.terminate();
        } catch (...) {
        }
      }
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(terminated ? 1 : 30);
    for (auto& w : workers) {
      try {
        auto left = std::chrono::duration<double>(deadline - std::chrono::steady_clock::now());
        if (!w->process.join(std::max(left, Duration(0)))) {
          w->process.kill();
          w->process.join();
        }
      } catch (...) {
      }
    }
    bool by_sigint;
    {
      std::lock_guard lock(mutex);
      by_sigint = interrupted;
    }
    for (auto& w : workers) {
      if (!terminated) read_from(*w, false);  // exit hooks' results ('x'), sent before exiting
      auto code = w->process.exitcode();
      std::string who = w->process.name() + " (pid " + std::to_string(w->process.pid().value_or(0)) + ")";
      if (log.is_enabled_for(levels::debug)) log.debug("pool worker " + who + " " + detail::describe_exit(code));
      std::deque<Chunk> unfinished;
      {
        std::lock_guard read_lock(w->read_mutex);
        std::lock_guard lock(mutex);
        w->eof = true;
        retire_locked(*w);
        unfinished.swap(w->in_flight);
      }
      for (auto& c : unfinished) {
        c.job->chunk_failed(c.chunk.index,
                            by_sigint ? std::make_exception_ptr(KeyboardInterrupt("mp: the pool was interrupted (SIGINT)"))
                                      : std::make_exception_ptr(WorkerLostError(
                                            "mp: the pool was terminated while pool worker " + who +
                                            " was running a task")));
      }
      try {
        std::lock_guard read_lock(w->read_mutex);
        w->conn.close();
        w->process.close();
      } catch (...) {
      }
    }
    {
      std::lock_guard lock(mutex);
      workers.clear();
    }
    fail_queued(by_sigint ? std::make_exception_ptr(KeyboardInterrupt("mp: the pool was interrupted (SIGINT)"))
                          : std::make_exception_ptr(ProcessError("mp: the pool was terminated before the task ran")));
  }
};

Pool::Pool(std::optional<int> processes) : Pool([&] {
    PoolOptions options;
    options.processes = processes;
    return options;
  }()) {}

Pool::Pool(PoolOptions options) : impl_(std::make_shared<Impl>(std::move(options))) {}

Pool::~Pool() = default;

void Pool::close() {
  if (!impl_) throw std::logic_error("mp: use of a moved-from Pool");
  impl_->close();
}

void Pool::terminate() {
  if (!impl_) throw std::logic_error("mp: use of a moved-from Pool");
  impl_->terminate();
}

void Pool::join() {
  if (!impl_) throw std::logic_error("mp: use of a moved-from Pool");
  impl_->join();
}

void Pool::submit(std::shared_ptr<detail::PoolJob> job, std::vector<detail::PoolChunk> chunks) {
  if (!impl_) throw std::logic_error("mp: use of a moved-from Pool");
  impl_->submit(std::move(job), std::move(chunks));
}

std::weak_ptr<detail::PoolWaiter> Pool::waiter() const {
  if (!impl_) throw std::logic_error("mp: use of a moved-from Pool");
  return std::static_pointer_cast<detail::PoolWaiter>(impl_);
}

void Pool::check_running() const {
  if (!impl_) throw std::logic_error("mp: use of a moved-from Pool");
  std::lock_guard lock(impl_->mutex);
  if (impl_->state != Impl::State::running)
    throw std::logic_error("mp: Pool not running (it was closed or terminated)");
}

PoolInsights Pool::insights() const {
  if (!impl_) throw std::logic_error("mp: use of a moved-from Pool");
  return impl_->insights();
}

std::vector<Bytes> Pool::exit_results_bytes() const {
  if (!impl_) throw std::logic_error("mp: use of a moved-from Pool");
  std::lock_guard lock(impl_->mutex);
  return impl_->exit_results;
}

WorkerInsights PoolInsights::total() const {
  WorkerInsights sum;
  sum.worker_id = -1;
  for (auto& w : workers) {
    sum.starts += w.starts;
    sum.chunks += w.chunks;
    sum.start_up += w.start_up;
    sum.working += w.working;
    sum.serializing += w.serializing;
    sum.waiting += w.waiting;
  }
  return sum;
}

std::string PoolInsights::shares() const {
  auto sum = total();
  double alive = sum.working.count() + sum.waiting.count();
  if (alive <= 0) return {};
  char buf[96];
  std::snprintf(buf, sizeof buf, "working %.0f%% (serializing %.0f%%), waiting %.0f%%",
                100.0 * sum.working.count() / alive, 100.0 * sum.serializing.count() / alive,
                100.0 * sum.waiting.count() / alive);
  return buf;
}

std::string PoolInsights::summary() const {
  auto ms = [](Duration d) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f ms", d.count() * 1e3);
    return std::string(buf);
  };
  auto line = [&](const WorkerInsights& w) {
    return std::to_string(w.chunks) + " chunks, start-up " + ms(w.start_up) + ", working " + ms(w.working) +
           " (serializing " + ms(w.serializing) + "), waiting " + ms(w.waiting);
  };
  std::string out = "pool insights: " + std::to_string(workers.size()) + " workers\n";
  for (auto& w : workers) {
    out += "  worker " + std::to_string(w.worker_id) + " (pid " + std::to_string(w.pid) + ", " + std::to_string(w.starts) +
           " start(s)): " + line(w) + "\n";
  }
  out += "  total: " + line(total()) + "\n";
  if (auto time_shares = shares(); !time_shares.empty()) out += "  of the workers' time: " + time_shares + "\n";
  return out;
}

std::size_t Pool::processes() const {
  if (!impl_) throw std::logic_error("mp: use of a moved-from Pool");
  return static_cast<std::size_t>(impl_->processes);
}

namespace pool {

int worker_id() noexcept { return detail::g_worker_id; }

bool soft_time_limit_exceeded() noexcept {
  if (!detail::g_slot || !detail::g_timed) return false;
  auto task = detail::load(detail::g_slot->tasks_started);
  return detail::load(detail::g_slot->soft_expired_task) == task;
}

void check_soft_time_limit() {
  if (soft_time_limit_exceeded()) throw SoftTimeLimitExceeded("mp: the task ran past its soft time limit");
}

}  // namespace pool

}  // namespace mp
