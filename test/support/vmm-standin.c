/* vmm-standin: a VMM restoring a snapshot with a UFFD memory backend, step for step as
 * Firecracker does it (the project's ../shared/reference/firecracker-uffd.md), plus a checker of
 * what the page handler places. For the tests of `postcopy serve`; gcc -O2 -pthread, no deps.
 *
 * Steps: map the regions (anonymous, private, noreserve; hugetlb for 2M pages) with unmapped
 * gaps between them; open a userfaultfd (/dev/userfaultfd, else the syscall; non-blocking,
 * close-on-exec, not user-mode-only) with UFFD_FEATURE_EVENT_REMOVE; register every region
 * MISSING; print the "mapped" line; connect to the handler's socket; send the region JSON and
 * the uffd in ONE sendmsg; keep the socket open, silent, until exit. Then vCPU threads touch
 * pages and compare every byte with the memory file (which is never copied into guest memory);
 * a host thread removes pages (balloon, remove storm) with MADV_DONTNEED: no vCPU reads a page
 * while it is removed; afterwards the vCPUs, and a final pass over every removed page, must read
 * zeros there (so give removed pages non-zero file data, or a stale handler would pass).
 *
 *   --socket PATH            the handler's Unix stream socket (must be listening)
 *   --mem-file PATH          raw guest memory, regions at their offsets: only read to compare
 *   --region SIZE[:PAGE]     repeatable, in order; PAGE 4K (default) or 2M; K/M/G suffixes
 *   --fields v1.6|v1.7|v1.12 region JSON generation (default v1.12)
 *   --bad KIND               a faulty handshake: json (malformed), unaligned (region 0 declared
 *                            half a page in, same end), overlap (region 1 declared over the end
 *                            of region 0; needs 2 regions), pagesize (page size 8192 on region 0;
 *                            not with v1.6), nofd (no SCM_RIGHTS)
 *   --extra-fd               send a memfd as a second descriptor, as forks do
 *   --threads N              vCPU threads (default 2); thread t owns the pages i with i % N == t
 *   --pattern P              sequential (default) or random, within the thread's own pages
 *   --stride N               sequential: every Nth of the thread's pages (default 1; a bench
 *                            measures faults only, past a handler's runs of pages)
 *   --touches N              touches per thread (default: as many as it owns pages: one sweep)
 *   --seconds S              touch for S seconds instead
 *   --write                  each touch also writes a marker byte, re-reads it, puts it back
 *   --seed N                 for --pattern random and --remove-storm (default 1)
 *   --balloon-inflate R:START:LEN  repeatable: MADV_DONTNEED on region R's [START, START+LEN)
 *   --balloon-after-ms MS    when the host thread starts removing (default 0)
 *   --remove-storm N         N MADV_DONTNEED of one random page each of region 0
 *   --timeout S              give up S seconds after start (default 30), naming who waits where
 *
 * stdout: {"event":"mapped",...} once mapped, then exactly one result line at exit:
 *   {"ok","pid","regions","touches","first_touches","zeros_checked","removed_pages",
 *    "mismatch_count","mismatches"(first 10),"waiting","error","touch_us":{"p50","p99","max"}}
 * touch_us: latency of the first touch of pages never touched before (null when none).
 * Exit: 0 ok, 1 bytes differ, 2 usage, 3 a system call failed (or the memory file is short),
 * 4 connect refused or socket missing (Firecracker's message), 5 timeout. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26)
#endif

enum { EXIT_PASS, EXIT_MISMATCH, EXIT_USAGE, EXIT_SYSCALL, EXIT_CONNECT, EXIT_TIMEOUT };
enum { MAX_REGIONS = 16, MAX_BALLOONS = 16, MAX_THREADS = 64, MAX_MISMATCHES = 10, HANDSHAKE_MAX = 4096 };
_Static_assert(MAX_REGIONS * 180 + 2 < HANDSHAKE_MAX, "the region JSON (at most 180 bytes a region) fits");
#define HUGE (2UL << 20)
#define GAP HUGE /* unmapped (PROT_NONE) space before, between and after the regions */

/* Per page, one byte, changed only by the thread holding BUSY: no vCPU reads a page while
 * the host removes it, so what a page must hold is always known. */
enum { P_BUSY = 1, P_ZERO = 2, P_TOUCHED = 4 };

struct region { uint8_t *base; size_t size, page, offset, first; };

