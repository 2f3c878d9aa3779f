// Process pools (Python: multiprocessing.pool, the Pool class, AsyncResult and IMapIterator).
//
//   mp::Pool pool(4);
//   std::vector<int> squares = pool.map(square, xs);        // chunked over 4 workers
//   auto r = pool.apply_async(add, 1, 2);                   // r.get() == 3
//   for (int v : pool.imap(square, xs)) ...                 // in order, as they come
//
// Tasks cross to the workers by name under every start method (fork, spawn, forkserver): a
// function pointer, a captureless lambda or a default-constructible stateless function object;
// arguments and results cross by the native codec (mp::dumps). Each worker has its own pipe to
// the pool, so the pool knows which tasks each worker holds: when a worker dies mid-task
// (killed, crashed, std::exit), exactly those tasks fail with WorkerLostError, the worker is
// replaced and the pool stays usable. A thread of the pool in the parent (the dispatcher) sends
// the chunks, receives the results and runs the callbacks; a thread waiting for a result reads it
// from its worker's pipe itself when it can. Beyond Python, all off by default (docs/pool.rst):
// imap's bounded lazy input (buffersize), per-task time limits (PoolOptions, with_time_limits),
// pool::worker_id(), worker state and exit hooks, insights(), a progress display, Ctrl-C.
#pragma once

#include <multiprocessing/base.hpp>
#include <multiprocessing/context.hpp>
#include <multiprocessing/detail/pool_job.hpp>

#include <algorithm>
#include <iterator>
#include <memory>
#include <optional>
#include <ranges>
#include <tuple>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace mp {

namespace detail {
struct PoolStateCache {
  std::shared_ptr<void> object;
  const std::type_info* type = nullptr;
};
PoolStateCache& pool_worker_state_cache() noexcept;
/// A worker state as it travels: the type's name, then the value's encoding.
Bytes pool_state_encode(const std::type_info& type, const Bytes& value);
/// In a worker: the encoding of its state; std::logic_error without one, std::invalid_argument
/// when type is not the type that was set.
std::span<const std::byte> pool_state_value(const std::type_info& type);
namespace managers {
template <class R>
class PoolIMapOf;  // (managers.hpp: a manager's imap, which takes IMapIterator's results as they are)
}  // namespace managers
}  // namespace detail

struct PoolOptions {
  std::optional<int> processes;     // default cpu_count()
  void (*initializer)() = nullptr;  // runs once in each worker before its first task
  std::optional<int> maxtasksperchild;  // a worker is replaced after this many tasks (chunks)
  std::optional<Context> context;   // default: the default start method
  // Beyond Python (all off by default; see docs/pool.rst):
  std::optional<Duration> soft_time_limit;  // per task: then pool::soft_time_limit_exceeded() is true
  std::optional<Duration> time_limit;       // per task: then its worker is killed (TaskTimeLimitExceeded)
  std::shared_ptr<const Bytes> worker_state;  // encoded; see set_worker_state and pool::worker_state<T>()
  Bytes (*worker_exit)() = nullptr;  // runs in each worker that exits politely; see Pool::exit_results<T>()
  bool interrupt_on_sigint = false;  // SIGINT in this process terminates the pool (KeyboardInterrupt)
  int progress_fd = -1;  // >= 0: a one-line progress display (count, rate, ETA) written there, e.g. 2
  bool progress_insights = false;  // the progress line also shows PoolInsights::shares() live

  /// Each worker receives value once (encoded by mp::dumps) and tasks read it with
  /// pool::worker_state<T>() instead of receiving it as an argument every time.
  template <class T>
  void set_worker_state(const T& value) {
    worker_state = std::make_shared<const Bytes>(detail::pool_state_encode(typeid(T), mp::dumps(value)));
  }
};

/// Per-task time limits of a call (Pool::with_time_limits); unset: the pool's.
struct TimeLimits {
  std::optional<Duration> soft = std::nullopt;
  std::optional<Duration> hard = std::nullopt;
};

