// mp::dummy: processes, primitives and pools on threads (see include/multiprocessing/dummy.hpp).
#include <multiprocessing/dummy.hpp>
#include <multiprocessing/process.hpp>

#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <list>
#include <mutex>
#include <set>
#include <thread>
#include <typeinfo>

namespace mp::dummy {

// ---------------------------------------------------------------------------------------------
// Process

struct Process::Impl {
  mutable std::mutex mutex;
  std::condition_variable changed;
  std::function<void()> target;
  std::string name;
  bool daemon = false;
  bool started = false;
  bool finished = false;
  bool closed = false;
  bool foreign = false;  // the object of a thread not started by a dummy::Process
  std::optional<int> exitcode;
  std::optional<int> pid;
  Process* owner = nullptr;  // follows moves (current_process() and active_children() return it)
  std::thread::id thread_id;
  std::mutex join_mutex;  // one std::thread::join() at a time
  std::thread thread;
};

namespace {

std::atomic<int> thread_counter{0};
std::atomic<int> dummy_counter{0};
const std::thread::id main_thread_id = std::this_thread::get_id();

std::mutex registry_mutex;
std::set<Process::Impl*>& registry() {
  static std::set<Process::Impl*> live;
  return live;
}

thread_local Process::Impl* current_impl = nullptr;

void wait_finished(Process::Impl& impl) {
  std::unique_lock lock(impl.mutex);
  impl.changed.wait(lock, [&] { return impl.finished; });
}

std::string name_of(Process::Impl& impl) {
  std::lock_guard lock(impl.mutex);
  return impl.name;
}

void join_thread(Process::Impl& impl) {
  std::lock_guard lock(impl.join_mutex);
  if (impl.thread.joinable()) impl.thread.join();
}

}  // namespace

Process::Process() : Process(std::function<void()>{}, 0) {}

Process::Process(std::function<void()> target, int) : impl_(std::make_shared<Impl>()) {
  impl_->target = std::move(target);
  impl_->name = "Thread-" + std::to_string(++thread_counter);
  impl_->owner = this;
}

Process::Process(std::shared_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}

Process::Process(Process&& other) noexcept : impl_(std::move(other.impl_)) {
  if (impl_) {
    std::lock_guard lock(impl_->mutex);
    impl_->owner = this;
  }
}

Process& Process::operator=(Process&& other) noexcept {
  if (this != &other) {
    if (impl_ && !impl_->foreign) join_thread(*impl_);
    impl_ = std::move(other.impl_);
    if (impl_) {
      std::lock_guard lock(impl_->mutex);
      impl_->owner = this;
    }
  }
  return *this;
}

Process::~Process() {
  if (impl_ && !impl_->foreign) join_thread(*impl_);
}

Process::Impl& Process::impl() const {
  if (!impl_) throw std::logic_error("mp::dummy: use of a moved-from Process");
  return *impl_;
}

void Process::run() {
  const auto& target = impl().target;
  if (target) target();
}

void Process::start() {
  Impl& im = impl();
  const bool exact = typeid(*this) == typeid(Process);
  {
    std::lock_guard lock(im.mutex);
    if (im.closed) throw std::logic_error("mp::dummy: Process::start() after close()");
    if (im.started) throw std::logic_error("mp::dummy: a Process can only be started once");
    im.started = true;
    im.pid = mp::current_process().pid();
  }
  {
    std::lock_guard lock(registry_mutex);
    registry().insert(&im);
  }
  Process* self = this;
  auto keep = impl_;
  try {
    std::lock_guard hold(im.join_mutex);
    im.thread = std::thread([keep, self, exact] {
      current_impl = keep.get();
      int code = 0;
      try {
        // A plain Process runs its target through the shared state, so moving the Process
        // object while the thread runs is harmless; a subclass's run() needs the object.
        if (exact) {
          if (keep->target) keep->target();
        } else {
          self->run();
        }
      } catch (const std::exception& e) {
        code = 1;
        std::fprintf(stderr, "Exception in thread %s: %s\n", name_of(*keep).c_str(), e.what());
      } catch (...) {
        code = 1;
        std::fprintf(stderr, "Exception in thread %s: (not a std::exception)\n", name_of(*keep).c_str());
      }
      {
        std::lock_guard lock(registry_mutex);
        registry().erase(keep.get());
      }
      std::lock_guard lock(keep->mutex);
      keep->exitcode = code;
      keep->finished = true;
      keep->changed.notify_all();
    });
  } catch (...) {
    std::lock_guard lock(registry_mutex);
    registry().erase(&im);
    throw;
  }
}

void Process::join() {
  Impl& im = impl();
  {
    std::lock_guard lock(im.mutex);
    if (im.closed) throw std::logic_error("mp::dummy: Process::join() after close()");
    if (!im.started) throw std::logic_error("mp::dummy: can only join a started Process");
  }
  if (current_impl == &im) throw std::logic_error("mp::dummy: a thread cannot join itself");
  wait_finished(im);
  join_thread(im);
}

bool Process::join(Duration timeout) {
  Impl& im = impl();
  {
    std::unique_lock lock(im.mutex);
    if (im.closed) throw std::logic_error("mp::dummy: Process::join() after close()");
    if (!im.started) throw std::logic_error("mp::dummy: can only join a started Process");
    if (current_impl == &im) throw std::logic_error("mp::dummy: a thread cannot join itself");
    if (timeout.count() < 0) timeout = Duration(0);
    if (!im.changed.wait_for(lock, timeout, [&] { return im.finished; })) return false;
  }
  join_thread(im);
  return true;
}

bool Process::is_alive() {
  Impl& im = impl();
  std::lock_guard lock(im.mutex);
  if (im.closed) throw std::logic_error("mp::dummy: Process::is_alive() after close()");
  return im.started && !im.finished;
}

std::string Process::name() const {
  Impl& im = impl();
  std::lock_guard lock(im.mutex);
  return im.name;
}

void Process::set_name(std::string name) {
  Impl& im = impl();
  std::lock_guard lock(im.mutex);
  im.name = std::move(name);
}

bool Process::daemon() const {
  Impl& im = impl();
  std::lock_guard lock(im.mutex);
  return im.daemon;
}

void Process::set_daemon(bool daemonic) {
  Impl& im = impl();
  std::lock_guard lock(im.mutex);
  if (im.started) throw std::logic_error("mp::dummy: set_daemon() after start()");
  im.daemon = daemonic;
}

std::optional<int> Process::pid() const {
  Impl& im = impl();
  std::lock_guard lock(im.mutex);
  if (im.closed) throw std::logic_error("mp::dummy: Process::pid() after close()");
  return im.pid;
}

std::optional<int> Process::exitcode() const {
  Impl& im = impl();
  std::lock_guard lock(im.mutex);
  if (im.closed) throw std::logic_error("mp::dummy: Process::exitcode() after close()");
  return im.exitcode;
}

void Process::terminate() {
  (void)impl();
  throw std::logic_error("mp::dummy: a thread cannot be terminated (Process::terminate)");
}

void Process::kill() {
  (void)impl();
  throw std::logic_error("mp::dummy: a thread cannot be killed (Process::kill)");
}

void Process::close() {
  Impl& im = impl();
  {
    std::lock_guard lock(im.mutex);
    if (im.closed) return;
    if (im.started && !im.finished) throw std::logic_error("mp::dummy: Process::close() while the thread runs");
    im.closed = true;
  }
  join_thread(im);
}

Process& current_process() {
  if (current_impl != nullptr) {
    std::lock_guard lock(current_impl->mutex);
    return *current_impl->owner;
  }
  // A thread not started by a dummy::Process: one object per thread, made on first use.
  thread_local std::unique_ptr<Process> self = [] {
    auto impl = std::make_shared<Process::Impl>();
    impl->foreign = true;
    impl->started = true;
    impl->pid = mp::current_process().pid();
    impl->name = std::this_thread::get_id() == main_thread_id ? std::string("MainThread")
                                                              : "Dummy-" + std::to_string(++dummy_counter);
    std::unique_ptr<Process> p(new Process(std::move(impl)));
    p->impl_->owner = p.get();
    return p;
  }();
  current_impl = self->impl_.get();
  return *self;
}

std::vector<Process*> active_children() {
  std::vector<Process*> out;
  std::lock_guard lock(registry_mutex);
  for (Process::Impl* impl : registry()) {
    std::lock_guard inner(impl->mutex);
    if (!impl->finished && impl->owner != nullptr) out.push_back(impl->owner);
  }
  return out;
}

int cpu_count() { return mp::cpu_count(); }

// ---------------------------------------------------------------------------------------------
// Locks

namespace detail {

struct LockCore {
  explicit LockCore(bool r) : recursive(r) {}
  mutable std::mutex mutex;
  std::condition_variable released;
  const bool recursive;
  bool locked = false;
  int count = 0;  // recursion level (1 for a plain Lock while held)
  std::thread::id holder;

