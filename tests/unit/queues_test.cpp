// Queue, SimpleQueue and JoinableQueue (Python's multiprocessing.queues): every method and misuse
// in one process, then the same queues shared with children under fork, spawn and forkserver.
// Children report through their exit code.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <fcntl.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

// Every allocation of this test binary goes through here, so that a test can count the ones its
// own thread makes (the hot path of put and get must make none).
namespace {
thread_local bool t_count_allocations = false;
thread_local long t_allocations = 0;
void* counted_alloc(std::size_t n) {
  if (t_count_allocations) ++t_allocations;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
}  // namespace
void* operator new(std::size_t n) { return counted_alloc(n); }
void* operator new[](std::size_t n) { return counted_alloc(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kWait = 60s;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

mp::Bytes pattern(std::size_t n, unsigned seed) {
  mp::Bytes b(n);
  for (std::size_t i = 0; i < n; i += 4096) b[i] = static_cast<std::byte>((i / 4096 + seed) & 0xff);
  if (n) b[n - 1] = static_cast<std::byte>(seed);
  return b;
}

bool matches(const mp::Bytes& b, std::size_t n, unsigned seed) { return b.size() == n && b == pattern(n, seed); }

// ---- child targets ----

void put_range(mp::Queue<long> q, long from, long to) {
  for (long i = from; i < to; ++i) q.put(i);
}

void echo_until_negative(mp::Queue<long> in, mp::Queue<long> out) {
  for (;;) {
    long v = in.get(kWait);
    if (v < 0) return;
    out.put(v * 2);
  }
}

void put_big(mp::Queue<mp::Bytes> q, std::uint64_t n, unsigned seed) { q.put(pattern(n, seed)); }

void work_joinable(mp::JoinableQueue<int> q, mp::Queue<long> results) {
  for (;;) {
    int v = q.get(kWait);
    if (v < 0) {
      q.task_done();
      return;
    }
    results.put(v);
    q.task_done();
  }
}

void get_one_simple(mp::SimpleQueue<std::string> in, mp::SimpleQueue<std::string> out) { out.put(in.get() + "!"); }

}  // namespace

// ---- in one process ----

TEST(Queue, put_then_get_returns_items_in_fifo_order) {
  mp::Queue<int> q;
  for (int i = 0; i < 1000; ++i) q.put(i);
  EXPECT_EQ(q.qsize(), 1000u);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(q.get(), i);
  EXPECT_TRUE(q.empty());
}

TEST(Queue, get_nowait_on_an_empty_queue_throws_empty_at_once) {
  mp::Queue<int> q;
  auto t0 = Clock::now();
  EXPECT_THROW(q.get_nowait(), mp::Empty);
  EXPECT_THROW(q.get_no_wait(), mp::Empty);
  EXPECT_LT(seconds_since(t0), 0.5);
}

TEST(Queue, get_with_a_timeout_waits_about_the_timeout_then_throws_empty) {
  mp::Queue<int> q;
  auto t0 = Clock::now();
  EXPECT_THROW(q.get(150ms), mp::Empty);
  double s = seconds_since(t0);
  EXPECT_GE(s, 0.149);
  EXPECT_LT(s, 2.0);
}

TEST(Queue, a_bounded_queue_is_full_at_maxsize_items_and_put_times_out) {
  mp::Queue<int> q(3);
  q.put(1);
  q.put(2);
  EXPECT_FALSE(q.full());
  q.put_nowait(3);
  EXPECT_TRUE(q.full());
  EXPECT_THROW(q.put_nowait(4), mp::Full);
  auto t0 = Clock::now();
  EXPECT_THROW(q.put(4, 100ms), mp::Full);
  EXPECT_GE(seconds_since(t0), 0.099);
  EXPECT_EQ(q.get(), 1);
  q.put(4, 1s);
  EXPECT_EQ(q.qsize(), 3u);
}

TEST(Queue, a_blocked_put_resumes_when_a_consumer_makes_room) {
  mp::Queue<int> q(1);
  q.put(1);
  std::thread t([q]() mutable {
    std::this_thread::sleep_for(50ms);
    (void)q.get();
  });
  q.put(2, 10s);
  t.join();
  EXPECT_EQ(q.get(), 2);
}

TEST(Queue, a_blocked_get_wakes_when_another_thread_puts) {
  mp::Queue<std::string> q;
  std::thread t([q]() mutable {
    std::this_thread::sleep_for(50ms);
    q.put("hello");
  });
  EXPECT_EQ(q.get(10s), "hello");
  t.join();
}

TEST(Queue, put_after_close_throws_logic_error_and_get_still_works) {
  mp::Queue<int> q;
  q.put(7);
  EXPECT_THROW(q.join_thread(), std::logic_error);
  q.close();
  EXPECT_THROW(q.put(8), std::logic_error);
  EXPECT_EQ(q.get(), 7);
  q.join_thread();
  q.cancel_join_thread();
}

TEST(Queue, an_unbounded_queue_holds_more_than_the_ring_when_items_are_out_of_line) {
  mp::Queue<mp::Bytes> q;
  for (unsigned i = 0; i < 8; ++i) q.put(pattern(1 << 20, i));  // 8 MiB of 1 MiB items
  for (unsigned i = 0; i < 8; ++i) ASSERT_TRUE(matches(q.get(), 1 << 20, i));
}

TEST(Queue, an_unbounded_queue_applies_back_pressure_when_the_ring_is_full) {
  mp::Queue<mp::Bytes> q;
  std::size_t n = 0;
  try {
    for (;; ++n) q.put(mp::Bytes(1000), 100ms);
  } catch (const mp::Full&) {
  }
  EXPECT_GT(n, 500u);    // about 1 MiB of 1 KB items
  EXPECT_LT(n, 1100u);
  EXPECT_EQ(q.qsize(), n);
  (void)q.get();
  q.put(mp::Bytes(1000), 1s);
}

TEST(Queue, at_most_64_out_of_line_items_wait_at_once_and_the_next_put_times_out_without_hanging) {
  mp::Queue<mp::Bytes> q;
  const mp::Bytes big(300000);  // 64 of them stay under the 32 MiB cap: the count binds first
  for (int i = 0; i < 64; ++i) q.put(big, 5s);
  auto t0 = Clock::now();
  EXPECT_THROW(q.put_nowait(big), mp::Full);
  EXPECT_THROW(q.put(big, 100ms), mp::Full);
  EXPECT_LT(seconds_since(t0), 2.0);
  q.put(mp::Bytes(10), 1s);  // small items still fit
  EXPECT_EQ(q.get().size(), 300000u);
  q.put(big, 1s);
  for (int i = 0; i < 63; ++i) ASSERT_EQ(q.get().size(), 300000u);
  EXPECT_EQ(q.get().size(), 10u);
  EXPECT_EQ(q.get().size(), 300000u);
}

TEST(Queue, at_most_32_mib_of_out_of_line_items_wait_at_once_but_one_item_of_any_size_passes) {
  mp::Queue<mp::Bytes> q;
  for (unsigned i = 0; i < 4; ++i) q.put_nowait(pattern(8 << 20, i));  // 32 MiB and 32 bytes
  EXPECT_THROW(q.put_nowait(pattern(8 << 20, 4)), mp::Full);
  q.put_nowait(pattern(100, 5));  // small items still fit
  ASSERT_TRUE(matches(q.get(), 8 << 20, 0));
  q.put_nowait(pattern(8 << 20, 4));
  for (unsigned i = 1; i < 4; ++i) ASSERT_TRUE(matches(q.get(), 8 << 20, i)) << i;
  ASSERT_TRUE(matches(q.get(), 100, 5));
  ASSERT_TRUE(matches(q.get(), 8 << 20, 4));
  // Nothing in flight: an item far over the cap passes at once, and holds the next large one.
  q.put_nowait(pattern(40 << 20, 6));
  EXPECT_THROW(q.put_nowait(pattern(300000, 7)), mp::Full);
  ASSERT_TRUE(matches(q.get(), 40 << 20, 6));
  q.put_nowait(pattern(300000, 7));
  ASSERT_TRUE(matches(q.get(), 300000, 7));
}

namespace {
// The distinct inodes of this process's mappings of queue segments (/proc/self/maps).
std::set<std::string> mapped_segments() {
  std::ifstream maps("/proc/self/maps");
  std::set<std::string> inodes;
  for (std::string line; std::getline(maps, line);) {
    if (line.find("mp-queue-item") == std::string::npos) continue;
    std::istringstream fields(line);
    std::string range, perms, offset, dev, inode;
    fields >> range >> perms >> offset >> dev >> inode;
    inodes.insert(inode);
  }
  return inodes;
}
}  // namespace

TEST(Queue, a_stream_of_large_items_reuses_a_few_segments_kept_mapped) {
  mp::Queue<mp::Bytes> q;
  const auto before = mapped_segments();
  for (unsigned i = 0; i < 40; ++i) {
    q.put(pattern(1 << 20, i));
    ASSERT_TRUE(matches(q.get(), 1 << 20, i)) << i;
  }
  const auto after = mapped_segments();
  // One segment goes round (put, get, back to the pool); a fresh one per item would leave none
  // mapped (or 40).
  std::size_t fresh = 0;
  for (const auto& inode : after) fresh += before.count(inode) == 0;
  EXPECT_GE(fresh, 1u);
  EXPECT_LE(fresh, 2u);
  // Items larger than a recycled segment still fit (a bigger one is made); smaller ones reuse it.
  q.put(pattern(3 << 20, 1));
  EXPECT_TRUE(matches(q.get(), 3 << 20, 1));
  q.put(pattern(300000, 2));
  EXPECT_TRUE(matches(q.get(), 300000, 2));
}

TEST(Queue, containers_of_plain_elements_put_without_encoding_round_trip_as_the_codec_encodes_them) {
  // put() writes a vector of numbers or a string as its u64 count then its bytes, without the
  // codec: that must be exactly the codec's encoding, which get() decodes.
  auto raw = [](std::uint64_t n, const void* data, std::size_t bytes) {
    mp::Bytes out(8 + bytes);
    std::memcpy(out.data(), &n, 8);
    if (bytes) std::memcpy(out.data() + 8, data, bytes);
    return out;
  };
  const std::vector<double> doubles{1.5, -2.0, 1e300};
  const std::string text = "hello, queue";
  const std::vector<std::int32_t> ints(100000, -7);  // out of line
  EXPECT_EQ(mp::dumps(doubles), raw(doubles.size(), doubles.data(), sizeof(double) * doubles.size()));
  EXPECT_EQ(mp::dumps(text), raw(text.size(), text.data(), text.size()));
  EXPECT_EQ(mp::dumps(ints), raw(ints.size(), ints.data(), 4 * ints.size()));
  mp::Queue<std::vector<double>> qd;
  qd.put(doubles);
  EXPECT_EQ(qd.get(), doubles);
  mp::Queue<std::string> qs;
  qs.put(text);
  qs.put(std::string());
  EXPECT_EQ(qs.get(), text);
  EXPECT_EQ(qs.get(), "");
  mp::Queue<std::vector<std::int32_t>> qi;
  qi.put(ints);
  EXPECT_EQ(qi.get(), ints);
}

TEST(Queue, items_of_every_size_around_the_out_of_line_threshold_round_trip) {
  mp::Queue<mp::Bytes> q;
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{8}, std::size_t{262143},
                        std::size_t{262144}, std::size_t{262145}, std::size_t{300000}, std::size_t{1} << 21}) {
    q.put(pattern(n, 3));
    ASSERT_TRUE(matches(q.get(), n, 3)) << n;
  }
}

