// The same API on threads (Python: multiprocessing.dummy).
//
// mp::dummy repeats the names of mp:: for threads of the current process, so that code written
// against mp:: switches to threads by changing the namespace alone:
//
//   mp::dummy::Pool pool(4);
//   int base = 10;
//   auto v = pool.map([&](int x) { return x + base; }, xs);   // captures work: nothing crosses
//
// Nothing is serialized: targets and tasks may be any callable (capturing lambdas, std::function,
// move-only objects for Process), arguments and results any copyable/movable type, and a task's
// exception is rethrown by get() as the very object (its type intact). Handles keep handle
// semantics: copies share one object (std::shared_ptr), exactly as the process-wide ones do.
//
// Differences from mp:: (all follow from "threads, not processes"):
// - Process is a std::thread. Its name is "Thread-N" (as Python's dummy.Process, a
//   threading.Thread); pid() is this process's pid; exitcode() is 0, or 1 when run() threw (the
//   exception is reported on stderr, as Python's threading does). terminate() and kill() throw
//   std::logic_error: a thread cannot be stopped from outside. The destructor of a started Process
//   waits for its thread (a thread cannot outlive the objects it uses); daemon() is recorded only.
//   A subclass overriding run() must not be moved after start() (its thread calls run() on it).
// - Pool's workers are threads; callbacks run in the worker thread that finished the task (or the
//   last chunk of a map); terminate() fails the tasks not yet started (ProcessError) and waits for
//   the running ones (threads cannot be stopped), and so does the destructor of the last copy.
// - Pipe/Connection are mp::Pipe/mp::Connection themselves (a socket pair works between threads
//   as well as between processes), so what they carry must be encodable by mp::dumps.
#pragma once

#include <multiprocessing/base.hpp>
#include <multiprocessing/connection.hpp>
#include <multiprocessing/pool.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <span>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace mp::dummy {

// ---------------------------------------------------------------------------------------------
// Processes (threads)

class Process {
 public:
  /// A thread whose run() does nothing unless a subclass overrides it.
  Process();
  /// A thread that runs target(args...) with copies of the arguments. Any callable.
  template <class F, class... Args>
    requires(!std::is_base_of_v<Process, std::remove_cvref_t<F>>)
  explicit Process(F&& target, Args&&... args)
      : Process(make_target(std::forward<F>(target), std::forward<Args>(args)...), 0) {}
  Process(Process&& other) noexcept;
  Process& operator=(Process&& other) noexcept;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  /// Waits for the thread when it was started and not joined yet.
  virtual ~Process();

  /// Calls target(args...) (nothing without a target). Runs in the thread after start().
  virtual void run();
  /// Starts the thread. std::logic_error when called twice or after close().
  void start();
  /// Waits until the thread ends. std::logic_error before start(), after close(), or from the
  /// thread itself.
  void join();
  /// Waits up to timeout; true when the thread has ended.
  bool join(Duration timeout);
  /// True from start() until the thread ends.
  bool is_alive();
  /// "Thread-N" by default ("MainThread" for current_process() in the main thread).
  std::string name() const;
  void set_name(std::string name);
  /// Recorded only (see the header comment). std::logic_error after start().
  bool daemon() const;
  void set_daemon(bool daemonic);
  /// This process's pid once started; nullopt before start().
  std::optional<int> pid() const;
  /// nullopt while running (or before start); 0 ok; 1 when run() threw.
  std::optional<int> exitcode() const;
  /// Always std::logic_error: a thread cannot be terminated or killed.
  void terminate();
  void kill();
  /// Afterwards every call but name/daemon throws std::logic_error. std::logic_error while the
  /// thread still runs; a second close() does nothing.
  void close();

  struct Impl;

