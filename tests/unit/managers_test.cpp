// BaseManager / BaseProxy between C++ peers: a server in a thread or in a started child process,
// clients creating objects, calling methods, errors crossing, reference counts, bad peers.
#include <multiprocessing/managers.hpp>
#include <multiprocessing/context.hpp>
#include <multiprocessing/process.hpp>
#include <multiprocessing/reduction.hpp>

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

namespace {

using mp::connection::Address;

struct Counter {
  std::int64_t n = 0;
  void add(std::int64_t k) { n += k; }
  std::int64_t get() const { return n; }
  std::string lookup(std::string key) { throw std::out_of_range(key); }
  double fail(std::string why) { throw std::invalid_argument(why); }
};

void register_all(mp::BaseManager& m) {
  m.register_type<Counter>("Counter")
      .method("add", &Counter::add)
      .method("get", &Counter::get)
      .method("lookup", &Counter::lookup)
      .method("fail", &Counter::fail);
  m.register_type<std::vector<std::int64_t>>("Vec").method("size", &std::vector<std::int64_t>::size);
}

// A server on a free TCP port served by a thread; shut down and joined by the destructor.
struct ThreadServer {
  mp::BaseManager manager{Address("127.0.0.1", 0), mp::bytes("secret")};
  mp::Server server;
  std::thread thread;
  ThreadServer() {
    register_all(manager);
    server = manager.get_server();
    thread = std::thread([s = server]() mutable { s.serve_forever(); });
  }
  ~ThreadServer() {
    try {
      mp::BaseManager(manager.address(), mp::bytes("secret")).shutdown();
    } catch (...) {
    }
    thread.join();
  }
};

TEST(Managers, AClientCreatesAnObjectAndCallsItsMethods) {
  ThreadServer s;
  mp::BaseManager client(s.manager.address(), mp::bytes("secret"));
  client.connect();
  mp::BaseProxy counter = client.create("Counter");
  counter.callmethod<void>("add", 5);
  counter.callmethod<void>("add", 37);
  EXPECT_EQ(counter.callmethod<std::int64_t>("get"), 42);
  EXPECT_EQ(counter.token().type_id, "Counter");
  EXPECT_EQ(counter.exposed().size(), 4u);
  EXPECT_NE(counter.repr().find("Counter"), std::string::npos);
}

TEST(Managers, ReferencesAreCountedAndTheLastProxyFreesTheObject) {
  ThreadServer s;
  mp::BaseManager client(s.manager.address(), mp::bytes("secret"));
  client.connect();
  {
    mp::BaseProxy a = client.create("Counter");
    mp::BaseProxy b = client.create("Counter");
    mp::BaseProxy a_copy = a;
    EXPECT_EQ(client.number_of_objects(), 2);
    b = mp::BaseProxy();
    EXPECT_EQ(client.number_of_objects(), 1);
  }
  EXPECT_EQ(client.number_of_objects(), 0);
}

TEST(Managers, ErrorsRaisedByMethodsArriveAsTheDocumentedExceptions) {
  ThreadServer s;
  mp::BaseManager client(s.manager.address(), mp::bytes("secret"));
  mp::BaseProxy counter = client.create("Counter");
  EXPECT_THROW(counter.callmethod<std::string>("lookup", "zz"), std::out_of_range);
  try {
    counter.callmethod<double>("fail", "boom");
    FAIL() << "no exception";
  } catch (const mp::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "ValueError");
    EXPECT_NE(std::string(e.what()).find("boom"), std::string::npos);
  }
  try {
    counter.callmethod<void>("add");  // wrong arity
    FAIL() << "no exception";
  } catch (const mp::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "TypeError");
  }
  // The object is still usable after its errors.
  counter.callmethod<void>("add", 1);
  EXPECT_EQ(counter.callmethod<int>("get"), 1);
}

TEST(Managers, AMethodThatIsNotExposedOrAnUnknownTypeIsARemoteErrorWithATraceback) {
  ThreadServer s;
  mp::BaseManager client(s.manager.address(), mp::bytes("secret"));
  mp::BaseProxy counter = client.create("Counter");
  try {
    counter.callmethod<void>("secret_method");
    FAIL() << "no exception";
  } catch (const mp::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "RemoteError");
    EXPECT_NE(e.traceback().find("not in exposed"), std::string::npos) << e.traceback();
  }
  EXPECT_THROW(client.create("NoSuchType"), mp::RemoteError);
}

