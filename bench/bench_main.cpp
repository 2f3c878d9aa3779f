// The C++ half of the benchmarks: each case measures this library and the raw OS limit for the
// same operation in one run, and prints one JSON object per case on stdout. bench/run.py adds
// CPython's figures (bench/cpython_bench.py) and prints the table.
//
//   mp_bench [--quick] [--case NAME]
#include <multiprocessing.hpp>

#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
bool quick = false;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The median of `repeats` runs of body(n), each returning seconds for n operations, as seconds/op.
double median_per_op(int repeats, long n, const std::function<double(long)>& body) {
  std::vector<double> runs;
  for (int r = 0; r < repeats; ++r) runs.push_back(body(n) / static_cast<double>(n));
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];
}

void emit(const char* name, const char* unit, double ours, double raw) {
  std::printf("{\"case\": \"%s\", \"unit\": \"%s\", \"ours\": %.6g, \"raw\": %.6g}\n", name, unit, ours, raw);
  std::fflush(stdout);
}

void write_full(int fd, const void* p, size_t n) {
  auto* c = static_cast<const char*>(p);
  while (n) {
    ssize_t k = write(fd, c, n);
    if (k <= 0) _exit(3);
    c += k;
    n -= static_cast<size_t>(k);
  }
}
bool read_full(int fd, void* p, size_t n) {
  auto* c = static_cast<char*>(p);
  while (n) {
    ssize_t k = read(fd, c, n);
    if (k <= 0) return false;
    c += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

// ---- raw socketpair: the OS limit for pipes ----
// A child echoes fixed-size messages on a SOCK_STREAM socketpair; the parent times round trips.
double raw_pingpong(long n, size_t size) {
  int sv[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
  pid_t pid = fork();
  std::vector<char> buf(size);
  if (pid == 0) {
    close(sv[0]);
    while (read_full(sv[1], buf.data(), size)) write_full(sv[1], buf.data(), size);
    _exit(0);
  }
  close(sv[1]);
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    write_full(sv[0], buf.data(), size);
    read_full(sv[0], buf.data(), size);
  }
  double t = seconds_since(t0);
  close(sv[0]);
  waitpid(pid, nullptr, 0);
  return t;
}

// One-way throughput: the parent writes n messages of `size`, the child reads them and acks once.
double raw_throughput(long n, size_t size) {
  int sv[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
  pid_t pid = fork();
  std::vector<char> buf(size);
  if (pid == 0) {
    close(sv[0]);
    for (long i = 0; i < n; ++i)
      if (!read_full(sv[1], buf.data(), size)) _exit(1);
    write_full(sv[1], "k", 1);
    _exit(0);
  }
  close(sv[1]);
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) write_full(sv[0], buf.data(), size);
  read_full(sv[0], buf.data(), 1);
  double t = seconds_since(t0);
  close(sv[0]);
  waitpid(pid, nullptr, 0);
  return t;
}

// ---- ours ----
double ours_pingpong(long n, size_t size) {
  auto [a, b] = mp::Pipe();
  mp::Process echo([a = a, b = b, size]() mutable {
    a.close();
    std::vector<std::byte> buf(size);
    try {
      for (;;) {
        b.recv_bytes_into(buf);
        b.send_bytes(buf);
      }
    } catch (const mp::EOFError&) {
    }
  });
  echo.start();
  b.close();
  std::vector<std::byte> msg(size), in(size);
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    a.send_bytes(msg);
    a.recv_bytes_into(in);
  }
  double t = seconds_since(t0);
  a.close();
  echo.join();
  return t;
}

double ours_throughput(long n, size_t size) {
  auto [a, b] = mp::Pipe();
  mp::Process sink([a = a, b = b, n, size]() mutable {
    a.close();
    std::vector<std::byte> buf(size);
    for (long i = 0; i < n; ++i) b.recv_bytes_into(buf);
    b.send_bytes("k");
  });
  sink.start();
  b.close();
  std::vector<std::byte> msg(size);
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) a.send_bytes(msg);
  a.recv_bytes();
  double t = seconds_since(t0);
  sink.join();
  return t;
}

