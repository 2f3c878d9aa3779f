// The parent's side of the "mpi" start method: the pools' engine.
//
// One engine thread per process makes the pools' MPI calls (posting sends, probing for answers)
// and runs the jobs' completions, as the local pool's dispatcher thread does. A channel is a set
// of worker ranks on a communicator: the ranks 1..size-1 of the mpirun launch (shared by every
// pool of the program, started and stopped with it), or the ranks a singleton spawned for one
// pool (MPI_Comm_spawn; stopped when that pool ends). Each chunk sent is recorded as a flight of
// its channel until its answer comes back, so the engine knows how busy every rank is and which
// job an answer belongs to.
// A thread waiting for a result (PoolWaiter::help) may receive small answers itself, as the local
// pool's waiters read their worker's pipe; the engine thread still does all the sending.
//
// What MPI cannot do, and how the engine copes:
// - It cannot stop a rank in the middle of a task. terminate() fails the pool's queued and
//   running tasks at once; a rank still running one finishes it and its answer is dropped.
// - It gives no fd to wait on: the engine probes with backoff (wire.hpp).
// - When a rank dies, Open MPI ends the whole job (mpirun reports which rank and why). When MPI
//   returns an error instead, the engine fails every task it holds with WorkerLostError carrying
//   MPI's message, and the pools refuse new work with ProcessError.
// - At exit the parent asks every worker rank to stop and finalizes MPI; a rank still stuck in a
//   task after MP_MPI_EXIT_GRACE seconds (default 10) makes it print why and MPI_Abort the job,
//   rather than hang in MPI_Finalize.
#include <multiprocessing/logging.hpp>
#include <multiprocessing/process.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "mpi/mpi_backend.hpp"
#include "mpi/wire.hpp"
#include "pool_task_header.hpp"
#include "process_impl.hpp"

namespace mp::detail::mpi {

namespace {

// A rank holding a chunk gets another (up to kMaxInFlight) only when they are all small: the
// prefetch hides the round trip for short tasks without piling big work on one rank.
constexpr std::size_t kPrefetchLimit = 64 * 1024;
constexpr int kMaxInFlight = 4;

enum class State { running, closed, terminated };

struct Chunk {
  std::shared_ptr<PoolJob> job;
  std::shared_ptr<const Bytes> header;
  PoolChunk chunk;
};

struct PoolState;

struct Channel {
  MPI_Comm comm = MPI_COMM_NULL;
  bool spawned = false;
  int first_rank = 0;
  std::vector<int> load;  // chunks in flight, per worker
  std::vector<int> big;   // of which larger than kPrefetchLimit
  bool stopping = false;  // 's' queued to every worker
  int acks = 0;           // 'q' received
  std::atomic<bool> closed{false};  // freed / disconnected

  int workers() const { return static_cast<int>(load.size()); }
  int rank_of(std::size_t w) const { return first_rank + static_cast<int>(w); }
};

struct Flight {
  std::shared_ptr<PoolState> pool;
  Chunk chunk;
  std::size_t worker = 0;
  bool big = false;
  bool failed = false;  // the pool was terminated: the answer is dropped
};

struct PoolState {
  std::uint64_t id = 0;
  std::shared_ptr<Channel> channel;
  std::vector<std::size_t> workers;  // indices into the channel's workers
  int processes = 1;
  State state = State::running;
  bool finished = false;
  std::deque<Chunk> queue;
  std::size_t in_flight = 0;
  std::condition_variable changed;  // under Engine::mutex
};

struct Outgoing {
  std::shared_ptr<Channel> channel;
  std::size_t worker = 0;
  std::shared_ptr<const Bytes> data;
};

class Engine {
 public:
  static Engine& get() {
    static Engine* engine = new Engine;  // never destroyed: pools may outlive static destruction
    return *engine;
  }
  static Engine* if_started() { return started_.load() ? &get() : nullptr; }

