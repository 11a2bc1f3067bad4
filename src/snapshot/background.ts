// BackgroundSnapshot: a point-in-time copy of running memory into a snapshot file, with the
// guest paused only while every block is write-protected (QEMU's background-snapshot,
// ram_write_tracking_* in ram.c).
//
// After the pause two sides claim pages, each page exactly once (walker-protocol.ts):
// - write faults, on this thread: the old page is copied aside into a bounded shared pool and
//   un-protected at once (the guest goes on); the walker writes the copy, so the fault path
//   never waits for disk (unless the pool is full: then it writes the page first);
// - the walker, on a worker thread: every other page in order, written straight from guest
//   memory while still protected, then un-protected (walker.ts).
// The snapshot is complete when every page's state says saved (not when a loop found nothing).
// Failure is never worse than no snapshot: every block is un-protected and unregistered (which
// wakes every waiting thread onto its own, intact memory), the file is left as NAME.partial
// marked failed, and the error names the cause.
import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { join } from 'node:path';
import { Bitmap } from '../memory/bitmap.js';
import { isZero } from '../memory/zero.js';
import { LatencyHistogram } from '../pager/index.js';
import { probeFeatures } from '../kernel/features.js';
import { Userfaultfd, type EventBatch, type Feature, type Mapping } from '../kernel/index.js';
import { SnapshotWriter, readFully, writeFully } from './file.js';
import type { SnapshotBlock, SnapshotOptions, SnapshotProgress, SnapshotReport, UnpopulatedMode } from './options.js';
import { foldPresentPages } from './verify.js';
import { AsideQueue, COUNTERS, Counter, PageState, type WalkerMessage, type WalkerStart, type WalkerTask } from './walker-protocol.js';
import { PostcopyError, round, TARGET_PAGE_SIZE } from '../base/index.js';

const WALKER_PATH = join(__dirname, 'walker.js');
const DEFAULT_ASIDE_BYTES = 64 << 20;
/**
 * 4 KiB pages a write fault saves at once: the faulting one and the unsaved ones around it
 * (256 KiB): with a random writer one fault per window instead of per page (bench/README.md,
 * "Measurements behind the defaults", has the figures for 1, 16, 64 and 256).
 */
const CLAIM_WINDOW = 64;
const MAX_CLAIM_WINDOW = 256;
/** A snapshot that saves no page for this long fails (the guest is un-protected, never held). */
const DEFAULT_STALL_SECONDS = 30;
/** How long a failing snapshot waits for the walker's current write before leaving it behind. */
const WALKER_STOP_MS = 5000;
/** How long the walker thread may take to come up before the snapshot gives up (nothing protected yet). */
const WALKER_READY_MS = 10_000;

function isSnapshotFailure(error: Error): error is PostcopyError {
  return (error as PostcopyError).code === 'ERR_SNAPSHOT_FAILED';
}

/** A failed snapshot (ERR_SNAPSHOT_FAILED): the guest runs on, unprotected. */
function snapshotFailed(message: string, cause?: unknown): PostcopyError {
  return new PostcopyError('ERR_SNAPSHOT_FAILED', message, cause === undefined ? undefined : { cause });
}

interface BlockRuntime {
  idstr: string;
  mapping: Mapping;
  base: number;
  length: number;
  pageSize: number;
  pages: number;
  state: Uint8Array;
  stateBuffer: SharedArrayBuffer;
  bytes: Buffer;
  /** Pages a write fault claims at most (around the faulting page). */
  claimWindow: number;
}