struct Point {
  double x = 0, y = 0;
  int id = 0;
  template <class Archive> void serialize(Archive& ar) { ar(x, y, id); }
};

double ours_typed_pingpong(long n) {
  auto [a, b] = mp::Pipe();
  mp::Process echo([a = a, b = b]() mutable {
    a.close();
    try {
      for (;;) b.send(b.recv<Point>());
    } catch (const mp::EOFError&) {
    }
  });
  echo.start();
  b.close();
  Point p{1.5, 2.5, 7};
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    a.send(p);
    p = a.recv<Point>();
  }
  double t = seconds_since(t0);
  a.close();
  echo.join();
  return t;
}

void noop() {}

double ours_start_join(long n, const char* method) {
  auto ctx = mp::get_context(method);
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    mp::Process p(ctx, noop);
    p.start();
    p.join();
  }
  return seconds_since(t0);
}

double raw_fork_join(long n) {
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    waitpid(pid, nullptr, 0);
  }
  return seconds_since(t0);
}

double raw_spawn_join(long n) {
  char self[4096];
  ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  self[len] = 0;
  char arg0[] = "mp_bench", arg1[] = "--raw-exit";
  char* argv[] = {arg0, arg1, nullptr};
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    pid_t pid;
    posix_spawn(&pid, self, nullptr, nullptr, argv, environ);
    waitpid(pid, nullptr, 0);
  }
  return seconds_since(t0);
}

bool selected(const std::string& only, const char* name) { return only.empty() || only == name; }

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--raw-exit") == 0) return 0;  // the raw posix_spawn target
  mp::freeze_support(argc, argv);
  std::string only;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    if (std::strcmp(argv[i], "--case") == 0 && i + 1 < argc) only = argv[++i];
  }
  const int reps = quick ? 1 : 5;
  auto scale = [&](long n) { return quick ? std::max(1L, n / 50) : n; };

  if (selected(only, "pipe_pingpong_8B")) {
    long n = scale(20000);
    emit("pipe_pingpong_8B", "us/roundtrip", 1e6 * median_per_op(reps, n, [](long k) { return ours_pingpong(k, 8); }),
         1e6 * median_per_op(reps, n, [](long k) { return raw_pingpong(k, 8); }));
  }
  if (selected(only, "pipe_throughput_1MiB")) {
    long n = scale(2000);
    const double mib = 1.0;
    emit("pipe_throughput_1MiB", "MiB/s",
         mib / median_per_op(reps, n, [](long k) { return ours_throughput(k, 1 << 20); }),
         mib / median_per_op(reps, n, [](long k) { return raw_throughput(k, 1 << 20); }));
  }
  if (selected(only, "pipe_typed_struct")) {
    long n = scale(20000);
    // The raw limit here is our own untyped 24-byte round trip: what the codec costs on top.
    emit("pipe_typed_struct", "us/roundtrip", 1e6 * median_per_op(reps, n, ours_typed_pingpong),
         1e6 * median_per_op(reps, n, [](long k) { return ours_pingpong(k, 24); }));
  }
  if (selected(only, "process_fork")) {
    long n = scale(500);
    emit("process_fork", "ms/start+join", 1e3 * median_per_op(reps, n, [](long k) { return ours_start_join(k, "fork"); }),
         1e3 * median_per_op(reps, n, raw_fork_join));
  }
  if (selected(only, "process_spawn")) {
    long n = scale(50);
    emit("process_spawn", "ms/start+join", 1e3 * median_per_op(reps, n, [](long k) { return ours_start_join(k, "spawn"); }),
         1e3 * median_per_op(reps, n, raw_spawn_join));
  }
  if (selected(only, "process_forkserver")) {
    long n = scale(200);
    ours_start_join(1, "forkserver");  // the server starts once per program: not part of the figure
    emit("process_forkserver", "ms/start+join",
         1e3 * median_per_op(reps, n, [](long k) { return ours_start_join(k, "forkserver"); }),
         1e3 * median_per_op(reps, n, raw_fork_join));
  }
  return 0;
}
