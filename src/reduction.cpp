// The native codec's cold paths (error messages) and the descriptor hand-over of handles that
// cross to spawn/forkserver children (Python: multiprocessing.reduction, DupFd / the
// resource_sharer; here the fds travel with the child's start message).
#include <multiprocessing/reduction.hpp>

#include <cxxabi.h>

#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <initializer_list>
#include <string>
#include <string_view>

#include "posix/fd.hpp"

namespace mp::detail {

namespace {

// Erases every ", <prefix>...>" (a defaulted template argument) from name, brackets balanced.
void erase_default_arguments(std::string& name, std::string_view prefix) {
  for (std::size_t at = name.find(prefix); at != std::string::npos; at = name.find(prefix, at)) {
    std::size_t end = at + prefix.size();
    for (int depth = 1; end < name.size() && depth > 0; ++end) {
      if (name[end] == '<') ++depth;
      if (name[end] == '>') --depth;
    }
    name.erase(at, end - at);
  }
}

void replace_all(std::string& name, std::string_view from, std::string_view to) {
  for (std::size_t at = name.find(from); at != std::string::npos; at = name.find(from, at + to.size()))
    name.replace(at, from.size(), to);
}

}  // namespace

std::string type_name(const std::type_info& type) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> demangled(abi::__cxa_demangle(type.name(), nullptr, nullptr, &status),
                                                   std::free);
  if (status != 0 || !demangled) return type.name();
  // the spelling a reader wrote: std::map<std::string, int>, not what the defaults expand to
  std::string name = demangled.get();
  replace_all(name, "std::__cxx11::", "std::");
  for (std::string_view defaulted : {", std::char_traits<", ", std::allocator<", ", std::less<", ", std::hash<",
                                     ", std::equal_to<"})
    erase_default_arguments(name, defaulted);
  replace_all(name, " >", ">");
  replace_all(name, "std::basic_string<char>", "std::string");
  replace_all(name, "std::basic_string<char16_t>", "std::u16string");
  replace_all(name, "std::basic_string<char32_t>", "std::u32string");
  replace_all(name, "std::basic_string<wchar_t>", "std::wstring");
  return name;
}

void throw_truncated(std::size_t needed, std::size_t offset, std::size_t left) {
  throw std::invalid_argument("truncated data: " + std::to_string(needed) + " bytes needed at offset " +
                              std::to_string(offset) + ", " + std::to_string(left) + " left");
}

void throw_too_many(const std::type_info* type, std::uint64_t count, std::size_t element_size, std::size_t offset,
                    std::size_t left) {
  const std::string what = type ? type_name(*type) : std::string("a container");
  throw std::invalid_argument(what + " at offset " + std::to_string(offset) + " claims " + std::to_string(count) +
                              " elements but only " + std::to_string(left) + " bytes follow (each element takes at least " +
                              std::to_string(element_size) + (element_size == 1 ? " byte)" : " bytes)"));
}

void throw_bad_bool(unsigned value, std::size_t offset) {
  throw std::invalid_argument("invalid bool byte " + std::to_string(value) + " at offset " + std::to_string(offset) +
                              " (must be 0 or 1)");
}

void throw_bad_variant_index(const std::type_info& type, std::int32_t index, std::size_t alternatives,
                             std::size_t offset) {
  throw std::invalid_argument("variant index " + std::to_string(index) + " at offset " + std::to_string(offset) +
                              " is out of range for " + type_name(type) + " (" + std::to_string(alternatives) +
                              " alternatives)");
}

void throw_bad_empty_value(const char* type, unsigned value, std::size_t offset) {
  throw std::invalid_argument("invalid " + std::string(type) + " byte " + std::to_string(value) + " at offset " +
                              std::to_string(offset) + " (must be 0)");
}

void throw_trailing(const std::type_info& type, std::size_t used, std::size_t total) {
  throw std::invalid_argument(std::to_string(total - used) + " bytes left over after the " + type_name(type) +
                              " that ends at offset " + std::to_string(used) + " (wrong type?)");
}

void rethrow_load_error(const std::type_info& type) {
  const auto wrap = [&](const char* what) {
    return std::invalid_argument("mp::loads<" + type_name(type) + ">: " + what);
  };
  try {
    throw;
  } catch (const std::invalid_argument& e) {
    throw wrap(e.what());
  } catch (const cereal::Exception& e) {  // cereal's own checks (e.g. its variant index)
    throw wrap(e.what());
  } catch (const std::length_error& e) {  // a size the container refuses
    throw wrap(e.what());
  }
}

// ---- descriptors of handles crossing to a child ----

namespace {
thread_local FdExport* innermost_export = nullptr;
thread_local FdImport* innermost_import = nullptr;
}  // namespace

FdExport::FdExport() : previous_(innermost_export) { innermost_export = this; }

FdExport::~FdExport() { innermost_export = previous_; }

int export_fd(int fd) {
  FdExport* exporter = innermost_export;
  if (exporter == nullptr)
    throw std::invalid_argument(
        "a handle (Connection, Queue, Lock, ...) crosses processes only as a Process argument: no FdExport is active "
        "on this thread");
  if (fd < 0) throw std::invalid_argument("export_fd: a closed handle cannot cross processes");
  exporter->fds_.push_back(fd);
  return static_cast<int>(exporter->fds_.size() - 1);
}

FdImport::FdImport(std::vector<int> fds) : fds_(std::move(fds)), previous_(innermost_import) {
  innermost_import = this;
}

FdImport::~FdImport() {
  innermost_import = previous_;
  for (int fd : fds_) {
    posix::UniqueFd unclaimed(fd);  // closes it (a claimed one is -1: nothing to close)
  }
}

int import_fd(std::size_t index) {
  FdImport* importer = innermost_import;
  if (importer == nullptr)
    throw std::invalid_argument("a handle's descriptor is loaded outside of a child's start (no FdImport is active)");
  if (index >= importer->fds_.size())
    throw std::invalid_argument("descriptor index " + std::to_string(index) + " out of range (" +
                                std::to_string(importer->fds_.size()) + " descriptors were passed)");
  int fd = importer->fds_[index];
  if (fd < 0) throw std::invalid_argument("descriptor index " + std::to_string(index) + " claimed twice");
  importer->fds_[index] = -1;
  return fd;
}

}  // namespace mp::detail
