// Unix sockets: a message with descriptors (SCM_RIGHTS) and who is on the other end
// (SO_PEERCRED), what a VMM's userfaultfd handler needs to take the one message the VMM
// sends; and a connected pair, for a worker thread behind a TLS channel.
#include <napi.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "args.h"
#include "errors.h"

namespace postcopy {

// SCM_MAX_FD: the most descriptors the kernel passes in one message.
static constexpr int kMaxDescriptors = 253;

// receiveMessage(fd, buffer, maxDescriptors) -> { bytes, descriptors, truncated }
// One recvmsg(MSG_DONTWAIT | MSG_CMSG_CLOEXEC): the bytes go into `buffer`, the descriptors
// that came with them are returned open (close-on-exec). bytes is 0 at end of stream and
// -EAGAIN when nothing is there yet (a status: the caller decides how to wait). Room is made for
// `maxDescriptors`; what the peer sent beyond that is closed, by the kernel (MSG_CTRUNC) or
// here (the control buffer's alignment can fit one more), and `truncated` says so.
static Napi::Value ReceiveMessage(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ToFd(info[0], "fd");
  size_t size;
  uint8_t* data = ToBytes(info[1], "buffer", &size);
  // an empty buffer would read nothing and return 0, which means end of stream
  if (size == 0) ThrowOutOfRange(Napi::Number::New(env, 0), "buffer.byteLength", ">= 1");
  const int max = ToInt(info[2], "maxDescriptors", 0, kMaxDescriptors);

  union {
    cmsghdr align;
    char bytes[CMSG_SPACE(kMaxDescriptors * sizeof(int))];
  } control;
  iovec iov{data, size};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (max > 0) {
    msg.msg_control = control.bytes;
    msg.msg_controllen = CMSG_SPACE(max * sizeof(int));
  }
  ssize_t n;
  do n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0 && errno != EAGAIN) ThrowErrno(env, errno, "recvmsg", "fd " + std::to_string(fd));

  // Keep the first `max` descriptors, close the rest, before anything can throw.
  int kept[kMaxDescriptors];
  int count = 0;
  bool truncated = n >= 0 && (msg.msg_flags & MSG_CTRUNC) != 0;
  for (cmsghdr* c = n > 0 ? CMSG_FIRSTHDR(&msg) : nullptr; c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t received = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < received; i++) {
      int descriptor;
      std::memcpy(&descriptor, CMSG_DATA(c) + i * sizeof(int), sizeof descriptor);
      if (count < max) {
        kept[count++] = descriptor;
      } else {
        close(descriptor);
        truncated = true;
      }
    }
  }
  Napi::Array descriptors = Napi::Array::New(env, count);
  for (int i = 0; i < count; i++) descriptors.Set(i, Napi::Number::New(env, kept[i]));
  Napi::Object result = Napi::Object::New(env);
  result.Set("bytes", Napi::Number::New(env, n < 0 ? -EAGAIN : static_cast<double>(n)));
  result.Set("descriptors", descriptors);
  result.Set("truncated", Napi::Boolean::New(env, truncated));
  return result;
}

// peerCredentials(fd) -> { pid, uid, gid } of the process at the other end (as it was when
// it connected), from SO_PEERCRED.
static Napi::Value PeerCredentials(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ToFd(info[0], "fd");
  ucred credentials{};
  socklen_t length = sizeof credentials;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0)
    ThrowErrno(env, errno, "getsockopt", "SO_PEERCRED of fd " + std::to_string(fd));
  Napi::Object result = Napi::Object::New(env);
  result.Set("pid", Napi::Number::New(env, credentials.pid));
  result.Set("uid", Napi::Number::New(env, credentials.uid));
  result.Set("gid", Napi::Number::New(env, credentials.gid));
  return result;
}

// socketPair() -> [fd, fd]: a connected pair of Unix stream sockets (close-on-exec). A worker
// thread that reads and writes a descriptor itself gets one end when its channel is TLS: the
// thread holding the TLS session relays between the other end and the connection.
static Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) ThrowErrno(env, errno, "socketpair", "AF_UNIX SOCK_STREAM");
  Napi::Array pair = Napi::Array::New(env, 2);
  pair.Set(0u, Napi::Number::New(env, fds[0]));
  pair.Set(1u, Napi::Number::New(env, fds[1]));
  return pair;
}

// setSocketBuffers(fd, sendBytes, receiveBytes) -> { send, receive }: SO_SNDBUF and SO_RCVBUF
// (0 leaves one as it is), then both as the kernel now has them (it doubles what it is given
// and clamps it to its bounds; setting one ends its autotuning on that socket). Node sets
// neither on a TCP socket.
static Napi::Value SetSocketBuffers(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ToFd(info[0], "fd");
  int sizes[2] = {ToInt(info[1], "sendBytes", 0, INT_MAX / 2), ToInt(info[2], "receiveBytes", 0, INT_MAX / 2)};
  const int options[2] = {SO_SNDBUF, SO_RCVBUF};
  const char* names[2] = {"SO_SNDBUF", "SO_RCVBUF"};
  for (int i = 0; i < 2; i++) {
    if (sizes[i] != 0 && setsockopt(fd, SOL_SOCKET, options[i], &sizes[i], sizeof sizes[i]) != 0)
      ThrowErrno(env, errno, "setsockopt", std::string(names[i]) + " of fd " + std::to_string(fd));
    socklen_t length = sizeof sizes[i];
    if (getsockopt(fd, SOL_SOCKET, options[i], &sizes[i], &length) != 0)
      ThrowErrno(env, errno, "getsockopt", std::string(names[i]) + " of fd " + std::to_string(fd));
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("send", Napi::Number::New(env, sizes[0]));
  result.Set("receive", Napi::Number::New(env, sizes[1]));
  return result;
}

// shutdownSocket(fd): shutdown(SHUT_RDWR), which wakes a thread waiting on the socket in
// poll() or sendmsg() at once (its write fails with EPIPE): how the main thread ends a worker
// blocked writing to a peer that stopped reading. ENOTCONN (never connected, or already
// reset) is no error: the socket is as shut as it gets.
static Napi::Value ShutdownSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ToFd(info[0], "fd");
  if (shutdown(fd, SHUT_RDWR) != 0 && errno != ENOTCONN) ThrowErrno(env, errno, "shutdown", "fd " + std::to_string(fd));
  return env.Undefined();
}

void DefineSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("shutdownSocket", Napi::Function::New<ShutdownSocket>(env, "shutdownSocket"));
  exports.Set("setSocketBuffers", Napi::Function::New<SetSocketBuffers>(env, "setSocketBuffers"));
  exports.Set("socketPair", Napi::Function::New<SocketPair>(env, "socketPair"));
  exports.Set("receiveMessage", Napi::Function::New<ReceiveMessage>(env, "receiveMessage"));
  exports.Set("peerCredentials", Napi::Function::New<PeerCredentials>(env, "peerCredentials"));
}

}  // namespace postcopy