struct toucher { /* a vCPU thread, or the host thread (the last one) */
  pthread_t tid;
  char name[16];
  int index, finished;
  _Atomic uintptr_t at;         /* the address it is touching or removing, 0 if none */
  const char *_Atomic doing;    /* what it is doing there */
  _Atomic uint64_t touches, first, zeros;
  uint64_t *lat, rng;           /* first-touch latencies (ns) */
  size_t nlat;
  uint8_t *buf;                 /* a page of the memory file */
};

static struct {
  const char *socket, *mem_file, *fields, *bad, *pattern;
  int threads, extra_fd, write, timeout_s;
  long touches, stride;
  double seconds;
  long after_ms, storm;
  uint64_t seed;
  struct balloon { int region; size_t start, length; } balloon[MAX_BALLOONS];
  int nballoon;

  struct region r[MAX_REGIONS];
  int nr, mapped;
  size_t npages, max_page;
  _Atomic uint8_t *state;
  uint8_t *zeros;
  int mem_fd;
  struct toucher *t;
  uint64_t start_ns, run_ns; /* the process's start, the vCPUs' start */

  pthread_mutex_t lock;         /* guards what follows, and `finished` */
  pthread_cond_t cond;
  int finished, vcpus_finished;
  uint64_t removed, mismatch_count;
  char mismatches[MAX_MISMATCHES][224];
  char error[4096];
} g = { .stride = 1, .fields = "v1.12", .pattern = "sequential", .threads = 2, .touches = -1, .timeout_s = 30,
        .seed = 1, .lock = PTHREAD_MUTEX_INITIALIZER };

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void json_string(const char *s) {
  putchar('"');
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') printf("\\%c", *s);
    else if ((unsigned char)*s < 0x20) printf("\\u%04x", *s);
    else putchar(*s);
  }
  putchar('"');
}

static void regions_json(void) {
  putchar('[');
  for (int i = 0; g.mapped && i < g.nr; i++)
    printf("%s{\"base\":%lu,\"size\":%zu,\"page_size\":%zu,\"offset\":%zu}", i ? "," : "",
           (unsigned long)(uintptr_t)g.r[i].base, g.r[i].size, g.r[i].page, g.r[i].offset);
  putchar(']');
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

/* Nearest-rank percentiles of the finished threads' first-touch latencies, in µs. */
static void latency_json(void) {
  size_t n = 0, k = 0;
  for (int i = 0; g.t && i <= g.threads; i++) if (g.t[i].finished) n += g.t[i].nlat;
  uint64_t *all = n ? malloc(n * sizeof *all) : NULL;
  if (!all) { printf("{\"p50\":null,\"p99\":null,\"max\":null}"); return; }
  for (int i = 0; i <= g.threads; i++)
    if (g.t[i].finished) { memcpy(all + k, g.t[i].lat, g.t[i].nlat * sizeof *all); k += g.t[i].nlat; }
  qsort(all, n, sizeof *all, cmp_u64);
  printf("{\"p50\":%.1f,\"p99\":%.1f,\"max\":%.1f}", all[(n * 50 + 99) / 100 - 1] / 1e3,
         all[(n * 99 + 99) / 100 - 1] / 1e3, all[n - 1] / 1e3);
  free(all);
}

/* Which thread waits where: what a timeout reports. Called with g.lock held. */
static void waiting_json(char *why, size_t cap) {
  putchar('[');
  for (int i = 0, n = 0; g.t && i <= g.threads; i++) {
    struct toucher *t = &g.t[i];
    if (t->finished) continue;
    uintptr_t at = atomic_load(&t->at);
    const char *doing = atomic_load(&t->doing);
    printf("%s{\"thread\":\"%s\",\"doing\":\"%s\",\"address\":%lu", n++ ? "," : "", t->name, doing, (unsigned long)at);
    size_t used = strlen(why);
    int region = -1;
    for (int j = 0; j < g.nr; j++)
      if (at >= (uintptr_t)g.r[j].base && at < (uintptr_t)g.r[j].base + g.r[j].size) region = j;
    if (region >= 0) {
      size_t page = (at - (uintptr_t)g.r[region].base) / g.r[region].page;
      printf(",\"region\":%d,\"page\":%zu", region, page);
      snprintf(why + used, cap - used, "%s%s waits on %#lx (region %d page %zu, %s)", n > 1 ? "; " : ": ",
               t->name, (unsigned long)at, region, page, doing);
    } else {
      snprintf(why + used, cap - used, "%s%s %s", n > 1 ? "; " : ": ", t->name, doing);
    }
    putchar('}');
  }
  putchar(']');
}

static void print_result(int code, const char *waiting_why) {
  uint64_t touches = 0, first = 0, zeros = 0;
  for (int i = 0; g.t && i <= g.threads; i++) {
    touches += g.t[i].touches;
    first += g.t[i].first;
    zeros += g.t[i].zeros;
  }
  printf("{\"ok\":%s,\"pid\":%d,\"regions\":", code == EXIT_PASS ? "true" : "false", (int)getpid());
  regions_json();
  printf(",\"touches\":%lu,\"first_touches\":%lu,\"zeros_checked\":%lu,\"removed_pages\":%lu,"
         "\"mismatch_count\":%lu,\"mismatches\":[", (unsigned long)touches, (unsigned long)first,
         (unsigned long)zeros, (unsigned long)g.removed, (unsigned long)g.mismatch_count);
  for (uint64_t i = 0; i < g.mismatch_count && i < MAX_MISMATCHES; i++) printf("%s%s", i ? "," : "", g.mismatches[i]);
  printf("],\"waiting\":");
  if (waiting_why) {
    snprintf(g.error, sizeof g.error, "%s", waiting_why);
    waiting_json(g.error, sizeof g.error);
  } else {
    printf("[]");
  }
  printf(",\"error\":");
  if (g.error[0]) json_string(g.error);
  else printf("null");
  printf(",\"touch_us\":");
  latency_json();
  printf("}\n");
  if (g.error[0]) fprintf(stderr, "vmm-standin: %s\n", g.error);
  if (g.mismatch_count) fprintf(stderr, "vmm-standin: %lu wrong pages, the first: %s\n", (unsigned long)g.mismatch_count, g.mismatches[0]);
  fflush(stdout);
}

/* Before the threads run: say why on stderr and in the result line, and exit. */
static void die(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g.error, sizeof g.error, fmt, ap);
  va_end(ap);
  print_result(code, NULL);
  exit(code);
}

