// The main thread's handle on one bulk channel of the destination: the channel's connection is
// handed to a worker (bulk-worker.ts) that applies its pages; this side passes LISTEN on and
// turns the worker's reports into events for IncomingMigration.
import { closeSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { PostcopyError, ProtocolError } from '../base/index.js';
import { duplicateDescriptor, type Userfaultfd } from '../kernel/index.js';
import type { GuestBlock } from '../pager/index.js';
import type { BulkWorkerTask, FromBulkWorker, ToBulkWorker } from './bulk-protocol.js';

const WORKER_PATH = join(__dirname, 'bulk-worker.js');
/** How long a worker asked to stop may take before it is terminated. */
const STOP_GRACE_MS = 1000;

export interface BulkReceiverEvents {
  /** Pages of `block` in memory now (byte ranges). */
  applied(block: GuestBlock, ranges: Float64Array, counts: { pages: number; zero: number }): void;
  synced(receiver: BulkReceiver): void;
  ended(receiver: BulkReceiver): void;
  /** A ProtocolError or placement error (`connection` false), or a broken connection. */
  failed(receiver: BulkReceiver, error: Error, connection: boolean): void;
}

/** A bulk channel's connection taken from the main thread's socket, before any byte after HELLO_ACK was read there. */
export interface TakenChannel {
  name: string;
  index: number;
  fd: number;
}

export class BulkReceiver {
  readonly name: string;
  synced = false;
  ended = false;
  /** Bytes the worker has received. */
  bytesReceived = 0;
  private readonly worker: Worker;
  private stopped = false;
  /** Duplicates of the userfaultfd given to the worker: closed here once it has exited. */
  private readonly uffdFds: number[] = [];

  /** `connection`: the channel's name and its descriptor (Channel.takeDescriptor), which the worker owns from now on. */
  constructor(connection: TakenChannel, private readonly blocks: readonly GuestBlock[], uffd: Userfaultfd | undefined, stallMs: number, private readonly events: BulkReceiverEvents) {
    this.name = connection.name;
    const task: BulkWorkerTask = {
      channel: connection.name,
      socketFd: connection.fd,
      blocks: blocks.map((b) => ({ idstr: b.idstr, address: b.host!.base, length: b.postcopyLength, pageSize: b.pageSize })),
      uffdFd: uffd ? this.duplicate(uffd) : undefined,
      stallMs,
    };
    this.worker = new Worker(WORKER_PATH, { workerData: task });
    this.worker.on('message', (m: FromBulkWorker) => this.message(m));
    this.worker.on('exit', () => this.uffdFds.splice(0).forEach((fd) => closeSync(fd)));
    this.worker.on('error', (error) => this.events.failed(this, new PostcopyError('ERR_POSTCOPY_INTERNAL', `${this.name} worker: ${error.message}`, { cause: error }), false));
  }

  private message(m: FromBulkWorker): void {
    if (this.stopped) return;
    switch (m.type) {
      case 'applied':
        this.bytesReceived = m.bytes;
        return this.events.applied(this.blocks[m.block], m.ranges, m);
      case 'synced':
        this.synced = true;
        return this.events.synced(this);
      case 'ended':
        this.ended = true;
        void this.worker.terminate();
        return this.events.ended(this);
      case 'failed': {
        this.stopped = true;
        void this.worker.terminate();
        const error = m.connection ? new PostcopyError('ERR_POSTCOPY_CHANNEL_CLOSED', m.message)
          : m.code === 'ERR_POSTCOPY_PROTOCOL' ? new ProtocolError(m.message) : Object.assign(new Error(m.message), { code: m.code });
        return this.events.failed(this, error, m.connection);
      }
      default:
        return;
    }
  }

  /** From now on pages are placed atomically through `uffd` (the worker gets its own descriptor). */
  listen(uffd: Userfaultfd): void {
    this.send({ type: 'listen', uffdFd: this.duplicate(uffd) });
  }

  private duplicate(uffd: Userfaultfd): number {
    const fd = duplicateDescriptor(uffd.fd);
    this.uffdFds.push(fd);
    return fd;
  }

  /** Stops the worker (it closes its descriptors), terminating it if it does not answer soon. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.ended) return;
    this.send({ type: 'stop' });
    const timer = setTimeout(() => void this.worker.terminate(), STOP_GRACE_MS);
    timer.unref();
    this.worker.once('message', (m: FromBulkWorker) => m.type === 'stopped' && void this.worker.terminate());
  }

  private send(message: ToBulkWorker): void {
    this.worker.postMessage(message);
  }
}
