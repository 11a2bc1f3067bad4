// A pager's statistics as QEMU 10.1 reports postcopy's: total blocktime (time during which
// every guest thread was blocked), blocktime per thread, and fault latency (average and a
// histogram of power-of-two microsecond buckets).
import { round } from '../base/index.js';

export const LATENCY_BUCKETS = 24; // bucket i holds latencies in [2^(i-1), 2^i) µs; bucket 0: < 1 µs


/** What a report says of a latency histogram. */
export interface LatencyReport {
  avg: number;
  p50: number;
  p99: number;
  histogram: number[];
  count: number;
}

/** The `latency_us` of a report. */
export function latencyReport(latency: LatencyHistogram | undefined): LatencyReport {
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
