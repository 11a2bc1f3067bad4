// Sizes every layer agrees on.

/** The target page: the unit of the received bitmaps, of page records and of the dirty log. */
export const TARGET_PAGE_SIZE = 4096;
/** The huge page of hugetlb blocks (2 MiB; the only huge size this package maps). */
export const HUGE_PAGE_SIZE = 2 << 20;
export const MiB = 2 ** 20;
