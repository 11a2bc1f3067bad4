// PAGEMAP_SCAN (Linux 6.7+) on a /proc/<pid>/pagemap descriptor: the dirty log's scan and
// re-protect in one call (with UFFD_FEATURE_WP_ASYNC). The caller fills the pm_scan_arg.
#include <sys/ioctl.h>

#include <cerrno>
#include <cstdint>

#include "args.h"

#ifndef PAGEMAP_SCAN
#define PAGEMAP_SCAN _IOWR('f', 16, uint64_t[12])
#endif

namespace postcopy {

static constexpr size_t kArgWords = 12;  // struct pm_scan_arg is twelve __u64
static constexpr size_t kVecField = 5, kVecLenField = 6;
static constexpr size_t kRegionWords = 3;  // struct page_region: start, end, categories

// pagemapScan(fd, arg: BigUint64Array(12), vec: BigUint64Array) -> regions filled, or -errno.
// arg is struct pm_scan_arg; its vec/vec_len fields are set here to `vec`'s memory.
Napi::Value PagemapScan(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ToFd(info[0], "fd");
  for (size_t i : {1, 2})
    if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array)
      ThrowArgType(info[i], i == 1 ? "arg" : "vec", "an instance of BigUint64Array");
  auto arg = info[1].As<Napi::BigUint64Array>();
  auto vec = info[2].As<Napi::BigUint64Array>();
  if (arg.ElementLength() != kArgWords)
    ThrowOutOfRange(Napi::Number::New(env, static_cast<double>(arg.ElementLength())), "arg.length",
                    std::to_string(kArgWords) + " (struct pm_scan_arg)");
  arg[0] = kArgWords * sizeof(uint64_t);
  arg[kVecField] = reinterpret_cast<uintptr_t>(vec.Data());
  arg[kVecLenField] = vec.ElementLength() / kRegionWords;
  long r = ioctl(fd, PAGEMAP_SCAN, arg.Data());
  return Napi::Number::New(env, r < 0 ? -errno : static_cast<double>(r));
}

}  // namespace postcopy
