// Running both sides of the bench, like with like: compiles the plain-C floor
// (../shared/bench/uffd-floor.c, or $POSTCOPY_FLOOR_SRC) into a temporary directory, then for
// each run and each selected scenario: the floor's scenario it is compared with (`--only NAME
// --mib N`), then ours in a fresh `node dist-test/bench/main.js <scenario>` process, side by
// side at the same size, each after the same pause (this VM hands freed memory back to its host
// at once: whoever runs right after a big free meets different memory). Every run of each side
// is kept; the report takes best and median. With --qemu, a whole-migration scenario's turn of
// the floor runs QEMU's own postcopy instead (bench/qemu.ts), after the same pause. Owns the
// cleanup of what it sets up (temporary directory, huge-page reservation, the running child)
// on every way out: exit, SIGINT, SIGTERM, SIGHUP.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseQemuRun, qemuArgs, specArgs, type QemuSetup } from './qemu.js';
import type { MigrationScenario, Scenario } from './scenarios.js';
import type { Measured, QemuResult, QemuRun } from './types.js';

/** The repository: dist-test/bench/runner.js is two levels below it. */
export const root = join(__dirname, '..', '..');
const NR_HUGEPAGES = '/proc/sys/vm/nr_hugepages';
const HUGE = 2 * 1024 * 1024;
const CHILD_TIMEOUT_MS = 600_000;

export interface BenchOptions {
  json: boolean;
  mib: number;
  runs: number;
  /** Our scenarios to run (null: all); the floor always runs all of its own. */
  only: string[] | null;
  /** CPU list for `taskset -c`, or null. */
  cpu: string | null;
  /** The pause before each side's run, so that both meet memory in the same state. */
  pauseMs: number;
  /** Run QEMU's own postcopy beside each run of a whole-migration scenario. */
  qemu: boolean;
  /** --qemu-anchor: the anchor's folder (else $POSTCOPY_QEMU_ANCHOR, else ../shared/anchors/qemu). */
  qemuAnchor: string | null;
  /** --qemu-trace: QEMU's per-request latency from its trace events. */
  qemuTrace: boolean;
}

export interface RunResults {
  /** Undefined when no selected scenario runs the floor (migrations only). */
  floorSource: string | undefined;
  /** By the table's scenario name: every run of the floor scenario it is compared with, in order. */
  floorRuns: Map<string, Measured[]>;
  /** By scenario name: every run of ours, in order. */
  oursRuns: Map<string, Measured[]>;
  /** With --qemu: what runs QEMU, and by migration scenario every QEMU run beside it, in order. */
  qemu: QemuSetup | null;
  qemuRuns: Map<string, QemuRun[]>;
  /** Something failed (the floor, a QEMU run, or a project scenario): the bench exits 1. */
  failed: boolean;
  /** 1-min load average before the runs: other work on the machine shows here first. */
  loadBefore: number;
}

export const log = (line: string): void => void process.stderr.write(line + '\n');

// ---- cleanup: temp dir, huge page reservation, running child -------------------------------

let tmp: string | undefined;
let restoreHugePages: (() => void) | undefined;
let child: ChildProcess | undefined;
/** The running child leads a process group of its own (QEMU's bench.py and its two QEMUs). */
let childGroup = false;

/**
 * Ends the running child. A group goes at once, by its id, with SIGKILL: Python dies of SIGTERM
 * and SIGHUP without running its `finally`, which would leave both QEMUs (2 GiB of guests) behind.
 * Nor does it remove its QMP sockets then (/tmp/qa-HHMMSS-PID-src.qmp, -dst.qmp): they go here.
 */
function killChild(signal: NodeJS.Signals): void {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  if (!childGroup) child.kill(signal);
  else {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // ESRCH: the whole group ended already
    }
    const sockets = new RegExp(`^qa-\\d{6}-${child.pid}-(src|dst)\\.qmp$`);
    for (const name of readdirSync('/tmp')) if (sockets.test(name)) rmSync(join('/tmp', name), { force: true });
  }
}

