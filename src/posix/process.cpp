#include "posix/process.hpp"

#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <mutex>
#include <sstream>
#include <stdexcept>

extern char** environ;

namespace mp::detail::posix {

int fork_process() { return check_unix(static_cast<int>(::fork()), "fork"); }

namespace {

// posix_spawn's C objects, destroyed on every path.
struct SpawnAttrs {
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  SpawnAttrs() {
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
  }
  ~SpawnAttrs() {
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
  }
};

void check_posix(int rc, const char* what) {
  if (rc != 0) throw std::system_error(rc, std::system_category(), what);
}

}  // namespace

int spawn_process(const std::string& path, const std::vector<std::string>& argv, std::span<const int> pass_fds) {
  SpawnAttrs s;
  // dup2(fd, fd) in the file actions clears FD_CLOEXEC on that fd in the child (glibc >= 2.29,
  // POSIX 2024): the child inherits exactly these fds and nothing else, as every other fd of
  // the library is O_CLOEXEC.
  for (int fd : pass_fds) check_posix(posix_spawn_file_actions_adddup2(&s.actions, fd, fd), "posix_spawn_file_actions_adddup2");
  // A thread of the parent may have signals blocked; the child starts with none blocked, as a
  // fresh program expects.
  sigset_t empty;
  sigemptyset(&empty);
  check_posix(posix_spawnattr_setsigmask(&s.attr, &empty), "posix_spawnattr_setsigmask");
  check_posix(posix_spawnattr_setflags(&s.attr, POSIX_SPAWN_SETSIGMASK), "posix_spawnattr_setflags");
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  // posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK) + exec) costs far less than fork+exec of a
  // large parent, and runs no pthread_atfork handlers.
  int rc = ::posix_spawn(&pid, path.c_str(), &s.actions, &s.attr, args.data(), environ);
  if (rc != 0) throw std::system_error(rc, std::system_category(), "posix_spawn " + path);
  return pid;
}

UniqueFd open_pidfd(int pid) {
  // pidfd_open (Linux 5.3) has no glibc wrapper before 2.36's <sys/pidfd.h>; its fds are always
  // O_CLOEXEC.
  long fd = ::syscall(SYS_pidfd_open, pid, 0);
  check_unix(fd, "pidfd_open");
  return UniqueFd(static_cast<int>(fd));
}

std::pair<UniqueFd, UniqueFd> seqpacket_pair() {
  int sv[2];
  check_unix(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), "socketpair");
  return {UniqueFd(sv[0]), UniqueFd(sv[1])};
}

bool send_record(int socket, std::span<const std::byte> data) {
  ssize_t n = retry_eintr([&] { return ::send(socket, data.data(), data.size(), MSG_NOSIGNAL); });
  if (n == -1 && (errno == EPIPE || errno == ECONNRESET)) return false;
  check_unix(n, "send");
  return true;
}

void discard_pending(int socket) noexcept {
  char buf[4096];
  while (::recv(socket, buf, sizeof buf, MSG_DONTWAIT) > 0) {
  }
}

int exitcode_from_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return 255;
}

std::optional<int> try_reap(int pid) {
  int status = 0;
  pid_t r = retry_eintr([&] { return ::waitpid(pid, &status, WNOHANG); });
  if (r == 0) return std::nullopt;
  if (r == -1) {
    if (errno == ECHILD) return 255;
    check_unix(-1, "waitpid");
  }
  return exitcode_from_status(status);
}

int reap(int pid) {
  int status = 0;
  pid_t r = retry_eintr([&] { return ::waitpid(pid, &status, 0); });
  if (r == -1) {
    if (errno == ECHILD) return 255;
    check_unix(-1, "waitpid");
  }
  return exitcode_from_status(status);
}

void send_signal(int pid, int sig) {
  if (::kill(pid, sig) == -1 && errno != ESRCH) check_unix(-1, "kill");
}

void at_fork(void (*prepare)(), void (*parent)(), void (*child)()) {
  int rc = ::pthread_atfork(prepare, parent, child);
  if (rc != 0) throw std::system_error(rc, std::system_category(), "pthread_atfork");
}

void set_env_default(const char* name, const char* value) { check_unix(::setenv(name, value, 0), "setenv"); }

int current_pid() noexcept { return static_cast<int>(::getpid()); }
int parent_pid() noexcept { return static_cast<int>(::getppid()); }

void exit_immediately(int code) noexcept {
  std::fflush(nullptr);
  ::_exit(code);
}

