// The bench's report: one row per selected scenario (project vs floor, their ratios, the
// target and whether it is met; a whole migration beside QEMU's, with --qemu), printed as a
// table or as one JSON object per line.
import { cpus, loadavg, release } from 'node:os';
import { qemuName, specArgs } from './qemu.js';
import { better, type BenchOptions, type RunResults } from './runner.js';
import type { LatencyScenario, MigrationScenario, Scenario, ThroughputScenario } from './scenarios.js';
import type { Details, Kind, Measured, QemuResult, QemuRun } from './types.js';

/** The bounds a row is held to, as printed in its JSON `target`. */
export interface RowTarget {
  ratio_max?: number;
  p99_ratio_max?: number;
  p99_us_below?: number;
  ratio_min?: number;
  write_fault_p50_ratio_max?: number;
}

/** One JSON line of `--json`; fields appear in this order. */
export interface Row {
  scenario: string;
  kind: Kind;
  floor_scenario?: string;
  // latency
  p50_us?: number | null;
  p99_us?: number | null;
  max_us?: number | null;
  faults?: number | null;
  faults_per_s?: number | null;
  floor_p50_us?: number | null;
  floor_p99_us?: number | null;
  floor_max_us?: number | null;
  floor_faults_per_s?: number | null;
  // throughput
  gb_per_s?: number | null;
  us_per_4k?: number | null;
  floor_gb_per_s?: number | null;
  floor_us_per_4k?: number | null;
  /** A page stream: each side's CPU per 4 KiB page, ours (from details) and the floor's. */
  send_cpu_us_per_4k?: number | null;
  recv_cpu_us_per_4k?: number | null;
  floor_send_cpu_us_per_4k?: number | null;
  floor_recv_cpu_us_per_4k?: number | null;
  ratio?: number | null;
  p99_ratio?: number | null;
  handler_sleeps_per_fault?: number | null;
  handler_cpu_us_per_fault?: number | null;
  target?: RowTarget;
  /** Every bound of the target holds; null when a figure it needs is missing. */
  on_target?: boolean | null;
  write_fault_p50_us?: number | null;
  floor_write_fault_p50_us?: number | null;
  write_fault_p50_ratio?: number | null;
  // migration (no floor; with --qemu, QEMU's own postcopy beside it)
  channels?: number;
  total_ms?: number | null;
  downtime_ms?: number | null;
  blocktime_ms?: number | null;
  /** Power-of-two bucket bounds (the destination's request histogram). */
  request_p50_us?: number | null;
  request_p99_us?: number | null;
  bytes_sent?: number | null;
  qemu?: QemuRow;
  details?: Details;
  /** Over every run of each side: the ranking figure's median and spread, the ratio of the medians. */
  median?: MedianSummary;
  skipped?: string;
  floor_skipped?: string;
  /** Always set, after everything else (so they come last in the JSON line). */
  mib?: number;
  runs?: number;
  cpu?: string;
}

export interface MedianSummary {
  figure: 'p50_us' | 'p99_us' | 'gb_per_s' | 'total_ms';
  runs: number;
  project: number | null;
  floor?: number | null;
  ratio?: number | null;
  /** [min, max] of the figure over the runs. */
  project_spread: [number, number] | null;
  floor_spread?: [number, number] | null;
}

/** QEMU's own postcopy beside a whole migration (--qemu), from the same invocation: no ratio. */
export interface QemuRow {
  /** `qemu-system-x86_64 --version`'s first line. */
  version: string;
  /** What ran, without the paths: `bench.py postcopy --mode write --delay 1 --preempt`. */
  command: string;
  /** The run with the shortest total time (as ours), or null when none completed. */
  best: QemuResult | null;
  /** Total time over every completed run: median and [min, max]. */
  median: { figure: 'total_ms'; runs: number; qemu: number | null; spread: [number, number] | null };
  /** Every run, in order; a failed one says why. */
  runs: QemuRun[];
}

