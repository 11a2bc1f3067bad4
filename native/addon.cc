// postcopy native addon: thin, errno-faithful wrappers of mmap/madvise/memfd and userfaultfd.
// No policy lives here; src/kernel/ is the only user of this module.
#include <napi.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "mapping.h"
#include "userfaultfd.h"

namespace postcopy {

Napi::Value PagemapScan(const Napi::CallbackInfo& info);
void DefinePlacement(napi_env env, napi_value exports);

static Napi::Value GetTid(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(syscall(SYS_gettid)));
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Mapping", Mapping::Init(env));
  exports.Set("Userfaultfd", Userfaultfd::Init(env));
  DefinePlacement(env, exports);
  exports.Set("gettid", Napi::Function::New<GetTid>(env, "gettid"));
  exports.Set("pagemapScan", Napi::Function::New<PagemapScan>(env, "pagemapScan"));
  exports.Set("pageSize", Napi::Number::New(env, static_cast<double>(sysconf(_SC_PAGESIZE))));
  return exports;
}

}  // namespace postcopy

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return postcopy::Init(env, exports); }

NODE_API_MODULE(postcopy, InitModule)
