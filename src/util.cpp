// Small helpers of the library (Python: multiprocessing.util).
#include <multiprocessing/base.hpp>

#include <cstring>

namespace mp {

Bytes bytes(std::string_view s) {
  Bytes out(s.size());
  if (!s.empty()) std::memcpy(out.data(), s.data(), s.size());
  return out;
}

}  // namespace mp
