// The source of a postcopy migration: precopy rounds over a dirty log, switchover (pause the
// guest, final sync, discard what changed since it was sent, LISTEN, device state, RUN), then
// the postcopy phase, where a background scan streams what is left and a page request jumps
// the queue (on the preempt channel when there is one) and the scan resumes right after it.
import { performance } from 'node:perf_hooks';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import type { Mapping } from '../kernel/index.js';
import { Bitmap, TARGET_PAGE_SIZE, type RamBlock, type RamList } from '../memory/index.js';
import type { ReturnPathEvent } from '../wire/index.js';
import type { ConnectedChannel } from '../transport/index.js';
import { createDirtyLog, type DirtyLog } from './dirty-log.js';

export type SourceBlock = RamBlock<Mapping>;

export interface OutgoingOptions {
  blocks: RamList<Mapping>;
  main: ConnectedChannel<SourceBlock>;
  /** Carries only requested pages, so a request never waits behind the background stream. */
  preempt?: ConnectedChannel<SourceBlock>;
  /** Seconds of precopy before switching to postcopy; 0 = straight to postcopy. */
  precopySeconds: number;
  /** Stop precopy early once fewer pages than this are dirty after a round. */
  convergedPages?: number;
  maxRounds?: number;
  /** Parks the guest at a barrier (nothing half-written) for the switchover. */
  pauseGuest: () => Promise<void>;
  /** Device state sent in PACKAGED before RUN. */
  deviceState?: () => Uint8Array;
  dirtyLog?: DirtyLog['kind'];
  onProgress?: (progress: OutgoingProgress) => void;
}

export interface OutgoingProgress {
  phase: 'precopy' | 'switchover' | 'postcopy' | 'complete';
  round: number;
  pagesSent: number;
  pagesLeft: number;
  bytesSent: number;
  elapsedMs: number;
}

export interface OutgoingReport {
  dirty_log: DirtyLog['kind'];
  rounds: number;
  pages_sent: { precopy: number; postcopy: number; requested: number; zero: number };
  requests: { received: number; skipped: number };
  discarded_pages: number;
  downtime_ms: number;
  /** Where the downtime went: parking the guest, the final dirty sync, discards and commands. */
  downtime_parts_ms: { pause: number; sync: number; commands: number };
  precopy_ms: number;
  postcopy_ms: number;
  total_ms: number;
  bytes_sent: number;
}

/** A batch of the stream ends at this many pages or this much time, whichever comes first. */
const BATCH_PAGES = 256;
const BATCH_MS = 0.2;

interface Cursor {
  block: number;
  page: number;
}

export class OutgoingMigration {
  private readonly blocks: SourceBlock[];
  /** Target pages still to send, per block. */
  private readonly dirty = new Map<SourceBlock, Bitmap>();
  /** Target pages sent at least once: a page dirtied after it was sent must be discarded. */
  private readonly sent = new Map<SourceBlock, Bitmap>();
  private readonly views = new Map<SourceBlock, Uint8Array>();
  private readonly requests: { block: SourceBlock; start: number; length: number }[] = [];
  private cursor: Cursor = { block: 0, page: 0 };
  private phase: OutgoingProgress['phase'] = 'precopy';
  private round = 0;
  private readonly started = performance.now();
  private shut: Promise<number>;
  private failure: Error | undefined;
  readonly counts = { precopy: 0, postcopy: 0, requested: 0, zero: 0, requestsReceived: 0, requestsSkipped: 0, discarded: 0 };

  constructor(private readonly options: OutgoingOptions) {
    this.blocks = [...options.blocks];
    for (const block of this.blocks) {
      const dirty = new Bitmap(block.targetPages);
      dirty.fill();
      this.dirty.set(block, dirty);
      this.sent.set(block, new Bitmap(block.targetPages));
      this.views.set(block, block.host!.bytes());
    }
    this.shut = this.listenReturnPath();
  }

  private listenReturnPath(): Promise<number> {
    const { channel, returnPath } = this.options.main;
    return new Promise<number>((resolve, reject) => {
      const handle = (event: ReturnPathEvent<SourceBlock>) => {
        if (event.type === 'req-pages') {
          this.counts.requestsReceived++;
          this.requests.push({ block: event.block, start: event.start, length: event.length });
          // a request never waits for the stream: it is answered as soon as it is read
          if (this.phase === 'postcopy') this.serveRequests();
        } else if (event.type === 'shut') {
          resolve(event.status);
        }
      };
      const pump = () => {
        try {
          for (let event = returnPath.next(); event; event = returnPath.next()) handle(event);
        } catch (error) {
          this.failure = error as Error;
          reject(error);
        }
      };
      channel.socket.on('data', (chunk: Buffer) => {
        returnPath.push(chunk);
        pump();
      });
      channel.socket.on('close', () => {
        const error = new Error(`main channel closed by the destination in phase ${this.phase}`);
        this.failure ??= error;
        reject(error);
      });
      channel.socket.resume();
      pump();
    });
  }

