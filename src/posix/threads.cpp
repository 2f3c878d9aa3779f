#include "posix/threads.hpp"

#include <dirent.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

namespace mp::detail::posix {

std::vector<int> thread_ids() {
  std::vector<int> tids;
  DIR* dir = ::opendir("/proc/self/task");
  if (!dir) return tids;
  // readdir on a directory stream of our own is not shared with other threads: no race.
  while (const dirent* entry = ::readdir(dir)) {
    char* end = nullptr;
    long tid = std::strtol(entry->d_name, &end, 10);
    if (end != entry->d_name && *end == '\0' && tid > 0) tids.push_back(static_cast<int>(tid));
  }
  ::closedir(dir);
  return tids;
}

bool blocks_every_signal(int tid) {
  std::ifstream status("/proc/self/task/" + std::to_string(tid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("SigBlk:", 0) != 0) continue;
    std::uint64_t mask = std::strtoull(line.c_str() + 7, nullptr, 16);
    // SIGKILL (9) and SIGSTOP (19) can never be blocked (the kernel clears their bits), and
    // glibc's sigfillset leaves out its own two signals (32 and 33).
    constexpr std::uint64_t kUnblockable = (std::uint64_t{1} << (9 - 1)) | (std::uint64_t{1} << (19 - 1)) |
                                           (std::uint64_t{1} << (32 - 1)) | (std::uint64_t{1} << (33 - 1));
    return (mask | kUnblockable) == ~std::uint64_t{0};
  }
  return false;
}

int current_tid() noexcept { return static_cast<int>(::syscall(SYS_gettid)); }

}  // namespace mp::detail::posix
