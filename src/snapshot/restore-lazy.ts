// Lazy restore: the guest runs at once on fresh memory registered for MISSING faults. A fault
// is served from the snapshot file (a run of up to 16 pages that are missing and alike: read
// and copied when present, ZEROPAGE when holes; a whole huge page on hugetlb) by postcopy's own
// FaultService and PagePlacer, while a prefetcher loads the rest behind it, first in the order
// of a recorded working set, then block by block. Nothing is placed twice: runs stop at the
// first page already placed, and the placed bitmap decides when the restore is done.
//
// A page that cannot be read, or page checksums that do not match the trailer at the end, fail
// the restore loudly; a thread waiting for a page is never woken onto a zero page: the guest is
// ended as a failed postcopy destination ends it (endGuestSurely).
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { exitNow, type Mapping, type Userfaultfd } from '../kernel/index.js';
import { RamBlock } from '../memory/index.js';
import { FaultService, PagePlacer, blocktimePerThread, endGuestSurely, latencyReport, nextMissingPage, openForMissing, type GuestBlock, type LatencyReport, type PrefetchCursor } from '../pager/index.js';
import { SnapshotFormatError } from '../wire/snapshot-format.js';
import { SnapshotReader } from './file.js';
import { checkTargets, runFrom } from './restore-targets.js';
import { WorkingSet, type WorkingSetPage } from './working-set.js';
import { hex, PostcopyError, round, TARGET_PAGE_SIZE } from '../base/index.js';

/** A fault places at most this many 4 KiB pages, as postcopy's runs: the thread waits for no more. */
const FAULT_RUN_PAGES = 16;
/** One prefetch step reads this much, then lets the event loop serve faults. */
const PREFETCH_RUN_BYTES = 256 << 10;
const PROGRESS_INTERVAL_MS = 500;
const DEFAULT_GUEST_STOP_TIMEOUT_MS = 3000;

export interface LazyRestoreOptions {
  /** Guest threads, for blocktime (the time during which all of them were blocked). */
  guestThreads?: number;
  /** Prefetched first, in its order. */
  workingSet?: WorkingSet;
  /** Record the pages faulted on, in order: recordedWorkingSet(). */
  recordWorkingSet?: boolean;
  /**
   * Load pages nobody asked for from the start (default true). Without it only faults place
   * pages (a working set recorded so is the guest's own order) until startPrefetch().
   */
  prefetch?: boolean;
  /** Stops the guest after a failure (then the descriptor closes); see endGuestSurely. */
  stopGuest?: () => Promise<void>;
  guestStopTimeoutMs?: number;
  /** A guest that cannot be stopped after a failure; by default the process ends (exitNow). */
  onGuestStuck?: (message: string) => never;
}

export interface LazyRestoreProgress {
  placed_pages: number;
  total_pages: number;
  by_fault: number;
  by_prefetch: number;
  faults: number;
  elapsed_ms: number;
}

export interface LazyRestoreReport {
  mode: 'lazy';
  state: 'running' | 'done' | 'failed';
  bytes: number;
  /** In each block's own page size (a 2 MiB huge page is one). */
  pages: { total: number; by_fault: number; by_prefetch: number; zero: number; already_present: number };
  faults: number;
  /** From the fault's read off the userfaultfd to the placement that ends its wait. */
  latency_us: LatencyReport;
  blocktime_ms: number;
  blocktime_per_thread_ms: Record<string, number>;
  /** From the start until every page was present (null until then). */
  all_present_ms: number | null;
  /** False when the file has no page checksums (or the restore is not done); a mismatch fails it. */
  checksum_verified: boolean;
  working_set: { used: number; recorded: number };
  error?: string;
}

export class LazyRestore extends EventEmitter {
  /** Resolves with the report once every page is present and checked; rejects when the restore fails. */
  readonly finished: Promise<LazyRestoreReport>;
  private resolveFinished!: (report: LazyRestoreReport) => void;
  private rejectFinished!: (error: Error) => void;
  private state: LazyRestoreReport['state'] = 'running';
  private failure: Error | undefined;
  private readonly blocks: GuestBlock[];
  private readonly indexOf = new Map<GuestBlock, number>();
  private readonly uffd: Userfaultfd;
  private readonly placer: PagePlacer<GuestBlock>;
  private readonly faults: FaultService<GuestBlock>;
  /** Running page checksum per block, of every present page read (each is read once). */
  private readonly sums: number[];
  private readonly scratch: Uint8Array;
  private readonly recorded: WorkingSetPage[] = [];
  private readonly workingSet: readonly WorkingSetPage[];
  private readonly started = performance.now();
  private readonly totalTargetPages: number;
  private placedTargetPages = 0;
  private allPresentMs: number | null = null;
  private readonly counts = { byFault: 0, byPrefetch: 0, zero: 0 };
  private nextWorkingSetPage = 0;
  private workingSetLoaded = false;
  private readonly sequential: PrefetchCursor = { block: 0, page: 0 };
  private finishing = false;
  private prefetching = false;
  private readonly progressTimer: NodeJS.Timeout;