  private get totalDirty(): number {
    let n = 0;
    for (const bitmap of this.dirty.values()) n += bitmap.count();
    return n;
  }

  private progress(): void {
    const bytesSent = this.options.main.channel.bytesSent + (this.options.preempt?.channel.bytesSent ?? 0);
    this.options.onProgress?.({
      phase: this.phase,
      round: this.round,
      pagesSent: this.counts.precopy + this.counts.postcopy + this.counts.requested,
      pagesLeft: this.totalDirty,
      bytesSent,
      elapsedMs: performance.now() - this.started,
    });
  }

  async run(): Promise<OutgoingReport> {
    const { main } = this.options;
    this.shut.catch(() => undefined); // observed below
    const log = createDirtyLog(this.blocks.map((block) => ({
      mapping: block.host!,
      onDirty: (offset, length) => this.dirty.get(block)!.setRange(offset / TARGET_PAGE_SIZE, length / TARGET_PAGE_SIZE),
    })), this.options.dirtyLog);
    main.channel.send(main.encoder.openReturnPath());
    main.channel.send(main.encoder.memSize(this.blocks.map((b) => ({ idstr: b.idstr, usedLength: b.usedLength, pageSize: b.pageSize }))));
    main.channel.send(main.encoder.endRam());
    main.channel.send(main.encoder.advise(this.options.blocks.pageSizeSummary));

    // precopy: every page once, then what the guest dirtied, until converged or out of time
    log.start();
    const precopyStart = performance.now();
    if (this.options.precopySeconds > 0) {
      const deadline = precopyStart + this.options.precopySeconds * 1000;
      const converged = this.options.convergedPages ?? 256;
      while (performance.now() < deadline && this.round < (this.options.maxRounds ?? 1000)) {
        this.round++;
        await this.stream(main, () => performance.now() < deadline, 'precopy');
        log.sync();
        this.progress();
        if (this.totalDirty <= converged) break;
      }
    }
    const precopyMs = performance.now() - precopyStart;

    // switchover
    this.phase = 'switchover';
    const downtimeStart = performance.now();
    await this.options.pauseGuest();
    const paused = performance.now();
    log.sync();
    log.stop();
    const synced = performance.now();
    this.sendDiscards();
    main.channel.send(main.encoder.listen());
    if (this.options.deviceState) main.channel.send(main.encoder.packaged(this.options.deviceState()));
    main.channel.send(main.encoder.run());
    const downtimeMs = performance.now() - downtimeStart;
    const downtimeParts = { pause: paused - downtimeStart, sync: synced - paused, commands: performance.now() - synced };
    this.progress();

    // postcopy: background scan, requests first
    this.phase = 'postcopy';
    const postcopyStart = performance.now();
    this.cursor = { block: 0, page: 0 };
    await this.stream(main, () => true, 'postcopy');
    if (main.encoder.ramOpen) main.channel.send(main.encoder.endRam());
    const { preempt } = this.options;
    if (preempt) {
      if (preempt.encoder.ramOpen) preempt.channel.send(preempt.encoder.endRam());
      preempt.channel.send(preempt.encoder.eof());
    }
    main.channel.send(main.encoder.complete());
    main.channel.send(main.encoder.eof());
    this.phase = 'complete';
    this.progress();
    const status = await this.shut;
    if (status !== 0) throw new Error(`the destination ended with status ${status}`);
    const postcopyMs = performance.now() - postcopyStart;
    main.channel.close();
    preempt?.channel.close();
    return {
      dirty_log: log.kind,
      rounds: this.round,
      pages_sent: { precopy: this.counts.precopy, postcopy: this.counts.postcopy, requested: this.counts.requested, zero: this.counts.zero },
      requests: { received: this.counts.requestsReceived, skipped: this.counts.requestsSkipped },
      discarded_pages: this.counts.discarded,
      downtime_ms: Math.round(downtimeMs * 100) / 100,
      downtime_parts_ms: {
        pause: Math.round(downtimeParts.pause * 100) / 100,
        sync: Math.round(downtimeParts.sync * 100) / 100,
        commands: Math.round(downtimeParts.commands * 100) / 100,
      },
      precopy_ms: Math.round(precopyMs),
      postcopy_ms: Math.round(postcopyMs),
      total_ms: Math.round(performance.now() - this.started),
      bytes_sent: main.channel.bytesSent + (preempt?.channel.bytesSent ?? 0),
    };
  }