export function cleanup(): void {
  if (childGroup) killChild('SIGKILL');
  if (restoreHugePages) {
    const restore = restoreHugePages;
    restoreHugePages = undefined;
    try {
      restore();
    } catch (error) {
      log(`bench: could not restore ${NR_HUGEPAGES}: ${(error as Error).message}`);
    }
  }
  if (tmp) {
    rmSync(tmp, { recursive: true, force: true });
    tmp = undefined;
  }
}

/** Cleans up on exit (a child's process group too), and on SIGINT/SIGTERM/SIGHUP also kills the running child first. */
export function installCleanup(): void {
  process.on('exit', cleanup);
  for (const [signal, number] of [['SIGINT', 2], ['SIGTERM', 15], ['SIGHUP', 1]] as const) {
    process.on(signal, () => {
      killChild(signal);
      cleanup();
      process.exit(128 + number);
    });
  }
}

// ---- the floor ----------------------------------------------------------------------------------

function runToStderr(cmd: string, args: string[], what: string): string | null {
  const r = spawnSync(cmd, args, { cwd: root, stdio: ['ignore', 2, 2] });
  return r.status === 0 ? null : `${what} failed (${r.error?.message ?? `exit ${r.status ?? r.signal}`})`;
}

/** Compiles the floor into the temporary directory; its path, or null (said why on stderr). */
function compileFloor(floorSource: string): string | null {
  const floorBinary = join(tmp!, 'uffd-floor');
  if (!existsSync(floorSource)) {
    log(`bench: the floor's source ${floorSource} is missing (set POSTCOPY_FLOOR_SRC)`);
    return null;
  }
  const error = runToStderr('cc', ['-O2', '-pthread', '-o', floorBinary, floorSource], `cc ${floorSource}`);
  if (error) {
    log(`bench: ${error}`);
    return null;
  }
  return floorBinary;
}

/**
 * Runs a child (under taskset with --cpu) with stderr passed through; resolves to its stdout.
 * `group`: in a process group of its own, which goes with it (and out of the terminal's, whose
 * SIGINT reaches the bench alone, which then ends the group).
 */
function capture(options: BenchOptions, cmd: string, args: string[], timeoutMs: number, group = false): Promise<string> {
  if (options.cpu !== null) [cmd, args] = ['taskset', ['-c', options.cpu, cmd, ...args]];
  return new Promise((resolve, reject) => {
    const running = spawn(cmd, args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'], detached: group });
    child = running;
    childGroup = group;
    let out = '';
    running.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
    const timer = setTimeout(() => killChild('SIGKILL'), timeoutMs);
    running.on('error', reject);
    running.on('close', (code, signal) => {
      clearTimeout(timer);
      child = undefined;
      childGroup = false;
      if (code === 0) resolve(out);
      else reject(new Error(`${cmd} ${args.join(' ')}: ${signal ? `killed by ${signal}` : `exit ${code}`}`));
    });
  });
}

/** The floor's output: JSON lines, and plain "name  skipped: why" lines. */
function parseFloor(out: string): Map<string, Measured> {
  const results = new Map<string, Measured>();
  for (const line of out.split('\n')) {
    if (!line.trim()) continue;
    if (line.startsWith('{')) {
      const r: Measured = JSON.parse(line);
      results.set(r.scenario, r);
    } else {
      const m = /^(\S+)\s+skipped:\s*(.*)$/.exec(line);
      if (m) results.set(m[1], { scenario: m[1], skipped: m[2] });
      else log(`bench: floor: ${line}`);
    }
  }
  return results;
}

// ---- huge pages -------------------------------------------------------------------------------

function readHugeSetting(): number | null {
  try {
    return Number(readFileSync(NR_HUGEPAGES, 'utf8'));
  } catch {
    return null;
  }
}

function freeHugePages(): number {
  const m = /HugePages_Free:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) : 0;
}

