// Managers and proxies (Python: multiprocessing.managers), speaking CPython's manager protocol
// (PROTOCOLS.md §4) over pickle, so a CPython client can use a C++ manager and a C++ client can use
// a CPython manager.
//
//   mp::BaseManager m(mp::connection::Address("127.0.0.1", 0), mp::bytes("key"));
//   m.register_type<Counter>("Counter").method("add", &Counter::add).method("get", &Counter::get);
//   m.get_server().serve_forever();          // or m.start(): the server in a forked child
//
//   mp::BaseManager c(address, mp::bytes("key"));   // a client, of a C++ or a CPython manager
//   c.connect();
//   mp::BaseProxy counter = c.create("Counter");   // Python: c.Counter()
//   counter.callmethod<void>("add", 5);             // Python: counter.add(5) / _callmethod('add', (5,))
//   int n = counter.callmethod<int>("get");
//
// C++ has no run-time attribute lookup, so the typeid is named in create() rather than being a
// method of the manager, and methods are registered explicitly (.method(name, &T::fn)): the
// registered names are the type's `exposed` list, and anything else is refused as CPython refuses
// a name outside `exposed`. Arguments and results go through mp::pickle::Value, so every type
// pickle.hpp converts can cross.
//
// Errors: an exception raised by a method in the manager arrives as std::out_of_range when it is a
// KeyError or IndexError (the manager maps std::out_of_range to KeyError), as mp::AttributeError
// for an AttributeError (a Namespace's missing attribute), as mp::Empty / mp::Full for queue.Empty /
// queue.Full, as mp::BrokenBarrierError for threading.BrokenBarrierError, otherwise as RemoteError
// whose type_name() is the Python type ("ValueError") and what() "ValueError: msg".
//
// SyncManager serves CPython's typeids, the waiting ones (Queue.get, Lock.acquire,
// Condition.wait, Event.wait, Barrier.wait, Pool.map) waiting in the manager without holding up
// its other clients. Pool and a Barrier's action run C++ code named by code reference (see
// PoolProxy), so they serve C++ clients of the same build only. Proxies convert to pickle::Value as CPython's pickled proxies (BaseProxy::reduce), so
// they can be stored in a manager's dict or sent to a CPython process, which gets a working proxy.
// A failure of the manager itself ('#TRACEBACK': unknown object, name not exposed, bad request)
// is RemoteError with type_name() "RemoteError" and traceback() the server's text. A manager that
// is gone is EOFError or std::system_error (ECONNREFUSED/ECONNRESET), never a hang.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <stdexcept>
#include <utility>
#include <variant>
#include <vector>

#include <multiprocessing/base.hpp>
#include <multiprocessing/connection.hpp>
#include <multiprocessing/pickle.hpp>
#include <multiprocessing/pool.hpp>

namespace mp {

/// Identifies a shared object in a manager (Python: multiprocessing.managers.Token).
struct Token {
  std::string type_id;            // Python's typeid
  connection::Address address;    // the manager's address
  std::string id;                 // the object's id in the manager (opaque)
  friend bool operator==(const Token&, const Token&) = default;
};

/// A reference to an object living in a manager (Python: BaseProxy). A handle: copies share one
/// reference; the manager is told (decref) when the last copy goes, as CPython's proxies do.
/// Each call is a round trip on the proxy's own connection to the manager (opened on first use);
/// calls from several threads on one proxy are serialized.
class BaseProxy {
 public:
  /// An empty proxy: every call throws std::logic_error.
  BaseProxy() = default;
  /// Adopts one reference the manager already counts for token (as a 'create' reply gives).
  BaseProxy(Token token, Bytes authkey, std::vector<std::string> exposed);

  /// Python's _callmethod(name, args): calls the method in the manager and converts its result to
  /// R (void: ignored; pickle::Value: as it came; BaseProxy: a '#PROXY' result). Throws as
  /// described at the top of this header; std::invalid_argument when the result is not an R.
  template <class R = pickle::Value, class... A>
  R callmethod(std::string_view name, const A&... args) {
    pickle::Value result = call(name, pickle::Value::tuple({pickle::Value(args)...}));
    if constexpr (std::is_void_v<R>) {
      return;
    } else if constexpr (std::is_same_v<R, pickle::Value>) {
      return result;
    } else if constexpr (std::is_same_v<R, BaseProxy>) {
      return proxy_from(result);
    } else {
      return result.as<R>();
    }
  }
  /// Python's _getvalue(): a copy of the whole referent.
  template <class T = pickle::Value>
  T getvalue() {
    pickle::Value v = call("#GETVALUE", pickle::Value::tuple());
    if constexpr (std::is_same_v<T, pickle::Value>) {
      return v;
    } else {
      return v.as<T>();
    }
  }
  std::string repr();  // the referent's __repr__ in the manager
  std::string str();   // its __str__

  const Token& token() const;                     // std::logic_error when empty
  const std::vector<std::string>& exposed() const;  // the names the manager exposes
  explicit operator bool() const noexcept { return impl_ != nullptr; }

  /// The type-erased call: args is a tuple. Internal for callmethod(), usable directly.
  pickle::Value call(std::string_view name, const pickle::Value& args);

  /// Python's BaseProxy.__reduce__: the proxy as a pickle value that CPython loads as a working
  /// proxy (multiprocessing.managers.RebuildProxy of the typeid's proxy class, or AutoProxy, with
  /// the Token, 'exposed' and the manager's authkey, so that the receiver can authenticate). This
  /// is what pickle::Value(proxy) gives, so a proxy can be stored in a manager's dict or passed as
  /// an argument. The receiver takes a reference of its own (incref) when it loads it.
  pickle::Value reduce() const;
  /// Python's RebuildProxy: a proxy from such a value (from C++ or CPython) with a reference of
  /// its own (an incref to its manager). The authkey is the one in the value or, as CPython's,
  /// the current process's. std::invalid_argument when v is not a pickled proxy.
  static BaseProxy rebuild(const pickle::Value& v);
  static bool is_reduced(const pickle::Value& v);

  /// The codec's hooks: a proxy crosses to a spawn/forkserver child as a Process argument (its
  /// token, exposed names and the authkey, as CPython includes it while spawning). A child, also
  /// a forked one that inherits a proxy, *borrows* the parent's reference (unlike CPython, whose
  /// child increfs): the parent must keep its proxy until the children are done with it; a child
  /// never decrefs, and opens a connection of its own on first use.
  template <class Archive>
  void save(Archive& ar) const {
    const Token& t = token();
    ar(t.type_id, t.address, t.id, impl_authkey(), exposed());
  }
  template <class Archive>
  void load(Archive& ar) {
    Token t;
    Bytes key;
    std::vector<std::string> names;
    ar(t.type_id, t.address, t.id, key, names);
    *this = BaseProxy(std::move(t), std::move(key), std::move(names));
    adopt_in_this_process();
  }