/// What one worker id did (Pool::insights()).
struct WorkerInsights {
  int worker_id = 0;
  int pid = 0;               // the current (or last) process with this id
  int starts = 0;            // processes started for this id
  std::int64_t chunks = 0;   // chunks completed (tasks, with chunksize 1)
  Duration start_up{0};      // from start() to ready (initializer included), summed
  Duration working{0};       // running chunks, decoding and encoding included
  Duration serializing{0};   // of working: decoding items and encoding results (sampled for tiny chunks)
  Duration waiting{0};       // alive but not working
};
struct PoolInsights {
  std::vector<WorkerInsights> workers;
  /// The sums over all workers (worker_id -1, pid 0).
  WorkerInsights total() const;
  /// "working 97% (serializing 3%), waiting 3%": shares of the workers' time alive; empty
  /// before any worker is ready.
  std::string shares() const;
  /// A printed summary: one line per worker, the totals and their shares.
  std::string summary() const;
};

/// SIGINT reached a pool made with interrupt_on_sigint: the pool was terminated; its pending
/// tasks fail with this. Not a ProcessError, so that catching task errors does not swallow it.
class KeyboardInterrupt : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A task ran past its hard time limit: its worker was killed and replaced.
class TaskTimeLimitExceeded : public TimeoutError {
 public:
  using TimeoutError::TimeoutError;
};
/// Thrown by pool::check_soft_time_limit() in a task that ran past its soft time limit.
class SoftTimeLimitExceeded : public TimeoutError {
 public:
  using TimeoutError::TimeoutError;
};

/// Inside a task (in a pool worker).
namespace pool {
/// This worker's number, 0..processes-1, stable across replacements; -1 outside a pool worker.
int worker_id() noexcept;
/// Whether the running task has passed its soft time limit (a task polls it at safe points).
bool soft_time_limit_exceeded() noexcept;
/// Throws SoftTimeLimitExceeded when soft_time_limit_exceeded().
void check_soft_time_limit();
template <class T>
const T& worker_state();
}  // namespace pool


/// The result of apply_async / map_async. Copies share the result.
template <class R>
class AsyncResult {
 public:
  /// An empty result whose use throws std::logic_error.
  AsyncResult() = default;
  explicit AsyncResult(std::shared_ptr<detail::PoolResultState<R>> state) : state_(std::move(state)) {}

  /// The value, waiting for it; rethrows the task's exception.
  R get() { return get_impl(std::nullopt); }
  /// TimeoutError when the result is not ready within timeout.
  R get(Duration timeout) { return get_impl(timeout); }
  void wait() { (void)wait_impl(std::nullopt); }
  bool wait(Duration timeout) { return wait_impl(timeout); }
  bool ready() const {
    auto& s = state();
    std::lock_guard lock(s.mutex);
    return s.ready;
  }
  /// Whether the task succeeded; std::logic_error before ready().
  bool successful() const {
    auto& s = state();
    std::lock_guard lock(s.mutex);
    if (!s.ready) throw std::logic_error("mp: AsyncResult::successful() called before the result is ready");
    return !s.error;
  }

 private:
  detail::PoolResultState<R>& state() const {
    if (!state_) throw std::logic_error("mp: use of an empty AsyncResult");
    return *state_;
  }
  bool wait_impl(Timeout timeout) {
    auto& s = state();
    std::optional<std::chrono::steady_clock::time_point> deadline;
    if (timeout) deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::nanoseconds>(*timeout);
    {
      std::lock_guard lock(s.mutex);
      if (s.ready) return true;
    }
    // Read the result from the worker's pipe on this thread when possible (no thread hop).
    if (auto waiter = s.waiter.lock()) {
      auto done = [](void* p) {
        auto* st = static_cast<detail::PoolResultState<R>*>(p);
        std::lock_guard lock(st->mutex);
        return st->ready;
      };
      waiter->help(s.job, done, &s, deadline);
    }
    std::unique_lock lock(s.mutex);
    if (!deadline) {
      s.changed.wait(lock, [&] { return s.ready; });
      return true;
    }
    return s.changed.wait_until(lock, *deadline, [&] { return s.ready; });
  }
  R get_impl(Timeout timeout) {
    if (!wait_impl(timeout)) throw TimeoutError("mp: AsyncResult::get() timed out");
    auto& s = state();
    std::lock_guard lock(s.mutex);
    if (s.error) std::rethrow_exception(s.error);
    if constexpr (!std::is_void_v<R>) return *s.value;
  }

