// Queues between processes (Python: multiprocessing.queues): Queue, SimpleQueue, JoinableQueue.
//
// Design: each queue is one anonymous shared-memory segment holding a ring of 1 MiB. put() encodes
// the item with the native codec (reduction.hpp) and copies it into the ring as a [length][bytes]
// record; get() copies it out and decodes it. Producers and consumers of every process read and
// write the ring directly: there is no feeder thread (unlike Python's Queue), so put() has handed
// the item over when it returns, and join_thread() has nothing to wait for. Producers take one
// small robust lock in the segment, consumers another, so a producer and a consumer never wait for
// each other; a record becomes visible only when the tail moves past it, after it is fully
// written, so a process killed mid-put or mid-get never leaves a half record behind, and a lock
// holder that died is replaced (as for mp::Lock). Waiting is adaptive: a waiter spins briefly,
// then sleeps on a futex with its deadline; put() and get() make no system call when nobody waits.
//
// Unbounded queues (maxsize 0) do not grow: when 1 MiB of unread items fills the ring, put() waits
// for consumers (back-pressure at the ring size instead of unbounded memory). Items larger than
// 256 KiB travel out of line: put() copies them into a memory file whose descriptor crosses by the
// queue's private socket, and only a small marker enters the ring, so any size works (up to the
// memory available) without holding small items up; the files (up to 16 MiB) are recycled and
// stay mapped, so a stream of large items costs one copy in and one copy out. maxsize bounds the
// number of items. Numbers, strings and vectors of numbers or bytes are written and read without
// the codec's machinery (the same encoding): their put and get allocate nothing but the result.
//
// Each queue is a handle: copies share it; it crosses to fork children by inheritance and to spawn
// and forkserver children as a Process argument (its descriptors travel).
#pragma once

#include <multiprocessing/base.hpp>
#include <multiprocessing/detail/queue_core.hpp>
#include <multiprocessing/reduction.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <utility>

namespace mp {

template <class T>
class Queue {
  static_assert(detail::is_serializable_v<T>, "mp::Queue<T>: T must cross by the native codec (reduction.hpp)");

 public:
  /// A new queue holding at most maxsize items (0: unbounded, see the header comment). Also the
  /// default constructor. std::system_error when the system refuses the memory or descriptors.
  explicit Queue(std::size_t maxsize = 0) : core_(detail::queue_create(maxsize)) {}

  /// Puts obj, waiting while a bounded queue is full (or the ring is full of unread items).
  /// std::logic_error after close() in this process.
  void put(const T& obj) { put_impl(obj, true, std::nullopt); }
  /// As put(), but throws mp::Full when there is still no room after timeout.
  void put(const T& obj, Duration timeout) { put_impl(obj, true, timeout); }
  /// Puts obj only if there is room at once; mp::Full otherwise.
  void put_nowait(const T& obj) { put_impl(obj, false, std::nullopt); }

  /// Takes the oldest item, waiting for one. A value that is not a T is std::invalid_argument.
  T get() { return get_impl(true, std::nullopt); }
  /// As get(), but throws mp::Empty when no item came within timeout.
  T get(Duration timeout) { return get_impl(true, timeout); }
  /// Takes an item only if one is there now; mp::Empty otherwise.
  T get_nowait() { return get_impl(false, std::nullopt); }
  T get_no_wait() { return get_nowait(); }

  /// The number of items in the queue now (a snapshot).
  std::size_t qsize() const { return detail::queue_qsize(core()); }
  bool empty() const { return qsize() == 0; }
  bool full() const { return detail::queue_full(core()); }

  /// This process will put no more: put() here throws std::logic_error afterwards; get() works.
  void close() { detail::queue_close(core()); }
  /// After close(): returns at once, as put() hands every item over before it returns (no
  /// feeder thread). std::logic_error before close(), as Python asserts.
  void join_thread() {
    if (!detail::queue_closed(core())) throw std::logic_error("mp: Queue.join_thread() before close()");
  }
  /// Nothing is ever left unflushed (no feeder thread): a no-op, kept for Python's API.
  void cancel_join_thread() { (void)core(); }

