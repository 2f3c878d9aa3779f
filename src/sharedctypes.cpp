// The type-erased core of Value, Array, RawValue and RawArray (Python: multiprocessing/
// sharedctypes.py and heap.py). Where CPython carves objects out of mmap'd arenas, each object
// here is a SharedBlock of its own (src/shared_block.hpp: an anonymous memfd), so that there is
// no allocator to share between processes and nothing named to clean up.
#include <multiprocessing/sharedctypes.hpp>

#include <string>

#include "posix/fd.hpp"
#include "shared_block.hpp"

namespace mp::detail {

SharedBuffer::SharedBuffer(std::size_t size, const char* debug_name)
    : block_(SharedBlock::create(size, debug_name)),
      data_(static_cast<std::byte*>(block_->data())),
      size_(size) {}

int SharedBuffer::fileno() const {
  if (!block_) throw std::logic_error("mp: an empty shared array (default-constructed) cannot be passed to another process");
  return block_->fd();
}

SharedBuffer SharedBuffer::from_imported_fd(std::int32_t index, std::uint64_t size) {
  if (index < 0) throw std::invalid_argument("mp: bad fd index in a received shared object");
  posix::UniqueFd fd(import_fd(static_cast<std::size_t>(index)));
  if (size > SIZE_MAX) throw std::invalid_argument("mp: a received shared object is too large");
  SharedBuffer out;
  out.block_ = SharedBlock::adopt(std::move(fd), static_cast<std::size_t>(size));
  out.data_ = static_cast<std::byte*>(out.block_->data());
  out.size_ = out.block_->size();
  return out;
}

void throw_bad_shared_size(const char* type, std::size_t size, std::size_t element) {
  throw std::invalid_argument(std::string("mp: a received ") + type + " has " + std::to_string(size) +
                              " bytes, which do not fit its element type of " + std::to_string(element) + " bytes");
}

void throw_index_error(const char* type, std::size_t index, std::size_t size) {
  throw std::out_of_range(std::string("mp::") + type + ": index " + std::to_string(index) + " out of range (size " +
                          std::to_string(size) + ")");
}

void throw_no_lock(const char* type) {
  throw std::logic_error(std::string("mp::") + type + ": get_lock() of an object created with lock = false");
}

}  // namespace mp::detail