namespace {
// Allocations made by the calling thread while body runs.
template <class F>
long allocations_of(F body) {
  t_allocations = 0;
  t_count_allocations = true;
  body();
  t_count_allocations = false;
  return t_allocations;
}
}  // namespace

TEST(Queue, put_and_get_of_small_plain_items_allocate_nothing_once_warm) {
  mp::Queue<long> longs;
  mp::Queue<std::array<std::int32_t, 4>> arrays;
  mp::Queue<mp::Bytes> bytes;
  const mp::Bytes item(32, std::byte{5});
  auto round = [&](int n) {
    for (int i = 0; i < n; ++i) {
      longs.put(i);
      if (longs.get() != i) std::abort();
      arrays.put({i, 1, 2, 3});
      if (arrays.get()[0] != i) std::abort();
      bytes.put(item);
    }
    for (int i = 0; i < n; ++i) bytes.get_nowait();  // a Bytes result is allocated: not counted below
  };
  round(100);  // warm: this thread's buffers grow once
  EXPECT_EQ(allocations_of([&] {
              for (int i = 0; i < 1000; ++i) {
                longs.put(i);
                if (longs.get() != i) std::abort();
                arrays.put_nowait({i, 1, 2, 3});
                if (arrays.get_nowait()[0] != i) std::abort();
                bytes.put(item);
              }
            }),
            0);
  // 1000 Bytes gets: one allocation each, for the result itself.
  EXPECT_EQ(allocations_of([&] {
              for (int i = 0; i < 1000; ++i) (void)bytes.get_nowait();
            }),
            1000);
}