  std::shared_ptr<Channel> world_channel() {
    std::lock_guard lock(mutex_);
    return world_channel_locked();
  }
  // Under mutex_.
  std::shared_ptr<Channel> world_channel_locked() {
    if (!world_) {
      world_ = std::make_shared<Channel>();
      world_->comm = world_comm();
      world_->first_rank = 1;
      world_->load.assign(static_cast<std::size_t>(world_size() - 1), 0);
      world_->big = world_->load;
      channels_.push_back(world_);
    }
    return world_;
  }

  std::shared_ptr<PoolState> add_pool(std::shared_ptr<Channel> channel, int processes, void (*initializer)()) {
    auto pool = std::make_shared<PoolState>();
    pool->channel = channel;
    pool->processes = processes;
    std::unique_lock lock(mutex_);
    if (!broken_.empty()) throw ProcessError(broken_);
    pool->id = next_pool_++;
    // Pools share the launch's ranks: each starts at a different one.
    int n = std::min(processes, channel->workers());
    for (int i = 0; i < n; ++i)
      pool->workers.push_back(static_cast<std::size_t>((static_cast<std::uint64_t>(i) + pool->id * static_cast<std::uint64_t>(n)) %
                                                       static_cast<std::uint64_t>(channel->workers())));
    if (channel->spawned && std::find(channels_.begin(), channels_.end(), channel) == channels_.end())
      channels_.push_back(channel);
    if (initializer) {
      Bytes msg{std::byte{'i'}};
      put_u64(msg, pool->id);
      pool_append(msg, posix::code_ref_of(reinterpret_cast<std::uintptr_t>(initializer)));
      auto data = std::make_shared<const Bytes>(std::move(msg));
      for (auto w : pool->workers) outbox_.push_back(Outgoing{channel, w, data});
    }
    pools_.emplace(pool->id, pool);
    start_locked();
    poke_locked();
    return pool;
  }

  void submit(const std::shared_ptr<PoolState>& pool, std::shared_ptr<PoolJob> job, std::shared_ptr<const Bytes> header,
              std::vector<PoolChunk> chunks, bool after_close) {
    std::lock_guard lock(mutex_);
    if (!broken_.empty()) throw ProcessError(broken_);
    if (pool->state == State::terminated || (pool->state == State::closed && !after_close))
      throw std::logic_error("mp: Pool not running (it was closed or terminated)");
    if (pool->finished) {
      // A closed pool whose work was done gets more of an imap's input: it goes on, unless its
      // spawned workers were already told to stop.
      if (pool->channel->stopping) throw std::logic_error("mp: Pool not running (it was closed or terminated)");
      pool->finished = false;
      pools_.emplace(pool->id, pool);
    }
    for (auto& c : chunks) pool->queue.push_back(Chunk{job, header, std::move(c)});
    // The engine thread sends them: it probes without sleeping for a while after any activity,
    // so a task submitted right after another goes out without a thread wake-up. (Sending from
    // this thread under MPI_THREAD_MULTIPLE measured no faster.)
    poke_locked();
  }

  void close(const std::shared_ptr<PoolState>& pool) {
    std::lock_guard lock(mutex_);
    if (pool->state == State::running) pool->state = State::closed;
    poke_locked();
  }

  void terminate(const std::shared_ptr<PoolState>& pool) {
    std::unique_lock lock(mutex_);
    pool->state = State::terminated;
    poke_locked();
    if (std::this_thread::get_id() == thread_id_ || !thread_.joinable() || stopped_) {
      // From a callback, or with no engine thread running: fail what is left here.
      lock.unlock();
      settle_terminated();
      return;
    }
    pool->changed.wait(lock, [&] { return pool->finished || stop_; });
  }

  void join(const std::shared_ptr<PoolState>& pool) {
    std::unique_lock lock(mutex_);
    if (pool->state == State::running) throw std::logic_error("mp: Pool::join() before close() or terminate()");
    if (std::this_thread::get_id() == thread_id_)
      throw std::logic_error("mp: Pool::join() from a callback of the same pool");
    pool->changed.wait(lock, [&] { return pool->finished || !broken_.empty() || stop_; });
  }

