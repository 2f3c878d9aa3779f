// Template bodies of mp::Pool: how a task crosses to a worker and how its results come back.
//
// A call (apply_async, map_async, imap, ...) is one PoolJob cut into chunks of argument tuples.
// A worker receives a chunk together with two code references: the pool_runner<Fn, Item, star>
// instantiation for the exact types of the call, and the task itself when it is a function
// pointer. Both are found in the worker by (module, offset) as a spawn child finds its target,
// so the worker decodes exactly the types the parent encoded. The runner calls the task on every
// item and encodes, per item, either the result or a description of the exception it threw
// (TaskError); the parent's PoolJob decodes that and rebuilds the exception.
#pragma once

#include <multiprocessing/base.hpp>
#include <multiprocessing/detail/process_target.hpp>
#include <multiprocessing/reduction.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <variant>
#include <vector>

namespace mp {

/// What runs in the parent when a task (or a whole map) has finished; see Pool::apply_async.
template <class R>
struct Callbacks {
  std::function<void(const R&)> callback = {};              // the task succeeded
  std::function<void(std::exception_ptr)> error_callback = {};  // the task failed
};
/// Tasks returning void: the callback takes nothing.
template <>
struct Callbacks<void> {
  std::function<void()> callback = {};
  std::function<void(std::exception_ptr)> error_callback = {};
};

namespace detail {

/// A result as stored and encoded: void results are std::monostate.
template <class R>
using PoolStored = std::conditional_t<std::is_void_v<R>, std::monostate, R>;

/// An exception thrown by a task, as it crosses back to the parent.
struct TaskError {
  std::int32_t kind = 0;  // which standard type it was (0: none of them; see src/pool.cpp)
  std::string type_name;  // demangled
  std::string what;
  std::string traceback;  // the worker and the task

  template <class Archive>
  void serialize(Archive& ar) {
    ar(kind, type_name, what, traceback);
  }
};

/// In a catch block of a worker: the exception being handled, described. task is the task's type.
TaskError describe_current_exception(const std::type_info& task);
/// In the parent: the exception to rethrow for a TaskError (the same standard type, or RemoteError).
std::exception_ptr make_task_exception(const TaskError& error);

/// Appends the encoding of obj to out (dump_into replaces out's content).
template <class T>
void pool_append(Bytes& out, const T& obj) {
  codec::CodecOutputArchive archive(out);
  archive(obj);
}

/// Runs a chunk in a worker: decodes the items, calls the task on each, appends the encoded
/// std::vector<std::variant<result, TaskError>> to out.
using PoolRunner = void (*)(ErasedFn fn, std::span<const std::byte> items, Bytes& out);

/// A task that crosses to another process by name: a function pointer, or a stateless function
/// object (a captureless lambda) that the other side default-constructs.
template <class F, class Fn = std::decay_t<F>>
inline constexpr bool is_task_by_name_v =
    (std::is_pointer_v<Fn> && std::is_function_v<std::remove_pointer_t<Fn>>) ||
    (std::is_class_v<Fn> && std::is_empty_v<Fn> && std::is_default_constructible_v<Fn>);

template <class Fn, class Item, bool kStar>
auto pool_call(Fn& fn, Item& item) {
  if constexpr (kStar) {
    return std::apply(fn, item);
  } else {
    return std::invoke(fn, item);
  }
}

template <class Fn, class Item, bool kStar>
using pool_result_t = decltype(pool_call<Fn, Item, kStar>(std::declval<Fn&>(), std::declval<Item&>()));

/// What a worker shares with its pool (a RawValue): the chunks it began and when and which its
/// current task started, and the task whose soft time limit passed (set by the pool).
struct WorkerSlot {
  std::int64_t chunks_started = 0;
  std::int64_t tasks_started = 0;
  std::int64_t task_started_ns = 0;  // steady_clock
  std::int64_t soft_expired_task = -1;
  std::int64_t serializing_ns = 0;  // decoding items and encoding results, summed (insights)
  // Messages written to each end of the worker's pipe, counted after each write: a side waiting
  // for the other spins on these words before it sleeps in poll (src/pool.cpp), and reads what
  // they announce without polling first.
  std::int64_t messages_sent = 0;  // by the pool, to the worker
  std::int64_t results_sent = 0;   // by the worker, to the pool
};

/// In a worker: a task of the running chunk is about to start (per-task time limits and
/// insights read what this records). Does nothing in the pool's own process.
void pool_task_started() noexcept;

/// In a worker: a decoding or encoding phase of the running chunk starts; returns 0 when this
/// chunk's serialization is not measured (see pool.cpp). Pass the result to pool_serialize_end.
std::int64_t pool_serialize_begin() noexcept;
void pool_serialize_end(std::int64_t begin) noexcept;

template <class Fn, class Item, bool kStar>
void pool_runner(ErasedFn erased, std::span<const std::byte> data, Bytes& out) {
  using R = pool_result_t<Fn, Item, kStar>;
  Fn fn = [&]() -> Fn {
    if constexpr (std::is_pointer_v<Fn>) {
      return reinterpret_cast<Fn>(erased);
    } else {
      (void)erased;
      return Fn{};  // stateless: any instance will do
    }
  }();
  auto decoding = pool_serialize_begin();
  auto items = mp::loads<std::vector<Item>>(data);
  pool_serialize_end(decoding);
  // The common case first: every call succeeds, and the results go out as one vector (a block
  // copy for arithmetic results). On the first exception, switch to a variant per item.
  std::vector<PoolStored<R>> values;
  values.reserve(items.size());
  std::vector<std::variant<PoolStored<R>, TaskError>> mixed;
  bool all_ok = true;
  for (auto& item : items) {
    pool_task_started();
    try {
      if constexpr (std::is_void_v<R>) {
        pool_call<Fn, Item, kStar>(fn, item);
        if (all_ok) {
          values.emplace_back();
        } else {
          mixed.emplace_back(std::in_place_index<0>);
        }
      } else if (all_ok) {
        values.push_back(pool_call<Fn, Item, kStar>(fn, item));
      } else {
        mixed.emplace_back(std::in_place_index<0>, pool_call<Fn, Item, kStar>(fn, item));
      }
    } catch (...) {
      if (all_ok) {
        all_ok = false;
        mixed.reserve(items.size());
        for (auto& v : values) mixed.emplace_back(std::in_place_index<0>, std::move(v));
        values.clear();
      }
      mixed.emplace_back(std::in_place_index<1>, describe_current_exception(typeid(Fn)));
    }
  }
  auto encoding = pool_serialize_begin();
  out.push_back(all_ok ? std::byte{0} : std::byte{1});
  if (all_ok) {
    pool_append(out, values);
  } else {
    pool_append(out, mixed);
  }
  pool_serialize_end(encoding);
}

/// A chunk's results as a worker sent them: all values, or a value or error per item.
template <class R>
struct PoolResults {
  bool all_ok = true;
  std::vector<PoolStored<R>> values;
  std::vector<std::variant<PoolStored<R>, TaskError>> mixed;

