// The waiting objects of CPython's SyncManager, served by a C++ manager: Queue, JoinableQueue,
// Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event, Barrier (and Array, which does not
// wait). Method names, arguments, exposed lists and exceptions are those of queue.Queue,
// threading.* and CPython's AcquirerProxy/ConditionProxy/EventProxy/BarrierProxy/ArrayProxy, so a
// Python client's m.Queue() or m.Lock() works on a C++ manager.
//
// The server runs each client connection on a thread of its own (as CPython's does) and does not
// serialize calls to these objects (TypeInfo::waits): each object has a mutex and a condition
// variable of its own, and a wait releases the mutex, so Queue.get waiting for one client never
// holds up Queue.put from another. Every wait honours its timeout and ends when the server stops
// (TypeInfo::cancel), so that no server thread is left waiting. Whoever calls is known by the
// server thread serving its connection: an RLock or a Condition is owned by a connection, as
// CPython's are owned by the server thread of that connection.
#include <multiprocessing/context.hpp>
#include <multiprocessing/managers.hpp>

#include "manager_pickle.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <limits>
#include <mutex>
#include <thread>

namespace mp::detail::managers {
namespace {

using pickle::Value;
using Clock = std::chrono::steady_clock;

// A wait longer than this is a wait without end (and keeps time_point arithmetic in range).
constexpr double kForeverSeconds = 1e8;

// Python's keyword arguments: the positional args, then kwds by name, then the defaults. A
// missing argument without a default or an unknown keyword is Python's TypeError.
struct Param {
  const char* name;
  std::optional<Value> fallback;
};
std::vector<Value> bind(const char* method, const Value& args, const Value& kwds, std::initializer_list<Param> params) {
  if (args.size() > params.size())
    throw ArgumentCountError(std::string(method) + "() takes at most " + std::to_string(params.size()) +
                             " arguments (" + std::to_string(args.size()) + " given)");
  std::vector<Value> out;
  std::size_t i = 0, used = 0;
  for (const Param& p : params) {
    std::optional<Value> given;
    if (i < args.size()) given = args[i];
    if (kwds.size() != 0) {
      for (auto& [k, v] : kwds.as<std::vector<std::pair<Value, Value>>>())
        if (k.is<std::string>() && k.as<std::string>() == p.name) {
          if (given) throw ArgumentCountError(std::string(method) + "() got multiple values for argument '" + p.name + "'");
          given = v;
          ++used;
        }
    }
    if (!given && !p.fallback) throw ArgumentCountError(std::string(method) + "() missing required argument '" + p.name + "'");
    out.push_back(given ? *given : *p.fallback);
    ++i;
  }
  if (used != kwds.size()) throw ArgumentCountError(std::string(method) + "() got an unexpected keyword argument");
  return out;
}

[[noreturn]] void python_error(const std::string& type, const std::string& message) {
  throw PythonError(type, Value::tuple({Value(message)}), type + ": " + message);
}

// A timeout argument: None (or negative when negative_is_forever, as Lock.acquire's -1) waits
// without end.
std::optional<double> seconds(const Value& v, bool negative_is_forever) {
  if (v.is_none()) return std::nullopt;
  if (!v.is<double>() && !v.is<std::int64_t>() && !v.is<bool>()) python_error("builtins.TypeError", "timeout must be a number or None");
  const double t = v.as<double>();
  if (t != t) python_error("builtins.ValueError", "timeout must not be NaN");
  if (t < 0) {
    if (negative_is_forever) return std::nullopt;
    python_error("builtins.ValueError", "'timeout' must be a non-negative number");
  }
  return t > kForeverSeconds ? std::nullopt : std::optional<double>(t);
}

bool truth(const Value& v) {
  if (v.is_none()) return false;
  if (v.is<bool>()) return v.as<bool>();
  if (v.is<double>()) return v.as<double>() != 0.0;
  if (v.type_name() == "int") return !(v == Value(0));
  return v.size() != 0;
}

// The mutex, condition variable and stop flag every waiting object has.
struct Waiting {
  std::mutex mutex;
  std::condition_variable changed;
  bool cancelled = false;