  void help(const std::shared_ptr<PoolState>& pool, bool (*done)(void*), void* ctx,
            std::optional<std::chrono::steady_clock::time_point> deadline) {
    std::shared_ptr<Channel> ch;
    {
      std::lock_guard lock(mutex_);
      if (!thread_multiple() || std::this_thread::get_id() == thread_id_ || !broken_.empty() || stop_ ||
          pool->state == State::terminated || pool->in_flight == 0)
        return;
      ch = pool->channel;
    }
    // Small answers only (tag kTagWhole): a large one, in pieces, is the engine thread's to
    // receive, so that two threads never share a source's pieces.
    auto quiet_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(2);
    try {
      while (!done(ctx)) {
        int flag = 0;
        MPI_Message message;
        MPI_Status status;
        if (!ch->closed) check(MPI_Improbe(MPI_ANY_SOURCE, kTagWhole, ch->comm, &flag, &message, &status), "Improbe");
        auto now = std::chrono::steady_clock::now();
        if (flag) {
          Bytes msg = receive_matched(ch->comm, message, status);
          handle(ch, status.MPI_SOURCE - ch->first_rank, msg);
          quiet_until = now + std::chrono::milliseconds(2);
          continue;
        }
        if (now >= quiet_until || (deadline && now >= *deadline)) return;
        std::this_thread::yield();
      }
    } catch (const std::exception&) {
      // The engine thread meets the same error and reports it.
    }
  }

  /// At exit (main thread): stops the engine thread, fails what is left, stops every worker.
  /// False when some worker did not answer within the grace period.
  bool shut_down(std::string& why) {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
      for (auto& [id, pool] : pools_) pool->state = State::terminated;
      poke_locked();
    }
    if (thread_.joinable()) thread_.join();
    {
      std::lock_guard lock(mutex_);
      stopped_ = true;
      if (world_comm() != MPI_COMM_NULL && world_size() > 1) (void)world_channel_locked();
      for (auto& ch : channels_) stop_channel_locked(ch);
    }
    double grace = 10;
    if (const char* env = std::getenv("MP_MPI_EXIT_GRACE")) grace = std::atof(env);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(grace);
    Backoff backoff;
    try {
      while (true) {
        if (step()) backoff.busy();
        std::lock_guard lock(mutex_);
        bool all = sends_.empty();
        for (auto& ch : channels_) all = all && ch->acks == ch->workers();
        if (all) break;
        if (std::chrono::steady_clock::now() > deadline) {
          why = "mp: at exit, MPI pool worker ranks still run tasks after " + std::to_string(grace) +
                " s (MP_MPI_EXIT_GRACE); aborting the MPI job";
          return false;
        }
        auto pause = backoff.pause();
        if (pause.count() > 0) std::this_thread::sleep_for(pause);
      }
      for (auto& ch : channels_) close_channel(*ch);
    } catch (const std::exception& e) {
      why = e.what();
      return false;
    }
    return true;
  }

 private:
  Engine() = default;

  void start_locked() {
    if (thread_.joinable() || stopped_) return;
    thread_ = std::thread([this] { run(); });
    thread_id_ = thread_.get_id();
    started_ = true;
  }
  void poke_locked() {
    ++epoch_;
    wake_.notify_all();
  }

  void stop_channel_locked(const std::shared_ptr<Channel>& ch) {
    if (ch->stopping || ch->closed) return;
    ch->stopping = true;
    auto data = std::make_shared<const Bytes>(Bytes{std::byte{'s'}});
    for (std::size_t w = 0; w < ch->load.size(); ++w) outbox_.push_back(Outgoing{ch, w, data});
  }

  static void close_channel(Channel& ch) {
    if (ch.closed) return;
    ch.closed = true;
    if (ch.spawned) MPI_Comm_disconnect(&ch.comm);
  }

