// Recovery of a connection broken in postcopy: reconnect (backing off, for at most
// `recoverSeconds`), ask for each block's received bitmap, mark every page that did not arrive
// dirty again, RESUME, then reopen the preempt and bulk channels. Pages in flight when it broke
// are among those that did not arrive; nothing that arrived is sent again.
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { PostcopyError, errorCode } from '../base/index.js';
import type { Bitmap } from '../memory/index.js';
import type { ChannelRole, ConnectedChannel } from '../transport/index.js';
import type { GuestBlock } from '../pager/index.js';
import { ResumeState } from '../wire/index.js';
import type { PageMap } from './page-map.js';
import type { SourceCounts } from './report.js';
import type { SourceChannels } from './source-channels.js';

/** Reconnection attempts back off from the first delay to the last. */
const RECONNECT_DELAYS_MS = [50, 100, 200, 500, 1000, 2000];

export type Reconnect = (role: ChannelRole, timeoutSeconds: number, index?: number) => Promise<ConnectedChannel<GuestBlock>>;

export interface RecoveryOptions {
  reconnect: Reconnect;
  recoverSeconds: number;
  preempt: boolean;
  bulkChannels: number;
  /** The failure no recovery can heal, if one happened meanwhile. */
  fatal(): Error | undefined;
  /** The device state and RUN again: the destination had not applied RUN. */
  sendRun(): void;
  /** The bulk channels of the new connection. */
  startBulk(channels: ConnectedChannel<GuestBlock>[]): void;
}

export class Recovery {
  /** The destination had every page already when a recovery asked (RESUME_ACK said END). */
  destinationEnded = false;
  private waiting: { bitmaps: Map<GuestBlock, Bitmap>; ack: number | undefined; wake: () => void } | undefined;

  constructor(
    private readonly map: PageMap,
    private readonly channels: SourceChannels,
    private readonly counts: SourceCounts,
    private readonly options: RecoveryOptions,
  ) {}

  /** RECV_BITMAP from the destination, during a recovery. */
  bitmap(block: GuestBlock, received: Bitmap): void {
    this.waiting?.bitmaps.set(block, received);
    this.waiting?.wake();
  }

  /** RESUME_ACK from the destination, during a recovery. */
  resumeAck(state: number): void {
    if (this.waiting) this.waiting.ack = state;
    this.waiting?.wake();
  }

  /** Reconnects and resumes, or throws why it cannot (the break itself, a timeout, a refusal, the destination gone). */
  async recover(reason: PostcopyError): Promise<void> {
    const pausedAt = performance.now();
    const deadline = pausedAt + this.options.recoverSeconds * 1000;
    let lastError: Error = reason;
    for (let attempt = 0; ; attempt++) {
      const remainingMs = deadline - performance.now();
      if (remainingMs <= 0) {
        throw new PostcopyError('ERR_POSTCOPY_RECOVERY_TIMEOUT',
          `${reason.message}; no recovery within ${this.options.recoverSeconds} s (last attempt: ${lastError.message})`, { cause: lastError });
      }
      try {
        await this.resumeConnection(Math.max(1, remainingMs / 1000));
        break;
      } catch (error) {
        lastError = this.hopeless(reason, error as Error);
        this.channels.drop();
        await sleep(Math.min(RECONNECT_DELAYS_MS[Math.min(attempt, RECONNECT_DELAYS_MS.length - 1)], Math.max(0, deadline - performance.now())));
      }
    }
    this.counts.recoveries++;
    this.counts.pausedMs += performance.now() - pausedAt;
  }

  /** An attempt's error, or throws when no attempt can succeed any more. */
  private hopeless(reason: Error, error: Error): Error {
    const fatal = this.options.fatal();
    if (fatal) throw fatal;
    if (errorCode(error) === 'ERR_POSTCOPY_REFUSED') throw error; // the destination said no for good
    const cause = errorCode(error.cause);
    if (cause === 'ECONNREFUSED' || cause === 'ENOENT') {
      // the host answers but nobody listens: the destination process, and its guest, are gone
      throw new PostcopyError('ERR_POSTCOPY_PEER_FAILED', `${reason.message}; the destination is gone (${error.message})`, { cause: error });
    }
    return error;
  }

  /** One attempt: new channels, the bitmaps, RESUME and its answer. */
  private async resumeConnection(timeoutSeconds: number): Promise<void> {
    const { reconnect } = this.options;
    const main = await reconnect('main', timeoutSeconds);
    this.channels.use(main);
    const waiting = { bitmaps: new Map<GuestBlock, Bitmap>(), ack: undefined as number | undefined, wake: () => undefined as void };
    this.waiting = waiting;
    try {
      for (const block of this.map.blocks) main.channel.send(main.encoder.recvBitmap(block));
      await this.until(() => waiting.bitmaps.size === this.map.blocks.length, timeoutSeconds, 'the received bitmaps');
      for (const [block, received] of waiting.bitmaps) this.counts.pagesResent += this.map.markUnreceivedDirty(this.map.indexOf(block), received);
      main.channel.send(main.encoder.resume());
      await this.until(() => waiting.ack !== undefined, timeoutSeconds, 'RESUME_ACK');
    } finally {
      this.waiting = undefined;
    }
    if (waiting.ack === ResumeState.END) {
      this.destinationEnded = true;
      return;
    }
    if (waiting.ack === ResumeState.LISTENING) this.options.sendRun(); // RUN had not arrived
    if (this.options.preempt) this.channels.usePreempt(await reconnect('preempt', timeoutSeconds));
    if (this.options.bulkChannels) {
      const channels: ConnectedChannel<GuestBlock>[] = [];
      for (let index = 0; index < this.options.bulkChannels; index++) channels.push(await reconnect('bulk', timeoutSeconds, index));
      this.options.startBulk(channels);
    }
  }

  /** Waits until `done()` (checked on every return-path message), the break of the connection, or the timeout. */
  private async until(done: () => boolean, timeoutSeconds: number, what: string): Promise<void> {
    const timeoutMs = timeoutSeconds * 1000;
    const start = performance.now();
    while (!done()) {
      if (this.channels.broken) throw this.channels.broken;
      const left = timeoutMs - (performance.now() - start);
      if (left <= 0) throw new PostcopyError('ERR_POSTCOPY_CHANNEL_STALLED', `no ${what} within ${timeoutSeconds.toFixed(1)} s`);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        this.channels.whenBroken(),
        new Promise<void>((resolve) => {
          this.waiting!.wake = resolve;
          timer = setTimeout(resolve, left);
        }),
      ]);
      clearTimeout(timer);
    }
  }
}
