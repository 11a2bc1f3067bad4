// Sending pages: the background stream in batches (on the main channel, or handed to the bulk
// channels' workers by runs), and requested pages, which jump the queue on the preempt channel
// (when there is one) the moment they are read; the scan then goes on right after them.
import { performance } from 'node:perf_hooks';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { PostcopyError, TARGET_PAGE_SIZE } from '../base/index.js';
import { isZeroPage } from '../memory/index.js';
import type { ConnectedChannel } from '../transport/index.js';
import type { GuestBlock } from '../pager/index.js';
import type { BulkSenders } from './bulk-senders.js';
import type { PageMap } from './page-map.js';
import type { SourceCounts } from './report.js';
import type { SourceChannels } from './source-channels.js';

/** A batch of the stream ends at this many pages or `batchMs`, whichever comes first. */
const BATCH_PAGES = 256;
/** Target pages handed to the bulk channels between two looks at the return path. */
const BULK_BATCH_PAGES = 1024;

export type StreamKind = 'precopy' | 'postcopy';

/** What the stream asks of the engine between batches. */
export interface StreamControl {
  /** Throws the failure or the break of the connection, if any. */
  throwIfBroken(): void;
  progress(): void;
  /** Waits while the stream is ahead of its rate (precopyMaxMiBs, postcopyMaxMiBs). */
  rateLimit(kind: StreamKind): Promise<void>;
}

export class PageSender {
  /** The bulk channels of the current connection, if the migration has any. */
  bulk: BulkSenders | undefined;
  private requests: { block: GuestBlock; start: number; length: number }[] = [];
  /** Requested host pages skipped as already sent: asked for again, they go again. */
  private readonly skippedRequests = new Set<number>();
  private readonly views: Uint8Array[];

  constructor(
    private readonly map: PageMap,
    private readonly channels: SourceChannels,
    private readonly counts: SourceCounts,
    private readonly control: StreamControl,
    /** A batch ends after this many milliseconds (a request read meanwhile waits for at most one batch). */
    private readonly batchMs: number,
  ) {
    this.views = map.blocks.map((b) => b.host!.bytes());
  }

  /** A page request read from the return path; `serve` (postcopy): answered at once. */
  request(block: GuestBlock, start: number, length: number, serve: boolean): void {
    this.requests.push({ block, start, length });
    if (serve) this.serveRequests();
  }

  /** A new connection knows of no request: the destination asks again. */
  forgetRequests(): void {
    this.requests = [];
    this.skippedRequests.clear();
  }

  /** Requested pages jump the queue; the scan then continues right after the last of them. */
  serveRequests(): void {
    if (!this.requests.length || this.channels.broken) return;
    const target = this.channels.forRequests;
    const socket = target.channel.socket;
    socket.cork(); // one write per request
    try {
      while (this.requests.length) {
        const { block, start, length } = this.requests.shift()!;
        const blockIndex = this.map.indexOf(block);
        const lastHost = Math.floor((start + length - 1) / block.pageSize);
        for (let host = Math.floor(start / block.pageSize); host <= lastHost; host++) this.serveRequest(target, blockIndex, host);
        this.map.cursor = { block: blockIndex, page: (lastHost + 1) * (block.pageSize / TARGET_PAGE_SIZE) };
      }
    } finally {
      socket.uncork();
    }
  }

  /** A page already sent is in flight: skipped once; asked for again, it did not arrive: sent again. */
  private serveRequest(target: ConnectedChannel<GuestBlock>, blockIndex: number, host: number): void {
    if (this.sendHostPage(target, blockIndex, host, 'requested')) return;
    const key = blockIndex * 2 ** 32 + host;
    if (this.skippedRequests.delete(key)) {
      this.sendHostPage(target, blockIndex, host, 'requested', true);
      this.counts.requestsResent++;
    } else {
      this.skippedRequests.add(key);
      this.counts.requestsSkipped++;
    }
  }

  /**
   * Streams dirty pages from the cursor until the bitmap is empty, `more()` says stop, or the
   * connection breaks. A batch always sends at least one host page when any is dirty: whether
   * the stream is done is decided by the bitmap, never by a batch that happened to be empty.
   */
  async stream(more: () => boolean, kind: StreamKind): Promise<void> {
    const control = this.control;
    let lastProgress = performance.now();
    for (;;) {
      control.throwIfBroken();
      if (kind === 'postcopy') this.serveRequests();
      const main = this.channels.main;
      const bulk = this.bulk;
      if (!(bulk ? this.sendBatchBulk(bulk, kind) : this.sendBatch(main, kind))) {
        if (this.map.nextDirty()) throw new PostcopyError('ERR_POSTCOPY_INTERNAL', 'internal: a stream batch sent nothing while pages are dirty');
        return;
      }
      if (performance.now() - lastProgress > 250) {
        control.progress();
        lastProgress = performance.now();
      }
      if (!more()) return;
      await control.rateLimit(kind);
      // always let the return path in between batches (a write the kernel took at once still
      // leaves needDrain set until the next tick), then wait if the socket is really full
      await yieldToLoop();
      control.throwIfBroken();
      if (bulk) await Promise.race([bulk.whenRoom(), this.channels.whenBroken()]);
      else if (main.channel.socket.writableNeedDrain) await Promise.race([main.channel.drained(), this.channels.whenBroken()]);
    }
  }