export class BackgroundSnapshot extends EventEmitter {
  private readonly blocks: BlockRuntime[];
  private readonly pagesTotal: number;
  private uffd: Userfaultfd | undefined;
  private writer: SnapshotWriter | undefined;
  private walker: Worker | undefined;
  private walkerDone: Promise<void> | undefined;
  /** The walker has its task. */
  private walking = false;
  private readonly counters = new Float64Array(new SharedArrayBuffer(COUNTERS * 8));
  private readonly aside: AsideQueue;
  /** Free aside slots taken from the walker's ring, not used yet. */
  private readonly freeSlots: number[] = [];
  private failure: Error | undefined;
  private failed: ((e: Error) => void) | undefined;
  private readonly faultTimes: number[] = [];
  private readonly faultHistogram = new LatencyHistogram();
  /** Pages claimed by write faults (copied aside), and those saved here because the pool was full. */
  private claimedByFaults = 0;
  private savedHere = { pages: 0, zero: 0, bytesWritten: 0, bytesSaved: 0 };
  private asideFull = 0;
  private resumedAt = 0;
  private lastSaved = -1;
  private lastProgressAt = performance.now();

  private constructor(private readonly options: SnapshotOptions) {
    super();
    if (options.blocks.length === 0) throw new RangeError('snapshot: no blocks');
    this.blocks = options.blocks.map((b) => {
      const length = b.length ?? b.mapping.length;
      const pageSize = b.mapping.pageSize;
      if (length <= 0 || length > b.mapping.length || length % pageSize) {
        throw new RangeError(`snapshot: block ${b.idstr}: length ${length} is not a multiple of ${pageSize} within its ${b.mapping.length}-byte mapping`);
      }
      const stateBuffer = new SharedArrayBuffer(length / pageSize);
      return {
        idstr: b.idstr, mapping: b.mapping, base: b.mapping.base, length, pageSize, pages: length / pageSize,
        state: new Uint8Array(stateBuffer), stateBuffer, bytes: Buffer.from(b.mapping.view(0, length)),
        claimWindow: pageSize === TARGET_PAGE_SIZE ? Math.max(1, Math.min(MAX_CLAIM_WINDOW, options.claimPages ?? CLAIM_WINDOW)) : 1,
      };
    });
    this.pagesTotal = this.blocks.reduce((n, b) => n + b.pages, 0);
    // A slot holds one claim window (or one huge page): small and huge blocks share the pool.
    const slotSize = Math.max(...this.blocks.map((b) => b.pageSize * b.claimWindow));
    this.aside = AsideQueue.create(slotSize, Math.max(1, Math.floor((options.asideBytes ?? DEFAULT_ASIDE_BYTES) / slotSize)));
    // All slots start on the free ring; taken here in reverse so that slot 0 is used first.
    for (let s = this.aside.take(); s >= 0; s = this.aside.take()) this.freeSlots.unshift(s);
  }

  /** Takes a snapshot; resolves with the report once the file is complete, or rejects (ERR_SNAPSHOT_FAILED). */
  static async take(options: SnapshotOptions, onProgress?: (p: SnapshotProgress) => void): Promise<SnapshotReport> {
    const snapshot = new BackgroundSnapshot(options);
    if (onProgress) snapshot.on('progress', onProgress);
    return snapshot.run();
  }

  /** The features a snapshot of these blocks needs, and whether never-touched pages can stay unpopulated. */
  static plan(blocks: SnapshotBlock[], unpopulated: UnpopulatedMode = 'auto'): { features: Feature[]; unpopulated: 'kernel' | 'populate' } {
    const offered = probeFeatures().features;
    const features: Feature[] = ['PAGEFAULT_FLAG_WP'];
    if (blocks.some((b) => b.mapping.kind !== 'anonymous')) features.push('WP_HUGETLBFS_SHMEM');
    const kernel = unpopulated === 'kernel' || (unpopulated === 'auto' && offered.WP_UNPOPULATED);
    if (kernel) features.push('WP_UNPOPULATED');
    return { features, unpopulated: kernel ? 'kernel' : 'populate' };
  }