 private:
  BaseProxy proxy_from(const pickle::Value& proxy_reply) const;
  const Bytes& impl_authkey() const;
  void adopt_in_this_process();  // marks the reference as borrowed (loaded in a child)
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

namespace pickle::detail {
/// Proxies are picklable: pickle::Value(proxy) is BaseProxy::reduce(), v.as<QueueProxy<int>>()
/// is BaseProxy::rebuild(v).
template <class P>
  requires std::is_base_of_v<BaseProxy, P>
struct Convert<P, void> {
  static constexpr bool kSupported = true, kLoadable = true;
  static Value to(const P& p) { return p.reduce(); }
  static bool holds(const Value& v) { return BaseProxy::is_reduced(v); }
  static P from(const Value& v) { return P(BaseProxy::rebuild(v)); }
};
}  // namespace pickle::detail

/// A missing attribute of a manager's Namespace (Python's AttributeError), on both sides.
class AttributeError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail::managers {
/// A registered method: calls it on the object (self) with a tuple of arguments.
using Method = std::function<pickle::Value(void* self, const pickle::Value& args)>;
/// A method that also takes keyword arguments (kwds: a dict), as the built-in SyncManager types'
/// methods do (a Python client's q.get(timeout=1) sends them).
using MethodKw = std::function<pickle::Value(void* self, const pickle::Value& args, const pickle::Value& kwds)>;
/// A method whose result becomes a new object in the manager, of another typeid, and reaches the
/// caller as a '#PROXY' reply (CPython's method_to_typeid).
using ProxyMethod = std::function<std::shared_ptr<void>(void* self, const pickle::Value& args)>;
struct TypeInfo {
  std::string type_id;
  /// Makes an object from create's arguments (args: a tuple, kwds: a dict).
  std::function<std::shared_ptr<void>(const pickle::Value& args, const pickle::Value& kwds)> factory;
  std::map<std::string, Method, std::less<>> methods;
  std::map<std::string, MethodKw, std::less<>> methods_kw;
  std::map<std::string, std::pair<std::string, ProxyMethod>, std::less<>> proxy_methods;  // name -> (typeid, fn)
  /// The exposed list in CPython's order; empty: the names of the three maps above.
  std::vector<std::string> exposed;
  std::function<pickle::Value(void* self)> getvalue;  // null: '#GETVALUE' is '#UNSERIALIZABLE'
  const std::type_info* cpp_type = nullptr;  // what a ProxyMethod making this typeid must return
  /// The methods wait (Queue.get, Lock.acquire) and synchronize on their own: the server does not
  /// serialize calls to the object, so that one waiting client does not hold up the others.
  bool waits = false;
  /// Wakes the object's waiting calls, which then fail: the server is stopping.
  std::function<void(void* self)> cancel;
};
/// Inside a factory run by a server: the object a pickled proxy argument refers to when it lives
/// in that server (Python's RebuildProxy in the manager's own process gives the referent), else
/// {nullptr, nullptr}.
std::pair<std::shared_ptr<void>, const TypeInfo*> local_object(const pickle::Value& v);
/// The names a client may call (CPython's `exposed`), in order.
std::vector<std::string> exposed_names(const TypeInfo& t);
/// An exception a method raises to send a Python exception of any type: type is the qualified
/// Python name ("_queue.Empty", "threading.BrokenBarrierError", "builtins.ValueError") and args
/// its arguments (a tuple).
struct PythonError : std::runtime_error {
  PythonError(std::string python_type, pickle::Value exception_args, const std::string& message)
      : std::runtime_error(message), type(std::move(python_type)), args(std::move(exception_args)) {}
  std::string type;
  pickle::Value args;
};
/// What SyncManager's dict raises for a missing key: Python's KeyError carrying the key itself.
struct KeyError : std::out_of_range {
  explicit KeyError(pickle::Value k) : std::out_of_range("KeyError: " + k.repr()), key(std::move(k)) {}
  pickle::Value key;
};
/// Python's IndexError (list index out of range).
struct IndexError : std::out_of_range {
  using std::out_of_range::out_of_range;
};
/// dict, list, Namespace, Value, Iterator (src/managers.cpp) and the waiting types: Queue,
/// JoinableQueue, Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event, Barrier, plus
/// Array (src/manager_sync_types.cpp).
std::vector<std::shared_ptr<TypeInfo>> sync_types();
std::vector<std::shared_ptr<TypeInfo>> waiting_sync_types();
/// Raised for a call with the wrong number of arguments: becomes Python's TypeError.
struct ArgumentCountError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
/// CPython's array typecode for T ('i' for int32_t, 'd' for double...).
template <class T>
constexpr char typecode_of() {
  if constexpr (std::is_floating_point_v<T>) {
    return sizeof(T) == 4 ? 'f' : 'd';
  } else {
    static_assert(std::is_integral_v<T> && !std::is_same_v<T, bool>, "Array<T> needs an integer or floating type");
    constexpr bool s = std::is_signed_v<T>;
    if constexpr (sizeof(T) == 1) return s ? 'b' : 'B';
    if constexpr (sizeof(T) == 2) return s ? 'h' : 'H';
    if constexpr (sizeof(T) == 4) return s ? 'i' : 'I';
    return s ? 'q' : 'Q';
  }
}
template <class T, class Fn, class... A, std::size_t... I>
pickle::Value invoke(T& self, Fn fn, const pickle::Value& args, std::index_sequence<I...>) {
  using R = decltype((self.*fn)(std::declval<std::decay_t<A>>()...));
  if constexpr (std::is_void_v<R>) {
    (self.*fn)(args[I].template as<std::decay_t<A>>()...);
    return pickle::Value();
  } else {
    return pickle::Value((self.*fn)(args[I].template as<std::decay_t<A>>()...));
  }
}
template <class T, class Fn, class... A>
Method wrap(Fn fn) {
  return [fn](void* self, const pickle::Value& args) -> pickle::Value {
    if (args.size() != sizeof...(A))
      throw ArgumentCountError("takes " + std::to_string(sizeof...(A)) + " positional arguments but " +
                               std::to_string(args.size()) + " were given");
    return invoke<T, Fn, A...>(*static_cast<T*>(self), fn, args, std::index_sequence_for<A...>{});
  };
}
}  // namespace detail::managers

/// What register_type() returns: adds the type's methods (its `exposed` list).
template <class T>
class TypeRegistration {
 public:
  explicit TypeRegistration(std::shared_ptr<detail::managers::TypeInfo> info) : info_(std::move(info)) {}
  template <class R, class... A>
  TypeRegistration& method(std::string name, R (T::*fn)(A...)) {
    info_->methods[std::move(name)] = detail::managers::wrap<T, R (T::*)(A...), A...>(fn);
    return *this;
  }
  template <class R, class... A>
  TypeRegistration& method(std::string name, R (T::*fn)(A...) const) {
    info_->methods[std::move(name)] = detail::managers::wrap<T, R (T::*)(A...) const, A...>(fn);
    return *this;
  }
  /// Python's method_to_typeid: the method's result (a U) becomes a new object of type_id in the
  /// manager (type_id must be registered for U) and the caller gets a proxy to it ('#PROXY').
  template <class U, class... A>
  TypeRegistration& proxy_method(std::string name, U (T::*fn)(A...), std::string type_id) {
    info_->proxy_methods[std::move(name)] = {std::move(type_id), [fn](void* self, const pickle::Value& args) {
      if (args.size() != sizeof...(A))
        throw detail::managers::ArgumentCountError("takes " + std::to_string(sizeof...(A)) + " positional arguments but " +
                                                   std::to_string(args.size()) + " were given");
      return make_result<U, A...>(*static_cast<T*>(self), fn, args, std::index_sequence_for<A...>{});
    }};
    return *this;
  }
  /// Objects are made as T(args...) from create's arguments (Python: manager.Name(*args)) instead
  /// of T(). The arguments are converted as method arguments are.
  template <class... A>
  TypeRegistration& constructor() {
    info_->factory = [](const pickle::Value& args, const pickle::Value& kwds) -> std::shared_ptr<void> {
      if (kwds.size() != 0) throw std::invalid_argument("a C++ constructor takes no keyword arguments");
      if (args.size() != sizeof...(A))
        throw detail::managers::ArgumentCountError("the constructor takes " + std::to_string(sizeof...(A)) +
                                                   " arguments but " + std::to_string(args.size()) + " were given");
      return construct<A...>(args, std::index_sequence_for<A...>{});
    };
    return *this;
  }

