#include <multiprocessing/logging.hpp>
#include <multiprocessing/process.hpp>

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "logging_state.hpp"

namespace mp {
namespace {

struct LoggerState {
  std::atomic<int> level{0};
  std::atomic<bool> has_handlers{false};
  std::mutex mutex;  // guards handlers; never held while a handler runs user code that could log
  std::vector<Logger::Handler> handlers;
  bool to_stderr = false;
};

LoggerState& state() {
  // Never destroyed: children and atexit handlers log late. The mutex is held across fork() so
  // that a child never starts with it locked by a thread that does not exist there.
  static LoggerState* s = [] {
    auto* created = new LoggerState;
    pthread_atfork([] { state().mutex.lock(); }, [] { state().mutex.unlock(); }, [] { state().mutex.unlock(); });
    return created;
  }();
  return *s;
}

// One line, one write(2): lines from many processes sharing stderr never interleave (a pipe
// write of up to PIPE_BUF bytes is atomic; longer lines go out in one call as far as the kernel lets).
void write_stderr_line(int level, std::string_view process_name, std::string_view message) {
  std::string line;
  line.reserve(message.size() + process_name.size() + 16);
  line += '[';
  line += level_name(level);
  line += '/';
  line += process_name;
  line += "] ";
  line += message;
  line += '\n';
  std::string_view rest = line;
  while (!rest.empty()) {
    ssize_t n = ::write(STDERR_FILENO, rest.data(), rest.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // stderr closed or broken: logging must never fail the caller
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
}

}  // namespace

std::string_view level_name(int level) {
  switch (level) {
    case levels::subdebug: return "SUBDEBUG";
    case levels::debug: return "DEBUG";
    case levels::info: return "INFO";
    case levels::subwarning: return "SUBWARNING";
    case levels::warning: return "WARNING";
    case levels::error: return "ERROR";
    case levels::critical: return "CRITICAL";
    case 0: return "NOTSET";
    default: {
      thread_local std::string name;
      name = "Level " + std::to_string(level);
      return name;
    }
  }
}

void Logger::set_level(int level) { state().level = level; }
int Logger::level() const { return state().level; }

bool Logger::is_enabled_for(int level) const {
  auto& s = state();
  return s.has_handlers.load(std::memory_order_relaxed) && level >= s.level.load(std::memory_order_relaxed);
}

void Logger::log(int level, std::string_view message) {
  if (!is_enabled_for(level)) return;
  auto& s = state();
  std::vector<Handler> handlers;
  bool to_stderr;
  {
    std::lock_guard lock(s.mutex);
    handlers = s.handlers;
    to_stderr = s.to_stderr;
  }
  std::string name;
  try {
    name = current_process().name();
  } catch (...) {
    name = "?";
  }
  if (to_stderr) write_stderr_line(level, name, message);
  for (auto& h : handlers) {
    try {
      h(level, name, message);
    } catch (...) {
      // a failing handler must not turn a log call into an error of the caller
    }
  }
}

void Logger::add_handler(Handler handler) {
  auto& s = state();
  std::lock_guard lock(s.mutex);
  s.handlers.push_back(std::move(handler));
  s.has_handlers = true;
}

void Logger::clear_handlers() {
  auto& s = state();
  std::lock_guard lock(s.mutex);
  s.handlers.clear();
  s.to_stderr = false;
  s.has_handlers = false;
}

Logger& get_logger() {
  static Logger logger;
  return logger;
}

Logger& log_to_stderr(std::optional<int> level) {
  auto& s = state();
  {
    std::lock_guard lock(s.mutex);
    s.to_stderr = true;
    s.has_handlers = true;
  }
  if (level) s.level = *level;
  return get_logger();
}

namespace detail {

LogConfig log_config() {
  auto& s = state();
  std::lock_guard lock(s.mutex);
  return {s.level.load(), s.to_stderr};
}

void apply_log_config(const LogConfig& config) {
  auto& s = state();
  s.level = config.level;
  if (config.to_stderr) log_to_stderr();
}

}  // namespace detail
}  // namespace mp
