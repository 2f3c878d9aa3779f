// CPython's connection handshake (PROTOCOLS.md §2), split into the pure parts (the MACs, making and
// checking a response) that the fuzz target and the tests call directly, and the message reader
// with its size cap and deadline. deliver_challenge/answer_challenge (connection.hpp) are built on
// them in auth.cpp.
#pragma once

#include <multiprocessing/connection.hpp>

#include "posix/fd.hpp"
#include "posix/socket.hpp"

#include <cstddef>
#include <optional>
#include <span>
#include <string_view>

namespace mp::detail::auth {

/// Every handshake message is read with this limit (CPython's recv_bytes(256)).
inline constexpr std::size_t kMaxMessage = 256;
/// Random bytes after the {sha256} prefix of a challenge (CPython 3.12+'s _MESSAGE_LENGTH).
inline constexpr std::size_t kNonceLength = 40;
/// A challenge shorter than this is refused by the responder (CPython's _MD5ONLY_MESSAGE_LENGTH).
inline constexpr std::size_t kMinChallenge = 20;

inline constexpr std::string_view kChallenge = "#CHALLENGE#";
inline constexpr std::string_view kWelcome = "#WELCOME#";
inline constexpr std::string_view kFailure = "#FAILURE#";

/// HMAC-`digest`(key, message) for a digest CPython allows (md5, sha256, sha384, sha3_256,
/// sha3_384); std::nullopt for any other name.
std::optional<Bytes> hmac(std::string_view digest, std::span<const std::byte> key, std::span<const std::byte> message);

/// Splits a challenge payload or a response as CPython's _get_digest_name_and_payload: a legacy
/// length (16 or 20 bytes) is ("", all of it) whatever it holds; otherwise it must be "{name}" +
/// payload with '}' within the first 10 bytes and name allowed. std::nullopt otherwise.
struct DigestAndPayload {
  std::string_view digest;  // "" for the legacy form
  std::span<const std::byte> payload;
};
std::optional<DigestAndPayload> split_digest(std::span<const std::byte> message);

/// The responder's answer to the challenge payload `message` (what follows #CHALLENGE#), per
/// PROTOCOLS.md §2.3. AuthenticationError when it is too short or names no allowed digest.
Bytes make_response(std::span<const std::byte> key, std::span<const std::byte> message);

/// The challenger's check of `response` to the challenge payload `message`: true only when it is a
/// bare HMAC-MD5 or an allowed {name} + HMAC-name of all of message (compared in constant time).
bool verify_response(std::span<const std::byte> key, std::span<const std::byte> message,
                     std::span<const std::byte> response);

/// Reads one handshake message from the connection: at most kMaxMessage bytes of payload, all of it
/// before the deadline. Reads the fd directly (never more than the message's bytes), so that a
/// peer that stops in the middle of a message cannot block past the deadline. AuthenticationError
/// for a longer message or a malformed header, TimeoutError at the deadline, EOFError when the
/// peer closes.
Bytes read_message(Connection& connection, const posix::Deadline& deadline);
/// The same, for a descriptor of a kind already known (fd_kind is a system call).
Bytes read_message(Connection& connection, const posix::Deadline& deadline, posix::FdKind kind);

/// The two halves of the handshake with one deadline for all their messages (Listener::accept and
/// Client give both halves a single deadline); they throw as connection::deliver_challenge.
void deliver_challenge(Connection& connection, const Bytes& authkey, const posix::Deadline& deadline);
void answer_challenge(Connection& connection, const Bytes& authkey, const posix::Deadline& deadline);
/// Both halves, as Listener.accept (challenger_first) and Client run them.
void handshake(Connection& connection, const Bytes& authkey, const posix::Deadline& deadline, bool challenger_first);
/// The same on a descriptor of a kind already known. On a stream socket each side writes what it
/// can without waiting for the peer (the client's challenge goes with its response): the same
/// bytes in the same order as CPython, in four flights instead of six.
void handshake(Connection& connection, const Bytes& authkey, const posix::Deadline& deadline, bool challenger_first,
               posix::FdKind kind);

}  // namespace mp::detail::auth