 private:
  friend Process& current_process();
  template <class F, class... Args>
  static std::function<void()> make_target(F&& f, Args&&... args) {
    // std::function needs a copyable callable: keep a move-only one behind a shared_ptr.
    auto holder = std::make_shared<std::tuple<std::decay_t<F>, std::decay_t<Args>...>>(std::forward<F>(f),
                                                                                       std::forward<Args>(args)...);
    return [holder] { std::apply([](auto& fn, auto&... a) { std::invoke(fn, a...); }, *holder); };
  }
  Process(std::function<void()> target, int);
  explicit Process(std::shared_ptr<Impl> impl) noexcept;
  Impl& impl() const;
  std::shared_ptr<Impl> impl_;
};

/// The Process object of the calling thread: the started Process in its thread, "MainThread" in
/// the main thread, "Dummy-N" in other threads (as Python's threading.current_thread()).
Process& current_process();
/// Started threads that have not ended (their Process objects).
std::vector<Process*> active_children();
/// As mp::cpu_count().
int cpu_count();

// ---------------------------------------------------------------------------------------------
// Synchronization primitives (std::mutex and std::condition_variable; same names and errors as
// synchronize.hpp)

namespace detail {
struct LockCore;
struct SemaphoreCore;
struct EventCore;
struct BarrierCore;
struct ConditionCore;
}  // namespace detail

/// A non-recursive lock: any thread may release it; releasing it while not held is
/// std::logic_error. A second acquire() by the holder waits, as in Python.
class Lock {
 public:
  Lock();
  /// block = false never waits (timeout ignored); true when acquired.
  bool acquire(bool block = true, Timeout timeout = std::nullopt);
  void release();
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return acquire(false); }
  /// Whether the lock is held (by any thread of this process: they all are "this process").
  bool held_by_this_process() const;

 private:
  friend class Condition;
  std::shared_ptr<detail::LockCore> core_;
};

/// A recursive lock owned by one thread. release() by another thread, or when not held, is
/// std::logic_error.
class RLock {
 public:
  RLock();
  bool acquire(bool block = true, Timeout timeout = std::nullopt);
  void release();
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return acquire(false); }
  bool is_owned() const;
  int recursion_count() const;

 private:
  friend class Condition;
  std::shared_ptr<detail::LockCore> core_;
};

class Semaphore {
 public:
  /// std::invalid_argument when value < 0.
  explicit Semaphore(int value = 1);
  bool acquire(bool block = true, Timeout timeout = std::nullopt);
  /// std::overflow_error above INT_MAX units.
  void release();
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return acquire(false); }
  int get_value() const;

 protected:
  Semaphore(int value, bool bounded);
  std::shared_ptr<detail::SemaphoreCore> core_;
};

/// release() above the initial value is std::logic_error.
class BoundedSemaphore : public Semaphore {
 public:
  explicit BoundedSemaphore(int value = 1);
};

/// A condition variable over a Lock or an RLock. wait() and notify() need the lock held by the
/// calling thread: std::logic_error otherwise.
class Condition {
 public:
  /// Over a new RLock.
  Condition();
  explicit Condition(Lock lock);
  explicit Condition(RLock lock);
  bool acquire(bool block = true, Timeout timeout = std::nullopt);
  void release();
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return acquire(false); }
  /// Releases the lock fully, waits for a notify() or the timeout, re-acquires the lock to the
  /// same level. True when notified.
  bool wait(Timeout timeout = std::nullopt);
  template <class Pred>
  bool wait_for(Pred pred, Timeout timeout = std::nullopt);
  /// Wakes up to n waiters, oldest first.
  void notify(int n = 1);
  void notify_all();

 private:
  std::shared_ptr<detail::ConditionCore> core_;
};

template <class Pred>
bool Condition::wait_for(Pred pred, Timeout timeout) {
  std::optional<std::chrono::steady_clock::time_point> end;
  if (timeout) {
    end = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(*timeout);
  }
  bool result = pred();
  while (!result) {
    Timeout remaining;
    if (end) {
      remaining = Duration(*end - std::chrono::steady_clock::now());
      if (remaining->count() <= 0) break;
    }
    wait(remaining);
    result = pred();
  }
  return result;
}

