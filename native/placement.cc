// The placement ioctls: the hot path of fault service. Plain functions that take the
// userfaultfd descriptor (no object unwrap) and raw N-API argument reads (one call per number
// in the common case). They return bytes done (>= 0) or -errno and never throw for a kernel
// error: EEXIST and EAGAIN are routine here, and the TypeScript layer decides what each means.
// lastCount() gives the bytes done before an error.
#include <node_api.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <string>

#include "uffd_compat.h"

namespace postcopy {

static thread_local double g_lastCount = 0;

static constexpr double kMaxSafe = 9007199254740991.0;

// Reads a non-negative integer argument (number, or bigint for addresses); on failure throws
// the JS error and returns false.
static bool ReadU64(napi_env env, napi_value v, const char* name, uint64_t* out) {
  double d;
  if (napi_get_value_double(env, v, &d) == napi_ok) {
    if (d >= 0 && d <= kMaxSafe && std::floor(d) == d) {
      *out = static_cast<uint64_t>(d);
      return true;
    }
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", (std::string("The \"") + name + "\" argument must be a non-negative integer").c_str());
    return false;
  }
  bool lossless = false;
  if (napi_get_value_bigint_uint64(env, v, out, &lossless) == napi_ok) {
    if (lossless) return true;
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", (std::string("The \"") + name + "\" argument is out of range").c_str());
    return false;
  }
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", (std::string("The \"") + name + "\" argument must be a number or a bigint").c_str());
  return false;
}

// A descriptor: -1 (closed) is passed through to the kernel, which answers EBADF.
static bool ReadFd(napi_env env, napi_value v, int* out) {
  if (napi_get_value_int32(env, v, out) == napi_ok) return true;
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "The \"fd\" argument must be a number");
  return false;
}

// An optional integer: undefined reads as 0 (checked only when the number read fails, so the
// common call pays one N-API call per argument).
static bool ReadOptional(napi_env env, napi_value v, const char* name, uint64_t* out) {
  double d;
  if (napi_get_value_double(env, v, &d) == napi_ok && d >= 0 && d <= kMaxSafe && std::floor(d) == d) {
    *out = static_cast<uint64_t>(d);
    return true;
  }
  napi_valuetype type;
  napi_typeof(env, v, &type);
  if (type == napi_undefined) {
    *out = 0;
    return true;
  }
  return ReadU64(env, v, name, out);
}

static bool ReadBytes(napi_env env, napi_value v, uint8_t** data, size_t* length) {
  bool is = false;
  napi_typedarray_type type;
  size_t count, offset;
  napi_value ab;
  void* p;
  // a typed array is the common case: one call, which fails for anything else
  if (napi_get_typedarray_info(env, v, &type, &count, &p, &ab, &offset) == napi_ok) {
    static const size_t sizes[] = {1, 1, 1, 2, 2, 4, 4, 4, 8, 8, 8};
    *data = static_cast<uint8_t*>(p);
    *length = count * (type <= napi_biguint64_array ? sizes[type] : 1);
    return true;
  }
  if (napi_is_dataview(env, v, &is) == napi_ok && is) {
    napi_get_dataview_info(env, v, length, &p, &ab, &offset);
    *data = static_cast<uint8_t*>(p);
    return true;
  }
  if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) {
    napi_get_arraybuffer_info(env, v, &p, length);
    *data = static_cast<uint8_t*>(p);
    return true;
  }
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "The \"src\" argument must be an ArrayBufferView or ArrayBuffer");
  return false;
}

static napi_value Result(napi_env env, double value) {
  napi_value out;
  napi_create_double(env, value, &out);
  return out;
}

template <size_t N>
static void Args(napi_env env, napi_callback_info info, napi_value (&argv)[N]) {
  size_t argc = N;
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
}

// Runs a range ioctl while it makes progress: the kernel stops early (EAGAIN, with a partial
// count) when the address space is changing under it; what is done stays done.
template <typename Call>
static double Progressing(uint64_t length, Call call) {
  uint64_t done = 0;
  double result = 0;
  do {
    int64_t count = 0;
    int r = call(done, &count);
    int err = errno;
    if (r == 0) {
      done += static_cast<uint64_t>(count);
      continue;
    }
    if (count > 0) {
      done += static_cast<uint64_t>(count);
      if (err == EAGAIN) continue;
    }
    result = -err;
    break;
  } while (done < length);
  g_lastCount = static_cast<double>(done);
  return result < 0 ? result : static_cast<double>(done);
}

