// What the source of a migration reports at its end: pages sent by phase, requests, discards,
// precopy rounds, the downtime and its parts, recoveries, bytes and durations.
import { performance } from 'node:perf_hooks';
import { round } from '../base/index.js';
import type { DirtyLogKind } from './dirty-log.js';

/** One precopy round, from the sync before it to the sync that ends it. */
export interface PrecopyRound {
  round: number;
  /** Target pages sent in the round. */
  sent_pages: number;
  /** Target pages the guest wrote during the round (found dirty again at its sync). */
  dirtied_pages: number;
  /** Pages still to send after the round's sync. */
  left_pages: number;
  ms: number;
  send_mib_s: number;
  dirty_mib_s: number;
}

/**
 * Why precopy ended: few enough pages left ('converged'), rounds that no longer shrink the dirty
 * set ('not-converging'), `precopySeconds` over ('time'), `maxRounds` done ('rounds'), or no
 * precopy at all ('skipped').
 */
export type PrecopyEnd = 'converged' | 'not-converging' | 'time' | 'rounds' | 'skipped';

export interface DowntimeParts {
  pause: number;
  sync: number;
  discard: number;
  /** Encoding LISTEN, the device state and RUN. */
  commands: number;
  /**
   * Handing the switchover's one buffer to the kernel. On loopback this includes waking the
   * destination, and the scheduler may run it first on this CPU: then its switchover is in here.
   */
  write: number;
}

export interface OutgoingReport {
  dirty_log: DirtyLogKind;
  /** Arming the dirty log and finding the untouched pages, with the guest held if holdGuest was given. */
  dirty_log_start_ms: number;
  rounds: number;
  /** zero: sent as zero pages, on every channel; untouched: of those, never populated here, so never read. */
  pages_sent: { precopy: number; postcopy: number; requested: number; zero: number; untouched: number };
  /** skipped: already sent (in flight); resent: asked for again after a skip, sent again. */
  requests: { received: number; skipped: number; resent: number };
  discarded_pages: number;
  /** Connections recovered, pages sent again because they had not arrived, time PAUSED. */
  recoveries: number;
  pages_resent: number;
  paused_ms: number;
  downtime_ms: number;
  /**
   * Where the downtime went: parking the guest, the final dirty sync, the discards of pages
   * dirtied since the last sync before the pause, LISTEN, device state and RUN, the write.
   */
  downtime_parts_ms: DowntimeParts;
  /** Target pages the final sync (in the pause) found written: the guest's writes since the last sync before it. */
  final_sync_pages: number;
  /** When the pause began (epoch milliseconds), to set beside the destination's RUN on the same host. */
  pause_epoch_ms: number;
  /**
   * The discards: most are known before the pause (pages dirtied after they were sent, as of
   * the last sync) and are applied by the destination while the guest still runs here (the
   * last round while it is being parked); only what the guest dirtied after that goes in the
   * pause. `before_pause_ms` is the time those rounds took (not downtime).
   */
  discards: { before_pause_pages: number; before_pause_ranges: number; before_pause_ms: number; in_pause_pages: number; in_pause_ranges: number };
  precopy_ms: number;
  precopy_end: PrecopyEnd;
  /** The last PRECOPY_ROUNDS_KEPT rounds (all of them when there were no more). */
  precopy_rounds: PrecopyRound[];
  /** Over every round, including any no longer in `precopy_rounds`. */
  precopy_totals: { rounds: number; sent_pages: number; dirtied_pages: number; ms: number; send_mib_s: number; dirty_mib_s: number };
  postcopy_ms: number;
  total_ms: number;
  bytes_sent: number;
  /** Bulk channels (0: pages went on the main channel). */
  bulk_channels: number;
}

/** The source's counters: target pages unless said otherwise. */
export interface SourceCounts {
  precopy: number;
  postcopy: number;
  requested: number;
  /** Sent as zero records on the main and preempt channels (bulk channels count their own). */
  zero: number;
  /** Of the zero pages, those never populated here: sent unread. */
  untouched: number;
  requestsReceived: number;
  requestsSkipped: number;
  requestsResent: number;
  discarded: number;
  recoveries: number;
  pagesResent: number;
  pausedMs: number;
}

export function newSourceCounts(): SourceCounts {
  return { precopy: 0, postcopy: 0, requested: 0, zero: 0, untouched: 0, requestsReceived: 0, requestsSkipped: 0, requestsResent: 0, discarded: 0, recoveries: 0, pagesResent: 0, pausedMs: 0 };
}

/** The switchover's timings (performance.now() milliseconds, and the parts of the downtime). */
export interface Downtime extends DowntimeParts {
  total: number;
  start: number;
  syncPages: number;
}

export interface SourceReportParts {
  dirtyLog: DirtyLogKind;
  dirtyLogStartMs: number;
  counts: SourceCounts;
  /** Zero pages sent on bulk channels, every connection's. */
  bulkZero: number;
  discards: OutgoingReport['discards'];
  downtime: Downtime;
  precopyMs: number;
  precopy: Pick<OutgoingReport, 'rounds' | 'precopy_end' | 'precopy_rounds' | 'precopy_totals'>;
  postcopyMs: number;
  totalMs: number;
  bytesSent: number;
  bulkChannels: number;
}

export function outgoingReport(p: SourceReportParts): OutgoingReport {
  const { counts, downtime } = p;
  return {
    dirty_log: p.dirtyLog,
    dirty_log_start_ms: round(p.dirtyLogStartMs),
    rounds: p.precopy.rounds,
    pages_sent: { precopy: counts.precopy, postcopy: counts.postcopy, requested: counts.requested, zero: counts.zero + p.bulkZero, untouched: counts.untouched },
    requests: { received: counts.requestsReceived, skipped: counts.requestsSkipped, resent: counts.requestsResent },
    discarded_pages: counts.discarded,
    recoveries: counts.recoveries,
    pages_resent: counts.pagesResent,
    paused_ms: Math.round(counts.pausedMs),
    downtime_ms: round(downtime.total),
    downtime_parts_ms: { pause: round(downtime.pause), sync: round(downtime.sync), discard: round(downtime.discard), commands: round(downtime.commands), write: round(downtime.write) },
    final_sync_pages: downtime.syncPages,
    pause_epoch_ms: round(performance.timeOrigin + downtime.start, 3),
    discards: { ...p.discards, before_pause_ms: round(p.discards.before_pause_ms) },
    precopy_ms: Math.round(p.precopyMs),
    precopy_end: p.precopy.precopy_end,
    precopy_rounds: p.precopy.precopy_rounds,
    precopy_totals: p.precopy.precopy_totals,
    postcopy_ms: Math.round(p.postcopyMs),
    total_ms: Math.round(p.totalMs),
    bytes_sent: p.bytesSent,
    bulk_channels: p.bulkChannels,
  };
}