export function ratio(a: number | null | undefined, b: number | null | undefined): number | null {
  return a! > 0 && b! > 0 ? Math.round((a! / b!) * 100) / 100 : null;
}

// ---- rows ------------------------------------------------------------------------------------

export function buildRows(selected: readonly Scenario[], results: RunResults, options: BenchOptions): Row[] {
  return selected.map((s) => {
    const oursRuns = s.project.kind === 'floor-only' ? [] : results.oursRuns.get(s.name) ?? [];
    const floorRuns = results.floorRuns.get(s.name) ?? [];
    const ours: Measured = s.project.kind === 'floor-only' ? { scenario: s.name, skipped: s.project.why } : bestOf(oursRuns, s) ?? { scenario: s.name, skipped: 'not run' };
    const row: Row = { scenario: s.name, kind: s.kind };
    let floorSkipped: string | undefined;
    if (s.kind === 'migration') {
      migrationRow(row, s, ours);
      if (results.qemu) row.qemu = qemuRow(results.qemu.version, s, results.qemuRuns.get(s.name) ?? []);
    } else {
      const floorName = s.baseline ? `${s.baseline} (ours)` : s.floor ?? s.name;
      const floor: Measured = bestOf(floorRuns, s) ?? { scenario: floorName, skipped: `no ${floorName} result` };
      if (s.floor || s.baseline) row.floor_scenario = floorName;
      if (s.kind === 'latency') latencyRow(row, s, ours, floor);
      else throughputRow(row, s, ours, floor);
      floorSkipped = floor.skipped;
    }
    row.median = medianSummary(s, oursRuns, floorRuns);
    if (ours.details) row.details = ours.details;
    if (ours.skipped) row.skipped = ours.skipped;
    if (floorSkipped) row.floor_skipped = floorSkipped;
    row.mib = options.mib;
    row.runs = options.runs;
    if (options.cpu !== null) row.cpu = options.cpu;
    return row;
  });
}

/** The figure that ranks a scenario's runs. */
function rankingFigure(s: Scenario): MedianSummary['figure'] {
  if (s.kind === 'migration') return 'total_ms';
  if (s.kind === 'throughput') return 'gb_per_s';
  return s.best === 'p99' ? 'p99_us' : 'p50_us';
}

/** The best run (lowest latency, highest GB/s, shortest migration), or undefined without any. */
function bestOf(runs: readonly Measured[], s: Scenario): Measured | undefined {
  return runs.reduce<Measured | undefined>((best, run) => better(best, run, s.kind === 'latency' ? s.best : undefined), undefined);
}

export function median(values: number[]): number | null {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return Math.round((sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2) * 1000) / 1000;
}

const spreadOf = (v: number[]): [number, number] | null => (v.length ? [Math.min(...v), Math.max(...v)] : null);

function medianSummary(s: Scenario, oursRuns: readonly Measured[], floorRuns: readonly Measured[]): MedianSummary {
  const figure = rankingFigure(s);
  const values = (runs: readonly Measured[]) => runs.map((r) => r[figure]).filter((v): v is number => typeof v === 'number' && Number.isFinite(v));
  const ours = values(oursRuns);
  const summary: MedianSummary = { figure, runs: Math.max(oursRuns.length, floorRuns.length), project: median(ours), project_spread: spreadOf(ours) };
  if (s.kind === 'migration') return summary;
  const floor = values(floorRuns);
  return { ...summary, floor: median(floor), ratio: ratio(summary.project, median(floor)), floor_spread: spreadOf(floor) };
}

type Figure = Exclude<keyof Measured, 'scenario' | 'skipped' | 'details'>;

/** The named figures of a result (as `prefix` + name), null where it has none. */
function figures(m: Measured, names: readonly Figure[], prefix = ''): Record<string, number | null> {
  return Object.fromEntries(names.map((name) => [prefix + name, m[name] ?? null]));
}

