#include "args.h"

namespace postcopy {

// ---- what was received, in Node's words (lib/internal/errors.js) -----------------------------
// Only refusals get here: these may allocate, and call String() and JSON.stringify. A value
// whose inspection throws (a Proxy, a getter) is described by its type alone.

static napi_valuetype TypeOf(napi_env env, napi_value v) {
  napi_valuetype type = napi_undefined;
  napi_typeof(env, v, &type);
  return type;
}

static std::string Utf8(napi_env env, napi_value string) {
  size_t length = 0;
  if (napi_get_value_string_utf8(env, string, nullptr, 0, &length) != napi_ok) return "";
  std::string out(length, '\0');
  napi_get_value_string_utf8(env, string, &out[0], length + 1, &length);
  return out;
}

// globalThis[object][function](v) as a string ("" and no pending error if anything throws).
static std::string CallBuiltin(napi_env env, const char* object, const char* function, napi_value v) {
  napi_value holder, fn, result;
  napi_get_global(env, &holder);
  if ((object && napi_get_named_property(env, holder, object, &holder) != napi_ok) ||
      napi_get_named_property(env, holder, function, &fn) != napi_ok ||
      napi_call_function(env, holder, fn, 1, &v, &result) != napi_ok || TypeOf(env, result) != napi_string) {
    napi_value ignored;
    napi_get_and_clear_last_exception(env, &ignored);
    return "";
  }
  return Utf8(env, result);
}

static std::string String(napi_env env, napi_value v) { return CallBuiltin(env, nullptr, "String", v); }

// v[key], if `key in v` and reading it does not throw
static bool Get(napi_env env, napi_value v, const char* key, napi_value* out) {
  bool has = false;
  if (napi_has_named_property(env, v, key, &has) == napi_ok && has && napi_get_named_property(env, v, key, out) == napi_ok)
    return true;
  napi_value ignored;
  napi_get_and_clear_last_exception(env, &ignored);
  return false;
}

static std::string NameOf(napi_env env, napi_value v) {
  napi_value name;
  return Get(env, v, "name", &name) ? String(env, name) : "undefined";
}

static bool IsNegativeZero(napi_env env, napi_value v) {
  double d = 1;
  napi_get_value_double(env, v, &d);
  return d == 0 && std::signbit(d);
}

// util.inspect of a number, a bigint or a string, as the messages meet them
static std::string Inspect(napi_env env, napi_value v) {
  switch (TypeOf(env, v)) {
    case napi_number:
      return IsNegativeZero(env, v) ? "-0" : String(env, v);
    case napi_bigint:
      return String(env, v) + "n";
    case napi_string: {
      std::string s = Utf8(env, v);
      for (unsigned char c : s)
        if (c < 0x20 || c == '\'' || c == '\\') return CallBuiltin(env, "JSON", "stringify", v);
      return "'" + s + "'";
    }
    default:
      return String(env, v);
  }
}

// addNumericalSeparator: 1099511627776 -> 1_099_511_627_776
static std::string Separated(const std::string& digits) {
  std::string out;
  size_t i = digits.size();
  const size_t start = !digits.empty() && digits[0] == '-' ? 1 : 0;
  for (; i >= start + 4; i -= 3) out = "_" + digits.substr(i - 3, 3) + out;
  return digits.substr(0, i) + out;
}

// ERR_OUT_OF_RANGE's "Received": integers beyond 2^32 with separators, bigints with an n
static std::string RangeReceived(napi_env env, napi_value v) {
  constexpr double kLarge = 4294967296.0;  // 2 ** 32
  napi_valuetype type = TypeOf(env, v);
  if (type == napi_number) {
    double d = 0;
    napi_get_value_double(env, v, &d);
    if (std::isfinite(d) && std::floor(d) == d && std::fabs(d) > kLarge) return Separated(String(env, v));
  } else if (type == napi_bigint) {
    int64_t small = 0;
    bool lossless = false;
    napi_get_value_bigint_int64(env, v, &small, &lossless);
    bool large = !lossless || small > static_cast<int64_t>(kLarge) || small < -static_cast<int64_t>(kLarge);
    return (large ? Separated(String(env, v)) : String(env, v)) + "n";
  }
  return Inspect(env, v);
}

// determineSpecificType: ERR_INVALID_ARG_TYPE's "Received". (An object without a named
// constructor, which Node inspects, is "type object" here and in errors.ts.)
static std::string SpecificType(napi_env env, napi_value v) {
  switch (TypeOf(env, v)) {
    case napi_undefined:
      return "undefined";
    case napi_null:
      return "null";
    case napi_function:
      return "function " + NameOf(env, v);
    case napi_object: {
      napi_value constructor, name;
      if (Get(env, v, "constructor", &constructor) &&
          (TypeOf(env, constructor) == napi_object || TypeOf(env, constructor) == napi_function) &&
          Get(env, constructor, "name", &name))
        return "an instance of " + String(env, name);
      return "type object";
    }
    case napi_string: {
      size_t length = 0;
      napi_get_value_string_utf16(env, v, nullptr, 0, &length);
      napi_value shown = v;
      if (length > 28) {
        std::u16string head(25, u'\0');
        napi_get_value_string_utf16(env, v, &head[0], 26, &length);
        head += u"...";
        napi_create_string_utf16(env, head.data(), head.size(), &shown);
      }
      std::string s = Utf8(env, shown);
      return "type string (" + (s.find('\'') == std::string::npos ? "'" + s + "'" : CallBuiltin(env, "JSON", "stringify", shown)) + ")";
    }
    case napi_bigint:
      return "type bigint (" + String(env, v) + "n)";
    case napi_number:
      return "type number (" + Inspect(env, v) + ")";
    case napi_boolean:
      return "type boolean (" + String(env, v) + ")";
    case napi_symbol:
      return "type symbol (" + String(env, v) + ")";
    default:
      return "type external";
  }
}

// ---- refusals -----------------------------------------------------------------------------

using CreateError = napi_status (*)(napi_env, napi_value, napi_value, napi_value*);

static bool Throw(napi_env env, CreateError create, const char* code, const std::string& message) {
  napi_value codeValue, messageValue, error;
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &codeValue);
  napi_create_string_utf8(env, message.data(), message.size(), &messageValue);
  create(env, codeValue, messageValue, &error);  // sets error.code
  napi_throw(env, error);
  return false;
}

