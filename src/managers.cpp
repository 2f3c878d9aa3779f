// Managers and proxies over CPython's manager protocol (PROTOCOLS.md §4).
//
// Server: one listener with the manager's authkey. A connection's first request (ident,
// methodname, args, kwds) is a control request (ident None: one reply, then the connection
// closes) or 'accept_connection', which turns the connection into a method-call channel served
// until EOF. The accept loop answers a control request that runs no user code itself when it is
// already there whole (most are: a client sends it right behind the handshake; a thread costs
// more than the answer); 'create', 'decref', 'accept_connection' and a request slow to come get a
// thread of their own. Objects
// live in a table keyed by a hex id with CPython's reference counts. A thread waiting for its
// first request polls its socket and a wake-up pipe that 'shutdown' writes; a channel's thread
// reads its socket directly (a poll per call costs a system call and keeps the read from
// spinning), and 'shutdown' shuts the channels' sockets down for reading instead. So shutdown
// ends every thread at once and serve_forever() joins them (no thread outlives the server).
//
// Client: a control request is a fresh connection each (as CPython's client does); a proxy keeps
// one channel of its own, opened on first use.
//
// The SyncManager types that wait (Queue, Lock, Condition, ...) are in manager_sync_types.cpp:
// the server does not serialize calls to them (TypeInfo::waits) and cancels their waits when it
// stops (TypeInfo::cancel), so that serve_forever() can join every connection's thread.
#include <multiprocessing/managers.hpp>
#include <multiprocessing/context.hpp>
#include <multiprocessing/logging.hpp>
#include <multiprocessing/process.hpp>

#include "manager_pickle.hpp"
#include "pickle_internal.hpp"
#include "posix/futex.hpp"
#include "posix/peek.hpp"
#include "posix/process.hpp"
#include "posix/socket.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <condition_variable>
#include <cstring>
#include <list>
#include <stdexcept>
#include <system_error>
#include <thread>

namespace mp {
namespace {

using pickle::Value;
using connection::Address;
namespace pd = pickle::detail;

// A request or reply larger than this is refused (CPython has no limit; a hostile peer must not
// make the server allocate without bound).
constexpr std::size_t kMaxMessage = std::size_t{256} << 20;
// The handshake of one manager connection: a silent client must not hold the accept loop long.
constexpr Duration kManagerHandshake{10.0};
// How long the accept loop waits for a new connection's first request before leaving it to a
// thread of its own (a client sends it right behind the handshake).
constexpr Duration kInlineWait{0.002};

// ---- the pickle writer for replies holding Python objects (exceptions) ----
// Plain replies go through pickle::dumps (byte-identical to CPython's); '#ERROR' replies hold a
// tagged exception (manager_pickle.hpp), written here as STACK_GLOBAL + REDUCE. No memo, which
// CPython's reader does not need.
void put_u32(std::string& out, std::uint32_t n) {
  for (int k = 0; k < 4; ++k) out += static_cast<char>((n >> (8 * k)) & 0xff);
}
void put_str(std::string& out, std::string_view s) {
  out += '\x58';  // BINUNICODE
  put_u32(out, static_cast<std::uint32_t>(s.size()));
  out += s;
}
bool is_tagged(const Value& v) {
  if (v.type_name() != "tuple" || v.size() < 2) return false;
  const Value& tag = v[std::size_t{0}];
  if (!tag.is<Bytes>()) return false;
  const Bytes b = tag.as<Bytes>();
  return b.size() == pd::kObjectTag.size() && std::memcmp(b.data(), pd::kObjectTag.data(), b.size()) == 0;
}
void write_value(std::string& out, const Value& v, std::size_t depth = 0) {
  if (depth > pickle::kMaxDepth) throw std::invalid_argument("manager reply nested too deeply");
  const std::string type = v.type_name();
  if (type == "NoneType") {
    out += '\x4e';
  } else if (type == "bool") {
    out += v.as<bool>() ? '\x88' : '\x89';
  } else if (type == "int") {
    if (v.is<std::int32_t>()) {
      out += '\x4a';
      put_u32(out, static_cast<std::uint32_t>(v.as<std::int32_t>()));
    } else {
      const Bytes b = pickle::int_to_bytes(v);
      if (b.size() > 255) throw std::invalid_argument("manager reply: int too large");
      out += '\x8a';
      out += static_cast<char>(b.size());
      out.append(reinterpret_cast<const char*>(b.data()), b.size());
    }
  } else if (type == "float") {
    const auto bits = std::bit_cast<std::uint64_t>(v.as<double>());
    out += '\x47';
    for (int k = 7; k >= 0; --k) out += static_cast<char>((bits >> (8 * k)) & 0xff);
  } else if (type == "str") {
    put_str(out, v.as<std::string>());
  } else if (type == "bytes") {
    const Bytes b = v.as<Bytes>();
    out += '\x42';  // BINBYTES
    put_u32(out, static_cast<std::uint32_t>(b.size()));
    out.append(reinterpret_cast<const char*>(b.data()), b.size());
  } else if (type == "tuple" && is_tagged(v)) {
    const std::string qualified = v[1].as<std::string>();
    const auto dot = qualified.rfind('.');
    put_str(out, qualified.substr(0, dot));
    put_str(out, qualified.substr(dot + 1));
    out += '\x93';  // STACK_GLOBAL
    if (v.size() >= 3) {
      write_value(out, v[2], depth + 1);
      const bool newobj = qualified == "multiprocessing.managers.Token" || qualified == "multiprocessing.managers.Namespace";
      out += newobj ? '\x81' : '\x52';  // NEWOBJ / REDUCE
      if (v.size() >= 4 && !v[3].is_none()) {
        write_value(out, v[3], depth + 1);
        out += 'b';  // BUILD
      }
    }
  } else if (type == "tuple") {
    out += '(';
    for (std::size_t i = 0; i < v.size(); ++i) write_value(out, v[i], depth + 1);
    out += 't';
  } else if (type == "list") {
    out += "]("; 
    for (std::size_t i = 0; i < v.size(); ++i) write_value(out, v[i], depth + 1);
    out += 'e';  // APPENDS
  } else if (type == "dict") {
    out += "}(";
    for (const auto& [k, x] : v.as<std::vector<std::pair<Value, Value>>>()) {
      write_value(out, k, depth + 1);
      write_value(out, x, depth + 1);
    }
    out += 'u';  // SETITEMS
  } else if (type == "set") {
    out += "\x8f(";
    for (const Value& x : v.as<std::vector<Value>>()) write_value(out, x, depth + 1);
    out += '\x90';  // ADDITEMS
  } else if (type == "frozenset") {
    out += '(';
    for (const Value& x : v.as<std::vector<Value>>()) write_value(out, x, depth + 1);
    out += '\x91';  // FROZENSET
  } else {
    throw std::invalid_argument("manager reply: cannot pickle a " + type);
  }
}
std::string encode_with_objects(const Value& v) {
  std::string out = "\x80\x04";
  write_value(out, v);
  out += '.';
  return out;
}

Value tagged_exception(std::string_view python_type, std::string message) {
  return Value::tuple({Value(mp::bytes(pd::kObjectTag)), Value("builtins." + std::string(python_type)),
                       Value::tuple({Value(std::move(message))}), Value()});
}

// Whether v holds a tagged Python object anywhere (a Namespace, an array, a pickled proxy), so
// that it must be written by encode_with_objects rather than pickle::dumps.
bool holds_tagged(const Value& v, std::size_t depth = 0) {
  const std::string type = v.type_name();
  if (type == "tuple" && is_tagged(v)) return true;
  if (depth > pickle::kMaxDepth) return false;
  if (type == "tuple" || type == "list") {
    for (std::size_t i = 0; i < v.size(); ++i)
      if (holds_tagged(v[i], depth + 1)) return true;
  } else if (type == "dict") {
    for (const auto& [k, x] : v.as<std::vector<std::pair<Value, Value>>>())
      if (holds_tagged(k, depth + 1) || holds_tagged(x, depth + 1)) return true;
  }
  return false;
}

// Error texts quote what a client sent (a global's name, a method name cut short), which need not
// be UTF-8; a reply's str must be. Invalid bytes become '?'.
std::string utf8_text(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size();) {
    const auto c = static_cast<unsigned char>(in[i]);
    std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 && c >= 0xc2 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 && c <= 0xf4 ? 4 : 0;
    bool ok = n > 0 && i + n <= in.size();
    for (std::size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(in[i + k]) & 0xc0) == 0x80;
    if (ok && n == 3) {  // no overlong forms, no surrogates
      const auto c1 = static_cast<unsigned char>(in[i + 1]);
      ok = !(c == 0xe0 && c1 < 0xa0) && !(c == 0xed && c1 >= 0xa0);
    } else if (ok && n == 4) {
      const auto c1 = static_cast<unsigned char>(in[i + 1]);
      ok = !(c == 0xf0 && c1 < 0x90) && !(c == 0xf4 && c1 >= 0x90);
    }
    if (ok) {
      out.append(in.substr(i, n));
      i += n;
    } else {
      out += '?';
      ++i;
    }
  }
  return out;
}

std::string traceback_text(std::string_view python_type, std::string_view message) {
  return "Traceback (most recent call last):\n  (raised in the C++ manager process)\n" + std::string(python_type) +
         ": " + utf8_text(message) + "\n";
}

// ---- the client side ----
Bytes encode_request(const Value& ident, std::string_view name, const Value& args, const Value& kwds = Value::dict()) {
  Value request = Value::tuple({ident, Value(std::string(name)), args, kwds});
  if (holds_tagged(args) || holds_tagged(kwds)) return mp::bytes(encode_with_objects(request));
  return pickle::dumps(request);
}

struct Reply {
  std::string kind;
  Value payload;
};

Reply decode_reply(const Bytes& raw) {
  Value v;
  try {
    v = detail::managers::load_reply(raw);
  } catch (const std::invalid_argument& e) {
    throw RemoteError("RemoteError", std::string("manager: malformed reply: ") + e.what(), "");
  }
  return Reply{v[0].as<std::string>(), v[1]};
}

[[noreturn]] void raise_remote(const Reply& r) {
  if (r.kind == "#ERROR") {
    std::string type = "Exception", message;
    if (is_tagged(r.payload) && r.payload.size() >= 3) {
      type = r.payload[1].as<std::string>();
      const auto dot = type.rfind('.');
      if (dot != std::string::npos && type.compare(0, dot, "builtins") == 0) type = type.substr(dot + 1);
      const Value& args = r.payload[2];
      if (args.size() == 1 && args[std::size_t{0}].is<std::string>()) {
        message = args[std::size_t{0}].as<std::string>();
      } else if (args.size() == 1) {
        message = args[std::size_t{0}].repr();
      } else if (args.size() > 1) {
        message = args.repr();
      }
    } else {
      message = r.payload.repr();
    }
    if (type == "KeyError" || type == "IndexError") throw std::out_of_range(type + ": " + message);
    if (type == "AttributeError") throw AttributeError(message);
    if (type == "_queue.Empty" || type == "queue.Empty") throw Empty("queue.Empty (in the manager)");
    if (type == "queue.Full") throw Full("queue.Full (in the manager)");
    if (type == "threading.BrokenBarrierError") throw BrokenBarrierError("threading.BrokenBarrierError (in the manager)");
    throw RemoteError(type, type + ": " + message, "");
  }
  if (r.kind == "#TRACEBACK" || r.kind == "#UNSERIALIZABLE") {
    const std::string text = r.payload.is<std::string>() ? r.payload.as<std::string>() : r.payload.repr();
    // what(): the last line of the traceback ("AttributeError: ...").
    std::string last = text;
    while (!last.empty() && last.back() == '\n') last.pop_back();
    if (auto nl = last.rfind('\n'); nl != std::string::npos) last = last.substr(nl + 1);
    throw RemoteError("RemoteError", last.empty() ? r.kind : last, text);
  }
  throw RemoteError("RemoteError", "manager: unexpected reply kind " + r.kind, r.payload.repr());
}

connection::Options client_options(const Bytes& authkey) {
  connection::Options o;
  o.authkey = authkey;
  return o;
}

Reply roundtrip(Connection& c, const Value& ident, std::string_view name, const Value& args,
                const Value& kwds = Value::dict()) {
  const Bytes request = encode_request(ident, name, args, kwds);
  c.send_bytes(request);
  return decode_reply(c.recv_bytes(kMaxMessage));
}

// A control request on a connection of its own (as CPython's dispatch() does).
Value control(const Address& address, const Bytes& authkey, std::string_view name, const Value& args,
              const Value& kwds = Value::dict()) {
  Connection c = connection::Client(address, client_options(authkey));
  Reply r = roundtrip(c, Value(), name, args, kwds);
  c.close();
  if (r.kind != "#RETURN") raise_remote(r);
  return r.payload;
}

std::string proxy_name() {
  // CPython sends current_process().name, plus '|' and the thread's name off the main thread.
  try {
    return current_process().name();
  } catch (const std::exception&) {
    return "MainProcess";
  }
}

// The manager whose reply this thread read last: a proxy found in that reply (pickled by CPython
// without its authkey, as it is outside spawning) is rebuilt with that manager's key rather than
// this process's, which a C++ client's manager rarely shares.
thread_local std::optional<std::pair<Address, Bytes>> last_reply_manager;

}  // namespace

