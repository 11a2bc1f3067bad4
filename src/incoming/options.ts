// What a VMM tells the destination: its memory, its guest's threads and how to stop them, and
// the bounds of every wait.
import { exitNow, type Mapping } from '../kernel/index.js';
import type { RamList } from '../memory/index.js';
import type { MemSizeBlock } from '../wire/index.js';

export interface IncomingOptions {
  /** The destination's memory. Empty: blocks are allocated as the source's MEM_SIZE describes. */
  blocks?: RamList<Mapping>;
  /** How to allocate a block named by MEM_SIZE when `blocks` starts empty. */
  allocate?: (block: MemSizeBlock) => Mapping;
  /** Guest threads that will run here (for blocktime: when all are blocked). */
  guestThreads?: number;
  /**
   * Stops every guest thread. After a failure it is awaited (at most `guestStopTimeoutMs`)
   * before the userfaultfd is closed; a thread blocked on a page that can no longer arrive
   * stays blocked until then.
   */
  stopGuest?: () => Promise<void>;
  /** How long a broken connection in postcopy may take to come back (default 30 s; 0: fail at once). */
  recoverSeconds?: number;
  /** A channel on which nothing arrives for this long is broken (default 5 s; the source pings every second). */
  stallSeconds?: number;
  /** A requested page that has not arrived after this long is requested again (default 300 ms). */
  requestRetryMs?: number;
  /** Threads waiting and nothing placed for this long: the connection is treated as broken (default 10 s). */
  noProgressSeconds?: number;
  /** How long `stopGuest` may take after a failure (default 3000 ms). */
  guestStopTimeoutMs?: number;
  /**
   * Called when guest threads may sit in faults on pages that can no longer arrive and the
   * guest could not be stopped: it must end them, and must not return. Default: the process
   * ends at once (exitNow), which ends every thread without waking any onto a zero page.
   */
  onGuestStuck?: (message: string) => never;
}

export type IncomingSettings = Required<Omit<IncomingOptions, 'blocks' | 'allocate' | 'guestThreads' | 'stopGuest'>>;

/** The options' bounds, defaults filled in. */
export function incomingSettings(options: IncomingOptions): IncomingSettings {
  return {
    recoverSeconds: options.recoverSeconds ?? 30,
    stallSeconds: options.stallSeconds ?? 5,
    requestRetryMs: options.requestRetryMs ?? 300,
    noProgressSeconds: options.noProgressSeconds ?? 10,
    guestStopTimeoutMs: options.guestStopTimeoutMs ?? 3000,
    onGuestStuck: options.onGuestStuck ?? ((message) => exitNow(1, `postcopy: ${message}`)),
  };
}
