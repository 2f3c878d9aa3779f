// The resource tracker (Python: multiprocessing/resource_tracker.py): unlinks the named things
// this program created (shared_memory::SharedMemory segments; AF_UNIX socket files) when every
// process of the program is gone, even after a SIGKILL.
//
// Only named things need it: the library's own objects (Lock, Value, ...) live in anonymous
// memfd segments (src/shared_block.hpp) that the kernel frees by itself.
#pragma once

#include <string>
#include <string_view>

namespace mp::detail::resource_tracker {

/// argv[1] of the tracker process (argv[2] is its socket's fd number).
inline constexpr const char* kMarker = "--multiprocessing-resource-tracker";

/// Resource types, as in CPython's tracker protocol.
inline constexpr std::string_view kSharedMemory = "shared_memory";  // name: shm_open's name, "/psm_..."
inline constexpr std::string_view kSocket = "socket";               // name: a filesystem path

/// Registers name with this process's tracker, starting it on first need (or again, if it died:
/// everything this process registered is registered again). Never throws: when no tracker can be
/// started, a warning is logged and the name is not tracked. Thread-safe.
void register_resource(const std::string& name, std::string_view type) noexcept;

/// Unregisters name (after the caller unlinked it). Does nothing in a process without a tracker.
void unregister_resource(const std::string& name, std::string_view type) noexcept;

/// The pid of the tracker this process talks to (its own, or the one a fork parent started),
/// 0 when there is none yet. For tests.
int tracker_pid() noexcept;

}  // namespace mp::detail::resource_tracker