function latencyRow(row: Row, s: LatencyScenario, ours: Measured, floor: Measured): void {
  Object.assign(
    row,
    figures(ours, ['p50_us', 'p99_us', 'max_us', 'faults', 'faults_per_s']),
    figures(floor, ['p50_us', 'p99_us', 'max_us', 'faults_per_s'], 'floor_'),
    { ratio: ratio(ours.p50_us, floor.p50_us), p99_ratio: ratio(ours.p99_us, floor.p99_us) },
    figures(ours, ['handler_sleeps_per_fault', 'handler_cpu_us_per_fault']),
  );
  if (!s.target) return;
  // each bound the target sets must hold; null when a figure it needs is missing
  const checks: (boolean | null)[] = [];
  const target: RowTarget = (row.target = {});
  if (s.target.p50 !== undefined) {
    target.ratio_max = s.target.p50;
    checks.push(row.ratio == null ? null : row.ratio <= s.target.p50);
  }
  if (s.target.p99 !== undefined) {
    target.p99_ratio_max = s.target.p99;
    checks.push(row.p99_ratio == null ? null : row.p99_ratio <= s.target.p99);
  }
  if (s.target.p99Us !== undefined) {
    target.p99_us_below = s.target.p99Us;
    checks.push(row.p99_us == null ? null : row.p99_us < s.target.p99Us);
  }
  row.on_target = checks.includes(null) ? null : checks.every(Boolean);
}

function throughputRow(row: Row, s: ThroughputScenario, ours: Measured, floor: Measured): void {
  Object.assign(
    row,
    figures(ours, ['gb_per_s', 'us_per_4k']),
    figures(floor, ['gb_per_s', 'us_per_4k'], 'floor_'),
    { ratio: ratio(ours.gb_per_s, floor.gb_per_s) },
  );
  // the floor's stream prints each side's CPU per page; a baseline of ours has it in details
  const floorSend = floor.send_cpu_us_per_4k ?? floor.details?.send_cpu_us_per_4k;
  if (floorSend !== undefined) {
    Object.assign(row, {
      send_cpu_us_per_4k: ours.details?.send_cpu_us_per_4k ?? null,
      recv_cpu_us_per_4k: ours.details?.recv_cpu_us_per_4k ?? null,
      floor_send_cpu_us_per_4k: floorSend,
      floor_recv_cpu_us_per_4k: floor.recv_cpu_us_per_4k ?? floor.details?.recv_cpu_us_per_4k ?? null,
    });
  }
  const target: RowTarget = (row.target = { ratio_min: s.target.min });
  row.on_target = row.ratio == null ? null : row.ratio >= s.target.min;
  if (s.target.faultP50 === undefined) return;
  row.write_fault_p50_us = ours.details?.write_fault_p50_us ?? null;
  row.floor_write_fault_p50_us = floor.p50_us ?? null;
  row.write_fault_p50_ratio = ratio(row.write_fault_p50_us, row.floor_write_fault_p50_us);
  target.write_fault_p50_ratio_max = s.target.faultP50;
  const faultsOk = row.write_fault_p50_ratio === null ? null : row.write_fault_p50_ratio <= s.target.faultP50;
  row.on_target = row.on_target === null || faultsOk === null ? null : row.on_target && faultsOk;
}

/** A whole migration: its own figures; no floor, no ratio. */
function migrationRow(row: Row, s: MigrationScenario, ours: Measured): void {
  row.channels = s.project.channels;
  Object.assign(row, figures(ours, ['total_ms', 'downtime_ms', 'blocktime_ms', 'request_p50_us', 'request_p99_us', 'bytes_sent']));
}