 private:
  template <class U, class... A, class Fn, std::size_t... I>
  static std::shared_ptr<void> make_result(T& self, Fn fn, const pickle::Value& args, std::index_sequence<I...>) {
    return std::make_shared<U>((self.*fn)(args[I].template as<std::decay_t<A>>()...));
  }
  template <class... A, std::size_t... I>
  static std::shared_ptr<void> construct(const pickle::Value& args, std::index_sequence<I...>) {
    return std::make_shared<T>(args[I].template as<std::decay_t<A>>()...);
  }
  std::shared_ptr<detail::managers::TypeInfo> info_;
};

/// The server half of a manager (Python: multiprocessing.managers.Server).
class Server {
 public:
  Server() = default;
  /// Accepts connections and serves their requests (one thread per method-call channel) until a
  /// client sends 'shutdown'. A bad request, a wrong authkey or a client dying mid-call only ends
  /// that client's connection. std::logic_error on an empty Server.
  void serve_forever();
  /// The address the server listens on (its real port when given port 0).
  connection::Address address() const;

  struct Impl;  // internal (src/managers.cpp)
  explicit Server(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

 private:
  std::shared_ptr<Impl> impl_;
};

/// A manager (Python: multiprocessing.managers.BaseManager). Server side: register_type(), then
/// get_server().serve_forever() or start(). Client side: connect(), then create(). A handle: copies
/// share one manager. As Python's `with manager:`, the manager a start() began is shut down when
/// the last copy goes (RAII).
class BaseManager {
 public:
  /// No address: a fresh AF_UNIX one (made by the server). No authkey: the current process's
  /// authkey (current_process().authkey()).
  explicit BaseManager(std::optional<connection::Address> address = std::nullopt,
                       std::optional<Bytes> authkey = std::nullopt);
  virtual ~BaseManager();
  BaseManager(const BaseManager&) = default;
  BaseManager& operator=(const BaseManager&) = default;
  BaseManager(BaseManager&&) noexcept = default;
  BaseManager& operator=(BaseManager&&) noexcept = default;

  /// Python's BaseManager.register(typeid, callable): objects of type T, default-constructed in
  /// the manager by 'create' (.constructor<A...>() makes them as T(args...)). Names its methods
  /// with .method() and .proxy_method(). Must come before get_server()/start().
  template <class T>
  TypeRegistration<T> register_type(std::string type_id) {
    auto info = std::make_shared<detail::managers::TypeInfo>();
    info->type_id = type_id;
    info->cpp_type = &typeid(T);
    info->factory = [](const pickle::Value& args, const pickle::Value& kwds) -> std::shared_ptr<void> {
      if (args.size() != 0 || kwds.size() != 0)
        throw detail::managers::ArgumentCountError("the constructor takes no arguments (see constructor<A...>())");
      if constexpr (std::is_default_constructible_v<T>) {
        return std::make_shared<T>();
      } else {
        throw std::invalid_argument("the type has no default constructor: register it with .constructor<A...>()");
      }
    };
    if constexpr (pickle::detail::is_picklable_v<T>)
      info->getvalue = [](void* self) { return pickle::Value(*static_cast<T*>(self)); };
    add_type(info);
    return TypeRegistration<T>(std::move(info));
  }

  /// A server for this manager's registered types, bound to its address (Python: get_server()).
  Server get_server();
  /// Starts the server in a child process (forked) and connects to it. std::logic_error when
  /// already started or connected.
  void start();
  /// Connects to a running manager (ours or CPython's) with a 'dummy' request. Throws
  /// AuthenticationError for a wrong key, std::system_error when nothing listens.
  void connect();
  /// Stops a manager this object start()ed (sends 'shutdown' and reaps the child); otherwise sends
  /// 'shutdown' to the connected manager. A second call does nothing.
  void shutdown();
  /// The manager's address (the server's real one after start()/get_server()).
  connection::Address address() const;
  const Bytes& authkey() const;

  /// Python's manager.<typeid>(*args): creates an object of the registered typeid in the manager
  /// and returns a proxy holding the one reference. RemoteError for an unknown typeid.
  template <class... A>
  BaseProxy create(std::string_view type_id, const A&... args) {
    return create_value(type_id, pickle::Value::tuple({pickle::Value(args)...}));
  }
  BaseProxy create_value(std::string_view type_id, const pickle::Value& args,
                         const pickle::Value& kwds = pickle::Value::dict());

  /// Control requests (PROTOCOLS.md §4.2) sent to the connected manager.
  std::int64_t number_of_objects();
  std::string debug_info();

  struct Impl;

