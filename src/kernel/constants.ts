// Kernel ABI values (include/uapi/linux/userfaultfd.h, asm-generic/mman-common.h), by name.
// Kept here rather than in the addon so that features newer than the build machine's
// headers still have names.

export const FEATURES = {
  PAGEFAULT_FLAG_WP: 1n << 0n,
  EVENT_FORK: 1n << 1n,
  EVENT_REMAP: 1n << 2n,
  EVENT_REMOVE: 1n << 3n,
  MISSING_HUGETLBFS: 1n << 4n,
  MISSING_SHMEM: 1n << 5n,
  EVENT_UNMAP: 1n << 6n,
  SIGBUS: 1n << 7n,
  THREAD_ID: 1n << 8n,
  MINOR_HUGETLBFS: 1n << 9n,
  MINOR_SHMEM: 1n << 10n,
  EXACT_ADDRESS: 1n << 11n,
  WP_HUGETLBFS_SHMEM: 1n << 12n,
  WP_UNPOPULATED: 1n << 13n,
  POISON: 1n << 14n,
  WP_ASYNC: 1n << 15n,
  MOVE: 1n << 16n,
} as const;
export type Feature = keyof typeof FEATURES;

/** What each feature is for, as `postcopy features` prints it. */
export const FEATURE_USES: Record<Feature, string> = {
  PAGEFAULT_FLAG_WP: 'write-protect faults (background snapshot, sync dirty log)',
  EVENT_FORK: 'follow fork() of a registered process',
  EVENT_REMAP: 'follow mremap() of registered ranges',
  EVENT_REMOVE: 'hear of MADV_DONTNEED/REMOVE on registered ranges',
  MISSING_HUGETLBFS: 'MISSING faults on hugetlb memory (2 MiB blocks)',
  MISSING_SHMEM: 'MISSING faults on shared memory (memfd blocks)',
  EVENT_UNMAP: 'hear of munmap() of registered ranges',
  SIGBUS: 'SIGBUS instead of a fault event',
  THREAD_ID: 'the faulting thread id (per-thread blocktime)',
  MINOR_HUGETLBFS: 'MINOR faults on hugetlb memory',
  MINOR_SHMEM: 'MINOR faults on shared memory',
  EXACT_ADDRESS: 'exact fault address, not page-aligned',
  WP_HUGETLBFS_SHMEM: 'write-protect on hugetlb and shared memory',
  WP_UNPOPULATED: 'write-protect pages never touched (snapshot without populating)',
  POISON: 'UFFDIO_POISON',
  WP_ASYNC: 'asynchronous write-protect (PAGEMAP_SCAN dirty log)',
  MOVE: 'UFFDIO_MOVE',
};

/** The Linux release that brought each feature newer than 5.0 (named in "does not grant" errors). */
export const FEATURE_SINCE: Partial<Record<Feature, string>> = {
  PAGEFAULT_FLAG_WP: '5.7',
  MINOR_HUGETLBFS: '5.13',
  MINOR_SHMEM: '5.14',
  EXACT_ADDRESS: '5.18',
  WP_HUGETLBFS_SHMEM: '5.19',
  WP_UNPOPULATED: '6.4',
  POISON: '6.6',
  WP_ASYNC: '6.7',
  MOVE: '6.8',
};

/** ioctl numbers' bit positions in the masks UFFDIO_API and UFFDIO_REGISTER return. */
export const IOCTLS = {
  REGISTER: 0x00,
  UNREGISTER: 0x01,
  WAKE: 0x02,
  COPY: 0x03,
  ZEROPAGE: 0x04,
  MOVE: 0x05,
  WRITEPROTECT: 0x06,
  CONTINUE: 0x07,
  POISON: 0x08,
  API: 0x3f,
} as const;
export type Ioctl = keyof typeof IOCTLS;

export const REGISTER_MODES = { missing: 1, wp: 2, minor: 4 } as const;
export type RegisterMode = keyof typeof REGISTER_MODES;

export const COPY_MODE_DONTWAKE = 1;
export const COPY_MODE_WP = 2;
export const ZEROPAGE_MODE_DONTWAKE = 1;
export const WRITEPROTECT_MODE_WP = 1;
export const WRITEPROTECT_MODE_DONTWAKE = 2;
export const CONTINUE_MODE_DONTWAKE = 1;
export const CONTINUE_MODE_WP = 2;
export const POISON_MODE_DONTWAKE = 1;
export const MOVE_MODE_DONTWAKE = 1;
export const MOVE_MODE_ALLOW_SRC_HOLES = 2;

export const EVENTS = { pagefault: 0x12, fork: 0x13, remap: 0x14, remove: 0x15, unmap: 0x16 } as const;
export const PAGEFAULT_FLAG_WRITE = 1;
export const PAGEFAULT_FLAG_WP = 2;
export const PAGEFAULT_FLAG_MINOR = 4;

export const MADVISE = {
  dontneed: 4,
  remove: 9,
  hugepage: 14,
  nohugepage: 15,
  populateRead: 22,
  populateWrite: 23,
} as const;
export type Advice = keyof typeof MADVISE;

export function maskToNames<K extends string>(mask: bigint, table: Record<K, number | bigint>): K[] {
  return (Object.keys(table) as K[]).filter((name) => {
    const v = table[name];
    const bit = typeof v === 'bigint' ? v : 1n << BigInt(v);
    return (mask & bit) !== 0n;
  });
}
