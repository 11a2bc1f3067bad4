// postcopy native addon: thin, errno-faithful wrappers of mmap/madvise/memfd, userfaultfd and
// the Unix socket calls a userfaultfd handler needs, CRC32C over runs of pages, and pages
// written to a socket straight from memory.
// No policy lives here; src/kernel/ is the only user of this module.
#include <fcntl.h>
#include <napi.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "args.h"
#include "errors.h"
#include "mapping.h"
#include "userfaultfd.h"

namespace postcopy {

Napi::Value PagemapScan(const Napi::CallbackInfo& info);
void DefinePlacement(napi_env env, napi_value exports);
void DefineSocket(Napi::Env env, Napi::Object exports);
Napi::Function DefineFileMapping(Napi::Env env);
void DefineChecksum(Napi::Env env, Napi::Object exports);
void DefinePageIo(Napi::Env env, Napi::Object exports);

static Napi::Value GetTid(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(syscall(SYS_gettid)));
}

// _exit(2): the whole process ends at once (exit_group), threads blocked in a userfaultfd fault
// included, and nothing is joined. Node's own exit joins worker threads first, which never
// returns while one of them sits in a fault that nobody will serve.
// The code is what the parent can see, [0, 255] (1 if none): 256 or 1.5 would read as 0 or 1.
static Napi::Value ExitNow(const Napi::CallbackInfo& info) {
  _exit(info[0].IsUndefined() ? 1 : ToInt(info[0], "code", 0, 255));
}

// fcntl(F_DUPFD_CLOEXEC): a second descriptor of the same open socket or userfaultfd, so that a
// worker thread can own one (and close it) while the thread that accepted it closes its own.
static Napi::Value DuplicateDescriptor(const Napi::CallbackInfo& info) {
  int fd = ToFd(info[0], "fd");
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0) ThrowErrno(info.Env(), errno, "fcntl", "F_DUPFD_CLOEXEC of descriptor " + std::to_string(fd));
  return Napi::Number::New(info.Env(), copy);
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Mapping", Mapping::Init(env));
  exports.Set("Userfaultfd", Userfaultfd::Init(env));
  exports.Set("FileMapping", DefineFileMapping(env));
  DefinePlacement(env, exports);
  DefineSocket(env, exports);
  exports.Set("gettid", Napi::Function::New<GetTid>(env, "gettid"));
  exports.Set("exitNow", Napi::Function::New<ExitNow>(env, "exitNow"));
  exports.Set("duplicateDescriptor", Napi::Function::New<DuplicateDescriptor>(env, "duplicateDescriptor"));
  exports.Set("pagemapScan", Napi::Function::New<PagemapScan>(env, "pagemapScan"));
  DefineChecksum(env, exports);
  DefinePageIo(env, exports);
  exports.Set("pageSize", Napi::Number::New(env, static_cast<double>(sysconf(_SC_PAGESIZE))));
  return exports;
}

}  // namespace postcopy

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return postcopy::Init(env, exports); }

NODE_API_MODULE(postcopy, InitModule)
