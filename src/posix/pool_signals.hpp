// Signals for process pools: workers ignore SIGINT (a terminal's Ctrl-C is the parent's to
// handle); a pool that asked for it turns SIGINT in its process into a readable descriptor.
#pragma once

namespace mp::detail::posix {

/// SIGINT is ignored in this process from now on.
void ignore_sigint() noexcept;

/// Installs (once per process) a SIGINT handler that writes a byte to a pipe, and returns the
/// pipe's read end (non-blocking) for poll(2). The handler chains to nothing: while installed,
/// SIGINT only makes the descriptor readable. std::system_error when the pipe cannot be made.
int sigint_watch_fd();
/// Reads whatever the pipe holds; true when a SIGINT arrived since the last call.
bool take_sigint() noexcept;
/// Puts back the SIGINT disposition that was in place before sigint_watch_fd().
void restore_sigint() noexcept;

}  // namespace mp::detail::posix
