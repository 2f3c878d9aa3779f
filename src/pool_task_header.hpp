// The header of a pool task message: the code references of a job's runner and task function.
// The local workers (src/pool.cpp) and the MPI ranks (src/mpi/) receive the same bytes.
#pragma once

#include <multiprocessing/detail/pool_job.hpp>
#include <multiprocessing/reduction.hpp>

#include <algorithm>
#include <span>
#include <tuple>

#include "posix/process.hpp"

namespace mp::detail {

using TaskHeader = std::tuple<posix::CodeRef, bool, posix::CodeRef>;

/// The header of the tasks of a job running `fn` through `runner` (fn may be null).
inline Bytes encode_task_header(PoolRunner runner, ErasedFn fn) {
  TaskHeader h;
  std::get<0>(h) = posix::code_ref_of(reinterpret_cast<std::uintptr_t>(runner));
  std::get<1>(h) = fn != nullptr;
  if (fn) std::get<2>(h) = posix::code_ref_of(reinterpret_cast<std::uintptr_t>(fn));
  return mp::dumps(h);
}

/// A worker's last decoded header: a stream of tasks of one job resolves its code references once.
class TaskHeaderCache {
 public:
  /// Resolves `header` unless it is the last one; throws (and forgets the last) when it is bad.
  void resolve(std::span<const std::byte> header) {
    if (runner_ && std::equal(header.begin(), header.end(), last_.begin(), last_.end())) return;
    runner_ = nullptr;
    auto [runner_ref, has_fn, fn_ref] = mp::loads<TaskHeader>(header);
    auto runner = reinterpret_cast<PoolRunner>(posix::resolve_code_ref(runner_ref));
    fn_ = has_fn ? reinterpret_cast<ErasedFn>(posix::resolve_code_ref(fn_ref)) : nullptr;
    runner_ = runner;
    last_.assign(header.begin(), header.end());
  }
  PoolRunner runner() const noexcept { return runner_; }
  ErasedFn fn() const noexcept { return fn_; }

 private:
  Bytes last_;
  PoolRunner runner_ = nullptr;
  ErasedFn fn_ = nullptr;
};

}  // namespace mp::detail