 protected:
  void add_type(std::shared_ptr<detail::managers::TypeInfo> info);
  std::shared_ptr<Impl> impl_;
};

/// A typed proxy of a manager's dict (Python: DictProxy): every call is a round trip.
template <class K, class V>
class DictProxy : public BaseProxy {
 public:
  DictProxy() = default;
  explicit DictProxy(BaseProxy p) : BaseProxy(std::move(p)) {}
  /// d[key]; std::out_of_range when absent (KeyError).
  V get(const K& key) { return callmethod<V>("__getitem__", key); }
  /// d.get(key, default).
  V get(const K& key, const V& fallback) { return callmethod<V>("get", key, fallback); }
  void set(const K& key, const V& value) { callmethod<void>("__setitem__", key, value); }
  /// del d[key]; std::out_of_range when absent.
  void erase(const K& key) { callmethod<void>("__delitem__", key); }
  bool contains(const K& key) { return callmethod<bool>("__contains__", key); }
  std::size_t size() { return callmethod<std::size_t>("__len__"); }
  std::vector<K> keys() { return callmethod<std::vector<K>>("keys"); }
  void clear() { callmethod<void>("clear"); }
  /// d._getvalue() as a std::map.
  std::map<K, V> copy() { return getvalue<std::map<K, V>>(); }
};

/// A typed proxy of a manager's list (Python: ListProxy).
template <class T>
class ListProxy : public BaseProxy {
 public:
  ListProxy() = default;
  explicit ListProxy(BaseProxy p) : BaseProxy(std::move(p)) {}
  void append(const T& item) { callmethod<void>("append", item); }
  /// l[index] (negative counts from the end); std::out_of_range past the end (IndexError).
  T get(std::int64_t index) { return callmethod<T>("__getitem__", index); }
  void set(std::int64_t index, const T& item) { callmethod<void>("__setitem__", index, item); }
  T pop() { return callmethod<T>("pop"); }
  std::size_t size() { return callmethod<std::size_t>("__len__"); }
  std::vector<T> copy() { return getvalue<std::vector<T>>(); }
};

/// A proxy of a manager's Namespace (Python: NamespaceProxy): attributes by name.
class NamespaceProxy : public BaseProxy {
 public:
  NamespaceProxy() = default;
  explicit NamespaceProxy(BaseProxy p) : BaseProxy(std::move(p)) {}
  /// ns.name; AttributeError when it has none.
  template <class T = pickle::Value>
  T get(const std::string& name) { return callmethod<T>("__getattribute__", name); }
  template <class T>
  void set(const std::string& name, const T& value) { callmethod<void>("__setattr__", name, value); }
  void erase(const std::string& name) { callmethod<void>("__delattr__", name); }
};

/// A proxy of a manager's Value (Python: ValueProxy): get()/set().
template <class T>
class ValueProxy : public BaseProxy {
 public:
  ValueProxy() = default;
  explicit ValueProxy(BaseProxy p) : BaseProxy(std::move(p)) {}
  T get() { return callmethod<T>("get"); }
  void set(const T& v) { callmethod<void>("set", v); }
};

namespace detail::managers {
/// The arguments of a call with an optional timeout, as CPython's proxies send them.
inline pickle::Value timeout_value(const Timeout& timeout) {
  return timeout ? pickle::Value(timeout->count()) : pickle::Value();
}
/// Code crossing to a C++ manager (a Barrier's action, a manager Pool's task): a function of this
/// binary named by (module, build id, offset), as a spawn child finds its target; the manager must
/// run the same build. code_ref_bytes: std::invalid_argument when address is not code.
Bytes code_ref_bytes(std::uintptr_t address);
/// In the manager: the address again; std::invalid_argument when the bytes name no function of
/// this build.
std::uintptr_t resolve_code_ref_bytes(std::span<const std::byte> ref);
template <class F>
pickle::Value code_ref_value(F* f) {
  return f == nullptr ? pickle::Value() : pickle::Value(code_ref_bytes(reinterpret_cast<std::uintptr_t>(f)));
}

/// Runs in the manager, on the manager's Pool: the typed call the client instantiated for its
/// task's types (the client names this instantiation by code reference). args is the encoded
/// arguments; the result is the encoded std::variant<result, TaskError>.
using PoolEntry = Bytes (*)(Pool& pool, ErasedFn fn, std::span<const std::byte> args);
template <class Out>
using PoolOutcome = std::variant<PoolStored<Out>, TaskError>;
/// The client's end of an outcome: the value, or the task's exception rethrown as mp::Pool does.
template <class Out>
Out pool_outcome_value(PoolOutcome<Out>&& outcome) {
  if (outcome.index() == 1) std::rethrow_exception(make_task_exception(std::get<1>(outcome)));
  if constexpr (!std::is_void_v<Out>) return std::move(std::get<0>(outcome));
}

template <class Fn>
Fn pool_task_from(ErasedFn erased) {
  if constexpr (std::is_pointer_v<Fn>) {
    return reinterpret_cast<Fn>(erased);
  } else {
    (void)erased;
    return Fn{};  // stateless: any instance will do
  }
}
template <class Out, class Call>
Bytes pool_outcome(const std::type_info& task, Call call) {
  PoolOutcome<Out> outcome;
  try {
    if constexpr (std::is_void_v<Out>) {
      call();
      outcome.template emplace<0>();
    } else {
      outcome.template emplace<0>(call());
    }
  } catch (...) {
    outcome.template emplace<1>(describe_current_exception(task));
  }
  return mp::dumps(outcome);
}
/// map (kStar false) and starmap (kStar true): args is (items, chunksize).
template <class Fn, class Item, bool kStar>
Bytes pool_map_entry(Pool& pool, ErasedFn erased, std::span<const std::byte> args) {
  using R = pool_result_t<Fn, Item, kStar>;
  using Out = std::conditional_t<std::is_void_v<R>, void, std::vector<R>>;
  // (No structured bindings: a lambda may not capture them before C++20 compilers caught up.)
  auto decoded = mp::loads<std::tuple<std::vector<Item>, std::uint64_t>>(args);
  const std::vector<Item>& items = std::get<0>(decoded);
  const auto chunksize = static_cast<std::size_t>(std::get<1>(decoded));
  Fn fn = pool_task_from<Fn>(erased);
  return pool_outcome<Out>(typeid(Fn), [&] {
    if constexpr (kStar) {
      return pool.starmap(fn, items, chunksize);
    } else {
      return pool.map(fn, items, chunksize);
    }
  });
}
/// apply: args is the tuple of arguments.
template <class Fn, class Args>
Bytes pool_apply_entry(Pool& pool, ErasedFn erased, std::span<const std::byte> args) {
  using R = pool_result_t<Fn, Args, true>;
  auto arguments = mp::loads<Args>(args);
  Fn fn = pool_task_from<Fn>(erased);
  return pool_outcome<R>(typeid(Fn), [&] {
    return std::apply([&](auto&... a) { return pool.apply(fn, a...); }, arguments);
  });
}

/// The longest a PoolProxy's AsyncResultProxy / IMapIteratorProxy asks the manager to wait in one
/// call (seconds): a longer wait is a loop of these, so the client keeps its own deadline and a
/// manager thread never waits long for a client that has gone.
inline constexpr double kPoolWaitSlice = 1.0;

/// In the manager: the referent of an AsyncResultProxy (typeid 'AsyncResult'), an mp::AsyncResult
/// typed by the client's instantiation. It holds a handle to its pool, so the pool keeps running
/// while a result of it is alive (as CPython's ApplyResult holds its pool).
class PoolAsyncHeld {
 public:
  virtual ~PoolAsyncHeld() = default;
  /// true when ready; no timeout: until it is.
  virtual bool wait(Timeout timeout) = 0;
  virtual bool ready() = 0;
  /// std::logic_error before ready().
  virtual bool successful() = 0;
  /// Once ready: the encoded PoolOutcome (the value or the task's error).
  virtual Bytes outcome() = 0;
  /// The server stops: terminates the pool, which fails the result (and wakes its waits).
  virtual void cancel() = 0;
};
template <class R>
class PoolAsyncOf final : public PoolAsyncHeld {
 public:
  PoolAsyncOf(Pool pool, AsyncResult<R> result, const std::type_info& task)
      : pool_(std::move(pool)), result_(std::move(result)), task_(&task) {}
  bool wait(Timeout timeout) override {
    if (!timeout) {
      result_.wait();
      return true;
    }
    return result_.wait(*timeout);
  }
  bool ready() override { return result_.ready(); }
  bool successful() override { return result_.successful(); }
  Bytes outcome() override { return pool_outcome<R>(*task_, [&] { return result_.get(); }); }
  void cancel() override {
    try {
      pool_.terminate();
    } catch (const std::exception&) {
    }
  }

