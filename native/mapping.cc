#include "mapping.h"

#include <fcntl.h>
#include <linux/mman.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <map>
#include <mutex>

#include "args.h"
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

static const napi_type_tag kMappingTag = {0x706f7374636f7079ULL, 0x4d617070696e6701ULL};

Mapping* Mapping::Unwrap(Napi::Object object) { return UnwrapTagged<Mapping>(object, kMappingTag, "Mapping"); }

// new Mapping(kind, length, name): kind is 'anonymous' | 'memfd' | 'hugetlb' | 'memfd-hugetlb'.
Mapping::Mapping(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Mapping>(info) {
  Napi::Env env = info.Env();
  napi_type_tag_object(env, info.This(), &kMappingTag);
  if (!info[0].IsString()) ThrowArgType(info[0], "kind", "of type string");
  std::string kind = info[0].As<Napi::String>();
  bool huge = kind == "hugetlb" || kind == "memfd-hugetlb";
  bool memfd = kind == "memfd" || kind == "memfd-hugetlb";
  if (!huge && !memfd && kind != "anonymous")
    ThrowInvalidValue(info[0], "kind", "must be one of: 'anonymous', 'memfd', 'hugetlb', 'memfd-hugetlb'");
  size_t length = ToSize(info[1], "length");
  size_t page = huge ? kHugePage : static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (length == 0 || length % page != 0) ThrowOutOfRange(info[1], "length", "a positive multiple of " + std::to_string(page));
  if (!info[2].IsUndefined() && !info[2].IsString()) ThrowArgType(info[2], "name", "of type string");
  std::string name = info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : std::string("postcopy");

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
  if (!region_) ThrowUnmapped(env, what);
  return region_;
}

bool Mapping::Holds(size_t offset, size_t length) const {
  return offset <= region_->length && length <= region_->length - offset;
}

void Mapping::CheckRange(Napi::Env env, size_t offset, size_t length, const char* offsetName, const char* lengthName) {
  if (Holds(offset, length)) return;
  const size_t size = region_->length;
  if (offset > size)
    ThrowOutOfRange(Napi::Number::New(env, static_cast<double>(offset)), offsetName,
                    "<= " + std::to_string(size) + " (the mapping's length)");
  ThrowOutOfRange(Napi::Number::New(env, static_cast<double>(length)), lengthName,
                  "<= " + std::to_string(size - offset) + " (the mapping's length after \"" + offsetName + "\")");
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
  int advice = ToInt(info[2], "advice", 0, INT_MAX);
  CheckRange(env, offset, length);
  if (madvise(reinterpret_cast<void*>(region->base + offset), length, advice) != 0)
    ThrowErrno(env, errno, "madvise",
               Hex(region->base + offset) + " length " + std::to_string(length) + " advice " + std::to_string(advice));
  return env.Undefined();
}

// madviseRanges(ranges, advice): ranges is a Float64Array of (offset, length) pairs. One
// process_madvise(2) on this process per 1024 ranges (Linux 6.13+ takes any advice for the
// caller itself, and 6.16+ flushes the TLB once per call instead of once per range), else one
// madvise(2) per range. Returns how many syscalls it made. Any thread may call it (bulk
// workers do), so what it keeps between calls is shared safely:
//  - the pidfd is opened once: a function-local static is initialised exactly once even when
//    threads get here together (C++11), and closed by nobody;
//  - the fallback flag is atomic; relaxed, as it orders nothing else: a thread that reads it
//    late makes one more process_madvise, which the kernel refuses again.
static int SelfPidfd() {
#if defined(SYS_pidfd_open)
  static const int fd = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
  return fd;
#else
  return -1;
#endif
}

static std::atomic<bool> g_batched{true};  // false once the kernel refused process_madvise

// Throws why the pair at ranges[at] is no range of this mapping (the caller has seen it is none).
void Mapping::RefusePair(Napi::Env env, double offset, double length, size_t at) {
  const std::string offsetName = "ranges[" + std::to_string(at) + "]";
  const std::string lengthName = "ranges[" + std::to_string(at + 1) + "]";
  if (!IsSize(offset)) ThrowOutOfRange(Napi::Number::New(env, offset), offsetName.c_str(), kNonNegativeInteger);
  if (!IsSize(length)) ThrowOutOfRange(Napi::Number::New(env, length), lengthName.c_str(), kNonNegativeInteger);
  CheckRange(env, static_cast<size_t>(offset), static_cast<size_t>(length), offsetName.c_str(), lengthName.c_str());
}

Napi::Value Mapping::MadviseRanges(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto region = Live(env, "madviseRanges");
  auto pairs = ToFloat64Array(info[0], "ranges");
  if (pairs.ElementLength() % 2 != 0)
    ThrowOutOfRange(Napi::Number::New(env, static_cast<double>(pairs.ElementLength())), "ranges.length",
                    "even: (offset, length) pairs");
  int advice = ToInt(info[1], "advice", 0, INT_MAX);
  size_t n = pairs.ElementLength() / 2;
  constexpr size_t kBatch = 1024;  // UIO_MAXIOV
  struct iovec iov[kBatch];
  int calls = 0;
  for (size_t i = 0; i < n; i += kBatch) {
    size_t k = n - i < kBatch ? n - i : kBatch;
    size_t total = 0;
    for (size_t j = 0; j < k; j++) {
      const size_t at = 2 * (i + j);
      double o = pairs[at], l = pairs[at + 1];
      if (!IsSize(o) || !IsSize(l) || !Holds(static_cast<size_t>(o), static_cast<size_t>(l))) RefusePair(env, o, l, at);
      iov[j].iov_base = reinterpret_cast<void*>(region->base + static_cast<size_t>(o));
      iov[j].iov_len = static_cast<size_t>(l);
      total += iov[j].iov_len;
    }
    size_t done = 0;  // ranges fully advised by process_madvise
#if defined(SYS_process_madvise)
    int pidfd = g_batched.load(std::memory_order_relaxed) ? SelfPidfd() : -1;
    if (pidfd >= 0) {
      long r = syscall(SYS_process_madvise, pidfd, iov, k, advice, 0);
      calls++;
      if (r >= 0 && static_cast<size_t>(r) == total) continue;
      if (r < 0 && (errno == EINVAL || errno == ENOSYS || errno == EPERM)) {
        g_batched.store(false, std::memory_order_relaxed);
      } else if (r < 0) {
        ThrowErrno(env, errno, "process_madvise", std::to_string(k) + " ranges advice " + std::to_string(advice));
      } else {
        // partial: skip the ranges advised whole; madvise is idempotent for the rest
        size_t left = static_cast<size_t>(r);
        while (done < k && iov[done].iov_len <= left) left -= iov[done++].iov_len;
      }
    }
#endif
    for (size_t j = done; j < k; j++) {
      calls++;
      if (madvise(iov[j].iov_base, iov[j].iov_len, advice) != 0)
        ThrowErrno(env, errno, "madvise", Hex(reinterpret_cast<uintptr_t>(iov[j].iov_base)) + " length " + std::to_string(iov[j].iov_len) + " advice " + std::to_string(advice));
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
  CheckRange(env, offset, length);
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
  if (offset > region->length) CheckRange(env, offset, 0);
  size_t length = info[1].IsUndefined() ? region->length - offset : ToSize(info[1], "length");
  CheckRange(env, offset, length);
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
    ThrowOutOfRange(info[0], "address",
                    "inside a live mapping of this process with the \"length\" bytes after it (no live mapping holds " + Hex(address) +
                        " length " + std::to_string(length) + ")");
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
