// What spawn and forkserver children share (Python: multiprocessing/spawn.py): the preparation
// data sent by the parent, the child's main, and the executable to run.
//
// The preparation travels on a private AF_UNIX SOCK_SEQPACKET socketpair (nobody else can
// connect to it) as records of at most kChunk bytes, each with up to kMaxFdsPerRecord fds
// (SCM_RIGHTS; the kernel's SCM_MAX_FD is 253):
//   first record:  'H' u64 total_size u32 total_fds  <first data bytes>
//   then:          'D' <data bytes>
// until total_size bytes and total_fds fds have arrived. Fd 0 is the parent's pidfd, the rest
// are the handles the arguments exported (in FdExport order). The data is one Preparation in the
// native codec, which checks every bound: it comes from our parent over a private socket, but is
// validated anyway.
#include <multiprocessing/context.hpp>
#include <multiprocessing/reduction.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <tuple>

#include "process_impl.hpp"

namespace mp::detail {

namespace {

constexpr std::size_t kChunk = 64 * 1024;
constexpr std::size_t kMaxFdsPerRecord = 250;
constexpr std::size_t kMaxPrepSize = std::size_t{1} << 32;
constexpr std::size_t kMaxFds = 1 << 16;
// The first record's header: tag 'H', total data size, total fds (13 bytes in the codec).
using RecordHeader = std::tuple<char, std::uint64_t, std::uint32_t>;
constexpr std::size_t kRecordHeaderSize = 1 + 8 + 4;

// ---- the preparation's format: the native codec ----

Bytes encode_preparation(const Preparation& p) { return mp::dumps(p); }

Preparation decode_preparation(std::span<const std::byte> data) {
  auto p = mp::loads<Preparation>(data);  // bounds-checked; trailing bytes are an error
  if (p.magic != Preparation{}.magic) throw std::invalid_argument("mp: the preparation data is not from this library version");
  return p;
}

// ---- argv and the executable ----

// Guarded by a mutex held across fork() (pthread_atfork), so a forked child never finds it
// locked by a thread that does not exist there.
struct SpawnConfig {
  std::mutex mutex;
  std::string executable;  // empty: /proc/self/exe
  std::string argv0;
  bool argv0_known = false;
  std::atomic<bool> freeze_support_ran{false};
  std::vector<std::string> cmdline;  // /proc/self/cmdline, read once when needed
  bool cmdline_read = false;
};

SpawnConfig& config() {
  static SpawnConfig* c = [] {
    auto* created = new SpawnConfig;
    posix::at_fork([] { config().mutex.lock(); }, [] { config().mutex.unlock(); }, [] { config().mutex.unlock(); });
    return created;
  }();
  return *c;
}

const std::vector<std::string>& cmdline_locked(SpawnConfig& c) {
  if (!c.cmdline_read) {
    try {
      c.cmdline = posix::read_cmdline();
    } catch (...) {
    }
    c.cmdline_read = true;
  }
  return c.cmdline;
}

}  // namespace

void remember_argv(int argc, char** argv) {
  auto& c = config();
  std::lock_guard lock(c.mutex);
  if (argc >= 1 && argv && argv[0]) {
    c.argv0 = argv[0];
    c.argv0_known = true;
  }
  c.freeze_support_ran = true;
}

void check_freeze_support_ran() {
  auto& c = config();
  if (c.freeze_support_ran) return;
  std::lock_guard lock(c.mutex);
  const auto& cmd = cmdline_locked(c);
  if (cmd.size() >= 2 && (cmd[1] == kSpawnMarker || cmd[1] == kForkserverMarker)) {
    throw std::logic_error(
        "mp: this process was started by the spawn or forkserver start method, but it starts a process before "
        "freeze_support ran: call mp::freeze_support(argc, argv) first in main()");
  }
}

std::string spawn_executable() {
  auto& c = config();
  std::lock_guard lock(c.mutex);
  return c.executable.empty() ? std::string("/proc/self/exe") : c.executable;
}

std::string spawn_argv0() {
  auto& c = config();
  std::lock_guard lock(c.mutex);
  if (c.argv0_known) return c.argv0;
  const auto& cmd = cmdline_locked(c);
  c.argv0 = cmd.empty() ? std::string("multiprocessing-child") : cmd[0];
  c.argv0_known = true;
  return c.argv0;
}

bool send_preparation(int socket, const Preparation& prep, int parent_pidfd, std::span<const int> handle_fds) {
  Bytes data = encode_preparation(prep);
  std::vector<int> fds;
  fds.reserve(handle_fds.size() + 1);
  fds.push_back(parent_pidfd);
  fds.insert(fds.end(), handle_fds.begin(), handle_fds.end());
  if (fds.size() > kMaxFds) throw std::invalid_argument("mp: too many handles in the arguments of one Process");

  std::size_t sent = 0, fds_sent = 0;
  bool first = true;
  Bytes record;
  while (first || sent < data.size() || fds_sent < fds.size()) {
    record.clear();
    if (first) {
      record = mp::dumps(RecordHeader{'H', data.size(), static_cast<std::uint32_t>(fds.size())});
    } else {
      record.push_back(std::byte{'D'});
    }
    std::size_t room = kChunk - record.size();
    std::size_t n = std::min(room, data.size() - sent);
    record.insert(record.end(), data.begin() + static_cast<std::ptrdiff_t>(sent),
                  data.begin() + static_cast<std::ptrdiff_t>(sent + n));
    std::size_t nfds = std::min(kMaxFdsPerRecord, fds.size() - fds_sent);
    try {
      posix::send_with_fds(socket, record, std::span<const int>(fds).subspan(fds_sent, nfds));
    } catch (const std::system_error& e) {
      // The child is gone already (it was killed, or failed before reading): its exit code says so.
      if (e.code().value() == EPIPE || e.code().value() == ECONNRESET) return false;
      throw;
    }
    sent += n;
    fds_sent += nfds;
    first = false;
  }
  return true;
}

namespace {

// Reads the records of send_preparation.
Bytes receive_preparation(int socket, std::vector<posix::UniqueFd>& fds) {
  Bytes data;
  std::uint64_t total = 0;
  std::uint32_t total_fds = 0;
  bool first = true;
  while (first || data.size() < total || fds.size() < total_fds) {
    auto record = posix::recv_with_fds(socket, kChunk + 1, fds, kMaxFdsPerRecord);
    if (record.empty()) throw std::runtime_error("mp: the parent closed the connection before sending the preparation");
    if (record.size() > kChunk) throw std::invalid_argument("mp: malformed preparation record (too long)");
    std::span<const std::byte> rest(record);
    if (first) {
      auto [tag, size, nfds] = mp::loads<RecordHeader>(rest.first(std::min(kRecordHeaderSize, rest.size())));
      if (tag != 'H') throw std::invalid_argument("mp: malformed preparation record (header)");
      total = size;
      total_fds = nfds;
      if (total > kMaxPrepSize || total_fds > kMaxFds || total_fds == 0)
        throw std::invalid_argument("mp: malformed preparation record (sizes)");
      rest = rest.subspan(kRecordHeaderSize);
      data.reserve(static_cast<std::size_t>(total));
      first = false;
    } else {
      if (rest[0] != std::byte{'D'}) throw std::invalid_argument("mp: malformed preparation record (tag)");
      rest = rest.subspan(1);
    }
    if (rest.size() > total - data.size() || fds.size() > total_fds)
      throw std::invalid_argument("mp: malformed preparation record (more than announced)");
    data.insert(data.end(), rest.begin(), rest.end());
  }
  return data;
}

}  // namespace

void spawn_child_main(int socket) {
  // A fresh process (spawn: a new program; forkserver: a fork of the single-threaded server,
  // which has run nothing but its loop): leaving with std::exit is right here, so that the
  // atexit handlers and static destructors of this run of the program (the target's included)
  // run as in any program that returns from main().
  Preparation prep;
  std::vector<posix::UniqueFd> fds;
  SpawnEntry entry = nullptr;
  ErasedFn fn = nullptr;
  try {
    posix::UniqueFd sock(socket);
    Bytes data = receive_preparation(sock.get(), fds);
    sock.reset();
    prep = decode_preparation(data);
    if (prep.has_entry) entry = reinterpret_cast<SpawnEntry>(posix::resolve_code_ref(prep.entry));
    if (prep.has_fn) fn = reinterpret_cast<ErasedFn>(posix::resolve_code_ref(prep.fn));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mp: a spawned child could not start: %s\n", e.what());
    std::fflush(stderr);
    std::exit(1);
  }
  apply_log_config(prep.log);
  posix::UniqueFd parent_sentinel = std::move(fds.front());
  become_child(prep, std::move(parent_sentinel));
  std::vector<int> handles;
  for (std::size_t i = 1; i < fds.size(); ++i) handles.push_back(fds[i].release());
  fds.clear();
  int code = bootstrap([&] {
    FdImport imported(std::move(handles));
    if (entry) entry(fn, prep.args);
  });
  std::exit(code);
}

}  // namespace mp::detail

namespace mp {

void set_executable(std::string path) {
  auto& c = detail::config();
  std::lock_guard lock(c.mutex);
  c.executable = std::move(path);
}

}  // namespace mp
