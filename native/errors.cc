#include "errors.h"

#include <uv.h>

#include <cstdio>

namespace postcopy {

void ThrowErrno(Napi::Env env, int err, const char* syscall, const std::string& detail) {
  const char* code = uv_err_name(-err);
  std::string message = std::string(code) + ": " + uv_strerror(-err) + ", " + syscall;
  if (!detail.empty()) message += " " + detail;
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("syscall", Napi::String::New(env, syscall));
  throw error;
}

void ThrowUnmapped(Napi::Env env, const std::string& what) {
  Napi::Error error = Napi::Error::New(env, what + ": the mapping has been unmapped");
  error.Set("code", Napi::String::New(env, "ERR_POSTCOPY_UNMAPPED"));
  throw error;
}

std::string Hex(uintptr_t value) {
  char buf[24];
  snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(value));
  return buf;
}

}  // namespace postcopy
