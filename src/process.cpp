// mp::Process and the per-process state behind current_process(), parent_process() and
// active_children() (Python: multiprocessing/process.py).
#include <multiprocessing/logging.hpp>
#include <multiprocessing/process.hpp>

#include <cxxabi.h>

#include <csignal>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>

#include "process_impl.hpp"
#include "mpi/mpi_backend.hpp"

namespace mp {

namespace detail {

struct ProcessAccess {
  static Process* make(std::unique_ptr<Process::Impl> impl) { return new Process(std::move(impl)); }
  static Process::Impl& impl(Process& p) { return *p.impl_; }
};

namespace {

// Per-process state. Never destroyed: the atexit handler, forked children and the logger (which
// asks for the process name on every record) use it until the very end.
struct Globals {
  // Guards children and orphans only (never held while waiting for a child). Held across fork()
  // by the pthread_atfork handlers, so that a child never starts with it locked by a thread that
  // does not exist there.
  std::mutex mutex;
  // Started children of this process whose Process object exists (Impl::owner).
  std::vector<Process::Impl*> children;
  // Children whose Process object was destroyed (or assigned over) while they still ran:
  // kept so that they are reaped by active_children() and joined at exit, never killed.
  std::vector<std::unique_ptr<Process::Impl>> orphans;
  Process* current = nullptr;
  Process* parent = nullptr;
  // What a fork child inherited and must neither use nor destroy (destructors would act on the
  // parent's resources): the parent's orphans and the grandparent's Process object. Kept here
  // rather than dropped, so that they stay reachable (no leak reports) for the child's life.
  std::vector<std::unique_ptr<Process::Impl>> inherited_orphans;
  std::vector<Process*> former_parents;
  int counter = 0;  // Python's _process_counter: numbers the children created here
  std::atomic<bool> exit_handler_registered{false};
  bool exit_function_ran = false;
};

Globals& globals() {
  static Globals* g = [] {
    auto* created = new Globals;
    auto impl = std::make_unique<Process::Impl>();
    impl->kind = Process::Impl::Kind::current;
    impl->name = "MainProcess";
    impl->pid = posix::current_pid();
    impl->authkey = posix::random_bytes(32);
    created->current = ProcessAccess::make(std::move(impl));
    posix::at_fork([] { globals().mutex.lock(); }, [] { globals().mutex.unlock(); },
                   [] { globals().mutex.unlock(); });
    return created;
  }();
  return *g;
}

Process::Impl& current_impl() { return ProcessAccess::impl(*globals().current); }

void erase_child(Process::Impl* impl) {
  auto& g = globals();
  std::lock_guard lock(g.mutex);
  std::erase(g.children, impl);
}

// Exit codes of finished orphans are no longer wanted: reap and forget them.
void reap_orphans_locked(Globals& g) {
  std::erase_if(g.orphans, [](const std::unique_ptr<Process::Impl>& impl) {
    try {
      return impl->popen->poll().has_value();
    } catch (...) {
      return true;
    }
  });
}

std::string identity_name(const std::vector<int>& identity) {
  std::string name = "Process-";
  for (std::size_t i = 0; i < identity.size(); ++i) {
    if (i) name += ':';
    name += std::to_string(identity[i]);
  }
  return name;
}

void flush_std_streams() noexcept {
  try {
    std::cout.flush();
    std::cerr.flush();
  } catch (...) {
  }
  std::fflush(nullptr);
}

// Python's util._exit_function: terminate the daemonic children, then join every child. Runs
// at the end of a child's bootstrap and from atexit in each process that started children; in
// a forked child the lists hold only that child's own children (become_child cleared them).
void exit_function() noexcept {
  auto& g = globals();
  if (g.exit_function_ran) return;
  g.exit_function_ran = true;
  try {
    auto& log = get_logger();
    log.info("process shutting down");
    std::vector<Process::Impl*> live;
    {
      std::lock_guard lock(g.mutex);
      for (auto* c : g.children) live.push_back(c);
      for (auto& o : g.orphans) live.push_back(o.get());
    }
    for (auto* c : live) {
      if (c->daemon && !c->popen->poll()) {
        log.info("calling terminate() for daemon " + c->name);
        c->popen->send_signal(SIGTERM);
      }
    }
    for (auto* c : live) {
      log.info("calling join() for process " + c->name);
      c->popen->wait(std::nullopt);
    }
  } catch (...) {
  }
}

void register_exit_handler() {
  auto& g = globals();
  if (g.exit_handler_registered.exchange(true)) return;
  // The logger is created first so that it outlives the handler (atexit runs in reverse order
  // of registration, static destructors included).
  (void)get_logger();
  std::atexit([] { exit_function(); });
}

void print_traceback(const std::string& process_name) {
  std::string type = "unknown exception";
  if (const std::type_info* t = abi::__cxa_current_exception_type()) type = demangle(*t);
  std::string what;
  try {
    throw;
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
  }
  // One fwrite on the unbuffered stderr: one write(2), so the lines stay together.
  std::string text = "Process " + process_name + ":\nTraceback (most recent call last):\n  (an exception escaped run())\n" +
                     type + (what.empty() ? std::string() : ": " + what) + "\n";
  std::fflush(stdout);
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
}

[[noreturn]] void throw_closed() { throw std::logic_error("process object is closed"); }

}  // namespace

std::string demangle(const std::type_info& type) {
  int status = 0;
  char* name = abi::__cxa_demangle(type.name(), nullptr, nullptr, &status);
  std::string out = status == 0 && name ? name : type.name();
  std::free(name);
  return out;
}

void Popen::send_signal(int sig) {
  // Once the child has ended (and been reaped) its pid may belong to another process.
  if (!poll()) posix::send_signal(pid_, sig);
}

std::optional<int> PopenPidfd::wait(const posix::Deadline& deadline) {
  if (returncode_) return returncode_;
  // The pidfd becomes readable when the child has ended; only then is waitpid sure not to block.
  if (!posix::wait_readable(pidfd_.get(), deadline)) return std::nullopt;
  returncode_ = posix::try_reap(pid_);
  if (!returncode_) {
    // Readable but not yet reapable cannot happen for an ended child; wait for it to be sure.
    returncode_ = posix::reap(pid_);
  }
  return returncode_;
}

void become_child(const Preparation& prep, posix::UniqueFd parent_sentinel) {
  auto& g = globals();
  auto& cur = current_impl();
  cur.name = prep.name;
  cur.identity = prep.identity;
  cur.authkey = prep.authkey;
  cur.daemon = prep.daemon;
  cur.pid = posix::current_pid();
  g.counter = 0;
  // The parent's children are not ours: forget them without running their destructors (their
  // targets may hold objects whose destruction would act on the parent's resources).
  g.children.clear();
  for (auto& o : g.orphans) g.inherited_orphans.push_back(std::move(o));
  g.orphans.clear();
  g.exit_function_ran = false;
  auto impl = std::make_unique<Process::Impl>();
  impl->kind = Process::Impl::Kind::parent;
  impl->name = prep.parent_name;
  impl->pid = prep.parent_pid;
  impl->authkey = prep.authkey;
  impl->parent_ended = !parent_sentinel;
  impl->parent_sentinel = std::move(parent_sentinel);
  if (g.parent) g.former_parents.push_back(g.parent);
  g.parent = ProcessAccess::make(std::move(impl));
}

int bootstrap(const std::function<void()>& body) {
  auto& log = get_logger();
  int code = 0;
  try {
    log.info("child process calling self.run()");
    body();
  } catch (...) {
    code = 1;
    print_traceback(current_impl().name);
  }
  exit_function();
  try {
    log.info("process exiting with exitcode " + std::to_string(code));
  } catch (...) {
  }
  flush_std_streams();
  return code;
}

}  // namespace detail

using detail::globals;
namespace posix = detail::posix;

// ---- Process ----

Process::Process() : impl_(std::make_unique<Impl>()) {
  auto& g = globals();
  auto& cur = detail::current_impl();
  int n;
  {
    std::lock_guard lock(g.mutex);
    n = ++g.counter;
  }
  impl_->identity = cur.identity;
  impl_->identity.push_back(n);
  impl_->name = detail::identity_name(impl_->identity);
  impl_->authkey = cur.authkey;
  impl_->daemon = cur.daemon;
  impl_->owner = this;
}

Process::Process(detail::ProcessTarget target, const Context* ctx) : Process() {
  impl_->target = std::move(target);
  if (ctx) impl_->method = ctx->start_method();
}

Process::Process(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) { impl_->owner = this; }

Process::Process(Process&& other) noexcept {
  // Under the registry lock: active_children() in another thread reads owner.
  std::lock_guard lock(globals().mutex);
  impl_ = std::move(other.impl_);
  if (impl_) impl_->owner = this;
}

namespace {

// What ~Process and assignment do with the Impl they drop.
void release_impl(std::unique_ptr<Process::Impl> impl) noexcept {
  if (!impl || impl->kind != Process::Impl::Kind::child || !impl->popen) return;
  auto& g = globals();
  std::lock_guard lock(g.mutex);
  auto it = std::find(g.children.begin(), g.children.end(), impl.get());
  if (it == g.children.end()) return;  // not ours (a forked copy), or already reaped
  g.children.erase(it);
  bool running = false;
  try {
    running = !impl->popen->poll().has_value();
  } catch (...) {
  }
  if (running) {
    impl->owner = nullptr;
    g.orphans.push_back(std::move(impl));
  }
}

}  // namespace

Process& Process::operator=(Process&& other) noexcept {
  if (this == &other) return *this;
  std::unique_ptr<Impl> old;
  {
    std::lock_guard lock(globals().mutex);
    old = std::move(impl_);
    impl_ = std::move(other.impl_);
    if (impl_) impl_->owner = this;
  }
  release_impl(std::move(old));
  return *this;
}

Process::~Process() { release_impl(std::move(impl_)); }

Process::Impl& Process::impl() const {
  if (!impl_) throw std::logic_error("mp::Process: use of a moved-from Process");
  return *impl_;
}

void Process::run() {
  auto& im = impl();
  if (im.target.call) im.target.call();
}

void Process::start() {
  auto& im = impl();
  if (im.closed) detail::throw_closed();
  if (im.kind != Impl::Kind::child) throw std::logic_error("can only start a process object created by the current process");
  if (im.popen) throw std::logic_error("cannot start a process twice");
  if (detail::current_impl().daemon) throw std::logic_error("daemonic processes are not allowed to have children");
  detail::check_freeze_support_ran();
  std::string method = im.method ? *im.method : detail::actual_start_method();

  detail::StartRequest request{*this, im, {}, {}};
  auto& prep = request.prep;
  const auto& cur = detail::current_impl();
  prep.name = im.name;
  prep.identity = im.identity;
  prep.authkey = im.authkey;
  prep.daemon = im.daemon;
  prep.parent_pid = posix::current_pid();
  prep.parent_name = cur.name;

  {
    // Python's _cleanup(): drop the children that have ended.
    auto& g = globals();
    std::lock_guard lock(g.mutex);
    detail::reap_orphans_locked(g);
  }
  detail::register_exit_handler();

  std::unique_ptr<detail::Popen> popen;
  if (method == "fork") {
    popen = detail::popen_fork(request);
  } else {
    const auto& t = im.target;
    if (typeid(*this) != typeid(Process)) {
      throw std::invalid_argument("mp::Process: " + detail::demangle(typeid(*this)) +
                                  " is a subclass of mp::Process; its run() and members cannot cross to a " + method +
                                  " child, so it works under the fork start method only");
    }
    if (t.call && !t.entry) {
      throw std::invalid_argument("mp::Process: the target " + detail::demangle(*t.type) + " cannot start under " +
                                  method + ": " + t.why_not);
    }
    prep.log = detail::log_config();
    if (t.entry) {
      prep.has_entry = true;
      prep.entry = posix::code_ref_of(reinterpret_cast<std::uintptr_t>(t.entry));
      if (t.fn) {
        prep.has_fn = true;
        prep.fn = posix::code_ref_of(reinterpret_cast<std::uintptr_t>(t.fn));
      }
      if (t.encode_args) {
        // Handles in the arguments register their fds with the FdExport while being encoded;
        // the fds stay owned by the handles, which the target keeps alive.
        detail::FdExport exported;
        prep.args = t.encode_args();
        request.handle_fds = exported.fds();
      }
    }
    // A Process of the "mpi" context is a local child of this rank, started as spawn would.
    popen = method == "spawn" || method == "mpi" ? detail::popen_spawn(request) : detail::popen_forkserver(request);
  }
  im.popen = std::move(popen);
  im.starter_pid = posix::current_pid();
  {
    auto& g = globals();
    std::lock_guard lock(g.mutex);
    g.children.push_back(&im);
  }
  auto& log = get_logger();
  if (log.is_enabled_for(levels::debug))
    log.debug("started " + im.name + " (pid " + std::to_string(im.popen->pid()) + ", start method " + method + ")");
}

namespace {

bool join_until(Process::Impl& im, const posix::Deadline& deadline) {
  if (im.closed) detail::throw_closed();
  if (im.kind == Process::Impl::Kind::parent) {
    if (im.parent_ended) return true;
    if (!posix::wait_readable(im.parent_sentinel.get(), deadline)) return false;
    im.parent_ended = true;
    return true;
  }
  if (im.kind == Process::Impl::Kind::current) throw std::logic_error("can only join a child process");
  if (!im.popen) throw std::logic_error("can only join a started process");
  if (im.starter_pid != posix::current_pid()) throw std::logic_error("can only join a child process");
  if (!im.popen->wait(deadline)) return false;
  detail::erase_child(&im);
  return true;
}

}  // namespace

void Process::join() { join_until(impl(), std::nullopt); }

bool Process::join(Duration timeout) { return join_until(impl(), posix::deadline_after(timeout)); }

bool Process::is_alive() {
  auto& im = impl();
  if (im.closed) detail::throw_closed();
  switch (im.kind) {
    case Impl::Kind::current:
      return true;
    case Impl::Kind::parent:
      return !join_until(im, std::chrono::steady_clock::time_point{});
    case Impl::Kind::child:
      break;
  }
  if (!im.popen) return false;
  if (im.starter_pid != posix::current_pid()) throw std::logic_error("can only test a child process");
  if (!im.popen->poll()) return true;
  detail::erase_child(&im);
  return false;
}

std::string Process::name() const { return impl().name; }
void Process::set_name(std::string name) { impl().name = std::move(name); }

bool Process::daemon() const { return impl().daemon; }
void Process::set_daemon(bool daemonic) {
  auto& im = impl();
  if (im.popen) throw std::logic_error("process has already started");
  im.daemon = daemonic;
}

std::optional<int> Process::pid() const {
  auto& im = impl();
  if (im.closed) detail::throw_closed();
  if (im.kind != Impl::Kind::child) return im.pid;
  if (!im.popen) return std::nullopt;
  return im.popen->pid();
}

std::optional<int> Process::exitcode() const {
  auto& im = impl();
  if (im.closed) detail::throw_closed();
  if (!im.popen) return std::nullopt;
  return im.popen->poll();
}

Bytes Process::authkey() const { return impl().authkey; }
void Process::set_authkey(Bytes key) { impl().authkey = std::move(key); }

int Process::sentinel() const {
  auto& im = impl();
  if (im.closed) detail::throw_closed();
  if (im.kind == Impl::Kind::parent && im.parent_sentinel) return im.parent_sentinel.get();
  if (!im.popen) throw std::logic_error("process not started");
  return im.popen->sentinel();
}

void Process::terminate() {
  auto& im = impl();
  if (im.closed) detail::throw_closed();
  if (im.popen) im.popen->send_signal(SIGTERM);
}

void Process::kill() {
  auto& im = impl();
  if (im.closed) detail::throw_closed();
  if (im.popen) im.popen->send_signal(SIGKILL);
}

void Process::close() {
  auto& im = impl();
  if (im.closed) return;
  if (im.popen) {
    if (!im.popen->poll())
      throw std::logic_error("Cannot close a process while it is still running. You should first call join() or terminate().");
    detail::erase_child(&im);
    im.popen.reset();
  }
  im.closed = true;
}

// ---- module functions ----

Process& current_process() { return *globals().current; }

Process* parent_process() { return globals().parent; }

std::vector<Process*> active_children() {
  auto& g = globals();
  std::lock_guard lock(g.mutex);
  detail::reap_orphans_locked(g);
  std::vector<Process*> out;
  std::erase_if(g.children, [&](Process::Impl* c) {
    bool ended = true;
    try {
      ended = c->popen->poll().has_value();
    } catch (...) {
    }
    if (!ended) out.push_back(c->owner);
    return ended;
  });
  return out;
}

int cpu_count() { return posix::usable_cpu_count(); }

void freeze_support(int argc, char** argv) {
  if (argc >= 3 && argv && argv[1] && argv[2]) {
    bool spawn = std::strcmp(argv[1], detail::kSpawnMarker) == 0;
    bool server = std::strcmp(argv[1], detail::kForkserverMarker) == 0;
    if (spawn || server) {
      char* end = nullptr;
      long fd = std::strtol(argv[2], &end, 10);
      if (end == argv[2] || *end != '\0' || fd < 0 || fd > 1 << 20) {
        std::fprintf(stderr, "mp::freeze_support: bad file descriptor argument '%s'\n", argv[2]);
        std::exit(1);
      }
      detail::remember_argv(argc, argv);
      if (spawn) detail::spawn_child_main(static_cast<int>(fd));
      detail::forkserver_main(static_cast<int>(fd));
    }
  }
  detail::remember_argv(argc, argv);
  // Under mpirun: ranks >= 1 become pool workers of the "mpi" start method and never return.
  detail::mpi::freeze_support(argc, argv);
}

}  // namespace mp
