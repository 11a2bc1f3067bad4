// Pages between memory and a descriptor, one call per packet: what a bulk channel's worker
// needs so that no page's bytes pass through JavaScript. Mechanism only: TypeScript says which bytes
// (offsets and runs of a view of guest memory); these check each against the view, so a bad
// offset is a RangeError, never a read outside the block.
#include <napi.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <vector>

#include "args.h"
#include "errors.h"

namespace postcopy {

// Element `i` of `values`, as a byte offset or length: a non-negative safe integer.
static size_t ElementSize(Napi::Env env, const double* values, size_t i, const char* array) {
  if (!IsSize(values[i])) {
    std::string name = std::string(array) + "[" + std::to_string(i) + "]";
    ThrowOutOfRange(Napi::Number::New(env, values[i]), name.c_str(), kNonNegativeInteger);
  }
  return static_cast<size_t>(values[i]);
}

static void CheckInside(Napi::Env env, const double* values, size_t i, const char* array, size_t end, size_t limit) {
  if (end > limit) {
    std::string name = std::string(array) + "[" + std::to_string(i) + "]";
    ThrowOutOfRange(Napi::Number::New(env, values[i]), name.c_str(), "inside memory (" + std::to_string(limit) + " bytes)");
  }
}

static bool AllZero(const uint8_t* p, size_t length) {
  // the first 16 bytes alone, then the rest against them (memcmp is vectorised)
  static const uint8_t kZeros[16] = {};
  const size_t head = std::min<size_t>(length, 16);
  return std::memcmp(p, kZeros, head) == 0 && (length <= 16 || std::memcmp(p, p + 16, length - 16) == 0);
}

// markZeroPages(memory, offsets: Float64Array, pageSize, zero: Uint8Array) -> count
// For each i where zero[i] is 0, sets it to 1 if the `pageSize` bytes of `memory` at
// offsets[i] are all zero (where it is 1 already, the page is not read). Returns how many are
// 1 afterwards.
static Napi::Value MarkZeroPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t memoryLength, pages, flagsLength;
  const uint8_t* memory = ToBytes(info[0], "memory", &memoryLength);
  Napi::Float64Array offsetArray = ToFloat64Array(info[1], "offsets");
  const double* offsets = offsetArray.Data();
  pages = offsetArray.ElementLength();
  const size_t pageSize = ToSize(info[2], "pageSize");
  if (pageSize == 0) ThrowOutOfRange(info[2], "pageSize", ">= 1");
  uint8_t* zero = ToBytes(info[3], "zero", &flagsLength);
  if (flagsLength < pages) ThrowOutOfRange(Napi::Number::New(env, static_cast<double>(flagsLength)), "zero.byteLength", ">= offsets.length (" + std::to_string(pages) + ")");
  for (size_t i = 0; i < pages; i++) {
    const size_t offset = ElementSize(env, offsets, i, "offsets");
    CheckInside(env, offsets, i, "offsets", offset + pageSize, memoryLength);
  }
  double count = 0;
  for (size_t i = 0; i < pages; i++) {
    if (!zero[i] && AllZero(memory + static_cast<size_t>(offsets[i]), pageSize)) zero[i] = 1;
    count += zero[i] != 0;
  }
  return Napi::Number::New(env, count);
}

static double NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

// writeRuns(fd, header, memory, runs: Float64Array, timeoutMs) -> bytes
// Writes `header`, then memory[runs[2k], runs[2k] + runs[2k+1]) for each k, in order, with
// sendmsg (no SIGPIPE) straight from memory: every byte or an error. The socket may be
// non-blocking: when it is full this thread waits in poll(), and fails with ETIMEDOUT when
// `timeoutMs` pass without a byte taken (a peer that stopped reading). Runs out of memory's
// bounds are refused before a byte is written.
static Napi::Value WriteRuns(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ToFd(info[0], "fd");
  size_t headerLength, memoryLength, runValues;
  uint8_t* header = ToBytes(info[1], "header", &headerLength);
  uint8_t* memory = ToBytes(info[2], "memory", &memoryLength);
  Napi::Float64Array runArray = ToFloat64Array(info[3], "runs");
  const double* runs = runArray.Data();
  runValues = runArray.ElementLength();
  if (runValues % 2) ThrowOutOfRange(Napi::Number::New(env, static_cast<double>(runValues)), "runs.length", "even (offset, length pairs)");
  const int timeoutMs = ToInt(info[4], "timeoutMs", 0, INT_MAX);

  std::vector<iovec> iov;
  iov.reserve(1 + runValues / 2);
  size_t total = headerLength;
  if (headerLength) iov.push_back({header, headerLength});
  for (size_t i = 0; i < runValues; i += 2) {
    const size_t offset = ElementSize(env, runs, i, "runs");
    const size_t length = ElementSize(env, runs, i + 1, "runs");
    CheckInside(env, runs, i, "runs", offset + length, memoryLength);
    if (length) iov.push_back({memory + offset, length});
    total += length;
  }

  size_t first = 0;  // the first iovec not yet written whole
  double lastProgress = NowMs();
  while (first < iov.size()) {
    msghdr msg{};
    msg.msg_iov = &iov[first];
    msg.msg_iovlen = std::min<size_t>(iov.size() - first, IOV_MAX);
    // MSG_DONTWAIT: the wait is the poll below, bounded, whether or not the descriptor blocks
    const ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) ThrowErrno(env, errno, "sendmsg", "fd " + std::to_string(fd));
      const int left = static_cast<int>(timeoutMs - (NowMs() - lastProgress));
      if (left <= 0) ThrowErrno(env, ETIMEDOUT, "sendmsg", "fd " + std::to_string(fd) + ": nothing taken for " + std::to_string(timeoutMs) + " ms");
      pollfd p{fd, POLLOUT, 0};
      if (poll(&p, 1, left) < 0 && errno != EINTR) ThrowErrno(env, errno, "poll", "fd " + std::to_string(fd));
      continue;
    }
    lastProgress = NowMs();
    for (size_t done = static_cast<size_t>(n); done > 0;) {  // skip what went, whole or in part
      const size_t take = std::min(done, iov[first].iov_len);
      iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + take;
      iov[first].iov_len -= take;
      done -= take;
      if (iov[first].iov_len == 0) first++;
    }
  }
  return Napi::Number::New(env, static_cast<double>(total));
}

void DefinePageIo(Napi::Env env, Napi::Object exports) {
  exports.Set("markZeroPages", Napi::Function::New<MarkZeroPages>(env, "markZeroPages"));
  exports.Set("writeRuns", Napi::Function::New<WriteRuns>(env, "writeRuns"));
}

}  // namespace postcopy
