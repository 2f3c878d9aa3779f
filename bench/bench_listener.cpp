// Bench cases of the listener/client and pickle work: an authenticated connect over AF_UNIX, a
// 1,000-element dict over Serializer::pickle (as a std::map, and as a pickle::Value), pickle
// dumps+loads of a 1 MiB mixed structure.
// Printed as mp_bench's other cases (one JSON object per line; the raw figure is the OS limit
// named in each comment).
#include <multiprocessing.hpp>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

// Defined in bench_main.cpp: whether --case selected this case.
bool bench_case_selected(const std::string& only, const char* name);

namespace bench_listener {
namespace {

using Clock = std::chrono::steady_clock;
namespace conn = mp::connection;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Median seconds/op of repeats runs of ours and raw, alternated (as bench_main.cpp's measure()).
template <class Ours, class Raw>
std::pair<double, double> measure(int repeats, long n, Ours ours, Raw raw) {
  std::vector<double> o, r;
  for (int i = 0; i < repeats; ++i) {
    o.push_back(ours(n) / static_cast<double>(n));
    r.push_back(raw(n) / static_cast<double>(n));
  }
  std::sort(o.begin(), o.end());
  std::sort(r.begin(), r.end());
  return {o[o.size() / 2], r[r.size() / 2]};
}

void emit(const char* name, const char* unit, double ours, double raw) {
  std::printf("{\"case\": \"%s\", \"unit\": \"%s\", \"ours\": %.6g, \"raw\": %.6g}\n", name, unit, ours, raw);
  std::fflush(stdout);
}

// n authenticated connections to a listener with a key: a thread connects, this one accepts.
double ours_auth_connect(long n) {
  const mp::Bytes key = mp::bytes("bench key");
  conn::Listener listener(std::nullopt, {.backlog = 16, .authkey = key});
  auto where = listener.address();
  auto t0 = Clock::now();
  std::thread client([&] {
    for (long i = 0; i < n; ++i) conn::Client(where, {.authkey = key});
  });
  for (long i = 0; i < n; ++i) listener.accept();
  client.join();
  return seconds_since(t0);
}

// The OS limit: a bare AF_UNIX connect + accept, no handshake.
double raw_unix_connect(long n) {
  char dir[] = "/tmp/mp-bench-XXXXXX";
  if (!mkdtemp(dir)) return 0;
  std::string path = std::string(dir) + "/s";
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  bind(l, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  listen(l, 16);
  auto t0 = Clock::now();
  std::thread client([&] {
    for (long i = 0; i < n; ++i) {
      int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      connect(c, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
      close(c);
    }
  });
  for (long i = 0; i < n; ++i) close(accept4(l, nullptr, nullptr, SOCK_CLOEXEC));
  client.join();
  double t = seconds_since(t0);
  close(l);
  unlink(path.c_str());
  rmdir(dir);
  return t;
}

std::map<std::string, long> thousand_items() {
  std::map<std::string, long> d;
  for (long i = 0; i < 1000; ++i) d["key" + std::to_string(i)] = i;
  return d;
}

// Round trips of a 1,000-element dict through an echo child, both ends speaking pickle.
double ours_pickle_dict_roundtrip(long n) {
  auto [a, b] = mp::Pipe();
  a.set_serializer(conn::Serializer::pickle);
  b.set_serializer(conn::Serializer::pickle);
  mp::Process echo([a = a, b = b]() mutable {
    a.close();
    try {
      for (;;) b.send(b.recv<mp::pickle::Value>());
    } catch (const mp::EOFError&) {
    }
  });
  echo.start();
  b.close();
  auto d = thousand_items();
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    a.send(d);
    d = a.recv<std::map<std::string, long>>();
  }
  double t = seconds_since(t0);
  a.close();
  echo.join();
  return t;
}

// The same round trips with the dict held as a pickle::Value at both ends: what a program gets that
// keeps Python's dict as a dict (CPython's side of this case does), without the std::map's
// node-per-entry build on every receive, which alone is a good part of the case above.
double ours_pickle_dict_value_roundtrip(long n) {
  auto [a, b] = mp::Pipe();
  a.set_serializer(conn::Serializer::pickle);
  b.set_serializer(conn::Serializer::pickle);
  mp::Process echo([a = a, b = b]() mutable {
    a.close();
    try {
      for (;;) b.send(b.recv<mp::pickle::Value>());
    } catch (const mp::EOFError&) {
    }
  });
  echo.start();
  b.close();
  mp::pickle::Value d = thousand_items();
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    a.send(d);
    d = a.recv<mp::pickle::Value>();
  }
  double t = seconds_since(t0);
  a.close();
  echo.join();
  return t;
}

// The same bytes as raw messages: what the pickling costs on top of moving them.
double raw_dict_bytes_roundtrip(long n) {
  mp::Bytes payload = mp::pickle::dumps(thousand_items());
  auto [a, b] = mp::Pipe();
  mp::Process echo([a = a, b = b]() mutable {
    a.close();
    try {
      for (;;) b.send_bytes(b.recv_bytes());
    } catch (const mp::EOFError&) {
    }
  });
  echo.start();
  b.close();
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    a.send_bytes(payload);
    payload = a.recv_bytes();
  }
  double t = seconds_since(t0);
  a.close();
  echo.join();
  return t;
}

// About 1 MiB of pickle: 5,000 records {'id', 'name', 'score', 'tags', 'blob'} (cpython_bench.py
// builds the same structure).
mp::pickle::Value mixed_structure() {
  auto records = mp::pickle::Value::list();
  for (long i = 0; i < 5000; ++i) {
    records.append(mp::pickle::Value::dict({
        {"id", i},
        {"name", "item-" + std::to_string(i)},
        {"score", static_cast<double>(i) * 0.5},
        {"tags", mp::pickle::Value::list({"a", "b"})},
        {"blob", mp::Bytes(100, std::byte{1})},
    }));
  }
  return records;
}

double ours_pickle_mixed(long n) {
  auto value = mixed_structure();
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    mp::Bytes b = mp::pickle::dumps(value);
    value = mp::pickle::loads(b);
  }
  return seconds_since(t0);
}

// Two copies of the pickle's bytes: the memory traffic any dumps+loads pays at least.
double raw_copy_of_pickle_size(long n) {
  mp::Bytes src = mp::pickle::dumps(mixed_structure()), a(src.size()), b(src.size());
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    std::memcpy(a.data(), src.data(), src.size());
    std::memcpy(b.data(), a.data(), a.size());
    src[static_cast<std::size_t>(i) % src.size()] = b[0];  // keep the copies from being optimized away
  }
  return seconds_since(t0);
}

}  // namespace

