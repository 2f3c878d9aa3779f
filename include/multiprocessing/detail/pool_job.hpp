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
  auto items = mp::loads<std::vector<Item>>(data);
  // The common case first: every call succeeds, and the results go out as one vector (a block
  // copy for arithmetic results). On the first exception, switch to a variant per item.
  std::vector<PoolStored<R>> values;
  values.reserve(items.size());
  std::vector<std::variant<PoolStored<R>, TaskError>> mixed;
  bool all_ok = true;
  for (auto& item : items) {
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
  out.push_back(all_ok ? std::byte{0} : std::byte{1});
  if (all_ok) {
    pool_append(out, values);
  } else {
    pool_append(out, mixed);
  }
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

/// One call on the pool, as the dispatcher thread sees it. chunk_done and chunk_failed run on
/// the dispatcher thread only, one at a time.
class PoolJob {
 public:
  virtual ~PoolJob() = default;
  /// Chunk `index` ran; results is its encoded vector<variant<result, TaskError>>.
  virtual void chunk_done(std::size_t index, std::span<const std::byte> results) = 0;
  /// Chunk `index` could not run (its worker died, or the pool was terminated).
  virtual void chunk_failed(std::size_t index, std::exception_ptr error) = 0;

  PoolRunner runner = nullptr;
  ErasedFn fn = nullptr;  // null for a stateless function object
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
    if (done_) return;
    try {
      auto results = decode_pool_results<R>(data);
      for (auto& r : results.mixed) {
        if (r.index() == 1) {
          done_ = true;
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
      state_->fail(std::current_exception());
      return;
    }
    if (--left_ == 0) finish();
  }
  void chunk_failed(std::size_t, std::exception_ptr error) override {
    if (done_) return;
    done_ = true;
    state_->fail(std::move(error));
  }

 private:
  void finish() {
    done_ = true;
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
};

/// Where imap / imap_unordered results wait for the iterator.
template <class R>
struct PoolIMapState {
  using Item = std::variant<PoolStored<R>, std::exception_ptr>;
  std::mutex mutex;
  std::condition_variable changed;
  bool ordered = true;
  std::size_t total = 0;
  std::size_t yielded = 0;
  std::map<std::size_t, Item> by_position;  // ordered: results not yet yielded
  std::deque<Item> arrived;                 // unordered
};

template <class R>
class PoolIMapJob final : public PoolJob {
 public:
  PoolIMapJob(std::shared_ptr<PoolIMapState<R>> state, std::vector<std::size_t> starts, std::vector<std::size_t> sizes)
      : state_(std::move(state)), starts_(std::move(starts)), sizes_(std::move(sizes)) {}
  void chunk_done(std::size_t index, std::span<const std::byte> data) override {
    PoolResults<R> results;
    try {
      results = decode_pool_results<R>(data);
      if (results.size() != sizes_[index]) throw std::invalid_argument("mp: a pool worker sent a malformed result");
    } catch (...) {
      chunk_failed(index, std::current_exception());
      return;
    }
    using Item = typename PoolIMapState<R>::Item;
    std::lock_guard lock(state_->mutex);
    for (std::size_t i = 0; i < results.size(); ++i) {
      if (results.all_ok) {
        put(starts_[index] + i, Item(std::in_place_index<0>, std::move(results.values[i])));
      } else {
        auto& r = results.mixed[i];
        put(starts_[index] + i, r.index() == 0 ? Item(std::in_place_index<0>, std::move(std::get<0>(r)))
                                               : Item(make_task_exception(std::get<1>(r))));
      }
    }
    state_->changed.notify_all();
  }
  void chunk_failed(std::size_t index, std::exception_ptr error) override {
    std::lock_guard lock(state_->mutex);
    for (std::size_t i = 0; i < sizes_[index]; ++i) put(starts_[index] + i, typename PoolIMapState<R>::Item(error));
    state_->changed.notify_all();
  }

 private:
  void put(std::size_t position, typename PoolIMapState<R>::Item item) {
    if (state_->ordered) {
      state_->by_position.emplace(position, std::move(item));
    } else {
      state_->arrived.push_back(std::move(item));
    }
  }

  std::shared_ptr<PoolIMapState<R>> state_;
  std::vector<std::size_t> starts_, sizes_;
};

}  // namespace detail
}  // namespace mp
