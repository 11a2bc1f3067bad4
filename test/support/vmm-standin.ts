// The VMM stand-in (vmm-standin.c: a Firecracker restore with a UFFD memory backend, and a
// checker of every byte the handler places), built once per test process and run as a child.
// Its header documents the options, the output lines and the exit codes.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, renameSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { featureSkip } from './hugepages.js';

/** The repository's root, from dist-test/test/support/. */
export const ROOT = join(__dirname, '..', '..', '..');
const SOURCE = join(ROOT, 'test', 'support', 'vmm-standin.c');
const BINARY = join(__dirname, 'vmm-standin');

export const STANDIN_EXIT = { ok: 0, mismatch: 1, usage: 2, syscall: 3, connect: 4, timeout: 5 } as const;

export interface StandinRegion {
  base: number;
  size: number;
  page_size: number;
  offset: number;
}

export interface StandinMapped {
  event: 'mapped';
  pid: number;
  regions: StandinRegion[];
}

export interface StandinResult {
  ok: boolean;
  pid: number;
  regions: StandinRegion[];
  touches: number;
  first_touches: number;
  zeros_checked: number;
  removed_pages: number;
  mismatch_count: number;
  mismatches: { region: number; page: number; offset: number; address: number; want: 'file' | 'zeros' | 'marker'; expected: number; got: number }[];
  /** After a timeout: each thread still running, and the page it waits on. */
  waiting: { thread: string; doing: string; address: number; region?: number; page?: number }[];
  error: string | null;
  /** First-touch latency of pages never touched before, in µs (null when none). */
  touch_us: { p50: number | null; p99: number | null; max: number | null };
}

export interface StandinRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** The last stdout line. */
  result?: StandinResult;
  /** The first stdout line, once the regions were mapped and registered. */
  mapped?: StandinMapped;
}

/** Why the stand-in cannot run here, or false. */
export function standinSkip(): string | false {
  if (!existsSync(SOURCE) && existsSync(BINARY)) return featureSkip('EVENT_REMOVE'); // built elsewhere (the test VM's image)
  if (spawnSync('cc', ['--version']).error) return 'no C compiler (cc) to build the VMM stand-in';
  return featureSkip('EVENT_REMOVE');
}

let built = false;

/** The stand-in's binary, compiled once per process (or as built before, where its source is not: the test VM). */
export function buildStandin(): string {
  if (!built) compileOnce(SOURCE, BINARY, ['-pthread']);
  built = true;
  return BINARY;
}

/** Compiles `source` into `binary` unless the binary is newer than its source. */
export function compileOnce(source: string, binary: string, flags: string[] = []): void {
  if (existsSync(binary) && (!existsSync(source) || statSync(binary).mtimeMs >= statSync(source).mtimeMs)) return;
  // test files run in parallel processes: each builds aside and renames into place
  const aside = `${binary}.${process.pid}`;
  const r = spawnSync('cc', ['-O2', '-Wall', ...flags, '-o', aside, source], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cc ${source} failed: ${r.error?.message ?? r.stderr}`);
  renameSync(aside, binary);
}

function parseLine<T>(line: string | undefined): T | undefined {
  try {
    return line ? (JSON.parse(line) as T) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Starts the stand-in. `mapped` resolves with its first line (the regions' addresses, before it
 * connects); `done` with the whole run once it exits. A run past `timeoutMs` (a backstop: the
 * stand-in's own --timeout should come first) is killed and `done` rejects; killed by anyone
 * else (a handler that gives up kills its VMM), `done` resolves with the signal.
 */
export function startStandin(args: string[], timeoutMs = 120_000): { child: ChildProcess; mapped: Promise<StandinMapped>; done: Promise<StandinRun> } {
  const child = spawn(buildStandin(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let onMapped!: (m: StandinMapped) => void;
  let noMapped!: (e: Error) => void;
  const mapped = new Promise<StandinMapped>((resolve, reject) => ((onMapped = resolve), (noMapped = reject)));
  mapped.catch(() => {}); // a run that never maps is the caller's to see in `done`
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
    const first = stdout.includes('\n') ? parseLine<StandinMapped>(stdout.slice(0, stdout.indexOf('\n'))) : undefined;
    if (first?.event === 'mapped') onMapped(first);
  });
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const done = new Promise<StandinRun>((resolve, reject) => {
    let late = false;
    const timer = setTimeout(() => (late = child.kill('SIGKILL')), timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const lines = stdout.trim().split('\n');
      const run: StandinRun = { code, signal, stdout, stderr, result: parseLine(lines.at(-1)), mapped: parseLine(lines[0]) };
      if (run.mapped?.event !== 'mapped') run.mapped = undefined;
      noMapped(new Error(`vmm-standin exited before mapping: ${stderr.trim()}`));
      if (late) reject(new Error(`vmm-standin ${args.join(' ')} still ran after ${timeoutMs} ms\n${stderr}`));
      else resolve(run);
    });
  });
  return { child, mapped, done };
}

export function runStandin(args: string[], timeoutMs?: number): Promise<StandinRun> {
  return startStandin(args, timeoutMs).done;
}