#define sys_die(what, ...) die(EXIT_SYSCALL, what ": %s", ##__VA_ARGS__, strerror(errno))

/* From a thread: keep the first error, carry on. */
static void fail(const char *fmt, ...) {
  pthread_mutex_lock(&g.lock);
  if (!g.error[0]) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g.error, sizeof g.error, fmt, ap);
    va_end(ap);
  }
  pthread_mutex_unlock(&g.lock);
}

static void mismatch(int region, size_t page, size_t off, uint8_t *p, const char *want, int expected) {
  pthread_mutex_lock(&g.lock);
  if (g.mismatch_count < MAX_MISMATCHES)
    snprintf(g.mismatches[g.mismatch_count], sizeof g.mismatches[0],
             "{\"region\":%d,\"page\":%zu,\"offset\":%zu,\"address\":%lu,\"want\":\"%s\",\"expected\":%d,\"got\":%d}",
             region, page, off, (unsigned long)(uintptr_t)(p + off), want, expected, p[off]);
  g.mismatch_count++;
  pthread_mutex_unlock(&g.lock);
}

/* ---- options --------------------------------------------------------------------------- */

static size_t parse_size(const char *s, const char **end) {
  char *e;
  errno = 0;
  unsigned long long v = strtoull(s, &e, 0);
  if (e == s || errno) die(EXIT_USAGE, "not a size: %s", s);
  int shift = *e == 'K' || *e == 'k' ? 10 : *e == 'M' || *e == 'm' ? 20 : *e == 'G' || *e == 'g' ? 30 : 0;
  if (shift) e++;
  if (v > (SIZE_MAX >> shift)) die(EXIT_USAGE, "too large: %s", s);
  *end = e;
  return (size_t)v << shift;
}

static size_t parse_whole_size(const char *s) {
  const char *e;
  size_t v = parse_size(s, &e);
  if (*e) die(EXIT_USAGE, "not a size: %s", s);
  return v;
}

static long parse_long(const char *s, long min, long max) {
  char *e;
  errno = 0;
  long v = strtol(s, &e, 0);
  if (e == s || *e || errno || v < min || v > max) die(EXIT_USAGE, "not a number in [%ld, %ld]: %s", min, max, s);
  return v;
}

