// The native codec's template bodies (see <multiprocessing/reduction.hpp> for the interface).
//
// Values are written by our own cereal archives over a memory buffer: cereal's dispatch finds a
// type's serialize/save/load (member or free, as cereal users write them) and its
// cereal/types/*.hpp handle the std containers; the archives below define the primitives and
// the fast paths. The layout is fixed: little-endian, every size a uint64, a variant index an
// int32, a bool one byte (0 or 1), an optional a bool then the value, an enum its underlying type.
//
// The decoder reads bytes that come from another process, so it trusts nothing: every read is
// bounds-checked and every element count is checked against the bytes left BEFORE anything is
// allocated for it (an element takes at least one byte, contiguous arithmetic data exactly
// sizeof(T) each), so that a decoder never allocates more than its input could hold. Anything
// malformed ends in std::invalid_argument.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include <cereal/cereal.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/common.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>

#include <multiprocessing/base.hpp>

static_assert(std::endian::native == std::endian::little,
              "the native codec writes host byte order and defines its layout as little-endian");
static_assert(std::is_same_v<cereal::size_type, std::uint64_t>, "the codec writes sizes as uint64");

namespace mp::detail {

// Out of line (src/reduction.cpp): the cold paths, so that the inlined hot paths stay small.
/// The readable (demangled) name of a type, for error messages.
std::string type_name(const std::type_info& type);
/// std::invalid_argument: `needed` bytes were wanted at `offset` but only `left` remain.
[[noreturn]] void throw_truncated(std::size_t needed, std::size_t offset, std::size_t left);
/// std::invalid_argument: a container (type, or null when cereal's loader does not say) whose size
/// tag is at `offset` claims more elements than the `left` bytes after the tag could hold.
[[noreturn]] void throw_too_many(const std::type_info* type, std::uint64_t count,
                                 std::size_t element_size, std::size_t offset, std::size_t left);
/// std::invalid_argument: a bool byte that is neither 0 nor 1.
[[noreturn]] void throw_bad_bool(unsigned value, std::size_t offset);
/// std::invalid_argument: a variant index out of range.
[[noreturn]] void throw_bad_variant_index(const std::type_info& type, std::int32_t index,
                                          std::size_t alternatives, std::size_t offset);
/// std::invalid_argument: the byte of an empty value (std::monostate, std::tuple<>) is not 0.
[[noreturn]] void throw_bad_empty_value(const char* type, unsigned value, std::size_t offset);
/// std::invalid_argument: bytes left over after a whole value was read.
[[noreturn]] void throw_trailing(const std::type_info& type, std::size_t used, std::size_t total);
/// Rethrows the exception being handled (call it only inside a catch block) as
/// std::invalid_argument("mp::loads<T>: ...") when it is one the decoder raises for bad input
/// (std::invalid_argument, cereal::Exception, std::length_error); anything else unchanged.
[[noreturn]] void rethrow_load_error(const std::type_info& type);

namespace codec {

class CodecOutputArchive;
class CodecInputArchive;

/// Element types stored as one block of bytes: arithmetic (bool excepted: it is checked byte by
/// byte on load) and std::byte.
template <class T>
inline constexpr bool is_block_element_v =
    (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) || std::is_same_v<T, std::byte>;

// ---- archives ----

/// Appends the encoding to a Bytes buffer. Constructing one allocates nothing (cereal's base
/// only default-constructs its empty maps), so it is made afresh for every value.
class CodecOutputArchive : public cereal::OutputArchive<CodecOutputArchive> {
 public:
  explicit CodecOutputArchive(Bytes& out) noexcept : cereal::OutputArchive<CodecOutputArchive>(this), out_(out) {}
  CodecOutputArchive(const CodecOutputArchive&) = delete;
  CodecOutputArchive& operator=(const CodecOutputArchive&) = delete;
  ~CodecOutputArchive() noexcept = default;

  void save_bytes(const void* data, std::size_t size) {
    const auto* first = static_cast<const std::byte*>(data);
    out_.insert(out_.end(), first, first + size);
  }
  void save_size(std::size_t size) {
    const auto value = static_cast<std::uint64_t>(size);
    save_bytes(&value, sizeof value);
  }