  std::shared_ptr<detail::PoolResultState<R>> state_;
};

/// The results of imap / imap_unordered: an input range. Copies share the position.
template <class R>
class IMapIterator {
 public:
  /// An empty iterator whose use throws std::logic_error.
  IMapIterator() = default;
  explicit IMapIterator(std::shared_ptr<detail::PoolIMapState<R>> state) : state_(std::move(state)) {}

  /// The next result (rethrowing its task's exception); StopIteration past the end.
  R next() { return next_impl(std::nullopt); }
  /// TimeoutError when the next result does not arrive within timeout.
  R next(Duration timeout) { return next_impl(timeout); }

  /// Input iterator of the range-for; each step calls next(). Rethrows a task's exception.
  class iterator {
   public:
    using value_type = detail::PoolStored<R>;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(IMapIterator* owner) : owner_(owner) { advance(); }
    value_type operator*() const { return std::move(*current_); }
    iterator& operator++() {
      advance();
      return *this;
    }
    void operator++(int) { advance(); }
    friend bool operator==(const iterator& it, std::default_sentinel_t) { return !it.current_; }

   private:
    void advance() {
      current_.reset();
      if (!owner_->has_more()) return;
      if constexpr (std::is_void_v<R>) {
        owner_->next();
        current_.emplace();
      } else {
        current_.emplace(owner_->next());
      }
    }
    IMapIterator* owner_ = nullptr;
    mutable std::optional<value_type> current_;
  };
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() { return {}; }

 private:
  detail::PoolIMapState<R>& state() const {
    if (!state_) throw std::logic_error("mp: use of an empty IMapIterator");
    return *state_;
  }
  // Tops up the input: keeps `window` items submitted ahead of the consumer, refilling in bursts
  // once half of it was consumed.
  static void top_up(detail::PoolIMapState<R>& s) {
    std::lock_guard feed_lock(s.feed_mutex);
    if (!s.feed) return;
    std::size_t ahead, yielded;
    {
      std::lock_guard lock(s.mutex);
      yielded = s.yielded;
      ahead = s.submitted - s.yielded;
    }
    if (s.window != 0 && ahead >= std::max<std::size_t>(1, s.window / 2)) return;
    if (s.feed(s.window == 0 ? detail::PoolIMapState<R>::kUnknown : yielded + s.window)) s.feed = nullptr;
  }
  static bool available(detail::PoolIMapState<R>& s) {
    return s.ordered ? s.by_position.count(s.yielded) != 0 : !s.arrived.empty();
  }
  bool has_more() const {
    auto& s = state();
    top_up(s);
    std::lock_guard lock(s.mutex);
    return s.yielded < s.total;
  }
  R next_impl(Timeout timeout) {
    auto item = take(timeout);
    if (!item) throw TimeoutError("mp: IMapIterator::next() timed out");
    if (item->index() == 1) std::rethrow_exception(std::get<1>(*item));
    if constexpr (!std::is_void_v<R>) return std::move(std::get<0>(*item));
  }
  // The next result as it arrived (its task's exception not thrown); nullopt when timeout ran
  // out first; StopIteration past the end. (A manager's imap proxy relays it as it is.)
  template <class>
  friend class detail::managers::PoolIMapOf;
  std::optional<typename detail::PoolIMapState<R>::Item> take(Timeout timeout) {
    auto& s = state();
    std::optional<std::chrono::steady_clock::time_point> deadline;
    if (timeout) deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::nanoseconds>(*timeout);
    top_up(s);
    std::unique_lock lock(s.mutex);
    if (s.yielded >= s.total) throw StopIteration("mp: IMapIterator::next() past the end");
    if (!available(s)) {
      lock.unlock();
      if (auto waiter = s.waiter.lock()) {
        auto done = [](void* p) {
          auto* st = static_cast<detail::PoolIMapState<R>*>(p);
          std::lock_guard l(st->mutex);
          return available(*st);
        };
        waiter->help(s.job, done, &s, deadline);
      }
      lock.lock();
      auto ok = [&] { return available(s); };
      if (!deadline) {
        s.changed.wait(lock, ok);
      } else if (!s.changed.wait_until(lock, *deadline, ok)) {
        return std::nullopt;
      }
    }
    typename detail::PoolIMapState<R>::Item item;
    if (s.ordered) {
      auto node = s.by_position.extract(s.yielded);
      item = std::move(node.mapped());
    } else {
      item = std::move(s.arrived.front());
      s.arrived.pop_front();
    }
    ++s.yielded;
    return item;
  }

