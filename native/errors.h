// Errors shaped like Node's own: `code`, `errno` (negative, as libuv reports it), `syscall`.
#pragma once
#include <napi.h>
#include <cstdint>
#include <string>

namespace postcopy {

// Throws (as a JS exception) an Error for a failed syscall. `detail` names the address/length.
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const char* syscall, const std::string& detail);

// Argument errors, with Node's codes (ERR_INVALID_ARG_TYPE, ERR_OUT_OF_RANGE,
// ERR_INVALID_ARG_VALUE).
[[noreturn]] void ThrowTypeError(Napi::Env env, const std::string& message);
[[noreturn]] void ThrowRangeError(Napi::Env env, const std::string& message);
[[noreturn]] void ThrowInvalidValue(Napi::Env env, const std::string& message);

// An address argument: a bigint, or a number that is an exact non-negative integer (user-space
// addresses are below 2^47, so numbers carry them exactly and the hot path allocates nothing).
uintptr_t ToAddress(const Napi::Value& v, const char* name);
// A length or offset argument: a non-negative safe integer.
size_t ToSize(const Napi::Value& v, const char* name);

std::string Hex(uintptr_t value);

}  // namespace postcopy