  /**
   * Sends one host page (all its target pages, on one channel) if any of it is still dirty,
   * or whatever its state when `force` (a page asked for again).
   */
  private sendHostPage(target: ConnectedChannel<GuestBlock>, blockIndex: number, hostPage: number, kind: StreamKind | 'requested', force = false): boolean {
    const map = this.map;
    const block = map.blocks[blockIndex];
    const perHost = block.pageSize / TARGET_PAGE_SIZE;
    const first = hostPage * perHost;
    const end = first + perHost;
    if (!force && map.isClean(blockIndex, first, perHost)) return false;
    const view = this.views[blockIndex];
    const { channel, encoder } = target;
    // in postcopy a host page goes whole: the destination places it atomically
    for (let page = first; page < end; page++) {
      if (kind === 'precopy' && !map.isDirty(blockIndex, page)) continue;
      const offset = page * TARGET_PAGE_SIZE;
      const data = view.subarray(offset, offset + TARGET_PAGE_SIZE);
      const unread = map.isUntouched(blockIndex, page);
      if (unread || isZeroPage(data)) {
        channel.send(encoder.ramZero(block, offset));
        this.counts.zero++;
        if (unread) this.counts.untouched++;
      } else {
        const [head, body] = encoder.ramPageParts(block, offset, data);
        channel.send(head);
        channel.send(body);
      }
      this.counts[kind]++;
    }
    map.take(blockIndex, first, end);
    return true;
  }

  /** One batch: up to BATCH_PAGES target pages or `batchMs`, at least one host page. False when nothing is dirty. */
  private sendBatch(target: ConnectedChannel<GuestBlock>, kind: StreamKind): boolean {
    const socket = target.channel.socket;
    socket.cork();
    let sent = 0;
    try {
      const until = performance.now() + this.batchMs;
      while (sent < BATCH_PAGES) {
        if (sent > 0 && (sent & 15) === 0 && performance.now() >= until) break;
        const next = this.map.nextDirty();
        if (!next) break;
        const perHost = this.map.blocks[next.block].pageSize / TARGET_PAGE_SIZE;
        const host = Math.floor(next.page / perHost);
        this.sendHostPage(target, next.block, host, kind);
        this.map.cursor = { block: next.block, page: (host + 1) * perHost };
        sent += perHost;
      }
    } finally {
      socket.uncork();
    }
    return sent > 0;
  }

  /**
   * One batch for the bulk channels: runs of dirty pages, each within one stripe (so on one
   * channel), whole host pages of huge-page blocks, up to BULK_BATCH_PAGES. The workers copy;
   * this only walks the bitmap. False when nothing is dirty.
   */
  private sendBatchBulk(bulk: BulkSenders, kind: StreamKind): boolean {
    const queued: ({ block: number; pages: number[]; untouched: number[] } | undefined)[] = [];
    const flush = (channel: number) => {
      const q = queued[channel];
      if (q) bulk.queue(channel, q.block, q.pages, q.untouched);
      queued[channel] = undefined;
    };
    let sent = 0;
    while (sent < BULK_BATCH_PAGES) {
      const next = this.map.nextDirty();
      if (!next) break;
      const { from, to } = this.bulkRun(bulk, next.block, next.page);
      const channel = bulk.channelOf(next.block, from);
      if (queued[channel] && queued[channel]!.block !== next.block) flush(channel);
      const q = (queued[channel] ??= { block: next.block, pages: [], untouched: [] });
      for (let page = from; page < to; page++) {
        const unread = this.map.isUntouched(next.block, page) ? 1 : 0;
        q.pages.push(page);
        q.untouched.push(unread);
        this.counts.untouched += unread;
      }
      this.map.take(next.block, from, to);
      this.counts[kind] += to - from;
      this.map.cursor = { block: next.block, page: to };
      sent += to - from;
    }
    for (let channel = 0; channel < bulk.count; channel++) flush(channel);
    return sent > 0;
  }

  /** The run of pages from `page` that goes on one channel: a whole huge page, or dirty pages within one stripe. */
  private bulkRun(bulk: BulkSenders, block: number, page: number): { from: number; to: number } {
    const perHost = this.map.blocks[block].pageSize / TARGET_PAGE_SIZE;
    if (perHost > 1) {
      const from = page - (page % perHost);
      return { from, to: from + perHost };
    }
    const stripe = bulk.stripePages(block);
    return { from: page, to: Math.min(this.map.dirtyRunEnd(block, page), (Math.floor(page / stripe) + 1) * stripe) };
  }
}
