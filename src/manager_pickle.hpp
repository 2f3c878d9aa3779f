// The pickle vocabulary of CPython's manager protocol (PROTOCOLS.md §3.3-3.4, §4), for
// src/managers.cpp. Manager traffic carries a few Python objects besides plain data: exceptions
// in '#ERROR' replies, multiprocessing.managers.Token in '#PROXY' replies, Namespace values,
// array.array and pickled proxies. They are read and written as *data*: nothing is ever imported
// or called. Such an object is a tuple tagged with kObjectTag, so it stays a plain Value:
//   (kObjectTag, "module.name", args_tuple, state)   a REDUCE or NEWOBJ result (+ BUILD state,
//                                                    None when there was no BUILD)
//   (kObjectTag, "module.name")                      the class itself, used as data (the proxy
//                                                    class inside a RebuildProxy's arguments)
#pragma once

#include <multiprocessing/managers.hpp>
#include <multiprocessing/pickle.hpp>

#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace mp::pickle::detail {

/// First item of a tagged object tuple: a bytes value no manager sends as data of its own.
inline constexpr std::string_view kObjectTag{"\0mp.pyobject", 12};

/// loads() with the manager allow-list added: builtins exceptions (and any module's class whose
/// name ends in Error/Exception/Warning/Exit/Interrupt, as user exceptions in '#ERROR' replies),
/// multiprocessing.managers.{Token, Namespace, RebuildProxy, AutoProxy, *Proxy}, array.array.
/// These REDUCE/NEWOBJ/BUILD into tagged tuples. Everything else is refused as loads() refuses it.
Value load_manager_value(std::span<const std::byte> data);

}  // namespace mp::pickle::detail

namespace mp::detail::managers {

/// A manager's reply as a client reads it: the (kind, payload) tuple, an '#ERROR' exception of a
/// class outside the allow-list (queue.Empty) as a tagged object with its name and no arguments.
/// std::invalid_argument for anything else that is not a loadable (str, payload) tuple.
pickle::Value load_reply(std::span<const std::byte> raw);

/// A manager server with SyncManager's typeids and no sockets, fed request messages directly
/// (the decoding and dispatch of Server, for fuzz/manager_fuzz.cpp). It behaves as a stopping
/// server: waiting calls (Queue.get, Lock.acquire) fail at once instead of waiting.
class RequestSandbox {
 public:
  RequestSandbox();
  ~RequestSandbox();
  /// The reply the server sends to this request message (a pickle); shutdown and
  /// accept_connection only get their reply.
  std::string handle(std::span<const std::byte> message);
  /// Drops every object and starts the ids again from "10000" (a fresh server, without making a
  /// new listener).
  void reset();

 private:
  std::shared_ptr<Server::Impl> impl_;
};

}  // namespace mp::detail::managers
