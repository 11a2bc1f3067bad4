// The pagemap, two ways. PAGEMAP_SCAN (Linux 6.7+): with a userfaultfd opened with WP_ASYNC and the range
// write-protected, the kernel records writes without faulting, and one ioctl both reports
// the written pages and write-protects them again. This is the cheapest dirty log there is.
// /proc/self/pagemap read entry by entry (any kernel): soft-dirty bits, unpopulated pages.
import { closeSync, openSync, readSync, writeFileSync } from 'node:fs';
import { addon } from './addon.js';
import { hex } from '../base/index.js';
import { argumentError, errnoError } from './errors.js';

export const PM_SCAN_WP_MATCHING = 1n;
export const PM_SCAN_CHECK_WPASYNC = 2n;
export const PAGE_IS_WRITTEN = 2n;

// struct pm_scan_arg field indices
const FLAGS = 1, START = 2, END = 3, WALK_END = 4, MAX_PAGES = 7, CAT_INVERTED = 8, CAT_MASK = 9, CAT_ANYOF = 10, RETURN_MASK = 11;
const REGION_WORDS = 3;

export class PagemapScanner {
  private fd: number;
  private readonly arg = new BigUint64Array(12);
  private readonly vec: BigUint64Array;
  private readonly vecHalves: Uint32Array;

  /** `capacity`: regions returned per ioctl; a scan of more regions takes several calls. */
  constructor(capacity = 1024) {
    this.fd = openSync('/proc/self/pagemap', 'r');
    this.vec = new BigUint64Array(capacity * REGION_WORDS);
    this.vecHalves = new Uint32Array(this.vec.buffer);
  }

  /**
   * Calls `onRange(start, end)` for every run of pages written since they were last
   * write-protected, in [start, end), and (with `reprotect`) write-protects them again in
   * the same walk. Returns the number of bytes reported.
   */
  scanWritten(start: bigint | number, end: bigint | number, onRange: (start: number, end: number) => void,
              options: { reprotect?: boolean } = {}): number {
    const invalid = argumentError('start', start, true) ?? argumentError('end', end, true);
    if (invalid) throw invalid;
    const arg = this.arg;
    let from = BigInt(start);
    const to = BigInt(end);
    let bytes = 0;
    while (from < to) {
      arg.fill(0n);
      arg[FLAGS] = options.reprotect === false ? 0n : PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
      arg[START] = from;
      arg[END] = to;
      arg[MAX_PAGES] = 0n;
      arg[CAT_INVERTED] = 0n;
      arg[CAT_MASK] = PAGE_IS_WRITTEN;
      arg[CAT_ANYOF] = 0n;
      arg[RETURN_MASK] = PAGE_IS_WRITTEN;
      const regions = addon.pagemapScan(this.fd, arg, this.vec);
      if (regions < 0) throw errnoError(regions, 'ioctl(PAGEMAP_SCAN)', `${hex(from)}..${hex(to)}`);
      // read as little-endian 32-bit halves: a BigInt per word costs an allocation, and a pause can report 20k regions
      const halves = this.vecHalves;
      for (let i = 0; i < regions; i++) {
        const at = i * REGION_WORDS * 2;
        const s = halves[at] + halves[at + 1] * 2 ** 32;
        const e = halves[at + 2] + halves[at + 3] * 2 ** 32;
        bytes += e - s;
        onRange(s, e);
      }
      const walkEnd = arg[WALK_END];
      if (walkEnd <= from) break;
      from = walkEnd;
    }
    return bytes;
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

/** /proc/PID/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst). */
export const PM_SOFT_DIRTY = 1n << 55n;
export const PM_SWAP = 1n << 62n;
export const PM_PRESENT = 1n << 63n;
const PAGEMAP_ENTRY_BYTES = 8;
/** The same bits in an entry's high 32-bit word (entries are little-endian u64). */
const SOFT_DIRTY_HIGH = Number(PM_SOFT_DIRTY >> 32n);
const PRESENT_OR_SWAP_HIGH = Number((PM_PRESENT | PM_SWAP) >> 32n) | 0;

/**
 * /proc/self/pagemap read entry by entry, on any kernel:
 * - soft-dirty bits (CONFIG_MEM_SOFT_DIRTY, since 3.11): `clearSoftDirty()` clears them and
 *   write-protects every page table entry of the whole process (clear_refs is per process, not
 *   per range); the first write to a page afterwards sets its bit. Pages never touched have no
 *   entry and read as clean. Not on hugetlb.
 * - unpopulated pages: neither present nor swapped. In private memory such a page has never
 *   been written (or was discarded), so it reads as zeros, and reading it would fault it in.
 */
export class PagemapReader {
  private fd: number;
  private readonly words: Uint32Array;

  /** `capacity`: pagemap entries read per pread. */
  constructor(capacity = 8192) {
    this.fd = openSync('/proc/self/pagemap', 'r');
    this.words = new Uint32Array(capacity * 2);
  }

  /** Clears every soft-dirty bit of this process (`echo 4 > /proc/self/clear_refs`). */
  static clearSoftDirty(): void {
    writeFileSync('/proc/self/clear_refs', '4');
  }

  /**
   * Calls `onRange(start, end)` for every run of 4 KiB pages in [start, end) whose soft-dirty
   * bit is set (start and end page-aligned). Returns the number of bytes reported.
   */
  scanSoftDirty(start: number, end: number, onRange: (start: number, end: number) => void): number {
    return this.scan('scanSoftDirty', start, end, (high) => (high & SOFT_DIRTY_HIGH) !== 0, onRange);
  }

  /**
   * Calls `onRange(start, end)` for every run of pages in [start, end) that are neither present
   * nor swapped out (start and end page-aligned). Returns the number of bytes reported. Only
   * in private memory does that prove a page reads as zeros: a shared page can sit in the page
   * cache without being mapped here.
   */
  scanUnpopulated(start: number, end: number, onRange: (start: number, end: number) => void): number {
    return this.scan('scanUnpopulated', start, end, (high) => (high & PRESENT_OR_SWAP_HIGH) === 0, onRange);
  }

  private scan(what: string, start: number, end: number, matches: (high: number) => boolean, onRange: (start: number, end: number) => void): number {
    const page = addon.pageSize;
    if (start % page || end % page || end < start) throw new RangeError(`${what}: ${hex(start)}..${hex(end)} is not a page-aligned range`);
    const bytes = new Uint8Array(this.words.buffer);
    let reported = 0;
    let runStart = -1;
    for (let at = start; at < end; ) {
      const count = Math.min(this.words.length / 2, (end - at) / page);
      const read = readSync(this.fd, bytes, 0, count * PAGEMAP_ENTRY_BYTES, (at / page) * PAGEMAP_ENTRY_BYTES);
      if (read !== count * PAGEMAP_ENTRY_BYTES) throw new Error(`/proc/self/pagemap: read ${read} of ${count * PAGEMAP_ENTRY_BYTES} bytes at ${hex(at)}`);
      for (let i = 0; i < count; i++, at += page) {
        const match = matches(this.words[2 * i + 1]);
        if (match && runStart < 0) runStart = at;
        else if (!match && runStart >= 0) {
          onRange(runStart, at);
          reported += at - runStart;
          runStart = -1;
        }
      }
    }
    if (runStart >= 0) {
      onRange(runStart, end);
      reported += end - runStart;
    }
    return reported;
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}
