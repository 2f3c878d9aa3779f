// A manager's Pool, the asynchronous forms: PoolProxy's apply_async / map_async / starmap_async
// (AsyncResultProxy) and imap / imap_unordered (IMapIteratorProxy), whose referents live in the
// manager. Every test runs with the pool's workers started by fork and by spawn (the manager
// itself is a forked child, as Manager() makes it).
#include <multiprocessing/managers.hpp>
#include <multiprocessing/context.hpp>
#include <multiprocessing/process.hpp>

#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <vector>

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::int64_t square(std::int64_t x) { return x * x; }
std::int64_t add(std::int64_t a, std::int64_t b) { return a + b; }
// Sleeps ms milliseconds and returns ms: a task that is certainly not done before then.
std::int64_t nap(std::int64_t ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
std::int64_t refuse(std::int64_t x) {
  if (x == 3) throw std::out_of_range("three is out of range");
  return x;
}
void nothing(std::int64_t) {}
// In a pool worker: the manager process (the workers' parent under fork and spawn alike).
std::int64_t manager_pid(std::int64_t) { return static_cast<std::int64_t>(getppid()); }

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

class ManagerPoolAsync : public ::testing::TestWithParam<const char*> {
 protected:
  mp::SyncManager manager = mp::Manager();
  mp::PoolProxy pool = manager.Pool(2, GetParam());
};

TEST_P(ManagerPoolAsync, ApplyAsyncGivesAResultThatTimesOutThenArrives) {
  auto slow = pool.apply_async(&nap, 1500);  // longer than one wait slice in the manager
  EXPECT_FALSE(slow.ready());
  EXPECT_THROW(slow.successful(), std::logic_error);  // not ready yet, as mp::AsyncResult's
  const auto t0 = Clock::now();
  EXPECT_THROW(slow.get(200ms), mp::TimeoutError);
  EXPECT_GE(seconds_since(t0), 0.19);
  EXPECT_FALSE(slow.wait(mp::Duration(0.05)));
  EXPECT_EQ(slow.get(), 1500);
  EXPECT_TRUE(slow.ready());
  EXPECT_TRUE(slow.successful());
  EXPECT_EQ(slow.get(0s), 1500);  // again, at once

  auto sum = pool.apply_async(&add, 2, 40);
  sum.wait();
  EXPECT_TRUE(sum.ready());
  EXPECT_EQ(sum.get(10s), 42);
  // A captureless lambda crosses as its type; a void task's get() returns nothing.
  EXPECT_EQ(pool.apply_async([](std::int64_t x) { return x + 1; }, 41).get(), 42);
  auto none = pool.apply_async(&nothing, 1);
  none.get();
  EXPECT_TRUE(none.successful());
}

TEST_P(ManagerPoolAsync, ATasksExceptionArrivesThroughGetAndTheErrorCallback) {
  int errors = 0, values = 0;
  std::string message;
  auto r = pool.apply_async(&refuse, std::tuple<std::int64_t>(3),
                            mp::Callbacks<std::int64_t>{.callback = [&](const std::int64_t&) { ++values; },
                                                        .error_callback = [&](std::exception_ptr e) {
                                                          ++errors;
                                                          try {
                                                            std::rethrow_exception(e);
                                                          } catch (const std::out_of_range& x) {
                                                            message = x.what();
                                                          }
                                                        }});
  try {
    r.get();
    ADD_FAILURE() << "no exception";
  } catch (const std::out_of_range& e) {
    EXPECT_NE(std::string(e.what()).find("three is out of range"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(r.successful());
  EXPECT_THROW(r.get(), std::out_of_range);  // every get() raises it
  // The callbacks ran here (in this process), once.
  EXPECT_EQ(errors, 1);
  EXPECT_EQ(values, 0);
  EXPECT_NE(message.find("three is out of range"), std::string::npos) << message;
}

TEST_P(ManagerPoolAsync, MapAsyncAndStarmapAsyncGiveTheWholeListAndRunTheirCallbackHere) {
  const std::vector<std::int64_t> xs{1, 2, 3, 4, 5, 6, 7};
  std::vector<std::int64_t> seen;
  int calls = 0;
  auto squares = pool.map_async(&square, xs, 2,
                                mp::Callbacks<std::vector<std::int64_t>>{.callback = [&](const std::vector<std::int64_t>& v) {
                                  seen = v;
                                  ++calls;
                                }});
  // wait() sees it complete, so the callback has run when it returns.
  squares.wait();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(seen, (std::vector<std::int64_t>{1, 4, 9, 16, 25, 36, 49}));
  EXPECT_EQ(squares.get(), seen);
  EXPECT_TRUE(squares.ready());
  EXPECT_EQ(calls, 1);

  using Pair = std::tuple<std::int64_t, std::int64_t>;
  auto sums = pool.starmap_async(&add, std::vector<Pair>{{1, 2}, {3, 4}, {5, 6}});
  EXPECT_EQ(sums.get(30s), (std::vector<std::int64_t>{3, 7, 11}));
  EXPECT_EQ(pool.map_async(&square, std::vector<std::int64_t>{}).get(), std::vector<std::int64_t>{});
  pool.map_async(&nothing, xs).get();  // void tasks: nothing to return
  EXPECT_THROW(pool.map_async(&refuse, xs).get(), std::out_of_range);
}

TEST_P(ManagerPoolAsync, ImapYieldsInOrderWithChunksOfOneAndOfThree) {
  std::vector<std::int64_t> xs;
  std::vector<std::int64_t> expected;
  for (std::int64_t i = 0; i < 10; ++i) {
    xs.push_back(i);
    expected.push_back(i * i);
  }
  for (std::size_t chunksize : {std::size_t{1}, std::size_t{3}}) {
    std::vector<std::int64_t> got;
    for (std::int64_t v : pool.imap(&square, xs, chunksize)) got.push_back(v);
    EXPECT_EQ(got, expected) << "chunksize " << chunksize;
  }
  auto it = pool.imap(&square, std::vector<std::int64_t>{3, 4});
  EXPECT_EQ(it.next(), 9);
  EXPECT_EQ(it.next(30s), 16);
  EXPECT_THROW(it.next(), mp::StopIteration);
  EXPECT_THROW(it.next(), mp::StopIteration);
  // An empty input ends at once.
  auto empty = pool.imap(&square, std::vector<std::int64_t>{});
  EXPECT_TRUE(empty.begin() == empty.end());
}

TEST_P(ManagerPoolAsync, ImapUnorderedYieldsEveryResultOnce) {
  std::vector<std::int64_t> xs;
  for (std::int64_t i = 0; i < 20; ++i) xs.push_back(i);
  for (std::size_t chunksize : {std::size_t{1}, std::size_t{3}}) {
    std::vector<std::int64_t> got;
    auto it = pool.imap_unordered(&square, xs, chunksize);
    for (std::size_t k = 0; k < xs.size(); ++k) got.push_back(it.next(60s));
    EXPECT_THROW(it.next(), mp::StopIteration);
    std::sort(got.begin(), got.end());
    std::vector<std::int64_t> expected;
    for (std::int64_t x : xs) expected.push_back(x * x);
    EXPECT_EQ(got, expected) << "chunksize " << chunksize;
  }
}

TEST_P(ManagerPoolAsync, AnImapTaskErrorIsRaisedAtItsPlaceAndTheRestFollows) {
  auto it = pool.imap(&refuse, std::vector<std::int64_t>{1, 2, 3, 4, 5}, 1);
  EXPECT_EQ(it.next(), 1);
  EXPECT_EQ(it.next(), 2);
  EXPECT_THROW(it.next(), std::out_of_range);
  EXPECT_EQ(it.next(), 4);
  EXPECT_EQ(it.next(), 5);
  EXPECT_THROW(it.next(), mp::StopIteration);
  // next(timeout) on a slow task times out, then the result comes.
  auto slow = pool.imap(&nap, std::vector<std::int64_t>{1200});
  const auto t0 = Clock::now();
  EXPECT_THROW(slow.next(150ms), mp::TimeoutError);
  EXPECT_GE(seconds_since(t0), 0.14);
  EXPECT_EQ(slow.next(), 1200);
  // Void tasks: the range yields std::monostate.
  int count = 0;
  for (auto v : pool.imap(&nothing, std::vector<std::int64_t>{1, 2, 3})) {
    (void)v;
    ++count;
  }
  EXPECT_EQ(count, 3);
}

TEST_P(ManagerPoolAsync, AResultAndAnIteratorCanBeReadFromAChildProcess) {
  auto r = pool.apply_async(&add, 20, 22);
  auto it = pool.imap(&square, std::vector<std::int64_t>{2, 3});
  // The child borrows the parent's references (as with every proxy) and opens its own channels.
  mp::Process p(mp::get_context("fork"), [r, it]() mutable {
    if (r.get(60s) != 42) throw std::runtime_error("wrong result");
    if (it.next(60s) != 4 || it.next(60s) != 9) throw std::runtime_error("wrong items");
  });
  p.start();
  ASSERT_TRUE(p.join(mp::Duration(60.0)));
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_TRUE(r.ready());
  EXPECT_THROW(it.next(), mp::StopIteration);  // the position is the manager's: the child took both
  EXPECT_EQ(manager.number_of_objects(), 3);
}

TEST_P(ManagerPoolAsync, DroppingAnUnfinishedResultOrIteratorFreesItInTheManager) {
  EXPECT_EQ(manager.number_of_objects(), 1);  // the pool
  {
    auto r = pool.apply_async(&nap, 3000);
    auto copy = r;  // copies share one reference
    auto it = pool.imap(&nap, std::vector<std::int64_t>{3000, 3000});
    EXPECT_EQ(manager.number_of_objects(), 3);
    EXPECT_FALSE(copy.ready());
    EXPECT_EQ(r.token().type_id, "AsyncResult");
    EXPECT_EQ(it.token().type_id, "IMapIterator");
  }
  EXPECT_EQ(manager.number_of_objects(), 1);
  pool.terminate();  // the naps still running are not waited for
  pool = manager.Pool(1, GetParam());
  EXPECT_EQ(manager.number_of_objects(), 1);
  // A result keeps its pool running after the pool's proxy goes (CPython's ApplyResult holds its
  // pool too); the pool goes with the result.
  auto r = pool.apply_async(&square, 7);
  pool = mp::PoolProxy();
  EXPECT_EQ(manager.number_of_objects(), 1);
  EXPECT_EQ(r.get(60s), 49);
  r = mp::AsyncResultProxy<std::int64_t>();
  EXPECT_EQ(manager.number_of_objects(), 0);
}

TEST_P(ManagerPoolAsync, AClosedPoolRefusesAsyncCallsAsMpPoolDoes) {
  auto r = pool.apply_async(&square, 5);
  pool.close();
  EXPECT_EQ(r.get(60s), 25);  // work already submitted finishes
  EXPECT_THROW(pool.apply_async(&square, 1), std::logic_error);
  EXPECT_THROW(pool.map_async(&square, std::vector<std::int64_t>{1}), std::logic_error);
  try {
    (void)pool.imap(&square, std::vector<std::int64_t>{1, 2});
    ADD_FAILURE() << "imap on a closed pool did not throw";
  } catch (const std::logic_error& e) {
    EXPECT_EQ(std::string(e.what()), "mp: Pool not running (it was closed or terminated)");
  }
  pool.join();
  // What is not a C++ client's code reference is refused.
  EXPECT_THROW(pool.callmethod<mp::BaseProxy>("apply_async", 1, 2, 3), mp::RemoteError);
  EXPECT_THROW(manager.create("AsyncResult"), mp::RemoteError);
  EXPECT_THROW(manager.create("IMapIterator"), mp::RemoteError);
  EXPECT_EQ(manager.number_of_objects(), 2);  // the pool and r: the refused calls made nothing
}

TEST_P(ManagerPoolAsync, AManagerKilledWhileAClientWaitsInGetIsAnErrorNotAHang) {
  const auto pid = static_cast<pid_t>(pool.apply(&manager_pid, 0));
  ASSERT_GT(pid, 1);
  ASSERT_NE(pid, getpid());
  auto r = pool.apply_async(&nap, 2500);
  auto it = pool.imap(&nap, std::vector<std::int64_t>{2500});
  EXPECT_FALSE(r.ready());  // both channels are open before the kill
  EXPECT_THROW(it.next(0s), mp::TimeoutError);
  std::thread killer([pid] {
    std::this_thread::sleep_for(200ms);
    ::kill(pid, SIGKILL);
  });
  const auto t0 = Clock::now();
  bool failed = false;
  try {
    r.get();
  } catch (const mp::EOFError&) {
    failed = true;  // the manager's end of the channel closed
  } catch (const std::system_error&) {
    failed = true;  // ECONNRESET
  }
  killer.join();
  EXPECT_TRUE(failed);
  // A new client is refused at once: the worker still busy with its task (under fork, a child of
  // the manager) does not hold the manager's listening socket open.
  mp::connection::Options o;
  o.authkey = mp::current_process().authkey();
  EXPECT_THROW(mp::connection::Client(manager.address(), o), std::exception);
  EXPECT_THROW(it.next(), std::exception);
  // Well before the task (2.5 s) could have finished: nothing waited for it.
  EXPECT_LT(seconds_since(t0), 2.4);
}

INSTANTIATE_TEST_SUITE_P(WorkersStartedBy, ManagerPoolAsync, ::testing::Values("fork", "spawn"),
                         [](const ::testing::TestParamInfo<const char*>& p) { return std::string(p.param); });

}  // namespace