/** Makes `pages` huge pages free (raising nr_hugepages); null, or why it could not. */
function reserveHugePages(pages: number): string | null {
  let old: number;
  try {
    old = Number(readFileSync(NR_HUGEPAGES, 'utf8'));
    if (freeHugePages() >= pages) return null;
    writeFileSync(NR_HUGEPAGES, String(old + pages - freeHugePages()));
  } catch (error) {
    const e = error as NodeJS.ErrnoException;
    return `cannot reserve ${pages} huge pages: ${e.code ?? e.message} on ${NR_HUGEPAGES} (needs root)`;
  }
  const granted = Number(readFileSync(NR_HUGEPAGES, 'utf8'));
  // Take back what we added, even if someone else changed the reservation in between.
  restoreHugePages = () => {
    const now = Number(readFileSync(NR_HUGEPAGES, 'utf8'));
    writeFileSync(NR_HUGEPAGES, String(Math.max(0, now - (granted - old))));
  };
  const free = freeHugePages();
  if (free >= pages) return null;
  cleanupHugePages();
  return `the kernel reserved only ${free} of ${pages} free huge pages (memory fragmented?)`;
}

function cleanupHugePages(): void {
  const restore = restoreHugePages;
  restoreHugePages = undefined;
  restore?.();
}

// ---- one run of each side ---------------------------------------------------------------------

async function runOurs(options: BenchOptions, scenario: string): Promise<Measured> {
  let reason: string | null = null;
  if (scenario === 'huge-2m') reason = reserveHugePages((options.mib * 1024 * 1024) / HUGE);
  try {
    if (reason) return { scenario, skipped: reason };
    const out = await capture(options, process.execPath, [join(root, 'dist-test/bench/main.js'), scenario, '--mib', String(options.mib)], CHILD_TIMEOUT_MS);
    const result: Measured = JSON.parse(out.trim().split('\n').pop() ?? '');
    return result;
  } finally {
    cleanupHugePages();
  }
}

/**
 * Better of two results of one scenario: lower p50 (then p99; or p99 first with by 'p99'),
 * higher GB/s, or (a whole migration) shorter total time.
 */
export function better(a: Measured | undefined, b: Measured, by: 'p50' | 'p99' = 'p50'): Measured {
  if (!a || a.skipped) return b ?? a;
  if (!b || b.skipped) return a;
  if ('gb_per_s' in a) return b.gb_per_s! > a.gb_per_s! ? b : a;
  if ('total_ms' in a) return b.total_ms! < a.total_ms! ? b : a;
  const [first, second] = by === 'p99' ? (['p99_us', 'p50_us'] as const) : (['p50_us', 'p99_us'] as const);
  return b[first]! < a[first]! || (b[first] === a[first] && b[second]! < a[second]!) ? b : a;
}

/** The floor's `name` alone, at --mib; its result, or why there is none. */
async function runFloor(options: BenchOptions, floorBinary: string, name: string): Promise<Measured> {
  // the floor reserves (and restores) its own huge pages; if it is killed half-way, put the
  // reservation back for it
  const hugeBefore = readHugeSetting();
  if (hugeBefore !== null) restoreHugePages = () => {
    if (readHugeSetting() !== hugeBefore) writeFileSync(NR_HUGEPAGES, String(hugeBefore));
  };
  try {
    const floor = parseFloor(await capture(options, floorBinary, ['--json', '--mib', String(options.mib), '--only', name], CHILD_TIMEOUT_MS));
    restoreHugePages = undefined; // it finished and restored its reservation itself
    return floor.get(name) ?? { scenario: name, skipped: `no ${name} result from the floor` };
  } finally {
    cleanupHugePages();
  }
}

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** One QEMU postcopy beside `s`: bench.py writes its JSON object to a file of this run's own. */
async function runQemu(options: BenchOptions, setup: QemuSetup, s: MigrationScenario, run: number): Promise<QemuResult> {
  const out = join(tmp!, `qemu-${s.name}-${run}.jsonl`);
  let failure: Error | undefined;
  try {
    // its one-line summary is progress, for stderr: stdout is the report's
    const summary = (await capture(options, 'python3', qemuArgs(setup, s.qemu, out), CHILD_TIMEOUT_MS, true)).trim();
    if (summary) log(`bench: qemu: ${summary}`);
  } catch (error) {
    failure = error as Error;
  }
  // a run that failed still writes its object, with QEMU's error in it
  const written = existsSync(out) ? readFileSync(out, 'utf8').trim().split('\n').pop() : undefined;
  if (!written) throw failure ?? new Error(`${setup.script} wrote nothing to ${out}`);
  return parseQemuRun(written);
}

