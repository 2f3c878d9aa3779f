// Processes (Python: multiprocessing.process, the Process class and its module functions).
//
// mp::Process runs a target in a child process started by the start method of its context
// (see context.hpp): fork (default), spawn or forkserver.
//
//   mp::Process p(work, 42);            // work(42) in a child
//   p.start();
//   p.join();                           // p.exitcode(): 0, N from std::exit(N), 1 if it threw, -SIG
//
// Under fork any callable with copyable (or movable) arguments works, captures included, and a
// subclass may override run(). Under spawn and forkserver the target crosses "by name": a
// function pointer, a captureless lambda or a default-constructible stateless function object,
// with arguments the native codec encodes (handles like mp::Connection included); anything else
// makes start() throw std::invalid_argument naming the type. A subclass overriding run() works
// under fork only (its members cannot be sent).
//
// Programs using spawn or forkserver call mp::freeze_support(argc, argv) first in main().
#pragma once

#include <multiprocessing/base.hpp>
#include <multiprocessing/context.hpp>
#include <multiprocessing/detail/process_target.hpp>

#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace mp {

namespace detail {
struct ProcessAccess;
}

class Process {
 public:
  /// A process whose run() does nothing unless a subclass overrides it.
  Process();

  /// A process that runs target(args...) with copies of the arguments; the start method is the
  /// default one at start() time.
  template <class F, class... Args>
    requires(!std::is_base_of_v<Context, std::remove_cvref_t<F>> && !std::is_base_of_v<Process, std::remove_cvref_t<F>> &&
             !std::is_same_v<std::remove_cvref_t<F>, detail::ProcessTarget>)
  explicit Process(F&& target, Args&&... args)
      : Process(detail::make_process_target(std::forward<F>(target), std::forward<Args>(args)...), nullptr) {}

  /// The same with the start method of ctx.
  template <class F, class... Args>
  Process(const Context& ctx, F&& target, Args&&... args)
      : Process(detail::make_process_target(std::forward<F>(target), std::forward<Args>(args)...), &ctx) {}

  /// Movable: the moved-to object takes over the child (active_children() reports it); a
  /// moved-from Process only accepts destruction and assignment.
  Process(Process&& other) noexcept;
  /// Assigning over a Process whose child still runs leaves that child running, as ~Process.
  Process& operator=(Process&& other) noexcept;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  /// Never kills the child: one still running is kept in a process-wide list, reaped by
  /// active_children() and joined (daemonic: terminated) when this process exits.
  virtual ~Process();

  /// Calls target(args...) (nothing without a target). Runs in the child after start(); may be
  /// called directly too.
  virtual void run();

  /// Starts the child. std::logic_error when called twice, after close(), from a daemonic
  /// process, or in a spawned child whose main() has not called freeze_support yet;
  /// std::invalid_argument when the target cannot cross to a spawn/forkserver child;
  /// std::system_error when the OS refuses.
  void start();

  /// Waits until the child ends (forever). std::logic_error before start(), after close(), or in
  /// a process other than the one that started it.
  void join();
  /// Waits up to timeout; true when the child has ended.
  bool join(Duration timeout);
  /// True from start() until the child ends (reaps it without blocking).
  bool is_alive();

  /// "Process-N" by default; a child's children are "Process-N:M".
  std::string name() const;
  void set_name(std::string name);
  /// Set before start(): a daemonic child is terminated when its parent exits, and may not
  /// start children of its own. std::logic_error after start().
  bool daemon() const;
  void set_daemon(bool daemonic);
  /// nullopt before start().
  std::optional<int> pid() const;
  /// nullopt while running (or before start); 0 ok; N for std::exit(N); 1 when run() threw;
  /// -N when killed by signal N. Reaps the child without blocking.
  std::optional<int> exitcode() const;
  /// The authentication key: inherited from the parent; 32 random bytes in the main process.
  Bytes authkey() const;
  void set_authkey(Bytes key);
  /// An fd (O_CLOEXEC) that becomes readable when the process ends; for poll() or
  /// mp::connection::wait. std::logic_error before start() or after close().
  int sentinel() const;
  /// SIGTERM / SIGKILL to the child; nothing once it has ended and been reaped.
  void terminate();
  void kill();
  /// Releases the sentinel and the rest; afterwards every call but name/daemon/authkey throws
  /// std::logic_error. std::logic_error while the child still runs; a second close() does nothing.
  void close();

  struct Impl;

 private:
  friend struct detail::ProcessAccess;
  Process(detail::ProcessTarget target, const Context* ctx);
  explicit Process(std::unique_ptr<Impl> impl) noexcept;
  Impl& impl() const;

  std::unique_ptr<Impl> impl_;
};

/// The Process object of this process: name() "MainProcess" in the main process. Cheap and safe
/// to call at any time (the logger calls it for every record).
Process& current_process();
/// The parent of a child process (name, pid, is_alive, join with a timeout, sentinel); nullptr in
/// the main process.
Process* parent_process();
/// Live children started by this process whose Process object still exists; reaps (and drops)
/// the ones that have ended.
std::vector<Process*> active_children();
/// CPUs this process may use: its affinity mask, limited by the cgroup v2 CPU quota; at least 1.
int cpu_count();

/// First statement of main(). In a child started by spawn or forkserver (argv[1] is
/// "--multiprocessing-fork" or "--multiprocessing-forkserver") it runs the child's work, or the
/// server, and exits without returning. Otherwise it remembers argv (spawn runs its children
/// with the same argv[0]) and returns.
void freeze_support(int argc, char** argv);

}  // namespace mp