static double parse_seconds(const char *s) {
  char *e;
  double v = strtod(s, &e);
  if (e == s || *e || !(v > 0 && v <= 3600)) die(EXIT_USAGE, "not a number of seconds in (0, 3600]: %s", s);
  return v;
}

static void add_region(const char *s) {
  if (g.nr == MAX_REGIONS) die(EXIT_USAGE, "at most %d regions", MAX_REGIONS);
  const char *e;
  struct region *r = &g.r[g.nr];
  r->size = parse_size(s, &e);
  r->page = *e == ':' ? parse_whole_size(e + 1) : *e ? 0 : 4096;
  if (r->page != 4096 && r->page != HUGE) die(EXIT_USAGE, "--region %s: the page size is 4K or 2M", s);
  if (!r->size || r->size % r->page) die(EXIT_USAGE, "--region %s: the size is a positive multiple of the page size", s);
  r->offset = g.nr ? g.r[g.nr - 1].offset + g.r[g.nr - 1].size : 0;
  r->first = g.npages;
  g.npages += r->size / r->page;
  if (r->page > g.max_page) g.max_page = r->page;
  g.nr++;
}

static void add_balloon(const char *s) {
  if (g.nballoon == MAX_BALLOONS) die(EXIT_USAGE, "at most %d balloon ranges", MAX_BALLOONS);
  const char *e;
  char *colon;
  long region = strtol(s, &colon, 10);
  if (colon == s || *colon != ':' || region < 0 || region >= g.nr) die(EXIT_USAGE, "--balloon-inflate %s: REGION:START:LENGTH after the --region options", s);
  size_t start = parse_size(colon + 1, &e);
  if (*e != ':') die(EXIT_USAGE, "--balloon-inflate %s: REGION:START:LENGTH", s);
  size_t length = parse_whole_size(e + 1), page = g.r[region].page;
  if (!length || start % page || length % page || start > g.r[region].size || length > g.r[region].size - start)
    die(EXIT_USAGE, "--balloon-inflate %s: pages of region %ld", s, region);
  g.balloon[g.nballoon++] = (struct balloon){ (int)region, start, length };
}

static void parse_args(int argc, char **argv) {
  static const struct option opts[] = {
    { "socket", 1, 0, 's' }, { "mem-file", 1, 0, 'm' }, { "region", 1, 0, 'r' }, { "fields", 1, 0, 'f' },
    { "bad", 1, 0, 'b' }, { "extra-fd", 0, 0, 'x' }, { "threads", 1, 0, 'n' }, { "pattern", 1, 0, 'p' }, { "stride", 1, 0, 'D' },
    { "touches", 1, 0, 't' }, { "seconds", 1, 0, 'S' }, { "write", 0, 0, 'w' }, { "seed", 1, 0, 'e' },
    { "balloon-inflate", 1, 0, 'B' }, { "balloon-after-ms", 1, 0, 'a' }, { "remove-storm", 1, 0, 'R' },
    { "timeout", 1, 0, 'T' }, { 0, 0, 0, 0 } };
  for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
    switch (c) {
    case 's': g.socket = optarg; break;
    case 'm': g.mem_file = optarg; break;
    case 'r': add_region(optarg); break;
    case 'f': g.fields = optarg; break;
    case 'b': g.bad = optarg; break;
    case 'x': g.extra_fd = 1; break;
    case 'n': g.threads = (int)parse_long(optarg, 1, MAX_THREADS); break;
    case 'p': g.pattern = optarg; break;
    case 'D': g.stride = atol(optarg); break;
    case 't': g.touches = parse_long(optarg, 0, 1L << 40); break;
    case 'S': g.seconds = parse_seconds(optarg); break;
    case 'w': g.write = 1; break;
    case 'e': g.seed = (uint64_t)parse_long(optarg, 0, 1L << 40); break;
    case 'B': add_balloon(optarg); break;
    case 'a': g.after_ms = parse_long(optarg, 0, 3600000); break;
    case 'R': g.storm = parse_long(optarg, 0, 1L << 30); break;
    case 'T': g.timeout_s = (int)parse_long(optarg, 1, 86400); break;
    default: die(EXIT_USAGE, "unknown option (see the header of vmm-standin.c)");
    }
  }
  if (optind < argc) die(EXIT_USAGE, "unexpected argument: %s", argv[optind]);
  if (!g.socket || !g.mem_file || !g.nr) die(EXIT_USAGE, "--socket, --mem-file and --region are required");
  if (strcmp(g.fields, "v1.6") && strcmp(g.fields, "v1.7") && strcmp(g.fields, "v1.12")) die(EXIT_USAGE, "--fields v1.6|v1.7|v1.12");
  if (strcmp(g.pattern, "sequential") && strcmp(g.pattern, "random")) die(EXIT_USAGE, "--pattern sequential|random");
  if (g.stride < 1) die(EXIT_USAGE, "--stride N: N >= 1");
  const char *kinds[] = { "json", "unaligned", "overlap", "pagesize", "nofd" };
  int known = !g.bad;
  for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) known |= g.bad && !strcmp(g.bad, kinds[i]);
  if (!known) die(EXIT_USAGE, "--bad json|unaligned|overlap|pagesize|nofd");
  if (g.bad && !strcmp(g.bad, "overlap") && g.nr < 2) die(EXIT_USAGE, "--bad overlap needs two regions");
  if (g.bad && !strcmp(g.bad, "pagesize") && !strcmp(g.fields, "v1.6")) die(EXIT_USAGE, "--bad pagesize: v1.6 sends no page size");
}