class Event {
 public:
  Event();
  bool is_set() const;
  void set();
  void clear();
  /// The flag (false on timeout).
  bool wait(Timeout timeout = std::nullopt);

 private:
  std::shared_ptr<detail::EventCore> core_;
};

class Barrier {
 public:
  /// As mp::Barrier::kMaxParties, so that code switches unchanged.
  static constexpr int kMaxParties = 1024;
  /// An empty handle (every call throws std::logic_error).
  Barrier() noexcept = default;
  /// std::invalid_argument when parties < 1 or > kMaxParties, or the timeout is negative.
  explicit Barrier(int parties, Timeout timeout = std::nullopt);
  /// This caller's arrival index, 0 .. parties-1. BrokenBarrierError when the barrier is broken,
  /// or is broken, aborted or reset while waiting, or when the timeout passes (which breaks it).
  int wait(Timeout timeout = std::nullopt);
  void reset();
  void abort();
  int parties() const;
  int n_waiting() const;
  bool broken() const;

 private:
  detail::BarrierCore& core() const;
  std::shared_ptr<detail::BarrierCore> core_;
};

// ---------------------------------------------------------------------------------------------
// Shared state: plain memory guarded by an RLock (same API as sharedctypes.hpp)

template <class T>
class Value {
 public:
  explicit Value(T initial = T{}, bool lock = true) : obj_(std::make_shared<T>(std::move(initial))) {
    if (lock) lock_.emplace();
  }
  T value() const {
    if (!lock_) return *obj_;
    std::lock_guard guard(*lock_);
    return *obj_;
  }
  void set_value(const T& v) {
    if (!lock_) {
      *obj_ = v;
      return;
    }
    std::lock_guard guard(*lock_);
    *obj_ = v;
  }
  T& get_obj() { return *obj_; }
  /// std::logic_error when made with lock = false.
  RLock& get_lock() {
    if (!lock_) throw std::logic_error("mp::dummy: Value made with lock = false has no get_lock()");
    return *lock_;
  }

 private:
  std::shared_ptr<T> obj_;
  mutable std::optional<RLock> lock_;
};

template <class T>
class Array {
 public:
  /// An empty handle: size() 0, no lock.
  Array() noexcept = default;
  explicit Array(std::size_t size, bool lock = true) : data_(std::make_shared<std::vector<T>>(size)) {
    if (lock) lock_.emplace();
  }
  Array(std::initializer_list<T> init, bool lock = true) : data_(std::make_shared<std::vector<T>>(init)) {
    if (lock) lock_.emplace();
  }
  std::size_t size() const noexcept { return data_ ? data_->size() : 0; }
  /// std::out_of_range when i >= size().
  T& operator[](std::size_t i) { return at(i); }
  const T& operator[](std::size_t i) const { return at(i); }
  std::span<T> get_obj() const noexcept { return data_ ? std::span<T>(*data_) : std::span<T>(); }
  std::vector<T> to_vector() const {
    if (!data_) return {};
    if (!lock_) return *data_;
    std::lock_guard guard(*lock_);
    return *data_;
  }
  RLock& get_lock() {
    if (!lock_) throw std::logic_error("mp::dummy: Array made with lock = false (or empty) has no get_lock()");
    return *lock_;
  }

 private:
  T& at(std::size_t i) const {
    if (i >= size()) throw std::out_of_range("mp::dummy: Array index out of range");
    return (*data_)[i];
  }
  std::shared_ptr<std::vector<T>> data_;
  mutable std::optional<RLock> lock_;
};

// ---------------------------------------------------------------------------------------------
// Queues (std::mutex + std::condition_variable; same methods and exceptions as queues.hpp)

template <class T>
class Queue {
 public:
  /// maxsize 0: unbounded.
  explicit Queue(std::size_t maxsize = 0) : s_(std::make_shared<State>()) { s_->maxsize = maxsize; }