bool RefuseType(napi_env env, const char* name, const char* expected, napi_value received) {
  return Throw(env, napi_create_type_error, "ERR_INVALID_ARG_TYPE",
               std::string("The \"") + name + "\" argument must be " + expected + ". Received " + SpecificType(env, received));
}

bool RefuseRange(napi_env env, const char* name, const std::string& range, napi_value received) {
  return Throw(env, napi_create_range_error, "ERR_OUT_OF_RANGE",
               std::string("The value of \"") + name + "\" is out of range. It must be " + range + ". Received " +
                   RangeReceived(env, received));
}

bool RefuseValue(napi_env env, const char* name, const std::string& reason, napi_value received) {
  return Throw(env, napi_create_type_error, "ERR_INVALID_ARG_VALUE",
               std::string("The argument '") + name + "' " + reason + ". Received " + Inspect(env, received));
}

bool RefuseSize(napi_env env, napi_value v, const char* name) {
  if (TypeOf(env, v) != napi_number) return RefuseType(env, name, "of type number", v);
  return RefuseRange(env, name, kNonNegativeInteger, v);
}

// as Node's validateInt32
bool RefuseInt(napi_env env, napi_value v, const char* name, int min, int max) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) return RefuseType(env, name, "of type number", v);
  if (!std::isfinite(d) || std::floor(d) != d) return RefuseRange(env, name, "an integer", v);  // NaN, 3.5
  return RefuseRange(env, name, ">= " + std::to_string(min) + " && <= " + std::to_string(max), v);
}

bool ReadBigAddress(napi_env env, napi_value v, const char* name, uint64_t* out) {
  bool lossless = false;
  if (napi_get_value_bigint_uint64(env, v, out, &lossless) == napi_ok && lossless) return true;
  *out = 0;
  napi_valuetype type = TypeOf(env, v);
  if (type != napi_number && type != napi_bigint) return RefuseType(env, name, "one of type bigint or number", v);
  return RefuseRange(env, name, kNonNegativeInteger, v);
}

bool IsUndefined(napi_env env, napi_value v) { return TypeOf(env, v) == napi_undefined; }

bool ReadBytes(napi_env env, napi_value v, const char* name, uint8_t** data, size_t* length) {
  bool is = false;
  napi_typedarray_type type;
  size_t count, offset;
  napi_value buffer;
  void* p;
  // a typed array is the common case: one call, which fails for anything else
  if (napi_get_typedarray_info(env, v, &type, &count, &p, &buffer, &offset) == napi_ok) {
    static const size_t sizes[] = {1, 1, 1, 2, 2, 4, 4, 4, 8, 8, 8};
    *data = static_cast<uint8_t*>(p);
    *length = count * (type <= napi_biguint64_array ? sizes[type] : 1);
    return true;
  }
  if (napi_is_dataview(env, v, &is) == napi_ok && is) {
    napi_get_dataview_info(env, v, length, &p, &buffer, &offset);
    *data = static_cast<uint8_t*>(p);
    return true;
  }
  if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) {
    napi_get_arraybuffer_info(env, v, &p, length);
    *data = static_cast<uint8_t*>(p);
    return true;
  }
  *data = nullptr;
  *length = 0;
  return RefuseType(env, name, "an instance of ArrayBuffer, TypedArray, or DataView", v);
}

// ---- C++ -----------------------------------------------------------------------------------

void ThrowInvalidThis(Napi::Env env, const char* type) {
  Throw(env, napi_create_type_error, "ERR_INVALID_THIS", std::string("Value of \"this\" must be of type ") + type);
  ThrowPending(env);
}

void ThrowPending(Napi::Env env) { throw Napi::Error::New(env); }

void ThrowArgType(const Napi::Value& received, const char* name, const char* expected) {
  RefuseType(received.Env(), name, expected, received);
  ThrowPending(received.Env());
}

void ThrowOutOfRange(const Napi::Value& received, const char* name, const std::string& range) {
  RefuseRange(received.Env(), name, range, received);
  ThrowPending(received.Env());
}

void ThrowInvalidValue(const Napi::Value& received, const char* name, const std::string& reason) {
  RefuseValue(received.Env(), name, reason, received);
  ThrowPending(received.Env());
}

}  // namespace postcopy