 private:
  Bytes& out_;
};

/// Reads an encoding from a span, bounds-checked.
class CodecInputArchive : public cereal::InputArchive<CodecInputArchive> {
 public:
  explicit CodecInputArchive(std::span<const std::byte> data) noexcept
      : cereal::InputArchive<CodecInputArchive>(this), data_(data.data()), size_(data.size()) {}
  CodecInputArchive(const CodecInputArchive&) = delete;
  CodecInputArchive& operator=(const CodecInputArchive&) = delete;
  ~CodecInputArchive() noexcept = default;

  std::size_t offset() const noexcept { return pos_; }
  std::size_t remaining() const noexcept { return size_ - pos_; }

  /// The next `size` bytes (valid while the input is); advances past them.
  const std::byte* take(std::size_t size) {
    if (size > remaining()) throw_truncated(size, pos_, remaining());
    const std::byte* p = data_ + pos_;
    pos_ += size;
    return p;
  }
  void load_bytes(void* data, std::size_t size) {
    const std::byte* p = take(size);
    if (size != 0) std::memcpy(data, p, size);
  }
  /// A size tag for `count` elements of at least `element_size` bytes each, checked against
  /// the bytes left before the caller allocates anything for them.
  std::size_t load_size(std::size_t element_size, const std::type_info* container) {
    const std::size_t at = pos_;
    std::uint64_t count;
    load_bytes(&count, sizeof count);
    if (element_size == 0) element_size = 1;
    if (count > remaining() / element_size) throw_too_many(container, count, element_size, at, remaining());
    return static_cast<std::size_t>(count);
  }