/* ---- the restore, as Firecracker does it ------------------------------------------------ */

static void map_regions(void) {
  size_t span = GAP;
  for (int i = 0; i < g.nr; i++) span += (g.r[i].size + HUGE - 1) / HUGE * HUGE + GAP;
  /* Reserve the whole span PROT_NONE, then map each region inside it: what lies between
   * regions is no guest memory (touching it faults SIGSEGV, never the handler). */
  uint8_t *reserved = mmap(NULL, span + HUGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (reserved == MAP_FAILED) sys_die("mmap (reserve %zu bytes)", span + HUGE);
  uint8_t *at = (uint8_t *)(((uintptr_t)reserved + HUGE - 1) / HUGE * HUGE) + GAP;
  for (int i = 0; i < g.nr; i++) {
    struct region *r = &g.r[i];
    int huge = r->page == HUGE ? MAP_HUGETLB | MAP_HUGE_2MB : 0;
    r->base = mmap(at, r->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED | huge, -1, 0);
    if (r->base == MAP_FAILED)
      sys_die("mmap region %d (%zu bytes%s)", i, r->size, huge ? ", hugetlb: reserve huge pages in /proc/sys/vm/nr_hugepages" : "");
    at += (r->size + HUGE - 1) / HUGE * HUGE + GAP;
  }
  g.mapped = 1;
}

static int open_uffd(void) {
  int uffd, dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev >= 0) {
    uffd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0) sys_die("ioctl(/dev/userfaultfd, USERFAULTFD_IOC_NEW)");
    close(dev);
  } else {
    uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK); /* not UFFD_USER_MODE_ONLY */
    if (uffd < 0) sys_die("userfaultfd (and open /dev/userfaultfd failed too)");
  }
  struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_EVENT_REMOVE };
  if (ioctl(uffd, UFFDIO_API, &api)) {
    if (errno == EINVAL) die(EXIT_SYSCALL, "ioctl(UFFDIO_API): the kernel lacks UFFD_FEATURE_EVENT_REMOVE");
    sys_die("ioctl(UFFDIO_API)");
  }
  if (!(api.features & UFFD_FEATURE_EVENT_REMOVE)) die(EXIT_SYSCALL, "ioctl(UFFDIO_API): the kernel lacks UFFD_FEATURE_EVENT_REMOVE");
  for (int i = 0; i < g.nr; i++) {
    struct uffdio_register reg = { .range = { (uintptr_t)g.r[i].base, g.r[i].size }, .mode = UFFDIO_REGISTER_MODE_MISSING };
    if (ioctl(uffd, UFFDIO_REGISTER, &reg)) sys_die("ioctl(UFFDIO_REGISTER) region %d", i);
  }
  return uffd;
}

