// The one table of bench scenarios, in the floor's order, then the postcopy, snapshot,
// restore and whole-migration scenarios. For each: its kind, how the project runs it (or that
// only the floor has it), the floor scenario it is compared with (a migration has none: with
// --qemu it stands beside QEMU's own postcopy, run in the same invocation), the project issue's
// target, and which figure picks the best of --runs. Pure data: the launcher side (bench/cli.ts, runner.ts, report.ts)
// reads it without loading any scenario's code, and bench/project.ts runs what it says.

import type { Pattern } from '../src/guest/index.js';

export type PostcopyMode = 'fault' | 'loaded' | 'throughput';
export type RestoreMode = 'eager' | 'lazy' | 'lazy-faults';

/** Faults served on the main thread's event loop, touchers in workers (bench/uffd.ts). */
export interface FaultSpec {
  kind: 'fault';
  pageSize: number;
  huge: boolean;
  wp: boolean;
  threads: number;
}
/** Placement throughput, no faults (bench/uffd.ts). */
export interface PlaceSpec {
  kind: 'place';
  run: number;
  zero: boolean;
}
/** A migration over loopback TCP, source in a child process (bench/postcopy.ts). */
export interface PostcopySpec {
  kind: 'postcopy';
  mode: PostcopyMode;
  /**
   * Bulk channels the source opens besides main and preempt (0: pages go on the main channel).
   * Only the project's OutgoingMigration has them: 0 for mode 'fault'.
   */
  channels: number;
  /** TLS 1.3 on every channel. */
  tls?: boolean;
}
/**
 * A whole migration of the reference guest: `postcopy demo --json` with these options, in a
 * child process (bench/migration.ts). Its size is its own: --mib does not apply.
 */
export interface MigrationSpec {
  kind: 'migration';
  /** Guest memory, as `--size` takes it. */
  size: string;
  threads: number;
  pattern: Pattern;
  precopySeconds: number;
  /** Bulk channels (0: pages go on the main channel). */
  channels: number;
}
/**
 * QEMU's own postcopy run beside a whole migration with --qemu: the anchor's `bench.py postcopy`
 * with these options (bench/qemu.ts). Its guest is its own: one TCG vCPU, 1 GiB, 768 MiB dirtied.
 */
export interface QemuSpec {
  /** The guest writes (or reads) one byte of a random page per step, flat out. */
  mode: 'write' | 'read';
  /** Seconds of precopy before migrate-start-postcopy. */
  delaySeconds: number;
  /** The postcopy-preempt capability: requested pages on a channel of their own. */
  preempt: boolean;
}
/** A background snapshot into a file while a writer thread writes (bench/snapshot.ts). */
export interface SnapshotSpec {
  kind: 'snapshot';
  claimPages?: number;
}
/** A restore from a snapshot file (bench/restore.ts). */
export interface RestoreSpec {
  kind: 'restore';
  mode: RestoreMode;
}
/** A page server serving the VMM stand-in from a memory file (bench/serve.ts). */
export interface ServeSpec {
  kind: 'serve';
  prefetch: boolean;
  /** Pages from another process (`serve-pages`, its stream capped): faults are page requests. */
  remote?: boolean;
}
/** The floor has this scenario and the project does not; `why` is printed in its row. */
export interface FloorOnly {
  kind: 'floor-only';
  why: string;
}
export type ProjectSpec = FaultSpec | PlaceSpec | PostcopySpec | MigrationSpec | SnapshotSpec | RestoreSpec | ServeSpec;

/** Latency targets: project/floor at most (p50, p99), or an absolute p99 in µs (below). */
export interface LatencyTarget {
  p50?: number;
  p99?: number;
  p99Us?: number;
}
/** Throughput targets: project/floor GB/s at least; faultP50: write-fault p50 over the floor's, at most. */
export interface ThroughputTarget {
  min: number;
  faultP50?: number;
}

interface Common {
  name: string;
  project: ProjectSpec | FloorOnly;
  /** The floor scenario compared with, when it is not the one of the same name. */
  floor?: string;
  /** Compared with this scenario of ours instead of the floor (run in the floor's turn). */
  baseline?: string;
}
export interface LatencyScenario extends Common {
  kind: 'latency';
  target?: LatencyTarget;
  /** Which figure picks the best of --runs: p50 (then p99) unless said otherwise. */
  best?: 'p50' | 'p99';
}
export interface ThroughputScenario extends Common {
  kind: 'throughput';
  target: ThroughputTarget;
}
/**
 * A whole migration, reported as it is (total time, downtime, blocktime, request latency,
 * bytes sent); with --qemu, beside QEMU's own postcopy of `qemu`, run alternately with it in
 * the same invocation: a different guest, so no ratio, and no floor. Best of --runs: the
 * shortest total time, on both sides.
 */
export interface MigrationScenario {
  name: string;
  kind: 'migration';
  project: MigrationSpec;
  qemu: QemuSpec;
}
export type Scenario = LatencyScenario | ThroughputScenario | MigrationScenario;

const PAGE = 4096;
const HUGE = 2 * 1024 * 1024;
const fault = (pageSize: number, threads: number, wp = false): FaultSpec => ({ kind: 'fault', pageSize, huge: pageSize > PAGE, wp, threads });
const place = (run: number, zero = false): PlaceSpec => ({ kind: 'place', run, zero });
const postcopy = (mode: PostcopyMode, channels = 0, tls = false): PostcopySpec => ({ kind: 'postcopy', mode, channels, tls });
/** The migration: a 1 GiB reference guest, two threads writing random pages flat out, 1 s of precopy. */
const migration1g = (channels: number): MigrationSpec => ({ kind: 'migration', size: '1G', threads: 2, pattern: 'random', precopySeconds: 1, channels });
/** The comparison: QEMU's guest writing flat out, 1 s of precopy, then postcopy with preempt. */
const QEMU_1G: QemuSpec = { mode: 'write', delaySeconds: 1, preempt: true };

