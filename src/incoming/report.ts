// What the destination of a migration reports at its end (or failure): page counts, the
// switchover, blocktime and request latency, recoveries, bytes and durations.
import { performance } from 'node:perf_hooks';
import { TARGET_PAGE_SIZE, round } from '../base/index.js';
import { blocktimePerThread, latencyReport, type Blocktime, type LatencyHistogram, type LatencyReport } from '../pager/index.js';

export interface IncomingReport {
  state: string;
  /**
   * Target pages. precopy: written before LISTEN (a page sent in several rounds counts each
   * time); missing_at_listen: not in memory when postcopy began (never sent, or discarded);
   * each of those is placed exactly once afterwards, as streamed (the background stream) or
   * requested (a guest thread faulted on it), so streamed + requested = missing_at_listen;
   * duplicate: arrived again after it was placed (a request raced the stream, or a page placed
   * before a broken connection came again), not placed twice.
   */
  pages: { precopy: number; streamed: number; requested: number; zero: number; discarded: number; duplicate: number; missing_at_listen: number };
  /** Page requests sent to the source; `resent`: asked again (timeout, or after a recovery). */
  requests: { sent: number; resent: number };
  /** Broken connections recovered from, and the time spent PAUSED. */
  recoveries: number;
  paused_ms: number;
  /** Guest memory size. */
  bytes_total: number;
  /** Bytes read from the source on every channel, framing included. */
  bytes_received: number;
  /** Bulk channels of the migration (0: pages came on the main channel). */
  bulk_channels: number;
  blocktime_ms: number;
  blocktime_per_thread_ms: Record<string, number>;
  latency_us: LatencyReport;
  /** From LISTEN to RUN here. */
  downtime_ms: number;
  /**
   * The destination's share of the switchover: applying every DISCARD (and the syscalls it
   * took), LISTEN (registering the blocks), and when RUN was applied (epoch milliseconds, to
   * set beside the source's pause on the same host).
   */
  switchover: { discard_ms: number; discard_ranges: number; discard_syscalls: number; listen_ms: number; run_epoch_ms: number };
  total_ms: number;
  postcopy_ms: number;
  throughput_gb_per_s: number;
}

/** The destination's counters of pages, in target pages (see IncomingReport.pages). */
export interface PageCounts {
  precopy: number;
  /** Placed after LISTEN, each page once (by its received bit). */
  postcopyPlaced: number;
  requested: number;
  zero: number;
  discarded: number;
  duplicate: number;
  missingAtListen: number;
}

/** Times of the engine's life, performance.now() milliseconds (0: not yet). */
export interface IncomingTimes {
  started: number;
  listenAt: number;
  runAt: number;
  endAt: number;
  /** The destination's share of the switchover. */
  switchover: { discardMs: number; discardRanges: number; discardSyscalls: number; listenMs: number };
}

export interface ReportParts {
  state: string;
  pages: PageCounts;
  times: IncomingTimes;
  requests: { sent: number; resent: number };
  recovery: { count: number; pausedMs: number };
  bytesTotal: number;
  bytesReceived: number;
  bulkChannels: number;
  blocktime: Blocktime | undefined;
  latency: LatencyHistogram | undefined;
}

export function incomingReport(p: ReportParts, now: number): IncomingReport {
  const { pages, times } = p;
  const end = times.endAt || now;
  const postcopyMs = times.runAt ? end - times.runAt : 0;
  return {
    state: p.state,
    pages: {
      precopy: pages.precopy,
      streamed: pages.postcopyPlaced - pages.requested,
      requested: pages.requested,
      zero: pages.zero,
      discarded: pages.discarded,
      duplicate: pages.duplicate,
      missing_at_listen: pages.missingAtListen,
    },
    requests: p.requests,
    recoveries: p.recovery.count,
    paused_ms: round(p.recovery.pausedMs),
    bytes_total: p.bytesTotal,
    bytes_received: p.bytesReceived,
    bulk_channels: p.bulkChannels,
    blocktime_ms: round(p.blocktime?.totalMs ?? 0),
    blocktime_per_thread_ms: blocktimePerThread(p.blocktime),
    latency_us: latencyReport(p.latency),
    downtime_ms: round(times.runAt && times.listenAt ? times.runAt - times.listenAt : 0),
    switchover: {
      discard_ms: round(times.switchover.discardMs),
      discard_ranges: times.switchover.discardRanges,
      discard_syscalls: times.switchover.discardSyscalls,
      listen_ms: round(times.switchover.listenMs),
      run_epoch_ms: times.runAt ? round(performance.timeOrigin + times.runAt, 3) : 0,
    },
    total_ms: round(end - times.started),
    postcopy_ms: round(postcopyMs),
    throughput_gb_per_s: postcopyMs > 0 ? round((pages.postcopyPlaced * TARGET_PAGE_SIZE) / (postcopyMs / 1000) / 1e9, 3) : 0,
  };
}
