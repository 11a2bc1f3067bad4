// Guest memory mappings and the external ArrayBuffers ("views") over them.
#pragma once
#include <napi.h>

#include <memory>

namespace postcopy {

// One mmap'd range. Shared by the Mapping object and every view over it (in any thread), so
// the address range stays reserved until the last of them is gone.
struct Region;

class Mapping : public Napi::ObjectWrap<Mapping> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit Mapping(const Napi::CallbackInfo& info);
  // checks the type tag first (args.h, UnwrapTagged): ObjectWrap's wrappers call this one
  static Mapping* Unwrap(Napi::Object object);
  ~Mapping() override;

  // Creates an ArrayBuffer over [address, address+length) of a live mapping made by this
  // process, from any thread (that is how a worker thread reaches guest memory).
  static Napi::Value Attach(const Napi::CallbackInfo& info);

 private:
  Napi::Value Address(const Napi::CallbackInfo& info);
  Napi::Value Length(const Napi::CallbackInfo& info);
  Napi::Value PageSize(const Napi::CallbackInfo& info);
  Napi::Value Fd(const Napi::CallbackInfo& info);
  Napi::Value Madvise(const Napi::CallbackInfo& info);
  Napi::Value MadviseRanges(const Napi::CallbackInfo& info);
  Napi::Value PunchHole(const Napi::CallbackInfo& info);
  Napi::Value View(const Napi::CallbackInfo& info);
  Napi::Value Unmap(const Napi::CallbackInfo& info);

  std::shared_ptr<Region> Live(Napi::Env env, const char* what);
  // Whether [offset, offset + length) lies inside the mapping; CheckRange throws
  // (ERR_OUT_OF_RANGE) unless it does.
  bool Holds(size_t offset, size_t length) const;
  void CheckRange(Napi::Env env, size_t offset, size_t length, const char* offsetName = "offset",
                  const char* lengthName = "length");
  void RefusePair(Napi::Env env, double offset, double length, size_t at);

  std::shared_ptr<Region> region_;
};

}  // namespace postcopy
