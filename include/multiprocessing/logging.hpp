// The library's logger: Python's multiprocessing.get_logger() / log_to_stderr() and its levels.
//
// The logger is silent until configured: set a level and add a handler, or call log_to_stderr().
// Every record is one line, written with a single write(2), so that lines logged by many
// processes at once never interleave. Children inherit the level and the stderr handler.
#pragma once

#include <functional>
#include <optional>
#include <string_view>

namespace mp {

namespace levels {
// Python's multiprocessing.SUBDEBUG ... CRITICAL. Lower case so that a -DDEBUG or -DERROR macro
// cannot break the header.
inline constexpr int subdebug = 5, debug = 10, info = 20, subwarning = 25, warning = 30, error = 40, critical = 50;
}  // namespace levels

/// Python's name of a level: "SUBDEBUG", "INFO", ... or "Level N" for others.
std::string_view level_name(int level);

class Logger {
 public:
  using Handler = std::function<void(int level, std::string_view process_name, std::string_view message)>;

  /// Records below level are dropped. The default, 0 (Python's NOTSET), lets everything through
  /// to the handlers, of which there are none until one is added.
  void set_level(int level);
  int level() const;
  /// True when a record at this level would reach a handler (cheap: check before formatting).
  bool is_enabled_for(int level) const;

  /// Sends the record to every handler, with the current process's name.
  void log(int level, std::string_view message);
  void subdebug(std::string_view message) { log(levels::subdebug, message); }
  void debug(std::string_view message) { log(levels::debug, message); }
  void info(std::string_view message) { log(levels::info, message); }
  void subwarning(std::string_view message) { log(levels::subwarning, message); }
  void warning(std::string_view message) { log(levels::warning, message); }
  void error(std::string_view message) { log(levels::error, message); }
  void critical(std::string_view message) { log(levels::critical, message); }

  /// Handlers run in the logging thread, in the order added; one that throws is skipped.
  void add_handler(Handler handler);
  /// Removes every handler (the stderr one of log_to_stderr() included).
  void clear_handlers();
};

/// The library's own logger; silent until configured.
Logger& get_logger();

/// Adds (once) a handler printing "[LEVEL/ProcessName] message" lines to stderr and sets the
/// level when one is given. Children started afterwards log to stderr the same way.
Logger& log_to_stderr(std::optional<int> level = std::nullopt);

}  // namespace mp
