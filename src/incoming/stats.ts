// Postcopy statistics as QEMU 10.1 reports them: total blocktime (time during which every
// guest thread was blocked), blocktime per thread, page-request latency (average and a
// histogram of power-of-two microsecond buckets), page counts, bytes, durations, downtime.
import { round } from '../base/index.js';


export const LATENCY_BUCKETS = 24; // bucket i holds latencies in [2^(i-1), 2^i) µs; bucket 0: < 1 µs

export interface PostcopyReport {
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
  latency_us: { avg: number; p50: number; p99: number; histogram: number[]; count: number };
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

/** The `latency_us` of a report. */
export function latencyReport(latency: LatencyHistogram | undefined): PostcopyReport['latency_us'] {
  return {
    avg: round(latency?.average ?? 0),
    p50: latency?.quantile(0.5) ?? 0,
    p99: latency?.quantile(0.99) ?? 0,
    histogram: latency?.buckets ?? [],
    count: latency?.count ?? 0,
  };
}

/** The `blocktime_per_thread_ms` of a report, keyed by thread id. */
export function blocktimePerThread(blocktime: Blocktime | undefined): Record<string, number> {
  return Object.fromEntries([...(blocktime?.perThreadMs ?? [])].map(([t, ms]) => [String(t), round(ms)]));
}

export class LatencyHistogram {
  readonly buckets = new Array<number>(LATENCY_BUCKETS).fill(0);
  count = 0;
  totalUs = 0;

  add(us: number): void {
    this.count++;
    this.totalUs += us;
    const bucket = us < 1 ? 0 : Math.min(LATENCY_BUCKETS - 1, 1 + Math.floor(Math.log2(us)));
    this.buckets[bucket]++;
  }

  get average(): number {
    return this.count ? this.totalUs / this.count : 0;
  }

  /** Upper bound (µs) of the bucket holding quantile q: histograms give bounds, not values. */
  quantile(q: number): number {
    if (!this.count) return 0;
    const target = Math.ceil(q * this.count);
    let seen = 0;
    for (let i = 0; i < LATENCY_BUCKETS; i++) {
      seen += this.buckets[i];
      if (seen >= target) return 2 ** i;
    }
    return 2 ** (LATENCY_BUCKETS - 1);
  }
}

/**
 * Blocktime: per thread, the time between its fault and the placement of its page; overall,
 * the time during which all `threads` guest threads were blocked at once.
 */
export class Blocktime {
  private readonly waitingSince = new Map<number, number>();
  readonly perThreadMs = new Map<number, number>();
  totalMs = 0;
  private allBlockedSince = -1;

  constructor(private threads: number) {}

  setThreads(threads: number): void {
    this.threads = threads;
  }

  blocked(threadId: number, now: number): void {
    if (this.waitingSince.has(threadId)) return;
    this.waitingSince.set(threadId, now);
    if (this.threads > 0 && this.waitingSince.size >= this.threads && this.allBlockedSince < 0) this.allBlockedSince = now;
  }

  resumed(threadId: number, now: number): void {
    const since = this.waitingSince.get(threadId);
    if (since === undefined) return;
    this.waitingSince.delete(threadId);
    this.perThreadMs.set(threadId, (this.perThreadMs.get(threadId) ?? 0) + (now - since));
    if (this.allBlockedSince >= 0) {
      this.totalMs += now - this.allBlockedSince;
      this.allBlockedSince = -1;
    }
  }
}