/** QEMU's runs beside a migration: the best (shortest total time, as ours), the median and spread of the total time. */
export function qemuRow(version: string, s: MigrationScenario, runs: readonly QemuRun[]): QemuRow {
  const done = runs.filter((r): r is QemuResult => !('skipped' in r));
  const best = done.reduce<QemuResult | null>((a, b) => (a && a.total_ms <= b.total_ms ? a : b), null);
  const totals = done.map((r) => r.total_ms);
  return {
    version,
    command: `bench.py postcopy ${specArgs(s.qemu).join(' ')}`,
    best,
    median: { figure: 'total_ms', runs: runs.length, qemu: median(totals), spread: spreadOf(totals) },
    runs: [...runs],
  };
}

// ---- printout ----------------------------------------------------------------------------------

export function printJson(rows: Row[]): void {
  for (const row of rows) process.stdout.write(JSON.stringify(row) + '\n');
}

const f = (x: number | null | undefined, digits = 2): string => (x === null || x === undefined ? '—' : x.toFixed(digits));
const pad = (s: string | number, n: number): string => String(s).padStart(n);
const verdict = (row: Row): string => (row.on_target === undefined ? '' : row.on_target === null ? 'n/a' : row.on_target ? 'ok' : 'OFF TARGET');
const notesOf = (r: Row): string[] => [r.skipped && `project: ${r.skipped}`, r.floor_skipped && `floor: ${r.floor_skipped}`].filter((n): n is string => !!n);
const withNotes = (line: string, r: Row): string => {
  const notes = notesOf(r);
  return line + (notes.length ? `   (${notes.join('; ')})` : '');
};

function targetText(r: Row): string {
  const t = r.target ?? {};
  const parts: string[] = [];
  if (t.ratio_max !== undefined) parts.push(`p50 ratio ≤ ${t.ratio_max}`);
  if (t.p99_ratio_max !== undefined) parts.push(`p99 ratio ≤ ${t.p99_ratio_max}`);
  if (t.p99_us_below !== undefined) parts.push(`p99 < ${t.p99_us_below} µs`);
  if (t.ratio_min !== undefined) parts.push(`ratio ≥ ${t.ratio_min}`);
  if (t.write_fault_p50_ratio_max !== undefined) parts.push(`write-fault p50 ratio ≤ ${t.write_fault_p50_ratio_max}`);
  return parts.length ? `${parts.join(', ')}: ${verdict(r)}` : '';
}

/** The line under a row: the median of every run of each side, their spread, the ratio of the medians. */
function medianLine(r: Row): string | undefined {
  const m = r.median;
  if (!m || m.runs < 2) return undefined;
  const digits = m.figure === 'gb_per_s' ? 3 : m.figure === 'total_ms' ? 0 : 2;
  const spread = (s: [number, number] | null | undefined) => (s ? ` [${f(s[0], digits)}–${f(s[1], digits)}]` : '');
  const floor = m.floor === undefined ? '' : `, floor ${f(m.floor, digits)}${spread(m.floor_spread)}, ratio ${f(m.ratio)}`;
  const qemu = r.qemu ? `, ${qemuName(r.qemu.version)} ${f(r.qemu.median.qemu, digits)}${spread(r.qemu.median.spread)} (no ratio)` : '';
  return `    median ${m.figure} of ${m.runs} runs: project ${f(m.project, digits)}${spread(m.project_spread)}${floor}${qemu}`;
}

/** Pushes a row's line, then its median line. */
function pushRow(out: string[], line: string, r: Row): void {
  out.push(withNotes(line.trimEnd(), r));
  const m = medianLine(r);
  if (m) out.push(m);
}

/** Width of a table's scenario column: its longest name and two spaces, at least 23. */
const nameWidth = (rows: Row[]): number => Math.max(23, ...rows.map((r) => r.scenario.length + 2));

