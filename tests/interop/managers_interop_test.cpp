// CPython's manager protocol both ways (PROTOCOLS.md §4), for every CPython version found here:
// a Python BaseManager client using a C++ manager server, and a C++ client using a Python
// SyncManager server (dict, list, Namespace, '#PROXY' iterators, errors). Versions that are not
// installed are reported as skipped.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "interop/python_peer.hpp"

namespace {

using mp::connection::Address;

struct Counter {
  std::int64_t n = 0;
  void add(std::int64_t k) { n += k; }
  std::int64_t get() const { return n; }
  std::string lookup(std::string key) { throw std::out_of_range(key); }
  double fail(std::string why) { throw std::invalid_argument(why); }
};

// Uses the C++ manager at 127.0.0.1:argv[2] with the key argv[1] (hex); exits 0 when every
// check passed, and prints the failing check otherwise.
const char* kPythonClient = R"(
import sys
from multiprocessing.managers import BaseManager, RemoteError
BaseManager.register('Counter')
BaseManager.register('Vec')
m = BaseManager(address=('127.0.0.1', int(sys.argv[2])), authkey=bytes.fromhex(sys.argv[1]))
m.connect()
c = m.Counter()
c.add(5)
c.add(37)
assert c.get() == 42, c.get()
assert c._callmethod('get') == 42
try:
    c.lookup('zz')
    sys.exit('no KeyError')
except KeyError as e:
    assert 'zz' in str(e), e
try:
    c.fail('boom')
    sys.exit('no ValueError')
except ValueError as e:
    assert 'boom' in str(e), e
try:
    c._callmethod('not_exposed')
    sys.exit('no RemoteError')
except RemoteError as e:
    assert 'not in exposed' in str(e), e
try:
    m.NoSuchType
    sys.exit('NoSuchType exists')
except AttributeError:
    pass
v = m.Vec()
assert v._getvalue() == [], v._getvalue()
assert 'Counter' in repr(c) or 'Counter' in str(c)
del c, v
)";

// Uses the C++ SyncManager at 127.0.0.1:argv[2] with the key argv[1] (hex) as PROTOCOLS.md's
// capture does: dict, list, Namespace and Value proxies of CPython's own classes.
const char* kPythonSyncClient = R"(
import sys
from multiprocessing.managers import SyncManager
m = SyncManager(address=('127.0.0.1', int(sys.argv[2])), authkey=bytes.fromhex(sys.argv[1]))
m.connect()
d = m.dict()
d['a'] = 1
assert d['a'] == 1
d['b'] = [1, 2.5, None]
assert len(d) == 2 and 'b' in d and 'zz' not in d
assert d.get('zz', 5) == 5
try:
    d['zz']
    sys.exit('no KeyError')
except KeyError as e:
    assert e.args == ('zz',), e.args
assert d.copy() == {'a': 1, 'b': [1, 2.5, None]}, d.copy()
assert d._getvalue() == {'a': 1, 'b': [1, 2.5, None]}
assert sorted(d.keys()) == ['a', 'b']
l = m.list([1])
l.append(2)
l.extend(['x'])
assert len(l) == 3 and l[-1] == 'x' and l[0] == 1
try:
    l[7]
    sys.exit('no IndexError')
except IndexError:
    pass
ns = m.Namespace()
ns.x = 10
ns.y = 'why'
assert ns.x == 10 and ns.y == 'why'
try:
    ns.missing
    sys.exit('no AttributeError')
except AttributeError:
    pass
whole = ns._getvalue()
assert type(whole).__name__ == 'Namespace' and whole.x == 10, whole
v = m.Value('i', 3)
assert v.value == 3
v.value = 4
assert v.get() == 4
del d, l, ns, v, whole
)";