  /// Full when the queue stays full (block = false: at once; else after the timeout).
  /// std::logic_error after close().
  /// The T&& forms take a move-only item; it is moved from only when it entered the queue.
  void put(const T& obj) { put_impl(obj, true, std::nullopt); }
  void put(T&& obj) { put_impl(std::move(obj), true, std::nullopt); }
  void put(const T& obj, Duration timeout) { put_impl(obj, true, timeout); }
  void put(T&& obj, Duration timeout) { put_impl(std::move(obj), true, timeout); }
  void put_nowait(const T& obj) { put_impl(obj, false, std::nullopt); }
  void put_nowait(T&& obj) { put_impl(std::move(obj), false, std::nullopt); }
  /// Empty when the queue stays empty.
  T get() { return get_impl(true, std::nullopt); }
  T get(Duration timeout) { return get_impl(true, timeout); }
  T get_nowait() { return get_impl(false, std::nullopt); }
  T get_no_wait() { return get_nowait(); }

  std::size_t qsize() const {
    std::lock_guard lock(s_->mutex);
    return s_->items.size();
  }
  bool empty() const { return qsize() == 0; }
  bool full() const {
    std::lock_guard lock(s_->mutex);
    return s_->maxsize != 0 && s_->items.size() >= s_->maxsize;
  }
  /// No more put() from anyone (it is one queue of one process).
  void close() {
    std::lock_guard lock(s_->mutex);
    s_->closed = true;
  }
  /// Nothing to wait for (no feeder thread); std::logic_error before close(), as mp::Queue.
  void join_thread() {
    std::lock_guard lock(s_->mutex);
    if (!s_->closed) throw std::logic_error("mp::dummy: Queue.join_thread() before close()");
  }
  void cancel_join_thread() {}

 protected:
  struct State {
    mutable std::mutex mutex;
    std::condition_variable not_empty, not_full, all_done;
    std::deque<T> items;
    std::size_t maxsize = 0;
    std::size_t unfinished = 0;
    bool closed = false;
  };
  std::shared_ptr<State> s_;

 private:
  template <class U>
  void put_impl(U&& obj, bool block, Timeout timeout) {
    std::unique_lock lock(s_->mutex);
    if (s_->closed) throw std::logic_error("mp::dummy: put() on a closed Queue");
    auto room = [&] { return s_->maxsize == 0 || s_->items.size() < s_->maxsize; };
    if (!room()) {
      if (!block) throw Full("mp::dummy: the queue is full");
      if (timeout) {
        if (!s_->not_full.wait_for(lock, *timeout, room)) throw Full("mp::dummy: the queue is full");
      } else {
        s_->not_full.wait(lock, room);
      }
    }
    s_->items.push_back(std::forward<U>(obj));
    ++s_->unfinished;
    s_->not_empty.notify_one();
  }
  T get_impl(bool block, Timeout timeout) {
    std::unique_lock lock(s_->mutex);
    auto any = [&] { return !s_->items.empty(); };
    if (!any()) {
      if (!block) throw Empty("mp::dummy: the queue is empty");
      if (timeout) {
        if (!s_->not_empty.wait_for(lock, *timeout, any)) throw Empty("mp::dummy: the queue is empty");
      } else {
        s_->not_empty.wait(lock, any);
      }
    }
    T out = std::move(s_->items.front());
    s_->items.pop_front();
    s_->not_full.notify_one();
    return out;
  }
};

template <class T>
class SimpleQueue {
 public:
  SimpleQueue() = default;
  bool empty() const { return queue_.empty(); }
  T get() { return queue_.get(); }
  void put(const T& obj) { queue_.put(obj); }
  void close() { queue_.close(); }

 private:
  Queue<T> queue_;
};

template <class T>
class JoinableQueue : public Queue<T> {
 public:
  using Queue<T>::Queue;
  /// std::logic_error when called more times than items were put.
  void task_done() {
    std::lock_guard lock(this->s_->mutex);
    if (this->s_->unfinished == 0) throw std::logic_error("mp::dummy: task_done() called too many times");
    if (--this->s_->unfinished == 0) this->s_->all_done.notify_all();
  }
  /// Waits until every item put has been task_done().
  void join() {
    std::unique_lock lock(this->s_->mutex);
    this->s_->all_done.wait(lock, [&] { return this->s_->unfinished == 0; });
  }
};