 private:
  const std::byte* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

}  // namespace codec

/// Archive types cereal's traits are asked about to learn whether a type has a serialization
/// of its own (so that the bytewise fallback below never competes with it). Outside namespace
/// codec, so that looking up functions for them never finds (and recurses into) the fallback;
/// derived from cereal's bases, so that it finds cereal's own (for std::array, std::monostate...).
namespace codec_probe {
struct ProbeOutputArchive : cereal::OutputArchive<ProbeOutputArchive> {};
struct ProbeInputArchive : cereal::InputArchive<ProbeInputArchive> {};
}  // namespace codec_probe
}  // namespace mp::detail

CEREAL_REGISTER_ARCHIVE(mp::detail::codec::CodecOutputArchive)
CEREAL_REGISTER_ARCHIVE(mp::detail::codec::CodecInputArchive)
CEREAL_SETUP_ARCHIVE_TRAITS(mp::detail::codec::CodecInputArchive, mp::detail::codec::CodecOutputArchive)
CEREAL_SETUP_ARCHIVE_TRAITS(mp::detail::codec_probe::ProbeInputArchive, mp::detail::codec_probe::ProbeOutputArchive)

namespace mp::detail::codec {

/// True when T brings a cereal serialization (member or free serialize, save/load,
/// save_minimal/load_minimal, versioned or not, or cereal's own for std types).
template <class T>
inline constexpr bool has_cereal_serialization_v =
    cereal::traits::detail::count_output_serializers<T, codec_probe::ProbeOutputArchive>::value != 0 ||
    cereal::traits::detail::count_input_serializers<T, codec_probe::ProbeInputArchive>::value != 0;

/// A trivially copyable aggregate without a serialization of its own crosses as its bytes.
/// (An empty one is its one byte too, so that every element of a container takes a byte.)
template <class T>
concept BytewiseAggregate = std::is_class_v<T> && std::is_aggregate_v<T> && std::is_trivially_copyable_v<T> &&
                            !has_cereal_serialization_v<T>;

/// The fewest bytes any encoding of T takes (0 when unknown: a user type may write nothing).
template <class T>
struct min_encoded_size : std::integral_constant<std::size_t, 0> {};
template <class T>
  requires std::is_arithmetic_v<T> || std::is_enum_v<T> || BytewiseAggregate<T>
struct min_encoded_size<T> : std::integral_constant<std::size_t, sizeof(T)> {};
template <class C, class Tr, class A>
struct min_encoded_size<std::basic_string<C, Tr, A>> : std::integral_constant<std::size_t, 8> {};
template <class T, class A>
struct min_encoded_size<std::vector<T, A>> : std::integral_constant<std::size_t, 8> {};
template <class T, class A>
struct min_encoded_size<std::deque<T, A>> : std::integral_constant<std::size_t, 8> {};
template <class T, class A>
struct min_encoded_size<std::list<T, A>> : std::integral_constant<std::size_t, 8> {};
template <class K, class V, class C, class A>
struct min_encoded_size<std::map<K, V, C, A>> : std::integral_constant<std::size_t, 8> {};
template <class K, class V, class H, class E, class A>
struct min_encoded_size<std::unordered_map<K, V, H, E, A>> : std::integral_constant<std::size_t, 8> {};
template <class K, class C, class A>
struct min_encoded_size<std::set<K, C, A>> : std::integral_constant<std::size_t, 8> {};
template <class K, class H, class E, class A>
struct min_encoded_size<std::unordered_set<K, H, E, A>> : std::integral_constant<std::size_t, 8> {};
template <class T>
struct min_encoded_size<std::optional<T>> : std::integral_constant<std::size_t, 1> {};
template <class... Ts>
struct min_encoded_size<std::variant<Ts...>> : std::integral_constant<std::size_t, 4> {};
template <>
struct min_encoded_size<std::monostate> : std::integral_constant<std::size_t, 1> {};
template <class A, class B>
struct min_encoded_size<std::pair<A, B>>
    : std::integral_constant<std::size_t, min_encoded_size<A>::value + min_encoded_size<B>::value> {};
template <class... Ts>
struct min_encoded_size<std::tuple<Ts...>>
    : std::integral_constant<std::size_t, (std::size_t{0} + ... + min_encoded_size<Ts>::value)> {};
template <>
struct min_encoded_size<std::tuple<>> : std::integral_constant<std::size_t, 1> {};
template <class T, std::size_t N>
struct min_encoded_size<std::array<T, N>> : std::integral_constant<std::size_t, N * min_encoded_size<T>::value> {};

// ---- primitives (found by ADL through the archive types) ----

template <class T>
  requires std::is_arithmetic_v<T>
inline void CEREAL_SAVE_FUNCTION_NAME(CodecOutputArchive& ar, const T& value) {
  ar.save_bytes(&value, sizeof value);
}

template <class T>
  requires std::is_arithmetic_v<T>
inline void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, T& value) {
  if constexpr (std::is_same_v<T, bool>) {
    const std::size_t at = ar.offset();
    const auto byte = static_cast<unsigned>(*ar.take(1));
    if (byte > 1) throw_bad_bool(byte, at);
    value = byte != 0;
  } else {
    ar.load_bytes(&value, sizeof value);
  }
}

template <class T>
inline void CEREAL_SAVE_FUNCTION_NAME(CodecOutputArchive& ar, const cereal::BinaryData<T>& data) {
  ar.save_bytes(data.data, static_cast<std::size_t>(data.size));
}

template <class T>
inline void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, cereal::BinaryData<T>& data) {
  const auto size = static_cast<std::size_t>(data.size);
  const std::size_t at = ar.offset();
  const std::byte* p = ar.take(size);
  // cereal reads std::array<bool, N> and bool[N] as one block: check the bytes before they become bools
  using Element = std::remove_cv_t<std::remove_all_extents_t<std::remove_pointer_t<std::remove_reference_t<T>>>>;
  if constexpr (std::is_same_v<Element, bool>) {
    for (std::size_t i = 0; i < size; ++i)
      if (static_cast<unsigned>(p[i]) > 1) throw_bad_bool(static_cast<unsigned>(p[i]), at + i);
  }
  if (size != 0) std::memcpy(data.data, p, size);
}

template <class Archive, class T>
  requires std::is_same_v<Archive, CodecOutputArchive> || std::is_same_v<Archive, CodecInputArchive>
inline void CEREAL_SERIALIZE_FUNCTION_NAME(Archive& ar, cereal::NameValuePair<T>& nvp) {
  ar(nvp.value);
}

template <class T>
inline void CEREAL_SAVE_FUNCTION_NAME(CodecOutputArchive& ar, const cereal::SizeTag<T>& tag) {
  ar.save_size(static_cast<std::size_t>(tag.size));
}