  void run() {
    Backoff backoff;
    std::uint64_t seen = 0;
    while (true) {
      bool active = false;
      try {
        active = step();
      } catch (const std::exception& e) {
        fail_everything(e.what());
        return;
      }
      std::unique_lock lock(mutex_);
      if (stop_) return;
      if (active) {
        // Answers may have freed ranks for queued chunks: go round again before any wait.
        backoff.busy();
        continue;
      }
      if (epoch_ != seen) {
        seen = epoch_;
        continue;
      }
      auto pause = backoff.pause();
      if (pause.count() > 0 && flights_.empty() && sends_.empty() && outbox_.empty() && !waiting_acks_locked() &&
          !queued_locked()) {
        // Nothing to wait for from MPI: sleep until a pool changes. (Right after activity the
        // engine keeps probing instead, so that the next task goes out without a thread wake-up.)
        wake_.wait(lock, [&] { return epoch_ != seen || stop_; });
        backoff.busy();
        continue;
      }
      if (pause.count() == 0) {
        lock.unlock();
        std::this_thread::yield();
      } else {
        wake_.wait_for(lock, pause, [&] { return epoch_ != seen || stop_; });
      }
    }
  }

  // Chunks waiting for a rank, or a pool to retire.
  bool queued_locked() const {
    for (auto& [id, pool] : pools_)
      if (!pool->queue.empty() || pool->state != State::running) return true;
    return false;
  }

  bool waiting_acks_locked() const {
    for (auto& ch : channels_)
      if (ch->stopping && !ch->closed && ch->acks < ch->workers()) return true;
    return false;
  }

  bool can_take(const Channel& ch, std::size_t w, std::size_t size) const {
    if (ch.stopping) return false;
    if (ch.load[w] == 0) return true;
    return ch.load[w] < kMaxInFlight && ch.big[w] == 0 && size <= kPrefetchLimit;
  }

  // Under mutex: a terminated pool's queued chunks and the chunks its ranks are running fail.
  void fail_terminated_locked(const std::shared_ptr<PoolState>& pool,
                              std::vector<std::pair<Chunk, std::exception_ptr>>& failures) {
    for (auto& c : pool->queue)
      failures.emplace_back(std::move(c),
                            std::make_exception_ptr(ProcessError("mp: the pool was terminated before the task ran")));
    pool->queue.clear();
    for (auto& [key, f] : flights_) {
      if (f.pool != pool || f.failed) continue;
      f.failed = true;
      failures.emplace_back(std::move(f.chunk), std::make_exception_ptr(WorkerLostError(
                                                     "mp: the pool was terminated while MPI rank " +
                                                     std::to_string(pool->channel->rank_of(f.worker)) +
                                                     " was running a task")));
      f.chunk = Chunk{};
    }
    pool->in_flight = 0;
  }

  // Under mutex: sends queued chunks to ranks that can take them; retires finished pools.
  void assign_locked(std::vector<std::pair<Chunk, std::exception_ptr>>& failures) {
    for (auto it = pools_.begin(); it != pools_.end();) {
      auto pool = it->second;
      auto& ch = *pool->channel;
      if (pool->state == State::terminated) fail_terminated_locked(pool, failures);
      assign_pool_locked(*pool, pool);
      bool done = pool->state == State::terminated ||
                  (pool->state == State::closed && pool->queue.empty() && pool->in_flight == 0);
      if (done) {
        pool->finished = true;
        pool->changed.notify_all();
        if (ch.spawned) stop_channel_locked(pool->channel);
        it = pools_.erase(it);
      } else {
        ++it;
      }
    }
  }

  // Two passes, so that every idle rank gets a chunk before any gets a second.
  void assign_pool_locked(PoolState& p, const std::shared_ptr<PoolState>& pool) {
    auto& ch = *p.channel;
    for (int pass = 0; pass < 2 && !p.queue.empty(); ++pass) {
      for (auto w : p.workers) {
        while (!p.queue.empty() && can_take(ch, w, p.queue.front().chunk.items.size())) {
          if (pass == 0 && ch.load[w] > 0) break;
          Chunk c = std::move(p.queue.front());
          p.queue.pop_front();
          send_chunk_locked(pool, w, std::move(c));
          if (pass == 0) break;
        }
      }
    }
  }