  std::size_t size() const { return all_ok ? values.size() : mixed.size(); }
};

template <class R>
PoolResults<R> decode_pool_results(std::span<const std::byte> data) {
  PoolResults<R> r;
  if (data.empty() || (data[0] != std::byte{0} && data[0] != std::byte{1}))
    throw std::invalid_argument("mp: a pool worker sent a malformed result");
  r.all_ok = data[0] == std::byte{0};
  if (r.all_ok) {
    load_from(data.subspan(1), r.values);
  } else {
    load_from(data.subspan(1), r.mixed);
  }
  return r;
}

/// One call on the pool: the seam where work enters (Pool::submit(job, chunks)). chunk_done and
/// chunk_failed run on the dispatcher thread or on a thread waiting for the job's results (which
/// reads its own results from a worker's pipe when it can): two chunks of one job may complete on
/// two threads at once, so implementations lock what they share. Each chunk completes once.
class PoolJob {
 public:
  virtual ~PoolJob() = default;
  /// Chunk `index` ran; results is its encoded vector<variant<result, TaskError>>.
  virtual void chunk_done(std::size_t index, std::span<const std::byte> results) = 0;
  /// Chunk `index` could not run (its worker died, or the pool was terminated).
  virtual void chunk_failed(std::size_t index, std::exception_ptr error) = 0;

  PoolRunner runner = nullptr;
  ErasedFn fn = nullptr;  // null for a stateless function object
  /// Per-call time limits of each task (soft: the task sees soft_time_limit_exceeded(); hard: its
  /// worker is killed and the task fails with TaskTimeLimitExceeded); unset: the pool's.
  std::optional<Duration> soft_time_limit;
  std::optional<Duration> time_limit;
  /// imap's lazily read input: more chunks may be submitted after close() (until join()).
  bool lazy_input = false;
  /// The pool's bookkeeping (under its lock): how many chunks of this job go in one message.
  std::size_t batch = 1;
};

/// Implemented by the pool: lets a thread that waits for a job's result read it from the pipe of
/// the worker running it, sparing the hop through the dispatcher thread. help() returns when
/// done(ctx) is true, at the deadline, or when it cannot help (the caller then waits as usual).
class PoolWaiter {
 public:
  virtual ~PoolWaiter() = default;
  virtual void help(const PoolJob* job, bool (*done)(void*), void* ctx,
                    std::optional<std::chrono::steady_clock::time_point> deadline) = 0;
};

/// A chunk of items, encoded as a std::vector<Item>.
struct PoolChunk {
  std::size_t index = 0;
  Bytes items;
};

/// Where the result of apply_async / map_async waits to be collected.
template <class T>
struct PoolResultState {
  std::mutex mutex;
  std::condition_variable changed;
  bool ready = false;
  std::exception_ptr error;
  std::optional<PoolStored<T>> value;
  Callbacks<T> callbacks;
  std::weak_ptr<PoolWaiter> waiter;  // the pool, to read the result on the waiting thread
  const PoolJob* job = nullptr;