namespace detail::managers {

Bytes code_ref_bytes(std::uintptr_t address) { return mp::dumps(posix::code_ref_of(address)); }

std::uintptr_t resolve_code_ref_bytes(std::span<const std::byte> ref) {
  posix::CodeRef code;
  try {
    code = mp::loads<posix::CodeRef>(ref);
  } catch (const std::exception& e) {
    throw std::invalid_argument(std::string("not a C++ code reference: ") + e.what());
  }
  try {
    return posix::resolve_code_ref(code);
  } catch (const std::exception& e) {
    throw std::invalid_argument(std::string("the code reference names no function of this manager's build: ") + e.what());
  }
}

Value load_reply(std::span<const std::byte> raw) {
  Value v = pd::load_manager_value(raw);
  if (v.type_name() != "tuple" || v.size() != 2 || !v[std::size_t{0}].is<std::string>())
    throw std::invalid_argument("not a (kind, payload) tuple: " + v.repr().substr(0, 200));
  return v;
}

}  // namespace detail::managers

// ============================== BaseProxy ==============================

struct BaseProxy::Impl {
  Token token;
  Bytes authkey;
  std::vector<std::string> exposed;
  std::mutex mutex;  // one call at a time on the channel
  Connection channel;
  bool opened = false;
  // The process that holds this proxy's reference; 0: a borrowed reference. A child (forked, or
  // given the proxy as a Process argument) borrows the parent's reference rather than taking one:
  // a child ends with _exit, so a reference of its own would never be given back. It never
  // decrefs, and opens a channel of its own (the parent's socket is not shared across fork).
  std::uint32_t owner = detail::posix::own_pid();
  std::uint32_t channel_owner = 0;

  ~Impl() {
    // The last copy is gone: give back our reference, as CPython's proxy finalizer does. A
    // manager that is already gone is not an error here.
    if (owner != detail::posix::own_pid()) return;
    try {
      if (opened && channel_owner == owner) channel.close();
      control(token.address, authkey, "decref", Value::tuple({Value(token.id)}));
    } catch (const std::exception&) {
    }
  }
};

const Bytes& BaseProxy::impl_authkey() const {
  if (!impl_) throw std::logic_error("BaseProxy: empty proxy");
  return impl_->authkey;
}

void BaseProxy::adopt_in_this_process() { impl_->owner = 0; }

BaseProxy::BaseProxy(Token token, Bytes authkey, std::vector<std::string> exposed)
    : impl_(std::make_shared<Impl>()) {
  impl_->token = std::move(token);
  impl_->authkey = std::move(authkey);
  impl_->exposed = std::move(exposed);
}

const Token& BaseProxy::token() const {
  if (!impl_) throw std::logic_error("BaseProxy: empty proxy");
  return impl_->token;
}
const std::vector<std::string>& BaseProxy::exposed() const {
  if (!impl_) throw std::logic_error("BaseProxy: empty proxy");
  return impl_->exposed;
}

Value BaseProxy::call(std::string_view name, const Value& args) {
  if (!impl_) throw std::logic_error("BaseProxy: empty proxy");
  Impl& p = *impl_;
  std::lock_guard lock(p.mutex);
  if (p.opened && p.channel_owner != detail::posix::own_pid()) {
    // Inherited through fork: the socket is the parent's; leave it to the parent.
    p.channel = Connection();
    p.opened = false;
  }
  if (!p.opened) {
    p.channel = connection::Client(p.token.address, client_options(p.authkey));
    Reply r = roundtrip(p.channel, Value(), "accept_connection", Value::tuple({Value(proxy_name())}));
    if (r.kind != "#RETURN") raise_remote(r);
    p.opened = true;
    p.channel_owner = detail::posix::own_pid();
  }
  Reply r = roundtrip(p.channel, Value(p.token.id), name, args);
  if (!last_reply_manager || !(last_reply_manager->first == p.token.address) || last_reply_manager->second != p.authkey)
    last_reply_manager.emplace(p.token.address, p.authkey);
  if (r.kind == "#RETURN") return r.payload;
  if (r.kind == "#PROXY") return Value::tuple({Value("#PROXY"), r.payload});
  raise_remote(r);
}