 private:
  Pool pool_;
  AsyncResult<R> result_;
  const std::type_info* task_;
};
template <class R>
std::shared_ptr<PoolAsyncHeld> pool_async_held(Pool& pool, AsyncResult<R> result, const std::type_info& task) {
  return std::make_shared<PoolAsyncOf<R>>(pool, std::move(result), task);
}
using PoolAsyncEntry = std::shared_ptr<PoolAsyncHeld> (*)(Pool& pool, ErasedFn fn, std::span<const std::byte> args);
/// apply_async: args is the tuple of arguments. A refusal of the pool (closed) is thrown here.
template <class Fn, class Args>
std::shared_ptr<PoolAsyncHeld> pool_apply_async_entry(Pool& pool, ErasedFn erased, std::span<const std::byte> args) {
  using R = pool_result_t<Fn, Args, true>;
  Fn fn = pool_task_from<Fn>(erased);
  return pool_async_held(pool, pool.apply_async(fn, mp::loads<Args>(args), Callbacks<R>{}), typeid(Fn));
}
/// map_async (kStar false) and starmap_async (kStar true): args is (items, chunksize).
template <class Fn, class Item, bool kStar>
std::shared_ptr<PoolAsyncHeld> pool_map_async_entry(Pool& pool, ErasedFn erased, std::span<const std::byte> args) {
  const auto decoded = mp::loads<std::tuple<std::vector<Item>, std::uint64_t>>(args);
  const std::vector<Item>& items = std::get<0>(decoded);
  const auto chunksize = static_cast<std::size_t>(std::get<1>(decoded));
  Fn fn = pool_task_from<Fn>(erased);
  if constexpr (kStar) {
    return pool_async_held(pool, pool.starmap_async(fn, items, chunksize), typeid(Fn));
  } else {
    return pool_async_held(pool, pool.map_async(fn, items, chunksize), typeid(Fn));
  }
}

/// In the manager: the referent of an IMapIteratorProxy (typeid 'IMapIterator').
class PoolIMapHeld {
 public:
  virtual ~PoolIMapHeld() = default;
  /// The next result as an encoded PoolOutcome (a task's error included); nullopt when timeout
  /// ran out first; mp::StopIteration past the end.
  virtual std::optional<Bytes> next(Timeout timeout) = 0;
  /// The server stops: terminates the pool, which fails the results still due.
  virtual void cancel() = 0;
};
template <class R>
class PoolIMapOf final : public PoolIMapHeld {
 public:
  PoolIMapOf(Pool pool, IMapIterator<R> it, const std::type_info& task)
      : pool_(std::move(pool)), it_(std::move(it)), task_(&task) {}
  std::optional<Bytes> next(Timeout timeout) override {
    auto item = it_.take(timeout);
    if (!item) return std::nullopt;
    PoolOutcome<R> outcome;
    if (item->index() == 1) {
      try {
        std::rethrow_exception(std::get<1>(*item));
      } catch (...) {
        outcome.template emplace<1>(describe_current_exception(*task_));
      }
    } else if constexpr (std::is_void_v<R>) {
      outcome.template emplace<0>();
    } else {
      outcome.template emplace<0>(std::move(std::get<0>(*item)));
    }
    return mp::dumps(outcome);
  }
  void cancel() override {
    try {
      pool_.terminate();
    } catch (const std::exception&) {
    }
  }

 private:
  Pool pool_;
  IMapIterator<R> it_;
  const std::type_info* task_;
};
using PoolIMapEntry = std::shared_ptr<PoolIMapHeld> (*)(Pool& pool, ErasedFn fn, std::span<const std::byte> args,
                                                        bool ordered);
/// imap (ordered) and imap_unordered: args is (items, chunksize).
template <class Fn, class Item>
std::shared_ptr<PoolIMapHeld> pool_imap_entry(Pool& pool, ErasedFn erased, std::span<const std::byte> args, bool ordered) {
  using R = pool_result_t<Fn, Item, false>;
  auto decoded = mp::loads<std::tuple<std::vector<Item>, std::uint64_t>>(args);
  std::vector<Item> items = std::move(std::get<0>(decoded));
  const auto chunksize = std::max<std::size_t>(1, static_cast<std::size_t>(std::get<1>(decoded)));
  Fn fn = pool_task_from<Fn>(erased);
  IMapIterator<R> it = ordered ? pool.imap(fn, std::move(items), chunksize) : pool.imap_unordered(fn, std::move(items), chunksize);
  return std::make_shared<PoolIMapOf<R>>(pool, std::move(it), typeid(Fn));
}

/// The client's side of a manager wait: how long the next call may wait in the manager (at most
/// kPoolWaitSlice, and what is left of the caller's timeout).
inline double pool_wait_slice(const std::optional<std::chrono::steady_clock::time_point>& deadline) {
  if (!deadline) return kPoolWaitSlice;
  const double left = std::chrono::duration<double>(*deadline - std::chrono::steady_clock::now()).count();
  return std::clamp(left, 0.0, kPoolWaitSlice);
}
inline std::optional<std::chrono::steady_clock::time_point> pool_deadline(Timeout timeout) {
  // Beyond ~3 years (or NaN) is no deadline, and keeps the time_point arithmetic in range.
  if (!timeout || !(timeout->count() <= 1e8)) return std::nullopt;
  return std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(*timeout);
}
inline bool pool_deadline_passed(const std::optional<std::chrono::steady_clock::time_point>& deadline) {
  return deadline && std::chrono::steady_clock::now() >= *deadline;
}
/// The manager's multiprocessing.TimeoutError (a wait that ran out), as a C++ client sees it.
inline bool is_remote_timeout(const RemoteError& e) {
  return e.type_name() == "multiprocessing.context.TimeoutError" || e.type_name() == "TimeoutError";
}
}  // namespace detail::managers

/// A proxy of a manager's queue.Queue (Python: the AutoProxy of 'Queue' and 'JoinableQueue').
/// get() throws mp::Empty and put() mp::Full when the time runs out, as mp::Queue does; the wait
/// happens in the manager, which keeps serving its other clients meanwhile.
template <class T>
class QueueProxy : public BaseProxy {
 public:
  QueueProxy() = default;
  explicit QueueProxy(BaseProxy p) : BaseProxy(std::move(p)) {}
  void put(const T& item, bool block = true, Timeout timeout = std::nullopt) {
    callmethod<void>("put", item, block, detail::managers::timeout_value(timeout));
  }
  T get(bool block = true, Timeout timeout = std::nullopt) {
    return callmethod<T>("get", block, detail::managers::timeout_value(timeout));
  }
  void put_nowait(const T& item) { callmethod<void>("put_nowait", item); }
  T get_nowait() { return callmethod<T>("get_nowait"); }
  std::size_t qsize() { return callmethod<std::size_t>("qsize"); }
  bool empty() { return callmethod<bool>("empty"); }
  bool full() { return callmethod<bool>("full"); }
  /// JoinableQueue: one item taken by get() is done (ValueError as RemoteError when none is due).
  void task_done() { callmethod<void>("task_done"); }
  /// Waits until every item put has been marked done.
  void join() { callmethod<void>("join"); }
};

/// A proxy of a manager's Lock, RLock, Semaphore or BoundedSemaphore (Python: AcquirerProxy).
/// BasicLockable/Lockable, so std::lock_guard and std::unique_lock work with it. An RLock is
/// owned by the proxy's connection to the manager (CPython: by the client thread's connection).
class AcquirerProxy : public BaseProxy {
 public:
  AcquirerProxy() = default;
  explicit AcquirerProxy(BaseProxy p) : BaseProxy(std::move(p)) {}
  /// false when not acquired (block false, or the timeout ran out).
  bool acquire(bool block = true, Timeout timeout = std::nullopt) {
    return timeout ? callmethod<bool>("acquire", block, timeout->count()) : callmethod<bool>("acquire", block);
  }
  /// RemoteError (RuntimeError/ValueError) when there is nothing to release.
  void release() { callmethod<void>("release"); }
  void lock() { acquire(); }
  bool try_lock() { return acquire(false); }
  void unlock() { release(); }
};

/// A proxy of a manager's Condition (Python: ConditionProxy): acquire/release as AcquirerProxy,
/// wait/notify as threading.Condition's.
class ConditionProxy : public AcquirerProxy {
 public:
  ConditionProxy() = default;
  explicit ConditionProxy(BaseProxy p) : AcquirerProxy(std::move(p)) {}
  /// false when the timeout ran out first.
  bool wait(Timeout timeout = std::nullopt) { return callmethod<bool>("wait", detail::managers::timeout_value(timeout)); }
  /// Python's wait_for (on the client side, as CPython's proxy does it): true when pred() holds.
  template <class Predicate>
  bool wait_for(Predicate pred, Timeout timeout = std::nullopt) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                                 timeout.value_or(Duration(0)));
    bool result = pred();
    while (!result) {
      Timeout left;
      if (timeout) {
        left = std::chrono::duration_cast<Duration>(deadline - std::chrono::steady_clock::now());
        if (left->count() <= 0) break;
      }
      wait(left);
      result = pred();
    }
    return result;
  }
  void notify(int n = 1) { callmethod<void>("notify", n); }
  void notify_all() { callmethod<void>("notify_all"); }
};

/// A proxy of a manager's Event (Python: EventProxy).
class EventProxy : public BaseProxy {
 public:
  EventProxy() = default;
  explicit EventProxy(BaseProxy p) : BaseProxy(std::move(p)) {}
  bool is_set() { return callmethod<bool>("is_set"); }
  void set() { callmethod<void>("set"); }
  void clear() { callmethod<void>("clear"); }
  /// The flag at the end: false when the timeout ran out first.
  bool wait(Timeout timeout = std::nullopt) { return callmethod<bool>("wait", detail::managers::timeout_value(timeout)); }
};

/// A proxy of a manager's Barrier (Python: BarrierProxy). wait() throws BrokenBarrierError when
/// the barrier is or gets broken (a timeout, abort(), reset()).
class BarrierProxy : public BaseProxy {
 public:
  BarrierProxy() = default;
  explicit BarrierProxy(BaseProxy p) : BaseProxy(std::move(p)) {}
  /// This caller's arrival index, 0 .. parties-1.
  int wait(Timeout timeout = std::nullopt) { return callmethod<int>("wait", detail::managers::timeout_value(timeout)); }
  void abort() { callmethod<void>("abort"); }
  void reset() { callmethod<void>("reset"); }
  int parties() { return callmethod<int>("__getattribute__", "parties"); }
  int n_waiting() { return callmethod<int>("__getattribute__", "n_waiting"); }
  bool broken() { return callmethod<bool>("__getattribute__", "broken"); }
};

/// What a PoolProxy's apply_async/map_async/starmap_async return (Python: the AutoProxy of
/// 'AsyncResult'): a proxy of an mp::AsyncResult living in the manager, with mp::AsyncResult's
/// calls, each a round trip. A wait longer than kPoolWaitSlice is a loop of shorter waits in the
/// manager, so the timeout is kept here and no manager thread waits long for a client that went.
/// Copies share one reference; the manager's result goes with the last copy (finished or not).
/// Callbacks run in this process, once, on the thread whose get()/wait()/ready()/successful()
/// first sees the result complete, before that call returns (docs/managers.rst says why).
template <class R>
class AsyncResultProxy : public BaseProxy {
 public:
  AsyncResultProxy() = default;
  explicit AsyncResultProxy(BaseProxy p, Callbacks<R> callbacks = {})
      : BaseProxy(std::move(p)), shared_(std::make_shared<Shared>()) {
    shared_->callbacks = std::move(callbacks);
  }