/** The floor's own scenarios (same name on both sides): latency, then throughput. */
function sameNameTables(rows: Row[], out: string[]): void {
  const lat = rows.filter((r) => r.kind === 'latency' && !r.floor_scenario);
  if (lat.length) {
    out.push('');
    out.push('fault service latency, µs — ratio = project / floor, lower is better (target missing-4k: p50 ≤ 1.25, p99 ≤ 1.5)');
    out.push('sleeps/fault: how often our handler (main) thread slept per fault — ~0: toucher and handler alternate without');
    out.push('cross-CPU wake-ups (the fast mode); ~1: every fault woke an idle CPU (several µs more, on both sides)');
    out.push(`${'scenario'.padEnd(15)}${pad('project p50', 12)}${pad('p99', 9)}${pad('floor p50', 11)}${pad('p99', 9)}${pad('ratio p50', 11)}${pad('p99', 7)}${pad('sleeps/fault', 14)}  target`);
    for (const r of lat) {
      const line = `${r.scenario.padEnd(15)}${pad(f(r.p50_us), 12)}${pad(f(r.p99_us), 9)}${pad(f(r.floor_p50_us), 11)}${pad(f(r.floor_p99_us), 9)}` +
        `${pad(f(r.ratio), 11)}${pad(f(r.p99_ratio), 7)}${pad(f(r.handler_sleeps_per_fault), 14)}  ${verdict(r)}`;
      pushRow(out, line, r);
    }
  }
  const thr = rows.filter((r) => r.kind === 'throughput' && !r.floor_scenario);
  if (thr.length) {
    out.push('');
    out.push('placement throughput, GB/s — ratio = project / floor, higher is better (target ≥ 0.90)');
    out.push(`${'scenario'.padEnd(15)}${pad('project', 12)}${pad('floor', 9)}${pad('ratio', 9)}  target`);
    for (const r of thr) {
      pushRow(out, `${r.scenario.padEnd(15)}${pad(f(r.gb_per_s, 3), 12)}${pad(f(r.floor_gb_per_s, 3), 9)}${pad(f(r.ratio), 9)}  ${verdict(r)}`, r);
    }
  }
}

/** The line(s) under a latency row compared with a floor scenario of another name. */
function latencyDetails(r: Row, d: Details, out: string[]): void {
  const indent = ''.padEnd(4);
  if (d.all_present_ms !== undefined) {
    out.push(`${indent}${d.prefetch ? 'with' : 'no'} prefetch: ${d.faulted} of ${d.loads} loads faulted (the slowest that many: p50/p99 above), all loads p50 ${f(d.loads_p50_us)} p99 ${f(d.loads_p99_us)} µs; ` +
      `every page present after ${f(d.all_present_ms, 0)} ms (toucher ${f(d.toucher_ms, 0)} ms)`);
    out.push(`${indent}pages by fault ${d.pages_by_fault}, by prefetch ${d.pages_by_prefetch}; engine fault p50 ${f(d.engine_fault_p50_us, 0)} p99 ${f(d.engine_fault_p99_us, 0)} µs (histogram buckets); ` +
      `blocktime ${f(d.blocktime_ms, 0)} ms; main thread ${f(r.handler_cpu_us_per_fault, 1)} µs CPU per fault; checksums ${d.checksum_verified ? 'verified' : 'NOT verified'}`);
  } else if (d.loads !== undefined) {
    out.push(`${indent}${d.faulted} of ${d.loads} loads faulted (p50/p99 above are theirs), ${d.already_streamed} found the page already streamed; ` +
      `all loads: p50 ${f(d.loads_p50_us)} p99 ${f(d.loads_p99_us)} µs`);
    out.push(`${indent}stream ${f(d.stream_gb_per_s, 3)} GB/s over ${f(d.postcopy_ms, 0)} ms; the toucher ran ${f(d.toucher_ms, 0)} ms and ended ${f(d.toucher_done_before_end_ms, 0)} ms before the stream; ` +
      `destination request→placed avg ${f(d.dest_request_avg_us, 0)} µs`);
  } else if (d.source_cpu_us_per_request !== undefined) {
    out.push(`${indent}per fault: destination main thread ${f(r.handler_cpu_us_per_fault, 1)} µs CPU, ${f(r.handler_sleeps_per_fault)} sleeps; ` +
      `source ${f(d.source_cpu_us_per_request, 1)} µs CPU, ${f(d.source_sleeps_per_request)} sleeps; destination request→placed avg ${f(d.dest_request_avg_us, 1)} µs`);
  }
}