  // Posts the queued messages in their order (one thread at a time, so that an initializer
  // goes out before its pool's chunks and a stop after them). True when there were some.
  bool flush_outbox() {
    std::lock_guard post(post_mutex_);
    std::deque<Outgoing> out;
    {
      std::lock_guard lock(mutex_);
      out.swap(outbox_);
    }
    if (out.empty()) return false;
    std::vector<std::unique_ptr<PendingSend>> pending;
    for (auto& o : out) {
      if (o.channel->closed) continue;
      auto p = post_send(o.channel->comm, o.channel->rank_of(o.worker), std::move(o.data));
      if (!test_send(*p)) pending.push_back(std::move(p));
    }
    std::lock_guard lock(mutex_);
    for (auto& p : pending) sends_.push_back(std::move(p));
    return true;
  }

  void send_chunk_locked(const std::shared_ptr<PoolState>& pool, std::size_t w, Chunk c) {
    auto& ch = *pool->channel;
    std::uint64_t seq = next_seq_++;
    const Bytes& header = *c.header;
    Bytes msg;
    msg.reserve(25 + header.size() + c.chunk.items.size());
    msg.push_back(std::byte{'t'});
    put_u64(msg, pool->id);
    put_u64(msg, seq);
    put_u64(msg, header.size());
    msg.insert(msg.end(), header.begin(), header.end());
    msg.insert(msg.end(), c.chunk.items.begin(), c.chunk.items.end());
    bool big = c.chunk.items.size() > kPrefetchLimit;
    c.chunk.items = Bytes();  // the message holds them now
    outbox_.push_back(Outgoing{pool->channel, w, std::make_shared<const Bytes>(std::move(msg))});
    ++ch.load[w];
    if (big) ++ch.big[w];
    ++pool->in_flight;
    flights_.emplace(Key{&ch, seq}, Flight{pool, std::move(c), w, big, false});
  }

  // One round: assign, send, receive, complete. True when something happened.
  bool step() {
    std::vector<std::pair<Chunk, std::exception_ptr>> failures;
    std::vector<std::shared_ptr<Channel>> channels;
    {
      std::lock_guard lock(mutex_);
      assign_locked(failures);
      channels = channels_;
    }
    bool active = !failures.empty();
    for (auto& [chunk, error] : failures) chunk.job->chunk_failed(chunk.chunk.index, error);
    if (flush_outbox()) active = true;
    for (auto& ch : channels) {
      if (ch->closed) continue;
      for (int n = 0; n < 64; ++n) {
        // By tag, never MPI_ANY_TAG: the pieces of a large message are received right after its
        // header, by source, and must not be matched here.
        int flag = 0;
        MPI_Message message;
        MPI_Status status;
        check(MPI_Improbe(MPI_ANY_SOURCE, kTagWhole, ch->comm, &flag, &message, &status), "Improbe");
        if (!flag) check(MPI_Improbe(MPI_ANY_SOURCE, kTagLarge, ch->comm, &flag, &message, &status), "Improbe");
        if (!flag) break;
        active = true;
        Bytes msg = receive_matched(ch->comm, message, status);
        handle(ch, status.MPI_SOURCE - ch->first_rank, msg);
      }
    }
    {
      std::lock_guard lock(mutex_);
      for (std::size_t i = sends_.size(); i-- > 0;) {
        if (test_send(*sends_[i])) {
          sends_.erase(sends_.begin() + static_cast<std::ptrdiff_t>(i));
          active = true;
        }
      }
    }
    // A spawned channel whose workers all said goodbye is disconnected (collective with them).
    for (auto& ch : channels) {
      bool done = false;
      {
        std::lock_guard lock(mutex_);
        done = ch->spawned && ch->stopping && !ch->closed && ch->acks == ch->workers() && !stop_ && !stopped_;
      }
      if (done) {
        close_channel(*ch);
        std::lock_guard lock(mutex_);
        channels_.erase(std::find(channels_.begin(), channels_.end(), ch));
      }
    }
    return active;
  }

