#include "posix/socket.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace mp::detail::posix {
namespace {

// Linux moves at most this many bytes per read/write call.
constexpr std::size_t kMaxIo = 0x7ffff000;

std::pair<UniqueFd, UniqueFd> make_pair(int type) {
  int sv[2];
  check_unix(::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv), "socketpair");
  return {UniqueFd(sv[0]), UniqueFd(sv[1])};
}

// Fills iov with the non-empty ones of a and b; returns how many.
int fill_iov(iovec (&iov)[2], std::span<const std::byte> a, std::span<const std::byte> b) {
  int n = 0;
  for (auto part : {a, b})
    if (!part.empty()) iov[n++] = iovec{const_cast<std::byte*>(part.data()), part.size()};
  return n;
}

}  // namespace

FdKind fd_kind(int fd) {
  int type = 0;
  socklen_t len = sizeof type;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == -1) {
    if (errno == ENOTSOCK) return FdKind::other;
    check_unix(-1, "getsockopt(SO_TYPE)");
  }
  return type == SOCK_SEQPACKET ? FdKind::seqpacket : FdKind::stream;
}

std::pair<UniqueFd, UniqueFd> seqpacket_pair(int send_buffer) {
  auto pair = make_pair(SOCK_SEQPACKET);
  // Best effort: the kernel silently caps the value at net.core.wmem_max; writers read the
  // effective size back (send_buffer_size) to size their records.
  for (int fd : {pair.first.get(), pair.second.get()})
    check_unix(::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &send_buffer, sizeof send_buffer), "setsockopt(SO_SNDBUF)");
  return pair;
}

std::pair<UniqueFd, UniqueFd> stream_pair() { return make_pair(SOCK_STREAM); }

int send_buffer_size(int fd) {
  int size = 0;
  socklen_t len = sizeof size;
  check_unix(::getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, &len), "getsockopt(SO_SNDBUF)");
  return size;
}

void shutdown_socket(int fd, bool read, bool write) {
  if (!read && !write) return;
  int how = read && write ? SHUT_RDWR : read ? SHUT_RD : SHUT_WR;
  check_unix(::shutdown(fd, how), "shutdown");
}

void send_record(int fd, std::span<const std::byte> a, std::span<const std::byte> b) {
  iovec iov[2];
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = static_cast<std::size_t>(fill_iov(iov, a, b));
  ssize_t n = retry_eintr([&] { return ::sendmsg(fd, &msg, MSG_NOSIGNAL); });
  check_unix(n, "sendmsg");
  // A SOCK_SEQPACKET send is atomic: it either queues the whole record or fails.
  if (static_cast<std::size_t>(n) != a.size() + b.size())
    throw std::system_error(EIO, std::system_category(), "sendmsg: partial record");
}

void send_all(int fd, bool is_socket, std::span<const std::byte> a, std::span<const std::byte> b) {
  while (!a.empty() || !b.empty()) {
    iovec iov[2];
    int count = fill_iov(iov, a.first(std::min(a.size(), kMaxIo)), b.first(std::min(b.size(), kMaxIo - std::min(a.size(), kMaxIo))));
    ssize_t n;
    if (is_socket) {
      msghdr msg{};
      msg.msg_iov = iov;
      msg.msg_iovlen = static_cast<std::size_t>(count);
      n = retry_eintr([&] { return ::sendmsg(fd, &msg, MSG_NOSIGNAL); });
      check_unix(n, "sendmsg");
    } else {
      n = retry_eintr([&] { return ::writev(fd, iov, count); });
      check_unix(n, "writev");
    }
    auto done = static_cast<std::size_t>(n);
    std::size_t from_a = std::min(done, a.size());
    a = a.subspan(from_a);
    b = b.subspan(done - from_a);
  }
}

static std::optional<Received> recv_record_flags(int fd, std::span<std::byte> buf, int flags) {
  iovec iov{buf.data(), std::min(buf.size(), kMaxIo)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  ssize_t n = retry_eintr([&] { return ::recvmsg(fd, &msg, flags); });
  if (n == -1 && (flags & MSG_DONTWAIT) && (errno == EAGAIN || errno == EWOULDBLOCK)) return std::nullopt;
  check_unix(n, "recvmsg");
  return Received{static_cast<std::size_t>(n), (msg.msg_flags & MSG_TRUNC) != 0};
}

Received recv_record(int fd, std::span<std::byte> buf) { return *recv_record_flags(fd, buf, 0); }

std::optional<Received> try_recv_record(int fd, std::span<std::byte> buf) {
  return recv_record_flags(fd, buf, MSG_DONTWAIT);
}

std::optional<std::size_t> try_recv_some(int fd, std::span<std::byte> buf) {
  ssize_t n = retry_eintr([&] { return ::recv(fd, buf.data(), std::min(buf.size(), kMaxIo), MSG_DONTWAIT); });
  if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) return std::nullopt;
  check_unix(n, "recv");
  return static_cast<std::size_t>(n);
}