  // Waits until done() holds: false when the timeout ran out first. Throws when the server stops.
  template <class Done>
  bool wait(std::unique_lock<std::mutex>& lock, std::optional<double> timeout, Done done) {
    const auto ready = [&] { return cancelled || done(); };
    if (!timeout) {
      changed.wait(lock, ready);
    } else {
      const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(*timeout));
      if (!changed.wait_until(lock, until, ready)) return false;
    }
    if (cancelled) python_error("builtins.EOFError", "the manager is shutting down");
    return true;
  }
  void cancel() {
    std::lock_guard lock(mutex);
    cancelled = true;
    changed.notify_all();
  }
};

using Caller = std::thread::id;  // the server thread of the calling connection
Caller caller() { return std::this_thread::get_id(); }

template <class T>
std::shared_ptr<TypeInfo> waiting_type(const std::string& id, std::vector<std::string> exposed,
                                       std::shared_ptr<void> (*make)(const Value& args, const Value& kwds)) {
  auto info = std::make_shared<TypeInfo>();
  info->type_id = id;
  info->cpp_type = &typeid(T);
  info->factory = make;
  info->exposed = std::move(exposed);
  info->waits = true;
  info->cancel = [](void* self) { static_cast<T*>(self)->cancel(); };
  return info;
}
template <class T>
void method(TypeInfo& info, const std::string& name, Value (*fn)(T&, const Value& args, const Value& kwds)) {
  info.methods_kw[name] = [fn](void* self, const Value& args, const Value& kwds) {
    return fn(*static_cast<T*>(self), args, kwds);
  };
}

// ---- queue.Queue ----
struct Queue : Waiting {
  std::size_t maxsize = 0;  // 0: unbounded
  std::deque<Value> items;
  std::uint64_t unfinished = 0;
  bool full() const { return maxsize > 0 && items.size() >= maxsize; }
};

Value queue_put(Queue& q, const Value& item, bool block, std::optional<double> timeout) {
  std::unique_lock lock(q.mutex);
  if (q.full()) {
    if (!block || !q.wait(lock, timeout, [&] { return !q.full(); }))
      throw PythonError("queue.Full", Value::tuple(), "queue.Full");
  }
  q.items.push_back(item);
  ++q.unfinished;
  q.changed.notify_all();
  return Value();
}
Value queue_get(Queue& q, bool block, std::optional<double> timeout) {
  std::unique_lock lock(q.mutex);
  if (q.items.empty()) {
    if (!block || !q.wait(lock, timeout, [&] { return !q.items.empty(); }))
      throw PythonError("_queue.Empty", Value::tuple(), "queue.Empty");
  }
  Value v = std::move(q.items.front());
  q.items.pop_front();
  q.changed.notify_all();
  return v;
}

std::shared_ptr<TypeInfo> queue_type(const std::string& id) {
  auto info = waiting_type<Queue>(
      id, {"empty", "full", "get", "get_nowait", "join", "put", "put_nowait", "qsize", "task_done"},
      [](const Value& args, const Value& kwds) -> std::shared_ptr<void> {
        auto a = bind("Queue", args, kwds, {{"maxsize", Value(0)}});
        auto q = std::make_shared<Queue>();
        const std::int64_t n = a[0].as<std::int64_t>();
        q->maxsize = n > 0 ? static_cast<std::size_t>(n) : 0;
        return q;
      });
  method<Queue>(*info, "put", +[](Queue& q, const Value& args, const Value& kwds) {
    auto a = bind("put", args, kwds, {{"item", {}}, {"block", Value(true)}, {"timeout", Value()}});
    const bool block = truth(a[1]);
    return queue_put(q, a[0], block, block ? seconds(a[2], false) : std::nullopt);
  });
  method<Queue>(*info, "put_nowait", +[](Queue& q, const Value& args, const Value& kwds) {
    auto a = bind("put_nowait", args, kwds, {{"item", {}}});
    return queue_put(q, a[0], false, std::nullopt);
  });
  method<Queue>(*info, "get", +[](Queue& q, const Value& args, const Value& kwds) {
    auto a = bind("get", args, kwds, {{"block", Value(true)}, {"timeout", Value()}});
    const bool block = truth(a[0]);
    return queue_get(q, block, block ? seconds(a[1], false) : std::nullopt);
  });
  method<Queue>(*info, "get_nowait", +[](Queue& q, const Value& args, const Value& kwds) {
    bind("get_nowait", args, kwds, {});
    return queue_get(q, false, std::nullopt);
  });
  method<Queue>(*info, "qsize", +[](Queue& q, const Value& args, const Value& kwds) {
    bind("qsize", args, kwds, {});
    std::lock_guard lock(q.mutex);
    return Value(q.items.size());
  });
  method<Queue>(*info, "empty", +[](Queue& q, const Value& args, const Value& kwds) {
    bind("empty", args, kwds, {});
    std::lock_guard lock(q.mutex);
    return Value(q.items.empty());
  });
  method<Queue>(*info, "full", +[](Queue& q, const Value& args, const Value& kwds) {
    bind("full", args, kwds, {});
    std::lock_guard lock(q.mutex);
    return Value(q.full());
  });
  method<Queue>(*info, "task_done", +[](Queue& q, const Value& args, const Value& kwds) {
    bind("task_done", args, kwds, {});
    std::lock_guard lock(q.mutex);
    if (q.unfinished == 0) python_error("builtins.ValueError", "task_done() called too many times");
    if (--q.unfinished == 0) q.changed.notify_all();
    return Value();
  });
  method<Queue>(*info, "join", +[](Queue& q, const Value& args, const Value& kwds) {
    bind("join", args, kwds, {});
    std::unique_lock lock(q.mutex);
    q.wait(lock, std::nullopt, [&] { return q.unfinished == 0; });
    return Value();
  });
  return info;
}

// ---- threading.Lock, RLock, Semaphore, BoundedSemaphore ----
// One shape for the four: a count of free units and, for an RLock, an owner and a depth.
struct Acquirer : Waiting {
  enum class Kind { lock, rlock, semaphore, bounded } kind = Kind::lock;
  std::int64_t value = 1;    // free units (Lock: 1 free, 0 held)
  std::int64_t initial = 1;  // BoundedSemaphore's bound
  Caller owner{};            // RLock
  std::int64_t depth = 0;    // RLock
};

Value acquire(Acquirer& l, const Value& args, const Value& kwds);
Value release(Acquirer& l, const Value& args, const Value& kwds);

std::shared_ptr<TypeInfo> acquirer_type(const std::string& id, Acquirer::Kind kind) {
  std::shared_ptr<void> (*make)(const Value&, const Value&);
  if (kind == Acquirer::Kind::lock) {
    make = [](const Value& args, const Value& kwds) -> std::shared_ptr<void> {
      bind("Lock", args, kwds, {});
      return std::make_shared<Acquirer>();
    };
  } else if (kind == Acquirer::Kind::rlock) {
    make = [](const Value& args, const Value& kwds) -> std::shared_ptr<void> {
      bind("RLock", args, kwds, {});
      auto a = std::make_shared<Acquirer>();
      a->kind = Acquirer::Kind::rlock;
      return a;
    };
  } else if (kind == Acquirer::Kind::semaphore) {
    make = [](const Value& args, const Value& kwds) -> std::shared_ptr<void> {
      auto p = bind("Semaphore", args, kwds, {{"value", Value(1)}});
      auto a = std::make_shared<Acquirer>();
      a->kind = Acquirer::Kind::semaphore;
      a->value = a->initial = p[0].as<std::int64_t>();
      if (a->value < 0) python_error("builtins.ValueError", "semaphore initial value must be >= 0");
      return a;
    };
  } else {
    make = [](const Value& args, const Value& kwds) -> std::shared_ptr<void> {
      auto p = bind("BoundedSemaphore", args, kwds, {{"value", Value(1)}});
      auto a = std::make_shared<Acquirer>();
      a->kind = Acquirer::Kind::bounded;
      a->value = a->initial = p[0].as<std::int64_t>();
      if (a->value < 0) python_error("builtins.ValueError", "semaphore initial value must be >= 0");
      return a;
    };
  }
  auto info = waiting_type<Acquirer>(id, {"acquire", "release"}, make);
  method<Acquirer>(*info, "acquire", &acquire);
  method<Acquirer>(*info, "release", &release);
  return info;
}

Value acquire(Acquirer& l, const Value& args, const Value& kwds) {
  const bool lock_like = l.kind == Acquirer::Kind::lock || l.kind == Acquirer::Kind::rlock;
  auto a = bind("acquire", args, kwds, {{"blocking", Value(true)}, {"timeout", lock_like ? Value(-1) : Value()}});
  const bool block = truth(a[0]);
  if (!block && !a[1].is_none() && !(lock_like && a[1] == Value(-1)))
    python_error("builtins.ValueError", "can't specify a timeout for a non-blocking call");
  const std::optional<double> timeout = block ? seconds(a[1], lock_like) : std::optional<double>(0.0);
  std::unique_lock lock(l.mutex);
  if (l.kind == Acquirer::Kind::rlock && l.depth > 0 && l.owner == caller()) {
    ++l.depth;
    return Value(true);
  }
  if (!l.wait(lock, timeout, [&] { return l.value > 0; })) return Value(false);
  --l.value;
  if (l.kind == Acquirer::Kind::rlock) {
    l.owner = caller();
    l.depth = 1;
  }
  return Value(true);
}

Value release(Acquirer& l, const Value& args, const Value& kwds) {
  const bool semaphore = l.kind == Acquirer::Kind::semaphore || l.kind == Acquirer::Kind::bounded;
  std::int64_t n = 1;
  if (semaphore) {
    n = bind("release", args, kwds, {{"n", Value(1)}})[0].as<std::int64_t>();
    if (n < 1) python_error("builtins.ValueError", "n must be one or more");
  } else {
    bind("release", args, kwds, {});
  }
  std::lock_guard lock(l.mutex);
  switch (l.kind) {
    case Acquirer::Kind::lock:
      if (l.value > 0) python_error("builtins.RuntimeError", "release unlocked lock");
      l.value = 1;
      break;
    case Acquirer::Kind::rlock:
      if (l.depth == 0 || l.owner != caller()) python_error("builtins.RuntimeError", "cannot release un-acquired lock");
      if (--l.depth == 0) {
        l.owner = Caller{};
        l.value = 1;
      }
      break;
    case Acquirer::Kind::semaphore:
      l.value += n;
      break;
    case Acquirer::Kind::bounded:
      if (l.value + n > l.initial) python_error("builtins.ValueError", "Semaphore released too many times");
      l.value += n;
      break;
  }
  l.changed.notify_all();
  return Value();
}

// ---- threading.Condition ----
// With an RLock of its own (manager.Condition()), or over a Lock or RLock of the same manager
// (manager.Condition(lock)), whose own mutex then guards the lock's state.
struct Condition : Waiting {
  Caller owner{};  // the own RLock
  std::int64_t depth = 0;
  std::shared_ptr<Acquirer> lock;  // Condition(lock)
  std::deque<std::shared_ptr<bool>> waiters;  // each waiter's "notified" flag, oldest first