BaseProxy BaseProxy::proxy_from(const Value& reply) const {
  // ('#PROXY', (exposed, Token)): the manager holds one reference for us (CPython's client
  // increfs for its new proxy and then decrefs the manager's; the count ends the same).
  if (reply.type_name() != "tuple" || reply.size() != 2 || !reply[std::size_t{0}].is<std::string>() ||
      reply[std::size_t{0}].as<std::string>() != "#PROXY")
    throw std::invalid_argument("callmethod<BaseProxy>: the method did not return a proxy");
  const Value& payload = reply[1];
  const Value& token = payload[1];
  if (!is_tagged(token) || token.size() != 4 || token[3].size() != 3)
    throw std::invalid_argument("callmethod<BaseProxy>: malformed Token");
  const Value& state = token[3];
  Token t{state[std::size_t{0}].as<std::string>(), impl_->token.address, state[2].as<std::string>()};
  return BaseProxy(std::move(t), impl_->authkey, payload[std::size_t{0}].as<std::vector<std::string>>());
}

namespace {
// The proxy class CPython's SyncManager uses for a typeid (AutoProxy for the others).
std::string proxy_class_of(const std::string& type_id) {
  static const std::map<std::string, std::string, std::less<>> classes = {
      {"dict", "DictProxy"},           {"list", "ListProxy"},          {"Namespace", "NamespaceProxy"},
      {"Value", "ValueProxy"},         {"Lock", "AcquirerProxy"},      {"RLock", "AcquirerProxy"},
      {"Semaphore", "AcquirerProxy"},  {"BoundedSemaphore", "AcquirerProxy"},
      {"Condition", "ConditionProxy"}, {"Event", "EventProxy"},        {"Barrier", "BarrierProxy"},
      {"Array", "ArrayProxy"},         {"Iterator", "IteratorProxy"},  {"Pool", "PoolProxy"}};
  auto it = classes.find(type_id);
  return it == classes.end() ? "AutoProxy" : it->second;
}
Value tag() { return Value(mp::bytes(pd::kObjectTag)); }
Value address_to_value(const Address& a) {
  if (a.family() == "AF_INET") return Value::tuple({Value(a.host()), Value(static_cast<std::int64_t>(a.port()))});
  if (a.is_abstract()) return Value(mp::bytes(a.path()));
  return Value(a.path());
}
Address address_from_value(const Value& v) {
  if (v.type_name() == "tuple" && v.size() == 2) return Address(v[std::size_t{0}].as<std::string>(), v[1].as<std::uint16_t>());
  if (v.is<std::string>()) return Address(v.as<std::string>());
  if (v.is<Bytes>()) {
    const Bytes b = v.as<Bytes>();
    return Address(std::string(reinterpret_cast<const char*>(b.data()), b.size()));
  }
  throw std::invalid_argument("a pickled proxy's Token has an address of an unknown form: " + v.repr());
}
}  // namespace

Value BaseProxy::reduce() const {
  const Token& t = token();
  std::vector<Value> names;
  for (const auto& n : impl_->exposed) names.emplace_back(n);
  const Value token_value = Value::tuple({tag(), Value("multiprocessing.managers.Token"), Value::tuple(),
                                          Value::tuple({Value(t.type_id), address_to_value(t.address), Value(t.id)})});
  const Value cls = Value::tuple({tag(), Value("multiprocessing.managers." + proxy_class_of(t.type_id))});
  const Value kwds = Value::dict({{Value("exposed"), Value::tuple(std::move(names))}, {Value("authkey"), Value(impl_->authkey)}});
  return Value::tuple({tag(), Value("multiprocessing.managers.RebuildProxy"),
                       Value::tuple({cls, token_value, Value("pickle"), kwds}), Value()});
}

bool BaseProxy::is_reduced(const Value& v) {
  return is_tagged(v) && v.size() == 4 && v[1].is<std::string>() &&
         v[1].as<std::string>() == "multiprocessing.managers.RebuildProxy" && v[2].type_name() == "tuple" &&
         v[2].size() == 4 && is_tagged(v[2][1]) && v[2][1].size() == 4 && v[2][1][3].type_name() == "tuple" &&
         v[2][1][3].size() == 3 && v[2][3].type_name() == "dict";
}

BaseProxy BaseProxy::rebuild(const Value& v) {
  if (!is_reduced(v)) throw std::invalid_argument("not a pickled proxy: " + v.repr());
  const Value& state = v[2][1][3];
  Token t{state[std::size_t{0}].as<std::string>(), address_from_value(state[1]), state[2].as<std::string>()};
  const Value& kwds = v[2][3];
  Bytes key = last_reply_manager && last_reply_manager->first == t.address ? last_reply_manager->second
                                                                           : current_process().authkey();
  std::vector<std::string> names;
  for (auto& [k, x] : kwds.as<std::vector<std::pair<Value, Value>>>()) {
    if (!k.is<std::string>()) continue;
    if (k.as<std::string>() == "authkey" && x.is<Bytes>()) key = x.as<Bytes>();
    if (k.as<std::string>() == "exposed" && !x.is_none()) names = x.as<std::vector<std::string>>();
  }
  // Our own reference, as CPython's RebuildProxy takes one (incref=True).
  control(t.address, key, "incref", Value::tuple({Value(t.id)}));
  return BaseProxy(std::move(t), std::move(key), std::move(names));
}

std::string BaseProxy::repr() { return call("__repr__", Value::tuple()).as<std::string>(); }
std::string BaseProxy::str() { return call("__str__", Value::tuple()).as<std::string>(); }


