// The source's map of guest memory: per block, which target pages are still to send (dirty),
// which were sent at least once (a page dirtied after it was sent must be discarded on the
// destination), and which are untouched (private memory unpopulated when the dirty log was
// armed and not reported written since: they read as zeros and go unread). And the cursor of
// the background scan. "Done" is a fact of these bitmaps, never of a loop that found nothing.
import { TARGET_PAGE_SIZE } from '../base/index.js';
import { PagemapReader } from '../kernel/index.js';
import { Bitmap } from '../memory/index.js';
import type { GuestBlock } from '../pager/index.js';

export interface Cursor {
  block: number;
  page: number;
}

export class PageMap {
  readonly blocks: readonly GuestBlock[];
  private readonly dirty: Bitmap[];
  private readonly sent: Bitmap[];
  /**
   * Reading an untouched page would fault it in (a host fault per page on a virtual machine)
   * and grow the source's page tables for nothing. Every sync clears the bits it reports.
   */
  private untouched: (Bitmap | undefined)[];
  private readonly index = new Map<GuestBlock, number>();
  cursor: Cursor = { block: 0, page: 0 };

  constructor(blocks: Iterable<GuestBlock>) {
    this.blocks = [...blocks];
    this.blocks.forEach((b, i) => this.index.set(b, i));
    this.dirty = this.blocks.map((b) => {
      const dirty = new Bitmap(b.targetPages);
      dirty.fill();
      return dirty;
    });
    this.sent = this.blocks.map((b) => new Bitmap(b.targetPages));
    this.untouched = this.blocks.map(() => undefined);
  }

  indexOf(block: GuestBlock): number {
    return this.index.get(block)!;
  }

  get totalDirty(): number {
    return this.dirty.reduce((n, bitmap) => n + bitmap.count(), 0);
  }

  get anySent(): boolean {
    return this.sent.some((sent) => !sent.isEmpty());
  }

  isDirty(block: number, page: number): boolean {
    return this.dirty[block].get(page);
  }

  /** Whether no target page of [from, from + count) is dirty. */
  isClean(block: number, from: number, count: number): boolean {
    return this.dirty[block].isRangeClear(from, count);
  }

  /** The first target page at or after `page` that is not dirty (the end of a dirty run). */
  dirtyRunEnd(block: number, page: number): number {
    return this.dirty[block].findNextZero(page);
  }

  isUntouched(block: number, page: number): boolean {
    return this.untouched[block]?.get(page) ?? false;
  }

  /** The dirty log saw a write: the pages go (again), and are no longer untouched. */
  markDirty(block: number, offset: number, length: number): void {
    this.dirty[block].setRange(offset / TARGET_PAGE_SIZE, length / TARGET_PAGE_SIZE);
    this.untouched[block]?.clearRange(offset / TARGET_PAGE_SIZE, length / TARGET_PAGE_SIZE);
  }

  /** Pages [from, to) of a block are on their way: no longer dirty, and sent. */
  take(block: number, from: number, to: number): void {
    this.dirty[block].clearRange(from, to - from);
    this.sent[block].setRange(from, to - from);
  }

  /** The next dirty target page at or after the cursor, wrapping around once. */
  nextDirty(): Cursor | undefined {
    const n = this.blocks.length;
    for (let i = 0; i <= n; i++) {
      const block = (this.cursor.block + i) % n;
      const dirty = this.dirty[block];
      const from = i === 0 ? this.cursor.page : 0;
      const page = from < dirty.size ? dirty.findNextSet(from) : dirty.size;
      if (page < dirty.size) return { block, page };
    }
    return undefined;
  }

  /**
   * Pages dirtied after they were sent are stale on the destination: they are to be discarded
   * there, as [first page, count] runs widened to whole host pages (a huge page is placed whole,
   * so it is sent again whole). A discarded page is dirty and no longer "sent", so a later
   * discard never names it twice.
   */
  takeDiscards(block: number): [number, number][] {
    const ranges = discardRanges(this.sent[block], this.dirty[block], this.blocks[block].pageSize / TARGET_PAGE_SIZE);
    for (const [start, length] of ranges) {
      this.sent[block].clearRange(start, length);
      this.dirty[block].setRange(start, length);
    }
    return ranges;
  }

  /**
   * After a recovery: exactly the pages the destination lacks are dirty (no page arrives that
   * was not sent, so a received page is clean). Returns the pages that were sent and counted
   * clean but did not arrive (in flight when the connection broke): they go again.
   */
  markUnreceivedDirty(block: number, received: Bitmap): number {
    const dirty = this.dirty[block];
    const sent = this.sent[block];
    let resent = 0;
    for (const [page, count] of received.zeroRanges()) {
      for (let p = page; p < page + count; p++) if (sent.get(p) && !dirty.get(p)) resent++;
    }
    dirty.fill();
    for (let page = received.findNextSet(0); page < dirty.size; ) {
      const end = Math.min(received.findNextZero(page), dirty.size);
      dirty.clearRange(page, end - page);
      page = end < dirty.size ? received.findNextSet(end) : dirty.size;
    }
    return resent;
  }

  /**
   * Which pages of private memory are unpopulated (the caller makes sure no write goes unseen
   * after this: the log is armed, or the guest is held until it is); true if any. A shared page
   * can be in the page cache without being mapped here: shared blocks are read.
   */
  findUntouched(): boolean {
    this.untouched = this.blocks.map(() => undefined);
    let reader: PagemapReader;
    try {
      reader = new PagemapReader();
    } catch {
      return false; // no procfs: every page is read
    }
    try {
      this.blocks.forEach((block, i) => {
        const { base, shared } = block.host!;
        if (shared) return;
        const untouched = new Bitmap(block.targetPages);
        reader.scanUnpopulated(base, base + block.targetPages * TARGET_PAGE_SIZE, (start, end) => {
          untouched.setRange((start - base) / TARGET_PAGE_SIZE, (end - start) / TARGET_PAGE_SIZE);
        });
        if (!untouched.isEmpty()) this.untouched[i] = untouched;
      });
    } finally {
      reader.close();
    }
    return this.untouched.some((u) => u !== undefined);
  }
}

/**
 * The target pages to discard, as [first page, page count] runs: pages both sent and dirty,
 * each widened to its whole host page (`perHost` target pages), adjacent runs merged.
 */
export function discardRanges(sent: Bitmap, dirty: Bitmap, perHost: number): [number, number][] {
  const ranges: [number, number][] = [];
  for (const [first, length] of sent.andRanges(dirty)) {
    const start = first - (first % perHost);
    const end = Math.min(Math.ceil((first + length) / perHost) * perHost, dirty.size);
    const last = ranges[ranges.length - 1];
    if (last && last[0] + last[1] >= start) last[1] = Math.max(last[1], end - last[0]);
    else ranges.push([start, end - start]);
  }
  return ranges;
}