  bool owned() {  // (without the condition's mutex)
    if (!lock) {
      std::lock_guard guard(mutex);
      return depth > 0 && owner == caller();
    }
    std::lock_guard guard(lock->mutex);
    // A Lock has no owner: as Python's Condition._is_owned, held by anyone counts.
    return lock->kind == Acquirer::Kind::rlock ? lock->depth > 0 && lock->owner == caller() : lock->value == 0;
  }
  // Gives the lock up entirely; returns the depth to restore.
  std::int64_t release_all() {
    if (!lock) {
      std::lock_guard guard(mutex);
      const std::int64_t saved = depth;
      depth = 0;
      owner = Caller{};
      changed.notify_all();
      return saved;
    }
    std::lock_guard guard(lock->mutex);
    const std::int64_t saved = lock->kind == Acquirer::Kind::rlock ? lock->depth : 1;
    lock->depth = 0;
    lock->owner = Caller{};
    lock->value = 1;
    lock->changed.notify_all();
    return saved;
  }
  void take_back(std::int64_t saved) {
    if (!lock) {
      std::unique_lock guard(mutex);
      wait(guard, std::nullopt, [&] { return depth == 0; });
      owner = caller();
      depth = saved;
      return;
    }
    std::unique_lock guard(lock->mutex);
    lock->wait(guard, std::nullopt, [&] { return lock->value > 0; });
    lock->value = 0;
    if (lock->kind == Acquirer::Kind::rlock) {
      lock->owner = caller();
      lock->depth = saved;
    }
  }
};

std::shared_ptr<TypeInfo> condition_type() {
  auto info = waiting_type<Condition>(
      "Condition", {"acquire", "release", "wait", "notify", "notify_all"},
      [](const Value& args, const Value& kwds) -> std::shared_ptr<void> {
        auto a = bind("Condition", args, kwds, {{"lock", Value()}});
        auto c = std::make_shared<Condition>();
        if (!a[0].is_none()) {
          auto [object, type] = local_object(a[0]);
          if (!object || type == nullptr || type->cpp_type != &typeid(Acquirer) ||
              (type->type_id != "Lock" && type->type_id != "RLock"))
            python_error("builtins.TypeError", "Condition(lock): lock must be a Lock or RLock proxy of this manager");
          c->lock = std::static_pointer_cast<Acquirer>(object);
        }
        return c;
      });
  method<Condition>(*info, "acquire", +[](Condition& c, const Value& args, const Value& kwds) {
    if (c.lock) return acquire(*c.lock, args, kwds);
    auto a = bind("acquire", args, kwds, {{"blocking", Value(true)}, {"timeout", Value(-1)}});
    const bool block = truth(a[0]);
    const std::optional<double> timeout = block ? seconds(a[1], true) : std::optional<double>(0.0);
    std::unique_lock lock(c.mutex);
    if (c.depth > 0 && c.owner == caller()) {
      ++c.depth;
      return Value(true);
    }
    if (!c.wait(lock, timeout, [&] { return c.depth == 0; })) return Value(false);
    c.owner = caller();
    c.depth = 1;
    return Value(true);
  });
  method<Condition>(*info, "release", +[](Condition& c, const Value& args, const Value& kwds) {
    if (c.lock) return release(*c.lock, args, kwds);
    bind("release", args, kwds, {});
    std::lock_guard lock(c.mutex);
    if (!(c.depth > 0 && c.owner == caller())) python_error("builtins.RuntimeError", "cannot release un-acquired lock");
    if (--c.depth == 0) {
      c.owner = Caller{};
      c.changed.notify_all();
    }
    return Value();
  });
  method<Condition>(*info, "wait", +[](Condition& c, const Value& args, const Value& kwds) {
    auto a = bind("wait", args, kwds, {{"timeout", Value()}});
    const std::optional<double> timeout = seconds(a[0], true);
    if (!c.owned()) python_error("builtins.RuntimeError", "cannot wait on un-acquired lock");
    // Registered before the lock is given up, so that a notify right after cannot be missed.
    auto notified = std::make_shared<bool>(false);
    {
      std::lock_guard lock(c.mutex);
      c.waiters.push_back(notified);
    }
    const std::int64_t saved = c.release_all();
    bool got = false;
    {
      std::unique_lock lock(c.mutex);
      try {
        got = c.wait(lock, timeout, [&] { return *notified; });
      } catch (...) {
        std::erase(c.waiters, notified);
        throw;
      }
      if (!got) std::erase(c.waiters, notified);
    }
    c.take_back(saved);
    return Value(got);
  });
  const auto notify = +[](Condition& c, std::int64_t n) {
    if (!c.owned()) python_error("builtins.RuntimeError", "cannot notify on un-acquired lock");
    std::lock_guard lock(c.mutex);
    for (; n > 0 && !c.waiters.empty(); --n) {
      *c.waiters.front() = true;
      c.waiters.pop_front();
    }
    c.changed.notify_all();
  };
  info->methods_kw["notify"] = [notify](void* self, const Value& args, const Value& kwds) {
    notify(*static_cast<Condition*>(self), bind("notify", args, kwds, {{"n", Value(1)}})[0].as<std::int64_t>());
    return Value();
  };
  info->methods_kw["notify_all"] = [notify](void* self, const Value& args, const Value& kwds) {
    bind("notify_all", args, kwds, {});
    notify(*static_cast<Condition*>(self), std::numeric_limits<std::int64_t>::max());
    return Value();
  };
  return info;
}

// ---- threading.Event ----
struct Event : Waiting {
  bool flag = false;
};

std::shared_ptr<TypeInfo> event_type() {
  auto info = waiting_type<Event>("Event", {"is_set", "set", "clear", "wait"},
                                  [](const Value& args, const Value& kwds) -> std::shared_ptr<void> {
                                    bind("Event", args, kwds, {});
                                    return std::make_shared<Event>();
                                  });
  method<Event>(*info, "is_set", +[](Event& e, const Value& args, const Value& kwds) {
    bind("is_set", args, kwds, {});
    std::lock_guard lock(e.mutex);
    return Value(e.flag);
  });
  method<Event>(*info, "set", +[](Event& e, const Value& args, const Value& kwds) {
    bind("set", args, kwds, {});
    std::lock_guard lock(e.mutex);
    e.flag = true;
    e.changed.notify_all();
    return Value();
  });
  method<Event>(*info, "clear", +[](Event& e, const Value& args, const Value& kwds) {
    bind("clear", args, kwds, {});
    std::lock_guard lock(e.mutex);
    e.flag = false;
    return Value();
  });
  method<Event>(*info, "wait", +[](Event& e, const Value& args, const Value& kwds) {
    auto a = bind("wait", args, kwds, {{"timeout", Value()}});
    const std::optional<double> timeout = seconds(a[0], true);
    std::unique_lock lock(e.mutex);
    return Value(e.wait(lock, timeout, [&] { return e.flag; }));
  });
  return info;
}

// ---- threading.Barrier ----
// Each round of waiters shares a Round: released when the last party arrives, broken by a
// timeout, abort() or reset().
struct Barrier : Waiting {
  struct Round {
    bool released = false;
    bool broken = false;
  };
  std::int64_t parties = 1;
  void (*action)() = nullptr;  // run by the last party to arrive, before the others are released
  std::optional<double> default_timeout;
  std::int64_t count = 0;  // parties waiting in the current round
  bool broken = false;
  std::shared_ptr<Round> round = std::make_shared<Round>();

