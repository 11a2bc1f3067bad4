#include "userfaultfd.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <mutex>
#include <set>

#include "args.h"
#include "errors.h"
#include "uffd_compat.h"

namespace postcopy {

// Each decoded event takes 4 doubles in the caller's Float64Array:
//   PAGEFAULT [event, flags, address, thread id]   FORK   [event, new uffd, 0, 0]
//   REMAP     [event, from, to, length]            REMOVE/UNMAP [event, start, end, 0]
// User-space addresses are below 2^47, so doubles carry them exactly.
static constexpr size_t kEventStride = 4;
static constexpr size_t kMaxBatch = 64;

static std::string Range(uintptr_t start, size_t length) {
  return Hex(start) + " length " + std::to_string(length);
}

// Descriptors owned by a Userfaultfd object, in any thread: adopting one of them a second
// time would close it twice, the second time under whoever reused the number.
static std::mutex g_ownedMutex;
static std::set<int> g_owned;

static void Own(int fd) {
  std::lock_guard<std::mutex> lock(g_ownedMutex);
  g_owned.insert(fd);
}

// Forgets and closes under the lock, so another thread cannot adopt the number in between.
static void Release(int fd) {
  std::lock_guard<std::mutex> lock(g_ownedMutex);
  g_owned.erase(fd);
  close(fd);
}

// Takes ownership of `value` (the "fd" option) if it is a userfaultfd that no Userfaultfd
// object owns yet; anything else is refused and left open, because closing it (on close()
// or collection) would close a descriptor that belongs to someone else.
static int Adopt(Napi::Env env, const Napi::Value& value) {
  int fd = ToFd(value, "fd");
  std::string name = "fd " + std::to_string(fd);
  struct stat st;
  if (fstat(fd, &st) != 0) ThrowErrno(env, errno, "fstat", name);
  // Every anonymous-inode file (eventfd, epoll, ...) shares one inode: only the name tells.
  std::string link = "/proc/self/fd/" + std::to_string(fd);
  char target[PATH_MAX];
  ssize_t n = readlink(link.c_str(), target, sizeof target - 1);
  if (n < 0) ThrowErrno(env, errno, "readlink", link);
  target[n] = 0;
  if (std::strcmp(target, "anon_inode:[userfaultfd]") != 0)
    ThrowInvalidValue(value, "fd", "must be a userfaultfd (" + name + " is " + target + ")");
  std::lock_guard<std::mutex> lock(g_ownedMutex);
  if (g_owned.count(fd)) ThrowInvalidValue(value, "fd", "is already owned by a Userfaultfd");
  // Ours from here, under the same contract as a descriptor we opened.
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) != 0)
    ThrowErrno(env, errno, "fcntl", name);
  g_owned.insert(fd);
  return fd;
}

Napi::Function Userfaultfd::Init(Napi::Env env) {
  return DefineClass(env, "Userfaultfd",
                     {
                         InstanceMethod<&Userfaultfd::Api>("api"),
                         InstanceMethod<&Userfaultfd::Register>("register"),
                         InstanceMethod<&Userfaultfd::Unregister>("unregister"),
                         InstanceMethod<&Userfaultfd::Close>("close"),
                         InstanceMethod<&Userfaultfd::StartEvents>("startEvents"),
                         InstanceMethod<&Userfaultfd::StopEvents>("stopEvents"),
                         InstanceMethod<&Userfaultfd::ReadEvents>("readEvents"),
                         InstanceAccessor<&Userfaultfd::Fd>("fd"),
                         InstanceAccessor<&Userfaultfd::Via>("via"),
                     });
}

static const napi_type_tag kUserfaultfdTag = {0x706f7374636f7079ULL, 0x5566666466640001ULL};

Userfaultfd* Userfaultfd::Unwrap(Napi::Object object) { return UnwrapTagged<Userfaultfd>(object, kUserfaultfdTag, "Userfaultfd"); }

