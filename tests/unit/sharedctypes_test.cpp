// Value, Array, RawValue, RawArray, sharedctypes::copy and sharedctypes::synchronized, under each
// start method (the contract's cases in gtest form), plus the 4 x 100,000 locked increments.
//
// Children report through their exit code (a failed check exits with a distinct code).
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <cstring>
#include <mutex>
#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace {

constexpr auto kWait = 120s;

struct Pair {
  int a;
  double b;
};

// ---- child targets ----

void fill(mp::Value<double> num, mp::Array<int> arr) {
  num.set_value(3.1415927);
  for (std::size_t i = 0; i < arr.size(); ++i) arr[i] = -arr[i];
}

void set_pair(mp::RawValue<Pair> pv) { pv.get_obj().a = 10; }

void fill_raw(mp::RawArray<double> raw) {
  for (std::size_t i = 0; i < raw.size(); ++i) raw[i] = static_cast<double>(i) * 1.5;
}

void increment(mp::Value<long> counter, int times) {
  for (int i = 0; i < times; ++i) {
    std::lock_guard guard(counter.get_lock());
    counter.get_obj() += 1;
  }
}

// Takes the wrapper's lock and holds it until told to let go: the parent checks that its own
// raw object and the lock it passed are the very ones the child sees.
void write_under_lock(mp::Array<int> sync, mp::Value<int> flag) {
  std::lock_guard guard(sync.get_lock());
  sync[0] = 77;
  flag.set_value(1);
}

void check_unlocked(mp::Value<long> v) {
  try {
    (void)v.get_lock();
    std::exit(20);
  } catch (const std::logic_error&) {
  }
  v.set_value(v.value() + 1);
}

class SharedctypesTest : public testing::TestWithParam<std::string> {
 protected:
  mp::Context ctx() const { return mp::get_context(GetParam()); }
  static int run(mp::Process& p) {
    p.start();
    EXPECT_TRUE(p.join(kWait));
    return p.exitcode().value_or(-1000);
  }
};

TEST_P(SharedctypesTest, a_child_negates_an_array_and_sets_a_double) {
  mp::Value<double> num(0.0);
  mp::Array<int> arr{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  mp::Process p(ctx(), fill, num, arr);
  EXPECT_EQ(run(p), 0);
  EXPECT_EQ(num.value(), 3.1415927);
  EXPECT_EQ(arr.to_vector(), (std::vector<int>{0, -1, -2, -3, -4, -5, -6, -7, -8, -9}));
}

TEST_P(SharedctypesTest, a_raw_value_of_a_struct_is_shared) {
  mp::RawValue<Pair> pv(Pair{1, 2.5});
  mp::Process p(ctx(), set_pair, pv);
  EXPECT_EQ(run(p), 0);
  EXPECT_EQ(pv.value().a, 10);
  EXPECT_EQ(pv.value().b, 2.5);
}

TEST_P(SharedctypesTest, a_raw_array_is_shared) {
  mp::RawArray<double> raw(5);
  mp::Process p(ctx(), fill_raw, raw);
  EXPECT_EQ(run(p), 0);
  EXPECT_EQ(raw.to_vector(), (std::vector<double>{0, 1.5, 3, 4.5, 6}));
}

TEST_P(SharedctypesTest, a_synchronized_wrapper_crosses_with_its_memory_and_its_lock) {
  mp::RawArray<int> raw(3);
  mp::RLock lock;
  auto sync = mp::sharedctypes::synchronized(raw, lock);
  mp::Value<int> flag(0);
  mp::Process p(ctx(), write_under_lock, sync, flag);
  EXPECT_EQ(run(p), 0);
  EXPECT_EQ(flag.value(), 1);
  EXPECT_EQ(raw[0], 77);  // the child wrote the parent's raw memory
  // The lock is the one passed in: held here, the wrapper's lock is owned by this thread.
  lock.acquire();
  EXPECT_TRUE(sync.get_lock().is_owned());
  lock.release();
}

TEST_P(SharedctypesTest, a_value_without_a_lock_crosses_and_has_no_lock_there) {
  mp::Value<long> v(41, false);
  mp::Process p(ctx(), check_unlocked, v);
  EXPECT_EQ(run(p), 0);
  EXPECT_EQ(v.value(), 42);
}

TEST_P(SharedctypesTest, four_processes_incrementing_under_the_lock_reach_exactly_400000) {
  mp::Value<long> counter(0);
  std::vector<mp::Process> procs;
  for (int i = 0; i < 4; ++i) procs.emplace_back(ctx(), increment, counter, 100000);
  for (auto& p : procs) p.start();
  for (auto& p : procs) {
    EXPECT_TRUE(p.join(kWait));
    EXPECT_EQ(p.exitcode(), 0);
  }
  EXPECT_EQ(counter.value(), 400000);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, SharedctypesTest, testing::Values("fork", "spawn", "forkserver"),
                         [](const testing::TestParamInfo<std::string>& param) { return param.param; });

// ---- one process ----

TEST(Sharedctypes, a_captured_raw_value_is_shared_with_a_fork_child) {
  mp::RawValue<Pair> pv(Pair{1, 2.5});
  mp::Process p(mp::get_context("fork"), [pv]() mutable { pv.get_obj().a = 10; });
  p.start();
  ASSERT_TRUE(p.join(kWait));
  EXPECT_EQ(pv.value().a, 10);
}

TEST(Sharedctypes, compound_updates_under_get_lock_and_no_lock_without_one) {
  mp::Value<long> v(0);
  {
    std::lock_guard g(v.get_lock());
    v.get_obj() += 5;
  }
  EXPECT_EQ(v.value(), 5);
  mp::Value<long> unlocked(1, false);
  EXPECT_THROW((void)unlocked.get_lock(), std::logic_error);
  unlocked.set_value(2);
  EXPECT_EQ(unlocked.value(), 2);
  mp::Array<int> no_lock(3, false);
  EXPECT_THROW((void)no_lock.get_lock(), std::logic_error);
}

TEST(Sharedctypes, the_lock_is_recursive_so_value_works_while_holding_it) {
  mp::Value<int> v(3);
  std::lock_guard g(v.get_lock());
  v.set_value(v.value() + 1);  // takes the RLock again
  EXPECT_EQ(v.value(), 4);
}

TEST(Sharedctypes, arrays_are_zero_filled_and_sized) {
  mp::Array<long> a(1000);
  EXPECT_EQ(a.size(), 1000u);
  EXPECT_EQ(a.get_obj().size(), 1000u);
  for (long x : a.to_vector()) EXPECT_EQ(x, 0);
  mp::Array<int> one{5};  // an initializer list: one element
  EXPECT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0], 5);
  mp::RawArray<char> zero(0);
  EXPECT_EQ(zero.size(), 0u);
  EXPECT_TRUE(zero.to_vector().empty());
}

