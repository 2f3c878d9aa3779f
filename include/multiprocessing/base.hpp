// Basic vocabulary of the library: byte strings, durations, timeouts and every error type.
// Python: the exceptions of the `multiprocessing` package (ProcessError, BufferTooShort,
// AuthenticationError, TimeoutError) plus the ones it borrows from `queue`, `threading` and
// builtins (Empty, Full, BrokenBarrierError, EOFError, StopIteration).
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mp {

/// A byte string: authkeys, send_bytes payloads, codec output.
using Bytes = std::vector<std::byte>;
/// Seconds as a double; 100ms, 2s and Duration(0.5) all convert.
using Duration = std::chrono::duration<double>;
/// std::nullopt waits forever.
using Timeout = std::optional<Duration>;

/// mp::bytes("abracadabra"): the characters of s as bytes.
Bytes bytes(std::string_view s);

/// Base of the library's own errors (Python's multiprocessing.ProcessError).
class ProcessError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// recv_bytes_into() was given a buffer too small for the message; message() holds all of it.
class BufferTooShort : public ProcessError {
 public:
  BufferTooShort(std::string what, Bytes message) : ProcessError(std::move(what)), message_(std::move(message)) {}
  const Bytes& message() const noexcept { return message_; }

 private:
  Bytes message_;
};

/// The authentication handshake failed (wrong key, or a peer that does not speak it).
class AuthenticationError : public ProcessError {
 public:
  using ProcessError::ProcessError;
};

/// A blocking call ran out of time (Python's multiprocessing.TimeoutError).
class TimeoutError : public ProcessError {
 public:
  using ProcessError::ProcessError;
};

/// An exception raised in another process that has no C++ type here to be rethrown as.
class RemoteError : public ProcessError {
 public:
  RemoteError(std::string type_name, std::string what, std::string traceback)
      : ProcessError(std::move(what)), type_name_(std::move(type_name)), traceback_(std::move(traceback)) {}
  /// The demangled C++ type (or Python type) of the original exception.
  const std::string& type_name() const noexcept { return type_name_; }
  /// Where it was raised: the process and, where known, the call chain.
  const std::string& traceback() const noexcept { return traceback_; }

 private:
  std::string type_name_, traceback_;
};

/// A pool worker died while running a task (beyond Python, where the pool hangs).
class WorkerLostError : public ProcessError {
 public:
  using ProcessError::ProcessError;
};

/// recv() on a connection whose peer closed (or vanished mid-message).
class EOFError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A queue had nothing to get in time (Python's queue.Empty).
class Empty : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A bounded queue had no room in time (Python's queue.Full).
class Full : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A Barrier was broken, aborted or reset while waiting (Python's threading.BrokenBarrierError).
class BrokenBarrierError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// An iterator was advanced past its end (Python's StopIteration).
class StopIteration : public std::out_of_range {
 public:
  using std::out_of_range::out_of_range;
};

}  // namespace mp