  private async run(): Promise<SnapshotReport> {
    const o = this.options;
    const plan = BackgroundSnapshot.plan(o.blocks, o.unpopulated);
    const failedPromise = new Promise<never>((_, reject) => (this.failed = reject));
    failedPromise.catch(() => undefined);
    try {
      await this.spawnWalker();
      this.uffd = Userfaultfd.open({ features: plan.features });
      for (const b of this.blocks) this.uffd.register(b.base, b.length, 'wp');
      const { pauseMs, deviceState } = await this.protectInOnePause(plan.unpopulated);
      this.resumedAt = performance.now();
      const watch = setInterval(() => this.watch(), o.progressIntervalMs ?? 250);
      try {
        this.startWalker();
        await Promise.race([this.walkerDone!, failedPromise]);
      } finally {
        clearInterval(watch);
      }
      const present = this.savedPages();
      const seconds = (performance.now() - this.resumedAt) / 1e3;
      this.release();
      // The guest is free from here: what is left costs it nothing.
      const finishing = performance.now();
      const checksumMs = this.complete(present, deviceState);
      return this.report(seconds, pauseMs, plan.unpopulated, deviceState?.length ?? 0, checksumMs, performance.now() - finishing);
    } catch (error) {
      throw await this.abandon(error as Error);
    }
  }

  /**
   * The pause: the guest stopped, the device state taken, the file created, every block
   * protected (never-touched pages populated first if the kernel cannot protect them as they
   * are), fault service started, the guest resumed, whatever happened in between.
   */
  private async protectInOnePause(unpopulated: 'kernel' | 'populate'): Promise<{ pauseMs: number; deviceState?: Uint8Array }> {
    const o = this.options;
    let deviceState = o.deviceState instanceof Uint8Array ? o.deviceState : undefined;
    let pausedAt = performance.now();
    let hookMs = 0;
    let pauseMs = 0;
    try {
      await o.pauseGuest();
      pausedAt = performance.now();
      if (typeof o.deviceState === 'function') deviceState = await o.deviceState();
      this.writer = SnapshotWriter.create(o.path, this.blocks.map((b) => ({ idstr: b.idstr, usedLength: b.length, pageSize: b.pageSize })), {
        deviceStateLength: deviceState?.length ?? 0, pageChecksums: o.pageChecksums ?? true,
      });
      if (unpopulated === 'populate') for (const b of this.blocks) populate(b);
      for (const b of this.blocks) this.uffd!.writeProtect(b.base, b.length);
      this.uffd!.onEvents((batch) => this.onFaults(batch), (e) => this.fail(e));
      const hookAt = performance.now();
      await o.atProtection?.();
      hookMs = performance.now() - hookAt;
    } finally {
      pauseMs = performance.now() - pausedAt - hookMs;
      await o.resumeGuest();
    }
    return { pauseMs, deviceState };
  }

  /**
   * Makes the file complete, with the guest free: page checksums read back from the file
   * (taken in the walk they would lengthen the protected window),
   * bitmaps, device state, syncs, trailer, rename. Returns the ms the checksums took.
   */
  private complete(present: Bitmap[], deviceState: Uint8Array | undefined): number {
    const started = performance.now();
    const writer = this.writer!;
    const checksums = this.options.pageChecksums ?? true
      ? foldPresentPages(writer.layout.version, this.blocks.map((b, i) => ({ pageSize: b.pageSize, pages: b.pages, present: present[i] })),
        (block, page, count, into) => readFully(writer.fd, into.subarray(0, count * this.blocks[block].pageSize), writer.pageOffset(block, page), writer.partialPath, 'page data'))
      : [];
    const checksumMs = performance.now() - started;
    writer.finish(present, checksums, deviceState);
    return checksumMs;
  }

  /** Every progress interval: a progress event, and the stall bound (a disk that stopped taking writes). */
  private watch(): void {
    const p = this.progress();
    this.emit('progress', p);
    const now = performance.now();
    if (p.pagesSaved !== this.lastSaved) {
      this.lastSaved = p.pagesSaved;
      this.lastProgressAt = now;
    } else if (now - this.lastProgressAt > (this.options.stallSeconds ?? DEFAULT_STALL_SECONDS) * 1e3) {
      this.fail(snapshotFailed(`no page saved for ${this.options.stallSeconds ?? DEFAULT_STALL_SECONDS} s (${p.pagesSaved} of ${p.pagesTotal} saved): is ${this.writer!.partialPath} on a disk that stopped taking writes?`));
    }
  }