  void break_round() {  // (with the mutex held)
    round->broken = true;
    round = std::make_shared<Round>();
    count = 0;
    changed.notify_all();
  }
};

[[noreturn]] void broken_barrier() {
  throw PythonError("threading.BrokenBarrierError", Value::tuple(), "threading.BrokenBarrierError");
}

std::shared_ptr<TypeInfo> barrier_type() {
  auto info = waiting_type<Barrier>(
      "Barrier", {"__getattribute__", "wait", "abort", "reset"}, [](const Value& args, const Value& kwds) -> std::shared_ptr<void> {
        auto a = bind("Barrier", args, kwds, {{"parties", {}}, {"action", Value()}, {"timeout", Value()}});
        auto b = std::make_shared<Barrier>();
        if (!a[1].is_none()) {
          // A C++ client's function, by code reference (a Python callable cannot run here).
          if (!a[1].is<Bytes>())
            python_error("builtins.TypeError", "a C++ manager's Barrier action must be a C++ function of the manager's build");
          b->action = reinterpret_cast<void (*)()>(resolve_code_ref_bytes(a[1].as<Bytes>()));
        }
        b->parties = a[0].as<std::int64_t>();
        if (b->parties < 1) python_error("builtins.ValueError", "parties must be > 0");
        b->default_timeout = seconds(a[2], false);
        return b;
      });
  method<Barrier>(*info, "wait", +[](Barrier& b, const Value& args, const Value& kwds) {
    auto a = bind("wait", args, kwds, {{"timeout", Value()}});
    std::optional<double> timeout = a[0].is_none() ? b.default_timeout : seconds(a[0], false);
    std::unique_lock lock(b.mutex);
    if (b.broken) broken_barrier();
    const std::int64_t index = b.count++;
    if (b.count == b.parties) {
      if (b.action != nullptr) {
        // As threading.Barrier: the action runs before anyone is released; when it throws, the
        // barrier breaks for everyone and this party gets the exception.
        try {
          b.action();
        } catch (const std::exception& e) {
          b.broken = true;
          b.break_round();
          python_error("builtins.RuntimeError", std::string("the barrier's action threw: ") + e.what());
        } catch (...) {
          b.broken = true;
          b.break_round();
          python_error("builtins.RuntimeError", "the barrier's action threw");
        }
      }
      b.round->released = true;
      b.round = std::make_shared<Barrier::Round>();
      b.count = 0;
      b.changed.notify_all();
      return Value(index);
    }
    std::shared_ptr<Barrier::Round> mine = b.round;
    const bool done = b.wait(lock, timeout, [&] { return mine->released || mine->broken; });
    if (mine->released) return Value(index);
    if (!done) {  // the timeout ran out: the barrier breaks for everyone, as Python's does
      b.broken = true;
      b.break_round();
    }
    broken_barrier();
  });
  method<Barrier>(*info, "abort", +[](Barrier& b, const Value& args, const Value& kwds) {
    bind("abort", args, kwds, {});
    std::lock_guard lock(b.mutex);
    b.broken = true;
    b.break_round();
    return Value();
  });
  method<Barrier>(*info, "reset", +[](Barrier& b, const Value& args, const Value& kwds) {
    bind("reset", args, kwds, {});
    std::lock_guard lock(b.mutex);
    if (b.count > 0) b.break_round();  // the parties waiting now get BrokenBarrierError
    b.broken = false;
    return Value();
  });
  method<Barrier>(*info, "__getattribute__", +[](Barrier& b, const Value& args, const Value& kwds) {
    auto a = bind("__getattribute__", args, kwds, {{"name", {}}});
    const std::string name = a[0].is<std::string>() ? a[0].as<std::string>() : "";
    std::lock_guard lock(b.mutex);
    if (name == "parties") return Value(b.parties);
    if (name == "n_waiting") return Value(b.broken ? 0 : b.count);
    if (name == "broken") return Value(b.broken);
    throw AttributeError("'Barrier' object has no attribute " + a[0].repr());
  });
  return info;
}

// ---- array.array (manager.Array(typecode, sequence)) ----
struct Array {
  char typecode = 'i';
  std::vector<Value> items;  // (calls are serialized by the server: Array does not wait)

