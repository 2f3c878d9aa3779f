// Fuzz target for the pickle reader (mp::pickle::loads, the reader of bytes from Python peers).
// Loading may only fail with std::invalid_argument. A value that loads must dump in every
// protocol, load back to an equal value and dump again to the same bytes; its repr() and a
// conversion to plain C++ containers must work (or refuse with std::invalid_argument when the
// memo makes copying out too big). Seeds: fuzz/corpus/pickle/ (real python3 dumps of several
// protocols, made by tests/interop/pickle_interop_test.cpp's seed list).
#include <multiprocessing/pickle.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

[[noreturn]] void fail(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "pickle_fuzz: %s %s\n", what, detail.c_str());
  std::abort();
}

template <class T>
void same_as_value_path(std::span<const std::byte> input, const mp::pickle::Value& value) {
  std::optional<T> direct, via;
  try {
    direct = mp::pickle::loads<T>(input);
  } catch (const std::invalid_argument&) {
  }
  try {
    via = value.as<T>();
  } catch (const std::invalid_argument&) {
  } catch (const std::out_of_range&) {
  }
  if (direct.has_value() != via.has_value()) fail("loads<T> and Value::as<T> disagree on whether it converts");
  if (direct && !(*direct == *via)) fail("loads<T> and Value::as<T> give different values");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace pickle = mp::pickle;
  const std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data), size);
  pickle::Value value;
  try {
    value = pickle::loads(input);
  } catch (const std::invalid_argument&) {
    return 0;
  }
  for (int protocol = 2; protocol <= 5; ++protocol) {
    mp::Bytes encoded;
    try {
      encoded = pickle::dumps(value, protocol);
    } catch (const std::invalid_argument& e) {
      fail("a loaded value does not dump:", e.what());
    }
    pickle::Value again;
    try {
      again = pickle::loads(encoded);
    } catch (const std::invalid_argument& e) {
      fail("a dumped value does not load:", e.what());
    }
    if (!(again == value)) fail("a round trip changed the value");
    if (pickle::dumps(again, protocol) != encoded) fail("a round trip dumps differently");
  }
  // Copying out and printing walk shared structure once per reference: only when small.
  try {
    pickle::detail::check_expansion(value, 100000);
  } catch (const std::invalid_argument&) {
    return 0;
  }
  (void)value.repr();
  try {
    (void)pickle::loads<std::vector<pickle::Value>>(input);
  } catch (const std::invalid_argument&) {
  }
  try {
    (void)pickle::loads<std::vector<std::pair<std::string, pickle::Value>>>(input);
  } catch (const std::invalid_argument&) {
  }
  // loads<T> reads these straight from the bytes (detail::Cursor): it must agree with the
  // conversion of the loaded Value, in result and in refusal.
  same_as_value_path<std::map<std::string, long>>(input, value);
  same_as_value_path<std::map<long, std::vector<double>>>(input, value);
  same_as_value_path<std::vector<std::map<std::string, std::string>>>(input, value);
  same_as_value_path<std::vector<std::optional<mp::Bytes>>>(input, value);
  same_as_value_path<std::vector<std::vector<bool>>>(input, value);
  return 0;
}