std::vector<std::byte> random_bytes(std::size_t n) {
  std::vector<std::byte> out(n);
  std::size_t done = 0;
  while (done < n) {
    ssize_t r = retry_eintr([&] { return ::getrandom(out.data() + done, n - done, 0); });
    check_unix(r, "getrandom");
    done += static_cast<std::size_t>(r);
  }
  return out;
}

namespace {

int affinity_count() {
  // The mask may be larger than cpu_set_t's 1024 CPUs: grow until the kernel accepts it.
  for (int ncpu = 1024; ncpu <= (1 << 20); ncpu *= 2) {
    cpu_set_t* set = CPU_ALLOC(static_cast<std::size_t>(ncpu));
    if (!set) break;
    std::size_t size = CPU_ALLOC_SIZE(static_cast<std::size_t>(ncpu));
    CPU_ZERO_S(size, set);
    if (::sched_getaffinity(0, size, set) == 0) {
      int count = CPU_COUNT_S(size, set);
      CPU_FREE(set);
      return count;
    }
    int err = errno;
    CPU_FREE(set);
    if (err != EINVAL) break;
  }
  long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

// cpu.max of a cgroup v2 directory: "max 100000" (no limit) or "<quota> <period>".
std::optional<int> cgroup_quota(const std::string& dir) {
  std::ifstream in(dir + "/cpu.max");
  std::string quota;
  long long period = 0;
  if (!(in >> quota >> period) || quota == "max" || period <= 0) return std::nullopt;
  char* end = nullptr;
  long long q = std::strtoll(quota.c_str(), &end, 10);
  if (end == quota.c_str() || q <= 0) return std::nullopt;
  return static_cast<int>(std::max<long long>(1, (q + period - 1) / period));
}

}  // namespace

int usable_cpu_count() {
  int count = affinity_count();
  // cgroup v2: "0::/path" in /proc/self/cgroup. A quota set on any ancestor also limits us.
  std::ifstream cg("/proc/self/cgroup");
  std::string line;
  while (std::getline(cg, line)) {
    if (line.rfind("0::", 0) != 0) continue;
    std::string path = line.substr(3);
    for (;;) {
      if (auto q = cgroup_quota("/sys/fs/cgroup" + (path == "/" ? std::string() : path))) count = std::min(count, *q);
      if (path.empty() || path == "/") break;
      auto slash = path.rfind('/');
      path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
    }
    break;
  }
  return std::max(1, count);
}

std::vector<std::string> read_cmdline() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start < all.size()) {
    std::size_t end = all.find('\0', start);
    if (end == std::string::npos) end = all.size();
    out.push_back(all.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// ---- code addresses by (module, offset) ----

namespace {

// The GNU build-id note of a loaded module, read from its PT_NOTE segments in memory.
std::vector<std::byte> build_id_of(const dl_phdr_info* info) {
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_NOTE) continue;
    const auto* p = reinterpret_cast<const unsigned char*>(info->dlpi_addr + ph.p_vaddr);
    std::size_t left = ph.p_memsz;
    while (left >= sizeof(ElfW(Nhdr))) {
      ElfW(Nhdr) nh;
      std::memcpy(&nh, p, sizeof nh);
      std::size_t name_size = (nh.n_namesz + 3u) & ~std::size_t{3};
      std::size_t desc_size = (nh.n_descsz + 3u) & ~std::size_t{3};
      std::size_t total = sizeof nh + name_size + desc_size;
      if (total > left) break;
      if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 && std::memcmp(p + sizeof nh, "GNU", 4) == 0) {
        const auto* desc = reinterpret_cast<const std::byte*>(p + sizeof nh + name_size);
        return std::vector<std::byte>(desc, desc + nh.n_descsz);
      }
      p += total;
      left -= total;
    }
  }
  return {};
}

bool in_executable_segment(const dl_phdr_info* info, std::uintptr_t address) {
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_X)) continue;
    std::uintptr_t start = info->dlpi_addr + ph.p_vaddr;
    if (address >= start && address - start < ph.p_memsz) return true;
  }
  return false;
}

struct FindAddress {
  std::uintptr_t address = 0;
  int index = 0;
  bool found = false;
  CodeRef ref;
};

int find_address(dl_phdr_info* info, std::size_t, void* data) {
  auto* f = static_cast<FindAddress*>(data);
  // The first object dl_iterate_phdr reports is the main program (its name is empty).
  bool main = f->index++ == 0;
  if (!in_executable_segment(info, f->address)) return 0;
  f->found = true;
  f->ref.module = main ? std::string() : std::string(info->dlpi_name ? info->dlpi_name : "");
  f->ref.build_id = build_id_of(info);
  f->ref.offset = f->address - info->dlpi_addr;
  return 1;
}

