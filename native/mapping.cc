#include "mapping.h"

#include <fcntl.h>
#include <linux/mman.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <map>
#include <mutex>

#include "errors.h"

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26)
#endif

namespace postcopy {

struct Region {
  uintptr_t base = 0;
  size_t length = 0;
  size_t pageSize = 0;
  int fd = -1;
  ~Region() {
    if (base) munmap(reinterpret_cast<void*>(base), length);
    if (fd >= 0) close(fd);
  }
};

// Live mappings by base address, so a worker thread can attach to one by address. Only
// ranges inside a live mapping can ever be viewed: no view reaches memory we did not map.
static std::mutex g_mutex;
static std::map<uintptr_t, std::shared_ptr<Region>> g_live;

static constexpr size_t kHugePage = 2u << 20;

static std::shared_ptr<Region> FindLive(uintptr_t address, size_t length) {
  auto it = g_live.upper_bound(address);
  if (it == g_live.begin()) return nullptr;
  --it;
  const Region& r = *it->second;
  if (address < r.base || length > r.length || address - r.base > r.length - length) return nullptr;
  return it->second;
}

static void FinalizeView(Napi::Env, void*, std::shared_ptr<Region>* hold) { delete hold; }

static Napi::ArrayBuffer MakeView(Napi::Env env, const std::shared_ptr<Region>& region, uintptr_t address,
                                  size_t length) {
  auto* hold = new std::shared_ptr<Region>(region);
  return Napi::ArrayBuffer::New(env, reinterpret_cast<void*>(address), length, FinalizeView, hold);
}

Napi::Function Mapping::Init(Napi::Env env) {
  return DefineClass(env, "Mapping",
                     {
                         InstanceAccessor<&Mapping::Address>("address"),
                         InstanceAccessor<&Mapping::Length>("length"),
                         InstanceAccessor<&Mapping::PageSize>("pageSize"),
                         InstanceAccessor<&Mapping::Fd>("fd"),
                         InstanceMethod<&Mapping::Madvise>("madvise"),
                         InstanceMethod<&Mapping::MadviseRanges>("madviseRanges"),
                         InstanceMethod<&Mapping::PunchHole>("punchHole"),
                         InstanceMethod<&Mapping::View>("view"),
                         InstanceMethod<&Mapping::Unmap>("unmap"),
                         StaticMethod<&Mapping::Attach>("attach"),
                     });
}

// new Mapping(kind, length, name): kind is 'anonymous' | 'memfd' | 'hugetlb' | 'memfd-hugetlb'.
Mapping::Mapping(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Mapping>(info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) ThrowTypeError(env, "The \"kind\" argument must be a string");
  std::string kind = info[0].As<Napi::String>();
  size_t length = ToSize(info[1], "length");
  std::string name = info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : std::string("postcopy");
  bool huge = kind == "hugetlb" || kind == "memfd-hugetlb";
  bool memfd = kind == "memfd" || kind == "memfd-hugetlb";
  if (!huge && !memfd && kind != "anonymous")
    ThrowTypeError(env, "Unknown mapping kind '" + kind + "' (anonymous, memfd, hugetlb, memfd-hugetlb)");
  size_t page = huge ? kHugePage : static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (length == 0 || length % page != 0)
    ThrowRangeError(env, "mapping length " + std::to_string(length) + " is not a positive multiple of the page size " +
                             std::to_string(page));

  auto region = std::make_shared<Region>();
  region->length = length;
  region->pageSize = page;
  int flags = 0;
  if (memfd) {
    int fd = memfd_create(name.c_str(), MFD_CLOEXEC | (huge ? MFD_HUGETLB | MFD_HUGE_2MB : 0));
    if (fd < 0) ThrowErrno(env, errno, "memfd_create", "'" + name + "'");
    region->fd = fd;
    if (ftruncate(fd, static_cast<off_t>(length)) != 0)
      ThrowErrno(env, errno, "ftruncate", "memfd '" + name + "' length " + std::to_string(length));
    flags = MAP_SHARED;
  } else {
    flags = MAP_PRIVATE | MAP_ANONYMOUS | (huge ? MAP_HUGETLB | MAP_HUGE_2MB : MAP_NORESERVE);
  }
  void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, flags, region->fd, 0);
  if (base == MAP_FAILED) ThrowErrno(env, errno, "mmap", kind + " length " + std::to_string(length));
  region->base = reinterpret_cast<uintptr_t>(base);
  std::lock_guard<std::mutex> lock(g_mutex);
  g_live[region->base] = region;
  region_ = std::move(region);
}