// Uses the C++ SyncManager at 127.0.0.1:argv[2] with the key argv[1] (hex): the waiting typeids
// through CPython's own proxies (AutoProxy for Queue, AcquirerProxy, ConditionProxy, EventProxy,
// BarrierProxy, ArrayProxy), keyword arguments, and '#PROXY' iterators. Each Python thread has
// a connection of its own, so one thread waiting in the manager must not hold up another.
const char* kPythonWaitingClient = R"(
import sys, threading, queue
from multiprocessing.managers import SyncManager
m = SyncManager(address=('127.0.0.1', int(sys.argv[2])), authkey=bytes.fromhex(sys.argv[1]))
m.connect()
q = m.Queue()
q.put(1)
q.put('two')
assert q.qsize() == 2 and not q.empty()
assert q.get() == 1 and q.get(timeout=5) == 'two'
for call in (lambda: q.get(timeout=0.05), q.get_nowait, lambda: q.get(False)):
    try:
        call()
        sys.exit('no queue.Empty')
    except queue.Empty:
        pass
b = m.Queue(1)
b.put(0)
assert b.full()
try:
    b.put(1, timeout=0.05)
    sys.exit('no queue.Full')
except queue.Full:
    pass
got = []
t = threading.Thread(target=lambda: got.append(q.get(timeout=30)))
t.start()
q.put('late')
t.join()
assert got == ['late'], got
jq = m.JoinableQueue()
jq.put(1)
jq.get()
jq.task_done()
jq.join()
try:
    jq.task_done()
    sys.exit('no ValueError')
except ValueError:
    pass
lock = m.Lock()
assert lock.acquire()
assert not lock.acquire(False)
assert not lock.acquire(True, 0.05)
lock.release()
with lock:
    pass
try:
    lock.release()
    sys.exit('no RuntimeError')
except RuntimeError:
    pass
r = m.RLock()
assert r.acquire() and r.acquire()
held = []
t = threading.Thread(target=lambda: held.append(r.acquire(False)))
t.start()
t.join()
assert held == [False], held
r.release()
r.release()
try:
    r.release()
    sys.exit('no RuntimeError from RLock')
except RuntimeError:
    pass
s = m.Semaphore(2)
assert s.acquire() and s.acquire() and not s.acquire(False)
s.release()
bs = m.BoundedSemaphore(1)
try:
    bs.release()
    sys.exit('no ValueError from BoundedSemaphore')
except ValueError:
    pass
c = m.Condition()
with c:
    assert not c.wait(0.05)
    assert c.wait_for(lambda: True, 1)
ready = m.Event()
woke = []
def waiter():
    with c:
        ready.set()
        woke.append(c.wait(30))
t = threading.Thread(target=waiter)
t.start()
assert ready.wait(30)
with c:
    c.notify()
t.join()
assert woke == [True], woke
lc = m.Lock()
c2 = m.Condition(lc)
ready2 = m.Event()
woke2 = []
def waiter2():
    with c2:
        ready2.set()
        woke2.append(c2.wait(30))
t = threading.Thread(target=waiter2)
t.start()
assert ready2.wait(30)
with lc:
    c2.notify()
t.join()
assert woke2 == [True], woke2
e = m.Event()
assert not e.is_set() and not e.wait(0.05)
e.set()
assert e.is_set() and e.wait()
e.clear()
assert not e.is_set()
bar = m.Barrier(2)
assert bar.parties == 2 and bar.n_waiting == 0 and not bar.broken
res = []
t = threading.Thread(target=lambda: res.append(bar.wait(30)))
t.start()
res.append(bar.wait(30))
t.join()
assert sorted(res) == [0, 1], res
try:
    bar.wait(0.05)
    sys.exit('no BrokenBarrierError')
except threading.BrokenBarrierError:
    pass
assert bar.broken
bar.reset()
assert not bar.broken
# A Python action cannot run in a C++ manager: refused at creation (the pickled callable is not
# loaded), and the manager goes on.
try:
    m.Barrier(2, action=print)
    sys.exit('a Python action was accepted by a C++ manager')
except Exception as exc:
    assert 'print' in str(exc) or 'builtins' in str(exc), exc
