// Reading one main or preempt channel of the destination: each chunk goes to the channel's
// decoder and every whole event to the engine, in order. Two kinds of flow control:
// - at MULTIFD_FLUSH the main stream waits until every bulk channel has synced (what follows,
//   discards and LISTEN, must not overtake a page still on a bulk channel); meanwhile only a
//   heartbeat PING is answered, so that the source's stall watch stays content while the bulk
//   drains (a PING_IN_ORDER waits its turn: its PONG means "all before it is done");
// - the engine may hold the stream back for a moment (`holdFor`), or for the rest of this turn
//   of the event loop (`yieldTurn`), so that a faulting thread's page on the preempt channel
//   gets this thread first.
import { Command, PING_IN_ORDER, type StreamDecoder, type StreamEvent } from '../wire/index.js';
import type { Channel } from '../transport/index.js';
import type { GuestBlock } from '../pager/index.js';

export interface ChannelReaderEvents {
  /** One decoded event, in stream order. */
  event(event: StreamEvent<GuestBlock>, channel: Channel): void;
  /** After the events of one read: the pending run of pages is placed, holds decided. */
  read(channel: Channel): void;
  /** Decoding or handling failed; the reader has stopped. */
  error(error: Error, channel: Channel): void;
  /** The socket closed. */
  closed(channel: Channel): void;
}

export class ChannelReader {
  /** Events decoded while waiting at MULTIFD_FLUSH, handled in order after it. */
  private readonly deferred: StreamEvent<GuestBlock>[] = [];
  private waitingAtFlush = false;
  private holdTimer: NodeJS.Timeout | undefined;
  private yielding = false;
  /** Bytes read since reading last yielded its turn. */
  bytesThisTurn = 0;

  constructor(
    readonly channel: Channel,
    private readonly decoder: StreamDecoder<GuestBlock>,
    private readonly events: ChannelReaderEvents,
    /** Whether reading still matters (a channel of an earlier connection, or a failed migration, is ignored). */
    private readonly live: () => boolean,
  ) {
    channel.socket.on('data', (chunk: Buffer) => {
      if (!this.live()) return;
      channel.received(chunk.length);
      this.bytesThisTurn += chunk.length;
      decoder.push(chunk);
      this.pump();
    });
    channel.socket.on('close', () => this.live() && this.events.closed(channel));
    channel.socket.resume();
    this.pump(); // the decoder may hold bytes from the handshake already
  }

  /** MULTIFD_FLUSH: events after it wait (but PING) until release(). */
  waitAtFlush(): void {
    this.waitingAtFlush = true;
  }

  get atFlush(): boolean {
    return this.waitingAtFlush;
  }

  /** Every bulk channel has synced: the stream goes on past the flush. */
  release(): void {
    if (!this.waitingAtFlush) return;
    this.waitingAtFlush = false;
    this.pump();
  }

  /** Stops reading for at most `ms` (until endHold()). */
  holdFor(ms: number): void {
    if (this.holdTimer) return;
    this.channel.socket.pause();
    this.holdTimer = setTimeout(() => this.endHold(), ms);
  }

  endHold(): void {
    if (!this.holdTimer) return;
    clearTimeout(this.holdTimer);
    this.holdTimer = undefined;
    if (!this.yielding) this.channel.socket.resume();
  }

  /**
   * Reads no more in this turn of the event loop: libuv reads a busy socket up to 32 times
   * (2 MiB) per turn before it looks at the next one, and a page a thread waits for may be
   * behind that on the preempt channel. The other descriptors ready in this turn (preempt,
   * userfaultfd) go first; reading goes on in the next turn.
   */
  yieldTurn(): void {
    if (this.yielding || this.holdTimer) return;
    this.yielding = true;
    this.bytesThisTurn = 0;
    this.channel.socket.pause();
    setImmediate(() => {
      this.yielding = false;
      if (!this.holdTimer) this.channel.socket.resume();
    });
  }

  private pump(): void {
    const { channel } = this;
    try {
      while (!this.waitingAtFlush && this.deferred.length) this.events.event(this.deferred.shift()!, channel);
      for (let event = this.decoder.next(); event; event = this.decoder.next()) {
        if (!this.waitingAtFlush) this.events.event(event, channel);
        else if (event.type === 'command' && event.cmd === Command.PING && !(event.value & PING_IN_ORDER)) this.events.event(event, channel); // "alive", not "done"
        else this.deferred.push(event);
      }
      this.events.read(channel);
    } catch (error) {
      this.endHold();
      this.events.error(error as Error, channel);
    }
  }
}
