// What a VMM gives the source of a migration: its memory and channels, how to pause and hold
// its guest, and the bounds; and the progress the engine reports while it runs.
import type { ChannelRole, ConnectedChannel } from '../transport/index.js';
import type { GuestBlock } from '../pager/index.js';
import type { Mapping } from '../kernel/index.js';
import type { RamList } from '../memory/index.js';
import type { DirtyLog, HoldGuest } from './dirty-log.js';
import type { PrecopyRound } from './report.js';

export interface OutgoingOptions {
  blocks: RamList<Mapping>;
  main: ConnectedChannel<GuestBlock>;
  /** Carries only requested pages, so a request never waits behind the background stream. */
  preempt?: ConnectedChannel<GuestBlock>;
  /**
   * Bulk channels (their number announced in the main channel's HELLO): precopy and the
   * postcopy background stream go on them, in packets, each fed by its own worker thread.
   */
  bulk?: ConnectedChannel<GuestBlock>[];
  /**
   * Opens a channel of this migration again (same session, same token) after a connection
   * broke in postcopy (`index`: a bulk channel's number). Without it a broken connection fails the migration.
   */
  reconnect?: (role: ChannelRole, timeoutSeconds: number, index?: number) => Promise<ConnectedChannel<GuestBlock>>;
  /** How long recovery may try to reconnect (default 30 s; 0: a break fails the migration). */
  recoverSeconds?: number;
  /** The return path silent this long means a broken connection (default 5 s). */
  stallSeconds?: number;
  /** Seconds of precopy before switching to postcopy; 0 = straight to postcopy. */
  precopySeconds: number;
  /** Stop precopy early once fewer pages than this are dirty after a round. */
  convergedPages?: number;
  maxRounds?: number;
  /**
   * Stop precopy early once rounds stop helping (default true): the guest dirties as fast as
   * the rounds send, or the dirty set does not shrink (see convergenceJudge). Postcopy then
   * moves what is left, once.
   */
  stopWhenNotConverging?: boolean;
  /** Parks the guest at a barrier (nothing half-written) for the switchover. */
  pauseGuest: () => Promise<void>;
  /** Device state sent in PACKAGED before RUN. */
  deviceState?: () => Uint8Array;
  dirtyLog?: DirtyLog['kind'];
  /** Holds the guest still while `critical` runs (synchronously); the soft-dirty dirty log needs it. */
  holdGuest?: HoldGuest;
  onProgress?: (progress: OutgoingProgress) => void;
  /** Precopy sends at most this many MiB/s (QEMU's max-bandwidth; default: no limit). */
  precopyMaxMiBs?: number;
  /**
   * The postcopy background stream sends at most this many MiB/s (QEMU's max-postcopy-bandwidth;
   * default: no limit). Requested pages are never held back, nor counted.
   */
  postcopyMaxMiBs?: number;
  /**
   * A batch of the stream ends after this many milliseconds (default 0.2), so that a request
   * read meanwhile waits for at most one batch. Even at 0 a batch sends one host page.
   */
  batchMs?: number;
}

export interface OutgoingProgress {
  phase: 'precopy' | 'switchover' | 'postcopy' | 'paused' | 'complete';
  round: number;
  pagesSent: number;
  pagesLeft: number;
  bytesSent: number;
  elapsedMs: number;
  recoveries: number;
  /** Why the connection is paused (phase 'paused'). */
  reason?: string;
  /**
   * Precopy only: the send rate of the round under way, and the last finished round (with the
   * guest's dirty rate over it).
   */
  precopy?: { sendMiBs: number; lastRound?: PrecopyRound };
}
