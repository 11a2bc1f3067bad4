// One connection of a migration. Writes keep the socket's own buffering and honour
// backpressure: `send` reports when the caller should wait for `drained()`. A channel knows
// when it last heard from its peer, so that a silent connection (a network partition: no
// bytes and no close) is noticed within a bound (see StallWatch).
import { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { TLSSocket } from 'node:tls';
import { duplicateDescriptor } from '../kernel/process.js';
import { socketDescriptor, socketPair } from '../kernel/socket.js';
import { PostcopyError } from '../base/index.js';

export type ChannelRole = 'main' | 'preempt' | 'bulk';

/** Socket errors that mean the peer closed or reset the connection. */
const PEER_CLOSED = new Set(['ECONNRESET', 'EPIPE']);

/**
 * Why a channel's connection ended, one description per cause: the peer going away reads
 * "closed by the peer" whether this side saw an EOF, a reset on read or a reset on write
 * (which of those a dying peer produces is a race); other socket errors are named as they are.
 */
export function channelClosedMessage(name: string, error?: Error): string {
  if (!error) return `${name} channel closed by the peer`;
  const code = (error as NodeJS.ErrnoException).code;
  return code && PEER_CLOSED.has(code) ? `${name} channel closed by the peer (${error.message})` : `${name} channel: ${error.message}`;
}

export class Channel {
  bytesSent = 0;
  bytesReceived = 0;
  /** performance.now() of the last bytes received (or of the channel's creation). */
  lastReceivedAt = performance.now();
  private closedError: Error | undefined;

  /** For messages: 'main', 'preempt', 'bulk 2'. */
  readonly name: string;

  constructor(readonly socket: Socket, readonly role: ChannelRole, readonly index = 0) {
    this.name = role === 'bulk' ? `bulk ${index}` : role;
    socket.setNoDelay?.(true);
    socket.on('close', () => (this.closedError ??= new PostcopyError('ERR_POSTCOPY_CHANNEL_CLOSED', channelClosedMessage(this.name))));
    socket.on('error', (error) => {
      this.closedError ??= new PostcopyError('ERR_POSTCOPY_CHANNEL_CLOSED', channelClosedMessage(this.name, error), { cause: error });
    });
  }

  get closed(): boolean {
    return this.closedError !== undefined || this.socket.destroyed;
  }

  /** Why the channel is closed (a coded PostcopyError), once it is. */
  get error(): Error | undefined {
    return this.closedError ?? (this.socket.destroyed ? new PostcopyError('ERR_POSTCOPY_CHANNEL_CLOSED', `${this.name} channel closed`) : undefined);
  }

  /**
   * Hands the connection over to a worker thread: a descriptor the worker owns and closes.
   * Plain: a duplicate of the socket's, after which this side lets go of its own without a
   * word to the peer (closing one of two descriptors of a socket sends nothing). TLS: the
   * session cannot leave this thread, so the worker gets one end of a socket pair and this
   * thread relays between the other end and the connection (see relayThroughPair). Only for a
   * channel whose handshake is over and which has nothing buffered on this side: take it in
   * the tick that wrote HELLO_ACK (the 'channel' event), before this socket can read what the
   * peer sends next.
   */
  takeDescriptor(): number {
    if (this.socket instanceof TLSSocket) return this.relayThroughPair(this.socket);
    const fd = socketDescriptor(this.socket);
    if (fd === undefined) throw new PostcopyError('ERR_POSTCOPY_INTERNAL', `internal: the ${this.name} channel has no descriptor to hand over`);
    const copy = duplicateDescriptor(fd);
    this.socket.removeAllListeners();
    this.socket.on('error', () => undefined);
    this.socket.destroy();
    return copy;
  }

  /**
   * Relays a TLS connection through a socket pair: bytes both ways with backpressure (pipe),
   * an end of stream passed on as one (so the last packet and TLS's close_notify are
   * flushed first), and a broken side breaking the other, so the worker sees the failure.
   */
  private relayThroughPair(tls: TLSSocket): number {
    const [mine, theirs] = socketPair();
    const local = new Socket({ fd: mine, readable: true, writable: true });
    tls.removeAllListeners();
    tls.on('error', () => local.destroy());
    local.on('error', () => tls.destroy());
    tls.on('close', () => local.end());
    local.on('close', (hadError) => hadError && tls.destroy());
    tls.pipe(local);
    local.pipe(tls);
    return theirs;
  }

  /** Counts bytes that arrived: the peer is alive. */
  received(bytes: number): void {
    this.bytesReceived += bytes;
    this.lastReceivedAt = performance.now();
  }

  /** Queues bytes; false means the kernel buffer is full and the caller should await drained(). */
  send(data: Uint8Array): boolean {
    if (this.closed) throw this.error!;
    this.bytesSent += data.length;
    return this.socket.write(data);
  }

  /** Resolves once the socket has drained; rejects if it closes first. */
  drained(): Promise<void> {
    if (!this.socket.writableNeedDrain) return Promise.resolve();
    if (this.closed) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', closed);
        resolve();
      };
      const closed = () => {
        this.socket.off('drain', done);
        reject(this.error);
      };
      this.socket.on('drain', done);
      this.socket.once('close', closed);
    });
  }

  close(): void {
    this.socket.end();
  }

  /** Ends the connection now; `reason` becomes the channel's error if it had none. */
  destroy(reason?: Error): void {
    if (reason) this.closedError ??= reason;
    this.socket.destroy();
  }
}

/**
 * Declares a channel stalled when nothing has arrived on it for `stallMs`: the channel is
 * destroyed with an ERR_POSTCOPY_CHANNEL_STALLED error, so every wait on it ends, and
 * `onStall` is told. The peer keeps a silent channel alive with heartbeats (PING / PONG).
 */
export class StallWatch {
  private readonly channels = new Set<Channel>();
  private timer: NodeJS.Timeout | undefined;
  private lastCheckAt = 0;

  constructor(
    readonly stallMs: number,
    private readonly onStall: (channel: Channel, error: PostcopyError) => void,
  ) {}

  watch(channel: Channel): void {
    channel.lastReceivedAt = performance.now();
    this.channels.add(channel);
    this.lastCheckAt = performance.now();
    this.timer ??= setInterval(() => this.check(), this.intervalMs);
  }

  private get intervalMs(): number {
    return Math.min(250, this.stallMs / 4);
  }

  unwatch(channel: Channel): void {
    this.channels.delete(channel);
    if (this.channels.size === 0) this.stop();
  }

  stop(): void {
    this.channels.clear();
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private check(): void {
    const now = performance.now();
    const late = now - this.lastCheckAt > 4 * this.intervalMs;
    this.lastCheckAt = now;
    // This thread was busy (bytes may be waiting unread in the socket): judge next round.
    if (late) return;
    for (const channel of this.channels) {
      if (channel.closed) {
        this.channels.delete(channel);
        continue;
      }
      const silentMs = now - channel.lastReceivedAt;
      if (silentMs < this.stallMs) continue;
      const error = new PostcopyError('ERR_POSTCOPY_CHANNEL_STALLED',
        `${channel.name} channel stalled: nothing received for ${(silentMs / 1000).toFixed(1)} s (bound ${this.stallMs / 1000} s)`);
      this.channels.delete(channel);
      channel.destroy(error);
      this.onStall(channel, error);
    }
    if (this.channels.size === 0) this.stop();
  }
}
