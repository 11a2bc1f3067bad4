// Types shared by the scenario table (bench/scenarios.ts), the scenario implementations
// (bench/uffd.ts, postcopy.ts, migration.ts, snapshot.ts, restore.ts) and the report
// (bench/report.ts). It imports nothing, so that none of those modules has to import another
// for a type.

export type Kind = 'latency' | 'throughput' | 'migration';

export interface LatencyResult {
  scenario: string;
  kind: 'latency';
  faults: number;
  p50_us: number;
  p99_us: number;
  max_us: number;
  /** Faults per second over the touchers' loops (first start to last end). */
  faults_per_s: number;
  /**
   * How often the handler (main) thread went to sleep per fault, and its CPU time per fault,
   * over the touch loops. ~0 sleeps: the next fault was already queued when the loop came
   * back to epoll (handler and toucher alternate on one CPU, or the handler is the
   * bottleneck); ~1: every fault woke the handler from idle (cross-CPU wake-ups, which cost
   * several µs each on this VM). The floor is bimodal in the same way; compare like with like.
   */
  handler_sleeps_per_fault: number;
  handler_cpu_us_per_fault: number;
}

export interface ThroughputResult {
  scenario: string;
  kind: 'throughput';
  bytes: number;
  gb_per_s: number;
  us_per_4k: number;
}

/** A whole migration (bench/migration.ts): no floor, reported beside the scenario's reference. */
export interface MigrationResult {
  scenario: string;
  kind: 'migration';
  /** The source's: from the migration's start (channels connected) to COMPLETE, as QEMU's "total time". */
  total_ms: number;
  /** The source's: the guest paused here until RUN was sent. */
  downtime_ms: number;
  /** The destination's: time every guest thread was blocked on a missing page at once. */
  blocktime_ms: number;
  /** The destination's page requests, fault read to page placed: power-of-two bucket bounds. */
  request_p50_us: number;
  request_p99_us: number;
  /** Every channel, framing included. */
  bytes_sent: number;
  details: MigrationDetails;
}

/**
 * One run of QEMU's own postcopy beside a whole migration (`--qemu`, bench/qemu.ts): the JSON
 * object the anchor's bench.py writes, QEMU's `query-migrate` on both sides. Its guest is one
 * TCG vCPU writing one byte per random page: side by side with ours, never a ratio.
 */
export interface QemuResult {
  /** The source's total-time: `migrate` to completed. */
  total_ms: number;
  /** The source's downtime (a switchover under 1 ms, which QEMU 7.2 misreports, reads 0). */
  downtime_ms: number;
  setup_ms: number;
  /** The destination's postcopy-blocktime (its one vCPU blocked on a missing page). */
  blocktime_ms: number;
  /** Pages the destination requested (postcopy-requests). */
  requests: number;
  /** RAM bytes sent in precopy and postcopy (transferred). */
  bytes_sent: number;
  details: QemuDetails;
}

export interface QemuDetails {
  precopy_bytes: number;
  postcopy_bytes: number;
  /** From postcopy-active to completed (the source's events). */
  postcopy_ms: number | null;
  /** The destination guest's longest gap between two of its writes, over the seconds it printed. */
  guest_max_gap_ms: number | null;
  /** What QEMU 7.2 said the downtime was, when it was that bug (larger than the total time). */
  downtime_reported_ms?: number;
  /** `--qemu-trace`: fault thread's request to page placed, from QEMU's trace events (exact, not buckets). */
  request_p50_us?: number;
  request_p99_us?: number;
  traced_requests?: number;
  run_id: string;
}

/** A QEMU run beside a migration: its figures, or why there are none. */
export type QemuRun = QemuResult | { skipped: string };

export interface Skipped {
  scenario: string;
  skipped: string;
}

export type Result = LatencyResult | ThroughputResult | MigrationResult | Skipped;

// ---- the extra figures of each scenario family (a result's `details`) ------------------------

/** postcopy-fault (bench/postcopy.ts). */
export interface PostcopyFaultDetails {
  bytes: number;
  requested: number;
  streamed: number;
  /** The destination's own clock: fault read -> page placed (power-of-two bucket bounds). */
  dest_request_avg_us: number;
  dest_request_p50_bound_us: number;
  dest_request_p99_bound_us: number;
  source_requests: number;
  source_cpu_us_per_request: number | null;
  source_sleeps_per_request: number | null;
  postcopy_ms: number;
}

/** postcopy-fault-loaded (bench/postcopy.ts). */
export interface PostcopyLoadedDetails {
  bytes: number;
  loads: number;
  faulted: number;
  already_streamed: number;
  /** p50/p99 over all the toucher's loads, faulted or not. */
  loads_p50_us: number;
  loads_p99_us: number;
  requested: number;
  requests_skipped_by_source: number | null;
  streamed: number;
  dest_request_avg_us: number;
  dest_request_p99_bound_us: number;
  toucher_ms: number;
  /** The toucher ran while the stream was still going (it must, for the figure to mean "loaded"). */
  toucher_done_before_end_ms: number;
  stream_gb_per_s: number;
  postcopy_ms: number;
}