namespace {
// The handle `from` as another process would receive it, loaded as a To (dup'd descriptors).
template <class To, class From>
To reload_as(const From& from) {
  mp::Bytes encoded;
  std::vector<int> fds;
  {
    mp::detail::FdExport exporter;
    encoded = mp::dumps(from);
    for (int fd : exporter.fds()) fds.push_back(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  }
  mp::detail::FdImport importer(fds);
  return mp::loads<To>(encoded);
}
}  // namespace

TEST(Queue, a_get_of_a_value_of_the_wrong_type_is_invalid_argument_and_the_queue_goes_on) {
  mp::Queue<std::string> strings;
  auto doubles = reload_as<mp::Queue<std::vector<double>>>(strings);
  strings.put("not a vector of doubles");
  strings.put("abc");
  EXPECT_EQ(doubles.qsize(), 2u);
  EXPECT_THROW((void)doubles.get(), std::invalid_argument);
  EXPECT_EQ(strings.get(), "abc");
}

TEST(Queue, a_lock_received_as_a_queue_is_refused) {
  mp::Lock lock;
  // A Lock's save() writes one index, a Queue's load() reads three: the codec refuses it, or the
  // segment's type tag does.
  EXPECT_THROW((void)(reload_as<mp::Queue<int>>(lock)), std::invalid_argument);
}

TEST(Queue, an_empty_handle_throws_logic_error) {
  mp::Queue<int> q;
  mp::Queue<int> moved = std::move(q);
  EXPECT_THROW(q.put(1), std::logic_error);
  EXPECT_THROW((void)q.qsize(), std::logic_error);
  moved.put(1);
  EXPECT_EQ(moved.get(), 1);
}

TEST(Queue, handles_are_serializable_by_the_codec) {
  static_assert(mp::detail::is_serializable_v<mp::Queue<int>>);
  static_assert(mp::detail::is_serializable_v<mp::SimpleQueue<int>>);
  static_assert(mp::detail::is_serializable_v<mp::JoinableQueue<int>>);
}

TEST(JoinableQueue, task_done_more_often_than_put_throws_logic_error) {
  mp::JoinableQueue<int> q;
  EXPECT_THROW(q.task_done(), std::logic_error);
  q.put(1);
  (void)q.get();
  q.task_done();
  EXPECT_THROW(q.task_done(), std::logic_error);
  q.join();
}

TEST(JoinableQueue, join_returns_only_after_the_last_task_done) {
  mp::JoinableQueue<int> q;
  q.put(1);
  q.put(2);
  std::atomic<int> done{0};
  std::thread t([q, &done]() mutable {
    (void)q.get();
    done = 1;
    q.task_done();
    (void)q.get();
    std::this_thread::sleep_for(50ms);
    done = 2;
    q.task_done();
  });
  q.join();
  EXPECT_EQ(done.load(), 2);
  t.join();
}

TEST(SimpleQueue, put_get_empty_and_close) {
  mp::SimpleQueue<std::string> q;
  EXPECT_TRUE(q.empty());
  q.put("a");
  EXPECT_FALSE(q.empty());
  EXPECT_EQ(q.get(), "a");
  q.close();
  EXPECT_THROW(q.put("b"), std::logic_error);
}

// ---- across processes, under every start method ----

class QueueProcessTest : public testing::TestWithParam<std::string> {
 protected:
  mp::Context ctx() const { return mp::get_context(GetParam()); }
};

TEST_P(QueueProcessTest, two_producers_deliver_every_item_exactly_once) {
  mp::Queue<long> q;
  const long n = 20000;
  mp::Process p1(ctx(), put_range, q, 0L, n / 2), p2(ctx(), put_range, q, n / 2, n);
  p1.start();
  p2.start();
  std::vector<char> seen(n, 0);
  for (long i = 0; i < n; ++i) {
    long v = q.get(kWait);
    ASSERT_TRUE(v >= 0 && v < n);
    ASSERT_EQ(seen[static_cast<std::size_t>(v)], 0) << v;
    seen[static_cast<std::size_t>(v)] = 1;
  }
  p1.join();
  p2.join();
  EXPECT_EQ(p1.exitcode(), 0);
  EXPECT_EQ(p2.exitcode(), 0);
  EXPECT_TRUE(q.empty());
}

TEST_P(QueueProcessTest, a_child_echoes_through_two_queues) {
  mp::Queue<long> in, out;
  mp::Process p(ctx(), echo_until_negative, in, out);
  p.start();
  for (long i = 0; i < 1000; ++i) {
    in.put(i);
    ASSERT_EQ(out.get(kWait), 2 * i);
  }
  in.put(-1);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(QueueProcessTest, a_64_mib_item_from_a_child_arrives_intact_between_small_ones) {
  mp::Queue<mp::Bytes> q;
  q.put(pattern(10, 1));
  mp::Process p(ctx(), put_big, q, std::uint64_t{64} << 20, 9u);
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  q.put(pattern(10, 2));
  EXPECT_TRUE(matches(q.get(kWait), 10, 1));
  EXPECT_TRUE(matches(q.get(kWait), std::size_t{64} << 20, 9));
  EXPECT_TRUE(matches(q.get(kWait), 10, 2));
}

TEST_P(QueueProcessTest, joinable_queue_join_waits_for_a_child_worker) {
  mp::JoinableQueue<int> q;
  mp::Queue<long> results;
  mp::Process w(ctx(), work_joinable, q, results);
  w.start();
  for (int i = 1; i <= 50; ++i) q.put(i);
  q.join();
  EXPECT_EQ(results.qsize(), 50u);
  long sum = 0;
  for (int i = 0; i < 50; ++i) sum += results.get();
  EXPECT_EQ(sum, 50 * 51 / 2);
  q.put(-1);
  w.join();
  EXPECT_EQ(w.exitcode(), 0);
  EXPECT_THROW(q.task_done(), std::logic_error);
}

TEST_P(QueueProcessTest, simple_queues_cross_to_a_child) {
  mp::SimpleQueue<std::string> in, out;
  mp::Process p(ctx(), get_one_simple, in, out);
  p.start();
  in.put("hi");
  EXPECT_EQ(out.get(), "hi!");
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, QueueProcessTest, testing::Values("fork", "spawn", "forkserver"),
                         [](const testing::TestParamInfo<std::string>& param) { return param.param; });
