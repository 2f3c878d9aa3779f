// The threads of this process as the kernel sees them (/proc/self/task), for the check that a
// fork start does not copy a process whose other threads may hold locks.
#pragma once

#include <vector>

namespace mp::detail::posix {

/// The kernel thread ids (tids) of this process's threads, the caller's included; empty when
/// /proc is not mounted or unreadable (the caller then cannot tell, and must not guess).
std::vector<int> thread_ids();

/// True when thread tid of this process blocks every signal that can be blocked (its SigBlk in
/// /proc/self/task/<tid>/status). Sanitizer runtimes start their helper threads that way.
bool blocks_every_signal(int tid);

/// The calling thread's kernel thread id (gettid(2)).
int current_tid() noexcept;

}  // namespace mp::detail::posix
