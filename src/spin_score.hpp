// Adaptive spinning before a blocking wait, as an adaptive mutex does it. A waiter woken from a
// sleep by an inter-CPU interrupt pays ~20 us on a VM; one that retries for a short budget first
// catches a quick reply without sleeping. So a waiter spins while spinning pays off (the other
// side answers within the spin: it runs on another CPU), stops after spins that ended in a sleep
// (a slow peer, or both sides on one CPU, where spinning only keeps the peer from running), and
// probes again every so many waits. Spins never yield: on a loaded machine a yield can hand the
// CPU away for a whole time slice. Used by Connection's reads, the handshake and the pool.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>

namespace mp::detail {

/// How long one spin lasts.
inline constexpr auto kSpinBudget = std::chrono::microseconds(20);

/// Whether to spin, learnt from how past spins ended. Relaxed atomics: any thread may update it,
/// and a lost update only moves a heuristic.
class SpinScore {
 public:
  /// probe_every: while spinning does not pay off, one wait in this many spins anyway.
  explicit SpinScore(unsigned probe_every = 256) noexcept : probe_every_(probe_every) {}

  /// Whether this wait should spin first.
  bool should_spin() noexcept {
    return score_.load(std::memory_order_relaxed) > 0 ||
           (probe_.fetch_add(1, std::memory_order_relaxed) + 1) % probe_every_ == 0;
  }
  /// A spin caught the other side.
  void caught() noexcept { score_.store(std::min(score_.load(std::memory_order_relaxed) + 1, kMax), std::memory_order_relaxed); }
  /// A spin ended in a sleep: counts twice as much as a catch.
  void missed() noexcept { score_.store(std::max(score_.load(std::memory_order_relaxed) - 2, 0), std::memory_order_relaxed); }

 private:
  static constexpr int kStart = 4, kMax = 16;
  std::atomic<int> score_{kStart};
  std::atomic<unsigned> probe_{0};
  unsigned probe_every_;
};

}  // namespace mp::detail