/** The line under a throughput row compared with a floor scenario of another name. */
function throughputDetails(r: Row, d: Details, out: string[]): void {
  const indent = ''.padEnd(4);
  if (d.eager_read_ms !== undefined) {
    out.push(`${indent}every page present ${f(d.all_present_ms, 1)} ms after the VM connected (a vCPU touching random pages meanwhile); the file read eagerly ` +
      `into fresh memory ${f(d.eager_read_ms, 1)} ms: ratio ${f(d.eager_ratio)} (goal <= 1.2)`);
  } else if (d.restore_ms !== undefined) {
    out.push(`${indent}${f(d.bytes_read! / 2 ** 20, 0)} MiB read in ${f(d.restore_ms, 1)} ms (page cache warm, target fresh memory recycled); ` +
      `checksums ${d.checksum_verified ? 'verified' : 'NOT verified'}; restored memory equal to the snapshot`);
  } else if (d.write_faults !== undefined) {
    out.push(`${indent}${d.write_faults} faulted writes: p50 ${f(d.write_fault_p50_us)} µs (floor ${f(r.floor_write_fault_p50_us)}, ratio ${f(r.write_fault_p50_ratio)}), ` +
      `p99 ${f(d.write_fault_p99_us)} µs; pause ${f(d.pause_ms)} ms; ${d.pages_by_fault} pages saved by faults, engine service p50 ${f(d.engine_fault_p50_us, 1)} µs`);
  } else {
    out.push(`${indent}${d.pages_streamed! + d.pages_requested!} pages in ${f(d.postcopy_ms, 0)} ms (${f(r.us_per_4k)} µs per 4 KiB), ${d.bulk_channels} bulk channel(s); ` +
      `main thread busy: destination ${f(d.dest_main_busy)}, source ${f(d.source_main_busy)} (1 = never idle); ` +
      `all threads: destination ${f(d.dest_process_busy)}, source ${f(d.source_process_busy)} CPUs`);
    const other = r.floor_scenario?.endsWith('(ours)') ? r.floor_scenario.replace(' (ours)', '') : "floor's";
    out.push(`${indent}CPU per 4 KiB, every thread: source ${f(r.send_cpu_us_per_4k)} µs (${other} sender ${f(r.floor_send_cpu_us_per_4k)}), ` +
      `destination ${f(r.recv_cpu_us_per_4k)} µs (${other} receiver ${f(r.floor_recv_cpu_us_per_4k)})`);
  }
}

/** Scenarios compared with a floor scenario of another name: postcopy, snapshot, restore. */
function otherFloorTables(rows: Row[], out: string[]): void {
  const pc = rows.filter((r) => r.floor_scenario);
  if (!pc.length) return;
  const w = nameWidth(pc);
  const vs = Math.max(11, ...pc.map((r) => r.floor_scenario!.length + 2));
  out.push('');
  out.push('postcopy over loopback TCP (destination in the scenario process, source in a child process), snapshot and restore; ratio = project /');
  out.push('the floor scenario under "vs" (or ours, where it says so). Latency: the toucher\'s own clock around each faulting load, µs (lower is better).');
  const plat = pc.filter((r) => r.kind === 'latency');
  if (plat.length) {
    out.push(`${'scenario'.padEnd(w)}${'vs'.padEnd(vs)}${pad('project p50', 12)}${pad('p99', 10)}${pad('floor p50', 11)}${pad('p99', 9)}${pad('ratio p50', 11)}${pad('p99', 8)}  target`);
    for (const r of plat) {
      const line = `${r.scenario.padEnd(w)}${r.floor_scenario!.padEnd(vs)}${pad(f(r.p50_us), 12)}${pad(f(r.p99_us), 10)}${pad(f(r.floor_p50_us), 11)}${pad(f(r.floor_p99_us), 9)}` +
        `${pad(f(r.ratio), 11)}${pad(f(r.p99_ratio), 8)}  ${targetText(r)}`;
      pushRow(out, line, r);
      if (r.details) latencyDetails(r, r.details, out);
    }
  }
  const pthr = pc.filter((r) => r.kind === 'throughput');
  if (pthr.length) {
    out.push(`${'scenario'.padEnd(w)}${'vs'.padEnd(vs)}${pad('project GB/s', 12)}${pad('floor GB/s', 12)}${pad('ratio', 8)}  target`);
    for (const r of pthr) {
      const line = `${r.scenario.padEnd(w)}${r.floor_scenario!.padEnd(vs)}${pad(f(r.gb_per_s, 3), 12)}${pad(f(r.floor_gb_per_s, 3), 12)}${pad(f(r.ratio), 8)}  ${targetText(r)}`;
      pushRow(out, line, r);
      if (r.details) throughputDetails(r, r.details, out);
    }
  }
}

