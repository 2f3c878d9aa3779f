// Template bodies of mp::Process: how a target and its arguments are kept for each start method.
#pragma once

#include <multiprocessing/base.hpp>
#include <multiprocessing/reduction.hpp>

#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>

namespace mp::detail {

/// A function pointer of any type, stored as one type (converting between function pointer
/// types is exact and round-trips; converting to void* would not be portable C++).
using ErasedFn = void (*)();
/// The trampoline a spawn/forkserver child runs: decodes the arguments and calls the target.
using SpawnEntry = void (*)(ErasedFn fn, std::span<const std::byte> args);

/// Instantiated for the exact decayed target and argument types in the parent; the child of
/// the same binary finds this instantiation by its (module, offset) address, so the types it
/// decodes are the types the parent encoded.
template <class Fn, class... A>
void spawn_entry(ErasedFn erased, std::span<const std::byte> data) {
  Fn fn = [&]() -> Fn {
    if constexpr (std::is_pointer_v<Fn>) {
      return reinterpret_cast<Fn>(erased);
    } else {
      (void)erased;
      return Fn{};  // a captureless lambda or stateless function object: any instance will do
    }
  }();
  if constexpr (sizeof...(A) == 0) {
    if (!data.empty()) throw std::invalid_argument("mp: arguments sent to a target that takes none");
    std::invoke(fn);
  } else {
    std::apply(fn, mp::loads<std::tuple<A...>>(data));
  }
}

/// What a Process runs, as built by its constructor.
struct ProcessTarget {
  /// Runs target(args...) on this process's copies (fork, and run() called directly).
  std::function<void()> call;
  /// The spawn recipe; entry is null when there is none, and why_not says why.
  SpawnEntry entry = nullptr;
  ErasedFn fn = nullptr;
  /// Encodes the arguments with the codec (called inside an FdExport by start()).
  std::function<Bytes()> encode_args;
  /// The callable's type, for error messages.
  const std::type_info* type = nullptr;
  const char* why_not = nullptr;
};

template <class F, class... Args>
ProcessTarget make_process_target(F&& target, Args&&... args) {
  using Fn = std::decay_t<F>;
  static_assert(std::is_invocable_v<Fn&, std::decay_t<Args>&...>,
                "mp::Process: the target cannot be called with these arguments (they are passed as lvalues, "
                "as Python's run() calls target(*args))");
  // The target and argument copies live in one shared block, so that the std::function stays
  // copyable for move-only callables and arguments too.
  struct State {
    Fn fn;
    std::tuple<std::decay_t<Args>...> args;
  };
  auto state = std::make_shared<State>(State{Fn(std::forward<F>(target)), {std::forward<Args>(args)...}});
  ProcessTarget t;
  t.type = &typeid(Fn);
  t.call = [state] { std::apply(state->fn, state->args); };

  constexpr bool is_function_pointer = std::is_pointer_v<Fn> && std::is_function_v<std::remove_pointer_t<Fn>>;
  constexpr bool is_stateless = std::is_class_v<Fn> && std::is_empty_v<Fn> && std::is_default_constructible_v<Fn>;
  constexpr bool args_serializable = (is_serializable_v<std::decay_t<Args>> && ...);
  if constexpr ((is_function_pointer || is_stateless) && args_serializable) {
    t.entry = &spawn_entry<Fn, std::decay_t<Args>...>;
    if constexpr (is_function_pointer) t.fn = reinterpret_cast<ErasedFn>(state->fn);
    if constexpr (sizeof...(Args) > 0) t.encode_args = [state] { return mp::dumps(state->args); };
  } else if constexpr (!(is_function_pointer || is_stateless)) {
    t.why_not =
        "it has state (a lambda with captures, a std::function, a bound or stateful object); under spawn and "
        "forkserver the target must be a function pointer, a captureless lambda or a default-constructible "
        "stateless function object, since it crosses to the child by name";
  } else {
    t.why_not =
        "an argument type is not serializable by the native codec (see mp::dumps); under spawn and forkserver "
        "the arguments are encoded and sent to the child";
  }
  return t;
}

}  // namespace mp::detail