  /// The value, waiting for it; rethrows the task's exception as mp::Pool's AsyncResult does.
  R get() { return get_impl(std::nullopt); }
  /// mp::TimeoutError when the result is not ready within timeout.
  R get(Duration timeout) { return get_impl(timeout); }
  void wait() { (void)wait_impl(std::nullopt); }
  /// Whether the result is ready.
  bool wait(Duration timeout) { return wait_impl(timeout); }
  bool ready() {
    const bool done = callmethod<bool>("ready");
    if (done) settle();
    return done;
  }
  /// Whether the task succeeded; std::logic_error before ready().
  bool successful() {
    bool ok = false;
    try {
      ok = callmethod<bool>("successful");
    } catch (const RemoteError& e) {
      if (e.type_name() == "ValueError") throw std::logic_error("mp: AsyncResultProxy::successful() called before the result is ready");
      throw;
    }
    settle();
    return ok;
  }

 private:
  using Outcome = detail::managers::PoolOutcome<R>;
  struct Shared {
    std::mutex mutex;
    Callbacks<R> callbacks;
    bool settled = false;
  };

  bool wait_impl(Timeout timeout) {
    const auto deadline = detail::managers::pool_deadline(timeout);
    for (;;) {
      if (callmethod<bool>("wait", detail::managers::pool_wait_slice(deadline))) {
        settle();
        return true;
      }
      if (detail::managers::pool_deadline_passed(deadline)) return false;
    }
  }
  // The outcome, waiting in the manager a slice at a time; nullopt: the deadline passed.
  std::optional<Outcome> fetch(Timeout timeout) {
    const auto deadline = detail::managers::pool_deadline(timeout);
    for (;;) {
      try {
        return mp::loads<Outcome>(callmethod<Bytes>("get", detail::managers::pool_wait_slice(deadline)));
      } catch (const RemoteError& e) {
        if (!detail::managers::is_remote_timeout(e)) throw;
      }
      if (detail::managers::pool_deadline_passed(deadline)) return std::nullopt;
    }
  }
  R get_impl(Timeout timeout) {
    std::optional<Outcome> outcome = fetch(timeout);
    if (!outcome) throw TimeoutError("mp: AsyncResultProxy::get() timed out");
    run_callbacks(*outcome);
    return detail::managers::pool_outcome_value<R>(std::move(*outcome));
  }
  // The result is known to be ready: the callbacks run now if they have not (one more call).
  void settle() {
    if (!has_callbacks()) return;
    if (std::optional<Outcome> outcome = fetch(Duration(0))) run_callbacks(*outcome);
  }
  bool has_callbacks() const {
    if (!shared_) return false;
    std::lock_guard lock(shared_->mutex);
    return !shared_->settled && (shared_->callbacks.callback || shared_->callbacks.error_callback);
  }
  void run_callbacks(const Outcome& outcome) {
    if (!shared_) return;
    Callbacks<R> callbacks;
    {
      std::lock_guard lock(shared_->mutex);
      if (shared_->settled) return;
      shared_->settled = true;
      callbacks = std::move(shared_->callbacks);
    }
    if (outcome.index() == 1) {
      if (callbacks.error_callback) callbacks.error_callback(detail::make_task_exception(std::get<1>(outcome)));
    } else if (callbacks.callback) {
      if constexpr (std::is_void_v<R>) {
        callbacks.callback();
      } else {
        callbacks.callback(std::get<0>(outcome));
      }
    }
  }

  std::shared_ptr<Shared> shared_;
};

/// What a PoolProxy's imap/imap_unordered return: a proxy of an mp::IMapIterator living in the
/// manager (typeid 'IMapIterator'), an input range as mp::IMapIterator is. Each next() is a round
/// trip; waits are sliced as AsyncResultProxy's. Copies share one reference and the position
/// (it is the manager's); the manager's iterator goes with the last copy, finished or not.
template <class R>
class IMapIteratorProxy : public BaseProxy {
 public:
  IMapIteratorProxy() = default;
  explicit IMapIteratorProxy(BaseProxy p) : BaseProxy(std::move(p)) {}

  /// The next result (rethrowing its task's exception); mp::StopIteration past the end.
  R next() { return unwrap(next_impl(std::nullopt)); }
  /// mp::TimeoutError when the next result does not arrive within timeout.
  R next(Duration timeout) { return unwrap(next_impl(timeout)); }

  /// Input iterator of the range-for; each step is a next(). Rethrows a task's exception.
  class iterator {
   public:
    using value_type = detail::PoolStored<R>;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(IMapIteratorProxy* owner) : owner_(owner) { advance(); }
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
      std::optional<Outcome> outcome = owner_->next_impl(std::nullopt);
      if (!outcome) return;
      if constexpr (std::is_void_v<R>) {
        detail::managers::pool_outcome_value<R>(std::move(*outcome));
        current_.emplace();
      } else {
        current_.emplace(detail::managers::pool_outcome_value<R>(std::move(*outcome)));
      }
    }
    IMapIteratorProxy* owner_ = nullptr;
    mutable std::optional<value_type> current_;
  };
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() { return {}; }

