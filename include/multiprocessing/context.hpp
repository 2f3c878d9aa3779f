// Start methods and contexts (Python: multiprocessing.context).
//
// A start method says how a child process begins:
// - "fork" (the default): fork() of the parent; the child runs the target on a copy of the
//   parent's memory, so any callable with any copyable arguments works.
// - "spawn": a fresh run of this executable (posix_spawn); the target crosses "by name" (a
//   function pointer, a captureless lambda or a stateless function object) and its arguments
//   through the native codec. main() must call mp::freeze_support(argc, argv) first.
// - "forkserver": a server process, started on first use as a fresh run of this executable,
//   forks each child; same rules as spawn, faster starts.
#pragma once

#include <multiprocessing/base.hpp>

#include <string>
#include <string_view>
#include <vector>

namespace mp {

/// A start method to start processes with (Python's context objects). A small value type: copy
/// it freely. Later modules add their factories (Queue, Lock, Pool, ...) bound to its method.
class Context {
 public:
  /// The context of the current default start method (as get_context()).
  Context();
  /// std::invalid_argument for a method that is not one of get_all_start_methods().
  explicit Context(std::string_view method);

  /// "fork", "spawn", "forkserver" or "mpi".
  std::string start_method() const { return method_; }

  friend bool operator==(const Context&, const Context&) = default;

 private:
  std::string method_;
};

/// The context of a start method; an empty method is the current default (which fixes the
/// default, as in Python: a later set_start_method() without force throws). Unknown method:
/// std::invalid_argument.
Context get_context(std::string_view method = {});

/// Sets the default start method. Unknown method: std::invalid_argument. When the default has
/// already been set (by this call, or fixed by get_start_method(), get_context() or a Process
/// started with the default), std::logic_error "context has already been set" unless force.
/// force with an empty method resets to the unset state (Python's set_start_method(None, force=True)).
void set_start_method(std::string_view method, bool force = false);

/// The default start method ("fork" unless set); fixes it, as in Python.
std::string get_start_method();

/// {"fork", "spawn", "forkserver"}, and "mpi" when the library was built with MPI (a Pool of the
/// "mpi" context runs its tasks on MPI ranks: docs/cluster.rst).
std::vector<std::string> get_all_start_methods();

/// The program that spawn and the forkserver run (default: this executable, /proc/self/exe).
/// It must be a build of the same program: its main() calls mp::freeze_support(argc, argv).
void set_executable(std::string path);

/// What starting a "fork" child (a Process, or a pool worker, of the fork context) does when this
/// process runs other threads. fork() copies only the calling thread: a lock another thread held
/// at that moment stays locked in the child for good. Python 3.12+ warns the same way.
enum class ForkWithThreads {
  allow,  ///< say nothing
  warn,   ///< the default: one warning per process on mp::get_logger(), then debug records
  error,  ///< throw ForkWithThreadsError from start(); nothing is forked
};

/// Thrown by Process::start() (and so by a Pool starting a worker) under the fork start method
/// when the process runs other threads and set_fork_with_threads(ForkWithThreads::error) is set.
class ForkWithThreadsError : public ProcessError {
 public:
  using ProcessError::ProcessError;
};

/// Sets the policy for every later fork start of this process (fork children inherit it); threads the
/// library starts itself and that never hold a lock a child needs are not counted.
void set_fork_with_threads(ForkWithThreads policy);
ForkWithThreads get_fork_with_threads();

}  // namespace mp