  void handle(const std::shared_ptr<Channel>& ch, int worker, const Bytes& msg) {
    auto& log = get_logger();
    if (msg.empty()) return;
    std::span<const std::byte> in(msg);
    char kind = static_cast<char>(msg[0]);
    if (kind == 'q') {
      std::lock_guard lock(mutex_);
      ++ch->acks;
      return;
    }
    if (kind == 'k') return;
    if (kind == 'E') {
      auto error = mp::loads<TaskError>(in.subspan(9));
      log.error("mp: the pool initializer raised on MPI rank " + std::to_string(ch->first_rank + worker) + ": " +
                error.type_name + ": " + error.what);
      return;
    }
    if (kind != 'r' && kind != 'e') {
      log.warning("mp: an unknown message from MPI rank " + std::to_string(ch->first_rank + worker));
      return;
    }
    std::uint64_t seq = get_u64(in, 9);
    Flight flight;
    {
      std::lock_guard lock(mutex_);
      auto it = flights_.find(Key{ch.get(), seq});
      if (it == flights_.end()) {
        log.warning("mp: an unexpected answer from MPI rank " + std::to_string(ch->first_rank + worker));
        return;
      }
      flight = std::move(it->second);
      flights_.erase(it);
      --ch->load[flight.worker];
      if (flight.big) --ch->big[flight.worker];
      if (!flight.failed) --flight.pool->in_flight;
      // A rank is free: the engine thread assigns it the next chunk (this may be a waiting
      // thread in help(), which sends nothing).
      poke_locked();
    }
    if (flight.failed) return;
    auto body = in.subspan(17);
    if (kind == 'r') {
      flight.chunk.job->chunk_done(flight.chunk.chunk.index, body);
    } else {
      std::exception_ptr error;
      try {
        error = make_task_exception(mp::loads<TaskError>(body));
      } catch (...) {
        error = std::current_exception();
      }
      flight.chunk.job->chunk_failed(flight.chunk.chunk.index, error);
    }
  }

  // After terminate() with no engine thread to do it.
  void settle_terminated() {
    std::vector<std::pair<Chunk, std::exception_ptr>> failures;
    {
      std::lock_guard lock(mutex_);
      for (auto it = pools_.begin(); it != pools_.end();) {
        if (it->second->state != State::terminated) {
          ++it;
          continue;
        }
        auto pool = it->second;
        fail_terminated_locked(pool, failures);
        pool->finished = true;
        pool->changed.notify_all();
        it = pools_.erase(it);
      }
    }
    for (auto& [chunk, error] : failures) chunk.job->chunk_failed(chunk.chunk.index, error);
  }

  // MPI returned an error: nothing more can be trusted to arrive.
  void fail_everything(const std::string& what) {
    std::string why = what + " (the MPI pools of this process stopped)";
    get_logger().critical(why);
    std::vector<std::pair<Chunk, std::exception_ptr>> failures;
    {
      std::lock_guard lock(mutex_);
      broken_ = why;
      for (auto& [id, pool] : pools_) {
        for (auto& c : pool->queue) failures.emplace_back(std::move(c), std::make_exception_ptr(ProcessError(why)));
        pool->queue.clear();
        pool->finished = true;
        pool->changed.notify_all();
      }
      for (auto& [key, f] : flights_) {
        if (!f.failed) failures.emplace_back(std::move(f.chunk), std::make_exception_ptr(WorkerLostError(why)));
      }
      flights_.clear();
      pools_.clear();
    }
    for (auto& [chunk, error] : failures) chunk.job->chunk_failed(chunk.chunk.index, error);
  }

