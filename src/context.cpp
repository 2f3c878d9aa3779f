// Start methods and contexts (Python: multiprocessing/context.py).
#include <multiprocessing/context.hpp>

#include <array>
#include <atomic>
#include <stdexcept>

#include "process_impl.hpp"
#include "mpi/mpi_backend.hpp"

namespace mp {

namespace {

// "mpi" (src/mpi/) exists only in a build with MPI.
constexpr std::array<const char*, 4> kMethods{"fork", "spawn", "forkserver", "mpi"};
constexpr std::size_t kMpi = 3;

std::size_t method_count() { return detail::mpi::built_in() ? kMethods.size() : kMpi; }

int method_index(std::string_view method) {
  for (std::size_t i = 0; i < method_count(); ++i)
    if (method == kMethods[i]) return static_cast<int>(i);
  if (method == kMethods[kMpi])
    throw std::invalid_argument("cannot find context for 'mpi' (this build of the library has no MPI support)");
  throw std::invalid_argument("cannot find context for '" + std::string(method) + "'");
}

// The default context's actual method: -1 while unset. An atomic, not a mutex, so that a forked
// child never finds it locked.
std::atomic<int> g_actual{-1};
constexpr int kDefault = 0;  // fork, as CPython on Linux before 3.14

}  // namespace

namespace detail {

std::string actual_start_method() {
  int expected = -1;
  // Python's DefaultContext.get_context(): the first use fixes the default.
  g_actual.compare_exchange_strong(expected, kDefault);
  return kMethods[static_cast<std::size_t>(g_actual.load())];
}

}  // namespace detail

Context::Context() : method_(detail::actual_start_method()) {}

Context::Context(std::string_view method) : method_(kMethods[static_cast<std::size_t>(method_index(method))]) {}

Context get_context(std::string_view method) { return method.empty() ? Context() : Context(method); }

void set_start_method(std::string_view method, bool force) {
  if (method.empty()) {
    // set_start_method(None, force=True) in Python: back to the unset state.
    if (!force && g_actual.load() != -1) throw std::logic_error("context has already been set");
    g_actual.store(-1);
    return;
  }
  int index = method_index(method);
  if (force) {
    g_actual.store(index);
    return;
  }
  int expected = -1;
  if (!g_actual.compare_exchange_strong(expected, index)) throw std::logic_error("context has already been set");
}

std::string get_start_method() { return detail::actual_start_method(); }

std::vector<std::string> get_all_start_methods() {
  return {kMethods.begin(), kMethods.begin() + static_cast<std::ptrdiff_t>(method_count())};
}

}  // namespace mp
