// The placement ioctls: the hot path of fault service. Plain functions that take the
// userfaultfd descriptor (no object unwrap) and args.h's readers (one N-API call per number in
// the common case). They return bytes done (>= 0) or -errno and never throw for a kernel
// error: EEXIST and EAGAIN are routine here, and the TypeScript layer decides what each means.
// lastCount() gives the bytes done before an error.
#include <node_api.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <climits>
#include <cstdint>
#include <string>

#include "args.h"
#include "uffd_compat.h"

namespace postcopy {

static thread_local double g_lastCount = 0;

// The descriptor: -1 (the TypeScript layer's closed descriptor) reaches the kernel, which
// answers EBADF; NaN, fractions and other negatives are refused (never read as fd 0).
static bool ReadFd(napi_env env, napi_value v, int* out) { return ReadInt(env, v, "fd", -1, INT_MAX, out); }

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

// Runs a range ioctl while it makes progress. A partial count is how the kernel reports that it
// stopped early (UFFDIO_COPY answers -EAGAIN with copy < len when a page on the way already
// exists or a signal came): the rest is asked for at once, and the next call names the real
// cause. An error with no progress is returned as it is: what EAGAIN then means (events to read
// first) is policy, decided in TypeScript (src/pager/run-placer.ts), not here.
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

// One UFFDIO_COPY for a whole run, from `src`, an address of this process.
static double CopyRun(int fd, uint64_t dst, uint64_t src, uint64_t length, uint64_t mode) {
  return Progressing(length, [&](uint64_t done, int64_t* count) {
    uffdio_copy c{dst + done, src + done, length - done, mode, 0};
    int r = ioctl(fd, UFFDIO_COPY, &c);
    *count = c.copy;
    return r;
  });
}

// copy(fd, dst, src, length, mode = 0, srcOffset = 0): a run from the bytes of `src`.
static napi_value Copy(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  Args(env, info, argv);
  int fd;
  uint64_t dst, length, mode, srcOffset;
  uint8_t* src;
  size_t srcLength;
  if (!ReadFd(env, argv[0], &fd) || !ReadAddress(env, argv[1], "dst", &dst) || !ReadBytes(env, argv[2], "src", &src, &srcLength) ||
      !ReadSize(env, argv[3], "length", &length) || !ReadOptionalSize(env, argv[4], "mode", &mode) ||
      !ReadOptionalSize(env, argv[5], "srcOffset", &srcOffset))
    return nullptr;
  if (srcOffset > srcLength) {
    RefuseRange(env, "srcOffset", "<= " + std::to_string(srcLength) + " (the bytes of \"src\")", argv[5]);
    return nullptr;
  }
  if (length > srcLength - srcOffset) {
    RefuseRange(env, "length", "<= " + std::to_string(srcLength - srcOffset) + " (the bytes of \"src\" after \"srcOffset\")", argv[3]);
    return nullptr;
  }
  return Result(env, CopyRun(fd, dst, reinterpret_cast<uintptr_t>(src + srcOffset), length, mode));
}

// copyFrom(fd, dst, srcAddress, length, mode = 0): the same from an address of this process
// (a FileMapping's; src/kernel checks that the range lies inside a live one).
static napi_value CopyFrom(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  Args(env, info, argv);
  int fd;
  uint64_t dst, src, length, mode;
  if (!ReadFd(env, argv[0], &fd) || !ReadAddress(env, argv[1], "dst", &dst) || !ReadAddress(env, argv[2], "srcAddress", &src) ||
      !ReadSize(env, argv[3], "length", &length) || !ReadOptionalSize(env, argv[4], "mode", &mode))
    return nullptr;
  return Result(env, CopyRun(fd, dst, src, length, mode));
}

// zeropage(fd, dst, length, mode = 0)
static napi_value Zeropage(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  Args(env, info, argv);
  int fd;
  uint64_t dst, length, mode;
  if (!ReadFd(env, argv[0], &fd) || !ReadAddress(env, argv[1], "dst", &dst) || !ReadSize(env, argv[2], "length", &length) ||
      !ReadOptionalSize(env, argv[3], "mode", &mode))
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
  if (!ReadFd(env, argv[0], &fd) || !ReadAddress(env, argv[1], "start", &start) ||
      !ReadSize(env, argv[2], "length", &length) || !ReadOptionalSize(env, argv[3], "mode", &mode))
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
  if (!ReadFd(env, argv[0], &fd) || !ReadAddress(env, argv[1], "start", &start) || !ReadSize(env, argv[2], "length", &length))
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
  if (!ReadFd(env, argv[0], &fd) || !ReadAddress(env, argv[1], "start", &start) ||
      !ReadSize(env, argv[2], "length", &length) || !ReadOptionalSize(env, argv[3], "mode", &mode))
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
  if (!ReadFd(env, argv[0], &fd) || !ReadAddress(env, argv[1], "dst", &dst) || !ReadAddress(env, argv[2], "src", &src) ||
      !ReadSize(env, argv[3], "length", &length) || !ReadOptionalSize(env, argv[4], "mode", &mode))
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
      {"copyFrom", nullptr, CopyFrom, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
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
