// The destination's bulk channels: each one's connection goes to a worker (BulkReceiver) that
// applies its packets. Channels that join before ADVISE wait (the blocks are checked and THP
// is off only then); at LISTEN every worker switches to atomic placement.
import { closeSync } from 'node:fs';
import type { Userfaultfd } from '../kernel/index.js';
import type { Channel } from '../transport/index.js';
import type { GuestBlock } from '../pager/index.js';
import { BulkReceiver, type TakenChannel } from './bulk-receiver.js';

export interface BulkChannelEvents {
  /** Pages of `block` in memory now (byte ranges); `zero` of them zero pages. */
  applied(block: GuestBlock, ranges: Float64Array, counts: { pages: number; zero: number }): void;
  synced(): void;
  ended(): void;
  /** A malformed packet or a failed placement (`connection` false), or a broken connection. */
  failed(error: Error, connection: boolean): void;
}

export class BulkChannels {
  private readonly receivers: (BulkReceiver | undefined)[] = [];
  /** Channels that joined before ADVISE: started at it (their bytes wait in the kernel). */
  private pending: TakenChannel[] = [];
  private ready = false;
  /** Bytes received on the bulk channels of earlier connections. */
  private bytesOfEarlier = 0;

  constructor(
    /** The destination's blocks (allocated on MEM_SIZE, perhaps: read when a worker starts). */
    private readonly blocks: Iterable<GuestBlock>,
    private readonly stallMs: number,
    private readonly events: BulkChannelEvents,
  ) {}

  has(index: number): boolean {
    return this.receivers[index] !== undefined || this.pending.some((c) => c.index === index);
  }

  /**
   * A bulk channel joined: its worker starts now, or at ADVISE. `uffd`: already listening. The
   * descriptor is taken at once, in the tick of HELLO_ACK: the source streams as soon as it
   * reads the ACK, and whatever this thread's socket read after that would be lost with it.
   */
  add(channel: Channel, uffd: Userfaultfd | undefined): void {
    this.startWorker({ name: channel.name, index: channel.index, fd: channel.takeDescriptor() }, uffd);
  }

  private startWorker(channel: TakenChannel, uffd: Userfaultfd | undefined): void {
    if (!this.ready) {
      this.pending.push(channel);
      return;
    }
    const receiver: BulkReceiver = new BulkReceiver(channel, [...this.blocks], uffd, this.stallMs, {
      applied: (block, ranges, counts) => this.isCurrent(receiver) && this.events.applied(block, ranges, counts),
      synced: () => this.events.synced(),
      ended: () => this.events.ended(),
      failed: (_, error, connection) => this.isCurrent(receiver) && this.events.failed(error, connection),
    });
    this.receivers[channel.index] = receiver;
  }

  /** ADVISE: workers write precopy pages from now on (never into a THP region). */
  start(): void {
    this.ready = true;
    for (const channel of this.pending.splice(0)) this.startWorker(channel, undefined);
  }

  /** LISTEN: pages are placed atomically through `uffd` from now on. */
  listen(uffd: Userfaultfd): void {
    for (const receiver of this.receivers) receiver?.listen(uffd);
  }

  /** Whether the `expected` bulk channels have all synced; if so the next flush starts afresh. */
  takeSync(expected: number): boolean {
    for (let i = 0; i < expected; i++) if (!this.receivers[i]?.synced) return false;
    for (const receiver of this.receivers) if (receiver) receiver.synced = false;
    return true;
  }

  get endedCount(): number {
    return this.receivers.filter((r) => r?.ended).length;
  }

  get bytesReceived(): number {
    return this.bytesOfEarlier + this.receivers.reduce((sum, r) => sum + (r?.bytesReceived ?? 0), 0);
  }

  /** Stops every worker; pages they applied and did not report come again (EEXIST then). */
  stop(): void {
    for (const receiver of this.receivers) {
      this.bytesOfEarlier += receiver?.bytesReceived ?? 0;
      receiver?.stop();
    }
    this.receivers.length = 0;
    for (const channel of this.pending.splice(0)) closeSync(channel.fd);
  }

  private isCurrent(receiver: BulkReceiver): boolean {
    return this.receivers.includes(receiver);
  }
}
