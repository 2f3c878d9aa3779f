// Test helper: bytes written as hex, as PROTOCOLS.md and CPython's pickletools show them.
#pragma once

#include <multiprocessing/base.hpp>

#include <string_view>

namespace mp::testing {

/// The bytes of hex digit pairs; anything that is not a lower-case hex digit (spaces) is skipped.
inline Bytes from_hex(std::string_view hex) {
  Bytes out;
  unsigned v = 0;
  int n = 0;
  for (char c : hex) {
    int d = -1;
    if (c >= '0' && c <= '9') d = c - '0';
    if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    if (d < 0) continue;
    v = v * 16 + static_cast<unsigned>(d);
    if (++n == 2) {
      out.push_back(static_cast<std::byte>(v));
      v = 0;
      n = 0;
    }
  }
  return out;
}

}  // namespace mp::testing
