// Queues under SIGKILL: producers and consumers killed at random instants (mid-put, mid-get, while
// holding the queue's internal lock, between an out-of-line item's hand-off steps) never corrupt
// the queue, never duplicate an item, and never block the survivors; waits on a queue whose
// producers died still end at their timeout.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <string_view>
#include <random>
#include <thread>

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kWait = 30s;

// Item k of round r: 16 tagged bytes, or every 16th an out-of-line 300 KB one.
mp::Bytes tagged(std::uint32_t round, std::uint64_t k) {
  mp::Bytes b(k % 16 == 15 ? 300000 : 16);
  std::memcpy(b.data(), &round, sizeof round);
  std::memcpy(b.data() + 4, &k, sizeof k);
  b.back() = static_cast<std::byte>(k * 7 + round);
  return b;
}

bool parse(const mp::Bytes& b, std::uint32_t& round, std::uint64_t& k) {
  if (b.size() < 16) return false;
  std::memcpy(&round, b.data(), sizeof round);
  std::memcpy(&k, b.data() + 4, sizeof k);
  return b == tagged(round, k);
}

void produce_forever(mp::Queue<mp::Bytes> q, std::uint32_t round) {
  for (std::uint64_t k = 0;; ++k) q.put(tagged(round, k));
}

void consume_forever(mp::Queue<mp::Bytes> q) {
  for (;;) (void)q.get();
}

void kill_and_reap(mp::Process& p) {
  ::kill(p.pid().value(), SIGKILL);
  p.join();
}

}  // namespace

TEST(QueueFault, producers_and_consumers_killed_at_random_points_never_corrupt_or_duplicate) {
  // Counts the recoveries of the queue's internal lock (kills that landed while it was held).
  static std::atomic<int> recoveries{0};
  mp::get_logger().add_handler([](int, std::string_view, std::string_view message) {
    if (message.find("Queue recovered") != std::string_view::npos) ++recoveries;
  });
  mp::Queue<mp::Bytes> q;
  std::mt19937 rng(12345);
  const auto t0 = Clock::now();
  int rounds = 0;
  for (std::uint32_t round = 1; round <= 150 && Clock::now() - t0 < 40s; ++round, ++rounds) {
    mp::Process producer(mp::get_context("fork"), produce_forever, q, round);
    mp::Process consumer(mp::get_context("fork"), consume_forever, q);
    producer.start();
    consumer.start();
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
    if (rng() % 2) {
      kill_and_reap(producer);
      kill_and_reap(consumer);
    } else {
      kill_and_reap(consumer);
      kill_and_reap(producer);
    }
    // What is left: this round's items in strictly increasing order (a duplicate or a damaged
    // record would break it), every one intact.
    std::uint64_t last = 0;
    bool first = true;
    for (;;) {
      mp::Bytes b;
      try {
        b = q.get_nowait();
      } catch (const mp::Empty&) {
        break;
      }
      std::uint32_t r = 0;
      std::uint64_t k = 0;
      ASSERT_TRUE(parse(b, r, k)) << "round " << round;
      ASSERT_EQ(r, round);
      if (!first) {
        ASSERT_GT(k, last) << "round " << round;
      }
      last = k;
      first = false;
    }
    ASSERT_EQ(q.qsize(), 0u);
    // The survivors still exchange every later message, small and out of line.
    for (std::uint64_t k = 0; k < 20; ++k) q.put(tagged(0, k), kWait);
    for (std::uint64_t k = 0; k < 20; ++k) ASSERT_TRUE(q.get(kWait) == tagged(0, k)) << "round " << round;
  }
  EXPECT_GE(rounds, 20);
  RecordProperty("lock_recoveries", recoveries.load());
  std::printf("%d rounds, %d kills landed while the queue's lock was held\n", rounds, recoveries.load());
  mp::get_logger().clear_handlers();
}