TEST(Sharedctypes, an_index_past_the_end_is_out_of_range) {
  mp::Array<int> a{1, 2, 3};
  EXPECT_THROW(a[3], std::out_of_range);
  mp::RawArray<int> r(2);
  EXPECT_THROW(r[2], std::out_of_range);
  mp::Array<int> empty;
  EXPECT_THROW(empty[0], std::out_of_range);
}

TEST(Sharedctypes, copies_of_a_handle_share_the_memory) {
  mp::Value<int> v(1);
  mp::Value<int> w = v;
  w.set_value(9);
  EXPECT_EQ(v.value(), 9);
  mp::RawArray<int> r{1, 2};
  auto s = r;
  s[1] = 7;
  EXPECT_EQ(r[1], 7);
}

TEST(Sharedctypes, copy_makes_new_memory_with_the_same_contents) {
  mp::RawArray<double> raw(4);
  raw[3] = 9.0;
  auto dup = mp::sharedctypes::copy(raw);
  static_assert(std::is_same_v<decltype(dup), mp::RawArray<double>>);
  raw[3] = 1.0;
  EXPECT_EQ(dup[3], 9.0);
  EXPECT_EQ(dup.size(), 4u);

  mp::RawValue<Pair> pv(Pair{3, 4.5});
  auto pv2 = mp::sharedctypes::copy(pv);
  static_assert(std::is_same_v<decltype(pv2), mp::RawValue<Pair>>);
  pv.get_obj().a = 0;
  EXPECT_EQ(pv2.value().a, 3);

  mp::Value<int> locked(8);
  auto raw_copy = mp::sharedctypes::copy(locked);
  static_assert(std::is_same_v<decltype(raw_copy), mp::RawValue<int>>);
  EXPECT_EQ(raw_copy.value(), 8);
}

TEST(Sharedctypes, synchronized_wraps_the_same_memory_with_a_new_or_given_lock) {
  mp::RawArray<double> raw(4);
  auto sync = mp::sharedctypes::synchronized(raw);
  static_assert(std::is_same_v<decltype(sync), mp::Array<double>>);
  {
    std::lock_guard g(sync.get_lock());
    sync[0] = 2.0;
  }
  EXPECT_EQ(raw[0], 2.0);
  raw[1] = 3.0;
  EXPECT_EQ(sync.to_vector()[1], 3.0);

  mp::RawValue<int> rv(5);
  mp::RLock lock;
  auto sv = mp::sharedctypes::synchronized(rv, lock);
  static_assert(std::is_same_v<decltype(sv), mp::Value<int>>);
  sv.set_value(6);
  EXPECT_EQ(rv.value(), 6);
  std::lock_guard g(lock);
  EXPECT_TRUE(sv.get_lock().is_owned());
}

TEST(Sharedctypes, the_types_cross_only_as_process_arguments_and_are_serializable) {
  static_assert(mp::detail::is_serializable_v<mp::Value<int>>);
  static_assert(mp::detail::is_serializable_v<mp::Array<int>>);
  static_assert(mp::detail::is_serializable_v<mp::RawValue<Pair>>);
  static_assert(mp::detail::is_serializable_v<mp::RawArray<double>>);
  mp::RawValue<int> v(1);
  EXPECT_THROW((void)mp::dumps(v), std::invalid_argument);
}

TEST(Sharedctypes, an_empty_array_cannot_cross) {
  mp::RawArray<double> empty;
  EXPECT_EQ(empty.size(), 0u);
  mp::Process p(mp::get_context("spawn"), fill_raw, empty);
  EXPECT_THROW(p.start(), std::logic_error);
}

}  // namespace