// copy(fd, dst, src, length, mode = 0, srcOffset = 0): one UFFDIO_COPY for a whole run.
static napi_value Copy(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  Args(env, info, argv);
  int fd;
  uint64_t dst, length, mode, srcOffset;
  uint8_t* src;
  size_t srcLength;
  if (!ReadFd(env, argv[0], &fd) || !ReadU64(env, argv[1], "dst", &dst) || !ReadBytes(env, argv[2], &src, &srcLength) ||
      !ReadU64(env, argv[3], "length", &length) || !ReadOptional(env, argv[4], "mode", &mode) ||
      !ReadOptional(env, argv[5], "srcOffset", &srcOffset))
    return nullptr;
  if (srcOffset > srcLength || length > srcLength - srcOffset) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "copy: the source range is outside the buffer");
    return nullptr;
  }
  const uintptr_t from = reinterpret_cast<uintptr_t>(src + srcOffset);
  return Result(env, Progressing(length, [&](uint64_t done, int64_t* count) {
    uffdio_copy c{dst + done, from + done, length - done, mode, 0};
    int r = ioctl(fd, UFFDIO_COPY, &c);
    *count = c.copy;
    return r;
  }));
}

// zeropage(fd, dst, length, mode = 0)
static napi_value Zeropage(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  Args(env, info, argv);
  int fd;
  uint64_t dst, length, mode;
  if (!ReadFd(env, argv[0], &fd) || !ReadU64(env, argv[1], "dst", &dst) || !ReadU64(env, argv[2], "length", &length) ||
      !ReadOptional(env, argv[3], "mode", &mode))
    return nullptr;
  return Result(env, Progressing(length, [&](uint64_t done, int64_t* count) {
    uffdio_zeropage z{{dst + done, length - done}, mode, 0};
    int r = ioctl(fd, UFFDIO_ZEROPAGE, &z);
    *count = z.zeropage;
    return r;
  }));
}

// writeProtect(fd, start, length, mode): mode WP protects, 0 un-protects (and wakes)
static napi_value WriteProtect(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  Args(env, info, argv);
  int fd;
  uint64_t start, length, mode;
  if (!ReadFd(env, argv[0], &fd) || !ReadU64(env, argv[1], "start", &start) ||
      !ReadU64(env, argv[2], "length", &length) || !ReadOptional(env, argv[3], "mode", &mode))
    return nullptr;
  uffdio_writeprotect w{{start, length}, mode};
  return Result(env, ioctl(fd, UFFDIO_WRITEPROTECT, &w) == 0 ? 0 : -errno);
}

// wake(fd, start, length)
static napi_value Wake(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  Args(env, info, argv);
  int fd;
  uint64_t start, length;
  if (!ReadFd(env, argv[0], &fd) || !ReadU64(env, argv[1], "start", &start) || !ReadU64(env, argv[2], "length", &length))
    return nullptr;
  uffdio_range range{start, length};
  return Result(env, ioctl(fd, UFFDIO_WAKE, &range) == 0 ? 0 : -errno);
}

// (fd, start, length, mode = 0) ioctls whose struct is { range, mode, count }:
// UFFDIO_CONTINUE (MINOR faults) and UFFDIO_POISON.
template <typename Struct, unsigned long Request, __s64 Struct::*Count>
static napi_value RangeIoctl(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  Args(env, info, argv);
  int fd;
  uint64_t start, length, mode;
  if (!ReadFd(env, argv[0], &fd) || !ReadU64(env, argv[1], "start", &start) ||
      !ReadU64(env, argv[2], "length", &length) || !ReadOptional(env, argv[3], "mode", &mode))
    return nullptr;
  Struct op{{start, length}, mode, 0};
  int r = ioctl(fd, Request, &op);
  const double count = op.*Count > 0 ? static_cast<double>(op.*Count) : 0;
  g_lastCount = count;
  return Result(env, r == 0 ? count : -errno);
}

// move(fd, dst, src, length, mode = 0)
static napi_value Move(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  Args(env, info, argv);
  int fd;
  uint64_t dst, src, length, mode;
  if (!ReadFd(env, argv[0], &fd) || !ReadU64(env, argv[1], "dst", &dst) || !ReadU64(env, argv[2], "src", &src) ||
      !ReadU64(env, argv[3], "length", &length) || !ReadOptional(env, argv[4], "mode", &mode))
    return nullptr;
  uffdio_move m{dst, src, length, mode, 0};
  int r = ioctl(fd, UFFDIO_MOVE, &m);
  g_lastCount = m.move > 0 ? static_cast<double>(m.move) : 0;
  return Result(env, r == 0 ? static_cast<double>(m.move) : -errno);
}

static napi_value LastCount(napi_env env, napi_callback_info) { return Result(env, g_lastCount); }

void DefinePlacement(napi_env env, napi_value exports) {
  napi_property_descriptor functions[] = {
      {"copy", nullptr, Copy, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"zeropage", nullptr, Zeropage, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"writeProtect", nullptr, WriteProtect, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"wake", nullptr, Wake, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"continue", nullptr, RangeIoctl<uffdio_continue, UFFDIO_CONTINUE, &uffdio_continue::mapped>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"poison", nullptr, RangeIoctl<uffdio_poison, UFFDIO_POISON, &uffdio_poison::updated>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"move", nullptr, Move, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"lastCount", nullptr, LastCount, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
  };
  napi_value placement;
  napi_create_object(env, &placement);
  napi_define_properties(env, placement, sizeof functions / sizeof functions[0], functions);
  napi_set_named_property(env, exports, "placement", placement);
}

}  // namespace postcopy
