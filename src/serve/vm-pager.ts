// One VM's pager, on its own worker thread (so that a cold page of one VM never delays a warm
// one of another): it adopts the VMM's userfaultfd, whose regions live in the VMM's address
// space, serves each fault from the page source before reading the next event (a whole page,
// or a run of missing pages alike), prefetches the rest behind the faults, and follows the
// VMM's events:
// - REMOVE (balloon inflate, free page reporting, unplug): the range is unregistered, so that
//   the kernel zero-fills it from then on and the file's old data never comes back there;
// - EAGAIN (an event is queued): the fault is deferred, the events are read, then it is tried
//   again, within a bound;
// - ESRCH (the VM is gone): nothing to serve any more.
import { performance } from 'node:perf_hooks';
import { ESRCH, PostcopyError, TARGET_PAGE_SIZE, errorCode } from '../base/index.js';
import { Userfaultfd, type EventBatch } from '../kernel/index.js';
import { Bitmap, RamBlock } from '../memory/index.js';
import { FaultService, PagePlacer, nextMissingPage, type HostRange, type PagerBlock, type PrefetchCursor } from '../pager/index.js';
import { PageSource } from './page-source.js';
import { emptyCounters, type FromVm, type PageSourceLabel, type PrefetchMode, type VmCounters, type VmTask } from './protocol.js';

/**
 * A fault places its page alone (the prefetcher places runs behind it): a run of 16 pages took
 * the fault's latency from ~16 to ~48 µs here (bench/README.md, serve-file-faults).
 */
const FAULT_RUN_PAGES = 1;
/** One prefetch step places this much, then lets the event loop read faults. */
const PREFETCH_RUN_BYTES = 256 << 10;
const PROGRESS_INTERVAL_MS = 200;

export class VmPager {
  private readonly uffd: Userfaultfd;
  private readonly blocks: PagerBlock[];
  private readonly index = new Map<PagerBlock, number>();
  private readonly source: PageSource;
  private readonly faults: FaultService;
  private readonly placer: PagePlacer;
  /** Per region, target pages a REMOVE took away (unregistered: the kernel zero-fills them). */
  private readonly removed: Bitmap[];
  private readonly started = performance.now();
  private counters: VmCounters = emptyCounters();
  private readonly totalPages: number;
  private donePages = 0;
  private firstFault = false;
  private allPresent = false;
  private readonly recorded: number[] = [];
  private nextWorkingSetPage = 0;
  private readonly sequential: PrefetchCursor = { block: 0, page: 0 };
  /** When the oldest fault deferred by EAGAIN was deferred (0: none). */
  private deferredSince = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private readonly progressTimer: NodeJS.Timeout;
  private ended = false;
  /** How the page being placed comes, for the latency histogram. */
  private placing: PageSourceLabel = 'file';
  private prefetching = false;

  constructor(private readonly task: VmTask, private readonly post: (message: FromVm) => void) {
    const { regions } = task;
    this.source = PageSource.open(task.source, regions);
    this.uffd = Userfaultfd.adoptForeign(task.uffdFd, regions.map((r) => ({ start: r.base, length: r.size })));
    this.blocks = regions.map((r, i) => new RamBlock<HostRange>({ idstr: `region ${i}`, usedLength: r.size, pageSize: r.pageSize, host: { base: r.base, length: r.size } }));
    this.blocks.forEach((b, i) => this.index.set(b, i));
    this.removed = this.blocks.map((b) => new Bitmap(b.targetPages));
    this.totalPages = this.blocks.reduce((n, b) => n + b.targetPages, 0);
    this.placer = new PagePlacer(this.uffd, (block, offset, length, fresh) => this.placed(block, offset, length, fresh), { onEagain: 'defer' });
    this.faults = new FaultService(this.uffd, this.blocks, (block, offset) => this.serveFault(block, offset), (error) => this.fail(error));
    this.faults.onOtherEvent = (batch, i) => this.otherEvent(batch, i);
    this.faults.onLatency = (us) => this.counters.latency[this.placing].push(us);
    this.faults.start();
    this.progressTimer = setInterval(() => this.report(), PROGRESS_INTERVAL_MS);
    this.prefetch(task.prefetch);
  }

  /** Starts prefetching behind the faults (staging: once every page has arrived there). */
  prefetch(mode: PrefetchMode): void {
    if (mode === 'none' || this.prefetching) return;
    this.prefetching = true;
    setImmediate(() => this.prefetchStep());
  }

  stop(): void {
    this.end();
    this.post({ type: 'stopped' });
  }

  /** The requester of the FaultService: the run is placed before it returns; false if EAGAIN deferred it. */
  private serveFault(block: PagerBlock, hostOffset: number): boolean {
    if (this.ended) return false;
    const region = this.index.get(block)!;
    const page = hostOffset / block.pageSize;
    this.counters.faults++;
    if (!this.firstFault) {
      this.firstFault = true;
      this.post({ type: 'first-fault', ms: performance.now() - this.started });
    }
    if (this.task.recordWorkingSet) this.recorded.push(region, page);
    let placed: boolean;
    try {
      placed = this.placeRun(region, page, block.pageSize === TARGET_PAGE_SIZE ? FAULT_RUN_PAGES : 1, 'fault');
    } catch (error) {
      this.fail(error as Error); // the thread stays blocked: the VM is ended, never fed zeros
      return false;
    }
    if (!placed && !this.ended) this.defer();
    return placed;
  }

