// The crash matrix (as CPython's and loky's executor tests): for each start method, a failure
// (an exception, std::exit(), a segfault, abort()) at each stage of a task's life:
//   1. argument serialization in the caller     4. result serialization in the worker
//   2. argument deserialization in the worker   5. result deserialization in the caller
//   3. the task itself
// Each must give the documented error (docs/pool.rst: an exception keeps its standard type and
// what(); a worker that dies fails the chunk it was running with WorkerLostError), nothing may
// hang (every wait has a timeout), and the pool must work afterwards.
//
// In the caller (stages 1 and 5) only exceptions are tried: an exit() or a segfault there ends
// the caller itself, which no pool can survive.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

using namespace std::chrono_literals;

// The workers crash on purpose: let SIGSEGV kill them as it would without a sanitizer.
#if defined(__SANITIZE_ADDRESS__)
extern "C" const char* __asan_default_options() { return "handle_segv=0:handle_abort=0"; }
// A worker that calls std::exit() mid-task leaves the task's objects behind on purpose: a leak
// report there would also turn its exit code 3 into LeakSanitizer's.
extern "C" int __lsan_is_turned_off() { return 1; }
#endif
#if defined(__SANITIZE_THREAD__)
extern "C" const char* __tsan_default_options() { return "handle_segv=0:handle_abort=0"; }
#endif

