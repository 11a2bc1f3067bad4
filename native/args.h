// Arguments: the one place where a JavaScript argument becomes a C value, and the one wording
// of a bad argument, Node's own (lib/internal/errors.js): ERR_INVALID_ARG_TYPE (TypeError)
//   The "fd" argument must be of type number. Received type string ('3')
// ERR_OUT_OF_RANGE (RangeError)
//   The value of "length" is out of range. It must be a non-negative integer. Received 3.5
// and ERR_INVALID_ARG_VALUE (TypeError) for a value of the right type that is still wrong
//   The argument 'kind' must be one of: 'anonymous', ... Received 'huge'
// (and ERR_INVALID_THIS for the receiver of a getter: UnwrapTagged below).
// src/kernel/errors.ts's argumentError words addresses and lengths the same way.
//
// The readers are plain N-API functions, for the hot path (placement.cc): one N-API call per
// argument and no allocation when the argument is good; only a refusal formats a message.
// They return true with *out set, or false with the error thrown (pending in JavaScript).
// The To* and Throw* wrappers below serve the ObjectWrap classes: the same readers, throwing
// a C++ Napi::Error (NAPI_CPP_EXCEPTIONS) instead.
#pragma once
#include <napi.h>
#include <node_api.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

namespace postcopy {

constexpr double kMaxSafe = 9007199254740991.0;  // Number.MAX_SAFE_INTEGER

// A length, offset or address held in a number: a non-negative safe integer (NaN fails).
inline bool IsSize(double d) { return d >= 0 && d <= kMaxSafe && std::floor(d) == d; }

constexpr const char* kNonNegativeInteger = "a non-negative integer";

// ---- refusals (C API): each throws its error for `received` and returns false --------------

// `expected` completes "must be ": "of type number", "an instance of Float64Array".
bool RefuseType(napi_env env, const char* name, const char* expected, napi_value received);
// `range` completes "It must be ": kNonNegativeInteger, ">= 0 && <= 255".
bool RefuseRange(napi_env env, const char* name, const std::string& range, napi_value received);
// `reason` follows the argument's name: "must be a userfaultfd", "is invalid".
bool RefuseValue(napi_env env, const char* name, const std::string& reason, napi_value received);

// The slow halves of the readers below: why `v` is no size (wrong type, or out of range), or
// no integer in [min, max]; an address given as a bigint.
bool RefuseSize(napi_env env, napi_value v, const char* name);
bool RefuseInt(napi_env env, napi_value v, const char* name, int min, int max);
bool ReadBigAddress(napi_env env, napi_value v, const char* name, uint64_t* out);
bool IsUndefined(napi_env env, napi_value v);

// ---- readers (C API) ------------------------------------------------------------------------
// Each sets *out, to 0 when it refuses.

// The common case of the three below: a number that is a non-negative safe integer.
inline bool ReadSafeInteger(napi_env env, napi_value v, uint64_t* out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || !IsSize(d)) return false;
  *out = static_cast<uint64_t>(d);
  return true;
}

// A length or offset: a number that is a non-negative safe integer.
inline bool ReadSize(napi_env env, napi_value v, const char* name, uint64_t* out) {
  if (ReadSafeInteger(env, v, out)) return true;
  *out = 0;
  return RefuseSize(env, v, name);
}

// The same, or undefined, read as 0 (looked at only once the number read has failed).
inline bool ReadOptionalSize(napi_env env, napi_value v, const char* name, uint64_t* out) {
  if (ReadSafeInteger(env, v, out)) return true;
  *out = 0;
  return IsUndefined(env, v) || RefuseSize(env, v, name);
}

// An address: a number that is a non-negative safe integer (user-space addresses are below
// 2^47, so the hot path passes numbers and allocates nothing), or a bigint below 2^64.
inline bool ReadAddress(napi_env env, napi_value v, const char* name, uint64_t* out) {
  if (ReadSafeInteger(env, v, out)) return true;
  *out = 0;
  return ReadBigAddress(env, v, name, out);
}