// new Userfaultfd({ userModeOnly?: boolean, fd?: number })
// Always non-blocking and close-on-exec. Opens through /dev/userfaultfd (which needs no
// capability beyond access to the device) and falls back to the userfaultfd(2) syscall.
// With `fd`, adopts a userfaultfd the kernel handed over (UFFD_EVENT_FORK); see Adopt.
// The object owns its descriptor: close() or collection closes it.
Userfaultfd::Userfaultfd(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Userfaultfd>(info) {
  Napi::Env env = info.Env();
  napi_type_tag_object(env, info.This(), &kUserfaultfdTag);
  if (!info[0].IsUndefined() && !info[0].IsObject()) ThrowArgType(info[0], "options", "of type object");
  Napi::Object options = info[0].IsObject() ? info[0].As<Napi::Object>() : Napi::Object::New(env);
  Napi::Value adopted = options.Get("fd");
  if (!adopted.IsUndefined()) {
    fd_ = Adopt(env, adopted);
    return;
  }
  int flags = O_CLOEXEC | O_NONBLOCK;
  if (options.Get("userModeOnly").ToBoolean()) flags |= UFFD_USER_MODE_ONLY;
  int deviceError = 0;
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev >= 0) {
    fd_ = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
    if (fd_ < 0) deviceError = errno;
    close(dev);
  } else {
    deviceError = errno;
  }
  if (fd_ >= 0) {
    viaDevice_ = true;
    Own(fd_);
    return;
  }
  fd_ = static_cast<int>(syscall(SYS_userfaultfd, flags));
  if (fd_ < 0) {
    int err = errno;
    ThrowErrno(env, err, "userfaultfd",
               std::string("(/dev/userfaultfd: ") + uv_err_name(-deviceError) +
                   (err == EPERM ? "; the syscall needs CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1)" : ")"));
  }
  Own(fd_);
}

Userfaultfd::~Userfaultfd() {
  if (poll_) {
    uv_poll_stop(poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
  }
  if (fd_ >= 0) Release(fd_);
}

int Userfaultfd::LiveFd(Napi::Env env, const char* syscall) {
  if (fd_ < 0) ThrowErrno(env, EBADF, syscall, "(the userfaultfd is closed)");
  return fd_;
}

// api(features: bigint) -> { features: bigint, ioctls: bigint }. Once per fd, as the kernel
// requires; features = 0n reports everything this kernel offers.
Napi::Value Userfaultfd::Api(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = LiveFd(env, "ioctl(UFFDIO_API)");
  if (!info[0].IsBigInt()) ThrowArgType(info[0], "features", "of type bigint");
  bool lossless = false;
  const uint64_t features = info[0].As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) ThrowOutOfRange(info[0], "features", ">= 0n && < 2n ** 64n");
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = features;
  if (ioctl(fd, UFFDIO_API, &api) != 0) ThrowErrno(env, errno, "ioctl(UFFDIO_API)", "features " + Hex(features));
  Napi::Object result = Napi::Object::New(env);
  result.Set("features", Napi::BigInt::New(env, static_cast<uint64_t>(api.features)));
  result.Set("ioctls", Napi::BigInt::New(env, static_cast<uint64_t>(api.ioctls)));
  return result;
}

// register(start, length, mode) -> bigint mask of the ioctls allowed on the range
Napi::Value Userfaultfd::Register(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = LiveFd(env, "ioctl(UFFDIO_REGISTER)");
  uffdio_register reg{};
  reg.range.start = ToAddress(info[0], "start");
  reg.range.len = ToSize(info[1], "length");
  reg.mode = ToSize(info[2], "mode");
  if (ioctl(fd, UFFDIO_REGISTER, &reg) != 0)
    ThrowErrno(env, errno, "ioctl(UFFDIO_REGISTER)",
               Range(reg.range.start, reg.range.len) + " mode " + std::to_string(reg.mode));
  return Napi::BigInt::New(env, static_cast<uint64_t>(reg.ioctls));
}

Napi::Value Userfaultfd::Unregister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = LiveFd(env, "ioctl(UFFDIO_UNREGISTER)");
  uffdio_range range{ToAddress(info[0], "start"), ToSize(info[1], "length")};
  if (ioctl(fd, UFFDIO_UNREGISTER, &range) != 0)
    ThrowErrno(env, errno, "ioctl(UFFDIO_UNREGISTER)", Range(range.start, range.len));
  return env.Undefined();
}

void Userfaultfd::StopPolling() {
  if (!poll_) return;
  uv_poll_stop(poll_);  // also drops the fd from the loop's epoll set
  uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
  poll_ = nullptr;
  callback_.Reset();
  eventsBuffer_.Reset();
  events_ = nullptr;
  Unref();
}

// close(): wakes every blocked thread, which then retries its access. The TypeScript layer
// makes sure guest threads are stopped first where that retry could read a silent zero page.
Napi::Value Userfaultfd::Close(const Napi::CallbackInfo& info) {
  StopPolling();
  if (fd_ >= 0) Release(fd_);
  fd_ = -1;
  return info.Env().Undefined();
}