a = m.Array('i', [1, 2, 3])
assert len(a) == 3 and a[1] == 2
a[1] = 5
assert a[1] == 5
v = a._getvalue()
assert v.typecode == 'i' and v.tolist() == [1, 5, 3], v
fa = m.Array('d', [0.5])
assert fa[0] == 0.5
d = m.dict({'a': 1, 'b': 2})
assert list(d) == ['a', 'b']
assert [k for k in d] == ['a', 'b']
ns = m.Namespace(x=1, y='z')
assert ns.x == 1 and ns.y == 'z'
val = m.Value('i', 7, lock=False)
assert val.value == 7
del q, b, jq, lock, r, s, bs, c, ready, e, bar, a, fa, d, ns, val, lc, c2, ready2
)";

// Proxies crossing both ways through a C++ manager's dict (id argv[3]): the C++ side stored a
// Queue and two Events; they load here as CPython's own working proxies (RebuildProxy), and a
// Queue proxy made here, stored in the dict, loads on the C++ side as a working proxy.
const char* kPythonProxyClient = R"(
import sys
from multiprocessing.managers import SyncManager, Token, DictProxy
addr = ('127.0.0.1', int(sys.argv[2]))
key = bytes.fromhex(sys.argv[1])
m = SyncManager(address=addr, authkey=key)
m.connect()
d = DictProxy(Token('dict', addr, sys.argv[3]), 'pickle', authkey=key)
q = d['q']
assert type(q).__name__.startswith('AutoProxy'), type(q)
q.put('from python')
stored, done = d['stored'], d['done']
assert type(stored).__name__ == 'EventProxy', type(stored)
q2 = m.Queue()
q2.put(42)
d['q2'] = q2
stored.set()
assert done.wait(30)
del q, q2, stored, done, d
)";

// Serves a SyncManager (plus a type raising a user exception) on 127.0.0.1 with the key argv[1]
// (hex), writes its port to the fd argv[2] and serves until shutdown.
const char* kPythonServer = R"(
import os, sys
from multiprocessing.managers import SyncManager
class MyError(Exception):
    pass
class Thrower:
    def boom(self):
        raise MyError('custom')
SyncManager.register('Thrower', Thrower)
m = SyncManager(address=('127.0.0.1', 0), authkey=bytes.fromhex(sys.argv[1]))
s = m.get_server()
os.write(int(sys.argv[2]), b'%d\n' % s.address[1])
s.serve_forever()
)";

std::string to_hex(const mp::Bytes& b) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (std::byte x : b) {
    s += digits[std::to_integer<unsigned>(x) >> 4];
    s += digits[std::to_integer<unsigned>(x) & 15];
  }
  return s;
}

class ManagersInterop : public testing::TestWithParam<std::string> {
 protected:
  const mp_test::Python* python() {
    auto it = mp_test::pythons().find(GetParam());
    return it == mp_test::pythons().end() ? nullptr : &it->second;
  }
};

// The Python peer runs under timeout(1): a failing test never leaves a server behind or hangs.
#define NEED_PYTHON()                                                             \
  const mp_test::Python* found = python();                                        \
  if (!found) GTEST_SKIP() << "CPython " << GetParam() << " is not installed here"; \
  mp_test::Python limited = *found;                                               \
  limited.argv0.insert(limited.argv0.begin(), {"timeout", "-s", "KILL", "60"});   \
  const mp_test::Python* py = &limited

TEST_P(ManagersInterop, APythonClientUsesACppManager) {
  NEED_PYTHON();
  const mp::Bytes key = mp::bytes("interop-key");
  mp::BaseManager manager(Address("127.0.0.1", 0), key);
  manager.register_type<Counter>("Counter")
      .method("add", &Counter::add)
      .method("get", &Counter::get)
      .method("lookup", &Counter::lookup)
      .method("fail", &Counter::fail);
  manager.register_type<std::vector<std::int64_t>>("Vec").method("size", &std::vector<std::int64_t>::size);
  mp::Server server = manager.get_server();
  std::thread serving([server]() mutable { server.serve_forever(); });

  pid_t pid = mp_test::start_python(*py, kPythonClient, {to_hex(key), std::to_string(manager.address().port())});
  ASSERT_GT(pid, 0);
  EXPECT_EQ(mp_test::wait_exit(pid), 0);

  mp::BaseManager control(manager.address(), key);
  // The Python proxies sent their decrefs when they went: nothing is left in the manager.
  EXPECT_EQ(control.number_of_objects(), 0);
  control.shutdown();
  serving.join();
}

