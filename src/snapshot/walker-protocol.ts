// What the snapshot engine and its walker worker share: page states, counters, the queue of
// pages copied aside by write faults, and messages.

/**
 * One byte per page of a block, in shared memory, changed only with Atomics: a page is
 * claimed (PROTECTED -> WALKER or FAULT) by exactly one side, which saves it (or copies it
 * aside: FAULT -> ASIDE) before anything un-protects it; SAVED_* once it is in the file and
 * un-protected. SAVED_DATA pages are the file's bitmap. Only a FAULT page is protected and about
 * to be copied: every page in any other state but PROTECTED and WALKER is saved or copied, and
 * may be un-protected by anyone, so the walker un-protects a whole chunk at once when none of
 * its pages is FAULT (one TLB flush instead of one per run).
 */
export const PageState = {
  PROTECTED: 0,
  WALKER: 1,
  FAULT: 2,
  ASIDE: 3,
  SAVED_DATA: 4,
  SAVED_ZERO: 5,
} as const;

/** Slots of the shared Float64Array of counters (written by the walker only). */
export const Counter = { PAGES: 0, ZERO_PAGES: 1, BYTES_WRITTEN: 2, BYTES_SAVED: 3, ASIDE_PAGES: 4 } as const;
export const COUNTERS = 5;

/** Slots of the shared Int32Array of control words. */
const Control = { FILLED_HEAD: 0, FILLED_TAIL: 1, FREE_HEAD: 2, FREE_TAIL: 3, ABORT: 4 } as const;
const CONTROL_WORDS = 5;

/**
 * Pages copied aside by the write-fault path (this thread) for the walker to write: a pool of
 * slots and two single-producer rings, `filled` (main -> walker, with the page's block and
 * index) and `free` (walker -> main). Memory held is bounded by the pool.
 */
export class AsideQueue {
  readonly slots: Buffer;
  private readonly control: Int32Array;
  private readonly filled: Int32Array;
  private readonly free: Int32Array;
  /** Per slot: block index, first page, page count (a slot holds a run of pages). */
  private readonly meta: Int32Array;
  readonly count: number;

  constructor(
    readonly shared: { slots: SharedArrayBuffer; control: SharedArrayBuffer; filled: SharedArrayBuffer; free: SharedArrayBuffer; meta: SharedArrayBuffer },
    readonly slotSize: number,
  ) {
    this.slots = Buffer.from(shared.slots);
    this.control = new Int32Array(shared.control);
    this.filled = new Int32Array(shared.filled);
    this.free = new Int32Array(shared.free);
    this.meta = new Int32Array(shared.meta);
    this.count = this.filled.length;
  }

  static create(slotSize: number, count: number): AsideQueue {
    const q = new AsideQueue({
      slots: new SharedArrayBuffer(slotSize * count),
      control: new SharedArrayBuffer(CONTROL_WORDS * 4),
      filled: new SharedArrayBuffer(count * 4),
      free: new SharedArrayBuffer(count * 4),
      meta: new SharedArrayBuffer(count * 12),
    }, slotSize);
    for (let s = 0; s < count; s++) q.release(s);
    return q;
  }

  slot(s: number, length: number): Buffer {
    return this.slots.subarray(s * this.slotSize, s * this.slotSize + length);
  }

  /** Main: a free slot, or -1 if the walker has not written enough yet. */
  take(): number {
    return this.pop(this.free, Control.FREE_HEAD, Control.FREE_TAIL);
  }
  /** Main: hands a filled slot (pages [page, page + count) of a block) to the walker. */
  push(s: number, block: number, page: number, count: number): void {
    this.meta[3 * s] = block;
    this.meta[3 * s + 1] = page;
    this.meta[3 * s + 2] = count;
    this.put(this.filled, Control.FILLED_HEAD, s);
  }
  /** Main: wakes the walker if it waits for slots. */
  notify(): void {
    Atomics.notify(this.control, Control.FILLED_HEAD);
  }
  /** Walker: the next filled slot, or -1. */
  next(): number {
    return this.pop(this.filled, Control.FILLED_HEAD, Control.FILLED_TAIL);
  }
  blockOf(s: number): number {
    return this.meta[3 * s];
  }
  pageOf(s: number): number {
    return this.meta[3 * s + 1];
  }
  countOf(s: number): number {
    return this.meta[3 * s + 2];
  }
  /** Walker: the slot is written; main may reuse it. */
  release(s: number): void {
    this.put(this.free, Control.FREE_HEAD, s);
  }
  /** Walker: sleeps until a slot is filled, at most `ms`. */
  wait(ms: number): void {
    const head = Atomics.load(this.control, Control.FILLED_HEAD);
    if (head === Atomics.load(this.control, Control.FILLED_TAIL)) Atomics.wait(this.control, Control.FILLED_HEAD, head, ms);
  }
  abort(): void {
    Atomics.store(this.control, Control.ABORT, 1);
    this.notify();
  }
  get aborted(): boolean {
    return Atomics.load(this.control, Control.ABORT) !== 0;
  }

  private put(ring: Int32Array, headWord: number, value: number): void {
    const head = this.control[headWord];
    ring[head % ring.length] = value;
    Atomics.store(this.control, headWord, head + 1);
  }
  private pop(ring: Int32Array, headWord: number, tailWord: number): number {
    const tail = this.control[tailWord];
    if (tail === Atomics.load(this.control, headWord)) return -1;
    const value = ring[tail % ring.length];
    Atomics.store(this.control, tailWord, tail + 1);
    return value;
  }
}

export interface WalkerBlock {
  idstr: string;
  address: number;
  length: number;
  pageSize: number;
  /** File offset of the block's page 0. */
  pagesOffset: number;
  /** PageState per page. */
  state: SharedArrayBuffer;
}

/**
 * The walker thread's workerData: it marks the thread, which says 'ready' once loaded and then
 * waits for its task. The thread starts before the pause (a worker takes 50-130 ms to come up
 * here, which inside the protected window would be that much more of the guest's write faults);
 * the task, which needs the file the pause creates, comes as a message right after it.
 */
export interface WalkerStart {
  postcopySnapshotWalker: 1;
}

export interface WalkerTask {
  uffd: number;
  file: number;
  blocks: WalkerBlock[];
  counters: SharedArrayBuffer;
  aside: AsideQueue['shared'];
  asideSlotSize: number;
}

export type WalkerMessage =
  | { type: 'ready' }
  | { type: 'done' }
  | { type: 'error'; message: string; code?: string };
