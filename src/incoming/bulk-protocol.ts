// What the destination's main thread and a bulk channel's worker say to each other.

export interface BulkWorkerBlock {
  idstr: string;
  address: number;
  /** Bytes pages may be sent for (the block's postcopy length). */
  length: number;
  pageSize: number;
}

export interface BulkWorkerTask {
  /** 'bulk 0': for messages. */
  channel: string;
  /** The connection (a duplicate the worker owns; the handshake is over). */
  socketFd: number;
  blocks: BulkWorkerBlock[];
  /** Already listening (a channel joining after LISTEN): a duplicate userfaultfd for the worker (see 'listen'). */
  uffdFd?: number;
  /** Nothing received for this long (the source sends an empty packet every second when idle): broken. */
  stallMs: number;
}

export type ToBulkWorker =
  /** From now on pages are placed atomically with this userfaultfd: a duplicate, closed by the main thread once the worker has exited (never under its feet). */
  | { type: 'listen'; uffdFd: number }
  /** Close everything and stop. */
  | { type: 'stop' };

export type FromBulkWorker =
  /**
   * Pages of one block now in memory (written, placed, or already there), as (offset, length)
   * byte pairs; `zero` of them were zero pages. The main thread counts what is new by the
   * received bits.
   */
  | { type: 'applied'; block: number; ranges: Float64Array; pages: number; zero: number; bytes: number }
  /** A SYNC packet: everything before it is applied. The worker reads on after 'listen'. */
  | { type: 'synced' }
  /** The END packet: the channel is done, its socket closed. */
  | { type: 'ended' }
  /** The worker stopped: `connection` when the socket broke or went silent, else malformed input or a placement error. */
  | { type: 'failed'; message: string; code: string; connection: boolean }
  | { type: 'stopped' };