TEST_P(ManagersInterop, APythonClientUsesACppSyncManagersDictListNamespaceAndValue) {
  NEED_PYTHON();
  const mp::Bytes key = mp::bytes("interop-key-3");
  mp::SyncManager manager(Address("127.0.0.1", 0), key);
  mp::Server server = manager.get_server();
  std::thread serving([server]() mutable { server.serve_forever(); });
  pid_t pid = mp_test::start_python(*py, kPythonSyncClient, {to_hex(key), std::to_string(manager.address().port())});
  ASSERT_GT(pid, 0);
  EXPECT_EQ(mp_test::wait_exit(pid), 0);
  mp::BaseManager control(manager.address(), key);
  EXPECT_EQ(control.number_of_objects(), 0);
  control.shutdown();
  serving.join();
}

// A pipe whose write end the Python server inherits, to report its port.
std::uint16_t read_port(int fd) {
  std::string out;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 60000) != 1) return 0;
    char buf[64];
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) return 0;
    out.append(buf, static_cast<std::size_t>(n));
    if (out.find('\n') != std::string::npos) return static_cast<std::uint16_t>(std::stoi(out));
  }
}

TEST_P(ManagersInterop, ACppClientUsesAPythonSyncManager) {
  NEED_PYTHON();
  const mp::Bytes key = mp::bytes("interop-key-2");
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  ::fcntl(p[0], F_SETFD, FD_CLOEXEC);
  pid_t pid = mp_test::start_python(*py, kPythonServer, {to_hex(key), std::to_string(p[1])});
  ::close(p[1]);
  ASSERT_GT(pid, 0);
  const std::uint16_t port = read_port(p[0]);
  ::close(p[0]);
  ASSERT_NE(port, 0);

  {
    mp::BaseManager m(Address("127.0.0.1", port), key);
    m.connect();
    // dict
    mp::BaseProxy d = m.create("dict");
    d.callmethod<void>("__setitem__", "a", 1);
    d.callmethod<void>("__setitem__", "b", 2.5);
    EXPECT_EQ(d.callmethod<int>("__getitem__", "a"), 1);
    EXPECT_EQ(d.callmethod<std::size_t>("__len__"), 2u);
    EXPECT_THROW(d.callmethod<int>("__getitem__", "zz"), std::out_of_range);
    auto all = d.getvalue<std::map<std::string, double>>();
    EXPECT_EQ(all, (std::map<std::string, double>{{"a", 1.0}, {"b", 2.5}}));
    EXPECT_EQ(d.callmethod<std::vector<std::string>>("keys"), (std::vector<std::string>{"a", "b"}));
    // '#PROXY': dict.__iter__ gives an Iterator proxy living in the manager.
    mp::BaseProxy it = d.callmethod<mp::BaseProxy>("__iter__");
    EXPECT_EQ(it.token().type_id, "Iterator");
    EXPECT_EQ(it.callmethod<std::string>("__next__"), "a");
    EXPECT_EQ(it.callmethod<std::string>("__next__"), "b");
    try {
      it.callmethod<std::string>("__next__");
      FAIL() << "no StopIteration";
    } catch (const mp::RemoteError& e) {
      EXPECT_EQ(e.type_name(), "StopIteration");
    }
    // list
    mp::BaseProxy l = m.create("list");
    l.callmethod<void>("append", 1);
    l.callmethod<void>("append", "two");
    EXPECT_EQ(l.callmethod<std::size_t>("__len__"), 2u);
    EXPECT_THROW(l.callmethod<int>("__getitem__", 5), std::out_of_range);
    EXPECT_EQ(l.getvalue().repr(), "[1, 'two']");
    // Namespace: attributes through __setattr__/__getattribute__; its value is a tagged object.
    mp::BaseProxy ns = m.create("Namespace");
    ns.callmethod<void>("__setattr__", "x", 10);
    EXPECT_EQ(ns.callmethod<int>("__getattribute__", "x"), 10);
    EXPECT_THROW(ns.callmethod<int>("__getattribute__", "missing"), mp::AttributeError);
    // _getvalue() of a Python Namespace: a multiprocessing.managers.Namespace, read as data.
    EXPECT_NE(ns.getvalue().repr().find("multiprocessing.managers.Namespace"), std::string::npos);
    // A user exception from __main__ surfaces as RemoteError naming it.
    mp::BaseProxy t = m.create("Thrower");
    try {
      t.callmethod<void>("boom");
      FAIL() << "no exception";
    } catch (const mp::RemoteError& e) {
      EXPECT_EQ(e.type_name(), "__main__.MyError");
      EXPECT_NE(std::string(e.what()).find("custom"), std::string::npos);
    }
    // Not exposed: '#TRACEBACK'.
    EXPECT_THROW(d.callmethod<void>("no_such_method"), mp::RemoteError);
    EXPECT_GE(m.number_of_objects(), 5);
  }
  // Every proxy has gone and decref'ed.
  mp::BaseManager m(Address("127.0.0.1", port), key);
  EXPECT_EQ(m.number_of_objects(), 0);
  m.shutdown();
  EXPECT_EQ(mp_test::wait_exit(pid), 0);
}