/* The region array as the chosen Firecracker generation writes it, with the --bad fault. */
static size_t handshake_json(char *out, size_t cap) { /* cap: HANDSHAKE_MAX */
  const char *bad = g.bad ? g.bad : "";
  if (!strcmp(bad, "json"))
    return (size_t)snprintf(out, cap, "[{\"base_host_virt_addr\":%lu,\"size\":", (unsigned long)(uintptr_t)g.r[0].base);
  size_t n = (size_t)snprintf(out, cap, "[");
  for (int i = 0; i < g.nr; i++) {
    uintptr_t base = (uintptr_t)g.r[i].base;
    size_t size = g.r[i].size, page = g.r[i].page;
    if (i == 0 && !strcmp(bad, "unaligned")) { /* half a page in, same end */
      base += page / 2;
      size -= page / 2;
    }
    if (i == 1 && !strcmp(bad, "overlap")) /* over region 0's last page: regions start 2M-aligned */
      base = ((uintptr_t)g.r[0].base + g.r[0].size - 1) / page * page;
    if (i == 0 && !strcmp(bad, "pagesize")) page = 8192;
    n += (size_t)snprintf(out + n, cap - n, "%s{\"base_host_virt_addr\":%lu,\"size\":%zu,\"offset\":%zu",
                          i ? "," : "", (unsigned long)base, size, g.r[i].offset);
    if (!strcmp(g.fields, "v1.12")) n += (size_t)snprintf(out + n, cap - n, ",\"page_size\":%zu", page);
    if (strcmp(g.fields, "v1.6")) n += (size_t)snprintf(out + n, cap - n, ",\"page_size_kib\":%zu", page);
    n += (size_t)snprintf(out + n, cap - n, "}");
  }
  return n + (size_t)snprintf(out + n, cap - n, "]");
}

/* The socket stays open and silent until exit (as Firecracker since v1.12): never closed here. */
static void connect_and_send(int uffd) {
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  if (strlen(g.socket) >= sizeof addr.sun_path) die(EXIT_USAGE, "--socket: the path is too long for a Unix socket");
  strcpy(addr.sun_path, g.socket);
  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock < 0) sys_die("socket(AF_UNIX)");
  if (connect(sock, (struct sockaddr *)&addr, sizeof addr))
    die(EXIT_CONNECT, "Failed to connect to UDS Unix stream: %s (os error %d)", strerror(errno), errno);

  char body[HANDSHAKE_MAX];
  struct iovec iov = { body, handshake_json(body, sizeof body) };
  int fds[2] = { uffd, -1 }, nfds = 1;
  if (g.extra_fd) {
    fds[nfds++] = memfd_create("guest_mem", MFD_CLOEXEC);
    if (fds[1] < 0) sys_die("memfd_create");
    size_t total = g.r[g.nr - 1].offset + g.r[g.nr - 1].size;
    if (ftruncate(fds[1], (off_t)total)) sys_die("ftruncate(memfd)");
  }
  union { char buf[CMSG_SPACE(sizeof fds)]; struct cmsghdr align; } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
  if (!g.bad || strcmp(g.bad, "nofd")) {
    msg.msg_control = ctl.buf;
    msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(cmsg), fds, nfds * sizeof(int));
  }
  ssize_t sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
  if (sent < 0) sys_die("sendmsg (the handshake)");
  if ((size_t)sent != iov.iov_len) die(EXIT_SYSCALL, "sendmsg (the handshake): sent %zd of %zu bytes", sent, iov.iov_len);
  if (g.extra_fd) close(fds[1]);
}

/* ---- the guest ------------------------------------------------------------------------- */

static struct region *region_of(size_t gp, size_t *page) {
  int i = g.nr - 1;
  while (gp < g.r[i].first) i--;
  *page = gp - g.r[i].first;
  return &g.r[i];
}

static uint64_t next_random(uint64_t *x) { /* xorshift64* */
  *x ^= *x >> 12, *x ^= *x << 25, *x ^= *x >> 27;
  return *x * 0x2545F4914F6CDD1DULL;
}