const mib = (bytes: number | null | undefined, digits = 0): string => f(bytes == null ? null : bytes / 2 ** 20, digits);

/** The lines under a migration row: the demo's precopy, postcopy and downtime figures. */
function migrationDetails(d: Details, out: string[]): void {
  const indent = ''.padEnd(4);
  const parts = Object.entries(d.downtime_parts_ms ?? {}).map(([k, v]) => `${k} ${f(v)}`).join(', ');
  out.push(`${indent}precopy ${d.precopy_ms} ms (sent ${f(d.precopy_send_mib_s, 0)} MiB/s, the guest dirtied ${f(d.precopy_dirty_mib_s, 0)} MiB/s); ` +
    `postcopy ${f(d.postcopy_ms, 0)} ms at ${f(d.postcopy_gb_per_s, 3)} GB/s; pages ${d.pages_precopy} precopy, ${d.pages_streamed} streamed, ${d.pages_requested} requested (avg ${f(d.request_avg_us, 0)} µs)`);
  out.push(`${indent}downtime parts (ms): ${parts}; pause to RUN applied ${f(d.downtime_to_run_ms)} ms; destination peak RSS ${d.destination_peak_rss_mb ?? '—'} MiB`);
}

/** QEMU's row under a migration's (same columns; its best run), a line of its other figures, its failed runs. */
function qemuLines(q: QemuRow, w: number, out: string[]): void {
  const indent = ''.padEnd(4);
  const b = q.best;
  const d = b?.details;
  out.push(`${`  ${qemuName(q.version)}`.padEnd(w)}${pad(0, 9)}${pad(f(b?.total_ms, 0), 10)}${pad(f(b?.downtime_ms), 13)}${pad(f(b?.blocktime_ms, 0), 14)}` +
    `${pad(f(d?.request_p50_us, 0), 9)}${pad(f(d?.request_p99_us, 0), 8)}${pad(mib(b?.bytes_sent), 10)}`);
  const completed = `${q.runs.length - q.runs.filter((r) => 'skipped' in r).length} of ${q.runs.length} runs completed`;
  if (b && d) {
    const misread = d.downtime_reported_ms === undefined ? '' : ` (QEMU said ${d.downtime_reported_ms} ms: 7.2's figure for a switchover under 1 ms)`;
    out.push(`${indent}${qemuName(q.version)}: setup ${b.setup_ms} ms, ${b.requests} page requests, postcopy ${f(d.postcopy_ms, 0)} ms; sent ${mib(d.precopy_bytes)} MiB in precopy, ` +
      `${mib(d.postcopy_bytes)} MiB in postcopy; the guest's longest stall at the destination ${f(d.guest_max_gap_ms, 0)} ms${misread}; ${completed}`);
  } else out.push(`${indent}${qemuName(q.version)}: ${completed}`);
  q.runs.forEach((r, i) => 'skipped' in r && out.push(`${indent}${qemuName(q.version)} run ${i + 1}: ${r.skipped.split('\n')[0]}`));
}

