// The source's connections: the main channel (stream, commands, and the return path back) and
// the optional preempt channel (requested pages only). It keeps them alive and honest: a PING
// on each every `heartbeatMs` (the destination answers on the return path, and watches both
// for silence), a stall watch on the return path, and one place where any break is noticed,
// named (channel and phase) and announced, so that every wait of the engine ends.
import type { ConnectedChannel, Channel } from '../transport/index.js';
import { StallWatch } from '../transport/index.js';
import { PING_IN_ORDER, type ReturnPathEvent } from '../wire/index.js';
import type { GuestBlock } from '../pager/index.js';
import { PostcopyError, isConnectionError } from '../base/index.js';

export interface SourceChannelOptions {
  main: ConnectedChannel<GuestBlock>;
  preempt?: ConnectedChannel<GuestBlock>;
  stallMs: number;
  heartbeatMs: number;
  onReturnPath: (event: ReturnPathEvent<GuestBlock>) => void;
  /** A malformed return path: not a broken connection, the migration fails. */
  onProtocolError: (error: Error) => void;
  /** What the engine is doing, for messages: 'postcopy', 'precopy round 3'. */
  phase: () => string;
}

export class SourceChannels {
  main!: ConnectedChannel<GuestBlock>;
  preempt: ConnectedChannel<GuestBlock> | undefined;
  /** Why the current connection is broken, if it is. */
  broken: PostcopyError | undefined;
  /** Set once EOF is sent: nothing, not even a PING, may follow it. */
  ended = false;
  private brokenSignal!: { promise: Promise<void>; resolve: () => void };
  private readonly stallWatch: StallWatch;
  private readonly heartbeat: NodeJS.Timeout;
  private pings = 0;
  /** PINGs of `roundTrip` waiting for their PONG, by value. */
  private readonly pongWaiters = new Map<number, () => void>();
  /** Bytes sent on the channels of earlier connections (before a recovery). */
  private bytesOfEarlierChannels = 0;

  constructor(private readonly options: SourceChannelOptions) {
    this.stallWatch = new StallWatch(options.stallMs, (channel, error) => this.markBroken(channel, error));
    this.heartbeat = setInterval(() => this.ping(), options.heartbeatMs);
    this.use(options.main, options.preempt);
  }

  /** Takes the channels of a (new) connection. */
  use(main: ConnectedChannel<GuestBlock>, preempt?: ConnectedChannel<GuestBlock>): void {
    this.main = main;
    this.preempt = preempt;
    this.broken = undefined;
    this.ended = false;
    let resolve!: () => void;
    this.brokenSignal = { promise: new Promise<void>((r) => (resolve = r)), resolve };
    this.listenReturnPath(main);
    if (preempt) this.watchClose(preempt);
  }

  /** Adds the preempt channel of a recovered connection. */
  usePreempt(preempt: ConnectedChannel<GuestBlock>): void {
    this.preempt = preempt;
    this.watchClose(preempt);
  }

  /** Resolves when the current connection breaks. */
  whenBroken(): Promise<void> {
    return this.brokenSignal.promise;
  }

  get bytesSent(): number {
    return this.bytesOfEarlierChannels + this.main.channel.bytesSent + (this.preempt?.channel.bytesSent ?? 0);
  }

  /**
   * A PING on the main channel, resolved (true) by its PONG: the destination has handled
   * everything sent before it (PING_IN_ORDER: a MULTIFD_FLUSH's wait included). False when the
   * connection breaks or no PONG comes in time.
   */
  async roundTrip(timeoutMs: number): Promise<boolean> {
    if (this.broken) return false;
    const value = (++this.pings | PING_IN_ORDER) >>> 0;
    const { channel, encoder } = this.main;
    if (encoder.ramOpen) channel.send(encoder.endRam());
    channel.send(encoder.ping(value));
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        new Promise<boolean>((resolve) => this.pongWaiters.set(value, () => resolve(true))),
        this.whenBroken().then(() => false),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs))),
      ]);
    } finally {
      clearTimeout(timer);
      this.pongWaiters.delete(value);
    }
  }

  /** Requested pages go on the preempt channel when there is one. */
  get forRequests(): ConnectedChannel<GuestBlock> {
    return this.preempt ?? this.main;
  }

  /** Notes a break (the first one names it), drops both channels, and wakes every waiter. */
  markBroken(channel: Channel, error: Error): void {
    if (!this.isCurrent(channel)) return;
    this.markBrokenBy(error.message.startsWith(channel.name) ? error : Object.assign(new Error(`${channel.name} channel: ${error.message}`, { cause: error }), { code: (error as PostcopyError).code }));
  }

  /** A break that names its channel already (a bulk channel's worker). */
  markBrokenBy(error: Error): void {
    if (this.broken) return;
    const code = (error as PostcopyError).code ?? 'ERR_POSTCOPY_CHANNEL_CLOSED';
    this.broken = new PostcopyError(code, `${error.message} during ${this.options.phase()}`, { cause: (error.cause as Error | undefined) ?? error });
    this.drop();
    this.brokenSignal.resolve();
  }

  /** Ends both channels gracefully (after the last message). */
  close(): void {
    this.stop();
    this.main.channel.close();
    this.preempt?.channel.close();
  }

  /** Stops the heartbeat and the watch; the channels stay as they are. */
  stop(): void {
    clearInterval(this.heartbeat);
    this.stallWatch.stop();
  }

  /** Destroys both channels of the current connection. */
  drop(): void {
    for (const c of [this.main, this.preempt]) {
      if (!c) continue;
      this.stallWatch.unwatch(c.channel);
      c.channel.destroy();
    }
    // counted once, however often a dead connection is dropped
    this.bytesOfEarlierChannels += this.main.channel.bytesSent + (this.preempt?.channel.bytesSent ?? 0);
    this.main.channel.bytesSent = 0;
    if (this.preempt) this.preempt.channel.bytesSent = 0;
  }

  private isCurrent(channel: Channel): boolean {
    return channel === this.main.channel || channel === this.preempt?.channel;
  }

  private watchClose({ channel }: ConnectedChannel<GuestBlock>): void {
    channel.socket.on('close', () => this.markBroken(channel, channel.error!));
  }

  private listenReturnPath(main: ConnectedChannel<GuestBlock>): void {
    const { channel, returnPath } = main;
    const pump = () => {
      try {
        for (let event = returnPath.next(); event; event = returnPath.next()) {
          if (event.type === 'pong') this.pongWaiters.get(event.value)?.();
          this.options.onReturnPath(event);
        }
      } catch (error) {
        // a request answered on the preempt channel just as it closed (its 'close' not handled
        // yet) is a break of the connection, which recovery heals, not malformed input
        if (isConnectionError(error)) this.markBrokenBy(error as Error);
        else this.options.onProtocolError(error as Error);
      }
    };
    channel.socket.on('data', (chunk: Buffer) => {
      if (main !== this.main) return;
      channel.received(chunk.length);
      returnPath.push(chunk);
      pump();
    });
    this.watchClose(main);
    // only the main channel has a return path: the destination answers its PINGs there
    this.stallWatch.watch(channel);
    channel.socket.resume();
    pump();
  }

  /** A PING on each channel (outside any RAM frame): the destination sees the source alive. */
  private ping(): void {
    if (this.broken || this.ended) return;
    const value = ++this.pings >>> 0;
    for (const c of [this.main, this.preempt]) {
      if (!c || c.channel.closed) continue;
      if (c.encoder.ramOpen) c.channel.send(c.encoder.endRam());
      c.channel.send(c.encoder.ping(value));
    }
  }
}