TEST_P(ManagersInterop, APythonClientUsesACppSyncManagersQueuesLocksAndTheOtherWaitingTypes) {
  NEED_PYTHON();
  const mp::Bytes key = mp::bytes("interop-key-4");
  mp::SyncManager manager(Address("127.0.0.1", 0), key);
  mp::Server server = manager.get_server();
  std::thread serving([server]() mutable { server.serve_forever(); });
  pid_t pid = mp_test::start_python(*py, kPythonWaitingClient, {to_hex(key), std::to_string(manager.address().port())});
  ASSERT_GT(pid, 0);
  EXPECT_EQ(mp_test::wait_exit(pid), 0);
  mp::BaseManager control(manager.address(), key);
  EXPECT_EQ(control.number_of_objects(), 0);
  control.shutdown();
  serving.join();
}

TEST_P(ManagersInterop, ACppClientUsesAPythonSyncManagersWaitingTypes) {
  NEED_PYTHON();
  using namespace std::chrono_literals;
  const mp::Bytes key = mp::bytes("interop-key-5");
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  ::fcntl(p[0], F_SETFD, FD_CLOEXEC);
  pid_t pid = mp_test::start_python(*py, kPythonServer, {to_hex(key), std::to_string(p[1])});
  ::close(p[1]);
  ASSERT_GT(pid, 0);
  const std::uint16_t port = read_port(p[0]);
  ::close(p[0]);
  ASSERT_NE(port, 0);
  {
    mp::SyncManager m(Address("127.0.0.1", port), key);
    m.connect();
    auto q = m.Queue<std::string>();
    q.put("a");
    EXPECT_EQ(q.qsize(), 1u);
    EXPECT_EQ(q.get(true, 5s), "a");
    EXPECT_THROW(q.get(true, 0.05s), mp::Empty);  // _queue.Empty, outside the allow-list: by name
    EXPECT_THROW(q.get_nowait(), mp::Empty);
    auto bounded = m.Queue<int>(1);
    bounded.put(1);
    EXPECT_THROW(bounded.put(2, true, 0.05s), mp::Full);
    auto jq = m.JoinableQueue<int>();
    jq.put(3);
    EXPECT_EQ(jq.get(), 3);
    jq.task_done();
    jq.join();

    auto lock = m.Lock();
    EXPECT_TRUE(lock.acquire());
    EXPECT_FALSE(lock.acquire(false));
    EXPECT_FALSE(lock.acquire(true, 0.05s));
    lock.release();
    EXPECT_THROW(lock.release(), mp::RemoteError);  // RuntimeError
    auto r = m.RLock();
    EXPECT_TRUE(r.acquire());
    EXPECT_TRUE(r.acquire());
    r.release();
    r.release();
    auto s = m.Semaphore(1);
    EXPECT_TRUE(s.acquire());
    EXPECT_FALSE(s.acquire(false));
    s.release();
    auto bs = m.BoundedSemaphore(1);
    EXPECT_THROW(bs.release(), mp::RemoteError);  // ValueError

    auto c = m.Condition();
    EXPECT_TRUE(c.acquire());
    EXPECT_FALSE(c.wait(0.05s));
    c.notify_all();
    c.release();
    EXPECT_THROW(c.notify(), mp::RemoteError);

    auto e = m.Event();
    EXPECT_FALSE(e.is_set());
    EXPECT_FALSE(e.wait(0.05s));
    e.set();
    EXPECT_TRUE(e.wait(1s));

    auto b = m.Barrier(1);
    EXPECT_EQ(b.parties(), 1);
    EXPECT_EQ(b.wait(5s), 0);
    b.abort();
    EXPECT_TRUE(b.broken());
    EXPECT_THROW(b.wait(1s), mp::BrokenBarrierError);

    auto a = m.Array<std::int32_t>(std::vector<std::int32_t>{1, 2, 3});
    EXPECT_EQ(a.size(), 3u);
    a.set(0, 9);
    EXPECT_EQ(a.copy(), (std::vector<std::int32_t>{9, 2, 3}));
    EXPECT_THROW(a.get(7), std::out_of_range);

    mp::NamespaceProxy ns(m.create_value("Namespace", mp::pickle::Value::tuple(),
                                         mp::pickle::Value::dict({{mp::pickle::Value("x"), mp::pickle::Value(5)}})));
    EXPECT_EQ(ns.get<int>("x"), 5);
  }
  mp::BaseManager m(Address("127.0.0.1", port), key);
  EXPECT_EQ(m.number_of_objects(), 0);
  m.shutdown();
  EXPECT_EQ(mp_test::wait_exit(pid), 0);
}