struct FindModule {
  const CodeRef* ref = nullptr;
  int index = 0;
  bool found = false;
  std::string error;
  std::uintptr_t address = 0;
};

int find_module(dl_phdr_info* info, std::size_t, void* data) {
  auto* f = static_cast<FindModule*>(data);
  bool main = f->index++ == 0;
  const char* name = info->dlpi_name ? info->dlpi_name : "";
  if (f->ref->module.empty() ? !main : (main || f->ref->module != name)) return 0;
  f->found = true;
  if (build_id_of(info) != f->ref->build_id) {
    f->error = "is a different build (its build-id differs from the parent's)";
    return 1;
  }
  std::uintptr_t address = info->dlpi_addr + f->ref->offset;
  if (f->ref->offset > UINTPTR_MAX - info->dlpi_addr || !in_executable_segment(info, address)) {
    f->error = "has no code at offset " + std::to_string(f->ref->offset);
    return 1;
  }
  f->address = address;
  return 1;
}

// dl_iterate_phdr holds the loader's lock, which glibc (2.36) does not reset in a fork child: a
// fork taken while another thread of ours is in it gives a child whose first code reference
// waits for good (seen: a pool's dispatcher forking a replacement worker while the caller made a
// task header). Our walks therefore hold a mutex that every fork takes first.
std::mutex& phdr_walk_mutex() {
  static std::mutex m;
  static const bool fork_takes_it = [] {
    try {
      at_fork([] { phdr_walk_mutex().lock(); }, [] { phdr_walk_mutex().unlock(); },
              [] { phdr_walk_mutex().unlock(); });
      return true;
    } catch (...) {
      return false;  // ENOMEM: walks are then only as safe as glibc makes them
    }
  }();
  (void)fork_takes_it;
  return m;
}

void walk_modules(int (*visit)(dl_phdr_info*, std::size_t, void*), void* data) {
  std::lock_guard lock(phdr_walk_mutex());
  ::dl_iterate_phdr(visit, data);
}

}  // namespace

CodeRef code_ref_of(std::uintptr_t address) {
  FindAddress f;
  f.address = address;
  walk_modules(find_address, &f);
  if (!f.found) throw std::invalid_argument("mp: a code address outside every loaded module cannot cross to a child");
  return f.ref;
}

std::uintptr_t resolve_code_ref(const CodeRef& ref) {
  FindModule f;
  f.ref = &ref;
  walk_modules(find_module, &f);
  std::string what = ref.module.empty() ? std::string("the main executable") : "module " + ref.module;
  if (!f.found) throw std::runtime_error("mp: the child cannot find " + what + " of its parent");
  if (!f.error.empty()) throw std::runtime_error("mp: in the child, " + what + " " + f.error);
  return f.address;
}

// ---- forkserver signals ----

UniqueFd forkserver_signals() {
  ::signal(SIGINT, SIG_IGN);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  check_unix(::sigprocmask(SIG_BLOCK, &set, nullptr), "sigprocmask");
  return UniqueFd(check_unix(::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC), "signalfd"));
}

void drain_signalfd(int fd) {
  signalfd_siginfo info[16];
  while (::read(fd, info, sizeof info) > 0) {
  }
}

void reset_child_signals() {
  ::signal(SIGINT, SIG_DFL);
  sigset_t empty;
  sigemptyset(&empty);
  ::sigprocmask(SIG_SETMASK, &empty, nullptr);
}

std::optional<std::pair<int, int>> reap_any() {
  int status = 0;
  pid_t pid = retry_eintr([&] { return ::waitpid(-1, &status, WNOHANG); });
  if (pid <= 0) return std::nullopt;
  return std::pair<int, int>{static_cast<int>(pid), exitcode_from_status(status)};
}

std::vector<short> poll_readable(std::span<const int> fds) {
  std::vector<pollfd> p;
  for (int fd : fds) p.push_back(pollfd{fd, POLLIN, 0});
  for (;;) {
    int n = ::poll(p.data(), p.size(), -1);
    if (n >= 0) break;
    if (errno != EINTR) check_unix(-1, "poll");
  }
  std::vector<short> out;
  for (const auto& x : p) out.push_back(x.revents);
  return out;
}

}  // namespace mp::detail::posix