int Userfaultfd::ReadInto(double* out, size_t capacity) {
  if (capacity > kMaxBatch) capacity = kMaxBatch;
  ssize_t r = read(fd_, messages_, capacity * sizeof(uffd_msg));
  if (r < 0) return errno == EAGAIN ? 0 : -errno;
  size_t count = static_cast<size_t>(r) / sizeof(uffd_msg);
  for (size_t i = 0; i < count; i++) {
    const uffd_msg& m = messages_[i];
    double* e = out + i * kEventStride;
    e[0] = m.event;
    switch (m.event) {
      case UFFD_EVENT_PAGEFAULT:
        e[1] = static_cast<double>(m.arg.pagefault.flags);
        e[2] = static_cast<double>(m.arg.pagefault.address);
        e[3] = m.arg.pagefault.feat.ptid;
        break;
      case UFFD_EVENT_FORK:
        e[1] = m.arg.fork.ufd;
        e[2] = e[3] = 0;
        break;
      case UFFD_EVENT_REMAP:
        e[1] = static_cast<double>(m.arg.remap.from);
        e[2] = static_cast<double>(m.arg.remap.to);
        e[3] = static_cast<double>(m.arg.remap.len);
        break;
      default:  // REMOVE, UNMAP
        e[1] = static_cast<double>(m.arg.remove.start);
        e[2] = static_cast<double>(m.arg.remove.end);
        e[3] = 0;
        break;
    }
  }
  return static_cast<int>(count);
}

// readEvents(buffer: Float64Array) -> events decoded (0 if none pending), or -errno
Napi::Value Userfaultfd::ReadEvents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Float64Array buffer = ToFloat64Array(info[0], "buffer");
  return Napi::Number::New(env, ReadInto(buffer.Data(), buffer.ElementLength() / kEventStride));
}

// startEvents(buffer: Float64Array, callback(count)): decodes fault events into `buffer` and
// calls back on this thread's event loop, as many messages per read as fit (up to 64).
// count < 0 is -errno from read(2).
Napi::Value Userfaultfd::StartEvents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = LiveFd(env, "uv_poll_start");
  Napi::Float64Array buffer = ToFloat64Array(info[0], "buffer");
  if (!info[1].IsFunction()) ThrowArgType(info[1], "callback", "of type function");
  if (buffer.ElementLength() < kEventStride)
    ThrowOutOfRange(Napi::Number::New(env, static_cast<double>(buffer.ElementLength())), "buffer.length",
                    ">= " + std::to_string(kEventStride) + " (one event)");
  if (poll_) ThrowErrno(env, EBUSY, "uv_poll_start", "(events are already being delivered)");
  uv_loop_t* loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) ThrowErrno(env, EINVAL, "napi_get_uv_event_loop", "");
  poll_ = new uv_poll_t;
  int r = uv_poll_init(loop, poll_, fd);
  if (r == 0) {
    poll_->data = this;
    r = uv_poll_start(poll_, UV_READABLE, OnReadable);
  }
  if (r != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
    ThrowErrno(env, -r, "uv_poll_start", "fd " + std::to_string(fd));
  }
  eventsBuffer_ = Napi::Reference<Napi::Float64Array>::New(buffer, 1);
  events_ = buffer.Data();
  eventsCapacity_ = std::min(buffer.ElementLength() / kEventStride, kMaxBatch);
  callback_ = Napi::Persistent(info[1].As<Napi::Function>());
  Ref();  // stay alive while the loop may call back
  return env.Undefined();
}

Napi::Value Userfaultfd::StopEvents(const Napi::CallbackInfo& info) {
  StopPolling();
  return info.Env().Undefined();
}

void Userfaultfd::OnReadable(uv_poll_t* handle, int status, int events) {
  auto* self = static_cast<Userfaultfd*>(handle->data);
  Napi::Env env = self->Env();
  Napi::HandleScope scope(env);
  // Drain: a full batch means more may be waiting.
  while (self->poll_ == handle && self->fd_ >= 0) {
    int count = status < 0 ? status : self->ReadInto(self->events_, self->eventsCapacity_);
    if (count == 0) break;
    try {
      self->callback_.MakeCallback(self->Value(), {Napi::Number::New(env, count)});
    } catch (const Napi::Error& e) {
      napi_fatal_exception(env, e.Value());
      break;
    }
    if (count < 0 || static_cast<size_t>(count) < self->eventsCapacity_) break;
  }
}

Napi::Value Userfaultfd::Fd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }
Napi::Value Userfaultfd::Via(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), viaDevice_ ? "dev" : "syscall");
}

}  // namespace postcopy
