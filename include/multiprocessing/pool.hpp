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
// the chunks, receives the results and runs the callbacks.
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
#include <type_traits>
#include <utility>
#include <vector>

namespace mp {

struct PoolOptions {
  std::optional<int> processes;     // default cpu_count()
  void (*initializer)() = nullptr;  // runs once in each worker before its first task
  std::optional<int> maxtasksperchild;  // a worker is replaced after this many tasks (chunks)
  std::optional<Context> context;   // default: the default start method
};

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
    std::unique_lock lock(s.mutex);
    if (!timeout) {
      s.changed.wait(lock, [&] { return s.ready; });
      return true;
    }
    return s.changed.wait_for(lock, *timeout, [&] { return s.ready; });
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
  bool has_more() const {
    auto& s = state();
    std::lock_guard lock(s.mutex);
    return s.yielded < s.total;
  }
  R next_impl(Timeout timeout) {
    auto& s = state();
    std::unique_lock lock(s.mutex);
    if (s.yielded >= s.total) throw StopIteration("mp: IMapIterator::next() past the end");
    auto available = [&] { return s.ordered ? s.by_position.count(s.yielded) != 0 : !s.arrived.empty(); };
    if (!timeout) {
      s.changed.wait(lock, available);
    } else if (!s.changed.wait_for(lock, *timeout, available)) {
      throw TimeoutError("mp: IMapIterator::next() timed out");
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
    lock.unlock();
    if (item.index() == 1) std::rethrow_exception(std::get<1>(item));
    if constexpr (!std::is_void_v<R>) return std::move(std::get<0>(item));
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

  /// f(x) for every x, yielded in order as they arrive. The items are sent at once.
  template <class F, class Range>
  IMapIterator<result_t<F, item_t<Range>, false>> imap(F f, Range&& iterable, std::size_t chunksize = 1) {
    return imap_impl<F, item_t<Range>>(f, iterable, chunksize, true);
  }
  /// The same, yielded in the order they finish.
  template <class F, class Range>
  IMapIterator<result_t<F, item_t<Range>, false>> imap_unordered(F f, Range&& iterable, std::size_t chunksize = 1) {
    return imap_impl<F, item_t<Range>>(f, iterable, chunksize, false);
  }

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
    using Fn = std::decay_t<F>;
    constexpr bool is_function_pointer = std::is_pointer_v<Fn> && std::is_function_v<std::remove_pointer_t<Fn>>;
    constexpr bool is_stateless = std::is_class_v<Fn> && std::is_empty_v<Fn> && std::is_default_constructible_v<Fn>;
    static_assert(is_function_pointer || is_stateless,
                  "mp::Pool: a task crosses to the workers by name: use a function pointer, a captureless lambda or "
                  "a default-constructible stateless function object");
    static_assert(detail::is_serializable_v<Item>, "mp::Pool: the task's arguments must be serializable by mp::dumps");
    static_assert(std::is_void_v<R> || detail::is_serializable_v<R>,
                  "mp::Pool: the task's result must be void or serializable by mp::dumps");
  }

  template <class F, class Item, bool kStar>
  static std::shared_ptr<detail::PoolJob> set_task(std::shared_ptr<detail::PoolJob> job, F f) {
    using Fn = std::decay_t<F>;
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
  IMapIterator<result_t<F, Item, false>> imap_impl(F f, const Range& items, std::size_t chunksize, bool ordered) {
    using R = result_t<F, Item, false>;
    check_task<F, Item, R>();
    if (chunksize == 0) throw std::invalid_argument("mp: Pool::imap: chunksize must be at least 1");
    std::vector<std::size_t> sizes;
    auto chunks = make_chunks<Item>(items, chunksize, sizes);
    std::vector<std::size_t> starts(sizes.size());
    std::size_t total = 0;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      starts[i] = total;
      total += sizes[i];
    }
    auto state = std::make_shared<detail::PoolIMapState<R>>();
    state->ordered = ordered;
    state->total = total;
    auto job = std::make_shared<detail::PoolIMapJob<R>>(state, std::move(starts), std::move(sizes));
    if (chunks.empty()) {
      check_running();
    } else {
      submit(set_task<F, Item, false>(std::move(job), f), std::move(chunks));
    }
    return IMapIterator<R>(std::move(state));
  }

  /// Queues the chunks of a job; std::logic_error when the pool is closed or terminated.
  void submit(std::shared_ptr<detail::PoolJob> job, std::vector<detail::PoolChunk> chunks);
  void check_running() const;
  std::size_t processes() const;

  std::shared_ptr<Impl> impl_;
};

}  // namespace mp