Mapping::~Mapping() {
  if (!region_) return;
  std::lock_guard<std::mutex> lock(g_mutex);
  g_live.erase(region_->base);
}

std::shared_ptr<Region> Mapping::Live(Napi::Env env, const char* what) {
  if (!region_) {
    Napi::Error error = Napi::Error::New(env, std::string(what) + ": the mapping has been unmapped");
    error.Set("code", Napi::String::New(env, "ERR_POSTCOPY_UNMAPPED"));
    throw error;
  }
  return region_;
}

void Mapping::CheckRange(Napi::Env env, size_t offset, size_t length, const char* what) {
  if (offset > region_->length || length > region_->length - offset)
    ThrowRangeError(env, std::string(what) + ": range offset " + std::to_string(offset) + " length " +
                             std::to_string(length) + " is outside the mapping of " +
                             std::to_string(region_->length) + " bytes");
}

Napi::Value Mapping::Address(const Napi::CallbackInfo& info) {
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(region_ ? region_->base : 0));
}
Napi::Value Mapping::Length(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(region_ ? region_->length : 0));
}
Napi::Value Mapping::PageSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(region_ ? region_->pageSize : 0));
}
Napi::Value Mapping::Fd(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), region_ ? region_->fd : -1);
}

// madvise(offset, length, advice): advice is the raw MADV_* number; the TS layer names them.
Napi::Value Mapping::Madvise(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto region = Live(env, "madvise");
  size_t offset = ToSize(info[0], "offset"), length = ToSize(info[1], "length");
  int advice = static_cast<int>(ToSize(info[2], "advice"));
  CheckRange(env, offset, length, "madvise");
  if (madvise(reinterpret_cast<void*>(region->base + offset), length, advice) != 0)
    ThrowErrno(env, errno, "madvise",
               Hex(region->base + offset) + " length " + std::to_string(length) + " advice " + std::to_string(advice));
  return env.Undefined();
}

// madviseRanges(ranges, advice): ranges is a Float64Array of (offset, length) pairs. One
// process_madvise(2) on this process per 1024 ranges (Linux 6.13+ takes any advice for the
// caller itself, and 6.16+ flushes the TLB once per call instead of once per range), else one
// madvise(2) per range. Returns how many syscalls it made.
static int SelfPidfd() {
  static int fd = -2;
#if defined(SYS_pidfd_open)
  if (fd == -2) fd = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
#else
  fd = -1;
#endif
  return fd;
}