// ============================== SyncManager's types ==============================
// The objects of CPython's SyncManager that hold plain data (dict, list, Namespace, Value), with
// the method names and exposed lists of CPython's DictProxy/ListProxy/NamespaceProxy/ValueProxy,
// so that a Python client's m.dict(), m.list(), m.Namespace() and m.Value() work on a C++ manager.
namespace detail::managers {
namespace {

using pickle::Value;
namespace pd = pickle::detail;
constexpr std::size_t kNotFound = static_cast<std::size_t>(-1);

// A raw method: args is the whole tuple (for optional arguments such as dict.get's default).
template <class T>
void add(TypeInfo& info, const std::string& name, Value (*fn)(T&, const Value& args)) {
  info.methods[name] = [fn](void* self, const Value& args) { return fn(*static_cast<T*>(self), args); };
}
void arity(const Value& args, std::size_t low, std::size_t high) {
  if (args.size() < low || args.size() > high)
    throw ArgumentCountError("takes " + std::to_string(low) + (high > low ? " to " + std::to_string(high) : "") +
                             " arguments but " + std::to_string(args.size()) + " were given");
}
template <class T>
std::shared_ptr<TypeInfo> make_type(const std::string& id, Value (*init)(T&, const Value& args)) {
  auto info = std::make_shared<TypeInfo>();
  info->type_id = id;
  info->cpp_type = &typeid(T);
  info->factory = [init](const Value& args, const Value& kwds) -> std::shared_ptr<void> {
    if (kwds.size() != 0) throw ArgumentCountError("takes no keyword arguments");
    auto obj = std::make_shared<T>();
    init(*obj, args);
    return obj;
  };
  return info;
}

struct Dict {
  Value d = Value::dict();
  std::size_t find(const Value& key) const {
    const pd::Container* c = pd::Raw::container(d);
    if (c == nullptr || c->items.empty()) return kNotFound;
    const std::size_t at = pd::find_in(*c, key, pd::hash_value(key), 2);
    return at;
  }
  const Value& at(const Value& key) const {
    const std::size_t i = find(key);
    if (i == kNotFound) throw KeyError(key);
    return pd::Raw::container(d)->items[i + 1];
  }
  void erase(const Value& key) {
    const std::size_t i = find(key);
    if (i == kNotFound) throw KeyError(key);
    std::vector<std::pair<Value, Value>> rest = d.as<std::vector<std::pair<Value, Value>>>();
    rest.erase(rest.begin() + static_cast<std::ptrdiff_t>(i / 2));
    d = Value::dict(std::move(rest));
  }
  Value list_of(int part) const {
    std::vector<Value> out;
    for (auto& [k, v] : d.as<std::vector<std::pair<Value, Value>>>())
      out.push_back(part == 0 ? k : part == 1 ? v : Value::tuple({k, v}));
    return Value::list(std::move(out));
  }
};

struct List {
  std::vector<Value> items;
  std::size_t index(const Value& i) const {
    std::int64_t k = i.as<std::int64_t>();
    const auto n = static_cast<std::int64_t>(items.size());
    if (k < 0) k += n;
    if (k < 0 || k >= n) throw IndexError("list index out of range");
    return static_cast<std::size_t>(k);
  }
};

struct Namespace {
  Value attributes = Value::dict();
};

struct ValueBox {
  Value value;
};

// What dict.__iter__ returns (a '#PROXY' of typeid 'Iterator'): the keys as they were then.
struct Iterator {
  std::vector<Value> items;
  std::size_t next = 0;
};

std::shared_ptr<TypeInfo> iterator_type() {
  auto info = make_type<Iterator>("Iterator", +[](Iterator&, const Value&) -> Value {
    throw std::invalid_argument("an Iterator is only made by a method (dict.__iter__)");
  });
  add<Iterator>(*info, "__next__", +[](Iterator& self, const Value& a) {
    arity(a, 0, 0);
    if (self.next >= self.items.size()) throw PythonError("builtins.StopIteration", Value::tuple(), "StopIteration");
    return self.items[self.next++];
  });
  add<Iterator>(*info, "close", +[](Iterator& self, const Value& a) {
    arity(a, 0, 0);
    self.next = self.items.size();
    return Value();
  });
  for (const char* name : {"send", "throw"})
    add<Iterator>(*info, name, +[](Iterator&, const Value&) -> Value {
      throw AttributeError("'list_iterator' object has no attribute 'send' or 'throw'");
    });
  info->exposed = {"__next__", "send", "throw", "close"};
  return info;
}

std::shared_ptr<TypeInfo> dict_type() {
  auto info = make_type<Dict>("dict", +[](Dict& self, const Value& args) {
    arity(args, 0, 1);
    if (args.size() == 1) {
      for (auto& [k, v] : args[std::size_t{0}].as<std::vector<std::pair<Value, Value>>>()) self.d.set_item(k, v);
    }
    return Value();
  });
  add<Dict>(*info, "__getitem__", +[](Dict& self, const Value& a) { arity(a, 1, 1); return self.at(a[std::size_t{0}]); });
  add<Dict>(*info, "__setitem__", +[](Dict& self, const Value& a) {
    arity(a, 2, 2);
    self.d.set_item(a[std::size_t{0}], a[1]);
    return Value();
  });
  add<Dict>(*info, "__delitem__", +[](Dict& self, const Value& a) { arity(a, 1, 1); self.erase(a[std::size_t{0}]); return Value(); });
  add<Dict>(*info, "__contains__", +[](Dict& self, const Value& a) { arity(a, 1, 1); return Value(self.find(a[std::size_t{0}]) != kNotFound); });
  add<Dict>(*info, "__len__", +[](Dict& self, const Value& a) { arity(a, 0, 0); return Value(self.d.size()); });
  add<Dict>(*info, "get", +[](Dict& self, const Value& a) {
    arity(a, 1, 2);
    const std::size_t i = self.find(a[std::size_t{0}]);
    if (i == kNotFound) return a.size() == 2 ? a[1] : Value();
    return pd::Raw::container(self.d)->items[i + 1];
  });
  add<Dict>(*info, "pop", +[](Dict& self, const Value& a) {
    arity(a, 1, 2);
    const std::size_t i = self.find(a[std::size_t{0}]);
    if (i == kNotFound) {
      if (a.size() == 2) return a[1];
      throw KeyError(a[std::size_t{0}]);
    }
    Value v = pd::Raw::container(self.d)->items[i + 1];
    self.erase(a[std::size_t{0}]);
    return v;
  });
  add<Dict>(*info, "setdefault", +[](Dict& self, const Value& a) {
    arity(a, 1, 2);
    const std::size_t i = self.find(a[std::size_t{0}]);
    if (i != kNotFound) return pd::Raw::container(self.d)->items[i + 1];
    Value v = a.size() == 2 ? a[1] : Value();
    self.d.set_item(a[std::size_t{0}], v);
    return v;
  });
  add<Dict>(*info, "update", +[](Dict& self, const Value& a) {
    arity(a, 1, 1);
    for (auto& [k, v] : a[std::size_t{0}].as<std::vector<std::pair<Value, Value>>>()) self.d.set_item(k, v);
    return Value();
  });
  add<Dict>(*info, "clear", +[](Dict& self, const Value& a) { arity(a, 0, 0); self.d = Value::dict(); return Value(); });
  add<Dict>(*info, "copy", +[](Dict& self, const Value& a) { arity(a, 0, 0); return self.d; });
  add<Dict>(*info, "keys", +[](Dict& self, const Value& a) { arity(a, 0, 0); return self.list_of(0); });
  add<Dict>(*info, "values", +[](Dict& self, const Value& a) { arity(a, 0, 0); return self.list_of(1); });
  add<Dict>(*info, "items", +[](Dict& self, const Value& a) { arity(a, 0, 0); return self.list_of(2); });
  add<Dict>(*info, "popitem", +[](Dict& self, const Value& a) {
    arity(a, 0, 0);
    if (self.d.size() == 0) throw KeyError(Value("popitem(): dictionary is empty"));
    auto items = self.d.as<std::vector<std::pair<Value, Value>>>();
    auto last = items.back();
    items.pop_back();
    self.d = Value::dict(std::move(items));
    return Value::tuple({last.first, last.second});
  });
  info->proxy_methods["__iter__"] = {"Iterator", [](void* self, const Value& a) -> std::shared_ptr<void> {
    arity(a, 0, 0);
    return std::make_shared<Iterator>(Iterator{static_cast<Dict*>(self)->list_of(0).as<std::vector<Value>>(), 0});
  }};
  info->exposed = {"__contains__", "__delitem__", "__getitem__", "__iter__", "__len__", "__setitem__", "clear", "copy",
                   "get", "items", "keys", "pop", "popitem", "setdefault", "update", "values"};
  info->getvalue = [](void* self) { return static_cast<Dict*>(self)->d; };
  return info;
}

std::shared_ptr<TypeInfo> list_type() {
  auto info = make_type<List>("list", +[](List& self, const Value& args) {
    arity(args, 0, 1);
    if (args.size() == 1) self.items = args[std::size_t{0}].as<std::vector<Value>>();
    return Value();
  });
  add<List>(*info, "__getitem__", +[](List& self, const Value& a) { arity(a, 1, 1); return self.items[self.index(a[std::size_t{0}])]; });
  add<List>(*info, "__setitem__", +[](List& self, const Value& a) {
    arity(a, 2, 2);
    self.items[self.index(a[std::size_t{0}])] = a[1];
    return Value();
  });
  add<List>(*info, "__delitem__", +[](List& self, const Value& a) {
    arity(a, 1, 1);
    self.items.erase(self.items.begin() + static_cast<std::ptrdiff_t>(self.index(a[std::size_t{0}])));
    return Value();
  });
  add<List>(*info, "__len__", +[](List& self, const Value& a) { arity(a, 0, 0); return Value(self.items.size()); });
  add<List>(*info, "__contains__", +[](List& self, const Value& a) {
    arity(a, 1, 1);
    for (const Value& x : self.items)
      if (x == a[std::size_t{0}]) return Value(true);
    return Value(false);
  });
  add<List>(*info, "append", +[](List& self, const Value& a) { arity(a, 1, 1); self.items.push_back(a[std::size_t{0}]); return Value(); });
  add<List>(*info, "extend", +[](List& self, const Value& a) {
    arity(a, 1, 1);
    for (Value& x : a[std::size_t{0}].as<std::vector<Value>>()) self.items.push_back(std::move(x));
    return Value();
  });
  add<List>(*info, "insert", +[](List& self, const Value& a) {
    arity(a, 2, 2);
    auto n = static_cast<std::int64_t>(self.items.size());
    std::int64_t k = a[std::size_t{0}].as<std::int64_t>();
    if (k < 0) k = std::max<std::int64_t>(0, k + n);
    k = std::min(k, n);
    self.items.insert(self.items.begin() + k, a[1]);
    return Value();
  });
  add<List>(*info, "pop", +[](List& self, const Value& a) {
    arity(a, 0, 1);
    if (self.items.empty()) throw IndexError("pop from empty list");
    const std::size_t i = a.size() == 1 ? self.index(a[std::size_t{0}]) : self.items.size() - 1;
    Value v = self.items[i];
    self.items.erase(self.items.begin() + static_cast<std::ptrdiff_t>(i));
    return v;
  });
  add<List>(*info, "index", +[](List& self, const Value& a) {
    arity(a, 1, 1);
    for (std::size_t i = 0; i < self.items.size(); ++i)
      if (self.items[i] == a[std::size_t{0}]) return Value(i);
    throw std::invalid_argument(a[std::size_t{0}].repr() + " is not in list");
  });
  add<List>(*info, "count", +[](List& self, const Value& a) {
    arity(a, 1, 1);
    std::size_t n = 0;
    for (const Value& x : self.items) n += x == a[std::size_t{0}] ? 1 : 0;
    return Value(n);
  });
  add<List>(*info, "remove", +[](List& self, const Value& a) {
    arity(a, 1, 1);
    for (auto it = self.items.begin(); it != self.items.end(); ++it)
      if (*it == a[std::size_t{0}]) {
        self.items.erase(it);
        return Value();
      }
    throw std::invalid_argument("list.remove(x): x not in list");
  });
  add<List>(*info, "reverse", +[](List& self, const Value& a) {
    arity(a, 0, 0);
    std::reverse(self.items.begin(), self.items.end());
    return Value();
  });
  info->getvalue = [](void* self) { return Value::list(static_cast<List*>(self)->items); };
  return info;
}

std::shared_ptr<TypeInfo> namespace_type() {
  auto info = make_type<Namespace>("Namespace", +[](Namespace&, const Value&) { return Value(); });
  // Python: manager.Namespace(**kwds), the attributes to begin with.
  info->factory = [](const Value& args, const Value& kwds) -> std::shared_ptr<void> {
    arity(args, 0, 0);
    auto ns = std::make_shared<Namespace>();
    for (auto& [k, v] : kwds.as<std::vector<std::pair<Value, Value>>>()) ns->attributes.set_item(k, v);
    return ns;
  };
  add<Namespace>(*info, "__getattribute__", +[](Namespace& self, const Value& a) {
    arity(a, 1, 1);
    Dict view{self.attributes};
    const std::size_t i = view.find(a[std::size_t{0}]);
    if (i == kNotFound) throw AttributeError("'Namespace' object has no attribute " + a[std::size_t{0}].repr());
    return pd::Raw::container(self.attributes)->items[i + 1];
  });
  add<Namespace>(*info, "__setattr__", +[](Namespace& self, const Value& a) {
    arity(a, 2, 2);
    if (!a[std::size_t{0}].is<std::string>()) throw std::invalid_argument("attribute name must be a str");
    self.attributes.set_item(a[std::size_t{0}], a[1]);
    return Value();
  });
  add<Namespace>(*info, "__delattr__", +[](Namespace& self, const Value& a) {
    arity(a, 1, 1);
    Dict view{self.attributes};
    if (view.find(a[std::size_t{0}]) == kNotFound) throw AttributeError(a[std::size_t{0}].as<std::string>());
    view.erase(a[std::size_t{0}]);
    self.attributes = view.d;
    return Value();
  });
  // _getvalue() gives a real multiprocessing.managers.Namespace to a Python client.
  info->getvalue = [](void* self) {
    return Value::tuple({Value(mp::bytes(pd::kObjectTag)), Value("multiprocessing.managers.Namespace"), Value::tuple(),
                         static_cast<Namespace*>(self)->attributes});
  };
  return info;
}

std::shared_ptr<TypeInfo> value_type() {
  // CPython: Value(typecode, value) -> ValueProxy with get()/set() (the typecode is not checked).
  auto info = make_type<ValueBox>("Value", +[](ValueBox&, const Value&) { return Value(); });
  // Python: Value(typecode, value, lock=True); the lock means nothing in a manager.
  info->factory = [](const Value& args, const Value& kwds) -> std::shared_ptr<void> {
    arity(args, 1, 3);
    for (auto& [k, v] : kwds.as<std::vector<std::pair<Value, Value>>>())
      if (!k.is<std::string>() || k.as<std::string>() != "lock")
        throw ArgumentCountError("Value() got an unexpected keyword argument " + k.repr());
    auto box = std::make_shared<ValueBox>();
    box->value = args.size() >= 2 ? args[1] : Value();
    return box;
  };
  add<ValueBox>(*info, "get", +[](ValueBox& self, const Value& a) { arity(a, 0, 0); return self.value; });
  add<ValueBox>(*info, "set", +[](ValueBox& self, const Value& a) { arity(a, 1, 1); self.value = a[std::size_t{0}]; return Value(); });
  info->getvalue = [](void* self) { return static_cast<ValueBox*>(self)->value; };
  return info;
}

}  // namespace

std::vector<std::shared_ptr<TypeInfo>> sync_types() {
  std::vector<std::shared_ptr<TypeInfo>> all{dict_type(), list_type(), namespace_type(), value_type(), iterator_type()};
  for (auto& t : waiting_sync_types()) all.push_back(std::move(t));
  return all;
}

std::vector<std::string> exposed_names(const TypeInfo& t) {
  if (!t.exposed.empty()) return t.exposed;
  std::vector<std::string> names;
  for (const auto& [m, fn] : t.methods) names.push_back(m);
  for (const auto& [m, fn] : t.methods_kw) names.push_back(m);
  for (const auto& [m, fn] : t.proxy_methods) names.push_back(m);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace detail::managers

// ============================== Server ==============================

namespace {
// The sockets of the servers in this process: listeners and served connections. A child forked
// from a manager (a pool worker under fork) must not hold them: a worker busy with a long task
// after its manager was killed would keep the listener and the channels open, and clients would
// wait for a handshake or a reply that never comes instead of failing at once. Linux has no
// close-on-fork flag, so the fork's child handler points them at /dev/null: the numbers stay
// taken, as the child's copies of the handles still own them and close them later. An fd leaves
// the list before it is closed, so a number here is never a reused descriptor.
struct ServerFds {
  std::mutex mutex;
  std::vector<int> fds;
};
ServerFds& server_fds() {
  static ServerFds* fds = [] {
    auto* created = new ServerFds;  // never destroyed: a fork may come during the program's exit
    detail::posix::at_fork([] { server_fds().mutex.lock(); }, [] { server_fds().mutex.unlock(); }, [] {
      ServerFds& f = server_fds();
      detail::posix::blank_fds(f.fds);
      f.fds.clear();  // the child serves none of them
      f.mutex.unlock();
    });
    return created;
  }();
  return *fds;
}
// While alive: fd is blanked in fork children.
class BlankedInForkChildren {
 public:
  explicit BlankedInForkChildren(int fd) : fd_(fd) {
    ServerFds& f = server_fds();
    std::lock_guard lock(f.mutex);
    f.fds.push_back(fd_);
  }
  ~BlankedInForkChildren() {
    ServerFds& f = server_fds();
    std::lock_guard lock(f.mutex);
    std::erase(f.fds, fd_);
  }
  BlankedInForkChildren(const BlankedInForkChildren&) = delete;
  BlankedInForkChildren& operator=(const BlankedInForkChildren&) = delete;

 private:
  int fd_;
};

thread_local Server::Impl* creating_in = nullptr;  // the server running a factory on this thread
struct LocalObjects {
  explicit LocalObjects(Server::Impl* s) : saved(creating_in) { creating_in = s; }
  ~LocalObjects() { creating_in = saved; }
  Server::Impl* saved;
};
}  // namespace

struct Server::Impl {
  // Empty in a RequestSandbox (a default Listener would bind a socket of its own).
  std::optional<connection::Listener> listener;
  std::optional<BlankedInForkChildren> listener_blanked;  // (reset before the listener closes)
  Address bound;  // the listener's address (still known once it is closed)
  Bytes authkey;
  std::map<std::string, std::shared_ptr<detail::managers::TypeInfo>, std::less<>> types;

  struct Object {
    std::shared_ptr<void> object;
    const detail::managers::TypeInfo* type = nullptr;
    std::int64_t refcount = 0;
    std::shared_ptr<std::mutex> mutex;  // one method call at a time per object
  };
  std::mutex table_mutex;
  std::map<std::string, Object, std::less<>> objects;
  std::uint64_t next_id = 0x10000;
  std::atomic<bool> stop{false};
  // Written once by 'shutdown' and never read: every thread waits on it next to its own socket,
  // so that all of them wake at once.
  std::pair<Connection, Connection> wake = Pipe(false);
  // The sockets of the connections served by threads. A channel's thread blocks in its read
  // without polling the wake-up pipe next to it (a poll before every read costs a system call and
  // an extra sleep per call, and keeps the read from spinning), and a client may stall in the
  // middle of a request; stopping shuts these sockets down for reading, which ends every such
  // read with EOF. A thread removes its socket here before the socket is closed, so a number
  // here is never a reused descriptor.
  std::mutex channels_mutex;
  std::vector<int> channel_fds;

  void request_stop() {
    if (stop.exchange(true)) return;
    try {
      wake.second.send_bytes(std::string_view("x"));
    } catch (const std::exception&) {
    }
    {
      std::lock_guard lock(channels_mutex);
      for (int fd : channel_fds) {
        try {
          detail::posix::shutdown_socket(fd, true, false);
        } catch (const std::exception&) {
        }
      }
    }
    // Calls waiting in an object (Queue.get, Lock.acquire) fail now, so that their threads end.
    std::lock_guard lock(table_mutex);
    for (auto& [id, o] : objects)
      if (o.type->cancel) o.type->cancel(o.object.get());
  }

  // Adds an object with one reference (the creator's); returns its id.
  std::string add_object(std::shared_ptr<void> obj, const detail::managers::TypeInfo* type) {
    std::lock_guard lock(table_mutex);
    char id[32];
    std::snprintf(id, sizeof id, "%llx", static_cast<unsigned long long>(next_id++));
    // Made while stopping: it must not wait either.
    if (stop.load() && type->cancel) type->cancel(obj.get());
    objects[id] = Object{std::move(obj), type, 1, std::make_shared<std::mutex>()};
    return id;
  }
  static Value exposed_tuple(const detail::managers::TypeInfo& t) {
    std::vector<Value> names;
    for (auto& n : detail::managers::exposed_names(t)) names.emplace_back(std::move(n));
    return Value::tuple(std::move(names));
  }

  std::mutex threads_mutex;
  std::list<std::pair<std::thread, std::shared_ptr<std::atomic<bool>>>> threads;

  // Reply to one message; returns false when the connection should close afterwards.
  Value handle_control(std::string_view name, const Value& args, const Value& kwds) {
    if (name == "dummy") return Value();
    if (name == "create") {
      if (args.size() < 1 || !args[std::size_t{0}].is<std::string>())
        throw std::invalid_argument("create needs a typeid");
      const std::string type_id = args[std::size_t{0}].as<std::string>();
      auto it = types.find(type_id);
      if (it == types.end()) throw std::domain_error("unknown typeid '" + type_id + "'");
      std::vector<Value> ctor;
      for (std::size_t i = 1; i < args.size(); ++i) ctor.push_back(args[i]);
      std::shared_ptr<void> obj;
      {
        // A constructor argument may be a proxy of an object in this manager (Condition(lock)).
        LocalObjects scope(this);
        obj = it->second->factory(Value::tuple(std::move(ctor)), kwds);
      }
      const std::string id = add_object(std::move(obj), it->second.get());
      if (get_logger().is_enabled_for(levels::debug)) get_logger().debug("manager created a " + type_id + " object with id " + id);
      return Value::tuple({Value(id), exposed_tuple(*it->second)});
    }
    if (name == "incref" || name == "decref") {
      if (args.size() != 1 || !args[std::size_t{0}].is<std::string>()) throw std::invalid_argument(std::string(name) + " needs an id");
      const std::string id = args[std::size_t{0}].as<std::string>();
      std::shared_ptr<void> dropped;  // destroyed outside the lock
      std::lock_guard lock(table_mutex);
      auto it = objects.find(id);
      if (it == objects.end()) throw std::domain_error("KeyError: '" + id + "' (no such object)");
      it->second.refcount += name == "incref" ? 1 : -1;
      if (it->second.refcount <= 0) {
        dropped = std::move(it->second.object);
        objects.erase(it);
        if (get_logger().is_enabled_for(levels::debug)) get_logger().debug("manager disposing of object with id " + id);
      }
      return Value();
    }
    if (kwds.size() != 0) throw detail::managers::ArgumentCountError(std::string(name) + "() takes no keyword arguments");
    if (name == "number_of_objects") {
      std::lock_guard lock(table_mutex);
      return Value(static_cast<std::int64_t>(objects.size()));
    }
    if (name == "debug_info") {
      std::lock_guard lock(table_mutex);
      std::string out;
      for (const auto& [id, o] : objects)
        out += "  " + id + ":       refcount=" + std::to_string(o.refcount) + "\n    <" + o.type->type_id + " object>\n";
      return Value(out);
    }
    if (name == "get_methods") {
      if (args.size() != 1 || !is_tagged(args[std::size_t{0}]) || args[std::size_t{0}].size() != 4)
        throw std::invalid_argument("get_methods needs a Token");
      const Value& state = args[std::size_t{0}][3];
      const std::string id = state[2].as<std::string>();
      std::lock_guard lock(table_mutex);
      auto it = objects.find(id);
      if (it == objects.end()) throw std::domain_error("KeyError: '" + id + "' (no such object)");
      return exposed_tuple(*it->second.type);
    }
    throw std::domain_error("unrecognized control request '" + std::string(name) + "'");
  }

  // One method call on a channel: the reply to send.
  std::string handle_call(const Value& request) {
    const std::string id = request[std::size_t{0}].as<std::string>();
    const std::string name = request[1].as<std::string>();
    const Value& args = request[2];
    const Value& kwds = request[3];
    Object obj;
    {
      std::lock_guard lock(table_mutex);
      auto it = objects.find(id);
      if (it == objects.end()) return traceback_reply("KeyError", "'" + id + "' (no such object in the manager)");
      obj = it->second;
    }
    const detail::managers::TypeInfo& type = *obj.type;
    const detail::managers::Method* method = nullptr;
    const detail::managers::MethodKw* method_kw = nullptr;
    const std::pair<std::string, detail::managers::ProxyMethod>* proxy_method = nullptr;
    if (name != "#GETVALUE" && name != "__repr__" && name != "__str__") {
      if (auto m = type.methods.find(name); m != type.methods.end()) {
        method = &m->second;
      } else if (auto k = type.methods_kw.find(name); k != type.methods_kw.end()) {
        method_kw = &k->second;
      } else if (auto p = type.proxy_methods.find(name); p != type.proxy_methods.end()) {
        proxy_method = &p->second;
      } else {
        return traceback_reply("AttributeError",
                               "method '" + name + "' of '" + type.type_id + "' object is not in exposed=" + exposed_repr(type));
      }
    }
    if (kwds.size() != 0 && method_kw == nullptr)
      return error_reply("TypeError", name + "() takes no keyword arguments in a C++ manager");
    Value result;
    std::shared_ptr<void> made;  // a proxy method's new object
    try {
      // A waiting type synchronizes on its own: holding the object's mutex while Queue.get waits
      // would keep Queue.put from ever running.
      std::unique_lock<std::mutex> lock;
      if (!type.waits) lock = std::unique_lock<std::mutex>(*obj.mutex);
      if (name == "#GETVALUE") {
        if (!type.getvalue)
          return kind_reply("#UNSERIALIZABLE", traceback_text("TypeError", "cannot pickle '" + type.type_id + "' object"));
        result = type.getvalue(obj.object.get());
      } else if (name == "__repr__" || name == "__str__") {
        result = Value("<" + type.type_id + " object in a C++ manager, id " + id + ">");
      } else if (method != nullptr) {
        result = (*method)(obj.object.get(), args);
      } else if (method_kw != nullptr) {
        result = (*method_kw)(obj.object.get(), args, kwds);
      } else {
        made = proxy_method->second(obj.object.get(), args);
      }
    } catch (const detail::managers::ArgumentCountError& e) {
      return error_reply("TypeError", name + "() " + e.what());
    } catch (const detail::managers::PythonError& e) {
      return encode_with_objects(Value::tuple(
          {Value("#ERROR"), Value::tuple({Value(mp::bytes(pd::kObjectTag)), Value(e.type), e.args, Value()})}));
    } catch (const detail::managers::KeyError& e) {
      return encode_with_objects(Value::tuple({Value("#ERROR"), Value::tuple({Value(mp::bytes(pd::kObjectTag)),
                                 Value("builtins.KeyError"), Value::tuple({e.key}), Value()})}));
    } catch (const detail::managers::IndexError& e) {
      return error_reply("IndexError", e.what());
    } catch (const AttributeError& e) {
      return error_reply("AttributeError", e.what());
    } catch (const std::out_of_range& e) {
      return error_reply("KeyError", e.what());
    } catch (const std::invalid_argument& e) {
      return error_reply("ValueError", e.what());
    } catch (const std::exception& e) {
      return error_reply("RuntimeError", e.what());
    }
    if (proxy_method != nullptr) return proxy_reply(proxy_method->first, std::move(made));
    // Python objects (a Namespace, an array, a pickled proxy) go out as themselves; everything
    // else as plain data, byte-identical to CPython's.
    if (holds_tagged(result)) return encode_with_objects(Value::tuple({Value("#RETURN"), result}));
    return kind_reply("#RETURN", result);
  }

  // ('#PROXY', (exposed, Token)) for a new object of type_id holding one reference, which the
  // client's proxy takes over (CPython's client increfs and then decrefs the server's; the same).
  std::string proxy_reply(const std::string& type_id, std::shared_ptr<void> made) {
    auto t = types.find(type_id);
    if (t == types.end())
      return traceback_reply("KeyError", "method_to_typeid names '" + type_id + "', which is not registered");
    const detail::managers::TypeInfo& target = *t->second;
    if (target.cpp_type == nullptr)
      return traceback_reply("TypeError", "typeid '" + type_id + "' cannot hold a method's result");
    const std::string new_id = add_object(std::move(made), &target);
    const Value token = Value::tuple({Value(mp::bytes(pd::kObjectTag)), Value("multiprocessing.managers.Token"), Value::tuple(),
                                      Value::tuple({Value(type_id), address_value(), Value(new_id)})});
    return encode_with_objects(Value::tuple({Value("#PROXY"), Value::tuple({exposed_tuple(target), token})}));
  }
  Value address_value() const { return address_to_value(bound); }

  static std::string exposed_repr(const detail::managers::TypeInfo& t) { return exposed_tuple(t).repr(); }
  static std::string kind_reply(std::string_view kind, const Value& payload) {
    try {
      const Bytes b = pickle::dumps(Value::tuple({Value(std::string(kind)), payload}));
      return std::string(reinterpret_cast<const char*>(b.data()), b.size());
    } catch (const std::exception& e) {
      return kind_reply("#UNSERIALIZABLE", Value(traceback_text("PicklingError", e.what())));
    }
  }
  static std::string error_reply(std::string_view python_type, std::string message) {
    return encode_with_objects(Value::tuple({Value("#ERROR"), tagged_exception(python_type, utf8_text(message))}));
  }
  static std::string traceback_reply(std::string_view python_type, std::string_view message) {
    return kind_reply("#TRACEBACK", Value(traceback_text(python_type, message)));
  }

  // Waits for a message, looking at the stop flag between polls. false: stop or EOF.
  bool wait_message(Connection& c) {
    if (stop.load()) return false;
    (void)connection::wait({connection::Waitable(c), connection::Waitable(wake.first)});
    return !stop.load();
  }

  // Serves a connection from its first request (read here unless `first` holds it already).
  void serve_connection(Connection c, std::optional<Bytes> first = std::nullopt) {
    try {
      Listed listed(*this, c);
      if (!first) {
        if (!wait_message(c)) return;
        first = c.recv_bytes(kMaxMessage);
      }
      serve_first(c, *first);
    } catch (const std::exception&) {
      // The client went away (EOF, EPIPE, ECONNRESET) or sent a bad frame: only its connection ends.
    }
  }

  // A connection's first request: a control request (one reply, then the connection closes) or
  // accept_connection (the connection becomes a method-call channel).
  void serve_first(Connection& c, std::span<const std::byte> raw) {
    Value request;
    std::string refusal;
    if (!decode_request(raw, request, refusal)) {
      c.send_bytes(refusal);
      return;
    }
    const std::string name = request[1].as<std::string>();
    if (!request[std::size_t{0}].is_none()) {
      c.send_bytes(traceback_reply("ValueError", "a method call before accept_connection"));
      return;
    }
    if (name == "shutdown") {
      // The flag first: the client may close after the first reply, and the second send then
      // fails (EPIPE), which must not keep the server running.
      request_stop();
      const std::string reply = kind_reply("#RETURN", Value());
      c.send_bytes(reply);
      c.send_bytes(reply);  // CPython sends it twice (PROTOCOLS.md §4.2)
      return;
    }
    if (name == "accept_connection") {
      c.send_bytes(kind_reply("#RETURN", Value()));
      serve_channel(c);
      return;
    }
    c.send_bytes(control_reply(name, request));
  }

  // The first request of a just-accepted connection when it is already there whole (a client
  // sends it right behind the handshake): nullopt when it is not, so that a client that is slow
  // or stalls mid-message never holds up the accept loop (its thread waits for it instead).
  static std::optional<Bytes> ready_request(Connection& c) {
    if (!c.poll(kInlineWait)) return std::nullopt;
    const int fd = c.fileno();
    std::byte head[12];
    const std::size_t n = detail::posix::peek_some(fd, head);
    if (n < 4) return std::nullopt;
    std::uint64_t length = 0, header = 4;
    for (int k = 0; k < 4; ++k) length = (length << 8) | std::to_integer<std::uint64_t>(head[k]);
    if (length == 0xffffffff) {  // the long form: an 8-byte length follows
      if (n < 12) return std::nullopt;
      length = 0;
      for (int k = 4; k < 12; ++k) length = (length << 8) | std::to_integer<std::uint64_t>(head[k]);
      header = 12;
    }
    // (An over-long request is refused by recv_bytes at once, without reading it.)
    if (length <= kMaxMessage && detail::posix::bytes_ready(fd) < header + length) return std::nullopt;
    return c.recv_bytes(kMaxMessage);
  }

  // Whether serve_forever answers this first request itself: control requests that run no user
  // code (a thread costs more than answering them). 'create' runs a constructor and 'decref' may
  // run a destructor, either of which may wait (a destructor of an object holding a proxy of this
  // very manager sends a decref that only the accept loop can take), and 'accept_connection' is
  // served until the client goes: those get a thread.
  static bool answered_inline(std::span<const std::byte> raw) {
    Value request;
    std::string refusal;
    if (!decode_request(raw, request, refusal)) return true;  // refused at once
    if (!request[std::size_t{0}].is_none()) return true;
    const std::string name = request[1].as<std::string>();
    return name != "create" && name != "decref" && name != "accept_connection";
  }

  // Decodes one request message; false, with the reply to send, when it is not a request.
  static bool decode_request(std::span<const std::byte> raw, Value& request, std::string& refusal) {
    try {
      request = pd::load_manager_value(raw);
    } catch (const std::invalid_argument& e) {
      refusal = traceback_reply("ValueError", std::string("bad request: ") + e.what());
      return false;
    }
    if (!valid_request(request)) {
      refusal = traceback_reply("ValueError", "bad request: expected (ident, methodname, args, kwds)");
      return false;
    }
    return true;
  }

  // The reply to a control request other than shutdown and accept_connection.
  std::string control_reply(std::string_view name, const Value& request) {
    try {
      return kind_reply("#RETURN", handle_control(name, request[2], request[3]));
    } catch (const detail::managers::ArgumentCountError& e) {
      return traceback_reply("TypeError", e.what());
    } catch (const std::exception& e) {
      return traceback_reply("Exception", e.what());
    }
  }

  static bool valid_request(const Value& r) {
    return r.type_name() == "tuple" && r.size() == 4 && (r[std::size_t{0}].is_none() || r[std::size_t{0}].is<std::string>()) &&
           r[1].is<std::string>() && r[2].type_name() == "tuple" && r[3].type_name() == "dict";
  }

  // While alive, a stop shuts c's socket down for reading (which ends a read waiting on it).
  // Listed before the stop flag is looked at, so that a stop after the look reaches it.
  struct Listed {
    Impl& server;
    int fd;
    BlankedInForkChildren blanked{fd};
    Listed(Impl& s, Connection& c) : server(s), fd(c.fileno()) {
      std::lock_guard lock(server.channels_mutex);
      server.channel_fds.push_back(fd);
    }
    ~Listed() {
      std::lock_guard lock(server.channels_mutex);
      std::erase(server.channel_fds, fd);
    }
    Listed(const Listed&) = delete;
    Listed& operator=(const Listed&) = delete;
  };

  // Serves a method-call channel until EOF or a stop (on a thread whose connection is Listed).
  void serve_channel(Connection& c) {
    while (!stop.load()) {
      std::string reply;
      Value request;
      // Blocks (after a short adaptive spin) until the next request, EOF, or a stop.
      const Bytes message = c.recv_bytes(kMaxMessage);
      if (stop.load()) break;
      if (!decode_request(message, request, reply)) {
      } else if (request[std::size_t{0}].is_none()) {
        reply = traceback_reply("ValueError", "bad request on a method-call channel");
      } else {
        reply = handle_call(request);
      }
      c.send_bytes(reply);
    }
  }

  void reap(bool all) {
    std::lock_guard lock(threads_mutex);
    for (auto it = threads.begin(); it != threads.end();) {
      if (all || it->second->load()) {
        it->first.join();
        it = threads.erase(it);
      } else {
        ++it;
      }
    }
  }

  void serve_forever() {
    if (!listener) throw std::logic_error("Server: no listener");
    while (!stop.load()) {
      (void)connection::wait({connection::Waitable(*listener), connection::Waitable(wake.first)});
      if (stop.load()) break;
      Connection c;
      try {
        c = listener->accept();
      } catch (const std::exception&) {
        continue;  // a failed handshake (wrong key, garbage, a silent client) ends that client only
      }
      // Most connections carry one control request ('dummy', 'incref', 'shutdown', ...)
      // sent right behind the handshake: answered here, without a thread of its own.
      std::optional<Bytes> first;
      try {
        first = ready_request(c);
        if (first && answered_inline(*first)) {
          serve_first(c, *first);
          continue;
        }
      } catch (const std::exception&) {
        continue;  // the client went away or sent a bad frame: only its connection ends
      }
      reap(false);
      auto done = std::make_shared<std::atomic<bool>>(false);
      std::thread t([this, c, done, first = std::move(first)]() mutable {
        serve_connection(std::move(c), std::move(first));
        done->store(true);
      });
      std::lock_guard lock(threads_mutex);
      threads.emplace_back(std::move(t), done);
    }
    reap(true);
    // Clients that come later (a proxy's last decref) are refused at once instead of waiting in
    // the backlog for a handshake that never comes.
    listener_blanked.reset();
    try {
      listener->close();
    } catch (const std::exception&) {
    }
  }
};

void Server::serve_forever() {
  if (!impl_) throw std::logic_error("Server: empty server");
  impl_->serve_forever();
}

connection::Address Server::address() const {
  if (!impl_) throw std::logic_error("Server: empty server");
  return impl_->bound;
}

namespace detail::managers {

RequestSandbox::RequestSandbox() : impl_(std::make_shared<Server::Impl>()) {
  for (auto& t : sync_types()) impl_->types[t->type_id] = t;
  // As a stopping server: every waiting object is cancelled when it is made, so no call waits.
  impl_->stop.store(true);
}
RequestSandbox::~RequestSandbox() = default;

void RequestSandbox::reset() {
  std::map<std::string, Server::Impl::Object, std::less<>> dropped;  // destroyed outside the lock
  std::lock_guard lock(impl_->table_mutex);
  dropped.swap(impl_->objects);
  impl_->next_id = 0x10000;
}

std::string RequestSandbox::handle(std::span<const std::byte> message) {
  Value request;
  std::string reply;
  if (!Server::Impl::decode_request(message, request, reply)) return reply;
  if (!request[std::size_t{0}].is_none()) return impl_->handle_call(request);
  const std::string name = request[1].as<std::string>();
  if (name == "shutdown" || name == "accept_connection") return Server::Impl::kind_reply("#RETURN", Value());
  return impl_->control_reply(name, request);
}

}  // namespace detail::managers

namespace detail::managers {

std::pair<std::shared_ptr<void>, const TypeInfo*> local_object(const Value& v) {
  if (creating_in == nullptr || !BaseProxy::is_reduced(v)) return {nullptr, nullptr};
  const Value& id = v[2][1][3][2];
  if (!id.is<std::string>()) return {nullptr, nullptr};
  std::lock_guard lock(creating_in->table_mutex);
  auto it = creating_in->objects.find(id.as<std::string>());
  if (it == creating_in->objects.end()) return {nullptr, nullptr};
  return {it->second.object, it->second.type};
}

}  // namespace detail::managers

// ============================== BaseManager ==============================

struct BaseManager::Impl {
  std::optional<Address> address;
  Bytes authkey;
  std::map<std::string, std::shared_ptr<detail::managers::TypeInfo>, std::less<>> types;
  std::unique_ptr<Process> process;  // the server child of start()
  bool connected = false;
  bool shut = false;

  void do_shutdown() {
    if (shut) return;
    shut = true;
    if (!process) return;
    try {
      control(*address, authkey, "shutdown", Value::tuple());
    } catch (const std::exception&) {
    }
    if (!process->join(Duration(2.0))) {
      process->terminate();
      process->join();
    }
  }
  ~Impl() { do_shutdown(); }
};

BaseManager::BaseManager(std::optional<Address> address, std::optional<Bytes> authkey)
    : impl_(std::make_shared<Impl>()) {
  impl_->address = std::move(address);
  impl_->authkey = authkey ? std::move(*authkey) : current_process().authkey();
}

BaseManager::~BaseManager() = default;

void BaseManager::add_type(std::shared_ptr<detail::managers::TypeInfo> info) {
  impl_->types[info->type_id] = std::move(info);
}

Server BaseManager::get_server() {
  auto s = std::make_shared<Server::Impl>();
  connection::Options o;
  o.authkey = impl_->authkey;
  o.backlog = 128;
  o.handshake_timeout = kManagerHandshake;
  s->listener = connection::Listener(impl_->address, o);
  s->listener_blanked.emplace(s->listener->fileno());
  s->authkey = impl_->authkey;
  s->types = impl_->types;
  s->bound = s->listener->address();
  impl_->address = s->bound;
  return Server(std::move(s));
}

void BaseManager::start() {
  if (impl_->process || impl_->connected) throw std::logic_error("BaseManager: already started or connected");
  auto [reader, writer] = Pipe(false);
  // The child makes the listener (so that it owns and removes its socket file) and reports the
  // address it got back through the pipe, as CPython's start() does. It captures copies of the
  // settings, not the manager (whose Impl owns the Process: that would be a cycle).
  BaseManager settings(impl_->address, impl_->authkey);
  settings.impl_->types = impl_->types;
  // (writer = writer: clang before 16 cannot capture a structured binding)
  auto child = [settings_impl = settings.impl_, writer = writer]() mutable {
    BaseManager manager;
    manager.impl_ = settings_impl;
    Server server = manager.get_server();
    writer.send(server.address());
    writer.close();
    server.serve_forever();
  };
  impl_->process = std::make_unique<Process>(get_context("fork"), child);
  impl_->process->start();
  writer.close();
  if (!reader.poll(Duration(30.0))) {
    impl_->process->terminate();
    throw TimeoutError("BaseManager.start(): the manager process did not report its address");
  }
  impl_->address = reader.recv<Address>();
  impl_->connected = true;
}

void BaseManager::connect() {
  if (!impl_->address) throw std::logic_error("BaseManager.connect(): no address");
  control(*impl_->address, impl_->authkey, "dummy", Value::tuple());
  impl_->connected = true;
}

void BaseManager::shutdown() {
  if (impl_->process) {
    impl_->do_shutdown();
    return;
  }
  if (impl_->shut) return;
  if (!impl_->address) throw std::logic_error("BaseManager.shutdown(): no address");
  impl_->shut = true;
  control(*impl_->address, impl_->authkey, "shutdown", Value::tuple());
}

Address BaseManager::address() const {
  if (!impl_->address) throw std::logic_error("BaseManager: no address yet (start() or get_server() makes one)");
  return *impl_->address;
}
const Bytes& BaseManager::authkey() const { return impl_->authkey; }

BaseProxy BaseManager::create_value(std::string_view type_id, const Value& args, const Value& kwds) {
  std::vector<Value> all{Value(std::string(type_id))};
  for (std::size_t i = 0; i < args.size(); ++i) all.push_back(args[i]);
  Value r = control(address(), impl_->authkey, "create", Value::tuple(std::move(all)), kwds);
  if (r.type_name() != "tuple" || r.size() != 2) throw RemoteError("RemoteError", "manager: malformed create reply", r.repr());
  return BaseProxy(Token{std::string(type_id), address(), r[std::size_t{0}].as<std::string>()}, impl_->authkey,
                   r[1].as<std::vector<std::string>>());
}

std::int64_t BaseManager::number_of_objects() {
  return control(address(), impl_->authkey, "number_of_objects", Value::tuple()).as<std::int64_t>();
}
std::string BaseManager::debug_info() {
  return control(address(), impl_->authkey, "debug_info", Value::tuple()).as<std::string>();
}

SyncManager::SyncManager(std::optional<Address> address, std::optional<Bytes> authkey)
    : BaseManager(std::move(address), std::move(authkey)) {
  for (auto& t : detail::managers::sync_types()) add_type(t);
}

SyncManager Manager() {
  SyncManager m;
  m.start();
  return m;
}

}  // namespace mp
