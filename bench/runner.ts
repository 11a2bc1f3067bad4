// Running both sides of the bench, like with like: compiles the plain-C floor
// (../shared/bench/uffd-floor.c, or $POSTCOPY_FLOOR_SRC) into a temporary directory, then for
// each run and each selected scenario: the floor's scenario it is compared with (`--only NAME
// --mib N`), then ours in a fresh `node dist-test/bench/main.js <scenario>` process, side by
// side at the same size, each after the same pause (this VM hands freed memory back to its host
// at once: whoever runs right after a big free meets different memory). Every run of each side
// is kept; the report takes best and median. Owns the cleanup of what it sets up (temporary
// directory, huge-page reservation, the running child) on every way out: exit, SIGINT,
// SIGTERM, SIGHUP.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Scenario } from './scenarios.js';
import type { Measured } from './types.js';

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
}

export interface RunResults {
  floorSource: string;
  /** By the table's scenario name: every run of the floor scenario it is compared with, in order. */
  floorRuns: Map<string, Measured[]>;
  /** By scenario name: every run of ours, in order. */
  oursRuns: Map<string, Measured[]>;
  /** Something failed (the floor, or a project scenario): the bench exits 1. */
  failed: boolean;
  /** 1-min load average before the runs: other work on the machine shows here first. */
  loadBefore: number;
}

export const log = (line: string): void => void process.stderr.write(line + '\n');

// ---- cleanup: temp dir, huge page reservation, running child -------------------------------

let tmp: string | undefined;
let restoreHugePages: (() => void) | undefined;
let child: ChildProcess | undefined;

export function cleanup(): void {
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

/** Cleans up on exit, and on SIGINT/SIGTERM/SIGHUP also kills the running child first. */
export function installCleanup(): void {
  process.on('exit', cleanup);
  for (const [signal, number] of [['SIGINT', 2], ['SIGTERM', 15], ['SIGHUP', 1]] as const) {
    process.on(signal, () => {
      if (child && child.exitCode === null) child.kill(signal);
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

/** Compiles the floor into a fresh temporary directory; its path, or null (said why on stderr). */
function compileFloor(floorSource: string): string | null {
  tmp = mkdtempSync(join(tmpdir(), 'postcopy-bench-'));
  const floorBinary = join(tmp, 'uffd-floor');
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

/** Runs a child (under taskset with --cpu) with stderr passed through; resolves to its stdout. */
function capture(options: BenchOptions, cmd: string, args: string[], timeoutMs: number): Promise<string> {
  if (options.cpu !== null) [cmd, args] = ['taskset', ['-c', options.cpu, cmd, ...args]];
  return new Promise((resolve, reject) => {
    const running = spawn(cmd, args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
    child = running;
    let out = '';
    running.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
    const timer = setTimeout(() => running.kill('SIGKILL'), timeoutMs);
    running.on('error', reject);
    running.on('close', (code, signal) => {
      clearTimeout(timer);
      child = undefined;
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

/**
 * `options.runs` times, each selected scenario: the floor's side, then ours, each after the
 * same pause. Every result is kept.
 */
export async function runBench(options: BenchOptions, selected: readonly Scenario[]): Promise<RunResults | null> {
  const floorSource = process.env.POSTCOPY_FLOOR_SRC || join(root, '..', 'shared', 'bench', 'uffd-floor.c');
  const floorBinary = compileFloor(floorSource);
  if (!floorBinary) return null;
  const loadBefore = loadavg()[0];
  const floorRuns = new Map<string, Measured[]>();
  const oursRuns = new Map<string, Measured[]>();
  const keep = (runs: Map<string, Measured[]>, name: string, result: Measured) => runs.set(name, [...(runs.get(name) ?? []), result]);
  let failed = false;
  for (let run = 1; run <= options.runs; run++) {
    const tag = options.runs > 1 ? ` (run ${run}/${options.runs})` : '';
    for (const s of selected) {
      if (s.kind !== 'migration' && s.baseline) {
        log(`bench: project: ${s.baseline} (baseline for ${s.name})${tag}`);
        await pause(options.pauseMs);
        try {
          keep(floorRuns, s.name, await runOurs(options, s.baseline));
        } catch (error) {
          log(`bench: project: ${s.baseline}: ${(error as Error).message}`);
          failed = true;
        }
      } else if (s.kind !== 'migration') {
        const floorName = s.floor ?? s.name;
        log(`bench: floor: ${floorName}${s.floor ? ` (for ${s.name})` : ''}${tag}`);
        await pause(options.pauseMs);
        try {
          keep(floorRuns, s.name, await runFloor(options, floorBinary, floorName));
        } catch (error) {
          log(`bench: floor: ${floorName}: ${(error as Error).message}`);
          failed = true;
        }
      }
      if (s.project.kind === 'floor-only') continue;
      log(`bench: project: ${s.name}${tag}`);
      await pause(options.pauseMs);
      try {
        keep(oursRuns, s.name, await runOurs(options, s.name));
      } catch (error) {
        const message = (error as Error).message;
        log(`bench: project: ${s.name}: ${message}`);
        keep(oursRuns, s.name, { scenario: s.name, skipped: `failed: ${message}` });
        failed = true;
      }
    }
  }
  cleanup();
  return { floorSource, floorRuns, oursRuns, failed, loadBefore };
}