// The size tag of cereal's own container loaders (deque, list, map, set, unordered_*): they
// resize or reserve right after it, so the count is checked here against the bytes left.
template <class T>
inline void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, cereal::SizeTag<T>& tag) {
  tag.size = static_cast<std::remove_reference_t<decltype(tag.size)>>(ar.load_size(1, nullptr));
}

// ---- std::monostate: one zero byte, so that every element of a container takes a byte ----
// (non-template: preferred over cereal's `template <class Archive> serialize(Archive&, monostate const&)`)

inline void CEREAL_SERIALIZE_FUNCTION_NAME(CodecOutputArchive& ar, const std::monostate&) {
  const std::uint8_t zero = 0;
  ar.save_bytes(&zero, 1);
}
inline void CEREAL_SERIALIZE_FUNCTION_NAME(CodecInputArchive& ar, std::monostate&) {
  const std::size_t at = ar.offset();
  const auto byte = static_cast<unsigned>(*ar.take(1));
  if (byte != 0) throw_bad_empty_value("std::monostate", byte, at);
}

// ---- std::tuple<> (a call without arguments): one zero byte too, for the same reason ----
// (non-template: preferred over cereal's `template <class Archive, class... T> serialize(Archive&, tuple<T...>&)`)

inline void CEREAL_SERIALIZE_FUNCTION_NAME(CodecOutputArchive& ar, std::tuple<>&) {
  const std::uint8_t zero = 0;
  ar.save_bytes(&zero, 1);
}
inline void CEREAL_SERIALIZE_FUNCTION_NAME(CodecInputArchive& ar, std::tuple<>&) {
  const std::size_t at = ar.offset();
  const auto byte = static_cast<unsigned>(*ar.take(1));
  if (byte != 0) throw_bad_empty_value("std::tuple<>", byte, at);
}

// ---- fast paths: strings and vectors (more specialized than cereal's, so they win) ----

template <class C, class Tr, class A>
  requires std::is_arithmetic_v<C>
inline void CEREAL_SAVE_FUNCTION_NAME(CodecOutputArchive& ar, const std::basic_string<C, Tr, A>& str) {
  ar.save_size(str.size());
  ar.save_bytes(str.data(), str.size() * sizeof(C));
}

template <class C, class Tr, class A>
  requires std::is_arithmetic_v<C>
inline void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, std::basic_string<C, Tr, A>& str) {
  const std::size_t n = ar.load_size(sizeof(C), &typeid(std::basic_string<C, Tr, A>));
  if constexpr (std::is_same_v<C, char> || std::is_same_v<C, unsigned char>) {
    str.assign(reinterpret_cast<const C*>(ar.take(n)), n);
  } else {
    str.resize(n);
    ar.load_bytes(str.data(), n * sizeof(C));
  }
}

template <class T, class A>
  requires(!std::is_same_v<T, bool>)
inline void CEREAL_SAVE_FUNCTION_NAME(CodecOutputArchive& ar, const std::vector<T, A>& vec) {
  ar.save_size(vec.size());
  if constexpr (is_block_element_v<T> || BytewiseAggregate<T>) {
    ar.save_bytes(vec.data(), vec.size() * sizeof(T));
  } else {
    for (const auto& element : vec) ar(element);
  }
}

template <class T, class A>
  requires(!std::is_same_v<T, bool>)
inline void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, std::vector<T, A>& vec) {
  if constexpr (is_block_element_v<T> || BytewiseAggregate<T>) {
    const std::size_t n = ar.load_size(sizeof(T), &typeid(std::vector<T, A>));
    if constexpr (std::is_same_v<T, std::byte> || std::is_same_v<T, char> || std::is_same_v<T, unsigned char>) {
      const auto* first = reinterpret_cast<const T*>(ar.take(n));
      vec.assign(first, first + n);
    } else {
      vec.resize(n);
      ar.load_bytes(vec.data(), n * sizeof(T));
    }
  } else {
    const std::size_t n = ar.load_size(min_encoded_size<T>::value, &typeid(std::vector<T, A>));
    vec.resize(n);
    for (auto& element : vec) ar(element);
  }
}

// ---- std::variant: cereal writes it (int32 index, then the value); we read it, to check the index ----

