// The writer of a snapshot, on its own worker thread so that the main thread stays free for
// write faults. It does two things, interleaved chunk by chunk:
// - the walk: block by block, chunk by chunk, it claims every page still protected and
//   unsaved, writes the non-zero ones at their file offsets (one positional write per run) and
//   only then un-protects the chunk: a page is never saved after it was un-protected;
// - the aside queue: runs of pages the fault path copied aside (and un-protected) are written
//   from their copies and their slots handed back.
// It ends when its walk is done and every page's state says saved (the bitmap, not a count).
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { attachMapping } from '../kernel/mapping.js';
import { isZero } from '../memory/zero.js';
import { RangeUnprotector } from '../kernel/userfaultfd.js';
import { writeFully } from './file.js';
import { AsideQueue, Counter, PageState, type WalkerBlock, type WalkerMessage, type WalkerStart, type WalkerTask } from './walker-protocol.js';
import { TARGET_PAGE_SIZE } from '../base/index.js';

/** The walk's unit: pages claimed, written and un-protected together (one TLB flush per chunk). */
const CHUNK_BYTES = 1 << 20;
/** While only faults remain: how long to sleep between looks at the queue and the states. */
const IDLE_WAIT_MS = 2;

interface BlockView extends WalkerBlock {
  states: Uint8Array;
  memory: Buffer;
  unprotector: RangeUnprotector;
  pages: number;
  /** Pages [0, savedUpTo) are all saved. */
  savedUpTo: number;
}

class Walker {
  private readonly counters: Float64Array;
  private readonly aside: AsideQueue;
  private readonly blocks: BlockView[];
  /** Which pages of the chunk being saved are zero (a local note: the shared state says WALKER). */
  private readonly zeroInChunk = new Uint8Array(CHUNK_BYTES / TARGET_PAGE_SIZE);

  constructor(private readonly task: WalkerTask) {
    this.counters = new Float64Array(task.counters);
    this.aside = new AsideQueue(task.aside, task.asideSlotSize);
    this.blocks = task.blocks.map((b) => ({
      ...b,
      states: new Uint8Array(b.state),
      memory: Buffer.from(attachMapping(BigInt(b.address), b.length)),
      unprotector: new RangeUnprotector(task.uffd, b.address, b.length),
      pages: b.length / b.pageSize,
      savedUpTo: 0,
    }));
  }

  run(): void {
    for (const b of this.blocks) this.walk(b);
    while (!this.aside.aborted) {
      this.drainAside();
      if (this.allSaved()) break;
      this.aside.wait(IDLE_WAIT_MS);
    }
    this.drainAside();
  }

  private walk(block: BlockView): void {
    const { states, pages } = block;
    const chunkPages = Math.max(1, CHUNK_BYTES / block.pageSize);
    for (let chunk = 0; chunk < pages; chunk += chunkPages) {
      if (this.aside.aborted) return;
      this.drainAside();
      const end = Math.min(pages, chunk + chunkPages);
      // Claim every page of the chunk that is still protected and unsaved, saving run by run.
      let claimed = 0;
      for (let p = chunk; p < end; ) {
        if (Atomics.compareExchange(states, p, PageState.PROTECTED, PageState.WALKER) !== PageState.PROTECTED) {
          p++;
          continue;
        }
        let e = p + 1;
        while (e < end && Atomics.compareExchange(states, e, PageState.PROTECTED, PageState.WALKER) === PageState.PROTECTED) e++;
        this.saveRun(block, p, e);
        claimed += e - p;
        p = e;
      }
      if (claimed) this.unprotectClaimed(block, chunk, end);
    }
  }

  /**
   * Un-protects the pages of [first, end) this walker claimed and saved, then marks them saved:
   * the whole chunk in one call unless a fault is copying one of its pages right now (FAULT:
   * still protected, and must stay so until its copy is taken), then run by run.
   */
  private unprotectClaimed(block: BlockView, first: number, end: number): void {
    const { states, pageSize: ps } = block;
    let faultInChunk = false;
    for (let p = first; p < end && !faultInChunk; p++) faultInChunk = Atomics.load(states, p) === PageState.FAULT;
    for (let p = first; p < end; ) {
      if (faultInChunk && states[p] !== PageState.WALKER) {
        p++;
        continue;
      }
      let e = p + 1;
      while (e < end && (!faultInChunk || states[e] === PageState.WALKER)) e++;
      const status = block.unprotector.tryUnprotect(p * ps, (e - p) * ps);
      if (status < 0) throw new Error(`un-protecting pages ${p}..${e - 1} of block ${block.idstr}: errno ${-status}`);
      p = e;
    }
    for (let p = first; p < end; p++) {
      if (states[p] === PageState.WALKER) Atomics.store(states, p, this.zeroInChunk[p - first] ? PageState.SAVED_ZERO : PageState.SAVED_DATA);
    }
  }