export const SCENARIOS: readonly Scenario[] = [
  { name: 'missing-4k', kind: 'latency', project: fault(PAGE, 1), target: { p50: 1.25, p99: 1.5 } },
  { name: 'missing-4k-2t', kind: 'latency', project: fault(PAGE, 2) },
  { name: 'wp-4k', kind: 'latency', project: fault(PAGE, 1, true) },
  { name: 'remote-4k', kind: 'latency', project: { kind: 'floor-only', why: 'floor only: the project side is postcopy-fault' } },
  { name: 'huge-2m', kind: 'latency', project: fault(HUGE, 1) },
  { name: 'copy-4k', kind: 'throughput', project: place(PAGE), target: { min: 0.9 } },
  { name: 'copy-64k', kind: 'throughput', project: place(64 << 10), target: { min: 0.9 } },
  { name: 'copy-1m', kind: 'throughput', project: place(1 << 20), target: { min: 0.9 } },
  { name: 'zeropage-4k', kind: 'throughput', project: place(PAGE, true), target: { min: 0.9 } },
  // a real migration over loopback TCP, source in a child process (bench/postcopy.ts)
  // (each against a floor scenario of the same run: remote-4k for faults, stream-4k for the stream)
  { name: 'postcopy-fault', kind: 'latency', project: postcopy('fault'), floor: 'remote-4k', target: { p50: 2 } },
  { name: 'postcopy-fault-loaded', kind: 'latency', project: postcopy('loaded'), floor: 'remote-4k', target: { p99Us: 2000 }, best: 'p99' },
  { name: 'postcopy-fault-loaded-channels', kind: 'latency', project: postcopy('loaded', 2), floor: 'remote-4k', target: { p99Us: 2000 }, best: 'p99' },
  { name: 'postcopy-throughput', kind: 'throughput', project: postcopy('throughput'), floor: 'stream-4k', target: { min: 0.8 } },
  { name: 'postcopy-throughput-channels', kind: 'throughput', project: postcopy('throughput', 2), floor: 'stream-4k', target: { min: 1.0 } },
  // TLS 1.3 against our own plaintext stream, the two run alternately
  { name: 'postcopy-throughput-tls', kind: 'throughput', project: postcopy('throughput', 0, true), baseline: 'postcopy-throughput', target: { min: 0.6 } },
  // a background snapshot into a file while a writer thread writes (bench/snapshot.ts)
  { name: 'snapshot', kind: 'throughput', project: { kind: 'snapshot' }, floor: 'snapshot-wp', target: { min: 0.8, faultP50: 1.5 } },
  { name: 'snapshot-1page', kind: 'throughput', project: { kind: 'snapshot', claimPages: 1 }, floor: 'snapshot-wp', target: { min: 0.8, faultP50: 1.5 } },
  // restores from a snapshot file written (and read once, page cache warm) before the timing
  // (bench/restore.ts). restore-lazy: toucher and prefetcher; restore-lazy-faults: no prefetcher,
  // only faults place pages, as in missing-4k. The issue sets no latency target for them.
  { name: 'restore-eager', kind: 'throughput', project: { kind: 'restore', mode: 'eager' }, floor: 'copy-64k', target: { min: 0.8 } },
  { name: 'restore-lazy', kind: 'latency', project: { kind: 'restore', mode: 'lazy' }, floor: 'missing-4k' },
  { name: 'restore-lazy-faults', kind: 'latency', project: { kind: 'restore', mode: 'lazy-faults' }, floor: 'missing-4k' },
  // the page server for VMMs (bench/serve.ts): the handler in this process, the VMM stand-in in another
  { name: 'serve-file-faults', kind: 'latency', project: { kind: 'serve', prefetch: false }, floor: 'missing-4k', target: { p50: 1.5 } },
  { name: 'serve-prefetch', kind: 'throughput', project: { kind: 'serve', prefetch: true }, floor: 'copy-1m', target: { min: 0 } },
  { name: 'serve-remote-faults', kind: 'latency', project: { kind: 'serve', prefetch: false, remote: true }, floor: 'remote-4k', target: { p50: 2 } },
  // whole migrations of the CLI's reference guest (`postcopy demo`, bench/migration.ts): no floor;
  // with --qemu, QEMU's own postcopy runs in the floor's turn (bench/qemu.ts)
  { name: 'migration-1g', kind: 'migration', project: migration1g(0), qemu: QEMU_1G },
  { name: 'migration-1g-channels', kind: 'migration', project: migration1g(2), qemu: QEMU_1G },
];

export function scenarioNamed(name: string): Scenario | undefined {
  return SCENARIOS.find((s) => s.name === name);
}

/** How the project runs `name`, or undefined when the project has no such scenario. */
export function projectSpec(name: string): ProjectSpec | undefined {
  const project = scenarioNamed(name)?.project;
  return project && project.kind !== 'floor-only' ? project : undefined;
}

/** The scenarios the project runs (main.ts's usage lists them). */
export function projectScenarioNames(): string[] {
  return SCENARIOS.filter((s) => s.project.kind !== 'floor-only').map((s) => s.name);
}