  std::shared_ptr<detail::PoolIMapState<R>> state_;
};

class Pool {
  template <class F, class Item, bool kStar>
  using result_t = detail::pool_result_t<std::decay_t<F>, Item, kStar>;
  template <class Range>
  using item_t = std::decay_t<std::ranges::range_reference_t<Range>>;
  template <class R>
  using map_out_t = std::conditional_t<std::is_void_v<R>, void, std::vector<R>>;

 public:
  /// processes workers (default cpu_count()) of the default start method. std::invalid_argument
  /// when processes < 1.
  explicit Pool(std::optional<int> processes = std::nullopt);
  explicit Pool(PoolOptions options);
  /// The last copy terminates the pool, as leaving Python's `with Pool() as p:` block: pending
  /// tasks fail, workers are stopped; returns promptly even while tasks run forever.
  ~Pool();
  Pool(const Pool&) = default;
  Pool& operator=(const Pool&) = default;
  Pool(Pool&&) noexcept = default;
  Pool& operator=(Pool&&) noexcept = default;

  /// f(args...) in a worker, waiting for the result.
  template <class F, class... A>
  auto apply(F f, A&&... args) {
    return apply_async(f, std::forward<A>(args)...).get();
  }

  template <class F, class... A>
  auto apply_async(F f, A&&... args) {
    using Args = std::tuple<std::decay_t<A>...>;
    return apply_async(f, Args(std::forward<A>(args)...), Callbacks<result_t<F, Args, true>>{});
  }

  /// f(args...) in a worker; callbacks run in the parent before the result becomes ready.
  template <class F, class... A>
  AsyncResult<result_t<F, std::tuple<A...>, true>> apply_async(
      F f, std::tuple<A...> args, Callbacks<result_t<F, std::tuple<A...>, true>> callbacks) {
    using Item = std::tuple<A...>;
    using R = result_t<F, Item, true>;
    check_task<F, Item, R>();
    auto state = std::make_shared<detail::PoolResultState<R>>();
    state->callbacks = std::move(callbacks);
    auto job = std::make_shared<detail::PoolApplyJob<R>>(state);
    state->waiter = waiter();
    state->job = job.get();
    std::vector<detail::PoolChunk> chunks(1);
    detail::pool_append(chunks[0].items, std::uint64_t{1});
    detail::pool_append(chunks[0].items, args);
    submit(set_task<F, Item, true>(std::move(job), f), std::move(chunks));
    return AsyncResult<R>(std::move(state));
  }

  /// f(x) for every x, in order. chunksize 0 picks one as Python does.
  template <class F, class Range>
  auto map(F f, const Range& iterable, std::size_t chunksize = 0) {
    return map_async(f, iterable, chunksize).get();
  }
  template <class F, class Range>
  auto map_async(F f, const Range& iterable, std::size_t chunksize = 0,
                 Callbacks<map_out_t<result_t<F, item_t<const Range&>, false>>> callbacks = {}) {
    return map_impl<F, item_t<const Range&>, false>(f, iterable, chunksize, std::move(callbacks));
  }
  /// f(args...) for every tuple of arguments, in order.
  template <class F, class Range>
  auto starmap(F f, const Range& tuples, std::size_t chunksize = 0) {
    return starmap_async(f, tuples, chunksize).get();
  }
  template <class F, class Range>
  auto starmap_async(F f, const Range& tuples, std::size_t chunksize = 0,
                     Callbacks<map_out_t<result_t<F, item_t<const Range&>, true>>> callbacks = {}) {
    return map_impl<F, item_t<const Range&>, true>(f, tuples, chunksize, std::move(callbacks));
  }

