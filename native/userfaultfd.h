// A userfaultfd: open, UFFDIO_API handshake, register, fault events. The placement ioctls
// are plain functions taking the descriptor (placement.cc): the hot path skips the unwrap.
#pragma once
#include <napi.h>
#include <uv.h>

#include <linux/userfaultfd.h>

namespace postcopy {

class Userfaultfd : public Napi::ObjectWrap<Userfaultfd> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit Userfaultfd(const Napi::CallbackInfo& info);
  // checks the type tag first (args.h, UnwrapTagged): ObjectWrap's wrappers call this one
  static Userfaultfd* Unwrap(Napi::Object object);
  ~Userfaultfd() override;

 private:
  // cold path: throw on failure
  Napi::Value Api(const Napi::CallbackInfo& info);
  Napi::Value Register(const Napi::CallbackInfo& info);
  Napi::Value Unregister(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  // events
  Napi::Value StartEvents(const Napi::CallbackInfo& info);
  Napi::Value StopEvents(const Napi::CallbackInfo& info);
  Napi::Value ReadEvents(const Napi::CallbackInfo& info);

  Napi::Value Fd(const Napi::CallbackInfo& info);
  Napi::Value Via(const Napi::CallbackInfo& info);

  int LiveFd(Napi::Env env, const char* syscall);
  int ReadInto(double* out, size_t capacity);  // messages decoded, 0 if none, -errno
  void StopPolling();
  static void OnReadable(uv_poll_t* handle, int status, int events);

  int fd_ = -1;
  bool viaDevice_ = false;

  // event delivery (libuv poll on the fd, in the loop of the thread that started it)
  uv_poll_t* poll_ = nullptr;
  Napi::FunctionReference callback_;
  Napi::Reference<Napi::Float64Array> eventsBuffer_;
  double* events_ = nullptr;
  size_t eventsCapacity_ = 0;
  uffd_msg messages_[64];
};

}  // namespace postcopy