/* Compare every byte of the page with what it must hold: the file's bytes, or zeros once removed. */
static void check_page(struct toucher *t, struct region *r, size_t page, int zero) {
  uint8_t *p = r->base + page * r->page;
  const uint8_t *want = g.zeros;
  if (zero) {
    t->zeros++;
  } else {
    ssize_t got = pread(g.mem_fd, t->buf, r->page, (off_t)(r->offset + page * r->page));
    if (got != (ssize_t)r->page) {
      if (got < 0) fail("pread %s: %s", g.mem_file, strerror(errno));
      else fail("the memory file ends before region %d page %zu", (int)(r - g.r), page);
      return;
    }
    want = t->buf;
  }
  if (!memcmp(p, want, r->page)) {
    if (!g.write) return;
    /* a write lands, reads back, and is put back (the page keeps its known content) */
    size_t off = (page * 2654435761u) % r->page;
    volatile uint8_t *v = p + off;
    *v = want[off] ^ 0xA5;
    if (*v != (want[off] ^ 0xA5)) mismatch((int)(r - g.r), page, off, p, "marker", want[off] ^ 0xA5);
    *v = want[off];
    return;
  }
  size_t off = 0;
  while (p[off] == want[off]) off++;
  mismatch((int)(r - g.r), page, off, p, zero ? "zeros" : "file", want[off]);
}

/* One guest access to global page gp; 0 if another thread holds the page (then skipped). */
static int touch(struct toucher *t, size_t gp) {
  uint8_t old = atomic_load(&g.state[gp]);
  if ((old & P_BUSY) || !atomic_compare_exchange_strong(&g.state[gp], &old, old | P_BUSY)) return 0;
  size_t page;
  struct region *r = region_of(gp, &page);
  volatile uint8_t *p = r->base + page * r->page;
  atomic_store(&t->doing, "touch");
  atomic_store(&t->at, (uintptr_t)p);
  uint64_t t0 = now_ns();
  (void)*p; /* the fault: the thread sleeps here until the handler has placed the page */
  if (!(old & P_TOUCHED)) {
    t->lat[t->nlat++] = now_ns() - t0;
    t->first++;
  }
  t->touches++;
  check_page(t, r, page, old & P_ZERO);
  atomic_store(&t->at, 0);
  atomic_store(&g.state[gp], old | P_TOUCHED);
  return 1;
}

/* The balloon or virtio-mem giving pages back: madvise(MADV_DONTNEED), as Firecracker does.
 * The pages are held BUSY meanwhile (waiting for vCPUs to leave them, or giving up if !wait). */
static int remove_pages(struct toucher *t, int region, size_t page, size_t n, int wait) {
  struct region *r = &g.r[region];
  uint8_t *p = r->base + page * r->page;
  atomic_store(&t->doing, "waits for a vCPU to leave the page");
  for (size_t i = 0; i < n; i++) {
    _Atomic uint8_t *s = &g.state[r->first + page + i];
    atomic_store(&t->at, (uintptr_t)(p + i * r->page));
    for (uint8_t old = atomic_load(s) & ~P_BUSY; !atomic_compare_exchange_weak(s, &old, old | P_BUSY); old &= ~P_BUSY) {
      if (!wait) return 0; /* n == 1 then: nothing to release */
      nanosleep(&(struct timespec){ 0, 50000 }, NULL);
    }
  }
  atomic_store(&t->doing, "madvise(MADV_DONTNEED)");
  atomic_store(&t->at, (uintptr_t)p);
  if (madvise(p, n * r->page, MADV_DONTNEED)) fail("madvise(MADV_DONTNEED) region %d page %zu: %s", region, page, strerror(errno));
  atomic_store(&t->at, 0);
  for (size_t i = 0; i < n; i++) atomic_store(&g.state[r->first + page + i], (atomic_load(&g.state[r->first + page + i]) | P_ZERO) & ~P_BUSY);
  pthread_mutex_lock(&g.lock);
  g.removed += n;
  pthread_mutex_unlock(&g.lock);
  return 1;
}

static void finish(struct toucher *t, int vcpu) {
  atomic_store(&t->doing, "done");
  pthread_mutex_lock(&g.lock);
  t->finished = 1;
  g.finished++;
  g.vcpus_finished += vcpu;
  pthread_cond_broadcast(&g.cond);
  pthread_mutex_unlock(&g.lock);
}

static void *vcpu_main(void *arg) {
  struct toucher *t = arg;
  size_t owned = g.npages > (size_t)t->index ? (g.npages - (size_t)t->index + (size_t)g.threads - 1) / (size_t)g.threads : 0;
  uint64_t until = g.run_ns + (uint64_t)(g.seconds * 1e9);
  long todo = g.touches >= 0 ? g.touches : (long)owned;
  int shuffled = !strcmp(g.pattern, "random");
  for (long i = 0; owned && (g.seconds ? now_ns() < until : i < todo); i++) {
    size_t k = shuffled ? next_random(&t->rng) % owned : (size_t)i * (size_t)g.stride % owned;
    touch(t, (size_t)t->index + k * (size_t)g.threads);
  }
  finish(t, 1);
  return NULL;
}

