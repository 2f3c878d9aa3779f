// Queue volume: a million messages from two producers to two consumers, each delivered exactly
// once; tiny and 64 MiB messages mixed in one queue, per-producer FIFO; one 1 GiB message.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace {

constexpr auto kWait = 120s;

struct Tally {
  long count = 0;
  long sum = 0;
  long xor_all = 0;
  template <class A>
  void serialize(A& ar) {
    ar(count, sum, xor_all);
  }
};

void produce(mp::Queue<long> q, long from, long to) {
  for (long i = from; i < to; ++i) q.put(i);
  q.put(-1);  // one stop mark per producer; each consumer takes exactly one
}

void consume(mp::Queue<long> q, mp::Queue<Tally> out) {
  Tally t;
  for (;;) {
    long v = q.get(kWait);
    if (v < 0) break;
    ++t.count;
    t.sum += v;
    t.xor_all ^= v;
  }
  out.put(t);
}

// Item i of producer p: a tiny tagged record, or every 40th a 64 MiB one.
mp::Bytes item(unsigned p, unsigned i) {
  std::size_t n = i % 40 == 39 ? std::size_t{64} << 20 : 16;
  mp::Bytes b(n);
  b[0] = static_cast<std::byte>(p);
  b[1] = static_cast<std::byte>(i & 0xff);
  b[2] = static_cast<std::byte>(i >> 8);
  b[n - 1] = static_cast<std::byte>(p ^ i);
  return b;
}

void produce_mixed(mp::Queue<mp::Bytes> q, unsigned p, unsigned n) {
  for (unsigned i = 0; i < n; ++i) q.put(item(p, i));
}

class QueueStressTest : public testing::TestWithParam<std::string> {
 protected:
  mp::Context ctx() const { return mp::get_context(GetParam()); }
};

}  // namespace

TEST_P(QueueStressTest, a_million_messages_from_two_producers_reach_two_consumers_exactly_once) {
  mp::Queue<long> q;
  mp::Queue<Tally> results;
  const long n = 1000000;
  mp::Process p1(ctx(), produce, q, 0L, n / 2), p2(ctx(), produce, q, n / 2, n);
  mp::Process c1(ctx(), consume, q, results), c2(ctx(), consume, q, results);
  for (auto* p : {&c1, &c2, &p1, &p2}) p->start();
  Tally a = results.get(kWait), b = results.get(kWait);
  for (auto* p : {&c1, &c2, &p1, &p2}) {
    p->join();
    EXPECT_EQ(p->exitcode(), 0);
  }
  long expected_xor = 0;
  for (long i = 0; i < n; ++i) expected_xor ^= i;
  EXPECT_EQ(a.count + b.count, n);
  EXPECT_EQ(a.sum + b.sum, n * (n - 1) / 2);
  EXPECT_EQ(a.xor_all ^ b.xor_all, expected_xor);
  EXPECT_TRUE(q.empty());
}

TEST_P(QueueStressTest, tiny_and_64_mib_messages_mix_in_one_queue_in_fifo_order_per_producer) {
  mp::Queue<mp::Bytes> q;
  const unsigned n = 120;  // 3 large items per producer
  mp::Process p1(ctx(), produce_mixed, q, 1u, n), p2(ctx(), produce_mixed, q, 2u, n);
  p1.start();
  p2.start();
  unsigned next[3] = {0, 0, 0};
  for (unsigned k = 0; k < 2 * n; ++k) {
    mp::Bytes b = q.get(kWait);
    ASSERT_GE(b.size(), 16u);
    unsigned p = static_cast<unsigned>(b[0]);
    ASSERT_TRUE(p == 1 || p == 2);
    unsigned i = static_cast<unsigned>(b[1]) | (static_cast<unsigned>(b[2]) << 8);
    ASSERT_EQ(i, next[p]) << "producer " << p;
    ASSERT_TRUE(b == item(p, i));
    ++next[p];
  }
  p1.join();
  p2.join();
  EXPECT_EQ(p1.exitcode(), 0);
  EXPECT_EQ(p2.exitcode(), 0);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, QueueStressTest, testing::Values("fork", "spawn"),
                         [](const testing::TestParamInfo<std::string>& param) { return param.param; });

namespace {
void put_gib(mp::Queue<mp::Bytes> q) {
  mp::Bytes big(std::size_t{1} << 30);
  for (std::size_t i = 0; i < big.size(); i += 4093) big[i] = static_cast<std::byte>(i / 4093);
  big.back() = std::byte{0x5a};
  q.put(big);
}
}  // namespace

TEST(QueueStress, LARGE_a_1_gib_message_crosses_between_processes) {
  // Producer: the item, its encoding and the memfd (3 GiB); consumer: the mapping and the result.
  long pages = ::sysconf(_SC_AVPHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0 && static_cast<double>(pages) * static_cast<double>(page) < 6.0 * (1 << 30))
    GTEST_SKIP() << "not enough free memory for a 1 GiB message";
  mp::Queue<mp::Bytes> q;
  q.put(mp::Bytes{std::byte{1}});
  mp::Process p(mp::get_context("fork"), put_gib, q);
  p.start();
  q.put(mp::Bytes{std::byte{2}}, kWait);
  EXPECT_EQ(q.get(kWait), mp::Bytes{std::byte{1}});
  // the small item put while the child was busy may come before or after the big one
  mp::Bytes first = q.get(kWait), second = q.get(kWait);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  mp::Bytes& big = first.size() == 1 ? second : first;
  EXPECT_EQ((first.size() == 1 ? first : second), mp::Bytes{std::byte{2}});
  ASSERT_EQ(big.size(), std::size_t{1} << 30);
  bool ok = big.back() == std::byte{0x5a};
  for (std::size_t i = 0; ok && i + 1 < big.size(); i += 4093) ok = big[i] == static_cast<std::byte>(i / 4093);
  EXPECT_TRUE(ok);
}