  using Key = std::pair<const Channel*, std::uint64_t>;

  std::mutex mutex_;
  std::condition_variable wake_;
  std::uint64_t epoch_ = 0;
  bool stop_ = false;
  bool stopped_ = false;
  std::string broken_;
  std::thread thread_;
  std::thread::id thread_id_;
  static inline std::atomic<bool> started_{false};
  std::shared_ptr<Channel> world_;
  std::vector<std::shared_ptr<Channel>> channels_;
  std::map<std::uint64_t, std::shared_ptr<PoolState>> pools_;
  std::map<Key, Flight> flights_;
  std::deque<Outgoing> outbox_;
  std::uint64_t next_pool_ = 0;
  std::uint64_t next_seq_ = 0;
  std::vector<std::unique_ptr<PendingSend>> sends_;  // posted, not complete
  std::mutex post_mutex_;                            // one thread posts the outbox at a time
};

std::string launch_hint(int n) {
  return "launch the program with mpirun, e.g. `mpirun -n " + std::to_string(n + 1) +
         " ./program` (as root add --allow-run-as-root), or use a local start method (fork, spawn, forkserver)";
}

std::shared_ptr<Channel> spawn_channel(int n) {
  std::string exe = spawn_executable();
  if (exe == "/proc/self/exe") exe = std::filesystem::read_symlink("/proc/self/exe").string();
  // Open MPI's MPI_Comm_spawn does not return when the program cannot start: check it first.
  std::error_code ec;
  auto perms = std::filesystem::status(exe, ec).permissions();
  if (ec || (perms & std::filesystem::perms::owner_exec) == std::filesystem::perms::none)
    throw ProcessError("mp: a Pool with the mpi start method cannot spawn workers: '" + exe +
                       "' is not an executable file; " + launch_hint(n));
  // And say so when it takes long: the MPI library's own messages above tell why.
  std::mutex watch_mutex;
  std::condition_variable watch_done;
  bool spawned = false;
  std::thread watchdog([&] {
    std::unique_lock lock(watch_mutex);
    if (!watch_done.wait_for(lock, std::chrono::seconds(30), [&] { return spawned; }))
      std::fprintf(stderr, "mp: MPI_Comm_spawn of %d pool worker(s) has not returned after 30 s (some MPI libraries "
                   "wait for good when a worker cannot start); %s\n", n, launch_hint(n).c_str());
  });
  struct StopWatch {
    std::mutex& m;
    std::condition_variable& cv;
    bool& flag;
    std::thread& t;
    ~StopWatch() {
      {
        std::lock_guard lock(m);
        flag = true;
      }
      cv.notify_all();
      t.join();
    }
  } stop_watch{watch_mutex, watch_done, spawned, watchdog};
  char marker[64] = {};
  std::snprintf(marker, sizeof marker, "%s", kWorkerMarker);
  char* args[] = {marker, nullptr};
  auto ch = std::make_shared<Channel>();
  std::vector<int> errors(static_cast<std::size_t>(n), MPI_SUCCESS);
  int rc = MPI_Comm_spawn(exe.c_str(), args, n, MPI_INFO_NULL, 0, MPI_COMM_SELF, &ch->comm, errors.data());
  if (rc == MPI_SUCCESS) {
    for (int e : errors) {
      if (e != MPI_SUCCESS) rc = e;
    }
  }
  if (rc != MPI_SUCCESS) {
    try {
      check(rc, "Comm_spawn");
    } catch (const std::exception& e) {
      throw ProcessError("mp: a Pool with the mpi start method outside mpirun could not spawn its " + std::to_string(n) +
                         " worker(s) (" + e.what() + "): " + launch_hint(n));
    }
  }
  MPI_Comm_set_errhandler(ch->comm, MPI_ERRORS_RETURN);
  ch->spawned = true;
  ch->first_rank = 0;
  ch->load.assign(static_cast<std::size_t>(n), 0);
  ch->big = ch->load;
  return ch;
}

class MpiPool final : public PoolBackend {
 public:
  explicit MpiPool(std::shared_ptr<PoolState> state) : state_(std::move(state)) {}
  ~MpiPool() override {
    try {
      Engine::get().terminate(state_);
    } catch (...) {
    }
  }
  int processes() const override { return state_->processes; }
  void submit(std::shared_ptr<PoolJob> job, std::vector<PoolChunk> chunks, bool after_close) override {
    Engine::get().submit(state_, job, header_for(*job), std::move(chunks), after_close);
  }
  void close() override { Engine::get().close(state_); }
  void terminate() override { Engine::get().terminate(state_); }
  void join() override { Engine::get().join(state_); }
  void help(bool (*done)(void*), void* ctx, std::optional<std::chrono::steady_clock::time_point> deadline) override {
    Engine::get().help(state_, done, ctx, deadline);
  }