// ---------------------------------------------------------------------------------------------
// Pipes: the real ones (see the header comment)

using mp::Connection;
using mp::Pipe;

// ---------------------------------------------------------------------------------------------
// Pools of threads

using mp::AsyncResult;
using mp::Callbacks;
using mp::IMapIterator;

struct PoolOptions {
  std::optional<int> processes;        // default cpu_count()
  std::function<void()> initializer;   // runs once in each worker thread before its first task
  std::optional<int> maxtasksperchild; // a worker thread is replaced after this many tasks
};

namespace detail {

/// One unit of work: run() in a worker, or fail() when the pool is terminated before it ran.
struct PoolTask {
  std::function<void()> run;
  std::function<void(std::exception_ptr)> fail;
};

struct PoolCore;
std::shared_ptr<PoolCore> pool_create(PoolOptions options);
void pool_submit(PoolCore& core, std::vector<PoolTask> tasks);
std::size_t pool_processes(const PoolCore& core) noexcept;
void pool_close(PoolCore& core);
void pool_terminate(PoolCore& core);
void pool_join(PoolCore& core);

/// The shared progress of one map_async: results by position, the first error.
template <class R>
struct MapProgress {
  std::mutex mutex;
  std::vector<std::optional<mp::detail::PoolStored<R>>> values;
  std::size_t chunks_left = 0;
  bool failed = false;
};

}  // namespace detail

class Pool {
  template <class F, class Item, bool kStar>
  using result_t = mp::detail::pool_result_t<std::decay_t<F>, Item, kStar>;
  template <class Range>
  using item_t = std::decay_t<std::ranges::range_reference_t<Range>>;
  template <class R>
  using map_out_t = std::conditional_t<std::is_void_v<R>, void, std::vector<R>>;

 public:
  /// processes worker threads (default cpu_count()). std::invalid_argument when processes < 1.
  explicit Pool(std::optional<int> processes = std::nullopt);
  explicit Pool(PoolOptions options);
  Pool(const Pool&) = default;
  Pool& operator=(const Pool&) = default;
  Pool(Pool&&) noexcept = default;
  Pool& operator=(Pool&&) noexcept = default;
  ~Pool() = default;  // the core's owner terminates and joins with the last copy

  template <class F, class... A>
  auto apply(F f, A&&... args) {
    return apply_async(std::move(f), std::forward<A>(args)...).get();
  }
  template <class F, class... A>
  auto apply_async(F f, A&&... args) {
    using Args = std::tuple<std::decay_t<A>...>;
    return apply_async(std::move(f), Args(std::forward<A>(args)...), Callbacks<result_t<F, Args, true>>{});
  }
  template <class F, class... A>
  AsyncResult<result_t<F, std::tuple<A...>, true>> apply_async(
      F f, std::tuple<A...> args, Callbacks<result_t<F, std::tuple<A...>, true>> callbacks) {
    using R = result_t<F, std::tuple<A...>, true>;
    auto state = std::make_shared<mp::detail::PoolResultState<R>>();
    state->callbacks = std::move(callbacks);
    auto call = std::make_shared<std::pair<std::decay_t<F>, std::tuple<A...>>>(std::move(f), std::move(args));
    std::vector<detail::PoolTask> tasks(1);
    tasks[0].run = [state, call] {
      try {
        if constexpr (std::is_void_v<R>) {
          std::apply(call->first, call->second);
          state->succeed(std::monostate{});
        } else {
          state->succeed(std::apply(call->first, call->second));
        }
      } catch (...) {
        state->fail(std::current_exception());
      }
    };
    tasks[0].fail = [state](std::exception_ptr e) { state->fail(std::move(e)); };
    detail::pool_submit(core(), std::move(tasks));
    return AsyncResult<R>(std::move(state));
  }