  /// f(x) for every x, yielded in order as they arrive. The input is read lazily: at most
  /// buffersize chunks (0: kDefaultIMapBuffer) are submitted ahead of what the iterator yielded,
  /// so an endless range works in constant memory. An lvalue range must outlive the iterator; an
  /// rvalue range is moved into it.
  template <class F, class Range>
  IMapIterator<result_t<F, item_t<Range>, false>> imap(F f, Range&& iterable, std::size_t chunksize = 1,
                                                       std::size_t buffersize = 0) {
    return imap_impl<F, item_t<Range>>(f, std::forward<Range>(iterable), chunksize, buffersize, true);
  }
  /// The same, yielded in the order they finish.
  template <class F, class Range>
  IMapIterator<result_t<F, item_t<Range>, false>> imap_unordered(F f, Range&& iterable, std::size_t chunksize = 1,
                                                                 std::size_t buffersize = 0) {
    return imap_impl<F, item_t<Range>>(f, std::forward<Range>(iterable), chunksize, buffersize, false);
  }
  /// imap's default bound on the chunks submitted ahead of the consumer.
  static constexpr std::size_t kDefaultIMapBuffer = 1024;

  /// A handle to the same pool whose calls carry these per-task time limits (instead of the
  /// pool's): pool.with_time_limits({.soft = 1s, .hard = 2s}).map(f, xs).
  Pool with_time_limits(TimeLimits limits) const {
    Pool p = *this;
    p.limits_ = limits;
    return p;
  }

  /// Per-worker counts and times since the pool started (workers replaced are added to their id).
  PoolInsights insights() const;
  /// What the workers' exit hooks (PoolOptions::worker_exit) returned, decoded as T, one per
  /// worker that exited politely (close(), maxtasksperchild) so far.
  template <class T>
  std::vector<T> exit_results() const;

  /// No more tasks may be submitted (std::logic_error); the workers exit once the work is done.
  void close();
  /// Stops the workers now; tasks not finished fail (WorkerLostError / ProcessError).
  void terminate();
  /// Waits for the workers to exit; std::logic_error unless close() or terminate() came first.
  void join();

  struct Impl;

 private:
  template <class F, class Item, class R>
  static constexpr void check_task() {
    static_assert(detail::is_task_by_name_v<F>,
                  "mp::Pool: a task crosses to the workers by name: use a function pointer, a captureless lambda or "
                  "a default-constructible stateless function object");
    static_assert(detail::is_serializable_v<Item>, "mp::Pool: the task's arguments must be serializable by mp::dumps");
    static_assert(std::is_void_v<R> || detail::is_serializable_v<R>,
                  "mp::Pool: the task's result must be void or serializable by mp::dumps");
  }

  template <class F, class Item, bool kStar>
  std::shared_ptr<detail::PoolJob> set_task(std::shared_ptr<detail::PoolJob> job, F f) const {
    using Fn = std::decay_t<F>;
    job->soft_time_limit = limits_.soft;
    job->time_limit = limits_.hard;
    job->runner = &detail::pool_runner<Fn, Item, kStar>;
    if constexpr (std::is_pointer_v<Fn>) {
      job->fn = reinterpret_cast<detail::ErasedFn>(f);
    } else {
      (void)f;
    }
    return job;
  }

