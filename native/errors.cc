#include "errors.h"

#include <uv.h>

#include <cmath>
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

void ThrowTypeError(Napi::Env env, const std::string& message) {
  Napi::TypeError error = Napi::TypeError::New(env, message);
  error.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_TYPE"));
  throw error;
}

void ThrowRangeError(Napi::Env env, const std::string& message) {
  Napi::RangeError error = Napi::RangeError::New(env, message);
  error.Set("code", Napi::String::New(env, "ERR_OUT_OF_RANGE"));
  throw error;
}

void ThrowInvalidValue(Napi::Env env, const std::string& message) {
  Napi::TypeError error = Napi::TypeError::New(env, message);
  error.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_VALUE"));
  throw error;
}

static constexpr double kMaxSafe = 9007199254740991.0;

uintptr_t ToAddress(const Napi::Value& v, const char* name) {
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t value = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) ThrowRangeError(v.Env(), std::string("The \"") + name + "\" address is out of range");
    return static_cast<uintptr_t>(value);
  }
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= 0) || d > kMaxSafe || std::floor(d) != d)
      ThrowRangeError(v.Env(), std::string("The \"") + name + "\" address must be a non-negative integer");
    return static_cast<uintptr_t>(d);
  }
  ThrowTypeError(v.Env(), std::string("The \"") + name + "\" argument must be a bigint or a number");
}

size_t ToSize(const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) ThrowTypeError(v.Env(), std::string("The \"") + name + "\" argument must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > kMaxSafe || std::floor(d) != d)
    ThrowRangeError(v.Env(), std::string("The \"") + name + "\" argument must be a non-negative integer");
  return static_cast<size_t>(d);
}

std::string Hex(uintptr_t value) {
  char buf[24];
  snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(value));
  return buf;
}

}  // namespace postcopy
