// Lock/unlock storms across processes while holders are killed at random (SIGKILL): the
// survivors never hang, mutual exclusion is never violated, and the shared counter matches the
// work the survivors and the dead recorded. Scaled by the environment variable MP_STRESS_SCALE.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "posix/fd.hpp"
#include "shared_block.hpp"

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kWait = 60s;
constexpr int kWorkers = 4;
constexpr int kKills = 3;

int scale() {
  const char* s = std::getenv("MP_STRESS_SCALE");
  int n = s ? std::atoi(s) : 1;
  return std::max(1, n);
}

// Layout of the shared longs.
enum : std::size_t { kCounter = 0, kOwner, kViolations, kRecoveries, kDone };

class SharedInts {
 public:
  SharedInts() = default;
  explicit SharedInts(std::size_t n) : block_(mp::detail::SharedBlock::create(n * sizeof(std::atomic<long>), "stress-ints")) {}
  std::atomic<long>& operator[](std::size_t i) const { return static_cast<std::atomic<long>*>(block_->data())[i]; }

 private:
  std::shared_ptr<mp::detail::SharedBlock> block_;
};

template <class L>
void worker(L lock, SharedInts ints, std::size_t slot, int iterations) {
  const long me = ::getpid();
  for (int i = 0; i < iterations; ++i) {
    if (!lock.acquire(true, kWait)) std::_Exit(3);
    ints[kOwner].store(me);
    if (i % 500 == 0) std::this_thread::sleep_for(1ms);  // holds it long enough to be killed holding it
    if (i % 8 == 0) std::this_thread::yield();
    if (ints[kOwner].load() != me) ints[kViolations].fetch_add(1);
    long seen = ints[kCounter].load(std::memory_order_relaxed);  // a two-step increment: only exclusion keeps it
    ints[kCounter].store(seen + 1, std::memory_order_relaxed);
    ints[kDone + slot].fetch_add(1);
    lock.release();
  }
}

template <class L>
void storm(const char* name) {
  mp::get_logger().clear_handlers();
  const int iterations = 20000 * scale();
  SharedInts ints(kDone + kWorkers);
  // Fork children inherit this handler: each recovery in any worker is counted in shared memory.
  mp::get_logger().add_handler([ints](int, std::string_view, std::string_view message) {
    if (message.find("recovered") != std::string_view::npos) ints[kRecoveries].fetch_add(1);
  });
  L lock;
  auto ctx = mp::get_context("fork");
  std::vector<mp::Process> ps;
  for (std::size_t i = 0; i < kWorkers; ++i) ps.emplace_back(ctx, worker<L>, lock, ints, i, iterations);
  for (auto& p : ps) p.start();

  std::mt19937 rng(12345);
  std::vector<bool> killed(kWorkers, false);
  int kills = 0;
  const auto give_up = Clock::now() + kWait;
  while (kills < kKills && Clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5 + rng() % 20));
    long owner = ints[kOwner].load();
    for (std::size_t i = 0; i < kWorkers; ++i) {
      if (!killed[i] && ps[i].pid() == owner && ps[i].is_alive()) {
        ::kill(static_cast<pid_t>(owner), SIGKILL);
        killed[i] = true;
        ++kills;
        break;
      }
    }
    if (std::none_of(ps.begin(), ps.end(), [](mp::Process& p) { return p.is_alive(); })) break;
  }
  long done = 0;
  for (std::size_t i = 0; i < kWorkers; ++i) {
    ASSERT_TRUE(ps[i].join(kWait)) << name << ": a survivor hung";
    if (killed[i]) {
      EXPECT_EQ(ps[i].exitcode(), -SIGKILL);
    } else {
      EXPECT_EQ(ps[i].exitcode(), 0) << name << ": worker " << i;
      EXPECT_EQ(ints[kDone + i].load(), iterations);
    }
    done += ints[kDone + i].load();
  }
  mp::get_logger().clear_handlers();
  EXPECT_EQ(ints[kViolations].load(), 0) << name << ": two processes inside at once";
  // A worker killed between its two increments leaves the counter one ahead of its record.
  EXPECT_GE(ints[kCounter].load(), done);
  EXPECT_LE(ints[kCounter].load(), done + kills);
  EXPECT_EQ(kills, kKills) << name << ": the workers ended before they could be killed";
  // Not every kill hits a holder, but with 1 ms holds most do.
  EXPECT_GE(ints[kRecoveries].load(), 1) << name << ": no kill hit a holder";
  EXPECT_TRUE(lock.acquire(true, 5s));
  lock.release();
}

}  // namespace

TEST(SynchronizeStress, lock_storm_with_holders_killed_keeps_exclusion_and_count) { storm<mp::Lock>("Lock"); }

TEST(SynchronizeStress, rlock_storm_with_holders_killed_keeps_exclusion_and_count) { storm<mp::RLock>("RLock"); }
