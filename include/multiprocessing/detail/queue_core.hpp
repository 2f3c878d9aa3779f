// The untyped core behind Queue<T>, SimpleQueue<T> and JoinableQueue<T> (src/queues.cpp): a ring
// of encoded items in shared memory. The typed front ends in queues.hpp encode and decode with
// the native codec; everything that touches shared memory or the kernel lives in the library.
#pragma once

#include <multiprocessing/base.hpp>
#include <multiprocessing/detail/codec.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace mp::detail {

class QueueCore;

/// A new queue (std::system_error when the system refuses). maxsize 0: unbounded.
std::shared_ptr<QueueCore> queue_create(std::size_t maxsize);
/// A queue received from another process: the three indexes its save() wrote.
/// std::invalid_argument when they do not name a queue.
std::shared_ptr<QueueCore> queue_import(std::int32_t block, std::int32_t send_end, std::int32_t recv_end);
/// Registers the queue's fds with the current FdExport; writes their indexes to out.
void queue_export(const QueueCore& core, std::int32_t (&out)[3]);

/// The calling thread's reusable encoding buffer for put() (cleared by dump_into).
Bytes& queue_put_buffer() noexcept;
/// Releases the buffer's memory when a large item has grown it.
void queue_trim_buffers() noexcept;

/// Puts one encoded item given as head then body (a container of plain elements is put as its
/// encoded size then its elements, without being encoded into a buffer first). block = false or
/// a passed timeout: false when there was no room. std::logic_error after close() in this process.
bool queue_put(QueueCore& core, std::span<const std::byte> head, std::span<const std::byte> body, bool block,
               Timeout timeout);
inline bool queue_put(QueueCore& core, std::span<const std::byte> item, bool block, Timeout timeout) {
  return queue_put(core, item, {}, block, timeout);
}

/// True for the types whose encoding is their element count (u64) then their elements' bytes:
/// vectors of plain numbers or bytes and strings of characters (codec.hpp's fast paths).
template <class T>
struct queue_block_container : std::false_type {};
template <class E, class A>
struct queue_block_container<std::vector<E, A>> : std::bool_constant<codec::is_block_element_v<E>> {};
template <class C, class Tr, class A>
struct queue_block_container<std::basic_string<C, Tr, A>> : std::bool_constant<std::is_arithmetic_v<C>> {};
/// True for the numbers whose encoding is their bytes (bool is checked by the codec: excluded).
template <class T>
struct queue_plain_number : std::bool_constant<codec::is_block_element_v<T>> {};
/// Takes one item; view points at its bytes until the next get by this thread, or (for a large
/// item) while keep holds its mapping. false when none came in time.
bool queue_get(QueueCore& core, bool block, Timeout timeout, std::span<const std::byte>& view,
               std::shared_ptr<void>& keep);

std::size_t queue_qsize(QueueCore& core);
bool queue_full(QueueCore& core);
void queue_close(QueueCore& core) noexcept;
bool queue_closed(const QueueCore& core) noexcept;
void queue_task_done(QueueCore& core);
void queue_join(QueueCore& core);

[[noreturn]] void queue_throw_empty_handle();
[[noreturn]] void queue_throw_full();
[[noreturn]] void queue_throw_empty();

}  // namespace mp::detail
