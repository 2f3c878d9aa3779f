// The forkserver start method, parent side (Python: multiprocessing/popen_forkserver.py).
//
// Each child gets a private socketpair: its end goes to the forkserver (which forks the child
// with it), ours receives the child's pid and then its exit code, written by the server when it
// reaps the child. That socket is the sentinel: readable once the exit code arrives, or at EOF
// when the server died (exit code 255 then, as CPython).
#include <cstring>

#include "process_impl.hpp"

namespace mp::detail {

namespace {

// Records written by the server: 'P' + int32 pid, then 'S' + int32 exit code.
std::optional<int> read_record(int socket, char tag) {
  std::vector<posix::UniqueFd> fds;
  std::vector<std::byte> rec;
  try {
    rec = posix::recv_with_fds(socket, 16, fds, 1);
  } catch (const std::system_error& e) {
    // The peer socket was closed with data unread (a child killed before it read its
    // preparation): Linux reports ECONNRESET once, ahead of the records still queued for us.
    if (e.code().value() != ECONNRESET) throw;
    rec = posix::recv_with_fds(socket, 16, fds, 1);
  }
  if (rec.size() != 5 || rec[0] != std::byte(tag)) return std::nullopt;
  std::int32_t v;
  std::memcpy(&v, rec.data() + 1, sizeof v);
  return v;
}

class PopenForkserver : public Popen {
 public:
  PopenForkserver(int pid, posix::UniqueFd socket) : Popen(pid), socket_(std::move(socket)) {}
  int sentinel() const noexcept override { return socket_.get(); }

  std::optional<int> wait(const posix::Deadline& deadline) override {
    if (returncode_) return returncode_;
    if (!posix::wait_readable(socket_.get(), deadline)) return std::nullopt;
    try {
      returncode_ = read_record(socket_.get(), 'S').value_or(255);
    } catch (const std::system_error&) {
      returncode_ = 255;
    }
    return returncode_;
  }

 private:
  posix::UniqueFd socket_;
};

}  // namespace

std::unique_ptr<Popen> popen_forkserver(StartRequest& request) {
  auto [parent_end, child_end] = posix::seqpacket_pair();
  forkserver_request(std::move(child_end));
  // Sent before the pid is read: the child reads it as soon as the server has forked it. A
  // preparation larger than the socket buffer waits for the child, which the server forks on
  // its own, so this cannot deadlock. false: the child (or the server) is gone; the pid read
  // below says which.
  auto self = posix::open_pidfd(posix::current_pid());
  (void)send_preparation(parent_end.get(), request.prep, self.get(), request.handle_fds);
  std::optional<int> pid;
  try {
    pid = read_record(parent_end.get(), 'P');
  } catch (const std::system_error&) {
  }
  if (!pid || *pid <= 0) {
    forkserver_lost();
    throw ProcessError("mp: the forkserver did not start the child (the server died)");
  }
  return std::make_unique<PopenForkserver>(*pid, std::move(parent_end));
}

}  // namespace mp::detail