  template <class Archive>
  void save(Archive& ar) const {
    std::int32_t indexes[3];
    detail::queue_export(core(), indexes);
    ar(indexes[0], indexes[1], indexes[2]);
  }
  template <class Archive>
  void load(Archive& ar) {
    std::int32_t a = -1, b = -1, c = -1;
    ar(a, b, c);
    core_ = detail::queue_import(a, b, c);
  }

 protected:
  detail::QueueCore& core() const {
    if (!core_) detail::queue_throw_empty_handle();
    return *core_;
  }

 private:
  void put_impl(const T& obj, bool block, Timeout timeout) {
    detail::QueueCore& c = core();
    bool done;
    if constexpr (detail::queue_plain_number<T>::value) {
      // A number's encoding is its bytes: put as they are, without the codec.
      done = detail::queue_put(c, std::as_bytes(std::span(&obj, 1)), {}, block, timeout);
    } else if constexpr (detail::queue_block_container<T>::value) {
      // Encoded in place: the count, then the elements straight from obj (one copy fewer).
      const std::uint64_t count = obj.size();
      const auto body = std::as_bytes(std::span(obj.data(), obj.size()));
      done = detail::queue_put(c, std::as_bytes(std::span(&count, 1)), body, block, timeout);
    } else {
      Bytes& buffer = detail::queue_put_buffer();
      struct Trim {
        ~Trim() { detail::queue_trim_buffers(); }
      } trim;
      detail::dump_into(buffer, obj);
      done = detail::queue_put(c, std::span<const std::byte>(buffer), {}, block, timeout);
    }
    if (!done) detail::queue_throw_full();
  }
  T get_impl(bool block, Timeout timeout) {
    detail::QueueCore& c = core();
    std::span<const std::byte> view;
    std::shared_ptr<void> keep;  // a large item's segment, handed back when this returns
    if (!detail::queue_get(c, block, timeout, view, keep)) detail::queue_throw_empty();
    T out{};
    if constexpr (detail::queue_plain_number<T>::value) {
      if (view.size() == sizeof(T)) {
        std::memcpy(&out, view.data(), sizeof(T));
        return out;
      }
    } else if constexpr (detail::queue_block_container<T>::value) {
      // The codec's encoding, read without the codec when it is well formed (else the codec
      // reports what is wrong).
      using E = typename T::value_type;
      std::uint64_t count = 0;
      if (view.size() >= sizeof count) {
        std::memcpy(&count, view.data(), sizeof count);
        if (count == (view.size() - sizeof count) / sizeof(E) && (view.size() - sizeof count) % sizeof(E) == 0) {
          const std::byte* first = view.data() + sizeof count;
          if constexpr (sizeof(E) == 1) {  // bytes and characters: no zero-filling first
            out.assign(reinterpret_cast<const E*>(first), reinterpret_cast<const E*>(first) + count);
          } else {
            out.resize(static_cast<std::size_t>(count));
            if (count != 0) std::memcpy(out.data(), first, view.size() - sizeof count);
          }
          return out;
        }
      }
    }
    detail::load_from(view, out);
    return out;
  }

  std::shared_ptr<detail::QueueCore> core_;
};

/// A queue without size, timeouts or join (Python's SimpleQueue), over the same ring.
template <class T>
class SimpleQueue {
 public:
  SimpleQueue() = default;
  bool empty() const { return queue_.empty(); }
  T get() { return queue_.get(); }
  void put(const T& obj) { queue_.put(obj); }
  void close() { queue_.close(); }

  template <class Archive>
  void save(Archive& ar) const {
    ar(queue_);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(queue_);
  }

 private:
  Queue<T> queue_;
};

/// A Queue that counts unfinished items (Python's JoinableQueue): each put() adds one, each
/// task_done() removes one, join() waits until none is left. The count lives in the queue's
/// shared segment, so task_done() and join() work from any process.
template <class T>
class JoinableQueue : public Queue<T> {
 public:
  using Queue<T>::Queue;
  /// Marks one item taken by get() as processed. std::logic_error when called more times than
  /// items were put.
  void task_done() { detail::queue_task_done(this->core()); }
  /// Waits until every item put so far has been task_done().
  void join() { detail::queue_join(this->core()); }
};

}  // namespace mp
