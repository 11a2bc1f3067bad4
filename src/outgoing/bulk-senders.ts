// The source's bulk channels: one sender worker each (bulk-sender-worker.ts). The main thread
// picks the pages and the channel, the workers copy and write. A page always goes on the same
// channel (stripes of STRIPE_PAGES, or of one huge page, dealt round-robin), so a page sent
// again in a later precopy round can never overtake its older copy on another channel; a SYNC
// on every channel, answered by the main channel's MULTIFD_FLUSH, orders them against the
// commands of the switchover.
import { closeSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { setSocketBuffers, shutdownSocket } from '../kernel/index.js';
import type { ConnectedChannel } from '../transport/index.js';
import type { BulkSenderTask, FromBulkSender, ToBulkSender } from './bulk-protocol.js';
import type { GuestBlock } from '../pager/index.js';
import { PostcopyError, TARGET_PAGE_SIZE } from '../base/index.js';

const WORKER_PATH = join(__dirname, 'bulk-sender-worker.js');
/** Target pages of a 4 KiB block that go on the same channel, in a row. */
const STRIPE_PAGES = 64;
/** Pages queued to one worker and not yet written to its socket: more waits (bounds the memory held). */
const MAX_IN_FLIGHT_PAGES = 1024;
/**
 * In postcopy, less: a request for a page already handed to a bulk channel is skipped (the
 * design's rule), so the guest thread waits behind everything queued ahead of that page, in
 * the worker and in both kernels' socket buffers. Those are bounded too (POSTCOPY_SOCKET_BYTES
 * here, the destination's worker its receive buffer).
 */
const POSTCOPY_IN_FLIGHT_PAGES = 128;
const POSTCOPY_SOCKET_BYTES = 256 << 10;

export class BulkSenders {
  readonly count: number;
  bytesSent = 0;
  zeroPages = 0;
  private readonly workers: Worker[];
  private readonly inFlight: number[];
  private readonly ended: boolean[];
  private room: (() => void) | undefined;
  private endedAll: (() => void) | undefined;
  private stopped = false;
  private maxInFlight = MAX_IN_FLIGHT_PAGES;
  /** Each worker's descriptor, until it exits (then closed). */
  private readonly descriptors: (number | undefined)[] = [];

  constructor(channels: ConnectedChannel<GuestBlock>[], private readonly blocks: readonly GuestBlock[], timing: Pick<BulkSenderTask, 'heartbeatMs' | 'stallMs'>, private readonly onBroken: (error: Error) => void) {
    this.count = channels.length;
    this.inFlight = channels.map(() => 0);
    this.ended = channels.map(() => false);
    this.workers = channels.map(({ channel }, index) => {
      const task: BulkSenderTask = {
        channel: channel.name,
        socketFd: channel.takeDescriptor(),
        blocks: blocks.map((b) => ({ idstr: b.idstr, address: b.host!.base, length: b.postcopyLength, pageSize: b.pageSize })),
        ...timing,
      };
      const worker = new Worker(WORKER_PATH, { workerData: task });
      // closed here, not by the worker (fs.close of a descriptor it did not open warns there),
      // and only once it is gone: no write of its can reach a descriptor reused since
      this.descriptors[index] = task.socketFd;
      worker.on('exit', () => {
        this.descriptors[index] = undefined;
        closeSync(task.socketFd);
      });
      worker.on('message', (m: FromBulkSender) => this.message(index, m));
      worker.on('error', (error) => this.broken(new PostcopyError('ERR_POSTCOPY_INTERNAL', `${channel.name} worker: ${error.message}`, { cause: error })));
      return worker;
    });
  }

  /** Target pages of a block that go on one channel in a row (a huge page is never split). */
  stripePages(blockIndex: number): number {
    return Math.max(STRIPE_PAGES, this.blocks[blockIndex].pageSize / TARGET_PAGE_SIZE);
  }

  /** The channel of a target page: its stripe's, dealt round-robin. */
  channelOf(blockIndex: number, page: number): number {
    return (Math.floor(page / this.stripePages(blockIndex)) + blockIndex) % this.count;
  }

  /** Queues target pages (ascending) of one block on a channel; `untouched[i]` 1: pages[i] is zero, go unread. */
  queue(channel: number, blockIndex: number, pages: readonly number[], untouched: readonly number[]): void {
    if (this.stopped || !pages.length) return;
    this.inFlight[channel] += pages.length;
    this.post(channel, { type: 'pages', block: blockIndex, pages: Float64Array.from(pages), untouched: Uint8Array.from(untouched) });
  }

  get hasRoom(): boolean {
    return this.inFlight.every((n) => n < this.maxInFlight);
  }

  /** Postcopy has begun: a shorter queue, and smaller send buffers (see POSTCOPY_IN_FLIGHT_PAGES). */
  enterPostcopy(): void {
    this.maxInFlight = POSTCOPY_IN_FLIGHT_PAGES;
    for (const fd of this.descriptors) if (fd !== undefined) setSocketBuffers(fd, POSTCOPY_SOCKET_BYTES, 0);
  }

  /** Resolves once every channel has room again (or the channels stop). */
  whenRoom(): Promise<void> {
    if (this.hasRoom || this.stopped) return Promise.resolve();
    return new Promise((resolve) => (this.room = resolve));
  }

  sync(): void {
    for (let i = 0; i < this.count; i++) this.post(i, { type: 'sync' });
  }

  /** END on every channel after what is queued; resolves when all are written and closed. */
  end(): Promise<void> {
    for (let i = 0; i < this.count; i++) this.post(i, { type: 'end' });
    return new Promise((resolve) => {
      this.endedAll = resolve;
      this.checkEnded();
    });
  }

  /**
   * After a break: the workers go (pages they held are among those the destination lacks). A
   * worker blocked writing to a peer that stopped reading cannot be terminated until its write
   * returns: shutting its socket down makes that write fail at once, not at its stall bound.
   */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    for (const fd of this.descriptors) if (fd !== undefined) shutdownSocket(fd);
    for (const worker of this.workers) void worker.terminate();
    this.room?.();
  }

  private message(index: number, m: FromBulkSender): void {
    if (this.stopped) return;
    switch (m.type) {
      case 'sent':
        this.inFlight[index] -= m.pages;
        this.zeroPages += m.zero;
        this.bytesSent += m.bytes;
        if (this.room && this.hasRoom) {
          const room = this.room;
          this.room = undefined;
          room();
        }
        return;
      case 'ended':
        this.ended[index] = true;
        void this.workers[index].terminate();
        return this.checkEnded();
      case 'failed':
        return this.broken(new PostcopyError('ERR_POSTCOPY_CHANNEL_CLOSED', m.message));
    }
  }

  private checkEnded(): void {
    if (this.endedAll && this.ended.every(Boolean)) this.endedAll();
  }

  private broken(error: Error): void {
    if (this.stopped) return;
    this.onBroken(error);
  }

  private post(channel: number, message: ToBulkSender): void {
    this.workers[channel].postMessage(message);
  }
}
