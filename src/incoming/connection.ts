// The destination's view of the current connection: its main and preempt channels, what the
// main channel's HELLO announced, which channels have ended, and whether the source said
// COMPLETE. A recovery replaces the connection; pages and guest threads stay.
import { Capability, type HelloFields } from '../wire/index.js';
import type { Channel, StallWatch } from '../transport/index.js';

export class Connection {
  main: Channel | undefined;
  preempt: Channel | undefined;
  /** The source said a preempt channel joins (HELLO capability): its EOF is awaited too. */
  expectPreempt = false;
  /** Bulk channels the source said join (HELLO capability). */
  expectBulk = 0;
  /** COMPLETE arrived on this connection. */
  sourceComplete = false;
  /** Channels of this connection whose EOF has arrived. */
  private readonly ended = new Set<Channel>();
  /** Bytes received on the channels of earlier connections. */
  private bytesOfEarlier = 0;

  constructor(private readonly stallWatch: StallWatch) {}

  /** Events of a channel no longer current (after a recovery) are ignored. */
  isCurrent(channel: Channel): boolean {
    return channel === this.main || channel === this.preempt;
  }

  get mainAlive(): boolean {
    return this.main !== undefined && !this.main.closed;
  }

  get preemptAlive(): boolean {
    return this.preempt !== undefined && !this.preempt.closed;
  }

  useMain(channel: Channel, hello: HelloFields): void {
    this.main = channel;
    this.expectPreempt = (hello.capabilities & Capability.PREEMPT) !== 0;
    this.expectBulk = (hello.capabilities & Capability.BULK_MASK) >> Capability.BULK_SHIFT;
  }

  /** EOF on a channel: nothing more comes on it, so its silence is expected now. */
  endOf(channel: Channel): void {
    this.ended.add(channel);
    this.stallWatch.unwatch(channel);
  }

  /** Whether the main channel, the preempt channel (if announced) and `bulkEnded` bulk channels have all ended. */
  allEnded(bulkEnded: number): boolean {
    const mainEnded = this.main !== undefined && this.ended.has(this.main);
    const preemptEnded = !this.expectPreempt || (this.preempt !== undefined && this.ended.has(this.preempt));
    return mainEnded && preemptEnded && bulkEnded === this.expectBulk;
  }

  /** Bytes received on this connection's main and preempt channels and on earlier ones. */
  get bytesReceived(): number {
    return this.bytesOfEarlier + (this.main?.bytesReceived ?? 0) + (this.preempt?.bytesReceived ?? 0);
  }

  /** Forgets the connection: its channels are destroyed, its EOFs and COMPLETE forgotten. */
  drop(): void {
    for (const channel of [this.main, this.preempt]) {
      if (!channel) continue;
      this.bytesOfEarlier += channel.bytesReceived;
      this.stallWatch.unwatch(channel);
      channel.destroy();
    }
    this.main = undefined;
    this.preempt = undefined;
    this.ended.clear();
    this.sourceComplete = false;
  }
}