  bool owned_by_caller() const {
    std::lock_guard lock(mutex);
    return locked && holder == std::this_thread::get_id();
  }
  bool acquire(bool block, Timeout timeout) {
    std::unique_lock lock(mutex);
    const auto me = std::this_thread::get_id();
    if (recursive && locked && holder == me) {
      ++count;
      return true;
    }
    auto free = [&] { return !locked; };
    if (!free()) {
      if (!block) return false;
      if (timeout) {
        const Duration t = timeout->count() < 0 ? Duration(0) : *timeout;
        if (!released.wait_for(lock, t, free)) return false;
      } else {
        released.wait(lock, free);
      }
    }
    locked = true;
    holder = me;
    count = 1;
    return true;
  }
  void release() {
    std::lock_guard lock(mutex);
    if (!locked) throw std::logic_error("mp::dummy: release of an unlocked lock");
    if (recursive) {
      if (holder != std::this_thread::get_id()) throw std::logic_error("mp::dummy: RLock released by a thread that does not own it");
      if (--count != 0) return;
    }
    locked = false;
    count = 0;
    holder = {};
    released.notify_one();
  }
  /// Condition::wait: gives the lock up entirely; returns the level to restore.
  int release_all() {
    std::lock_guard lock(mutex);
    const int level = count;
    locked = false;
    count = 0;
    holder = {};
    released.notify_one();
    return level;
  }
  void restore(int level) {
    (void)acquire(true, std::nullopt);
    std::lock_guard lock(mutex);
    count = level;
  }
};

struct ConditionCore {
  struct Waiter {
    bool notified = false;
  };
  std::shared_ptr<LockCore> lock;
  std::mutex mutex;
  std::condition_variable cv;
  std::list<Waiter*> waiters;  // oldest first
};

struct SemaphoreCore {
  mutable std::mutex mutex;
  std::condition_variable available;
  int value = 0;
  int initial = 0;
  bool bounded = false;
};

struct EventCore {
  mutable std::mutex mutex;
  std::condition_variable changed;
  bool flag = false;
};

struct BarrierCore {
  mutable std::mutex mutex;
  std::condition_variable changed;
  int parties = 0;
  Timeout timeout;
  int count = 0;          // parties waiting in this generation
  std::uint64_t generation = 0;
  bool broken = false;
  bool resetting = false;
};

}  // namespace detail

Lock::Lock() : core_(std::make_shared<detail::LockCore>(false)) {}
bool Lock::acquire(bool block, Timeout timeout) { return core_->acquire(block, timeout); }
void Lock::release() { core_->release(); }
bool Lock::held_by_this_process() const {
  std::lock_guard lock(core_->mutex);
  return core_->locked;
}

RLock::RLock() : core_(std::make_shared<detail::LockCore>(true)) {}
bool RLock::acquire(bool block, Timeout timeout) { return core_->acquire(block, timeout); }
void RLock::release() { core_->release(); }
bool RLock::is_owned() const { return core_->owned_by_caller(); }
int RLock::recursion_count() const {
  std::lock_guard lock(core_->mutex);
  return core_->locked && core_->holder == std::this_thread::get_id() ? core_->count : 0;
}

// ---------------------------------------------------------------------------------------------
// Semaphores

Semaphore::Semaphore(int value) : Semaphore(value, false) {}
Semaphore::Semaphore(int value, bool bounded) : core_(std::make_shared<detail::SemaphoreCore>()) {
  if (value < 0) throw std::invalid_argument("mp::dummy: Semaphore initial value must be >= 0");
  core_->value = value;
  core_->initial = value;
  core_->bounded = bounded;
}
bool Semaphore::acquire(bool block, Timeout timeout) {
  auto& c = *core_;
  std::unique_lock lock(c.mutex);
  auto any = [&] { return c.value > 0; };
  if (!any()) {
    if (!block) return false;
    if (timeout) {
      const Duration t = timeout->count() < 0 ? Duration(0) : *timeout;
      if (!c.available.wait_for(lock, t, any)) return false;
    } else {
      c.available.wait(lock, any);
    }
  }
  --c.value;
  return true;
}
void Semaphore::release() {
  auto& c = *core_;
  std::lock_guard lock(c.mutex);
  if (c.bounded && c.value >= c.initial) throw std::logic_error("mp::dummy: BoundedSemaphore released too many times");
  if (c.value == INT_MAX) throw std::overflow_error("mp::dummy: Semaphore value above INT_MAX");
  ++c.value;
  c.available.notify_one();
}
int Semaphore::get_value() const {
  std::lock_guard lock(core_->mutex);
  return core_->value;
}
BoundedSemaphore::BoundedSemaphore(int value) : Semaphore(value, true) {}

// ---------------------------------------------------------------------------------------------
// Condition

Condition::Condition() : Condition(RLock()) {}
Condition::Condition(Lock lock) : core_(std::make_shared<detail::ConditionCore>()) { core_->lock = lock.core_; }
Condition::Condition(RLock lock) : core_(std::make_shared<detail::ConditionCore>()) { core_->lock = lock.core_; }
bool Condition::acquire(bool block, Timeout timeout) { return core_->lock->acquire(block, timeout); }
void Condition::release() { core_->lock->release(); }

bool Condition::wait(Timeout timeout) {
  auto& c = *core_;
  if (!c.lock->owned_by_caller()) throw std::logic_error("mp::dummy: Condition::wait() without holding the lock");
  detail::ConditionCore::Waiter me;
  {
    // Registered before the lock is released: a notify() made by whoever takes the lock next
    // finds this waiter.
    std::lock_guard lock(c.mutex);
    c.waiters.push_back(&me);
  }
  const int level = c.lock->release_all();
  bool notified = false;
  {
    std::unique_lock lock(c.mutex);
    auto woken = [&] { return me.notified; };
    if (timeout) {
      const Duration t = timeout->count() < 0 ? Duration(0) : *timeout;
      c.cv.wait_for(lock, t, woken);
    } else {
      c.cv.wait(lock, woken);
    }
    notified = me.notified;
    if (!notified) c.waiters.remove(&me);
  }
  c.lock->restore(level);
  return notified;
}

void Condition::notify(int n) {
  auto& c = *core_;
  if (!c.lock->owned_by_caller()) throw std::logic_error("mp::dummy: Condition::notify() without holding the lock");
  std::lock_guard lock(c.mutex);
  bool any = false;
  while (n-- > 0 && !c.waiters.empty()) {
    c.waiters.front()->notified = true;
    c.waiters.pop_front();
    any = true;
  }
  if (any) c.cv.notify_all();
}

void Condition::notify_all() { notify(INT_MAX); }

// ---------------------------------------------------------------------------------------------
// Event

Event::Event() : core_(std::make_shared<detail::EventCore>()) {}
bool Event::is_set() const {
  std::lock_guard lock(core_->mutex);
  return core_->flag;
}
void Event::set() {
  std::lock_guard lock(core_->mutex);
  core_->flag = true;
  core_->changed.notify_all();
}
void Event::clear() {
  std::lock_guard lock(core_->mutex);
  core_->flag = false;
}
bool Event::wait(Timeout timeout) {
  auto& c = *core_;
  std::unique_lock lock(c.mutex);
  auto set = [&] { return c.flag; };
  if (timeout) {
    const Duration t = timeout->count() < 0 ? Duration(0) : *timeout;
    return c.changed.wait_for(lock, t, set);
  }
  c.changed.wait(lock, set);
  return true;
}

// ---------------------------------------------------------------------------------------------
// Barrier

Barrier::Barrier(int parties, Timeout timeout) : core_(std::make_shared<detail::BarrierCore>()) {
  if (parties < 1 || parties > kMaxParties) throw std::invalid_argument("mp::dummy: Barrier parties must be in 1..kMaxParties");
  if (timeout && timeout->count() < 0) throw std::invalid_argument("mp::dummy: Barrier timeout must be >= 0");
  core_->parties = parties;
  core_->timeout = timeout;
}

detail::BarrierCore& Barrier::core() const {
  if (!core_) throw std::logic_error("mp::dummy: use of an empty Barrier");
  return *core_;
}

int Barrier::wait(Timeout timeout) {
  auto& c = core();
  std::unique_lock lock(c.mutex);
  // A reset in progress lets the previous waiters leave first (as Python's _enter()).
  c.changed.wait(lock, [&] { return !c.resetting; });
  if (c.broken) throw BrokenBarrierError("mp::dummy: the barrier is broken");
  const int index = c.count++;
  if (c.count == c.parties) {
    c.count = 0;
    ++c.generation;
    c.changed.notify_all();
    return index;
  }
  const std::uint64_t my_generation = c.generation;
  auto done = [&] { return c.generation != my_generation || c.broken || c.resetting; };
  const Timeout limit = timeout ? timeout : c.timeout;
  bool ok = true;
  if (limit) {
    const Duration t = limit->count() < 0 ? Duration(0) : *limit;
    ok = c.changed.wait_for(lock, t, done);
  } else {
    c.changed.wait(lock, done);
  }
  if (c.generation != my_generation) return index;
  // Timed out, broken, aborted or reset: leave, breaking it for the others on a timeout.
  if (!ok) c.broken = true;
  --c.count;
  c.changed.notify_all();
  throw BrokenBarrierError("mp::dummy: the barrier was broken while waiting");
}

void Barrier::reset() {
  auto& c = core();
  std::unique_lock lock(c.mutex);
  if (c.count > 0) {
    c.resetting = true;
    c.changed.notify_all();
    c.changed.wait(lock, [&] { return c.count == 0; });
    c.resetting = false;
  }
  c.broken = false;
  c.changed.notify_all();
}

void Barrier::abort() {
  auto& c = core();
  std::lock_guard lock(c.mutex);
  c.broken = true;
  c.changed.notify_all();
}

int Barrier::parties() const { return core().parties; }
int Barrier::n_waiting() const {
  auto& c = core();
  std::lock_guard lock(c.mutex);
  return c.broken ? 0 : c.count;
}
bool Barrier::broken() const {
  auto& c = core();
  std::lock_guard lock(c.mutex);
  return c.broken;
}

// ---------------------------------------------------------------------------------------------
// Pool

namespace detail {

struct PoolCore : std::enable_shared_from_this<PoolCore> {
  enum class State { running, closed, terminated };
  std::mutex mutex;
  std::condition_variable work;
  std::deque<PoolTask> tasks;
  State state = State::running;
  std::size_t processes = 1;
  std::function<void()> initializer;
  std::optional<int> maxtasks;
  std::vector<std::thread> threads;  // grows when a worker is replaced
  std::mutex join_mutex;
  std::set<std::thread::id> worker_ids;