 private:
  std::shared_ptr<const Bytes> header_for(const PoolJob& job) {
    std::lock_guard lock(mutex_);
    auto key = std::make_pair(reinterpret_cast<std::uintptr_t>(job.runner), reinterpret_cast<std::uintptr_t>(job.fn));
    auto it = headers_.find(key);
    if (it != headers_.end()) return it->second;
    return headers_.emplace(key, std::make_shared<const Bytes>(encode_task_header(job.runner, job.fn))).first->second;
  }

  std::shared_ptr<PoolState> state_;
  std::mutex mutex_;
  std::map<std::pair<std::uintptr_t, std::uintptr_t>, std::shared_ptr<const Bytes>> headers_;
};

std::once_flag g_exit_handler;

}  // namespace

void shut_down_parent() {
  // Only in the process that initialized MPI (not in a child that left by exit()).
  if (posix::current_pid() != init_pid()) return;
  std::string why;
  bool ok = true;
  Engine* engine = Engine::if_started();
  if (!engine && world_size() > 1) engine = &Engine::get();
  if (engine) ok = engine->shut_down(why);
  if (!ok) {
    std::fprintf(stderr, "%s\n", why.c_str());
    std::fflush(nullptr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  if (world_comm() != MPI_COMM_NULL) {
    MPI_Comm comm = world_comm();
    MPI_Comm_free(&comm);
  }
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

std::shared_ptr<PoolBackend> make_pool_backend(std::optional<int> processes, void (*initializer)(),
                                               std::optional<int> maxtasksperchild) {
  if (processes && *processes < 1) throw std::invalid_argument("mp: Pool: the number of processes must be at least 1");
  if (maxtasksperchild) {
    if (*maxtasksperchild < 1) throw std::invalid_argument("mp: Pool: maxtasksperchild must be at least 1");
    // A rank cannot be replaced: the option is accepted and has no effect (docs/cluster.rst).
    get_logger().debug("mp: maxtasksperchild has no effect with the mpi start method (ranks are not replaced)");
  }
  if (!initialized()) {
    if (launched_by_mpi_launcher())
      throw std::logic_error("mp: under mpirun, main() must call mp::freeze_support(argc, argv) first");
    ensure_initialized(nullptr, nullptr);
    std::call_once(g_exit_handler, [] { std::atexit([] { shut_down_parent(); }); });
  }
  auto& engine = Engine::get();
  if (world_comm() != MPI_COMM_NULL && world_size() > 1) {
    int n = processes.value_or(world_size() - 1);
    return std::make_shared<MpiPool>(engine.add_pool(engine.world_channel(), n, initializer));
  }
  int n = processes.value_or(cpu_count());
  if (!thread_multiple())
    throw ProcessError("mp: a Pool with the mpi start method outside mpirun spawns its workers, which needs an MPI "
                       "library with MPI_THREAD_MULTIPLE; " + launch_hint(n));
  auto channel = spawn_channel(n);
  return std::make_shared<MpiPool>(engine.add_pool(channel, n, initializer));
}

}  // namespace mp::detail::mpi