  /** Saves claimed pages [first, end) from guest memory (still protected): runs of non-zero pages, one write each. */
  private saveRun(block: BlockView, first: number, end: number): void {
    const ps = block.pageSize;
    const { memory } = block;
    const chunkStart = first - (first % Math.max(1, CHUNK_BYTES / ps));
    let runStart = -1;
    let written = 0;
    let zeros = 0;
    const flush = (upTo: number): void => {
      if (runStart < 0) return;
      writeFully(this.task.file, memory.subarray(runStart * ps, upTo * ps), block.pagesOffset + runStart * ps);
      written += upTo - runStart;
      runStart = -1;
    };
    for (let p = first; p < end; p++) {
      const at = p * ps;
      const zero = isZero(memory, at, ps);
      this.zeroInChunk[p - chunkStart] = zero ? 1 : 0;
      if (zero) {
        flush(p);
        zeros++;
        continue;
      }
      if (runStart < 0) runStart = p;
    }
    flush(end);
    this.count(end - first, zeros, written * ps, (end - first) * ps);
  }

  /** Writes every run of pages the fault path has copied aside so far, and frees their slots. */
  private drainAside(): void {
    for (let s = this.aside.next(); s >= 0; s = this.aside.next()) {
      const block = this.blocks[this.aside.blockOf(s)];
      const first = this.aside.pageOf(s);
      const count = this.aside.countOf(s);
      const ps = block.pageSize;
      const copy = this.aside.slot(s, count * ps);
      const write = (from: number, to: number): void => writeFully(this.task.file, copy.subarray(from * ps, to * ps), block.pagesOffset + (first + from) * ps);
      let zeros = 0;
      let runStart = -1;
      for (let i = 0; i < count; i++) {
        const zero = isZero(copy, i * ps, ps);
        this.zeroInChunk[i] = zero ? 1 : 0;
        if (!zero) {
          if (runStart < 0) runStart = i;
          continue;
        }
        zeros++;
        if (runStart >= 0) write(runStart, i);
        runStart = -1;
      }
      if (runStart >= 0) write(runStart, count);
      this.aside.release(s);
      for (let i = 0; i < count; i++) Atomics.store(block.states, first + i, this.zeroInChunk[i] ? PageState.SAVED_ZERO : PageState.SAVED_DATA);
      this.counters[Counter.ASIDE_PAGES] += count;
      this.count(0, zeros, (count - zeros) * ps, count * ps);
    }
  }

  private count(walked: number, zeros: number, written: number, saved: number): void {
    this.counters[Counter.PAGES] += walked;
    this.counters[Counter.ZERO_PAGES] += zeros;
    this.counters[Counter.BYTES_WRITTEN] += written;
    this.counters[Counter.BYTES_SAVED] += saved;
  }

  /** Every page of every block saved? (A page once saved stays saved: each block keeps a cursor.) */
  private allSaved(): boolean {
    for (const b of this.blocks) {
      while (b.savedUpTo < b.pages && Atomics.load(b.states, b.savedUpTo) >= PageState.SAVED_DATA) b.savedUpTo++;
      if (b.savedUpTo < b.pages) return false;
    }
    return true;
  }
}

if (!isMainThread && (workerData as WalkerStart | undefined)?.postcopySnapshotWalker === 1) {
  parentPort!.once('message', (task: WalkerTask) => {
    let message: WalkerMessage;
    try {
      new Walker(task).run();
      message = { type: 'done' };
    } catch (error) {
      const e = error as NodeJS.ErrnoException;
      message = { type: 'error', message: e.message, code: e.code };
    }
    parentPort!.postMessage(message);
  });
  parentPort!.postMessage({ type: 'ready' } satisfies WalkerMessage);
}