/** What one invocation runs with, and what it has measured so far. */
interface Session {
  options: BenchOptions;
  floorBinary: string;
  results: RunResults;
}

const keep = <T>(runs: Map<string, T[]>, name: string, result: T) => runs.set(name, [...(runs.get(name) ?? []), result]);

/** One side's turn: its progress line, the pause, the run; its result, or the error (said on stderr). */
async function turn<T>(options: BenchOptions, label: string, note: string, run: () => Promise<T>): Promise<T | Error> {
  log(`bench: ${label}${note}`);
  await pause(options.pauseMs);
  try {
    return await run();
  } catch (error) {
    log(`bench: ${label}: ${(error as Error).message}`);
    return error as Error;
  }
}

/** The floor's turn of a scenario's run: our baseline, the floor's scenario, or QEMU beside a migration. */
async function otherSide({ options, floorBinary, results }: Session, s: Scenario, run: number, tag: string): Promise<void> {
  if (s.kind === 'migration') {
    const qemu = results.qemu;
    if (!qemu) return;
    const r = await turn(options, `qemu: bench.py postcopy ${specArgs(s.qemu).join(' ')}`, ` (beside ${s.name})${tag}`, () => runQemu(options, qemu, s, run));
    keep<QemuRun>(results.qemuRuns, s.name, r instanceof Error ? { skipped: `failed: ${r.message}` } : r);
    if (r instanceof Error) results.failed = true;
    return;
  }
  const floorName = s.floor ?? s.name;
  const r = s.baseline
    ? await turn(options, `project: ${s.baseline}`, ` (baseline for ${s.name})${tag}`, () => runOurs(options, s.baseline!))
    : await turn(options, `floor: ${floorName}`, `${s.floor ? ` (for ${s.name})` : ''}${tag}`, () => runFloor(options, floorBinary, floorName));
  if (r instanceof Error) results.failed = true;
  else keep(results.floorRuns, s.name, r);
}

/**
 * `options.runs` times, each selected scenario: the floor's side (or QEMU's, beside a
 * migration, with `qemu`), then ours, each after the same pause. Every result is kept.
 */
export async function runBench(options: BenchOptions, selected: readonly Scenario[], qemu: QemuSetup | null): Promise<RunResults | null> {
  const floorSource = process.env.POSTCOPY_FLOOR_SRC || join(root, '..', 'shared', 'bench', 'uffd-floor.c');
  tmp = mkdtempSync(join(tmpdir(), 'postcopy-bench-'));
  // migrations run beside QEMU (or alone), never beside the floor: it is compiled only when some scenario runs it
  const needsFloor = selected.some((s) => s.kind !== 'migration' && !s.baseline);
  const floorBinary = needsFloor ? compileFloor(floorSource) : '';
  if (floorBinary === null) {
    cleanup();
    return null;
  }
  const results: RunResults = { floorSource: needsFloor ? floorSource : undefined, floorRuns: new Map(), oursRuns: new Map(), qemu, qemuRuns: new Map(), failed: false, loadBefore: loadavg()[0] };
  for (let run = 1; run <= options.runs; run++) {
    const tag = options.runs > 1 ? ` (run ${run}/${options.runs})` : '';
    for (const s of selected) {
      await otherSide({ options, floorBinary, results }, s, run, tag);
      if (s.project.kind === 'floor-only') continue;
      const r = await turn(options, `project: ${s.name}`, tag, () => runOurs(options, s.name));
      keep(results.oursRuns, s.name, r instanceof Error ? { scenario: s.name, skipped: `failed: ${r.message}` } : r);
      if (r instanceof Error) results.failed = true;
    }
  }
  cleanup();
  return results;
}