  /// The chunks of items: chunk sizes as Python's Pool._map_async chooses them when chunksize is 0.
  template <class Item, class Range>
  std::vector<detail::PoolChunk> make_chunks(const Range& items, std::size_t chunksize, std::vector<std::size_t>& sizes) {
    std::size_t count = 0;
    if constexpr (std::ranges::sized_range<const Range&>) {
      count = static_cast<std::size_t>(std::ranges::size(items));
    } else {
      for (auto it = std::ranges::begin(items); it != std::ranges::end(items); ++it) ++count;
    }
    if (chunksize == 0) {
      std::size_t per = 4 * processes();
      chunksize = count / per + (count % per != 0 ? 1 : 0);
      if (chunksize == 0) chunksize = 1;
    }
    std::vector<detail::PoolChunk> chunks;
    chunks.reserve(count / chunksize + 1);
    if constexpr (std::ranges::contiguous_range<const Range&> && detail::codec::is_block_element_v<Item> &&
                  std::is_same_v<std::remove_cvref_t<std::ranges::range_reference_t<const Range&>>, Item>) {
      // Arithmetic items: each chunk is its size and one block copy (the vector encoding).
      const Item* data = std::ranges::data(items);
      for (std::size_t first = 0; first < count; first += chunksize) {
        std::size_t n = std::min(chunksize, count - first);
        auto& chunk = chunks.emplace_back();
        chunk.index = chunks.size() - 1;
        sizes.push_back(n);
        detail::pool_append(chunk.items, static_cast<std::uint64_t>(n));
        const auto* bytes = reinterpret_cast<const std::byte*>(data + first);
        chunk.items.insert(chunk.items.end(), bytes, bytes + n * sizeof(Item));
      }
      return chunks;
    }
    std::size_t in_chunk = 0;
    for (auto&& x : items) {
      if (in_chunk == 0) {
        chunks.emplace_back();
        chunks.back().index = chunks.size() - 1;
        std::size_t n = std::min(chunksize, count - (chunks.size() - 1) * chunksize);
        sizes.push_back(n);
        detail::pool_append(chunks.back().items, static_cast<std::uint64_t>(n));
      }
      detail::pool_append(chunks.back().items, static_cast<const Item&>(x));
      if (++in_chunk == chunksize) in_chunk = 0;
    }
    return chunks;
  }

  template <class F, class Item, bool kStar, class Range, class C>
  auto map_impl(F f, const Range& items, std::size_t chunksize, C callbacks) {
    using R = result_t<F, Item, kStar>;
    using Out = map_out_t<R>;
    check_task<F, Item, R>();
    std::vector<std::size_t> sizes;
    auto chunks = make_chunks<Item>(items, chunksize, sizes);
    auto state = std::make_shared<detail::PoolResultState<Out>>();
    state->callbacks = std::move(callbacks);
    auto job = std::make_shared<detail::PoolMapJob<R>>(state, chunks.size());
    state->waiter = waiter();
    state->job = job.get();
    if (chunks.empty()) {
      check_running();
      if constexpr (std::is_void_v<R>) {
        state->succeed(std::monostate{});
      } else {
        state->succeed(std::vector<R>{});
      }
    } else {
      submit(set_task<F, Item, kStar>(std::move(job), f), std::move(chunks));
    }
    return AsyncResult<Out>(std::move(state));
  }

