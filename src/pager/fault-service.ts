// Fault service: each MISSING fault on a block becomes at most one page request. A page that
// has arrived meanwhile only needs a wake; a page already requested only records one more
// waiting thread. Placement ends the wait of every thread behind the host page. A request is
// never left to chance: one still unanswered after a timeout is sent again (resendOverdue),
// and after a recovery every pending request is sent again (resendAll).
import { performance } from 'node:perf_hooks';
import { PostcopyError, RangeIndex, hex } from '../base/index.js';
import type { EventBatch, Userfaultfd } from '../kernel/index.js';
import type { PagerBlock } from './guest-block.js';
import { Blocktime, LatencyHistogram } from './stats.js';

/** Asks the source for a host page; false when no connection can carry the request now. */
export type PageRequester<B extends PagerBlock = PagerBlock> = (block: B, offset: number, length: number) => boolean;

interface Pending<B> {
  block: B;
  hostOffset: number;
  /** When the first thread started to wait. */
  since: number;
  /** When the page was last asked for (0: not yet sent, e.g. while the connection is down). */
  requestedAt: number;
  threads: number[];
}

export class FaultService<B extends PagerBlock = PagerBlock> {
  readonly latency = new LatencyHistogram();
  readonly blocktime: Blocktime;
  faults = 0;
  /** Requests sent, first times and repeats. */
  requests = 0;
  /** Requests sent again because the page had not arrived in time or the connection changed. */
  resent = 0;
  /**
   * Events other than page faults (REMOVE, UNMAP, ...), in their order among the faults of a
   * batch; without a handler they are ignored (a pager that did not ask for them never gets any).
   */
  onOtherEvent: ((batch: EventBatch, i: number) => void) | undefined;
  /** Each wait that a placement ended, in µs from the fault's read (a pager's own histograms). */
  onLatency: ((us: number) => void) | undefined;
  /** The blocks by address; a block's position here is part of a pending page's key. */
  private readonly blocks: RangeIndex<B>;
  private readonly indexOf = new Map<B, number>();
  /** Requested host pages, keyed by block index and host page number. */
  private readonly pending = new Map<number, Pending<B>>();

  constructor(
    private readonly uffd: Userfaultfd,
    blocks: B[],
    private readonly request: PageRequester<B>,
    private readonly onError: (error: Error) => void,
    guestThreads = 0,
  ) {
    this.blocks = new RangeIndex(blocks.map((b) => ({ start: b.host!.base, end: b.host!.base + b.host!.length, value: b })));
    for (let i = 0; i < this.blocks.size; i++) this.indexOf.set(this.blocks.valueAt(i), i);
    this.blocktime = new Blocktime(guestThreads);
  }

  start(): void {
    this.uffd.onEvents((batch) => this.handle(batch), this.onError);
  }

  stop(): void {
    this.uffd.stopEvents();
  }

  /** Host pages some thread waits for. */
  get waiting(): number {
    return this.pending.size;
  }

  /** When the longest wait still going on began (Infinity: nobody waits). */
  get oldestWaitSince(): number {
    let oldest = Infinity;
    for (const p of this.pending.values()) if (p.since < oldest) oldest = p.since;
    return oldest;
  }

  /** The page waited for longest, for messages. */
  get oldestWait(): { block: B; hostOffset: number; since: number } | undefined {
    let oldest: Pending<B> | undefined;
    for (const p of this.pending.values()) if (!oldest || p.since < oldest.since) oldest = p;
    return oldest;
  }

  /**
   * Called by the placer once a range's received bits are set: ends the waits behind it.
   * Returns how many of the range's host pages had been requested.
   */
  placed(block: B, offset: number, length: number): number {
    if (this.pending.size === 0) return 0;
    const index = this.indexOf.get(block)!;
    const now = performance.now();
    let requested = 0;
    for (let at = offset; at < offset + length; at += block.pageSize) {
      const key = this.key(index, at, block.pageSize);
      const pending = this.pending.get(key);
      if (!pending) continue;
      requested++;
      this.pending.delete(key);
      const us = (now - pending.since) * 1000;
      this.latency.add(us);
      this.onLatency?.(us);
      for (const thread of pending.threads) this.blocktime.resumed(thread, now);
    }
    return requested;
  }

  /** Whether a thread waits for the host page holding `offset`. */
  isWaiting(block: B, offset: number): boolean {
    if (this.pending.size === 0) return false;
    return this.pending.has(this.key(this.indexOf.get(block)!, offset - (offset % block.pageSize), block.pageSize));
  }

  /** Asks again for every page requested more than `timeoutMs` ago (or never sent). */
  resendOverdue(timeoutMs: number): void {
    const now = performance.now();
    for (const p of this.pending.values()) {
      if (now - p.requestedAt >= timeoutMs) this.send(p, now, true);
    }
  }

  /** Asks for every page a thread waits for that could not be asked for yet (the requester said not now). */
  retryUnsent(): void {
    const now = performance.now();
    for (const p of this.pending.values()) if (p.requestedAt === 0) this.send(p, now, true);
  }

  /** Ends the waits on [offset, offset + length) of a block without counting them placed (the range went away). */
  forget(block: B, offset: number, length: number): void {
    if (this.pending.size === 0) return;
    const index = this.indexOf.get(block)!;
    const now = performance.now();
    for (let at = offset - (offset % block.pageSize); at < offset + length; at += block.pageSize) {
      const key = this.key(index, at, block.pageSize);
      const pending = this.pending.get(key);
      if (!pending) continue;
      this.pending.delete(key);
      for (const thread of pending.threads) this.blocktime.resumed(thread, now);
    }
  }

  /** Asks again for every page a thread waits for: a new connection knows of no request. */
  resendAll(): void {
    const now = performance.now();
    for (const p of this.pending.values()) this.send(p, now, true);
  }

  private send(p: Pending<B>, now: number, again: boolean): void {
    if (!this.request(p.block, p.hostOffset, p.block.pageSize)) return;
    p.requestedAt = now;
    this.requests++;
    if (again) this.resent++;
  }

  private key(blockIndex: number, offset: number, pageSize: number): number {
    return blockIndex * 2 ** 32 + offset / pageSize;
  }

  private handle(batch: EventBatch): void {
    const now = performance.now();
    for (let i = 0; i < batch.count; i++) {
      if (!batch.isPagefault(i)) {
        this.onOtherEvent?.(batch, i);
        continue;
      }
      this.faults++;
      const address = batch.address(i);
      const index = this.blocks.indexOf(address);
      if (index < 0) {
        this.onError(new PostcopyError('ERR_POSTCOPY_INTERNAL', `fault at ${hex(address)} is outside every block`));
        continue;
      }
      const block = this.blocks.valueAt(index);
      const offset = address - block.host!.base;
      const hostOffset = offset - (offset % block.pageSize);
      if (block.isHostPageReceived(hostOffset)) {
        // placed between the fault and this read: the thread may still be asleep
        this.uffd.tryWake(block.host!.base + hostOffset, block.pageSize);
        continue;
      }
      const thread = batch.threadId(i);
      this.blocktime.blocked(thread, now);
      const key = this.key(index, hostOffset, block.pageSize);
      const pending = this.pending.get(key);
      if (pending) {
        pending.threads.push(thread);
        continue;
      }
      const fresh: Pending<B> = { block, hostOffset, since: now, requestedAt: 0, threads: [thread] };
      this.pending.set(key, fresh);
      this.send(fresh, now, false);
    }
  }
}