  /// Runs the callback, then makes the result ready (as Python: once get() returns, it has run).
  void succeed(PoolStored<T> v) {
    if constexpr (std::is_void_v<T>) {
      if (callbacks.callback) run_guarded([&] { callbacks.callback(); });
    } else {
      if (callbacks.callback) run_guarded([&] { callbacks.callback(v); });
    }
    std::lock_guard lock(mutex);
    value.emplace(std::move(v));
    ready = true;
    changed.notify_all();
  }
  void fail(std::exception_ptr e) {
    if (callbacks.error_callback) run_guarded([&] { callbacks.error_callback(e); });
    std::lock_guard lock(mutex);
    error = std::move(e);
    ready = true;
    changed.notify_all();
  }
  template <class G>
  static void run_guarded(G&& g) {
    try {
      g();
    } catch (...) {
      report_callback_error();
    }
  }
  static void report_callback_error();
};

/// Logs (at error level) the exception a callback threw; the result is still delivered.
void log_pool_callback_error() noexcept;

template <class T>
void PoolResultState<T>::report_callback_error() {
  log_pool_callback_error();
}

/// apply_async: one chunk of one item.
template <class R>
class PoolApplyJob final : public PoolJob {
 public:
  explicit PoolApplyJob(std::shared_ptr<PoolResultState<R>> state) : state_(std::move(state)) {}
  void chunk_done(std::size_t, std::span<const std::byte> data) override {
    std::variant<PoolStored<R>, TaskError> one;
    try {
      auto results = decode_pool_results<R>(data);
      if (results.size() != 1) throw std::invalid_argument("mp: a pool worker sent a malformed result");
      if (results.all_ok) {
        one.template emplace<0>(std::move(results.values.front()));
      } else {
        one = std::move(results.mixed.front());
      }
    } catch (...) {
      state_->fail(std::current_exception());
      return;
    }
    if (one.index() == 0) {
      state_->succeed(std::move(std::get<0>(one)));
    } else {
      state_->fail(make_task_exception(std::get<1>(one)));
    }
  }
  void chunk_failed(std::size_t, std::exception_ptr error) override { state_->fail(std::move(error)); }

 private:
  std::shared_ptr<PoolResultState<R>> state_;
};

/// map_async / starmap_async: the whole list, or the first error to arrive (as Python).
template <class R>
class PoolMapJob final : public PoolJob {
 public:
  using Out = std::conditional_t<std::is_void_v<R>, void, std::vector<R>>;
  PoolMapJob(std::shared_ptr<PoolResultState<Out>> state, std::size_t chunks)
      : state_(std::move(state)), chunks_(chunks), left_(chunks) {}
  void chunk_done(std::size_t index, std::span<const std::byte> data) override {
    std::unique_lock lock(mutex_);
    if (done_) return;
    try {
      auto results = decode_pool_results<R>(data);
      for (auto& r : results.mixed) {
        if (r.index() == 1) {
          done_ = true;
          lock.unlock();
          state_->fail(make_task_exception(std::get<1>(r)));
          return;
        }
      }
      if constexpr (!std::is_void_v<R>) {
        if (results.all_ok) {
          chunks_[index] = std::move(results.values);
        } else {
          auto& slot = chunks_[index];
          slot.reserve(results.size());
          for (auto& r : results.mixed) slot.push_back(std::move(std::get<0>(r)));
        }
      }
    } catch (...) {
      done_ = true;
      lock.unlock();
      state_->fail(std::current_exception());
      return;
    }
    if (--left_ == 0) {
      done_ = true;
      lock.unlock();
      finish();
    }
  }
  void chunk_failed(std::size_t, std::exception_ptr error) override {
    {
      std::lock_guard lock(mutex_);
      if (done_) return;
      done_ = true;
    }
    state_->fail(std::move(error));
  }