std::size_t read_some(int fd, bool is_socket, std::span<std::byte> buf) {
  std::size_t want = std::min(buf.size(), kMaxIo);
  ssize_t n = is_socket ? retry_eintr([&] { return ::recv(fd, buf.data(), want, 0); })
                        : retry_eintr([&] { return ::read(fd, buf.data(), want); });
  check_unix(n, is_socket ? "recv" : "read");
  return static_cast<std::size_t>(n);
}

void poll_readable(std::span<const int> fds, const Deadline& deadline, std::vector<bool>& ready) {
  std::vector<pollfd> polled(fds.size());
  for (std::size_t i = 0; i < fds.size(); ++i) polled[i] = pollfd{fds[i], POLLIN, 0};
  ready.assign(fds.size(), false);
  for (;;) {
    int n = ::poll(polled.data(), polled.size(), poll_timeout_ms(deadline));
    if (n == -1) {
      if (errno == EINTR) continue;
      check_unix(-1, "poll");
    }
    if (n == 0) {
      // poll() may wake a little before the steady_clock deadline: only give up once it passed.
      if (poll_timeout_ms(deadline) == 0) return;
      continue;
    }
    for (std::size_t i = 0; i < polled.size(); ++i) {
      if (polled[i].revents & POLLNVAL) throw std::system_error(EBADF, std::system_category(), "poll");
      // POLLHUP/POLLERR: EOF or an error, which the next read reports; ready either way.
      if (polled[i].revents & (POLLIN | POLLHUP | POLLERR)) ready[i] = true;
    }
    return;
  }
}