  // ---- write faults (this thread) ------------------------------------------------------

  private onFaults(batch: EventBatch): void {
    try {
      this.serveFaults(batch);
    } catch (error) {
      this.fail(error as Error);
    }
  }

  private serveFaults(batch: EventBatch): void {
    const t0 = performance.now();
    let queued = false;
    for (let i = 0; i < batch.count; i++) {
      if (!batch.isPagefault(i) || !batch.isWriteProtect(i)) continue;
      const address = batch.address(i);
      const block = this.blockIndexAt(address);
      if (block < 0) continue;
      const b = this.blocks[block];
      const page = Math.floor((address - b.base) / b.pageSize);
      if (Atomics.compareExchange(b.state, page, PageState.PROTECTED, PageState.FAULT) === PageState.PROTECTED) {
        queued = this.saveFaulted(block, page) || queued;
        this.recordFault(performance.now() - t0);
      } else if (Atomics.load(b.state, page) !== PageState.WALKER) {
        // Saved, or copied aside by an earlier fault and not un-protected yet: un-protecting
        // it (again) wakes the thread. A WALKER page is un-protected by the walker once saved.
        this.unprotect(b, page, 1);
      }
    }
    if (queued) this.aside.notify();
  }

  /**
   * Copies the faulting page aside together with the pages around it that are still protected
   * and unsaved (a run inside an aligned window of `claimPages`), un-protects them and queues
   * the copy for the walker to write; true if queued. A guest that writes near where it wrote
   * takes one fault per window instead of one per page. With the pool full (the disk is
   * behind) only the faulting page is saved, written here first, straight from the
   * still-protected memory.
   */
  private saveFaulted(block: number, page: number): boolean {
    const b = this.blocks[block];
    const ps = b.pageSize;
    const slot = this.takeSlot();
    if (slot < 0) {
      this.asideFull++;
      const at = page * ps;
      const zero = isZero(b.bytes, at, ps);
      if (!zero) {
        writeFully(this.writer!.fd, b.bytes.subarray(at, at + ps), this.writer!.pageOffset(block, page));
        this.savedHere.bytesWritten += ps;
      }
      this.unprotect(b, page, 1);
      Atomics.store(b.state, page, zero ? PageState.SAVED_ZERO : PageState.SAVED_DATA);
      this.savedHere.pages++;
      this.savedHere.bytesSaved += ps;
      if (zero) this.savedHere.zero++;
      return false;
    }
    const window = Math.min(b.claimWindow, this.aside.slotSize / ps);
    const windowStart = page - (page % window);
    const windowEnd = Math.min(b.pages, windowStart + window);
    let first = page;
    while (first > windowStart && Atomics.compareExchange(b.state, first - 1, PageState.PROTECTED, PageState.FAULT) === PageState.PROTECTED) first--;
    let end = page + 1;
    while (end < windowEnd && Atomics.compareExchange(b.state, end, PageState.PROTECTED, PageState.FAULT) === PageState.PROTECTED) end++;
    b.bytes.copy(this.aside.slots, slot * this.aside.slotSize, first * ps, end * ps); // no view allocated per fault
    // The faulting page first, alone, so that its thread can go on; then the whole run in one
    // call (above 33 pages the kernel flushes the TLB once instead of page by page, and a flush
    // can be a hypercall on a virtual host). Left to the walker, the rest would take
    // faults of its own before the walker got to it.
    this.unprotect(b, page, 1);
    if (end - first > 1) this.unprotect(b, first, end - first);
    for (let p = first; p < end; p++) Atomics.store(b.state, p, PageState.ASIDE);
    this.aside.push(slot, block, first, end - first);
    this.claimedByFaults += end - first;
    return true;
  }

  /**
   * The most recently freed slot: slots are reused last-in first-out, so that the pool's
   * memory in use stays as small (and as warm in the caches) as the backlog allows.
   */
  private takeSlot(): number {
    for (let s = this.aside.take(); s >= 0; s = this.aside.take()) this.freeSlots.push(s);
    return this.freeSlots.pop() ?? -1;
  }