Napi::Value Mapping::MadviseRanges(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto region = Live(env, "madviseRanges");
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    Napi::TypeError::New(env, "madviseRanges: ranges must be a Float64Array of (offset, length) pairs").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto pairs = info[0].As<Napi::Float64Array>();
  int advice = static_cast<int>(ToSize(info[1], "advice"));
  size_t n = pairs.ElementLength() / 2;
  constexpr size_t kBatch = 1024;  // UIO_MAXIOV
  struct iovec iov[kBatch];
  int calls = 0;
  static bool batched = true;  // false once the kernel refused process_madvise for this advice
  for (size_t i = 0; i < n; i += kBatch) {
    size_t k = n - i < kBatch ? n - i : kBatch;
    size_t total = 0;
    for (size_t j = 0; j < k; j++) {
      double o = pairs[2 * (i + j)], l = pairs[2 * (i + j) + 1];
      if (!(o >= 0) || !(l >= 0) || o != static_cast<double>(static_cast<size_t>(o)) || l != static_cast<double>(static_cast<size_t>(l))) {
        Napi::RangeError::New(env, "madviseRanges: offsets and lengths must be non-negative integers").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      CheckRange(env, static_cast<size_t>(o), static_cast<size_t>(l), "madviseRanges");
      iov[j].iov_base = reinterpret_cast<void*>(region->base + static_cast<size_t>(o));
      iov[j].iov_len = static_cast<size_t>(l);
      total += iov[j].iov_len;
    }
    size_t done = 0;  // ranges fully advised by process_madvise
#if defined(SYS_process_madvise)
    int pidfd = batched ? SelfPidfd() : -1;
    if (pidfd >= 0) {
      long r = syscall(SYS_process_madvise, pidfd, iov, k, advice, 0);
      calls++;
      if (r >= 0 && static_cast<size_t>(r) == total) continue;
      if (r < 0 && (errno == EINVAL || errno == ENOSYS || errno == EPERM)) batched = false;
      else if (r < 0) {
        ThrowErrno(env, errno, "process_madvise", std::to_string(k) + " ranges advice " + std::to_string(advice));
        return env.Undefined();
      } else {
        // partial: skip the ranges advised whole; madvise is idempotent for the rest
        size_t left = static_cast<size_t>(r);
        while (done < k && iov[done].iov_len <= left) left -= iov[done++].iov_len;
      }
    }
#endif
    for (size_t j = done; j < k; j++) {
      calls++;
      if (madvise(iov[j].iov_base, iov[j].iov_len, advice) != 0) {
        ThrowErrno(env, errno, "madvise", Hex(reinterpret_cast<uintptr_t>(iov[j].iov_base)) + " length " + std::to_string(iov[j].iov_len) + " advice " + std::to_string(advice));
        return env.Undefined();
      }
    }
  }
  return Napi::Number::New(env, calls);
}

// punchHole(offset, length): frees the backing pages of a memfd range (shared and hugetlb
// memory, where MADV_DONTNEED would not drop the page cache).
Napi::Value Mapping::PunchHole(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto region = Live(env, "punchHole");
  size_t offset = ToSize(info[0], "offset"), length = ToSize(info[1], "length");
  CheckRange(env, offset, length, "punchHole");
  if (region->fd < 0) ThrowErrno(env, EBADF, "fallocate", "(not a memfd mapping)");
  if (fallocate(region->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                static_cast<off_t>(length)) != 0)
    ThrowErrno(env, errno, "fallocate", "offset " + std::to_string(offset) + " length " + std::to_string(length));
  return env.Undefined();
}

// view(offset = 0, length = rest): an ArrayBuffer over the mapping (no copy).
Napi::Value Mapping::View(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto region = Live(env, "view");
  size_t offset = info[0].IsUndefined() ? 0 : ToSize(info[0], "offset");
  if (offset > region->length) CheckRange(env, offset, 0, "view");
  size_t length = info[1].IsUndefined() ? region->length - offset : ToSize(info[1], "length");
  CheckRange(env, offset, length, "view");
  return MakeView(env, region, region->base + offset, length);
}

Napi::Value Mapping::Attach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uintptr_t address = ToAddress(info[0], "address");
  size_t length = ToSize(info[1], "length");
  std::shared_ptr<Region> region;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    region = FindLive(address, length);
  }
  if (!region)
    ThrowRangeError(env, "attach: no live mapping holds " + Hex(address) + " length " + std::to_string(length));
  return MakeView(env, region, address, length);
}

// unmap(): releases the memory now. Views that still exist (in any thread) keep the address
// range reserved as a fresh zero mapping until they are collected, so a stale view reads
// zeros instead of crashing the process; the userfaultfd registration goes with the old pages.
Napi::Value Mapping::Unmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!region_) return env.Undefined();
  std::shared_ptr<Region> region = std::move(region_);
  std::lock_guard<std::mutex> lock(g_mutex);
  g_live.erase(region->base);
  if (region.use_count() > 1) {
    void* p = mmap(reinterpret_cast<void*>(region->base), region->length, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) ThrowErrno(env, errno, "mmap", "placeholder over " + Hex(region->base));
    if (region->fd >= 0) {
      close(region->fd);
      region->fd = -1;
    }
  }
  return env.Undefined();
}

}  // namespace postcopy