  private constructor(
    private readonly reader: SnapshotReader,
    targets: readonly Mapping[],
    private readonly options: LazyRestoreOptions,
  ) {
    super();
    this.finished = new Promise((resolve, reject) => {
      this.resolveFinished = resolve;
      this.rejectFinished = reject;
    });
    this.finished.catch(() => undefined); // a caller that only listens to events is no unhandled rejection
    this.blocks = reader.blocks.map((b, i) => new RamBlock<Mapping>({ idstr: b.idstr, usedLength: b.usedLength, pageSize: b.pageSize, host: targets[i] }));
    this.blocks.forEach((b, i) => this.indexOf.set(b, i));
    this.totalTargetPages = this.blocks.reduce((s, b) => s + b.targetPages, 0);
    this.sums = reader.blocks.map(() => 0);
    this.scratch = new Uint8Array(Math.max(PREFETCH_RUN_BYTES, ...reader.blocks.map((b) => b.pageSize)));
    this.workingSet = options.workingSet?.pages ?? [];
    this.uffd = openForMissing(this.blocks);
    try {
      for (const t of targets) this.uffd.register(t.address, t.length, 'missing');
    } catch (error) {
      this.uffd.close();
      throw error;
    }
    this.placer = new PagePlacer<GuestBlock>(this.uffd, (block, offset, length) => this.placed(block, offset, length));
    this.faults = new FaultService<GuestBlock>(this.uffd, this.blocks, (block, offset) => this.serveFault(block, offset), (error) => this.fail(error), options.guestThreads ?? 0);
    this.faults.start();
    this.progressTimer = setInterval(() => this.emit('progress', this.progress()), PROGRESS_INTERVAL_MS).unref();
    if (options.prefetch ?? true) this.startPrefetch();
  }

  /**
   * Registers each target (fresh, untouched memory, one per block of `reader`, same size and
   * page size) for MISSING faults and starts serving them: resume the guest as soon as this
   * returns. Throws ERR_RESTORE_TARGET when a target does not fit.
   */
  static start(reader: SnapshotReader, targets: readonly Mapping[], options: LazyRestoreOptions = {}): LazyRestore {
    checkTargets(reader, targets);
    return new LazyRestore(reader, targets, options);
  }

  /** Starts loading the pages nobody asked for (at once unless `prefetch: false` was given). */
  startPrefetch(): void {
    if (this.prefetching) return;
    this.prefetching = true;
    setImmediate(() => this.prefetchStep());
  }

  /** Whether page `page` (in the block's page size) of block `block` is in memory. */
  isPlaced(block: number, page: number): boolean {
    const b = this.blocks[block];
    return b.receivedMap.get((page * b.pageSize) / TARGET_PAGE_SIZE);
  }

  /** The pages faulted on so far, in order (empty unless recordWorkingSet). */
  recordedWorkingSet(): WorkingSet {
    return new WorkingSet([...this.recorded]);
  }

  /** Ends the restore as failed (e.g. interrupted); the guest is ended as after any failure. */
  abort(reason: string): void {
    this.fail(new PostcopyError('ERR_RESTORE_FAILED', reason));
  }

  progress(): LazyRestoreProgress {
    return {
      placed_pages: this.placedTargetPages,
      total_pages: this.totalTargetPages,
      by_fault: this.counts.byFault,
      by_prefetch: this.counts.byPrefetch,
      faults: this.faults.faults,
      elapsed_ms: round(performance.now() - this.started),
    };
  }

  report(): LazyRestoreReport {
    const { blocktime } = this.faults;
    return {
      mode: 'lazy',
      state: this.state,
      bytes: this.reader.blocks.reduce((s, b) => s + b.usedLength, 0),
      pages: {
        total: this.reader.blocks.reduce((s, b) => s + b.pages, 0),
        by_fault: this.counts.byFault,
        by_prefetch: this.counts.byPrefetch,
        zero: this.counts.zero,
        already_present: this.placer.alreadyPresent,
      },
      faults: this.faults.faults,
      latency_us: latencyReport(this.faults.latency),
      blocktime_ms: round(blocktime.totalMs),
      blocktime_per_thread_ms: blocktimePerThread(blocktime),
      all_present_ms: this.allPresentMs === null ? null : round(this.allPresentMs),
      checksum_verified: this.state === 'done' && this.reader.pageChecksums,
      working_set: { used: this.workingSet.length, recorded: this.recorded.length },
      ...(this.failure ? { error: this.failure.message } : {}),
    };
  }

  /** The requester of the FaultService: the page is read and placed before it returns. */
  private serveFault(block: GuestBlock, hostOffset: number): boolean {
    const index = this.indexOf.get(block)!;
    const page = hostOffset / block.pageSize;
    if (this.state !== 'running') {
      return this.stuck(`a guest thread faulted on block '${block.idstr}' offset ${hex(hostOffset)} after the restore ${this.state === 'failed' ? `failed (${this.failure?.message})` : 'ended'}`);
    }
    if (this.options.recordWorkingSet) this.recorded.push({ block: index, page });
    try {
      this.placeRun(index, page, block.pageSize === TARGET_PAGE_SIZE ? FAULT_RUN_PAGES : 1, 'fault');
    } catch (error) {
      this.fail(error as Error); // the thread stays blocked: endGuestSurely decides what ends it
    }
    return true;
  }