/** postcopy-throughput (bench/postcopy.ts). */
export interface PostcopyThroughputDetails {
  bytes: number;
  postcopy_ms: number;
  pages_streamed: number;
  pages_requested: number;
  pages_zero: number;
  /** Each side's CPU (every thread) per 4 KiB page streamed, as the floor's stream-4k reports its own. */
  send_cpu_us_per_4k: number;
  recv_cpu_us_per_4k: number | null;
  /** Share of the postcopy phase each side's main thread spent on a CPU (1 = never idle). */
  dest_main_busy: number | null;
  dest_main_sleeps_per_ms: number | null;
  source_main_busy: number;
  source_main_sleeps_per_ms: number;
  /**
   * CPU time of every thread of each process over the postcopy phase / its wall time (the
   * main threads and the bulk channels' workers; 2 = both of this VM's CPUs).
   */
  dest_process_busy: number | null;
  source_process_busy: number;
  bulk_channels: number;
  source_postcopy_ms: number | null;
}

/** migration-1g, migration-1g-channels (bench/migration.ts): the rest of the demo's report. */
export interface MigrationDetails {
  verified: boolean;
  guest_bytes: number;
  bulk_channels: number;
  precopy_ms: number;
  /** Precopy over all its rounds: what the source sent, and what the guest dirtied meanwhile. */
  precopy_send_mib_s: number;
  precopy_dirty_mib_s: number;
  postcopy_ms: number;
  /** Pages placed in postcopy / time from RUN to the end (the destination's). */
  postcopy_gb_per_s: number;
  pages_precopy: number;
  pages_streamed: number;
  pages_requested: number;
  request_avg_us: number;
  /** From the source's pause to RUN applied at the destination (both on this host). */
  downtime_to_run_ms: number | null;
  /** The source's downtime by part (pause, sync, discard, commands, write). */
  downtime_parts_ms: Record<string, number>;
  destination_total_ms: number;
  destination_peak_rss_mb: number | null;
}

/** snapshot, snapshot-1page (bench/snapshot.ts). */
export interface SnapshotDetails {
  write_faults: number;
  write_fault_p50_us: number;
  write_fault_p99_us: number;
  pause_ms: number;
  engine_fault_p50_us: number;
  pages_by_fault: number;
}

/** restore-eager (bench/restore.ts). */
export interface RestoreEagerDetails {
  restore_ms: number;
  bytes_read: number;
  report_gb_per_s: number;
  checksum_verified: boolean;
}

/** restore-lazy, restore-lazy-faults (bench/restore.ts). */
export interface RestoreLazyDetails {
  prefetch: boolean;
  loads: number;
  faulted: number;
  loads_p50_us: number;
  loads_p99_us: number;
  toucher_ms: number;
  /** From LazyRestore.start() until every page was present (the restore's report). */
  all_present_ms: number;
  restore_faults: number;
  pages_by_fault: number;
  pages_by_prefetch: number;
  /** The restore's own fault latency: read off the userfaultfd to placement. */
  engine_fault_p50_us: number;
  engine_fault_p99_us: number;
  blocktime_ms: number;
  checksum_verified: boolean;
}

/** serve-prefetch (bench/serve.ts). */
export interface ServeDetails {
  /** From the VM's connection until every page was present. */
  all_present_ms: number;
  /** The reference: the memory file read into fresh memory, right before, in the same run. */
  eager_read_ms: number;
  /** all_present_ms / eager_read_ms (the goal: at most 1.2). */
  eager_ratio: number;
}

/** Any scenario's details, as the report reads them back from a JSON line: every field optional. */
export type Details = Partial<
  PostcopyFaultDetails &
    PostcopyLoadedDetails &
    PostcopyThroughputDetails &
    SnapshotDetails &
    RestoreEagerDetails &
    RestoreLazyDetails &
    ServeDetails &
    MigrationDetails
>;

/**
 * A result of either side (the floor's JSON lines, or ours) as bench/runner.ts and report.ts
 * read it: whatever it measured, or why it was skipped.
 */
export interface Measured {
  scenario: string;
  skipped?: string;
  faults?: number;
  p50_us?: number;
  p99_us?: number;
  max_us?: number;
  faults_per_s?: number;
  handler_sleeps_per_fault?: number;
  handler_cpu_us_per_fault?: number;
  gb_per_s?: number;
  us_per_4k?: number;
  /** The floor's stream-4k: each side's CPU per page. */
  send_cpu_us_per_4k?: number;
  recv_cpu_us_per_4k?: number;
  total_ms?: number;
  downtime_ms?: number;
  blocktime_ms?: number;
  request_p50_us?: number;
  request_p99_us?: number;
  bytes_sent?: number;
  details?: Details;
}