 private:
  using Outcome = detail::managers::PoolOutcome<R>;
  // The next outcome; nullopt past the end. TimeoutError when the deadline passes.
  std::optional<Outcome> next_impl(Timeout timeout) {
    const auto deadline = detail::managers::pool_deadline(timeout);
    for (;;) {
      try {
        return mp::loads<Outcome>(callmethod<Bytes>("next", detail::managers::pool_wait_slice(deadline)));
      } catch (const RemoteError& e) {
        if (e.type_name() == "StopIteration") return std::nullopt;
        if (!detail::managers::is_remote_timeout(e)) throw;
      }
      if (detail::managers::pool_deadline_passed(deadline)) throw TimeoutError("mp: IMapIteratorProxy::next() timed out");
    }
  }
  static R unwrap(std::optional<Outcome> outcome) {
    if (!outcome) throw StopIteration("mp: IMapIteratorProxy::next() past the end");
    return detail::managers::pool_outcome_value<R>(std::move(*outcome));
  }
};

/// A proxy of a C++ manager's Pool (Python: PoolProxy): an mp::Pool living in the manager process,
/// whose workers are the manager's children. apply/map/starmap take the task forms mp::Pool takes
/// (a function pointer, a captureless lambda, a stateless function object) and wait for the
/// result; a task's exception arrives as mp::Pool's would. apply_async/map_async/starmap_async
/// return an AsyncResultProxy and imap/imap_unordered an IMapIteratorProxy, whose referents live
/// in the manager (typeids 'AsyncResult', as CPython's, and 'IMapIterator', where CPython says
/// 'Iterator': a C++ manager's 'Iterator' is dict's key iterator). The task crosses by code
/// reference, so the manager must run this same binary (Manager()/start() in this program, or a
/// server of the same build): another build's manager refuses the call (RemoteError).
class PoolProxy : public BaseProxy {
  template <class F, class Item, bool kStar>
  using result_t = detail::pool_result_t<std::decay_t<F>, Item, kStar>;
  template <class R>
  using map_out_t = std::conditional_t<std::is_void_v<R>, void, std::vector<R>>;
  template <class Range>
  using range_item_t = std::decay_t<std::ranges::range_reference_t<const Range&>>;

 public:
  PoolProxy() = default;
  explicit PoolProxy(BaseProxy p) : BaseProxy(std::move(p)) {}

  /// f(args...) in one of the manager's workers, waiting for the result.
  template <class F, class... A>
  auto apply(F f, A&&... args) {
    using Args = std::tuple<std::decay_t<A>...>;
    using R = result_t<F, Args, true>;
    check_task<F, Args, R>();
    const Args arguments(std::forward<A>(args)...);
    return run<R>("apply", &detail::managers::pool_apply_entry<std::decay_t<F>, Args>, f, mp::dumps(arguments));
  }
  /// f(x) for every x, in order (chunksize 0: as mp::Pool chooses it).
  template <class F, class Range>
  auto map(F f, const Range& iterable, std::size_t chunksize = 0) {
    return map_impl<F, false>(f, iterable, chunksize, "map");
  }
  /// f(args...) for every tuple of arguments, in order.
  template <class F, class Range>
  auto starmap(F f, const Range& tuples, std::size_t chunksize = 0) {
    return map_impl<F, true>(f, tuples, chunksize, "starmap");
  }
  /// f(args...) in one of the manager's workers, without waiting: get() the result later.
  template <class F, class... A>
  auto apply_async(F f, A&&... args) {
    using Args = std::tuple<std::decay_t<A>...>;
    return apply_async(f, Args(std::forward<A>(args)...), Callbacks<result_t<F, Args, true>>{});
  }
  /// The same with callbacks, which run in this process (see AsyncResultProxy).
  template <class F, class... A>
  AsyncResultProxy<result_t<F, std::tuple<A...>, true>> apply_async(F f, std::tuple<A...> args,
                                                                    Callbacks<result_t<F, std::tuple<A...>, true>> callbacks) {
    using Args = std::tuple<A...>;
    using R = result_t<F, Args, true>;
    check_task<F, Args, R>();
    return AsyncResultProxy<R>(submit("apply_async", &detail::managers::pool_apply_async_entry<std::decay_t<F>, Args>, f,
                                      mp::dumps(args)),
                               std::move(callbacks));
  }
  /// map without waiting (chunksize 0: as mp::Pool chooses it).
  template <class F, class Range>
  auto map_async(F f, const Range& iterable, std::size_t chunksize = 0,
                 Callbacks<map_out_t<result_t<F, range_item_t<Range>, false>>> callbacks = {}) {
    return map_async_impl<F, false>(f, iterable, chunksize, std::move(callbacks), "map_async");
  }
  /// starmap without waiting.
  template <class F, class Range>
  auto starmap_async(F f, const Range& tuples, std::size_t chunksize = 0,
                     Callbacks<map_out_t<result_t<F, range_item_t<Range>, true>>> callbacks = {}) {
    return map_async_impl<F, true>(f, tuples, chunksize, std::move(callbacks), "starmap_async");
  }
  /// f(x) for every x, yielded in order as they come. Unlike mp::Pool's, the input is read whole
  /// here and sent to the manager in one call.
  template <class F, class Range>
  IMapIteratorProxy<result_t<F, range_item_t<Range>, false>> imap(F f, const Range& iterable, std::size_t chunksize = 1) {
    return imap_impl<F>(f, iterable, chunksize, "imap");
  }
  /// The same, yielded in the order they finish.
  template <class F, class Range>
  IMapIteratorProxy<result_t<F, range_item_t<Range>, false>> imap_unordered(F f, const Range& iterable,
                                                                            std::size_t chunksize = 1) {
    return imap_impl<F>(f, iterable, chunksize, "imap_unordered");
  }
  /// As mp::Pool's: no more tasks; stop the workers now; wait for them (after close/terminate).
  void close() { callmethod<void>("close"); }
  void terminate() { callmethod<void>("terminate"); }
  void join() { callmethod<void>("join"); }