  /**
   * Pages dirtied after they were sent are stale on the destination: discard them there,
   * widened to whole host pages (a huge page is placed whole, so it is re-sent whole).
   */
  private sendDiscards(): void {
    const { main } = this.options;
    if (main.encoder.ramOpen) main.channel.send(main.encoder.endRam());
    for (const block of this.blocks) {
      const dirty = this.dirty.get(block)!;
      const perHost = block.pageSize / TARGET_PAGE_SIZE;
      const ranges: [number, number][] = [];
      // only pages sent before can be stale there: walk what was sent, find what is dirty
      for (const [start, length] of this.sent.get(block)!.ranges()) {
        for (let page = dirty.findNextSet(start); page < start + length; page = dirty.findNextSet(page)) {
          const host = page - (page % perHost);
          const offset = host * TARGET_PAGE_SIZE;
          const last = ranges[ranges.length - 1];
          const end = last ? last[0] + last[1] : -1;
          if (end < offset) ranges.push([offset, block.pageSize]);
          else if (end === offset) last[1] += block.pageSize;
          if (end <= offset) this.counts.discarded += perHost; // else: already in the last range
          page = host + perHost;
          if (page >= dirty.size) break;
        }
      }
      if (ranges.length) main.channel.send(main.encoder.discard(block, ranges));
    }
  }

  /** Sends one host page (all its target pages, on one channel) if any of it is still dirty. */
  private sendHostPage(target: ConnectedChannel<SourceBlock>, block: SourceBlock, hostPage: number, kind: 'precopy' | 'postcopy' | 'requested'): boolean {
    const perHost = block.pageSize / TARGET_PAGE_SIZE;
    const first = hostPage * perHost;
    const dirty = this.dirty.get(block)!;
    if (dirty.isRangeClear(first, perHost)) return false;
    // in postcopy a host page goes whole: the destination places it atomically
    const from = kind === 'precopy' ? dirty.findNextSet(first) : first;
    const view = this.views.get(block)!;
    const { channel, encoder } = target;
    for (let page = from; page < first + perHost; page++) {
      if (kind === 'precopy' && !dirty.get(page)) continue;
      const offset = page * TARGET_PAGE_SIZE;
      const data = view.subarray(offset, offset + TARGET_PAGE_SIZE);
      if (isZero(data)) {
        channel.send(encoder.ramZero(block, offset));
        this.counts.zero++;
      } else {
        const [head, body] = encoder.ramPageParts(block, offset, data);
        channel.send(head);
        channel.send(body);
      }
      this.counts[kind]++;
    }
    dirty.clearRange(first, perHost);
    this.sent.get(block)!.setRange(first, perHost);
    return true;
  }

  /** Requested pages jump the queue; the scan then continues right after the last of them. */
  private serveRequests(): void {
    if (!this.requests.length) return;
    const target = this.options.preempt ?? this.options.main;
    const socket = target.channel.socket;
    socket.cork(); // one write per request
    while (this.requests.length) {
      const { block, start, length } = this.requests.shift()!;
      const firstHost = Math.floor(start / block.pageSize);
      const lastHost = Math.floor((start + length - 1) / block.pageSize);
      for (let host = firstHost; host <= lastHost; host++) {
        if (!this.sendHostPage(target, block, host, 'requested')) this.counts.requestsSkipped++;
      }
      this.cursor = { block: this.blocks.indexOf(block), page: (lastHost + 1) * (block.pageSize / TARGET_PAGE_SIZE) };
    }
    socket.uncork();
  }

  /** Streams dirty pages from the cursor until none is left or `more()` says stop. */
  private async stream(channel: ConnectedChannel<SourceBlock>, more: () => boolean, kind: 'precopy' | 'postcopy'): Promise<void> {
    const socket = channel.channel.socket;
    let lastProgress = performance.now();
    for (;;) {
      if (this.failure) throw this.failure;
      if (kind === 'postcopy') this.serveRequests();
      socket.cork();
      let sent = 0;
      // a request read meanwhile waits for at most one batch: keep them short in time
      const until = performance.now() + BATCH_MS;
      while (sent < BATCH_PAGES && (sent & 15 || performance.now() < until)) {
        const next = this.nextDirty();
        if (!next) break;
        const block = this.blocks[next.block];
        const perHost = block.pageSize / TARGET_PAGE_SIZE;
        const host = Math.floor(next.page / perHost);
        this.sendHostPage(channel, block, host, kind);
        this.cursor = { block: next.block, page: (host + 1) * perHost };
        sent += perHost;
      }
      socket.uncork();
      if (performance.now() - lastProgress > 250) {
        this.progress();
        lastProgress = performance.now();
      }
      if (sent === 0 || !more()) break;
      // always let the return path in between batches (a write the kernel took at once still
      // leaves needDrain set until the next tick), then wait if the socket is really full
      await yieldToLoop();
      if (socket.writableNeedDrain) await channel.channel.drained();
    }
  }

  /** The next dirty target page at or after the cursor, wrapping around once. */
  private nextDirty(): Cursor | undefined {
    const n = this.blocks.length;
    for (let i = 0; i <= n; i++) {
      const index = (this.cursor.block + i) % n;
      const dirty = this.dirty.get(this.blocks[index])!;
      const from = i === 0 ? this.cursor.page : 0;
      const page = from < dirty.size ? dirty.findNextSet(from) : dirty.size;
      if (page < dirty.size) return { block: index, page };
    }
    return undefined;
  }
}

function isZero(page: Uint8Array): boolean {
  const words = new Int32Array(page.buffer, page.byteOffset, TARGET_PAGE_SIZE / 4);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  return true;
}