  private unprotect(b: BlockRuntime, page: number, count: number): void {
    const status = this.uffd!.tryWriteProtect(b.base + page * b.pageSize, count * b.pageSize, 0);
    if (status < 0) throw snapshotFailed(`un-protecting pages ${page}..${page + count - 1} of block ${b.idstr}: errno ${-status}`);
  }

  private recordFault(ms: number): void {
    const us = ms * 1e3;
    this.faultTimes.push(us);
    this.faultHistogram.add(us);
  }

  private blockIndexAt(address: number): number {
    for (let i = 0; i < this.blocks.length; i++) {
      const b = this.blocks[i];
      if (address >= b.base && address < b.base + b.length) return i;
    }
    return -1;
  }

  // ---- the walker ----------------------------------------------------------------------

  /**
   * The walker thread, up and waiting for its task (see WalkerStart); `walkerDone` settles when
   * it has done the task, failed, or gone.
   */
  private async spawnWalker(): Promise<void> {
    const walker = new Worker(WALKER_PATH, { workerData: { postcopySnapshotWalker: 1 } satisfies WalkerStart });
    this.walker = walker;
    let ready!: (error?: Error) => void;
    const up = new Promise<void>((resolve, reject) => (ready = (error) => (error ? reject(error) : resolve())));
    this.walkerDone = new Promise<void>((resolve, reject) => {
      walker.on('message', (m: WalkerMessage) => {
        if (m.type === 'ready') ready();
        else if (m.type === 'done') resolve();
        else reject(snapshotFailed(`the walker failed: ${m.message}`));
      });
      walker.once('error', (e) => reject(snapshotFailed(`the walker failed: ${e.message}`, e)));
      walker.once('exit', (code) => reject(snapshotFailed(`the walker exited (code ${code}) before it finished`)));
    });
    this.walkerDone.catch(ready); // gone before it was up
    const timer = setTimeout(() => ready(snapshotFailed(`the walker thread did not start within ${WALKER_READY_MS} ms`)), WALKER_READY_MS);
    await up.finally(() => clearTimeout(timer));
  }

  /** Hands the walker its task: the walk begins. */
  private startWalker(): void {
    const task: WalkerTask = {
      uffd: this.uffd!.fd,
      file: this.writer!.fd,
      blocks: this.blocks.map((b, i) => ({
        idstr: b.idstr, address: b.base, length: b.length, pageSize: b.pageSize, pagesOffset: this.writer!.pageOffset(i, 0), state: b.stateBuffer,
      })),
      counters: this.counters.buffer as SharedArrayBuffer,
      aside: this.aside.shared,
      asideSlotSize: this.aside.slotSize,
    };
    this.walker!.postMessage(task);
    this.walking = true;
  }

  private async stopWalker(): Promise<void> {
    const walker = this.walker;
    if (!walker) return;
    if (!this.walking) return void (await walker.terminate()); // waiting for a task: nothing to finish
    this.aside.abort();
    const exited = new Promise<void>((resolve) => walker.once('exit', () => resolve()));
    const timer = setTimeout(() => void walker.terminate(), WALKER_STOP_MS);
    await Promise.race([this.walkerDone!.then(() => undefined, () => undefined), exited]);
    clearTimeout(timer);
    await walker.terminate();
  }

  // ---- end -----------------------------------------------------------------------------

  /**
   * Complete means every page of every block is saved: checked here, page by page, in the same
   * pass that builds each block's bitmap of pages present (the SAVED_DATA ones).
   */
  private savedPages(): Bitmap[] {
    return this.blocks.map((b) => {
      const present = new Bitmap(b.pages);
      for (let p = 0; p < b.pages; p++) {
        const s = Atomics.load(b.state, p);
        if (s === PageState.SAVED_DATA) present.set(p);
        else if (s !== PageState.SAVED_ZERO) throw snapshotFailed(`internal: page ${p} of block ${b.idstr} is not saved (state ${s}) after the walk`);
      }
      return present;
    });
  }