  template <class F, class Range>
  auto map(F f, const Range& iterable, std::size_t chunksize = 0) {
    return map_async(std::move(f), iterable, chunksize).get();
  }
  template <class F, class Range>
  auto map_async(F f, const Range& iterable, std::size_t chunksize = 0,
                 Callbacks<map_out_t<result_t<F, item_t<const Range&>, false>>> callbacks = {}) {
    return map_impl<F, item_t<const Range&>, false>(std::move(f), iterable, chunksize, std::move(callbacks));
  }
  template <class F, class Range>
  auto starmap(F f, const Range& tuples, std::size_t chunksize = 0) {
    return starmap_async(std::move(f), tuples, chunksize).get();
  }
  template <class F, class Range>
  auto starmap_async(F f, const Range& tuples, std::size_t chunksize = 0,
                     Callbacks<map_out_t<result_t<F, item_t<const Range&>, true>>> callbacks = {}) {
    return map_impl<F, item_t<const Range&>, true>(std::move(f), tuples, chunksize, std::move(callbacks));
  }

  template <class F, class Range>
  IMapIterator<result_t<F, item_t<Range>, false>> imap(F f, Range&& iterable, std::size_t chunksize = 1) {
    return imap_impl<F, item_t<Range>>(std::move(f), iterable, chunksize, true);
  }
  template <class F, class Range>
  IMapIterator<result_t<F, item_t<Range>, false>> imap_unordered(F f, Range&& iterable, std::size_t chunksize = 1) {
    return imap_impl<F, item_t<Range>>(std::move(f), iterable, chunksize, false);
  }

  /// No more tasks (std::logic_error); the workers exit once the work is done.
  void close() { detail::pool_close(core()); }
  /// Tasks not started fail with ProcessError; running ones finish (join() waits for them).
  void terminate() { detail::pool_terminate(core()); }
  /// Waits for the workers to exit; std::logic_error unless close() or terminate() came first,
  /// or when called from a worker of the same pool.
  void join() { detail::pool_join(core()); }

  struct Owner;

 private:
  detail::PoolCore& core() const;

  template <class Range>
  static std::vector<std::decay_t<std::ranges::range_reference_t<const Range&>>> collect(const Range& r) {
    std::vector<std::decay_t<std::ranges::range_reference_t<const Range&>>> out;
    for (auto&& x : r) out.emplace_back(x);
    return out;
  }

  std::size_t pick_chunksize(std::size_t count, std::size_t chunksize) const {
    if (chunksize != 0) return chunksize;
    const std::size_t per = 4 * detail::pool_processes(core());
    chunksize = count / per + (count % per != 0 ? 1 : 0);
    return chunksize == 0 ? 1 : chunksize;
  }

