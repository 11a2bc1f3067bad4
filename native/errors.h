// Errors shaped like Node's own: `code`, `errno` (negative, as libuv reports it), `syscall`.
// Every error the addon throws has a `code`: an errno name, Node's ERR_* (args.h), ERR_POSTCOPY_UNMAPPED.
// In a worker being terminated no exception can be thrown: binding.gyp defines
// NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS so that one is dropped there instead of aborting the
// whole process (test/kernel/kernel-safety.test.ts).
#pragma once
#include <napi.h>
#include <cstdint>
#include <string>

namespace postcopy {

// Throws (as a JS exception) an Error for a failed syscall. `detail` names the address/length.
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const char* syscall, const std::string& detail);

// Throws ERR_POSTCOPY_UNMAPPED: `what` was called on a mapping unmapped (or closed) before.
[[noreturn]] void ThrowUnmapped(Napi::Env env, const std::string& what);

std::string Hex(uintptr_t value);

}  // namespace postcopy