  private fail(error: Error): void {
    if (this.failure) return;
    this.failure = isSnapshotFailure(error) ? error : snapshotFailed(error.message, error);
    this.aside.abort();
    this.failed?.(this.failure);
  }

  /**
   * Undoes a failed snapshot: the walker stopped, every block un-protected (waking every
   * waiting thread onto its own memory) and unregistered, the file marked failed.
   */
  private async abandon(error: Error): Promise<Error> {
    const cause = this.failure ?? (isSnapshotFailure(error) ? error : snapshotFailed(`snapshot failed: ${error.message}`, error));
    await this.stopWalker();
    this.release();
    this.writer?.fail(cause.message);
    return cause;
  }

  /** Un-protects and unregisters every block, closes the userfaultfd. Safe to call twice. */
  private release(): void {
    const uffd = this.uffd;
    if (!uffd || uffd.closed) return;
    uffd.stopEvents();
    for (const b of this.blocks) {
      uffd.tryWriteProtect(b.base, b.length, 0);
      try {
        uffd.unregister(b.base, b.length);
      } catch {
        // closing the descriptor below drops the registration anyway
      }
    }
    uffd.close();
  }

  private progress(): SnapshotProgress {
    const c = this.counters;
    const saved = c[Counter.PAGES] + c[Counter.ASIDE_PAGES] + this.savedHere.pages;
    const secs = (performance.now() - this.resumedAt) / 1e3;
    const savedBytes = c[Counter.BYTES_SAVED] + this.savedHere.bytesSaved;
    return {
      pagesSaved: saved,
      pagesTotal: this.pagesTotal,
      writeFaults: this.faultTimes.length,
      bytesWritten: c[Counter.BYTES_WRITTEN] + this.savedHere.bytesWritten,
      gbPerS: secs > 0 ? savedBytes / secs / 1e9 : 0,
    };
  }

  private report(seconds: number, pauseMs: number, unpopulated: 'kernel' | 'populate', deviceBytes: number, checksumMs: number, finishMs: number): SnapshotReport {
    const c = this.counters;
    const bytes = this.blocks.reduce((n, b) => n + b.length, 0);
    const times = Float64Array.from(this.faultTimes).sort();
    const q = (f: number): number => (times.length ? round(times[Math.min(times.length - 1, Math.floor(f * times.length))], 1) : 0);
    const zero = c[Counter.ZERO_PAGES] + this.savedHere.zero;
    const maxUs = times.length ? times[times.length - 1] : 0;
    return {
      file: this.options.path,
      complete: true,
      bytes,
      seconds: round(seconds, 3),
      gb_per_s: round(bytes / seconds / 1e9, 3),
      finish_ms: round(finishMs, 1),
      checksum_ms: round(checksumMs, 1),
      pause_ms: round(pauseMs, 2),
      unpopulated,
      pages: { total: this.pagesTotal, written: this.pagesTotal - zero, zero, by_fault: this.claimedByFaults + this.savedHere.pages, by_walker: c[Counter.PAGES] },
      write_faults: { count: times.length, p50_us: q(0.5), p99_us: q(0.99), max_us: round(maxUs, 1), histogram: this.faultHistogram.buckets.slice(), aside_full: this.asideFull },
      longest_stall_ms: round(Math.max(pauseMs, maxUs / 1e3), 2),
      bytes_written: c[Counter.BYTES_WRITTEN] + this.savedHere.bytesWritten,
      file_size: this.writer!.layout.fileLength,
      device_state_bytes: deviceBytes,
      page_checksums: this.options.pageChecksums ?? true,
    };
  }
}

/**
 * Maps every page of a block before it is protected, so that no never-touched page can take a
 * write without a fault: MADV_POPULATE_READ (5.14+; maps the shared zero page for holes),
 * else a read of every page.
 */
function populate(b: BlockRuntime): void {
  try {
    b.mapping.madvise(0, b.length, 'populateRead');
  } catch {
    let sink = 0;
    for (let at = 0; at < b.length; at += b.pageSize) sink |= b.bytes[at];
    void sink;
  }
}