TEST(Managers, GetvalueCopiesAPicklableReferent) {
  ThreadServer s;
  mp::BaseManager client(s.manager.address(), mp::bytes("secret"));
  mp::BaseProxy v = client.create("Vec");
  EXPECT_EQ(v.getvalue<std::vector<std::int64_t>>(), std::vector<std::int64_t>{});
  EXPECT_EQ(v.callmethod<std::size_t>("size"), 0u);
  mp::BaseProxy c = client.create("Counter");
  EXPECT_THROW(c.getvalue(), mp::RemoteError);  // '#UNSERIALIZABLE'
}

TEST(Managers, AWrongAuthkeyIsRefusedAndTheServerKeepsServingOthers) {
  ThreadServer s;
  mp::BaseManager intruder(s.manager.address(), mp::bytes("wrong"));
  EXPECT_THROW(intruder.connect(), mp::AuthenticationError);
  // Garbage after a correct handshake: the server answers with a traceback or closes.
  {
    mp::connection::Options o;
    o.authkey = mp::bytes("secret");
    mp::Connection raw = mp::connection::Client(s.manager.address(), o);
    raw.send_bytes(std::string_view("\x80\x04garbage"));
    EXPECT_TRUE(raw.poll(mp::Duration(5.0)));
  }
  mp::BaseManager client(s.manager.address(), mp::bytes("secret"));
  client.connect();
  mp::BaseProxy counter = client.create("Counter");
  counter.callmethod<void>("add", 2);
  EXPECT_EQ(counter.callmethod<int>("get"), 2);
}

TEST(Managers, AHostilePickleIsRefusedWithoutRunningAnything) {
  ThreadServer s;
  mp::connection::Options o;
  o.authkey = mp::bytes("secret");
  mp::Connection raw = mp::connection::Client(s.manager.address(), o);
  // (os.system, ('true',)) REDUCE: must be refused by name.
  raw.send_bytes(std::string_view("\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x04true\x85R.", 24));
  mp::Bytes reply = raw.recv_bytes();
  std::string text(reinterpret_cast<const char*>(reply.data()), reply.size());
  EXPECT_NE(text.find("#TRACEBACK"), std::string::npos);
  EXPECT_NE(text.find("os.system"), std::string::npos);
}

TEST(Managers, StartRunsTheServerInAChildAndShutdownEndsIt) {
  mp::BaseManager m(Address("127.0.0.1", 0), mp::bytes("k"));
  register_all(m);
  m.start();
  mp::BaseProxy counter = m.create("Counter");
  counter.callmethod<void>("add", 7);
  EXPECT_EQ(counter.callmethod<int>("get"), 7);
  m.shutdown();
  // The manager is gone: a call is a clear error, not a hang.
  EXPECT_ANY_THROW(counter.callmethod<int>("get"));
  EXPECT_ANY_THROW(mp::BaseManager(m.address(), mp::bytes("k")).connect());
}

TEST(Managers, AStartedManagerOnAUnixSocketIsShutDownWhenItsLastHandleGoes) {
  Address address;
  {
    mp::BaseManager m(std::nullopt, mp::bytes("k"));
    register_all(m);
    m.start();
    address = m.address();
    EXPECT_EQ(address.family(), "AF_UNIX");
    mp::BaseProxy counter = m.create("Counter");
    EXPECT_EQ(counter.callmethod<int>("get"), 0);
  }
  EXPECT_ANY_THROW(mp::BaseManager(address, mp::bytes("k")).connect());
}

}  // namespace

namespace {

TEST(SyncManager, ManagerGivesADictListNamespaceAndValueLivingInTheManager) {
  mp::SyncManager m = mp::Manager();
  auto d = m.dict<std::string, int>();
  d.set("a", 1);
  d.set("b", 2);
  EXPECT_EQ(d.get("a"), 1);
  EXPECT_EQ(d.get("zz", -1), -1);
  EXPECT_THROW(d.get("zz"), std::out_of_range);
  EXPECT_TRUE(d.contains("b"));
  EXPECT_EQ(d.size(), 2u);
  EXPECT_EQ(d.keys(), (std::vector<std::string>{"a", "b"}));
  d.erase("a");
  EXPECT_THROW(d.erase("a"), std::out_of_range);
  EXPECT_EQ(d.copy(), (std::map<std::string, int>{{"b", 2}}));

  auto l = m.list<std::string>();
  l.append("x");
  l.append("y");
  EXPECT_EQ(l.size(), 2u);
  EXPECT_EQ(l.get(-1), "y");
  EXPECT_THROW(l.get(5), std::out_of_range);
  l.set(0, "z");
  EXPECT_EQ(l.copy(), (std::vector<std::string>{"z", "y"}));
  EXPECT_EQ(l.pop(), "y");

  mp::NamespaceProxy ns = m.Namespace();
  ns.set("x", 10);
  EXPECT_EQ(ns.get<int>("x"), 10);
  EXPECT_THROW(ns.get<int>("missing"), mp::AttributeError);

  auto v = m.Value<double>(1.5, "d");
  EXPECT_EQ(v.get(), 1.5);
  v.set(2.5);
  EXPECT_EQ(v.get(), 2.5);
}

TEST(SyncManager, ASecondClientSeesTheSameObjects) {
  mp::SyncManager m = mp::Manager();
  auto d = m.dict<std::string, std::int64_t>();
  d.set("k", 7);
  // Another client (as another process would be) attaches by address and key and creates its own
  // objects; the first one's dict is reached through its token.
  mp::SyncManager other(m.address(), m.authkey());
  other.connect();
  EXPECT_EQ(other.number_of_objects(), 1);
  auto l = other.list<int>();
  l.append(1);
  EXPECT_EQ(m.number_of_objects(), 2);
}

}  // namespace

