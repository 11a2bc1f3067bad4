/* stall-fuse: a stalled disk, for tests. A FUSE filesystem with one read-only file, "mem",
 * whose bytes are those of a backing file, and whose reads can be held unanswered: a process
 * reading a page of it that is not in the page cache waits in the kernel, as it would on a
 * disk that stopped answering. Speaks the kernel's FUSE protocol on /dev/fuse directly (no
 * libfuse); needs root (mount). gcc -O2, no deps.
 *
 *   stall-fuse MOUNTPOINT BACKING [--stalled]
 *
 * stdin, a command a line: "stall" holds every read from now on; "go" answers the held reads
 * and every later one. End of stdin (the test ended, or died): held reads are answered, the
 * filesystem is unmounted and the program exits.
 * stdout: "mounted" once the file can be opened; "held OFFSET SIZE" for each read it holds.
 * Exit: 0 done, 2 usage, 3 a system call failed (the message says which). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define FILE_NODE 2
#define MAX_READ (128 * 1024)
#define MAX_HELD 4096

static int fuse_fd, backing;
static const char *mountpoint;
static struct stat backing_stat;
static int stalled;
static struct { uint64_t unique, offset; uint32_t size; } held[MAX_HELD];
static int held_count;

static void die(const char *what) {
  fprintf(stderr, "stall-fuse: %s: %s\n", what, strerror(errno));
  umount2(mountpoint, MNT_DETACH);
  exit(3);
}

static void reply(uint64_t unique, int error, const void *data, size_t length) {
  struct fuse_out_header header = { .len = sizeof header + (error ? 0 : length), .error = error, .unique = unique };
  struct iovec iov[2] = { { &header, sizeof header }, { (void *)data, error ? 0 : length } };
  /* ENOENT: the request was interrupted meanwhile (its reader was killed); nothing to do */
  if (writev(fuse_fd, iov, 2) < 0 && errno != ENOENT) die("writing a reply");
}

static void attributes(uint64_t node, struct fuse_attr *attr) {
  memset(attr, 0, sizeof *attr);
  attr->ino = node;
  attr->blksize = 4096;
  if (node == FUSE_ROOT_ID) {
    attr->mode = S_IFDIR | 0755;
    attr->nlink = 2;
  } else {
    attr->mode = S_IFREG | 0444;
    attr->nlink = 1;
    attr->size = backing_stat.st_size;
    attr->blocks = (backing_stat.st_size + 511) / 512;
  }
}

static void answer_read(uint64_t unique, uint64_t offset, uint32_t size) {
  static char data[MAX_READ];
  if (size > MAX_READ) size = MAX_READ;
  ssize_t n = pread(backing, data, size, offset);
  if (n < 0) reply(unique, -errno, NULL, 0);
  else reply(unique, 0, data, n);
}

static void release_held(void) {
  for (int i = 0; i < held_count; i++) answer_read(held[i].unique, held[i].offset, held[i].size);
  held_count = 0;
}

static void handle(const struct fuse_in_header *in, const void *body) {
  switch (in->opcode) {
  case FUSE_INIT: {
    const struct fuse_init_in *init = body;
    struct fuse_init_out out = { .major = FUSE_KERNEL_VERSION, .minor = FUSE_KERNEL_MINOR_VERSION,
                                 .max_readahead = init->max_readahead, .max_write = 4096, .max_pages = MAX_READ / 4096 };
    reply(in->unique, 0, &out, sizeof out);
    return;
  }
  case FUSE_LOOKUP: {
    if (in->nodeid != FUSE_ROOT_ID || strcmp(body, "mem") != 0) return reply(in->unique, -ENOENT, NULL, 0);
    struct fuse_entry_out out = { .nodeid = FILE_NODE, .generation = 1, .entry_valid = 3600, .attr_valid = 1 };
    attributes(FILE_NODE, &out.attr);
    return reply(in->unique, 0, &out, sizeof out);
  }
  case FUSE_GETATTR: {
    struct fuse_attr_out out = { .attr_valid = 1 };
    attributes(in->nodeid, &out.attr);
    return reply(in->unique, 0, &out, sizeof out);
  }
  case FUSE_OPEN:
  case FUSE_OPENDIR: {
    struct fuse_open_out out = { .fh = 1, .open_flags = FOPEN_KEEP_CACHE };
    return reply(in->unique, 0, &out, sizeof out);
  }
  case FUSE_READ: {
    const struct fuse_read_in *read = body;
    if (!stalled) return answer_read(in->unique, read->offset, read->size);
    if (held_count == MAX_HELD) return reply(in->unique, -EIO, NULL, 0);
    held[held_count].unique = in->unique;
    held[held_count].offset = read->offset;
    held[held_count].size = read->size;
    held_count++;
    printf("held %llu %u\n", (unsigned long long)read->offset, read->size);
    fflush(stdout);
    return;
  }
  case FUSE_RELEASE:
  case FUSE_RELEASEDIR:
  case FUSE_FLUSH:
    return reply(in->unique, 0, NULL, 0);
  case FUSE_FORGET:
  case FUSE_BATCH_FORGET:
  case FUSE_INTERRUPT: /* a held read stays held: the disk is stalled, whoever gave up */
    return;
  default: /* LSEEK among them: the kernel then treats the whole file as data */
    return reply(in->unique, -ENOSYS, NULL, 0);
  }
}

/* One command line from stdin; false at its end. */
static int command(void) {
  char line[64];
  if (!fgets(line, sizeof line, stdin)) return 0;
  if (strncmp(line, "stall", 5) == 0) stalled = 1;
  else if (strncmp(line, "go", 2) == 0) {
    stalled = 0;
    release_held();
  }
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 3 || (argc == 4 && strcmp(argv[3], "--stalled") != 0) || argc > 4) {
    fprintf(stderr, "usage: stall-fuse MOUNTPOINT BACKING [--stalled]\n");
    return 2;
  }
  mountpoint = argv[1];
  stalled = argc == 4;
  setvbuf(stdin, NULL, _IONBF, 0);
  if ((backing = open(argv[2], O_RDONLY | O_CLOEXEC)) < 0 || fstat(backing, &backing_stat) < 0) die(argv[2]);
  if ((fuse_fd = open("/dev/fuse", O_RDWR | O_CLOEXEC)) < 0) die("/dev/fuse");
  char options[128];
  snprintf(options, sizeof options, "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other,max_read=%d", fuse_fd, MAX_READ);
  if (mount("stall-fuse", mountpoint, "fuse", MS_NOSUID | MS_NODEV | MS_RDONLY, options) < 0) die("mount");
  static char request[MAX_READ + 64 * 1024];
  for (;;) {
    struct pollfd fds[2] = { { fuse_fd, POLLIN, 0 }, { 0, POLLIN, 0 } };
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (fds[1].revents && !command()) break;
    if (!fds[0].revents) continue;
    ssize_t n = read(fuse_fd, request, sizeof request);
    if (n < 0) {
      if (errno == EINTR || errno == ENOENT || errno == EAGAIN) continue;
      if (errno == ENODEV) return 0; /* unmounted under us */
      die("reading a request");
    }
    const struct fuse_in_header *in = (const void *)request;
    handle(in, request + sizeof *in);
    if (in->opcode == FUSE_INIT) { /* the kernel asks INIT first: from now on the file opens */
      printf("mounted\n");
      fflush(stdout);
    }
    if (in->opcode == FUSE_DESTROY) return 0;
  }
  stalled = 0;
  release_held();
  umount2(mountpoint, MNT_DETACH);
  return 0;
}