/** What the migration rows stand beside: QEMU from this invocation, or how to run it. */
function besideText(results: RunResults): string[] {
  const q = results.qemu;
  if (!q) return ["QEMU's own postcopy was not run: --qemu runs it beside each of these runs, alternating (a QEMU figure from another day is no reference here)"];
  const name = qemuName(q.version);
  return [
    `${name} (the rows under ours): ${q.script} postcopy, run in this invocation in the floor's turn of each run, after the same pause; kernel ${q.kernel}, TCG.`,
    `Side by side, not a ratio: ${name}'s guest is one TCG vCPU writing one byte per random page of 768 MiB (1 GiB guest), ours two native threads`,
    'rewriting whole pages (header and checksum); here every guest thread, source and destination share two CPUs. QEMU\'s figures: the source\'s',
    `query-migrate (total-time, downtime, RAM transferred), the destination's postcopy-blocktime${q.trace ? ', request latency from its trace events (exact, not buckets)' : ''}.`,
  ];
}

/** Whole migrations: their own figures, and QEMU's beside them with --qemu (no ratio). */
function migrationTable(rows: Row[], results: RunResults, out: string[]): void {
  const mig = rows.filter((r) => r.kind === 'migration');
  if (!mig.length) return;
  const w = nameWidth(mig);
  out.push('');
  out.push('whole migrations of the reference guest (`postcopy demo --json`, its own destination process; no floor): the source\'s total time');
  out.push('and downtime, the destination\'s blocktime and page requests (fault read to placed; histogram bucket bounds, µs)');
  out.push(`${'scenario'.padEnd(w)}${pad('channels', 9)}${pad('total ms', 10)}${pad('downtime ms', 13)}${pad('blocktime ms', 14)}${pad('req p50', 9)}${pad('p99', 8)}${pad('sent MiB', 10)}`);
  for (const r of mig) {
    const line = `${r.scenario.padEnd(w)}${pad(r.channels ?? '—', 9)}${pad(f(r.total_ms, 0), 10)}${pad(f(r.downtime_ms), 13)}${pad(f(r.blocktime_ms, 0), 14)}` +
      `${pad(f(r.request_p50_us, 0), 9)}${pad(f(r.request_p99_us, 0), 8)}${pad(mib(r.bytes_sent), 10)}`;
    pushRow(out, line, r);
    if (r.details?.precopy_ms !== undefined) migrationDetails(r.details, out);
    if (r.qemu) qemuLines(r.qemu, w, out);
  }
  out.push(...besideText(results));
}

/** The human table: a heading with the run's conditions, then the tables. */
export function printTable(rows: Row[], results: RunResults, options: BenchOptions): void {
  const out: string[] = [];
  out.push(
    `postcopy bench: ${options.mib} MiB per scenario, ${options.runs} run${options.runs > 1 ? 's' : ''} each side, alternating per scenario ` +
      `(floor, project, floor, project...), a ${options.pauseMs} ms pause before each; best (the table) and median [spread] (the line under a row), ` +
      `node ${process.version}, linux ${release()}, ${cpus().length} CPUs` +
      (options.cpu !== null ? `, both sides pinned to CPU ${options.cpu}` : ''),
  );
  const floor = results.floorSource ? `floor: ${results.floorSource} (cc -O2 -pthread), run in this invocation` : 'floor: not run (migrations only)';
  out.push(`${floor}; 1-min load average ${results.loadBefore.toFixed(2)} before, ${loadavg()[0].toFixed(2)} after`);
  if (results.qemu) out.push(`qemu: ${results.qemu.version}, run in the floor's turn of each whole migration (${results.qemu.anchor})`);
  sameNameTables(rows, out);
  otherFloorTables(rows, out);
  migrationTable(rows, results, out);
  process.stdout.write(out.join('\n') + '\n');
}