  template <class F, class Item, bool kStar, class Range>
  auto map_impl(F f, const Range& iterable, std::size_t chunksize, Callbacks<map_out_t<result_t<F, Item, kStar>>> callbacks) {
    using R = result_t<F, Item, kStar>;
    using Out = map_out_t<R>;
    auto state = std::make_shared<mp::detail::PoolResultState<Out>>();
    state->callbacks = std::move(callbacks);
    auto items = std::make_shared<std::vector<Item>>(collect(iterable));
    auto fn = std::make_shared<std::decay_t<F>>(std::move(f));
    const std::size_t count = items->size();
    if (count == 0) {
      detail::pool_submit(core(), {});  // a closed pool still refuses
      if constexpr (std::is_void_v<R>) {
        state->succeed(std::monostate{});
      } else {
        state->succeed(Out{});
      }
      return AsyncResult<Out>(std::move(state));
    }
    chunksize = pick_chunksize(count, chunksize);
    auto progress = std::make_shared<detail::MapProgress<R>>();
    progress->values.resize(count);
    progress->chunks_left = count / chunksize + (count % chunksize != 0 ? 1 : 0);
    auto fail = [state, progress](std::exception_ptr e) {
      {
        std::lock_guard lock(progress->mutex);
        if (progress->failed) return;
        progress->failed = true;
      }
      state->fail(std::move(e));
    };
    std::vector<detail::PoolTask> tasks;
    for (std::size_t start = 0; start < count; start += chunksize) {
      const std::size_t end = std::min(count, start + chunksize);
      detail::PoolTask task;
      task.fail = fail;
      task.run = [state, progress, items, fn, start, end, fail] {
        for (std::size_t i = start; i < end; ++i) {
          try {
            if constexpr (std::is_void_v<R>) {
              mp::detail::pool_call<std::decay_t<F>, Item, kStar>(*fn, (*items)[i]);
              std::lock_guard lock(progress->mutex);
              progress->values[i].emplace();
            } else {
              auto v = mp::detail::pool_call<std::decay_t<F>, Item, kStar>(*fn, (*items)[i]);
              std::lock_guard lock(progress->mutex);
              progress->values[i].emplace(std::move(v));
            }
          } catch (...) {
            fail(std::current_exception());
            return;
          }
        }
        {
          std::lock_guard lock(progress->mutex);
          if (--progress->chunks_left != 0 || progress->failed) return;
        }
        // The last chunk: every value is in (no other thread touches them any more).
        if constexpr (std::is_void_v<R>) {
          state->succeed(std::monostate{});
        } else {
          Out out;
          out.reserve(progress->values.size());
          for (auto& v : progress->values) out.push_back(std::move(*v));
          state->succeed(std::move(out));
        }
      };
      tasks.push_back(std::move(task));
    }
    detail::pool_submit(core(), std::move(tasks));
    return AsyncResult<Out>(std::move(state));
  }

  template <class F, class Item, class Range>
  IMapIterator<result_t<F, Item, false>> imap_impl(F f, Range& iterable, std::size_t chunksize, bool ordered) {
    using R = result_t<F, Item, false>;
    using Entry = typename mp::detail::PoolIMapState<R>::Item;
    if (chunksize == 0) chunksize = 1;
    auto state = std::make_shared<mp::detail::PoolIMapState<R>>();
    state->ordered = ordered;
    auto items = std::make_shared<std::vector<Item>>();
    for (auto&& x : iterable) items->emplace_back(x);
    auto fn = std::make_shared<std::decay_t<F>>(std::move(f));
    const std::size_t count = items->size();
    state->total = count;
    auto put = [state, ordered](std::size_t position, Entry entry) {
      std::lock_guard lock(state->mutex);
      if (ordered) {
        state->by_position.emplace(position, std::move(entry));
      } else {
        state->arrived.push_back(std::move(entry));
      }
      state->changed.notify_all();
    };
    std::vector<detail::PoolTask> tasks;
    for (std::size_t start = 0; start < count; start += chunksize) {
      const std::size_t end = std::min(count, start + chunksize);
      detail::PoolTask task;
      task.run = [items, fn, start, end, put] {
        for (std::size_t i = start; i < end; ++i) {
          try {
            if constexpr (std::is_void_v<R>) {
              mp::detail::pool_call<std::decay_t<F>, Item, false>(*fn, (*items)[i]);
              put(i, Entry(std::in_place_index<0>));
            } else {
              put(i, Entry(std::in_place_index<0>, mp::detail::pool_call<std::decay_t<F>, Item, false>(*fn, (*items)[i])));
            }
          } catch (...) {
            put(i, Entry(std::in_place_index<1>, std::current_exception()));
          }
        }
      };
      task.fail = [start, end, put](std::exception_ptr e) {
        for (std::size_t i = start; i < end; ++i) put(i, Entry(std::in_place_index<1>, e));
      };
      tasks.push_back(std::move(task));
    }
    detail::pool_submit(core(), std::move(tasks));
    return IMapIterator<R>(std::move(state));
  }

  std::shared_ptr<Owner> owner_;
};

}  // namespace mp::dummy
