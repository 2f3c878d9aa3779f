// The logger's configuration as it travels to spawn and forkserver children, so that a child logs
// where and at what level its parent does (Python passes log_level and log_to_stderr the same way
// in its preparation data).
#pragma once

namespace mp::detail {

struct LogConfig {
  int level = 0;
  bool to_stderr = false;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(level, to_stderr);
  }
};

LogConfig log_config();
void apply_log_config(const LogConfig& config);

}  // namespace mp::detail
