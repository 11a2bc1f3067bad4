// A VMM in miniature for foreign-uffd.test.ts (cc -O2 -Wall -pthread). Its guest memory is two
// regions of REGION_PAGES pages with GAP_PAGES unmapped pages between them, registered for
// MISSING faults on a userfaultfd with UFFD_FEATURE_EVENT_REMOVE, which it hands to the
// handler listening at argv[1] as Firecracker does: one sendmsg, a JSON array of regions,
// the descriptor in SCM_RIGHTS. It keeps its own copy of the descriptor and the socket open.
//
// Then it reads commands on stdin, one a line, runs each on a new thread (a vCPU) and answers
// one line on stdout:
//   check R P     page P of region R holds the memory file's bytes -> ok | bad OFFSET GOT WANT
//   zero R P      page P of region R reads as zeros                 -> zero | nonzero OFFSET
//   dontneed R P  madvise(MADV_DONTNEED) of that page (a REMOVE)    -> done
//   exit          exits with status 0
// The memory file holds the regions in order; its 32-bit word k is (k + 1) * 0x9e3779b1 | 1
// (test/support/serve.ts, patternImage).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#define REGION_PAGES 4
#define GAP_PAGES 2

static size_t page;
static char* regions[2];

static void die(const char* what) {
  fprintf(stderr, "foreign-vmm: %s: %s\n", what, strerror(errno));
  exit(2);
}

static uint32_t fileWord(size_t k) { return (uint32_t)(k + 1) * 0x9e3779b1u | 1u; }

struct command {
  char verb[16];
  int region, page;
  char answer[96];
};

static void* vcpu(void* arg) {
  struct command* c = arg;
  volatile uint32_t* words = (volatile uint32_t*)(regions[c->region] + (size_t)c->page * page);
  size_t first = ((size_t)c->region * REGION_PAGES + c->page) * page / 4;  // its first word in the file
  snprintf(c->answer, sizeof c->answer, "%s", strcmp(c->verb, "zero") == 0 ? "zero" : "ok");
  if (strcmp(c->verb, "dontneed") == 0) {
    if (madvise((void*)words, page, MADV_DONTNEED) != 0) die("madvise");
    snprintf(c->answer, sizeof c->answer, "done");
    return NULL;
  }
  for (size_t i = 0; i < page / 4; i++) {
    uint32_t got = words[i];
    if (strcmp(c->verb, "zero") == 0 && got != 0) {
      snprintf(c->answer, sizeof c->answer, "nonzero %zu", i * 4);
      break;
    }
    if (strcmp(c->verb, "check") == 0 && got != fileWord(first + i)) {
      snprintf(c->answer, sizeof c->answer, "bad %zu %08x %08x", i * 4, got, fileWord(first + i));
      break;
    }
  }
  return NULL;
}

// As Firecracker opens it: /dev/userfaultfd, else the syscall; non-blocking, close-on-exec.
static int openUserfaultfd(void) {
  int flags = O_CLOEXEC | O_NONBLOCK;
#ifdef USERFAULTFD_IOC_NEW
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev >= 0) {
    int fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
    close(dev);
    if (fd >= 0) return fd;
  }
#endif
  return (int)syscall(SYS_userfaultfd, flags);
}

// The handshake: one message, the regions as JSON and the userfaultfd in SCM_RIGHTS.
static void handOver(const char* path, int uffd) {
  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un address = {.sun_family = AF_UNIX};
  snprintf(address.sun_path, sizeof address.sun_path, "%s", path);
  if (sock < 0 || connect(sock, (struct sockaddr*)&address, sizeof address) != 0) die("connect");
  char json[512];
  size_t size = REGION_PAGES * page;
  int n = snprintf(json, sizeof json,
                   "[{\"base_host_virt_addr\":%lu,\"size\":%zu,\"offset\":0,\"page_size\":%zu,\"page_size_kib\":%zu},"
                   "{\"base_host_virt_addr\":%lu,\"size\":%zu,\"offset\":%zu,\"page_size\":%zu,\"page_size_kib\":%zu}]",
                   (unsigned long)regions[0], size, page, page, (unsigned long)regions[1], size, size, page, page);
  struct iovec iov = {json, (size_t)n};
  union {
    struct cmsghdr align;
    char bytes[CMSG_SPACE(sizeof(int))];
  } control;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes, .msg_controllen = sizeof control.bytes};
  struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &uffd, sizeof uffd);
  if (sendmsg(sock, &msg, 0) != n) die("sendmsg");
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: foreign-vmm SOCKET\n");
    return 2;
  }
  page = (size_t)sysconf(_SC_PAGESIZE);
  size_t size = REGION_PAGES * page;
  char* base = mmap(NULL, 2 * size + GAP_PAGES * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) die("mmap");
  if (munmap(base + size, GAP_PAGES * page) != 0) die("munmap");
  regions[0] = base;
  regions[1] = base + size + GAP_PAGES * page;

  int uffd = openUserfaultfd();
  if (uffd < 0) die("userfaultfd");
  struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_EVENT_REMOVE};
  if (ioctl(uffd, UFFDIO_API, &api) != 0) die("UFFDIO_API");
  for (int r = 0; r < 2; r++) {
    struct uffdio_register reg = {.range = {(uintptr_t)regions[r], size}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) die("UFFDIO_REGISTER");
  }
  handOver(argv[1], uffd);

  char line[128];
  while (fgets(line, sizeof line, stdin)) {
    struct command c = {0};
    if (sscanf(line, "%15s %d %d", c.verb, &c.region, &c.page) < 1) continue;
    if (strcmp(c.verb, "exit") == 0) return 0;
    if (strcmp(c.verb, "check") != 0 && strcmp(c.verb, "zero") != 0 && strcmp(c.verb, "dontneed") != 0) {
      printf("error: unknown command %s\n", c.verb);
    } else if (c.region < 0 || c.region > 1 || c.page < 0 || c.page >= REGION_PAGES) {
      printf("error: no page %d of region %d\n", c.page, c.region);
    } else {
      pthread_t thread;
      if ((errno = pthread_create(&thread, NULL, vcpu, &c)) != 0) die("pthread_create");
      pthread_join(thread, NULL);
      printf("%s\n", c.answer);
    }
    fflush(stdout);
  }
  return 0;
}
