// A real CPython peer for interop tests: finds the interpreters on this machine (python3, the
// pyenv versions, python3.X on PATH) and runs a script with one end of a socketpair.
#pragma once

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <vector>

extern char** environ;

namespace mp_test {

struct Python {
  std::string version;                // "3.12"
  std::vector<std::string> argv0;     // e.g. {"env", "PYENV_VERSION=3.12.1", "python3"}
};

inline std::string run_capture(const std::string& command) {
  std::string out;
  if (FILE* f = popen(command.c_str(), "r")) {
    char buf[256];
    while (std::fgets(buf, sizeof buf, f)) out += buf;
    if (pclose(f) != 0) return "";
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// Every distinct CPython minor version reachable here, keyed by "3.X". Found by running them.
inline const std::map<std::string, Python>& pythons() {
  static const std::map<std::string, Python> found = [] {
    std::map<std::string, Python> result;
    std::vector<std::vector<std::string>> candidates = {{"python3"}};
    for (const char* v : {"3.11", "3.12", "3.13"}) candidates.push_back({std::string("python") + v});
    // pyenv's shims pick the version from PYENV_VERSION; list what it has installed.
    std::string pyenv_versions = run_capture("pyenv versions --bare 2>/dev/null");
    std::size_t start = 0;
    while (start < pyenv_versions.size()) {
      auto end = pyenv_versions.find('\n', start);
      if (end == std::string::npos) end = pyenv_versions.size();
      std::string v = pyenv_versions.substr(start, end - start);
      if (!v.empty()) candidates.push_back({"env", "PYENV_VERSION=" + v, "python3"});
      start = end + 1;
    }
    for (auto& c : candidates) {
      std::string command;
      for (auto& part : c) command += part + " ";
      std::string v = run_capture(command + "-c 'import sys; print(\"%d.%d\" % sys.version_info[:2])' 2>/dev/null");
      if (v.size() >= 3 && v.rfind("3.", 0) == 0 && !result.count(v)) result[v] = Python{v, c};
    }
    return result;
  }();
  return found;
}

// Starts `python -I -c script args...` with fd kept open in the child; returns its pid.
inline pid_t start_python(const Python& py, const std::string& script, const std::vector<std::string>& args) {
  std::vector<std::string> all = py.argv0;
  all.insert(all.end(), {"-I", "-c", script});
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawnp(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) return -1;
  return pid;
}

// Waits for pid; returns its exit code, or -signal.
inline int wait_exit(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

}  // namespace mp_test