  Value checked(const Value& v) const {
    if (typecode == 'f' || typecode == 'd') {
      if (!v.is<double>() && v.type_name() != "int") python_error("builtins.TypeError", "must be real number, not " + v.type_name());
      return Value(v.as<double>());
    }
    if (v.type_name() != "int") python_error("builtins.TypeError", "an integer is required (got type " + v.type_name() + ")");
    const auto in = [&](auto low, auto high) {
      using L = decltype(low);
      if (!v.is<L>() || v.as<L>() < low || v.as<L>() > high) python_error("builtins.OverflowError", "value out of range for typecode " + std::string(1, typecode));
    };
    switch (typecode) {
      case 'b': in(std::int64_t{-128}, std::int64_t{127}); break;
      case 'B': in(std::int64_t{0}, std::int64_t{255}); break;
      case 'h': in(std::int64_t{-32768}, std::int64_t{32767}); break;
      case 'H': in(std::int64_t{0}, std::int64_t{65535}); break;
      case 'i': case 'l': in(std::int64_t{std::numeric_limits<std::int32_t>::min()}, std::int64_t{std::numeric_limits<std::int32_t>::max()}); break;
      case 'I': case 'L': in(std::int64_t{0}, std::int64_t{std::numeric_limits<std::uint32_t>::max()}); break;
      case 'q': in(std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()); break;
      case 'Q': in(std::uint64_t{0}, std::numeric_limits<std::uint64_t>::max()); break;
      default: break;
    }
    return v;
  }
  std::size_t index(const Value& i) const {
    if (i.type_name() != "int") python_error("builtins.TypeError", "array indices must be integers");
    std::int64_t k = i.as<std::int64_t>();
    const auto n = static_cast<std::int64_t>(items.size());
    if (k < 0) k += n;
    if (k < 0 || k >= n) throw IndexError("array index out of range");
    return static_cast<std::size_t>(k);
  }
};

std::shared_ptr<TypeInfo> array_type() {
  auto info = std::make_shared<TypeInfo>();
  info->type_id = "Array";
  info->cpp_type = &typeid(Array);
  info->exposed = {"__len__", "__getitem__", "__setitem__"};
  info->factory = [](const Value& args, const Value& kwds) -> std::shared_ptr<void> {
    auto a = bind("Array", args, kwds, {{"typecode", {}}, {"sequence", {}}, {"lock", Value(true)}});
    const std::string code = a[0].is<std::string>() ? a[0].as<std::string>() : "";
    if (code.size() != 1 || std::string_view("bBhHiIlLqQfd").find(code[0]) == std::string_view::npos)
      python_error("builtins.ValueError", "bad typecode (must be b, B, h, H, i, I, l, L, q, Q, f or d)");
    auto arr = std::make_shared<Array>();
    arr->typecode = code[0];
    for (const Value& v : a[1].as<std::vector<Value>>()) arr->items.push_back(arr->checked(v));
    return arr;
  };
  info->methods_kw["__len__"] = [](void* self, const Value& args, const Value& kwds) {
    bind("__len__", args, kwds, {});
    return Value(static_cast<Array*>(self)->items.size());
  };
  info->methods_kw["__getitem__"] = [](void* self, const Value& args, const Value& kwds) {
    auto& arr = *static_cast<Array*>(self);
    return arr.items[arr.index(bind("__getitem__", args, kwds, {{"index", {}}})[0])];
  };
  info->methods_kw["__setitem__"] = [](void* self, const Value& args, const Value& kwds) {
    auto& arr = *static_cast<Array*>(self);
    auto a = bind("__setitem__", args, kwds, {{"index", {}}, {"value", {}}});
    arr.items[arr.index(a[0])] = arr.checked(a[1]);
    return Value();
  };
  // _getvalue(): a real array.array for a Python client (array.array(typecode, list)).
  info->getvalue = [](void* self) {
    auto& arr = *static_cast<Array*>(self);
    return Value::tuple({Value(mp::bytes(pickle::detail::kObjectTag)), Value("array.array"),
                         Value::tuple({Value(std::string(1, arr.typecode)), Value::list(arr.items)}), Value()});
  };
  return info;
}

// ---- multiprocessing.pool.Pool (manager.Pool(processes)) ----
// An mp::Pool in the manager process. Its calls come from a C++ PoolProxy as code references:
// the entry (detail::managers::pool_map_entry / pool_apply_entry / pool_*_async_entry /
// pool_imap_entry, instantiated by the client for its task's types), the task when it is a
// function pointer, and the encoded arguments. The manager resolves both in its own build (a spawn
// child finds its target the same way) and runs the typed call on its pool; the reply is the
// encoded result or task error. Calls are not serialized (a map waits for its workers while other
// clients use the pool), and a stopping server terminates the pool, which fails the calls waiting
// on it.
//
// apply_async/map_async/starmap_async make an 'AsyncResult' object and imap/imap_unordered an
// 'IMapIterator' object (CPython's method_to_typeid), each holding the typed mp::AsyncResult or
// mp::IMapIterator the entry made, and a handle to the pool (so the pool outlives its proxy while
// a result of it is alive, as CPython's ApplyResult holds its pool). Their waits are bounded by
// the timeout the client sends; a C++ client sends at most kPoolWaitSlice at a time.
struct ManagedPool {
  mp::Pool pool;
  explicit ManagedPool(mp::Pool p) : pool(std::move(p)) {}
  void cancel() {
    try {
      pool.terminate();
    } catch (const std::exception&) {
    }
  }
};

// A pool call's (entry, task, arguments): the entry's address, the task and the encoded arguments.
struct PoolCall {
  std::uintptr_t entry = 0;
  ErasedFn task = nullptr;
  Bytes arguments;
};
PoolCall pool_call_args(const char* method, const Value& args, const Value& kwds) {
  auto a = bind(method, args, kwds, {{"entry", {}}, {"task", Value()}, {"arguments", {}}});
  if (!a[0].is<Bytes>() || !(a[1].is_none() || a[1].is<Bytes>()) || !a[2].is<Bytes>())
    python_error("builtins.TypeError",
                 std::string("a C++ manager's Pool runs C++ tasks only: Pool.") + method +
                     "() takes the code references a C++ PoolProxy of the manager's build sends");
  PoolCall call;
  call.entry = resolve_code_ref_bytes(a[0].as<Bytes>());
  call.task = a[1].is_none() ? ErasedFn{nullptr} : reinterpret_cast<ErasedFn>(resolve_code_ref_bytes(a[1].as<Bytes>()));
  call.arguments = a[2].as<Bytes>();
  return call;
}

Value pool_call(ManagedPool& p, const char* method, const Value& args, const Value& kwds) {
  const PoolCall call = pool_call_args(method, args, kwds);
  return Value(reinterpret_cast<PoolEntry>(call.entry)(p.pool, call.task, call.arguments));
}

// Submits a call that returns a new object; the pool's refusal (closed: std::logic_error) is
// Python's ValueError("Pool not running"), as CPython's Pool raises it.
template <class Submit>
auto pool_submit(Submit submit) {
  try {
    return submit();
  } catch (const std::logic_error& e) {
    if (dynamic_cast<const std::invalid_argument*>(&e) != nullptr || dynamic_cast<const std::out_of_range*>(&e) != nullptr)
      throw;
    python_error("builtins.ValueError", e.what());
  }
}

struct ManagedAsyncResult {
  std::shared_ptr<PoolAsyncHeld> held;
  void cancel() { held->cancel(); }
};
struct ManagedIMapIterator {
  std::shared_ptr<PoolIMapHeld> held;
  void cancel() { held->cancel(); }
};

[[noreturn]] void pool_timeout() {
  throw PythonError("multiprocessing.context.TimeoutError", Value::tuple(), "multiprocessing.context.TimeoutError");
}
Timeout pool_wait_timeout(const Value& v) {
  const std::optional<double> t = seconds(v, false);
  return t ? Timeout(Duration(*t)) : Timeout();
}

std::shared_ptr<void> made_by_a_pool_only(const Value&, const Value&) {
  python_error("builtins.TypeError", "this object is only made by a Pool's methods");
}

std::shared_ptr<TypeInfo> async_result_type() {
  // CPython's AsyncResult (ApplyResult/MapResult): get, wait, ready, successful. get() returns the
  // encoded outcome (value or task error), which the C++ client decodes and raises.
  auto info = waiting_type<ManagedAsyncResult>("AsyncResult", {"get", "ready", "successful", "wait"}, &made_by_a_pool_only);
  method<ManagedAsyncResult>(*info, "get", +[](ManagedAsyncResult& r, const Value& args, const Value& kwds) {
    auto a = bind("get", args, kwds, {{"timeout", Value()}});
    if (!r.held->wait(pool_wait_timeout(a[0]))) pool_timeout();
    return Value(r.held->outcome());
  });
  method<ManagedAsyncResult>(*info, "wait", +[](ManagedAsyncResult& r, const Value& args, const Value& kwds) {
    auto a = bind("wait", args, kwds, {{"timeout", Value()}});
    return Value(r.held->wait(pool_wait_timeout(a[0])));
  });
  method<ManagedAsyncResult>(*info, "ready", +[](ManagedAsyncResult& r, const Value& args, const Value& kwds) {
    bind("ready", args, kwds, {});
    return Value(r.held->ready());
  });
  method<ManagedAsyncResult>(*info, "successful", +[](ManagedAsyncResult& r, const Value& args, const Value& kwds) {
    bind("successful", args, kwds, {});
    if (!r.held->ready()) python_error("builtins.ValueError", "the result is not ready");
    return Value(r.held->successful());
  });
  return info;
}

std::shared_ptr<TypeInfo> imap_iterator_type() {
  // CPython's IMapIterator: next(timeout=None) and __next__. next() returns the encoded outcome;
  // StopIteration past the end, multiprocessing.TimeoutError when the timeout runs out. Calls
  // are serialized (one position), so this is not a waiting type; its cancel still terminates
  // the pool when the server stops, which ends a wait without a timeout.
  auto info = std::make_shared<TypeInfo>();
  info->type_id = "IMapIterator";
  info->cpp_type = &typeid(ManagedIMapIterator);
  info->factory = &made_by_a_pool_only;
  info->exposed = {"__next__", "next"};
  info->cancel = [](void* self) { static_cast<ManagedIMapIterator*>(self)->cancel(); };
  for (const char* name : {"__next__", "next"})
    method<ManagedIMapIterator>(*info, name, +[](ManagedIMapIterator& it, const Value& args, const Value& kwds) {
      auto a = bind("next", args, kwds, {{"timeout", Value()}});
      std::optional<Bytes> outcome;
      try {
        outcome = it.held->next(pool_wait_timeout(a[0]));
      } catch (const mp::StopIteration&) {
        throw PythonError("builtins.StopIteration", Value::tuple(), "StopIteration");
      }
      if (!outcome) pool_timeout();
      return Value(std::move(*outcome));
    });
  return info;
}

// Python's method_to_typeid: the pool's *_async and imap calls make objects of these typeids.
template <class Made, class Entry, class... Extra>
ProxyMethod pool_maker(const char* method, Extra... extra) {
  return [method, extra...](void* self, const Value& args) -> std::shared_ptr<void> {
    auto& p = *static_cast<ManagedPool*>(self);
    const PoolCall call = pool_call_args(method, args, Value::dict());
    auto held = pool_submit([&] { return reinterpret_cast<Entry>(call.entry)(p.pool, call.task, call.arguments, extra...); });
    return std::make_shared<Made>(Made{std::move(held)});
  };
}

std::shared_ptr<TypeInfo> pool_type() {
  auto info = waiting_type<ManagedPool>(
      "Pool",
      {"apply", "apply_async", "close", "imap", "imap_unordered", "join", "map", "map_async", "starmap", "starmap_async",
       "terminate"},
      [](const Value& args, const Value& kwds) -> std::shared_ptr<void> {
        auto a = bind("Pool", args, kwds, {{"processes", Value()}, {"start_method", Value()}});
        PoolOptions options;
        if (!a[0].is_none()) {
          if (a[0].type_name() != "int") python_error("builtins.TypeError", "processes must be an int or None");
          const std::int64_t n = a[0].as<std::int64_t>();
          if (n < 1 || n > 4096) python_error("builtins.ValueError", "Number of processes must be at least 1");
          options.processes = static_cast<int>(n);
        }
        if (!a[1].is_none()) {
          if (!a[1].is<std::string>()) python_error("builtins.TypeError", "start_method must be a str or None");
          options.context = get_context(a[1].as<std::string>());
        }
        return std::make_shared<ManagedPool>(mp::Pool(std::move(options)));
      });
  method<ManagedPool>(*info, "apply", +[](ManagedPool& p, const Value& args, const Value& kwds) {
    return pool_call(p, "apply", args, kwds);
  });
  method<ManagedPool>(*info, "map", +[](ManagedPool& p, const Value& args, const Value& kwds) {
    return pool_call(p, "map", args, kwds);
  });
  method<ManagedPool>(*info, "starmap", +[](ManagedPool& p, const Value& args, const Value& kwds) {
    return pool_call(p, "starmap", args, kwds);
  });
  for (const char* name : {"apply_async", "map_async", "starmap_async"})
    info->proxy_methods[name] = {"AsyncResult", pool_maker<ManagedAsyncResult, PoolAsyncEntry>(name)};
  info->proxy_methods["imap"] = {"IMapIterator", pool_maker<ManagedIMapIterator, PoolIMapEntry>("imap", true)};
  info->proxy_methods["imap_unordered"] = {"IMapIterator",
                                           pool_maker<ManagedIMapIterator, PoolIMapEntry>("imap_unordered", false)};
  method<ManagedPool>(*info, "close", +[](ManagedPool& p, const Value& args, const Value& kwds) {
    bind("close", args, kwds, {});
    p.pool.close();
    return Value();
  });
  method<ManagedPool>(*info, "terminate", +[](ManagedPool& p, const Value& args, const Value& kwds) {
    bind("terminate", args, kwds, {});
    p.pool.terminate();
    return Value();
  });
  method<ManagedPool>(*info, "join", +[](ManagedPool& p, const Value& args, const Value& kwds) {
    bind("join", args, kwds, {});
    p.pool.join();
    return Value();
  });
  return info;
}

}  // namespace

std::vector<std::shared_ptr<TypeInfo>> waiting_sync_types() {
  return {queue_type("Queue"),
          queue_type("JoinableQueue"),
          acquirer_type("Lock", Acquirer::Kind::lock),
          acquirer_type("RLock", Acquirer::Kind::rlock),
          acquirer_type("Semaphore", Acquirer::Kind::semaphore),
          acquirer_type("BoundedSemaphore", Acquirer::Kind::bounded),
          condition_type(),
          event_type(),
          barrier_type(),
          array_type(),
          pool_type(),
          async_result_type(),
          imap_iterator_type()};
}

}  // namespace mp::detail::managers