namespace {

void child_sets_key(mp::DictProxy<std::string, int> d, std::string key) { d.set(key, 42); }

class ProxyInChild : public testing::TestWithParam<std::string> {};

TEST_P(ProxyInChild, AProxyPassedToAChildReachesTheSameObject) {
  static_assert(mp::detail::is_serializable_v<mp::DictProxy<std::string, int>>);
  mp::SyncManager m = mp::Manager();
  auto d = m.dict<std::string, int>();
  d.set("before", 1);
  {
    mp::Process p(mp::get_context(GetParam()), &child_sets_key, d, std::string("from_child"));
    p.start();
    p.join();
    EXPECT_EQ(p.exitcode(), 0);
  }  // (the Process holds a copy of its arguments)
  EXPECT_EQ(d.get("from_child"), 42);
  EXPECT_EQ(d.get("before"), 1);
  d = {};
  // The child borrowed the parent's reference: the last proxy here frees the dict.
  EXPECT_EQ(m.number_of_objects(), 0);
}

TEST(ProxyInChild, AForkedChildUsingAnInheritedProxyGetsItsOwnConnectionAndReference) {
  mp::SyncManager m = mp::Manager();
  auto l = m.list<int>();
  l.append(1);  // the parent's channel is open
  mp::Process p(mp::get_context("fork"), [l]() mutable {
    l.append(2);
    l.append(3);
  });
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  l.append(4);  // the parent's channel still works: the child did not use it
  EXPECT_EQ(l.copy(), (std::vector<int>{1, 2, 3, 4}));
}

INSTANTIATE_TEST_SUITE_P(StartMethods, ProxyInChild, testing::Values("fork", "spawn", "forkserver"));

}  // namespace

namespace {

void serve_counter(Address address, mp::Connection ready) {
  mp::BaseManager m(address, mp::bytes("k"));
  register_all(m);
  mp::Server server = m.get_server();
  ready.send(server.address());
  server.serve_forever();
}

TEST(ManagerFaults, AKilledManagerIsAClearErrorForItsProxiesNotAHang) {
  auto [reader, writer] = mp::Pipe(false);
  mp::Process p(mp::get_context("fork"), &serve_counter, Address("127.0.0.1", 0), writer);
  p.start();
  ASSERT_TRUE(reader.poll(mp::Duration(30.0)));
  const Address address = reader.recv<Address>();
  mp::BaseManager client(address, mp::bytes("k"));
  mp::BaseProxy counter = client.create("Counter");
  counter.callmethod<void>("add", 1);  // the channel is open
  p.kill();
  p.join();
  EXPECT_ANY_THROW(counter.callmethod<int>("get"));
  EXPECT_ANY_THROW(client.create("Counter"));
}

TEST(ManagerFaults, AClientThatSendsJunkAndVanishesDoesNotDisturbTheOthers) {
  ThreadServer s;
  {
    mp::connection::Options o;
    o.authkey = mp::bytes("secret");
    mp::Connection raw = mp::connection::Client(s.manager.address(), o);
    // A request that is not a pickle, and the client goes without reading the reply.
    raw.send_bytes(std::string_view("abc"));
  }
  {
    mp::BaseManager client(s.manager.address(), mp::bytes("secret"));
    mp::BaseProxy c = client.create("Counter");
    c.callmethod<void>("add", 3);
    EXPECT_EQ(c.callmethod<int>("get"), 3);
  }
}

}  // namespace