  /**
   * Places the run from `page`: up to `maxPages` pages that are all missing and alike (data: one
   * copy from the file mapping; zeros: one ZEROPAGE). False when EAGAIN deferred it.
   */
  private placeRun(region: number, page: number, maxPages: number, by: 'fault' | 'prefetch'): boolean {
    const block = this.blocks[region];
    const perPage = block.pageSize / TARGET_PAGE_SIZE;
    const run = this.source.runFrom(region, page, maxPages);
    let end = page + 1;
    while (end < run.end && !block.receivedMap.get(end * perPage)) end++;
    const length = (end - page) * block.pageSize;
    this.placing = run.present ? this.source.label : 'zero';
    const srcOffset = this.source.offsetOf(region, page, block.pageSize);
    let placed: boolean;
    try {
      if (run.present) this.source.checkReadable(srcOffset, length);
      placed = this.placer.place(block, page * block.pageSize, run.present ? this.source.bytesOf(region) : null, length, srcOffset);
    } catch (error) {
      if (errorCode(error) === 'ESRCH') return this.gone(`placing in region ${region} failed with ESRCH: the VM is gone`);
      throw new PostcopyError('ERR_RESTORE_FAILED', `region ${region} page ${page}: ${(error as Error).message}`, { cause: error });
    }
    if (!placed) return false;
    if (run.present) this.counters.bytesRead += length;
    if (by === 'fault') this.counters.placedByFault += length / TARGET_PAGE_SIZE;
    else this.counters.placedByPrefetch += length / TARGET_PAGE_SIZE;
    return true;
  }

  private placed(block: PagerBlock, offset: number, length: number, fresh: number): void {
    this.donePages += fresh;
    this.faults.placed(block, offset, length);
    this.checkAllPresent();
  }

  /** REMOVE: the range reads zeros from now on (unregistered: the kernel fills it); other events are not ours. */
  private otherEvent(batch: EventBatch, i: number): void {
    if (batch.kind(i) !== 'remove') return;
    const { start, end } = batch.range(i);
    this.counters.removeEvents++;
    this.blocks.forEach((block, region) => {
      const { base, length } = block.host!;
      const from = Math.max(start, base);
      const to = Math.min(end, base + length);
      if (from >= to) return;
      const offset = from - base;
      const bytes = to - from;
      this.uffd.unregister(from, bytes); // wakes the threads waiting there: they retry onto zeros
      this.faults.forget(block, offset, bytes);
      const pages = bytes / TARGET_PAGE_SIZE;
      this.removed[region].setRange(offset / TARGET_PAGE_SIZE, pages);
      this.donePages += block.markReceived(offset, bytes);
      this.counters.removedPages += pages;
    });
    this.checkAllPresent();
  }

  /** A fault deferred by EAGAIN: tried again once the pending events are read, within the bound. */
  private defer(): void {
    this.counters.eagainRetries++;
    if (!this.deferredSince) this.deferredSince = performance.now();
    if (performance.now() - this.deferredSince > this.task.eagainBoundMs) {
      return this.fail(new PostcopyError('ERR_RESTORE_FAILED', `placements still fail with EAGAIN after ${this.task.eagainBoundMs} ms: the VMM's events never came`));
    }
    this.retryTimer ??= setTimeout(() => {
      this.retryTimer = undefined;
      this.deferredSince = 0;
      this.faults.retryUnsent();
    }, 1);
  }

  /** One prefetch run per turn of the event loop, so that faults are read between runs. */
  private prefetchStep(): void {
    if (this.ended) return;
    const next = this.nextToPrefetch();
    if (!next) return; // every page is there
    try {
      const block = this.blocks[next.region];
      if (!this.placeRun(next.region, next.page, Math.max(1, PREFETCH_RUN_BYTES / block.pageSize), 'prefetch')) {
        this.counters.eagainRetries++;
        setTimeout(() => this.prefetchStep(), 1);
        return;
      }
    } catch (error) {
      return this.fail(error as Error);
    }
    setImmediate(() => this.prefetchStep());
  }

  private nextToPrefetch(): { region: number; page: number } | undefined {
    const ws = this.task.workingSet;
    while (this.nextWorkingSetPage < ws.length) {
      const region = ws[this.nextWorkingSetPage++];
      const page = ws[this.nextWorkingSetPage++];
      const block = this.blocks[region];
      if (block && page < block.usedLength / block.pageSize && !this.isDone(region, page)) return { region, page };
    }
    const s = this.sequential;
    return nextMissingPage(this.blocks, s) ? { region: s.block, page: s.page } : undefined;
  }

  private isDone(region: number, page: number): boolean {
    const block = this.blocks[region];
    return block.receivedMap.get((page * block.pageSize) / TARGET_PAGE_SIZE);
  }

  private checkAllPresent(): void {
    if (this.allPresent || this.donePages < this.totalPages) return;
    this.allPresent = true;
    this.report();
    this.post({ type: 'all-present', ms: performance.now() - this.started });
  }

  private report(): void {
    this.post({ type: 'progress', placedPages: this.donePages, totalPages: this.totalPages, pending: this.faults.waiting, counters: this.counters });
    this.counters = emptyCounters();
  }

  private gone(reason: string): false {
    if (!this.ended) {
      this.end();
      this.post({ type: 'gone', reason });
    }
    return false;
  }

  private fail(error: Error): void {
    if (this.ended) return;
    if (errorCode(error) === 'ESRCH' || (error as { errno?: number }).errno === ESRCH) return void this.gone(error.message);
    this.end();
    this.post({ type: 'failed', message: error.message, code: errorCode(error) ?? 'ERR_POSTCOPY_INTERNAL' });
  }

  /** Stops serving; our copy of the userfaultfd closes (the VMM holds its own). */
  private end(): void {
    if (this.ended) return;
    this.ended = true;
    clearInterval(this.progressTimer);
    clearTimeout(this.retryTimer);
    this.report();
    if (this.task.recordWorkingSet) this.post({ type: 'working-set', pages: this.recorded });
    this.faults.stop();
    this.uffd.close();
    this.source.close();
  }
}