namespace {

enum Stage : int { kNoStage = -1, kArgSave, kArgLoad, kTask, kResultSave, kResultLoad };
enum Failure : int { kThrow, kExit, kSegv, kAbort };

const char* stage_name(int stage) {
  switch (stage) {
    case kArgSave: return "argument_serialization_in_the_caller";
    case kArgLoad: return "argument_deserialization_in_the_worker";
    case kTask: return "the_task";
    case kResultSave: return "result_serialization_in_the_worker";
    case kResultLoad: return "result_deserialization_in_the_caller";
  }
  return "?";
}
const char* failure_name(int failure) {
  switch (failure) {
    case kThrow: return "an_exception";
    case kExit: return "exit";
    case kSegv: return "a_segfault";
    case kAbort: return "abort";
  }
  return "?";
}

[[noreturn]] void fail_now(int stage, int failure) {
  switch (failure) {
    case kExit: std::exit(3);
    case kSegv: std::raise(SIGSEGV); break;
    case kAbort: std::abort();
    default: break;
  }
  throw std::runtime_error(std::string("planned failure in ") + stage_name(stage));
}

// An argument that fails when saved (in the caller) or loaded (in the worker), as told.
struct Arg {
  int value = 0;
  int stage = kNoStage;
  int failure = kThrow;
  template <class A>
  void save(A& ar) const {
    if (stage == kArgSave) fail_now(stage, failure);
    ar(value, stage, failure);
  }
  template <class A>
  void load(A& ar) {
    ar(value, stage, failure);
    if (stage == kArgLoad) fail_now(stage, failure);
  }
};

// A result that fails when saved (in the worker) or loaded (in the caller).
struct Result {
  int value = 0;
  int stage = kNoStage;
  int failure = kThrow;
  template <class A>
  void save(A& ar) const {
    if (stage == kResultSave) fail_now(stage, failure);
    ar(value, stage, failure);
  }
  template <class A>
  void load(A& ar) {
    ar(value, stage, failure);
    if (stage == kResultLoad) fail_now(stage, failure);
  }
};

Result run(Arg a) {
  if (a.stage == kTask) fail_now(a.stage, a.failure);
  return Result{2 * a.value, a.stage, a.failure};
}

int square(int x) { return x * x; }

using Case = std::tuple<std::string, int, int>;  // start method, stage, failure

class PoolCrashMatrix : public testing::TestWithParam<Case> {};

// Waits for the result with a timeout: a TimeoutError here means the pool hung.
template <class R>
auto get_or_fail(mp::AsyncResult<R>& r) {
  if (!r.wait(60s)) ADD_FAILURE() << "the pool hung: no result within 60 s";
  return r.get(0s);
}

TEST_P(PoolCrashMatrix, gives_the_documented_error_and_the_pool_goes_on) {
  const auto& [method, stage, failure] = GetParam();
  mp::PoolOptions o;
  o.processes = 2;
  o.context = mp::get_context(method);
  mp::Pool pool(o);

  std::vector<Arg> args(8);
  for (int i = 0; i < 8; ++i) args[static_cast<std::size_t>(i)].value = i;
  args[5].stage = stage;
  args[5].failure = failure;

  const bool dies = failure != kThrow;  // the worker process ends at that stage
  const std::string planned = std::string("planned failure in ") + stage_name(stage);
  auto check_error = [&](std::exception_ptr e) {
    ASSERT_TRUE(e) << "no error";
    try {
      std::rethrow_exception(e);
    } catch (const mp::TimeoutError& t) {
      FAIL() << "the pool hung: " << t.what();
    } catch (const mp::WorkerLostError& w) {
      EXPECT_TRUE(dies) << "an exception became WorkerLostError: " << w.what();
      std::string what = w.what();
      const char* expected = failure == kExit ? "exited with code 3" : failure == kSegv ? "SIGSEGV" : "SIGABRT";
      EXPECT_NE(what.find(expected), std::string::npos) << what;
    } catch (const std::runtime_error& r) {
      EXPECT_FALSE(dies) << "a dead worker gave " << r.what();
      EXPECT_EQ(std::string(r.what()), planned);
      // the standard type crosses as itself (docs/pool.rst, Errors), not as RemoteError
      EXPECT_EQ(typeid(r), typeid(std::runtime_error)) << r.what();
    } catch (const std::exception& x) {
      ADD_FAILURE() << "unexpected " << typeid(x).name() << ": " << x.what();
    }
  };

  // map: the whole call fails with that error.
  {
    std::exception_ptr error;
    try {
      auto r = pool.map_async(&run, args, 1);
      (void)get_or_fail(r);
    } catch (...) {
      error = std::current_exception();
    }
    check_error(error);
  }
  // apply_async of the failing item alone: its result fails the same way.
  {
    std::exception_ptr error;
    try {
      auto r = pool.apply_async(&run, args[5]);
      (void)get_or_fail(r);
    } catch (...) {
      error = std::current_exception();
    }
    check_error(error);
  }
  // imap: the failing position raises, the others yield their values (docs/pool.rst). An
  // argument that cannot be serialized may also fail the imap() call itself.
  {
    std::optional<mp::IMapIterator<Result>> it;
    try {
      it.emplace(pool.imap(&run, args, 1));
    } catch (...) {
      EXPECT_EQ(stage, kArgSave) << "imap() itself failed";
      check_error(std::current_exception());
    }
    for (int i = 0; it && i < 8; ++i) {
      try {
        Result v = it->next(60s);
        EXPECT_NE(i, 5) << "the failing item gave a value";
        EXPECT_EQ(v.value, 2 * i);
      } catch (...) {
        EXPECT_EQ(i, 5) << "a healthy item failed";
        check_error(std::current_exception());
        if (stage == kArgSave) break;  // (a lazily encoding imap stops at the bad argument)
      }
    }
  }
  // The pool goes on: the healthy items, then another task altogether.
  args[5].stage = kNoStage;
  {
    auto r = pool.map_async(&run, args, 1);
    auto results = get_or_fail(r);
    ASSERT_EQ(results.size(), 8u);
    for (int i = 0; i < 8; ++i) EXPECT_EQ(results[static_cast<std::size_t>(i)].value, 2 * i);
  }
  {
    std::vector<int> xs(20);
    std::iota(xs.begin(), xs.end(), 0);
    auto r = pool.map_async(&square, xs);
    auto squares = get_or_fail(r);
    ASSERT_EQ(squares.size(), 20u);
    EXPECT_EQ(squares[19], 361);
  }
  pool.close();
  pool.join();
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (const char* method : {"fork", "spawn", "forkserver"}) {
    for (int stage : {kArgSave, kArgLoad, kTask, kResultSave, kResultLoad}) {
      const bool in_caller = stage == kArgSave || stage == kResultLoad;
      for (int failure : {kThrow, kExit, kSegv, kAbort}) {
        if (in_caller && failure != kThrow) continue;
        out.emplace_back(method, stage, failure);
      }
    }
  }
  return out;
}

std::string case_name(const testing::TestParamInfo<Case>& info) {
  return std::get<0>(info.param) + "_" + failure_name(std::get<2>(info.param)) + "_in_" + stage_name(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(AllStages, PoolCrashMatrix, testing::ValuesIn(cases()), case_name);

}  // namespace
