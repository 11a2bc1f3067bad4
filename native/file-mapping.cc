// A read-only, shared mapping of a whole file (a VM's memory file): the source of UFFDIO_COPY
// for every VM served from it, through one page cache. No view over it is ever made: a store
// into it would kill the process (SIGSEGV), and a read past the end of a file truncated since
// too (SIGBUS); the kernel's own copy (UFFDIO_COPY) answers EFAULT there instead.
#include <fcntl.h>
#include <napi.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "args.h"
#include "errors.h"

namespace postcopy {

class FileMapping : public Napi::ObjectWrap<FileMapping> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit FileMapping(const Napi::CallbackInfo& info);
  static FileMapping* Unwrap(Napi::Object object);
  ~FileMapping() override { Release(); }

 private:
  Napi::Value Address(const Napi::CallbackInfo& info);
  Napi::Value DataRanges(const Napi::CallbackInfo& info);
  Napi::Value Unmap(const Napi::CallbackInfo& info);
  void Release();

  uintptr_t base_ = 0;
  size_t length_ = 0;
  int fd_ = -1;  // a duplicate of the caller's, for lseek: the mapping does not need it
};

static const napi_type_tag kFileMappingTag = {0x706f7374636f7079ULL, 0x46696c654d617001ULL};

FileMapping* FileMapping::Unwrap(Napi::Object object) {
  return UnwrapTagged<FileMapping>(object, kFileMappingTag, "FileMapping");
}

Napi::Function FileMapping::Init(Napi::Env env) {
  return DefineClass(env, "FileMapping",
                     {
                         InstanceAccessor<&FileMapping::Address>("address"),
                         InstanceMethod<&FileMapping::DataRanges>("dataRanges"),
                         InstanceMethod<&FileMapping::Unmap>("unmap"),
                     });
}

// new FileMapping(fd, length): maps [0, length) of the open file `fd` PROT_READ, MAP_SHARED.
// The caller's descriptor stays the caller's: the mapping keeps a duplicate (close-on-exec).
FileMapping::FileMapping(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FileMapping>(info) {
  Napi::Env env = info.Env();
  napi_type_tag_object(env, info.This(), &kFileMappingTag);
  int fd = ToFd(info[0], "fd");
  size_t length = ToSize(info[1], "length");
  if (length == 0) ThrowOutOfRange(info[1], "length", "a positive integer (an empty file cannot be mapped)");
  fd_ = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (fd_ < 0) ThrowErrno(env, errno, "fcntl", "F_DUPFD_CLOEXEC of descriptor " + std::to_string(fd));
  void* base = mmap(nullptr, length, PROT_READ, MAP_SHARED, fd_, 0);
  if (base == MAP_FAILED) {
    int err = errno;
    Release();
    ThrowErrno(env, err, "mmap", "PROT_READ MAP_SHARED fd " + std::to_string(fd) + " length " + std::to_string(length));
  }
  base_ = reinterpret_cast<uintptr_t>(base);
  length_ = length;
}

void FileMapping::Release() {
  if (base_) munmap(reinterpret_cast<void*>(base_), length_);
  if (fd_ >= 0) close(fd_);
  base_ = 0;
  fd_ = -1;
}

Napi::Value FileMapping::Address(const Napi::CallbackInfo& info) {
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(base_));
}

// dataRanges(maxRanges) -> Float64Array of (start, end) pairs: where the mapped part of the
// file has data, from lseek(SEEK_DATA) and lseek(SEEK_HOLE) (holes read as zeros). Bounded:
// every step moves forward, ends are clipped to the mapped length (the file may have grown),
// and after maxRanges - 1 ranges the rest is one range, data as far as anyone can tell
// (reading a hole as data is correct, only slower). A file system without holes reports
// the whole file as data.
Napi::Value FileMapping::DataRanges(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const size_t max = static_cast<size_t>(ToInt(info[0], "maxRanges", 1, INT_MAX));
  if (!base_) ThrowUnmapped(env, "dataRanges");
  std::vector<double> pairs;
  off_t at = 0;
  const off_t end = static_cast<off_t>(length_);
  while (at < end) {
    off_t data = lseek(fd_, at, SEEK_DATA);
    if (data < 0 && errno == ENXIO) break;  // only holes from `at` to the end of the file
    if (data < 0) ThrowErrno(env, errno, "lseek", "SEEK_DATA offset " + std::to_string(at));
    if (data >= end) break;
    const bool last = pairs.size() / 2 + 1 == max;
    off_t hole = last ? end : lseek(fd_, data, SEEK_HOLE);
    if (hole < 0 && errno == ENXIO) break;  // truncated under us: nothing there any more
    if (hole < 0) ThrowErrno(env, errno, "lseek", "SEEK_HOLE offset " + std::to_string(data));
    if (hole <= data) hole = data + 1;  // punched under us: a byte of data, and the walk goes on
    if (hole > end) hole = end;
    pairs.push_back(static_cast<double>(data));
    pairs.push_back(static_cast<double>(hole));
    at = hole;
  }
  Napi::Float64Array out = Napi::Float64Array::New(env, pairs.size());
  for (size_t i = 0; i < pairs.size(); i++) out[i] = pairs[i];
  return out;
}

// unmap(): the address range and the duplicate descriptor go now (also when collected).
Napi::Value FileMapping::Unmap(const Napi::CallbackInfo& info) {
  Release();
  return info.Env().Undefined();
}

Napi::Function DefineFileMapping(Napi::Env env) { return FileMapping::Init(env); }

}  // namespace postcopy