namespace {
// Item k of round r: about 1 MiB (out of line, in a recycled segment), every byte derived from
// (r, k), so that a segment written while another process still reads it shows.
mp::Bytes large_item(std::uint32_t round, std::uint64_t k) {
  mp::Bytes b((1 << 20) + (k % 3) * 65536, static_cast<std::byte>(round * 31 + k * 7));
  std::memcpy(b.data(), &round, sizeof round);
  std::memcpy(b.data() + 4, &k, sizeof k);
  return b;
}

bool large_item_intact(const mp::Bytes& b, std::uint32_t round) {
  std::uint32_t r = 0;
  std::uint64_t k = 0;
  if (b.size() < 12) return false;
  std::memcpy(&r, b.data(), sizeof r);
  std::memcpy(&k, b.data() + 4, sizeof k);
  return r == round && b == large_item(round, k);
}

void produce_large_forever(mp::Queue<mp::Bytes> q, std::uint32_t round) {
  for (std::uint64_t k = 0;; ++k) q.put(large_item(round, k));
}
}  // namespace

TEST(QueueFault, large_items_in_recycled_segments_stay_intact_while_their_holders_are_killed) {
  mp::Queue<mp::Bytes> q;
  std::mt19937 rng(777);
  const auto t0 = Clock::now();
  int rounds = 0;
  for (std::uint32_t round = 1; round <= 40 && Clock::now() - t0 < 20s; ++round, ++rounds) {
    mp::Process producer(mp::get_context("fork"), produce_large_forever, q, round);
    mp::Process consumer(mp::get_context("fork"), consume_forever, q);  // takes and returns segments
    producer.start();
    consumer.start();
    // This process takes some too, each checked byte by byte, while the two children come and go.
    const int mine = static_cast<int>(rng() % 20);
    for (int i = 0; i < mine; ++i) {
      mp::Bytes b = q.get(kWait);
      ASSERT_TRUE(large_item_intact(b, round)) << "round " << round;
    }
    if (rng() % 2) {
      kill_and_reap(producer);
      kill_and_reap(consumer);
    } else {
      kill_and_reap(consumer);
      kill_and_reap(producer);
    }
    for (;;) {
      mp::Bytes b;
      try {
        b = q.get_nowait();
      } catch (const mp::Empty&) {
        break;
      }
      ASSERT_TRUE(large_item_intact(b, round)) << "round " << round;
    }
  }
  EXPECT_GE(rounds, 10);
  // The survivors still exchange large items.
  for (std::uint64_t k = 0; k < 10; ++k) q.put(large_item(0, k), kWait);
  for (std::uint64_t k = 0; k < 10; ++k) ASSERT_TRUE(q.get(kWait) == large_item(0, k));
}

namespace {
void put_one_and_exit(mp::Queue<int> q) {
  q.put(42);
  ::_exit(0);  // no cleanup: the item must already be in the queue
}
void put_until_killed(mp::Queue<int> q) {
  for (;;) q.put(7);  // a bounded queue: blocks in put once full
}
}  // namespace

TEST(QueueFault, a_consumer_of_a_queue_whose_producers_died_still_honours_its_timeout) {
  mp::Queue<int> q(4);
  mp::Process p1(mp::get_context("fork"), put_one_and_exit, q);
  p1.start();
  p1.join();
  mp::Process p2(mp::get_context("fork"), put_until_killed, q);
  p2.start();
  EXPECT_EQ(q.get(kWait), 42);
  // p2 fills the queue and blocks; kill it while blocked (or mid-put), then drain
  const auto deadline = Clock::now() + kWait;
  while (!q.full() && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
  kill_and_reap(p2);
  while (true) {
    try {
      EXPECT_EQ(q.get_nowait(), 7);
    } catch (const mp::Empty&) {
      break;
    }
  }
  const auto t0 = Clock::now();
  EXPECT_THROW(q.get(200ms), mp::Empty);
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_GE(s, 0.199);
  EXPECT_LT(s, 2.0);
}

TEST(QueueFault, a_put_waiting_on_a_full_queue_whose_consumers_died_honours_its_timeout) {
  mp::Queue<int> q(1);
  q.put(1);
  mp::Process c(mp::get_context("fork"), [](mp::Queue<int> qq) { (void)qq.get(); for (;;) ::pause(); }, q);
  c.start();
  const auto deadline = Clock::now() + kWait;
  while (!q.empty() && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
  q.put(2);
  kill_and_reap(c);
  const auto t0 = Clock::now();
  EXPECT_THROW(q.put(3, 200ms), mp::Full);
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_GE(s, 0.199);
  EXPECT_LT(s, 2.0);
  EXPECT_EQ(q.get(), 2);
}
