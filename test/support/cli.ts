// Runs the postcopy CLI as separate processes, as a user would.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import assert from 'node:assert/strict';

export const CLI = join(__dirname, '..', '..', 'src', 'cli', 'main.js');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  /** The last stdout line as JSON (the --json report), if it parses. */
  report?: Record<string, any>;
}

export function runCli(args: string[], env: Record<string, string> = {}, timeoutMs = 120_000): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`postcopy ${args.join(' ')} timed out\n${stderr}`));
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      const last = stdout.trim().split('\n').pop() ?? '';
      let report: Record<string, any> | undefined;
      try {
        report = JSON.parse(last);
      } catch {
        report = undefined;
      }
      resolve({ code: code ?? 1, stdout, stderr, report });
    });
  });
}

/**
 * A failed `--json` run: exit `exit`, stdout one line, one object that names the error and its
 * code, and stderr's `postcopy: ` line saying the same.
 */
export function assertJsonFailure(r: CliResult, exit: number, code: string, message: RegExp): Record<string, any> {
  const context = `exit ${r.code}\nstdout: ${r.stdout.slice(-1500)}\nstderr: ${r.stderr.slice(-1500)}`;
  assert.equal(r.code, exit, context);
  assert.equal(r.stdout.trimEnd().split('\n').length, 1, `one line on stdout\n${context}`);
  assert.ok(r.report, `the last stdout line is not JSON\n${context}`);
  assert.equal(r.report.error_code, code, context);
  assert.match(r.report.error, message, context);
  assert.ok(r.stderr.split('\n').includes(`postcopy: ${r.report.error}`), context);
  return r.report;
}

/** A destination process; resolves once it listens, with its events as they come. */
export async function startReceiver(args: string[], env: Record<string, string>): Promise<{
  child: ChildProcess; endpoint: string; events: Record<string, any>[]; exited: Promise<number>; waitFor(pred: (e: Record<string, any>) => boolean, ms?: number): Promise<Record<string, any>>;
}> {
  const child = spawn(process.execPath, [CLI, 'receive', '--json', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  const events: Record<string, any>[] = [];
  const waiters: { pred: (e: Record<string, any>) => boolean; resolve: (e: Record<string, any>) => void }[] = [];
  createInterface({ input: child.stdout! }).on('line', (line) => {
    let event: Record<string, any>;
    try {
      event = JSON.parse(line);
    } catch {
      return;
    }
    events.push(event);
    for (const w of [...waiters]) if (w.pred(event)) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve(event);
    }
  });
  // 'close': exited, and every line it printed read
  const exited = new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? 1)));
  const waitFor = (pred: (e: Record<string, any>) => boolean, ms = 60_000) => {
    const seen = events.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise<Record<string, any>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`receiver: no matching event in ${ms} ms; saw ${JSON.stringify(events.map((e) => e.event))}`)), ms);
      waiters.push({ pred, resolve: (e) => { clearTimeout(timer); resolve(e); } });
    });
  };
  const listening = await waitFor((e) => e.event === 'listening', 20_000);
  return { child, endpoint: listening.endpoint, events, exited, waitFor };
}

/**
 * `postcopy demo --json` with `args` (and --run-seconds 0.3) that must verify: the report's
 * shape, and every page arrived exactly once after LISTEN: each page missing then (never sent,
 * or discarded) was placed once, by the stream or on request, whoever placed it first.
 */
export async function verifiedDemo(args: string[]): Promise<Record<string, any>> {
  const result = await runCli(['demo', '--json', '--run-seconds', '0.3', ...args]);
  assert.ok(result.report, `no JSON report (exit ${result.code})\n${result.stderr.slice(-2000)}`);
  const r = result.report!;
  assert.equal(r.verified, true, `not verified: ${JSON.stringify(r.verification ?? r.error)}\n${result.stderr.slice(-1500)}`);
  assert.equal(r.state, 'END');
  assert.equal(result.code, 0);
  for (const key of ['bytes_total', 'blocktime_ms', 'downtime_ms', 'total_ms', 'throughput_gb_per_s']) assert.equal(typeof r[key], 'number', key);
  for (const key of ['precopy', 'streamed', 'requested', 'zero', 'discarded', 'duplicate', 'missing_at_listen']) assert.equal(typeof r.pages[key], 'number', `pages.${key}`);
  assert.ok(Array.isArray(r.latency_us.histogram));
  const pages = r.bytes_total / 4096;
  const p = JSON.stringify(r.pages);
  assert.equal(r.pages.streamed + r.pages.requested, r.pages.missing_at_listen, p);
  // a discarded page is missing at LISTEN (a page is discarded at most once: it is no longer "sent")
  assert.ok(r.pages.missing_at_listen >= r.pages.discarded, p);
  assert.ok(r.pages.missing_at_listen <= pages, p);
  // every page in memory at LISTEN was written in precopy (some more than once)
  assert.ok(r.pages.precopy >= pages - r.pages.missing_at_listen, p);
  assert.ok(r.pages.streamed >= 0, p);
  if (r.pages.precopy === 0) assert.equal(r.pages.missing_at_listen, pages, p);
  return r;
}

/**
 * A long-running command (serve, serve-pages) with --json: its events as they come, and
 * waitFor(name), which fails naming what came instead when the process ends first.
 */
export function startService(command: string, args: string[], env: Record<string, string> = {}) {
  const child = spawn(process.execPath, [CLI, command, '--json', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const events: Record<string, any>[] = [];
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  createInterface({ input: child.stdout! }).on('line', (line) => events.push(JSON.parse(line)));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const waitFor = async (name: string, ms = 20_000) => {
    const deadline = Date.now() + ms;
    for (;;) {
      const found = events.find((e) => e.event === name);
      if (found) return found;
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`${command}: no '${name}' event (${JSON.stringify(events)})\n${stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  return { child, events, exited, waitFor };
}