void run(const std::string& only, bool quick) {
  const int reps = quick ? 1 : 5;
  auto scale = [&](long n) { return quick ? std::max(1L, n / 50) : n; };
  auto selected = [&](const char* name) { return bench_case_selected(only, name); };
  if (selected("auth_connect_unix")) {
    auto m = measure(reps, scale(2000), ours_auth_connect, raw_unix_connect);
    emit("auth_connect_unix", "us/connect", 1e6 * m.first, 1e6 * m.second);
  }
  if (selected("pickle_dict1000_roundtrip")) {
    auto m = measure(reps, scale(2000), ours_pickle_dict_roundtrip, raw_dict_bytes_roundtrip);
    emit("pickle_dict1000_roundtrip", "us/roundtrip", 1e6 * m.first, 1e6 * m.second);
  }
  if (selected("pickle_dict1000_value_roundtrip")) {
    auto m = measure(reps, scale(2000), ours_pickle_dict_value_roundtrip, raw_dict_bytes_roundtrip);
    emit("pickle_dict1000_value_roundtrip", "us/roundtrip", 1e6 * m.first, 1e6 * m.second);
  }
  if (selected("pickle_1MiB_mixed")) {
    auto m = measure(reps, scale(50), ours_pickle_mixed, raw_copy_of_pickle_size);
    emit("pickle_1MiB_mixed", "ms/dumps+loads", 1e3 * m.first, 1e3 * m.second);
  }
}

}  // namespace bench_listener