  /** One prefetch run per turn of the event loop, so that faults are served between runs. */
  private prefetchStep(): void {
    if (this.state !== 'running') return;
    const next = this.nextToPrefetch();
    if (!next) return; // everything is placed: the last placement finishes the restore
    try {
      this.placeRun(next.block, next.page, Math.max(1, PREFETCH_RUN_BYTES / this.blocks[next.block].pageSize), 'prefetch');
    } catch (error) {
      return this.fail(error as Error);
    }
    setImmediate(() => this.prefetchStep());
  }

  private nextToPrefetch(): WorkingSetPage | undefined {
    while (this.nextWorkingSetPage < this.workingSet.length) {
      const p = this.workingSet[this.nextWorkingSetPage++];
      if (!this.isPlaced(p.block, p.page)) return p;
    }
    if (this.workingSet.length && !this.workingSetLoaded) {
      this.workingSetLoaded = true;
      this.emit('working-set-loaded', this.workingSet.length);
    }
    const s = this.sequential;
    return nextMissingPage(this.blocks, s) ? { block: s.block, page: s.page } : undefined;
  }

  /**
   * Places the run from `page`: up to `maxPages` pages that are all missing and all present in
   * the file (one read, one copy) or all holes (one ZEROPAGE); on hugetlb one page per call.
   */
  private placeRun(index: number, page: number, maxPages: number, source: 'fault' | 'prefetch'): void {
    const block = this.blocks[index];
    const info = this.reader.blocks[index];
    const run = runFrom(info.present, page, info.pages, maxPages);
    let end = page + 1;
    while (end < run.end && !this.isPlaced(index, end)) end++;
    const count = end - page;
    const offset = page * block.pageSize;
    const length = count * block.pageSize;
    let data: Uint8Array | null = null;
    if (run.present) {
      data = this.scratch.subarray(0, length);
      try {
        this.reader.readPages(index, page, count, data);
      } catch (error) {
        throw new PostcopyError('ERR_RESTORE_FAILED', `reading block '${block.idstr}' page ${page} of ${this.reader.file} failed: ${(error as Error).message}`, { cause: error });
      }
      this.sums[index] = this.reader.foldPages(this.sums[index], data, block.pageSize, page);
    } else {
      this.counts.zero += count;
    }
    this.placer.place(block, offset, data, length);
    if (source === 'fault') this.counts.byFault += count;
    else this.counts.byPrefetch += count;
  }

  private placed(block: GuestBlock, offset: number, length: number): void {
    this.faults.placed(block, offset, length);
    this.placedTargetPages += length / TARGET_PAGE_SIZE;
    if (this.placedTargetPages >= this.totalTargetPages && !this.finishing) {
      this.finishing = true;
      queueMicrotask(() => this.finish()); // not inside the placement that is still returning
    }
  }

  private finish(): void {
    if (this.state !== 'running') return;
    const missing = this.blocks.find((b) => !b.receivedMap.isFull());
    if (missing) {
      return this.fail(new PostcopyError('ERR_RESTORE_FAILED', `internal: ${this.placedTargetPages} pages counted as placed, but block '${missing.idstr}' still misses ${missing.targetPages - missing.receivedMap.count()}`));
    }
    this.allPresentMs = performance.now() - this.started;
    if (this.reader.pageChecksums) {
      const bad = this.reader.blocks.findIndex((b, i) => this.sums[i] !== b.pageChecksum);
      if (bad >= 0) {
        const b = this.reader.blocks[bad];
        return this.fail(new SnapshotFormatError(this.reader.file, `block ${b.idstr} page data`, b.pagesOffset,
          `checksum ${hex(this.sums[bad])} of the pages restored does not match the trailer (${hex(b.pageChecksum)})`));
      }
    }
    this.state = 'done';
    clearInterval(this.progressTimer);
    // every page is present: no thread can be waiting, and none can fault any more
    this.faults.stop();
    for (const b of this.blocks) this.uffd.unregister(b.host!.address, b.host!.length);
    this.uffd.close();
    const report = this.report();
    this.emit('done', report);
    this.resolveFinished(report);
  }

  private fail(error: Error): void {
    if (this.state !== 'running') return;
    this.state = 'failed';
    this.failure = error;
    clearInterval(this.progressTimer);
    this.emit('failed', error);
    this.rejectFinished(error);
    endGuestSurely({
      uffd: this.uffd,
      blocks: this.blocks,
      registered: true,
      waiting: this.faults.waiting,
      stopFaults: () => this.faults.stop(),
      stopGuest: this.options.stopGuest,
      stopTimeoutMs: this.options.guestStopTimeoutMs ?? DEFAULT_GUEST_STOP_TIMEOUT_MS,
      stuck: (message) => this.stuck(message),
    }, `the restore from ${this.reader.file} failed (${error.message})`);
  }

  private stuck(message: string): never {
    return (this.options.onGuestStuck ?? ((m: string) => exitNow(1, `postcopy: ${m}`)))(message);
  }
}