void advise_huge_pages(void* p, std::size_t n) noexcept {
  constexpr std::uintptr_t kHuge = 2 << 20;
  auto begin = (reinterpret_cast<std::uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  auto end = (reinterpret_cast<std::uintptr_t>(p) + n) & ~(kHuge - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

// "localhost", "LocalHost." and names under ".localhost" (RFC 6761).
static bool is_localhost(std::string_view host) {
  std::string h;
  for (char c : host) h += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (!h.empty() && h.back() == '.') h.pop_back();
  return h == "localhost" || (h.size() > 10 && h.compare(h.size() - 10, 10, ".localhost") == 0);
}

// ---- listening and connecting sockets ----

namespace {

// A sockaddr for bind/connect, big enough for both families.
struct RawAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  int family = AF_UNIX;
  sockaddr* get() { return reinterpret_cast<sockaddr*>(&storage); }
};

RawAddress to_raw(const SocketAddress& address) {
  RawAddress raw;
  if (address.inet) {
    raw.family = AF_INET;
    auto* in = reinterpret_cast<sockaddr_in*>(&raw.storage);
    in->sin_family = AF_INET;
    in->sin_port = htons(address.port);
    raw.length = sizeof(sockaddr_in);
    if (address.host.empty()) {
      in->sin_addr.s_addr = htonl(INADDR_ANY);  // as CPython's ('', port)
      return raw;
    }
    if (::inet_pton(AF_INET, address.host.c_str(), &in->sin_addr) == 1) return raw;
    if (is_localhost(address.host)) {
      // RFC 6761 §6.3: "localhost" is the loopback address, without asking a resolver (as curl
      // does); a minimal system may have no /etc/hosts, and DNS must not decide it.
      in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      return raw;
    }
    addrinfo hints{};
    hints.ai_family = AF_INET;  // CPython's AF_INET family is IPv4 only
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    int rc = ::getaddrinfo(address.host.c_str(), nullptr, &hints, &found);
    if (rc == EAI_SYSTEM) check_unix(-1, "getaddrinfo");
    if (rc == EAI_AGAIN) throw std::system_error(EAGAIN, std::system_category(), "getaddrinfo " + address.host);
    if (rc != 0 || !found)
      throw std::invalid_argument("AF_INET host '" + address.host + "': " + ::gai_strerror(rc));
    in->sin_addr = reinterpret_cast<sockaddr_in*>(found->ai_addr)->sin_addr;
    ::freeaddrinfo(found);
    return raw;
  }
  auto* un = reinterpret_cast<sockaddr_un*>(&raw.storage);
  un->sun_family = AF_UNIX;
  const std::string& path = address.path;
  const bool abstract = !path.empty() && path[0] == '\0';
  // A path needs its terminating NUL inside sun_path; an abstract name is length-delimited.
  const std::size_t room = sizeof(un->sun_path) - (abstract ? 0 : 1);
  if (path.empty()) throw std::invalid_argument("AF_UNIX address: empty path");
  if (path.size() > room)
    throw std::invalid_argument("AF_UNIX path too long (" + std::to_string(path.size()) + " bytes, at most " +
                                std::to_string(room) + ")");
  std::memcpy(un->sun_path, path.data(), path.size());
  raw.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (abstract ? 0 : 1));
  return raw;
}

SocketAddress from_raw(const sockaddr_storage& storage, socklen_t length) {
  SocketAddress address;
  if (storage.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&storage);
    char text[INET_ADDRSTRLEN] = {};
    ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
    address.inet = true;
    address.host = text;
    address.port = ntohs(in->sin_port);
    return address;
  }
  const auto* un = reinterpret_cast<const sockaddr_un*>(&storage);
  const std::size_t offset = offsetof(sockaddr_un, sun_path);
  if (length <= offset) return address;  // an unnamed socket (an unbound client)
  std::size_t n = std::min<std::size_t>(length - offset, sizeof(un->sun_path));
  if (un->sun_path[0] == '\0') address.path.assign(un->sun_path, n);
  else address.path.assign(un->sun_path, ::strnlen(un->sun_path, n));
  return address;
}

UniqueFd new_socket(int family) {
  return UniqueFd(check_unix(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
}

}  // namespace

UniqueFd listen_socket(const SocketAddress& address, int backlog) {
  RawAddress raw = to_raw(address);
  UniqueFd fd = new_socket(raw.family);
  if (address.inet) {
    // As CPython's SocketListener: a restarted server can bind the port of a TIME_WAIT one.
    int one = 1;
    check_unix(::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one), "setsockopt(SO_REUSEADDR)");
  }
  if (::bind(fd.get(), raw.get(), raw.length) == -1)
    throw std::system_error(errno, std::system_category(), "bind " + (address.inet ? address.host : address.path));
  check_unix(::listen(fd.get(), std::max(backlog, 0)), "listen");
  return fd;
}

UniqueFd connect_socket(const SocketAddress& address) {
  RawAddress raw = to_raw(address);
  UniqueFd fd = new_socket(raw.family);
  if (::connect(fd.get(), raw.get(), raw.length) == 0) return fd;
  int error = errno;
  if (error == EINTR) {
    // An interrupted connect() goes on in the background and must not be restarted (EALREADY):
    // wait for it to finish and read its result.
    while (!wait_writable(fd.get(), std::nullopt)) {
    }
    socklen_t len = sizeof error;
    check_unix(::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &len), "getsockopt(SO_ERROR)");
    if (error == 0) return fd;
  }
  throw std::system_error(error, std::system_category(),
                          "connect " + (address.inet ? address.host + ":" + std::to_string(address.port) : address.path));
}

UniqueFd accept_socket(int listening, SocketAddress& peer) {
  for (;;) {
    sockaddr_storage storage{};
    socklen_t length = sizeof storage;
    int fd = ::accept4(listening, reinterpret_cast<sockaddr*>(&storage), &length, SOCK_CLOEXEC);
    if (fd >= 0) {
      peer = from_raw(storage, length);
      return UniqueFd(fd);
    }
    switch (errno) {
      // accept(2): "Linux accept() passes already-pending network errors on the new socket as an
      // error code from accept()... the application should treat them like EAGAIN by retrying."
      case EINTR: case ECONNABORTED: case ENETDOWN: case EPROTO: case ENOPROTOOPT: case EHOSTDOWN:
      case ENONET: case EHOSTUNREACH: case EOPNOTSUPP: case ENETUNREACH:
        continue;
      default:
        check_unix(-1, "accept4");
    }
  }
}

SocketAddress local_address(int fd) {
  sockaddr_storage storage{};
  socklen_t length = sizeof storage;
  check_unix(::getsockname(fd, reinterpret_cast<sockaddr*>(&storage), &length), "getsockname");
  return from_raw(storage, length);
}

std::string make_temp_dir(const std::string& dir, const std::string& prefix) {
  std::string pattern = dir + "/" + prefix + "XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) throw std::system_error(errno, std::system_category(), "mkdtemp " + pattern);
  return std::string(buf.data());
}

bool unlink_path(const std::string& path) noexcept { return ::unlink(path.c_str()) == 0; }
bool remove_dir(const std::string& path) noexcept { return ::rmdir(path.c_str()) == 0; }

}  // namespace mp::detail::posix