 private:
  template <class F, class Item, class R>
  static constexpr void check_task() {
    static_assert(detail::is_task_by_name_v<F>,
                  "mp::PoolProxy: a task crosses to the manager by name: use a function pointer, a captureless lambda "
                  "or a default-constructible stateless function object");
    static_assert(detail::is_serializable_v<Item>, "mp::PoolProxy: the task's arguments must be serializable by mp::dumps");
    static_assert(std::is_void_v<R> || detail::is_serializable_v<R>,
                  "mp::PoolProxy: the task's result must be void or serializable by mp::dumps");
  }
  template <class Range>
  static Bytes encode_items(const Range& iterable, std::size_t chunksize) {
    using Item = range_item_t<Range>;
    std::vector<Item> items;
    for (auto&& x : iterable) items.push_back(static_cast<const Item&>(x));
    return mp::dumps(std::tuple<std::vector<Item>, std::uint64_t>(std::move(items), chunksize));
  }
  template <class F, bool kStar, class Range>
  auto map_impl(F f, const Range& iterable, std::size_t chunksize, std::string_view method) {
    using Item = range_item_t<Range>;
    using R = result_t<F, Item, kStar>;
    check_task<F, Item, R>();
    return run<map_out_t<R>>(method, &detail::managers::pool_map_entry<std::decay_t<F>, Item, kStar>, f,
                             encode_items(iterable, chunksize));
  }
  template <class F, bool kStar, class Range, class Out>
  AsyncResultProxy<Out> map_async_impl(F f, const Range& iterable, std::size_t chunksize, Callbacks<Out> callbacks,
                                       std::string_view method) {
    using Item = range_item_t<Range>;
    using R = result_t<F, Item, kStar>;
    check_task<F, Item, R>();
    return AsyncResultProxy<Out>(submit(method, &detail::managers::pool_map_async_entry<std::decay_t<F>, Item, kStar>, f,
                                        encode_items(iterable, chunksize)),
                                 std::move(callbacks));
  }
  template <class F, class Range>
  auto imap_impl(F f, const Range& iterable, std::size_t chunksize, std::string_view method) {
    using Item = range_item_t<Range>;
    using R = result_t<F, Item, false>;
    check_task<F, Item, R>();
    return IMapIteratorProxy<R>(
        submit(method, &detail::managers::pool_imap_entry<std::decay_t<F>, Item>, f, encode_items(iterable, chunksize)));
  }
  // A call whose result is a new object in the manager ('#PROXY'). The pool's refusal (closed)
  // comes back as Python's ValueError("... Pool not running ..."), which is mp::Pool's
  // std::logic_error here.
  template <class Entry, class F>
  BaseProxy submit(std::string_view method, Entry entry, F f, const Bytes& args) {
    pickle::Value fn = pickle::Value();
    if constexpr (std::is_pointer_v<std::decay_t<F>>) fn = detail::managers::code_ref_value(f);
    try {
      return callmethod<BaseProxy>(method, detail::managers::code_ref_value(entry), fn, args);
    } catch (const RemoteError& e) {
      std::string_view what = e.what();
      if (e.type_name() != "ValueError" || what.find("Pool not running") == std::string_view::npos) throw;
      if (what.starts_with("ValueError: ")) what.remove_prefix(12);
      throw std::logic_error(std::string(what));
    }
  }
  template <class Out, class F>
  Out run(std::string_view method, detail::managers::PoolEntry entry, F f, const Bytes& args) {
    pickle::Value fn = pickle::Value();
    if constexpr (std::is_pointer_v<std::decay_t<F>>) fn = detail::managers::code_ref_value(f);
    const Bytes reply = callmethod<Bytes>(method, detail::managers::code_ref_value(entry), fn, args);
    return detail::managers::pool_outcome_value<Out>(mp::loads<detail::managers::PoolOutcome<Out>>(reply));
  }
};

/// A proxy of a manager's Array (Python: ArrayProxy of an array.array).
template <class T>
class ArrayProxy : public BaseProxy {
 public:
  ArrayProxy() = default;
  explicit ArrayProxy(BaseProxy p) : BaseProxy(std::move(p)) {}
  std::size_t size() { return callmethod<std::size_t>("__len__"); }
  /// a[index] (negative counts from the end); std::out_of_range past the end.
  T get(std::int64_t index) { return callmethod<T>("__getitem__", index); }
  void set(std::int64_t index, const T& v) { callmethod<void>("__setitem__", index, v); }
  /// Every item, one call each (the array.array a CPython manager's _getvalue() sends is pickled
  /// with array._array_reconstructor, which the safe reader does not take).
  std::vector<T> copy() {
    std::vector<T> out;
    const std::size_t n = size();
    for (std::size_t i = 0; i < n; ++i) out.push_back(get(static_cast<std::int64_t>(i)));
    return out;
  }
};

/// CPython's SyncManager, with the typeids a C++ manager serves: dict, list, Namespace, Value,
/// Queue, JoinableQueue, Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event, Barrier,
/// Array and Pool (same names, methods and exposed lists as CPython's, so a Python client's
/// m.dict() or m.Queue() works on it; Pool and a Barrier's action run C++ code, so they are for
/// C++ clients of the same build). As a client it also reaches a CPython SyncManager's typeids
/// with create("Queue") etc. and callmethod().
class SyncManager : public BaseManager {
 public:
  explicit SyncManager(std::optional<connection::Address> address = std::nullopt,
                       std::optional<Bytes> authkey = std::nullopt);
  template <class K, class V>
  DictProxy<K, V> dict() { return DictProxy<K, V>(create("dict")); }
  template <class T>
  ListProxy<T> list() { return ListProxy<T>(create("list")); }
  NamespaceProxy Namespace() { return NamespaceProxy(create("Namespace")); }
  /// Python: manager.Value(typecode, value); the typecode is CPython's (array module letters),
  /// which the manager keeps only for Python clients.
  template <class T>
  ValueProxy<T> Value(const T& initial, std::string typecode = "") {
    return ValueProxy<T>(create("Value", typecode, initial));
  }
  /// Python: manager.Queue(maxsize) / JoinableQueue(maxsize); 0: unbounded.
  template <class T>
  QueueProxy<T> Queue(int maxsize = 0) { return QueueProxy<T>(create("Queue", maxsize)); }
  template <class T>
  QueueProxy<T> JoinableQueue(int maxsize = 0) { return QueueProxy<T>(create("JoinableQueue", maxsize)); }
  AcquirerProxy Lock() { return AcquirerProxy(create("Lock")); }
  AcquirerProxy RLock() { return AcquirerProxy(create("RLock")); }
  AcquirerProxy Semaphore(int value = 1) { return AcquirerProxy(create("Semaphore", value)); }
  AcquirerProxy BoundedSemaphore(int value = 1) { return AcquirerProxy(create("BoundedSemaphore", value)); }
  /// A Condition with a fresh RLock of its own, as Python's manager.Condition().
  ConditionProxy Condition() { return ConditionProxy(create("Condition")); }
  /// A Condition over a Lock or RLock of the same manager (Python: manager.Condition(lock)).
  ConditionProxy Condition(const AcquirerProxy& lock) { return ConditionProxy(create("Condition", lock)); }
  EventProxy Event() { return EventProxy(create("Event")); }
  /// timeout: the default of wait() (Python's Barrier(parties, timeout=...)).
  BarrierProxy Barrier(int parties, Timeout timeout = std::nullopt) {
    return BarrierProxy(create("Barrier", parties, pickle::Value(), detail::managers::timeout_value(timeout)));
  }
  /// Python's Barrier(parties, action, timeout): action runs in the manager process, on the thread
  /// of the last party to arrive, before any party is released (as threading.Barrier's). It is a
  /// function of this binary named by code reference, so the manager must run this same build
  /// (Manager()/start() in this program). When it throws, the barrier breaks: the last party gets
  /// RemoteError with its message, the others BrokenBarrierError. null: no action.
  BarrierProxy Barrier(int parties, void (*action)(), Timeout timeout = std::nullopt) {
    return BarrierProxy(create("Barrier", parties, detail::managers::code_ref_value(action),
                               detail::managers::timeout_value(timeout)));
  }
  /// A Pool of `processes` workers (default cpu_count()) living in the manager process (Python:
  /// manager.Pool(processes)); start_method: its workers' ("" : the manager's default).
  PoolProxy Pool(std::optional<int> processes = std::nullopt, const std::string& start_method = "") {
    return PoolProxy(create("Pool", processes ? pickle::Value(*processes) : pickle::Value(),
                            start_method.empty() ? pickle::Value() : pickle::Value(start_method)));
  }
  /// Python: manager.Array(typecode, [0] * n) with T's typecode.
  template <class T>
  ArrayProxy<T> Array(std::size_t n) { return Array<T>(std::vector<T>(n, T{})); }
  template <class T>
  ArrayProxy<T> Array(const std::vector<T>& items) {
    return ArrayProxy<T>(create("Array", std::string(1, detail::managers::typecode_of<T>()), items));
  }
};

/// Python's multiprocessing.Manager(): a started SyncManager (its server in a forked child).
SyncManager Manager();

}  // namespace mp