// An integer in [min, max]: a descriptor ([0, INT_MAX], or from -1 where the kernel is to say
// EBADF), an advice, an exit code. NaN, 3.5 and 2**40 are refused, never truncated.
inline bool ReadInt(napi_env env, napi_value v, const char* name, int min, int max, int* out) {
  double d;
  if (napi_get_value_double(env, v, &d) == napi_ok && d >= min && d <= max && std::floor(d) == d) {
    *out = static_cast<int>(d);
    return true;
  }
  *out = 0;
  return RefuseInt(env, v, name, min, max);
}

// The bytes of an ArrayBufferView (any TypedArray or a DataView) or of an ArrayBuffer (none
// when it refuses).
bool ReadBytes(napi_env env, napi_value v, const char* name, uint8_t** data, size_t* length);

// ---- the same for the ObjectWrap classes: C++ exceptions ------------------------------------

// Throws, as a C++ Napi::Error, the JavaScript error a refusal has just thrown.
[[noreturn]] void ThrowPending(Napi::Env env);

inline uintptr_t ToAddress(const Napi::Value& v, const char* name) {
  uint64_t out;
  if (!ReadAddress(v.Env(), v, name, &out)) ThrowPending(v.Env());
  return static_cast<uintptr_t>(out);
}
inline size_t ToSize(const Napi::Value& v, const char* name) {
  uint64_t out;
  if (!ReadSize(v.Env(), v, name, &out)) ThrowPending(v.Env());
  return static_cast<size_t>(out);
}
inline int ToInt(const Napi::Value& v, const char* name, int min, int max) {
  int out;
  if (!ReadInt(v.Env(), v, name, min, max, &out)) ThrowPending(v.Env());
  return out;
}
// A descriptor the call itself uses: [0, INT_MAX].
inline int ToFd(const Napi::Value& v, const char* name) { return ToInt(v, name, 0, INT_MAX); }

[[noreturn]] void ThrowArgType(const Napi::Value& received, const char* name, const char* expected);
[[noreturn]] void ThrowOutOfRange(const Napi::Value& received, const char* name, const std::string& range);
[[noreturn]] void ThrowInvalidValue(const Napi::Value& received, const char* name, const std::string& reason);

// The bytes of an ArrayBufferView or ArrayBuffer (ReadBytes), their count in *length.
inline uint8_t* ToBytes(const Napi::Value& v, const char* name, size_t* length) {
  uint8_t* data;
  if (!ReadBytes(v.Env(), v, name, &data, length)) ThrowPending(v.Env());
  return data;
}

// A Float64Array (offset, length pairs; a buffer of decoded events): anything else is
// ERR_INVALID_ARG_TYPE.
inline Napi::Float64Array ToFloat64Array(const Napi::Value& v, const char* name) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    ThrowArgType(v, name, "an instance of Float64Array");
  return v.As<Napi::Float64Array>();
}

// `this`, for an ObjectWrap class: V8 refuses a method called on a foreign receiver (Illegal
// invocation) but not an accessor, and ObjectWrap's Unwrap takes any wrapped object (a
// Userfaultfd read as a Mapping crashes). So each class tags its objects in its constructor
// and declares `static T* Unwrap(Napi::Object)`, which hides ObjectWrap's, as this; anything
// else is ERR_INVALID_THIS.
[[noreturn]] void ThrowInvalidThis(Napi::Env env, const char* type);
template <typename T>
T* UnwrapTagged(const Napi::Object& object, const napi_type_tag& tag, const char* type) {
  bool tagged = false;
  if (napi_check_object_type_tag(object.Env(), object, &tag, &tagged) != napi_ok || !tagged)
    ThrowInvalidThis(object.Env(), type);
  return Napi::ObjectWrap<T>::Unwrap(object);
}

}  // namespace postcopy
