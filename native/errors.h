// Errors shaped like Node's own: `code`, `errno` (negative, as libuv reports it), `syscall`.
// Every error the addon throws has a `code`: an errno name, Node's ERR_* (args.h), ERR_POSTCOPY_UNMAPPED.
#pragma once
#include <napi.h>
#include <cstdint>
#include <string>

namespace postcopy {

// Throws (as a JS exception) an Error for a failed syscall. `detail` names the address/length.
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const char* syscall, const std::string& detail);

std::string Hex(uintptr_t value);

}  // namespace postcopy
