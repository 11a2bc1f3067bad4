// One connection of a migration. Writes keep the socket's own buffering and honour
// backpressure: `send` reports when the caller should wait for `drained()`.
import type { Socket } from 'node:net';

export type ChannelRole = 'main' | 'preempt';

export class Channel {
  bytesSent = 0;
  bytesReceived = 0;
  private closedError: Error | undefined;

  constructor(readonly socket: Socket, readonly role: ChannelRole) {
    socket.setNoDelay?.(true);
    socket.on('close', () => (this.closedError ??= new Error(`${role} channel closed`)));
    socket.on('error', (error) => (this.closedError = error));
  }

  get closed(): boolean {
    return this.closedError !== undefined || this.socket.destroyed;
  }

  /** Queues bytes; false means the kernel buffer is full and the caller should await drained(). */
  send(data: Uint8Array): boolean {
    if (this.closed) throw this.closedError ?? new Error(`${this.role} channel closed`);
    this.bytesSent += data.length;
    return this.socket.write(data);
  }

  /** Resolves once the socket has drained; rejects if it closes first. */
  drained(): Promise<void> {
    if (!this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', closed);
        resolve();
      };
      const closed = () => {
        this.socket.off('drain', done);
        reject(this.closedError ?? new Error(`${this.role} channel closed`));
      };
      this.socket.on('drain', done);
      this.socket.once('close', closed);
    });
  }

  close(): void {
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }
}
