// What the source's main thread and a bulk channel's sender worker say to each other.

export interface BulkSenderBlock {
  idstr: string;
  address: number;
  length: number;
  pageSize: number;
}

export interface BulkSenderTask {
  /** 'bulk 0': for messages. */
  channel: string;
  /** The connection (a duplicate the worker owns; the handshake is over). */
  socketFd: number;
  blocks: BulkSenderBlock[];
  /** Idle this long: an empty packet, so that the destination sees the channel alive. */
  heartbeatMs: number;
  /** A write the destination takes nothing of for this long fails the channel (it is stalled). */
  stallMs: number;
}

export type ToBulkSender =
  /**
   * Send these target pages (indices, ascending; whole host pages of a huge-page block) as they
   * are now; where `untouched` is 1, the page was never populated: a zero page, not read.
   */
  | { type: 'pages'; block: number; pages: Float64Array; untouched: Uint8Array }
  /** A SYNC packet after everything queued. */
  | { type: 'sync' }
  /** The END packet after everything queued, then close. */
  | { type: 'end' };

export type FromBulkSender =
  /** Pages handed to the kernel (written to the socket), `zero` of them zero pages. */
  | { type: 'sent'; pages: number; zero: number; bytes: number }
  | { type: 'ended' }
  | { type: 'failed'; message: string };
