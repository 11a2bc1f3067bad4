// Atomic placement of runs of whole host pages: the one placement loop of every pager, on the
// main thread (PagePlacer: received bits, waits ended) and on bulk workers (straight into a
// RangePlacer). EEXIST means a page is already there (placed by another channel, or a request
// raced the stream): never data loss; the run goes on after it. EAGAIN (the address space was
// changing: the kernel returns it while non-cooperative events wait to be read) is answered by
// one policy, here: the rest of the run is tried again, within a bound.
import { EAGAIN, EEXIST, HUGE_PAGE_SIZE, PostcopyError, TARGET_PAGE_SIZE, hex } from '../base/index.js';
import { errnoError, type FileMapping, type Userfaultfd } from '../kernel/index.js';
import type { PagerBlock } from './guest-block.js';

/** A run's bytes: a buffer, a read-only file mapping, or null for zeros. */
export type PageBytes = Uint8Array | FileMapping | null;

/** Where a run lands: one registered block, addressed by offsets in it. RangePlacer is one. */
export interface PlacementTarget {
  /** Bytes placed (the whole length), or -errno with `lastCount` bytes placed before it. */
  tryCopy(offset: number, src: Uint8Array, length: number, srcOffset: number): number;
  tryZeropage(offset: number, length: number): number;
  /** Copies from a read-only file mapping (a page server's memory file) instead of a buffer. */
  tryCopyFrom?(offset: number, src: FileMapping, srcOffset: number, length: number): number;
  /** Wakes threads waiting on [offset, offset + length) (after EEXIST: a waiter may still sleep). */
  tryWake?(offset: number, length: number): number;
  readonly lastCount: number;
}

/** A block of this thread's Userfaultfd as a PlacementTarget. */
export function blockTarget(uffd: Userfaultfd, block: PagerBlock): PlacementTarget {
  const base = block.host!.base;
  return {
    tryCopy: (offset, src, length, srcOffset) => uffd.tryCopy(base + offset, src, length, 0, srcOffset),
    tryZeropage: (offset, length) => uffd.tryZeropage(base + offset, length),
    tryCopyFrom: (offset, src, srcOffset, length) => uffd.tryCopyFrom(base + offset, src, srcOffset, length),
    tryWake: (offset, length) => uffd.tryWake(base + offset, length),
    get lastCount() {
      return uffd.lastCount;
    },
  };
}

/** EAGAIN answers in a row before a run is given up (the kernel says EAGAIN only while events wait). */
const MAX_EAGAIN_RETRIES = 1000;
const zeroHugePage = new Uint8Array(HUGE_PAGE_SIZE);

export interface RunPlacerOptions {
  /**
   * What EAGAIN means to this pager. 'retry' (the default): the rest of the run is tried again
   * at once, within a bound (no event of ours is pending: our own address space changed).
   * 'defer': place() returns false, and the caller reads its pending events first (a VMM's
   * REMOVE holds every placement at EAGAIN until it is read) and tries again after.
   */
  onEagain?: 'retry' | 'defer';
}

export class RunPlacer {
  /** Target pages the kernel already had when they were placed (EEXIST). */
  alreadyPresent = 0;

  constructor(private readonly options: RunPlacerOptions = {}) {}

  /**
   * Places [offset, offset + length) of a block (whole host pages of `pageSize`), copied from
   * `src` (a buffer or a file mapping) at `srcOffset`, or zeros when `src` is null (ZEROPAGE on
   * 4 KiB pages; a copy of a zero huge page on hugetlb, which has no ZEROPAGE). Throws naming
   * the block and offset.
   * False when EAGAIN deferred the rest (onEagain 'defer'); what was placed stays placed.
   */
  place(target: PlacementTarget, block: { idstr: string; pageSize: number }, offset: number, src: PageBytes, srcOffset: number, length: number): boolean {
    const { pageSize } = block;
    if (src === null && pageSize !== TARGET_PAGE_SIZE) {
      for (let at = 0; at < length; at += pageSize) if (!this.place(target, block, offset + at, zeroHugePage, 0, pageSize)) return false;
      return true;
    }
    let eagain = 0;
    for (let at = 0; at < length; ) {
      const status = src === null ? target.tryZeropage(offset + at, length - at)
        : src instanceof Uint8Array ? target.tryCopy(offset + at, src, length - at, srcOffset + at)
          : target.tryCopyFrom!(offset + at, src, srcOffset + at, length - at);
      if (status >= 0) return true;
      at += target.lastCount;
      if (status === EEXIST) {
        // the kernel stopped at a page already there (a waiter may still sleep): the run goes on after it
        target.tryWake?.(offset + at, pageSize);
        this.alreadyPresent += pageSize / TARGET_PAGE_SIZE;
        at += pageSize;
        eagain = 0;
      } else if (status === EAGAIN && this.options.onEagain === 'defer') {
        return false;
      } else if (status !== EAGAIN || ++eagain > MAX_EAGAIN_RETRIES) {
        const syscall = src ? 'ioctl(UFFDIO_COPY)' : 'ioctl(UFFDIO_ZEROPAGE)';
        const error = errnoError(status, syscall, `block '${block.idstr}' offset ${hex(offset + at)} length ${length - at}`);
        if (status === EAGAIN) throw new PostcopyError('ERR_POSTCOPY_INTERNAL', `${error.message}: still EAGAIN after ${MAX_EAGAIN_RETRIES} tries`, { cause: error });
        throw error;
      }
    }
    return true;
  }
}

/**
 * RunPlacer for this thread's blocks: after each placement the received bits are set, then
 * `onPlaced` ends the waits of the threads behind the pages.
 */
export class PagePlacer<B extends PagerBlock = PagerBlock> {
  private readonly targets = new Map<B, PlacementTarget>();
  private readonly runs: RunPlacer;

  constructor(
    private readonly uffd: Userfaultfd,
    /** `fresh`: target pages whose received bit this placement set (the others were received already). */
    private readonly onPlaced: (block: B, offset: number, length: number, fresh: number) => void,
    options: RunPlacerOptions = {},
  ) {
    this.runs = new RunPlacer(options);
  }

  /** Target pages that were already there (EEXIST). */
  get alreadyPresent(): number {
    return this.runs.alreadyPresent;
  }

  /**
   * Places whole host pages [offset, offset + length) from `src` (at `srcOffset`), or zeros
   * when `src` is null. False when EAGAIN deferred them (onEagain 'defer').
   */
  place(block: B, offset: number, src: PageBytes, length = block.pageSize, srcOffset = 0): boolean {
    let target = this.targets.get(block);
    if (!target) this.targets.set(block, (target = blockTarget(this.uffd, block)));
    if (!this.runs.place(target, block, offset, src, srcOffset, length)) return false;
    this.onPlaced(block, offset, length, block.markReceived(offset, length));
    return true;
  }
}