  template <class F, class Item, class Range>
  IMapIterator<result_t<F, Item, false>> imap_impl(F f, Range&& items, std::size_t chunksize, std::size_t buffersize,
                                                   bool ordered) {
    using R = result_t<F, Item, false>;
    using State = detail::PoolIMapState<R>;
    check_task<F, Item, R>();
    if (chunksize == 0) throw std::invalid_argument("mp: Pool::imap: chunksize must be at least 1");
    check_running();
    auto state = std::make_shared<State>();
    state->ordered = ordered;
    state->window = (buffersize == 0 ? kDefaultIMapBuffer : buffersize) * chunksize;
    auto job = set_task<F, Item, false>(std::make_shared<detail::PoolIMapJob<R>>(state), f);
    job->lazy_input = true;
    state->waiter = waiter();
    state->job = job.get();
    // The feeder owns an rvalue range (a view, a moved container) and refers to an lvalue one.
    using Held = std::conditional_t<std::is_lvalue_reference_v<Range>, std::remove_reference_t<Range>*,
                                    std::remove_cvref_t<Range>>;
    struct Feeder {
      Held range;
      std::optional<std::ranges::iterator_t<std::remove_pointer_t<Held>>> it;
      auto& get() {
        if constexpr (std::is_pointer_v<Held>) {
          return *range;
        } else {
          return range;
        }
      }
    };
    auto feeder = [&] {
      if constexpr (std::is_lvalue_reference_v<Range>) {
        return std::make_shared<Feeder>(Feeder{&items, std::nullopt});
      } else {
        return std::make_shared<Feeder>(Feeder{std::move(items), std::nullopt});
      }
    }();
    std::weak_ptr<Impl> pool = impl_;
    State* raw = state.get();  // the feed lives in the state: a plain pointer back is enough
    // Submits chunks until `upto` items were submitted; true once the input ended (or failed).
    state->feed = [feeder, job, pool, raw, chunksize](std::size_t upto) -> bool {
      State& s = *raw;
      std::size_t first;
      {
        std::lock_guard lock(s.mutex);
        first = s.submitted;
      }
      std::vector<detail::PoolChunk> chunks;
      std::vector<std::pair<std::size_t, std::size_t>> spans;
      bool ended = false;
      std::exception_ptr error;
      try {
        auto& range = feeder->get();
        if (!feeder->it) feeder->it = std::ranges::begin(range);
        auto& it = *feeder->it;
        auto end = std::ranges::end(range);
        std::size_t position = first;
        while (position < upto) {
          if (it == end) {
            ended = true;
            break;
          }
          std::size_t n = 0;
          Bytes body;
          try {
            for (; n < chunksize && it != end; ++n, ++it) detail::pool_append(body, static_cast<const Item&>(*it));
          } catch (...) {
            error = std::current_exception();  // the items read before it still run
          }
          if (n > 0) {
            auto& chunk = chunks.emplace_back();
            chunk.index = position;
            detail::pool_append(chunk.items, static_cast<std::uint64_t>(n));
            chunk.items.insert(chunk.items.end(), body.begin(), body.end());
            spans.emplace_back(position, n);
            position += n;
          }
          if (error) break;
          if (n < chunksize) {
            ended = true;
            break;
          }
        }
      } catch (...) {
        error = std::current_exception();
      }
      if (!chunks.empty()) {
        {
          std::lock_guard lock(s.mutex);
          for (auto& [p, n] : spans) s.add_span(p, p, n);
        }
        try {
          auto impl = pool.lock();
          if (!impl) throw ProcessError("mp: the pool was terminated before imap's input was submitted");
          Pool(FromImpl{}, std::move(impl)).submit(job, std::move(chunks));
        } catch (...) {
          std::lock_guard lock(s.mutex);
          for (auto& [p, n] : spans) s.spans.erase(p);
          s.submitted = first;
          error = std::current_exception();
          ended = false;
        }
      }
      if (error) {
        std::lock_guard lock(s.mutex);
        s.end_with(error);
        return true;
      }
      if (ended) {
        std::lock_guard lock(s.mutex);
        s.total = s.submitted;
        s.changed.notify_all();
      }
      return ended;
    };
    if (state->feed(state->window)) state->feed = nullptr;  // the first chunks go now, as Python's
    return IMapIterator<R>(std::move(state));
  }

  struct FromImpl {};
  Pool(FromImpl, std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  /// Queues the chunks of a job; std::logic_error when the pool is closed or terminated. Every
  /// task enters the pool here.
  void submit(std::shared_ptr<detail::PoolJob> job, std::vector<detail::PoolChunk> chunks);
  /// The pool as seen by threads waiting for results.
  std::weak_ptr<detail::PoolWaiter> waiter() const;
  void check_running() const;
  std::size_t processes() const;
  std::vector<Bytes> exit_results_bytes() const;

  std::shared_ptr<Impl> impl_;
  TimeLimits limits_;
};

/// The per-worker state a task reads (set with PoolOptions::set_worker_state): decoded once per
/// worker on first use. std::logic_error outside a pool worker or when the pool has no state;
/// std::invalid_argument when T is not the type that was set.
template <class T>
const T& pool::worker_state() {
  auto& cache = detail::pool_worker_state_cache();
  if (!cache.object || *cache.type != typeid(T)) {
    cache.object = std::make_shared<T>(mp::loads<T>(detail::pool_state_value(typeid(T))));
    cache.type = &typeid(T);
  }
  return *static_cast<const T*>(cache.object.get());
}

template <class T>
std::vector<T> Pool::exit_results() const {
  std::vector<T> out;
  for (auto& bytes : exit_results_bytes()) out.push_back(mp::loads<T>(std::span<const std::byte>(bytes)));
  return out;
}

}  // namespace mp