TEST_P(ManagersInterop, ProxiesPickledToPythonArriveAsWorkingProxiesAndBack) {
  NEED_PYTHON();
  using namespace std::chrono_literals;
  const mp::Bytes key = mp::bytes("interop-key-6");
  mp::SyncManager manager(Address("127.0.0.1", 0), key);
  mp::Server server = manager.get_server();
  std::thread serving([server]() mutable { server.serve_forever(); });
  {
    mp::SyncManager m(manager.address(), key);
    auto d = m.dict<std::string, mp::pickle::Value>();
    auto q = m.Queue<std::string>();
    auto stored = m.Event();
    auto done = m.Event();
    d.set("q", mp::pickle::Value(q));
    d.set("stored", mp::pickle::Value(stored));
    d.set("done", mp::pickle::Value(done));
    pid_t pid = mp_test::start_python(
        *py, kPythonProxyClient, {to_hex(key), std::to_string(manager.address().port()), d.token().id});
    ASSERT_GT(pid, 0);
    EXPECT_EQ(q.get(true, 30s), "from python");
    EXPECT_TRUE(stored.wait(30s));
    auto q2 = d.get("q2").as<mp::QueueProxy<int>>();  // a reference of our own (incref)
    EXPECT_EQ(q2.token().type_id, "Queue");
    EXPECT_EQ(q2.get(true, 30s), 42);
    done.set();
    EXPECT_EQ(mp_test::wait_exit(pid), 0);
    q2.put(1);  // still ours after the Python client is gone
    EXPECT_EQ(q2.qsize(), 1u);
    d.clear();
  }
  mp::BaseManager control(manager.address(), key);
  EXPECT_EQ(control.number_of_objects(), 0);
  control.shutdown();
  serving.join();
}

std::vector<std::string> versions() { return {"3.11", "3.12", "3.13"}; }

INSTANTIATE_TEST_SUITE_P(Versions, ManagersInterop, testing::ValuesIn(versions()),
                         [](const testing::TestParamInfo<std::string>& param_info) {
                           std::string name = "Python" + param_info.param;
                           for (char& ch : name)
                             if (ch == '.') ch = '_';
                           return name;
                         });

}  // namespace