template <class... Ts>
inline void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, std::variant<Ts...>& var) {
  const std::size_t at = ar.offset();
  std::int32_t index;
  ar.load_bytes(&index, sizeof index);
  if (index < 0 || static_cast<std::size_t>(index) >= sizeof...(Ts))
    throw_bad_variant_index(typeid(std::variant<Ts...>), index, sizeof...(Ts), at);
  const auto wanted = static_cast<std::size_t>(index);
  auto load_alternative = [&]<std::size_t I>(std::integral_constant<std::size_t, I>) {
    if (var.index() != I) var.template emplace<I>();  // else reuse what it holds
    ar(std::get<I>(var));
  };
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (void)((I == wanted ? (load_alternative(std::integral_constant<std::size_t, I>{}), true) : false) || ...);
  }(std::index_sequence_for<Ts...>{});
}

// ---- trivially copyable aggregates without a serialization of their own: their bytes ----

template <class T>
  requires BytewiseAggregate<T>
inline void CEREAL_SAVE_FUNCTION_NAME(CodecOutputArchive& ar, const T& value) {
  ar.save_bytes(&value, sizeof(T));
}

template <class T>
  requires BytewiseAggregate<T>
inline void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, T& value) {
  ar.load_bytes(&value, sizeof(T));
}

// ---- what can cross ----

template <class T>
struct serializable : std::bool_constant<
    std::is_class_v<T> && std::is_default_constructible_v<T> &&
    cereal::traits::is_output_serializable<T, CodecOutputArchive>::value &&
    cereal::traits::is_input_serializable<T, CodecInputArchive>::value> {};
template <class T>
  requires std::is_arithmetic_v<T> || std::is_enum_v<T>
struct serializable<T> : std::true_type {};
template <class T>
struct serializable<T*> : std::false_type {};
template <class T, std::size_t N>
struct serializable<T[N]> : serializable<T> {};
template <class C, class Tr, class A>
struct serializable<std::basic_string<C, Tr, A>> : std::is_arithmetic<C> {};
template <class T, class A>
struct serializable<std::vector<T, A>> : serializable<T> {};
template <class T, class A>
struct serializable<std::deque<T, A>> : serializable<T> {};
template <class T, class A>
struct serializable<std::list<T, A>> : serializable<T> {};
template <class K, class V, class C, class A>
struct serializable<std::map<K, V, C, A>> : std::bool_constant<serializable<K>::value && serializable<V>::value> {};
template <class K, class V, class H, class E, class A>
struct serializable<std::unordered_map<K, V, H, E, A>>
    : std::bool_constant<serializable<K>::value && serializable<V>::value> {};
template <class K, class C, class A>
struct serializable<std::set<K, C, A>> : serializable<K> {};
template <class K, class H, class E, class A>
struct serializable<std::unordered_set<K, H, E, A>> : serializable<K> {};
template <class T>
struct serializable<std::optional<T>> : serializable<T> {};
template <class... Ts>
struct serializable<std::variant<Ts...>> : std::bool_constant<(serializable<Ts>::value && ...)> {};
template <class A, class B>
struct serializable<std::pair<A, B>> : std::bool_constant<serializable<A>::value && serializable<B>::value> {};
template <class... Ts>
struct serializable<std::tuple<Ts...>> : std::bool_constant<(serializable<Ts>::value && ...)> {};
template <class T, std::size_t N>
struct serializable<std::array<T, N>> : serializable<T> {};

}  // namespace mp::detail::codec

namespace mp::detail {

/// True when a T can cross by the codec (dumps/loads compile for it and loads can construct it).
template <class T>
inline constexpr bool is_serializable_v = codec::serializable<std::remove_cvref_t<T>>::value;

/// Clears `out` (keeping its capacity) and writes the encoding of obj into it.
template <class T>
void dump_into(Bytes& out, const T& obj) {
  out.clear();
  codec::CodecOutputArchive archive(out);
  archive(obj);
}

/// Decodes data into `out`, reusing what `out` already holds where it can (a vector's or a
/// string's capacity). The whole of data must be one T. Throws std::invalid_argument.
template <class T>
void load_from(std::span<const std::byte> data, T& out) {
  try {
    codec::CodecInputArchive archive(data);
    archive(out);
    if (archive.remaining() != 0) throw_trailing(typeid(T), archive.offset(), data.size());
  } catch (...) {
    rethrow_load_error(typeid(T));
  }
}

}  // namespace mp::detail