  void start_worker() {  // with mutex held
    // The worker keeps the core alive: the last Pool copy may drop inside a task (see Owner).
    threads.emplace_back([self = shared_from_this()] { self->worker(); });
    worker_ids.insert(threads.back().get_id());
  }

  void worker() {
    if (initializer) {
      try {
        initializer();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "mp::dummy: Pool initializer threw: %s\n", e.what());
      }
    }
    int done = 0;
    for (;;) {
      PoolTask task;
      {
        std::unique_lock lock(mutex);
        work.wait(lock, [&] { return !tasks.empty() || state != State::running; });
        if (tasks.empty() || state == State::terminated) return;
        task = std::move(tasks.front());
        tasks.pop_front();
      }
      task.run();  // catches the task's exceptions itself
      if (maxtasks && ++done >= *maxtasks) {
        std::lock_guard lock(mutex);
        if (state == State::running || !tasks.empty()) start_worker();
        return;
      }
    }
  }
};

std::shared_ptr<PoolCore> pool_create(PoolOptions options) {
  const int n = options.processes ? *options.processes : cpu_count();
  if (n < 1) throw std::invalid_argument("mp::dummy: Pool needs at least one worker");
  if (options.maxtasksperchild && *options.maxtasksperchild < 1) {
    throw std::invalid_argument("mp::dummy: maxtasksperchild must be >= 1");
  }
  auto core = std::make_shared<PoolCore>();
  core->processes = static_cast<std::size_t>(n);
  core->initializer = std::move(options.initializer);
  core->maxtasks = options.maxtasksperchild;
  std::lock_guard lock(core->mutex);
  for (int i = 0; i < n; ++i) core->start_worker();
  return core;
}

void pool_submit(PoolCore& core, std::vector<PoolTask> tasks) {
  std::lock_guard lock(core.mutex);
  if (core.state != PoolCore::State::running) throw std::logic_error("mp::dummy: Pool not running (it was closed or terminated)");
  for (auto& t : tasks) core.tasks.push_back(std::move(t));
  core.work.notify_all();
}

std::size_t pool_processes(const PoolCore& core) noexcept { return core.processes; }

void pool_close(PoolCore& core) {
  std::lock_guard lock(core.mutex);
  if (core.state == PoolCore::State::running) core.state = PoolCore::State::closed;
  core.work.notify_all();
}

void pool_terminate(PoolCore& core) {
  std::deque<PoolTask> pending;
  {
    std::lock_guard lock(core.mutex);
    core.state = PoolCore::State::terminated;
    pending.swap(core.tasks);
    core.work.notify_all();
  }
  auto error = std::make_exception_ptr(ProcessError("mp::dummy: the pool was terminated before the task ran"));
  for (auto& t : pending) t.fail(error);
}

void pool_join(PoolCore& core) {
  {
    std::lock_guard lock(core.mutex);
    if (core.state == PoolCore::State::running) throw std::logic_error("mp::dummy: Pool::join() before close() or terminate()");
    if (core.worker_ids.count(std::this_thread::get_id()) != 0) {
      throw std::logic_error("mp::dummy: Pool::join() from a worker of the same pool");
    }
  }
  std::lock_guard joining(core.join_mutex);
  for (std::size_t i = 0;; ++i) {
    std::thread t;
    {
      std::lock_guard lock(core.mutex);
      if (i >= core.threads.size()) break;
      t = std::move(core.threads[i]);
    }
    if (t.joinable()) t.join();
  }
}

}  // namespace detail

/// Owns the pool's threads: the last copy of a Pool terminates and joins it.
struct Pool::Owner {
  std::shared_ptr<detail::PoolCore> core;
  ~Owner() {
    if (!core) return;
    detail::pool_terminate(*core);
    try {
      detail::pool_join(*core);
    } catch (...) {
      // The last copy dropped in a worker of the pool itself: the workers exit on their own.
      std::lock_guard lock(core->mutex);
      for (auto& t : core->threads) {
        if (t.joinable()) t.detach();
      }
    }
  }
};

Pool::Pool(std::optional<int> processes) : Pool(PoolOptions{processes, {}, std::nullopt}) {}
Pool::Pool(PoolOptions options) : owner_(std::make_shared<Owner>()) { owner_->core = detail::pool_create(std::move(options)); }

detail::PoolCore& Pool::core() const {
  if (!owner_) throw std::logic_error("mp::dummy: use of a moved-from Pool");
  return *owner_->core;
}

}  // namespace mp::dummy