/* The host: balloon inflates, the remove storm, then (vCPUs done) every removed page once more. */
static void *host_main(void *arg) {
  struct toucher *t = arg;
  if (g.nballoon || g.storm) {
    atomic_store(&t->doing, "sleeps until --balloon-after-ms");
    nanosleep(&(struct timespec){ g.after_ms / 1000, g.after_ms % 1000 * 1000000 }, NULL);
  }
  for (int i = 0; i < g.nballoon; i++) {
    struct region *r = &g.r[g.balloon[i].region];
    remove_pages(t, g.balloon[i].region, g.balloon[i].start / r->page, g.balloon[i].length / r->page, 1);
  }
  for (long done = 0; done < g.storm;) done += remove_pages(t, 0, next_random(&t->rng) % (g.r[0].size / g.r[0].page), 1, 0);
  atomic_store(&t->doing, "waits for the vCPUs");
  pthread_mutex_lock(&g.lock);
  while (g.vcpus_finished < g.threads) pthread_cond_wait(&g.cond, &g.lock);
  pthread_mutex_unlock(&g.lock);
  for (size_t gp = 0; gp < g.npages; gp++)
    if (atomic_load(&g.state[gp]) & P_ZERO) touch(t, gp);
  finish(t, 0);
  return NULL;
}

/* Wait for every thread until the deadline; 0 when all finished. */
static int wait_threads(void) {
  uint64_t end = g.start_ns + (uint64_t)g.timeout_s * 1000000000u;
  struct timespec deadline = { (time_t)(end / 1000000000u), (long)(end % 1000000000u) };
  int rc = 0;
  pthread_mutex_lock(&g.lock);
  while (g.finished < g.threads + 1 && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&g.cond, &g.lock, &deadline);
  return g.finished < g.threads + 1; /* returns with g.lock held: the threads stay where they are */
}

int main(int argc, char **argv) {
  g.start_ns = now_ns();
  parse_args(argc, argv);
  g.mem_fd = open(g.mem_file, O_RDONLY | O_CLOEXEC);
  if (g.mem_fd < 0) sys_die("open %s", g.mem_file);
  g.state = calloc(g.npages, 1);
  g.zeros = calloc(1, g.max_page);
  g.t = calloc((size_t)g.threads + 1, sizeof *g.t);
  if (!g.state || !g.zeros || !g.t) die(EXIT_SYSCALL, "out of memory");

  map_regions();
  int uffd = open_uffd();
  printf("{\"event\":\"mapped\",\"pid\":%d,\"regions\":", (int)getpid());
  regions_json();
  printf("}\n");
  fflush(stdout);
  connect_and_send(uffd);

  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&g.cond, &attr);
  g.run_ns = now_ns();
  for (int i = 0; i <= g.threads; i++) {
    struct toucher *t = &g.t[i];
    t->index = i;
    t->rng = (g.seed + 1) * 0x9E3779B97F4A7C15ULL + (uint64_t)i;
    if (i < g.threads) snprintf(t->name, sizeof t->name, "vcpu%d", i);
    else strcpy(t->name, "host");
    atomic_store(&t->doing, "starts");
    t->lat = malloc((i < g.threads ? g.npages / (size_t)g.threads + 1 : g.npages) * sizeof *t->lat);
    t->buf = malloc(g.max_page);
    if (!t->lat || !t->buf) die(EXIT_SYSCALL, "out of memory");
    errno = pthread_create(&t->tid, NULL, i < g.threads ? vcpu_main : host_main, t);
    if (errno) sys_die("pthread_create");
  }
  if (wait_threads()) {
    char why[64];
    snprintf(why, sizeof why, "timeout after %d s", g.timeout_s);
    print_result(EXIT_TIMEOUT, why);
    _exit(EXIT_TIMEOUT); /* the threads may sleep in faults for ever: exit_group ends them */
  }
  pthread_mutex_unlock(&g.lock);
  for (int i = 0; i <= g.threads; i++) pthread_join(g.t[i].tid, NULL);
  int code = g.mismatch_count ? EXIT_MISMATCH : g.error[0] ? EXIT_SYSCALL : EXIT_PASS;
  print_result(code, NULL);
  return code;
}
