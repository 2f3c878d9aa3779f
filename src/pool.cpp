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
//   parent -> worker  't' u64 header_size <header: code refs of runner and task> <items>
//                     's'                         (stop: the pool is closing)
//   worker -> parent  'k'                         (ready: the initializer has run)
//                     'r' <encoded results>       (the oldest chunk sent ran)
//                     'e' <TaskError>             (the oldest chunk could not run at all)
// A worker also exits when its parent dies (it waits on the parent's sentinel with its pipe).
#include <multiprocessing/connection.hpp>
#include <multiprocessing/logging.hpp>
#include <multiprocessing/pool.hpp>
#include <multiprocessing/process.hpp>

#include <cxxabi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <typeinfo>

#include "posix/process.hpp"

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

namespace {

// ---- the worker ----

// The code references of a job's runner and task, encoded once per job.
using TaskHeader = std::tuple<posix::CodeRef, bool, posix::CodeRef>;

void send_error(Connection& conn, const TaskError& error) {
  Bytes out{std::byte{'e'}};
  pool_append(out, error);
  conn.send_bytes(out);
}

// pool_end is the pool's end of conn: under fork the worker inherits it, and must close it to see
// EOF when the pool's process dies. pool_pid is that process: its pidfd is watched too, since
// workers forked later also inherit the pool's ends of their siblings' pipes.
void pool_worker_main(Connection conn, Connection pool_end, std::int64_t pool_pid, posix::CodeRef initializer,
                      bool has_initializer, std::int64_t maxtasks) {
  pool_end.close();
  posix::UniqueFd pool_process;
  try {
    pool_process = posix::open_pidfd(static_cast<int>(pool_pid));
  } catch (const std::exception&) {
    return;  // the pool's process is gone already
  }
  auto& log = get_logger();
  if (log.is_enabled_for(levels::debug)) log.debug("pool worker started");
  if (has_initializer) {
    auto init = reinterpret_cast<void (*)()>(posix::resolve_code_ref(initializer));
    init();
  }
  conn.send_bytes(std::string_view("k"));
  const int parent_sentinel = pool_process.get();

  Bytes last_header;
  PoolRunner runner = nullptr;
  ErasedFn fn = nullptr;
  Bytes out;
  std::int64_t done = 0;
  while (true) {
    if (!conn.poll(Duration(0)) && parent_sentinel >= 0) {
      auto ready = connection::wait({connection::Waitable(conn), connection::Waitable(parent_sentinel)});
      bool conn_ready = false;
      for (auto& w : ready) conn_ready = conn_ready || w.fileno() == conn.fileno();
      if (!conn_ready) {
        if (log.is_enabled_for(levels::debug)) log.debug("pool worker exiting: the pool's process is gone");
        return;
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
    if (msg.empty()) continue;
    if (msg[0] == std::byte{'s'}) break;
    std::span<const std::byte> rest(msg);
    try {
      if (msg[0] != std::byte{'t'} || rest.size() < 9) throw std::invalid_argument("mp: malformed pool task message");
      std::uint64_t header_size = 0;
      std::memcpy(&header_size, rest.data() + 1, sizeof header_size);
      rest = rest.subspan(9);
      if (header_size > rest.size()) throw std::invalid_argument("mp: malformed pool task message (header size)");
      auto header = rest.first(static_cast<std::size_t>(header_size));
      rest = rest.subspan(static_cast<std::size_t>(header_size));
      if (!runner || !std::equal(header.begin(), header.end(), last_header.begin(), last_header.end())) {
        runner = nullptr;
        auto [runner_ref, has_fn, fn_ref] = mp::loads<TaskHeader>(header);
        auto found = reinterpret_cast<PoolRunner>(posix::resolve_code_ref(runner_ref));
        fn = has_fn ? reinterpret_cast<ErasedFn>(posix::resolve_code_ref(fn_ref)) : nullptr;
        runner = found;
        last_header.assign(header.begin(), header.end());
      }
      out.clear();
      out.push_back(std::byte{'r'});
      runner(fn, rest, out);
    } catch (...) {
      send_error(conn, describe_current_exception(typeid(PoolRunner)));
      out.clear();
      ++done;
      if (maxtasks > 0 && done >= maxtasks) break;
      continue;
    }
    conn.send_bytes(out);
    if (maxtasks > 0 && ++done >= maxtasks) break;
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

// The prefetch rule: a worker holding a chunk gets more (up to kMaxInFlight) only when they are
// all small enough to sit in the socket buffers, so a send never blocks on a busy worker; the
// prefetch keeps a worker busy while the dispatcher is waking up to hand it the next one.
constexpr std::size_t kPrefetchLimit = 16 * 1024;
constexpr std::size_t kMaxInFlight = 4;

}  // namespace
}  // namespace mp::detail

namespace mp {

struct Pool::Impl {
  struct Chunk {
    std::shared_ptr<detail::PoolJob> job;
    std::shared_ptr<const Bytes> header;
    detail::PoolChunk chunk;
  };
  struct Worker {
    int number = 0;
    Process process;
    Connection conn;
    std::deque<Chunk> in_flight;
    std::int64_t sent = 0;
    std::atomic<bool> ready{false};  // its initializer ran ('k' arrived)
    std::atomic<bool> eof{false};    // its pipe closed or failed: nothing more is sent or read
    bool dead = false;               // its sentinel fired: nothing more is sent (under mutex)
  };
  enum class State { running, closed, terminated };

  Context context;
  int processes = 1;
  void (*initializer)() = nullptr;
  std::int64_t maxtasks = 0;

  // Shared with the callers' threads, under mutex.
  mutable std::mutex mutex;
  State state = State::running;
  std::deque<Chunk> queue;
  std::map<std::uintptr_t, std::shared_ptr<const Bytes>> headers;  // code refs by runner ^ fn

  // Changed by the dispatcher only, under mutex; a worker's in_flight and sent too, and sends to
  // a worker happen under mutex (they never block: see can_take), from the dispatcher or from a
  // submitting thread that finds an idle worker (one thread hop less per task).
  std::vector<std::unique_ptr<Worker>> workers;
  int next_number = 1;
  Connection wake_read, wake_write;
  std::atomic<bool> wake_pending{false};
  std::thread dispatcher;
  std::mutex join_mutex;

  explicit Impl(PoolOptions options) : context(options.context.value_or(get_context())) {
    processes = options.processes.value_or(cpu_count());
    if (processes < 1) throw std::invalid_argument("mp: Pool: the number of processes must be at least 1");
    if (options.maxtasksperchild) {
      if (*options.maxtasksperchild < 1) throw std::invalid_argument("mp: Pool: maxtasksperchild must be at least 1");
      maxtasks = *options.maxtasksperchild;
    }
    initializer = options.initializer;
    auto [r, w] = Pipe(false);
    wake_read = std::move(r);
    wake_write = std::move(w);
    for (int i = 0; i < processes; ++i) start_worker();
    dispatcher = std::thread([this] { run(); });
  }

  ~Impl() {
    try {
      terminate();
    } catch (...) {
    }
  }

  void start_worker() {
    auto w = std::make_unique<Worker>();
    w->number = next_number++;
    auto [parent_end, child_end] = Pipe(true);
    detail::posix::CodeRef init_ref;
    bool has_init = initializer != nullptr;
    if (has_init) init_ref = detail::posix::code_ref_of(reinterpret_cast<std::uintptr_t>(initializer));
    w->process = Process(context, &detail::pool_worker_main, child_end, parent_end,
                         static_cast<std::int64_t>(detail::posix::current_pid()), init_ref, has_init, maxtasks);
    w->process.set_name("PoolWorker-" + std::to_string(w->number));
    w->process.set_daemon(true);
    w->process.start();
    child_end.close();
    w->conn = std::move(parent_end);
    auto& log = get_logger();
    if (log.is_enabled_for(levels::debug))
      log.debug("pool started worker " + w->process.name() + " (pid " + std::to_string(*w->process.pid()) + ")");
    std::lock_guard lock(mutex);
    workers.push_back(std::move(w));
  }

  void wake() {
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
    detail::TaskHeader h;
    std::get<0>(h) = detail::posix::code_ref_of(reinterpret_cast<std::uintptr_t>(job.runner));
    std::get<1>(h) = job.fn != nullptr;
    if (job.fn) std::get<2>(h) = detail::posix::code_ref_of(reinterpret_cast<std::uintptr_t>(job.fn));
    auto bytes = std::make_shared<const Bytes>(mp::dumps(h));
    std::lock_guard lock(mutex);
    return headers.emplace(key, std::move(bytes)).first->second;
  }

  void submit(std::shared_ptr<detail::PoolJob> job, std::vector<detail::PoolChunk> chunks) {
    auto header = header_for(*job);
    bool queued = false;
    {
      std::lock_guard lock(mutex);
      if (state != State::running) throw std::logic_error("mp: Pool not running (it was closed or terminated)");
      for (auto& c : chunks) queue.push_back(Chunk{job, header, std::move(c)});
      // Idle workers take the first chunks now, from this thread; the dispatcher sees their
      // results on the pipes it polls anyway.
      if (queue.size() == chunks.size()) assign_locked(true);
      queued = !queue.empty();
    }
    if (queued) wake();
  }

  bool is_dispatcher_thread() const { return std::this_thread::get_id() == dispatcher.get_id(); }

  void close() {
    {
      std::lock_guard lock(mutex);
      if (state == State::running) state = State::closed;
    }
    wake();
  }

  void terminate() {
    {
      std::lock_guard lock(mutex);
      state = State::terminated;
    }
    wake();
    if (is_dispatcher_thread()) return;  // from a callback: the dispatcher stops after it
    join_dispatcher();
  }

  void join() {
    {
      std::lock_guard lock(mutex);
      if (state == State::running) throw std::logic_error("mp: Pool::join() before close() or terminate()");
    }
    if (is_dispatcher_thread()) throw std::logic_error("mp: Pool::join() from a callback of the same pool");
    join_dispatcher();
  }

  void join_dispatcher() {
    std::lock_guard lock(join_mutex);
    if (dispatcher.joinable()) dispatcher.join();
  }

  // ---- the dispatcher thread ----

  bool can_take(const Worker& w, std::size_t size) const {
    if (!w.ready || w.eof || w.dead) return false;
    if (maxtasks > 0 && w.sent >= maxtasks) return false;
    if (w.in_flight.empty()) return true;
    if (w.in_flight.size() >= detail::kMaxInFlight || size > detail::kPrefetchLimit) return false;
    return std::all_of(w.in_flight.begin(), w.in_flight.end(),
                       [](const Chunk& c) { return c.chunk.items.size() <= detail::kPrefetchLimit; });
  }

  // Under mutex.
  void send_to(Worker& w, Chunk chunk) {
    Bytes msg;
    const Bytes& header = *chunk.header;
    msg.reserve(9 + header.size() + chunk.chunk.items.size());
    msg.push_back(std::byte{'t'});
    auto header_size = static_cast<std::uint64_t>(header.size());
    const auto* p = reinterpret_cast<const std::byte*>(&header_size);
    msg.insert(msg.end(), p, p + sizeof header_size);
    msg.insert(msg.end(), header.begin(), header.end());
    msg.insert(msg.end(), chunk.chunk.items.begin(), chunk.chunk.items.end());
    try {
      w.conn.send_bytes(msg);
    } catch (const std::exception&) {
      // The worker is gone: the chunk never reached it, so it goes back to the queue. Its pipe
      // is still read to the end (results it sent before dying are there), so this is not eof.
      w.dead = true;
      queue.push_front(std::move(chunk));
      return;
    }
    ++w.sent;
    w.in_flight.push_back(std::move(chunk));
  }

  // Two passes so that every idle worker gets a chunk before any worker gets a second (the
  // second pass only when prefetch is allowed). Under mutex.
  void assign_locked(bool idle_only) {
    for (int pass = 0; pass < (idle_only ? 1 : 2); ++pass) {
      for (auto& w : workers) {
        while (!queue.empty()) {
          if (pass == 0 && !w->in_flight.empty()) break;
          if (!can_take(*w, queue.front().chunk.items.size())) break;
          Chunk chunk = std::move(queue.front());
          queue.pop_front();
          send_to(*w, std::move(chunk));
          if (pass == 0) break;
        }
        if (queue.empty()) return;
      }
    }
  }

  void assign() {
    std::lock_guard lock(mutex);
    assign_locked(false);
  }

  // Reads what a worker sent; false once its pipe is closed.
  void read_from(Worker& w, bool drain) {
    int resets = 0;
    for (int n = 0; n < 256 || drain; ++n) {
      if (w.eof) return;
      Bytes msg;
      try {
        if (n > 0 && !w.conn.poll(Duration(0))) return;
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
      if (msg.empty()) continue;
      char tag = static_cast<char>(msg[0]);
      if (tag == 'k') {
        w.ready = true;
        continue;
      }
      Chunk chunk;
      {
        std::lock_guard lock(mutex);
        if ((tag != 'r' && tag != 'e') || w.in_flight.empty()) {
          get_logger().warning("pool: unexpected message from worker " + std::to_string(w.number));
          continue;
        }
        chunk = std::move(w.in_flight.front());
        w.in_flight.pop_front();
      }
      std::span<const std::byte> body = std::span<const std::byte>(msg).subspan(1);
      if (tag == 'r') {
        chunk.job->chunk_done(chunk.chunk.index, body);
      } else {
        std::exception_ptr error;
        try {
          error = detail::make_task_exception(mp::loads<detail::TaskError>(body));
        } catch (...) {
          error = std::current_exception();
        }
        chunk.job->chunk_failed(chunk.chunk.index, error);
      }
    }
  }

  // A worker's sentinel fired: fail the chunk it was running, requeue the others, replace it.
  void bury(std::size_t i) {
    Worker& w = *workers[i];
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
    {
      std::lock_guard lock(mutex);
      w.eof = true;
      if (!w.in_flight.empty()) {
        lost = std::move(w.in_flight.front());
        w.in_flight.pop_front();
      }
      while (!w.in_flight.empty()) {
        queue.push_front(std::move(w.in_flight.back()));
        w.in_flight.pop_back();
      }
    }
    if (lost) {
      std::string what = "mp: pool worker " + who + " " + detail::describe_exit(code) + " while running a task";
      if (log.is_enabled_for(levels::warning)) log.warning(what);
      lost->job->chunk_failed(lost->chunk.index, std::make_exception_ptr(WorkerLostError(what)));
    } else if (log.is_enabled_for(levels::debug)) {
      log.debug("pool worker " + who + " " + detail::describe_exit(code));
    }
    try {
      w.process.close();
    } catch (...) {
    }
    std::unique_ptr<Worker> gone;
    {
      std::lock_guard lock(mutex);
      gone = std::move(workers[i]);
      workers.erase(workers.begin() + static_cast<std::ptrdiff_t>(i));
    }
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

  void run() {
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
    while (true) {
      State s = current_state();
      if (s == State::terminated) return;
      if (s == State::closed && !work_left()) return;
      // Replace workers that ended (maxtasksperchild, deaths) while there is a use for them.
      restart_failed = false;
      while (static_cast<int>(workers.size()) < processes && (s == State::running || work_left())) {
        try {
          start_worker();
        } catch (const std::exception& e) {
          get_logger().error(std::string("pool could not start a worker: ") + e.what());
          restart_failed = true;
          break;
        }
      }
      assign();

      std::vector<connection::Waitable> waitables;
      waitables.reserve(1 + 2 * workers.size());
      waitables.emplace_back(wake_read);
      for (auto& w : workers) {
        if (!w->eof) waitables.emplace_back(w->conn);
        waitables.emplace_back(w->process);
      }
      auto ready = connection::wait(waitables, restart_failed ? Timeout(Duration(0.1)) : Timeout());
      for (auto& r : ready) {
        if (r.fileno() == wake_read.fileno()) {
          (void)wake_read.recv_bytes();
          wake_pending = false;
        }
      }
      for (auto& w : workers) {
        if (w->eof) continue;
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
      for (auto& w : workers) {
        if (w->eof) continue;
        try {
          w->conn.send_bytes(std::string_view("s"));
        } catch (...) {
        }
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
    for (auto& w : workers) {
      auto code = w->process.exitcode();
      std::string who = w->process.name() + " (pid " + std::to_string(w->process.pid().value_or(0)) + ")";
      if (log.is_enabled_for(levels::debug)) log.debug("pool worker " + who + " " + detail::describe_exit(code));
      for (auto& c : w->in_flight) {
        c.job->chunk_failed(c.chunk.index,
                            std::make_exception_ptr(WorkerLostError("mp: the pool was terminated while pool worker " +
                                                                    who + " was running a task")));
      }
      w->in_flight.clear();
      try {
        w->conn.close();
        w->process.close();
      } catch (...) {
      }
    }
    workers.clear();
    std::deque<Chunk> left;
    {
      std::lock_guard lock(mutex);
      left.swap(queue);
    }
    for (auto& c : left) {
      c.job->chunk_failed(c.chunk.index,
                          std::make_exception_ptr(ProcessError("mp: the pool was terminated before the task ran")));
    }
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

void Pool::check_running() const {
  if (!impl_) throw std::logic_error("mp: use of a moved-from Pool");
  std::lock_guard lock(impl_->mutex);
  if (impl_->state != Impl::State::running)
    throw std::logic_error("mp: Pool not running (it was closed or terminated)");
}

std::size_t Pool::processes() const {
  if (!impl_) throw std::logic_error("mp: use of a moved-from Pool");
  return static_cast<std::size_t>(impl_->processes);
}

}  // namespace mp