 private:
  void finish() {
    if constexpr (std::is_void_v<R>) {
      state_->succeed(std::monostate{});
    } else {
      if (chunks_.size() == 1) {
        state_->succeed(std::move(chunks_.front()));
        return;
      }
      std::size_t total = 0;
      for (auto& c : chunks_) total += c.size();
      std::vector<R> all;
      all.reserve(total);
      for (auto& c : chunks_) {
        for (auto& v : c) all.push_back(std::move(v));
      }
      chunks_.clear();
      state_->succeed(std::move(all));
    }
  }

  std::shared_ptr<PoolResultState<Out>> state_;
  std::vector<std::vector<PoolStored<R>>> chunks_;
  std::size_t left_;
  bool done_ = false;
  std::mutex mutex_;
};

/// Where imap / imap_unordered results wait for the iterator. The input is read lazily: feed
/// (called by the iterator's thread, under feed_mutex) submits chunks until `upto` items were
/// submitted or the input ends (then it sets total and clears itself); the iterator keeps at most
/// `window` items submitted ahead of what it yielded (0: no bound).
template <class R>
struct PoolIMapState {
  using Item = std::variant<PoolStored<R>, std::exception_ptr>;
  static constexpr std::size_t kUnknown = static_cast<std::size_t>(-1);
  std::mutex mutex;
  std::condition_variable changed;
  bool ordered = true;
  std::size_t total = kUnknown;  // known once the input is exhausted
  std::size_t yielded = 0;
  std::size_t submitted = 0;
  std::map<std::size_t, Item> by_position;  // ordered: results not yet yielded
  std::deque<Item> arrived;                 // unordered
  std::map<std::size_t, std::pair<std::size_t, std::size_t>> spans;  // chunk index -> first position, size
  std::weak_ptr<PoolWaiter> waiter;
  const PoolJob* job = nullptr;

  std::mutex feed_mutex;
  std::function<bool(std::size_t upto)> feed;  // true: the input ended
  std::size_t window = 0;

  /// Under mutex: records that chunk `index` holds positions [first, first + size).
  void add_span(std::size_t index, std::size_t first, std::size_t size) {
    spans.emplace(index, std::pair{first, size});
    submitted = first + size;
  }
  /// Under mutex: the input failed (or the pool refused it) at position `submitted`: that
  /// position raises error and the iteration ends there.
  void end_with(std::exception_ptr error) {
    put(submitted, Item(std::move(error)));
    total = ++submitted;
    changed.notify_all();
  }
  void put(std::size_t position, Item item) {
    if (ordered) {
      by_position.emplace(position, std::move(item));
    } else {
      arrived.push_back(std::move(item));
    }
  }
};

/// imap / imap_unordered. Holds its state weakly: results that arrive after the iterator is gone
/// are dropped.
template <class R>
class PoolIMapJob final : public PoolJob {
 public:
  explicit PoolIMapJob(std::weak_ptr<PoolIMapState<R>> state) : state_(std::move(state)) {}
  void chunk_done(std::size_t index, std::span<const std::byte> data) override {
    auto state = state_.lock();
    if (!state) return;
    PoolResults<R> results;
    std::exception_ptr error;
    try {
      results = decode_pool_results<R>(data);
    } catch (...) {
      error = std::current_exception();
    }
    using Item = typename PoolIMapState<R>::Item;
    std::lock_guard lock(state->mutex);
    auto span = state->spans.find(index);
    if (span == state->spans.end()) return;
    auto [first, size] = span->second;
    state->spans.erase(span);
    if (!error && results.size() != size) {
      error = std::make_exception_ptr(std::invalid_argument("mp: a pool worker sent a malformed result"));
    }
    for (std::size_t i = 0; i < size; ++i) {
      if (error) {
        state->put(first + i, Item(error));
      } else if (results.all_ok) {
        state->put(first + i, Item(std::in_place_index<0>, std::move(results.values[i])));
      } else {
        auto& r = results.mixed[i];
        state->put(first + i, r.index() == 0 ? Item(std::in_place_index<0>, std::move(std::get<0>(r)))
                                             : Item(make_task_exception(std::get<1>(r))));
      }
    }
    state->changed.notify_all();
  }
  void chunk_failed(std::size_t index, std::exception_ptr error) override {
    auto state = state_.lock();
    if (!state) return;
    std::lock_guard lock(state->mutex);
    auto span = state->spans.find(index);
    if (span == state->spans.end()) return;
    auto [first, size] = span->second;
    state->spans.erase(span);
    for (std::size_t i = 0; i < size; ++i) state->put(first + i, typename PoolIMapState<R>::Item(error));
    state->changed.notify_all();
  }

 private:
  std::weak_ptr<PoolIMapState<R>> state_;
};

}  // namespace detail
}  // namespace mp
